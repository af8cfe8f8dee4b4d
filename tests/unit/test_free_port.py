"""free_port draws from BATON_FREE_PORTS when it is set, and says what is wrong with a bad range."""

from __future__ import annotations

import socket

import pytest

from infra.nats_server import free_port


def test_a_port_comes_from_the_range_and_skips_a_taken_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        monkeypatch.setenv("BATON_FREE_PORTS", f"{port}-{port + 1}")
        assert free_port() == port + 1


def test_a_range_with_no_free_port_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        monkeypatch.setenv("BATON_FREE_PORTS", f"{port}-{port}")
        with pytest.raises(RuntimeError, match=f"BATON_FREE_PORTS={port}-{port}"):
            free_port()


@pytest.mark.parametrize("spec", ["20000", "30000-20000", "80-90", "a-b", "20000-70000"])
def test_a_malformed_range_is_refused_with_its_form(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("BATON_FREE_PORTS", spec)
    with pytest.raises(ValueError, match="LOW-HIGH"):
        free_port()
