"""Operations: the embedded nats-server, correlation ids from command to event to outcome, the CLI, the docs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import nats
import pytest
import structlog
from typer.testing import CliRunner

from api.app import create_app, openapi_document
from api.tokens import Keyring, Tokens
from consumers.spec import asyncapi_document
from demo.script import run_demo
from domain.events import catalogue
from infra.bootstrap import Runtime, bootstrap
from infra.cli import app as cli
from infra.nats_auth import NatsAuth
from infra.nats_server import EmbeddedNats
from infra.settings import Settings
from tests.conftest import Auth, seed_county, stream_messages
from tests.scenarios import ROOT

DOCS = ROOT / "docs"


async def test_embedded_nats_fsyncs_on_loopback_restarts_when_killed_and_stops(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, port=0)
    await server.start()
    try:
        config = (tmp_path / "nats" / "nats-server.conf").read_text()
        assert "sync_interval: always" in config and f'listen: "127.0.0.1:{server.port}"' in config
        assert f'store_dir: "{(tmp_path / "nats").resolve()}"' in config
        first = server.process.pid
        server.kill()
        greeting = b""
        for _ in range(200):
            await asyncio.sleep(0.05)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            except OSError:
                continue
            greeting = await reader.readline()
            writer.close()
            if server.process.pid != first:
                break
        assert server.process.pid != first and server.restarts == 1
        assert greeting.startswith(b"INFO")
    finally:
        await server.stop()
    assert server.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(server.process.pid, signal.SIG_DFL)


async def test_a_nats_server_left_behind_by_a_dead_baton_is_stopped_first(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    config = server.write_config()
    stale = subprocess.Popen([str(server.binary), "-c", str(config)], start_new_session=True)
    try:
        for _ in range(100):
            if (tmp_path / "nats" / "nats-server.pid").exists():
                break
            await asyncio.sleep(0.05)
        await server.start()  # the same port and store dir: it only starts if the stale one is gone
        assert stale.wait(timeout=5) is not None
        assert server.process.pid != stale.pid
    finally:
        stale.kill()
        await server.stop()


async def test_a_correlation_id_follows_a_command_to_its_event(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, nc
) -> None:
    await seed_county(client, auth)
    level = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))  # command_accepted
    try:
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            r = await client.post(
                "/v1/whistles",
                json={"community_id": "tishu", "category": "drainage", "title": "t", "description": "d"},
                headers={**auth("community", "tishu"), "X-Correlation-Id": "corr-42"},
            )
    finally:
        structlog.configure(wrapper_class=level)
    assert r.headers["X-Correlation-Id"] == "corr-42"
    assert any(e["event"] == "command_accepted" and e.get("correlation_id") == "corr-42" for e in logs)
    await runtime.wait_idle()
    (msg,) = await stream_messages(nc, "BATON_EVENTS", "baton.evt.whistle.>")
    assert msg.headers["Baton-Correlation-Id"] == "corr-42"


def test_token_issue_prints_a_token_the_api_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["token", "issue", "--role", "department", "--unit", "PSB", "--actor", "li"])
    assert result.exit_code == 0, result.output
    actor = Tokens(Keyring.load(tmp_path, None)).verify(result.output.strip())
    assert (actor.role.value, actor.unit, actor.id) == ("department", "PSB", "li")
    bad = CliRunner().invoke(cli, ["token", "issue", "--role", "department"])
    assert bad.exit_code == 2 and "needs --unit" in bad.output
    assert (tmp_path / "keys" / "token-keys.json").stat().st_mode & 0o777 == 0o600


def test_asyncapi_command_prints_the_nats_interface() -> None:
    result = CliRunner().invoke(cli, ["asyncapi"])
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["asyncapi"].startswith("3.")
    channels = {c["address"] for c in doc["channels"].values()}
    assert {"baton.evt.whistle.blown", "baton.dept.{code}.cmd.report_in", "baton.dept.{code}.outcome"} <= channels


def test_committed_api_documents_are_current() -> None:
    documents = (
        ("openapi.json", openapi_document()),
        ("asyncapi.json", asyncapi_document()),
        ("events.json", catalogue()),
    )
    for name, document in documents:
        committed = json.loads((DOCS / name).read_text())
        assert committed == json.loads(json.dumps(document, sort_keys=True)), f"docs/{name} is stale: run make docs"


async def test_demo_then_serve_shows_the_county_through_the_api_and_on_nats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path, store="sqlite")
    assert await asyncio.to_thread(run_demo, settings, 2) == 0
    out = capsys.readouterr().out
    assert "13 communities" in out and "45 part-time cadres" in out and "over NATS" in out
    assert "all published to BATON_EVENTS" in out
    assert await asyncio.to_thread(run_demo, settings, 2) == 1
    assert "fills an empty one" in capsys.readouterr().out

    baton = bootstrap(settings)
    tokens = Tokens(Keyring.load(tmp_path, None))
    runtime = Runtime(baton)  # as `baton serve` runs it (in one process): embedded nats-server on the demo's dir
    app = create_app(baton, tokens, runtime)
    try:
        async with app.router.lifespan_context(app):
            await runtime.wait_idle()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
                health = (await http.get("/health")).json()
                admin = {"Authorization": f"Bearer {tokens.issue('admin', None)}"}
                board = (await http.get("/v1/whistles", params={"limit": 200}, headers=admin)).json()
            assert health["status"] == "ok" and health["nats"]["embedded"] is True
            assert len(board["items"]) >= 8
            with pytest.raises(Exception, match=r"(?i)authorization"):  # the embedded server wants a login
                await nats.connect(health["nats"]["url"], allow_reconnect=False, max_reconnect_attempts=0)
            service = NatsAuth.load(tmp_path).service()
            conn = await nats.connect(health["nats"]["url"], user=service.user, password=service.password)
            try:
                info = await conn.jetstream().stream_info("BATON_EVENTS")
                assert info.state.messages == baton.store.max_position()
            finally:
                await conn.close()
    finally:
        baton.close()


def test_one_baton_process_per_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.lock import DataDirLock

    monkeypatch.setenv("BATON_DATA_DIR", str(tmp_path))
    with DataDirLock(tmp_path, "serve"):
        result = CliRunner().invoke(cli, ["rebuild"])
        assert result.exit_code == 3 and "in use by baton serve" in result.output
    result = CliRunner().invoke(cli, ["rebuild"])
    assert result.exit_code == 0, result.output


def test_a_waiting_lock_is_taken_when_its_holder_lets_go_and_not_before(tmp_path: Path) -> None:
    from infra.lock import DataDirBusy, DataDirLock

    holder = DataDirLock(tmp_path, "projector", name="projector.lock")
    holder.__enter__()
    with pytest.raises(DataDirBusy, match="in use by baton projector"):
        DataDirLock(tmp_path, "projector", name="projector.lock").__enter__()
    released = threading.Event()

    def release() -> None:
        released.set()
        holder.__exit__(None, None, None)

    threading.Timer(0.3, release).start()
    with DataDirLock(tmp_path, "projector", name="projector.lock", wait=30.0):
        assert released.is_set()
        with DataDirLock(tmp_path, "serve"):  # serve's lock is another file: a projector never blocks serve
            pass
