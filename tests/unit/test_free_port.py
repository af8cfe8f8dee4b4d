"""free_port draws from BATON_FREE_PORTS when it is set, and says what is wrong with a bad range."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from infra.nats_server import free_port


def taken_and_free(sock: socket.socket) -> tuple[int, int]:
    """Listen on a port of this worker's slice (below the kernel's ephemeral ports) whose next port is free."""
    low, high = (int(p) for p in os.environ["BATON_FREE_PORTS"].split("-"))
    for port in range(low, high):
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", port + 1))
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return port, port + 1
    raise AssertionError(f"no two adjacent free ports in {low}-{high}")


def test_a_port_comes_from_the_range_and_skips_a_taken_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        port, next_port = taken_and_free(taken)
        monkeypatch.setenv("BATON_FREE_PORTS", f"{port}-{next_port}")
        assert free_port() == next_port


def test_a_range_with_no_free_port_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        port, _ = taken_and_free(taken)
        monkeypatch.setenv("BATON_FREE_PORTS", f"{port}-{port}")
        with pytest.raises(RuntimeError, match=f"BATON_FREE_PORTS={port}-{port}"):
            free_port()


@pytest.mark.parametrize("spec", ["20000", "30000-20000", "80-90", "a-b", "20000-70000"])
def test_a_malformed_range_is_refused_with_its_form(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("BATON_FREE_PORTS", spec)
    with pytest.raises(ValueError, match="LOW-HIGH"):
        free_port()
