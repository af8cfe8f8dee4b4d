"""NATS permissions on the embedded server as `baton serve` runs it: a department reaches its own subjects and
its own durable consumer and nothing else; the auditor reads BATON_EVENTS and cannot publish."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from typer.testing import CliRunner

from infra.bootstrap import Container, Runtime, bootstrap
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.jetstream import AUDITOR_DURABLE, DEPT_STREAM, EVENTS_STREAM, INTAKE_STREAM, department_durable
from infra.nats_auth import JS_API_PREFIX, Credentials, NatsAuth
from infra.nats_server import free_port, nats_server_binary
from infra.settings import Settings
from services.access import Actor, Context, Role
from tests.conftest import ADMIN, blow_direct, seed_county_direct
from tests.scenarios import ROOT

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # NATS auth does not depend on the store


class Login:
    """One principal's connection, keeping every error the server sent it (permissions violations)."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors
        self.js = nc.jetstream(prefix=JS_API_PREFIX, timeout=2)

    async def violation(self, fragment: str, timeout: float = 3.0) -> str:
        """The permissions violation the server reported for fragment (a subject), waiting for it to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for error in self.errors:  # nats-py lower-cases what the server said
                if "permissions violation" in error.lower() and fragment.lower() in error.lower():
                    return error
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permissions violation for {fragment!r}; the server said: {self.errors}")


@pytest.fixture
async def served(baton: Container) -> AsyncIterator[Runtime]:
    """Baton's runtime with its embedded, authenticated nats-server, on a seeded county."""
    seed_county_direct(baton)
    runtime = Runtime(baton, watch=False)
    await runtime.start()
    yield runtime
    await runtime.stop()


def _auth(settings: Settings) -> NatsAuth:
    return NatsAuth.load(settings.data_dir, settings.nats_secret)


async def _login(runtime: Runtime, creds: Credentials) -> AsyncIterator[Login]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        runtime.url,
        user=creds.user,
        password=creds.password,
        inbox_prefix=creds.inbox_prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        yield Login(nc, errors)
    finally:
        await nc.close()


@pytest.fixture
async def housing(served: Runtime, settings: Settings) -> AsyncIterator[Login]:
    async for login in _login(served, _auth(settings).department("HOUSING")):
        yield login


@pytest.fixture
async def psb(served: Runtime, settings: Settings) -> AsyncIterator[Login]:
    async for login in _login(served, _auth(settings).department("PSB")):
        yield login


@pytest.fixture
async def auditor(served: Runtime, settings: Settings) -> AsyncIterator[Login]:
    async for login in _login(served, _auth(settings).auditor()):
        yield login


async def _fetch(login: Login, code: str, n: int, timeout: float = 5.0) -> list[Any]:
    sub = await login.js.pull_subscribe_bind(durable=department_durable(code), stream=DEPT_STREAM)
    got: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < n and loop.time() < deadline:
        try:
            msgs = await sub.fetch(n - len(got), timeout=1)
        except TimeoutError:
            continue
        for msg in msgs:
            await msg.ack()
        got += msgs
    await sub.unsubscribe()
    return got


async def test_nobody_gets_in_without_a_login(served: Runtime) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(served.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            served.url, user="dept-HOUSING", password="guessed", allow_reconnect=False, max_reconnect_attempts=0
        )


async def test_a_department_sends_its_commands_and_reads_its_own_inbox_and_outcomes(
    served: Runtime, baton: Container, housing: Login
) -> None:
    [whistle_id] = blow_direct(baton)  # summons HOUSING: an inbox event for it
    command = {"command_id": uuid.uuid4().hex, "whistle_id": whistle_id}
    ack = await housing.nc.jetstream().publish("baton.dept.HOUSING.cmd.report_in", json.dumps(command).encode())
    assert ack.stream == INTAKE_STREAM

    msgs = await _fetch(housing, "HOUSING", 2)
    subjects = sorted(m.subject for m in msgs)
    assert subjects == ["baton.dept.HOUSING.inbox.whistle.blown", "baton.dept.HOUSING.outcome"]
    outcome = json.loads(next(m for m in msgs if m.subject.endswith("outcome")).data)
    assert outcome["command_id"] == command["command_id"] and outcome["status"] == "accepted"
    assert housing.errors == []


async def test_a_department_cannot_send_another_departments_commands(
    served: Runtime, baton: Container, housing: Login
) -> None:
    [whistle_id] = blow_direct(baton)  # summons HOUSING only: PSB's report-in would be refused anyway
    before = (await served.nc.jetstream().stream_info(INTAKE_STREAM)).state.messages  # type: ignore[union-attr]
    await housing.nc.publish(
        "baton.dept.PSB.cmd.report_in", json.dumps({"command_id": "x", "whistle_id": whistle_id}).encode()
    )
    await housing.nc.flush()
    await housing.violation('Publish to "baton.dept.PSB.cmd.report_in"')
    with pytest.raises((NoRespondersError, NatsTimeout)):
        await housing.nc.request("baton.dept.PSB.cmd.complete", b"{}", timeout=1)
    after = (await served.nc.jetstream().stream_info(INTAKE_STREAM)).state.messages  # type: ignore[union-attr]
    assert after == before


async def test_a_department_cannot_read_another_departments_inbox(
    served: Runtime, baton: Container, housing: Login, psb: Login
) -> None:
    await housing.nc.subscribe("baton.dept.PSB.inbox.>")
    await housing.nc.flush()
    await housing.violation('Subscription to "baton.dept.PSB.inbox.>"')
    with pytest.raises(Exception):  # noqa: B017 - a denied API call times out or answers no responders
        await housing.js.consumer_info(DEPT_STREAM, department_durable("PSB"))
    await housing.violation(f"CONSUMER.INFO.{DEPT_STREAM}.{department_durable('PSB')}")
    # PSB's durable still holds what concerns PSB: HOUSING took nothing from it.
    baton.whistles.blow(
        Context(actor=Actor(Role.COMMUNITY, "tishu", "wang"), correlation_id="t"),
        community_id="tishu",
        category="security",
        title="Break-ins",
        description="Three cars broken into",
        summoned_departments=["PSB"],
    )
    msgs = await _fetch(psb, "PSB", 1)
    assert [m.subject for m in msgs] == ["baton.dept.PSB.inbox.whistle.blown"]


async def test_a_department_cannot_read_baton_events(served: Runtime, baton: Container, housing: Login) -> None:
    blow_direct(baton)
    await served.wait_idle()
    await housing.nc.subscribe("baton.evt.>")
    await housing.nc.flush()
    await housing.violation('Subscription to "baton.evt.>"')
    with pytest.raises(Exception):  # noqa: B017 - a denied API call times out or answers no responders
        await housing.js.stream_info(EVENTS_STREAM)
    await housing.violation(f'Publish to "{JS_API_PREFIX}.STREAM.INFO.{EVENTS_STREAM}"')
    with pytest.raises(Exception):  # noqa: B017 - its own account has no JetStream at all
        await housing.nc.jetstream(timeout=1).stream_info(EVENTS_STREAM)


async def test_a_reply_subject_cannot_smuggle_acks_into_baton_events(
    served: Runtime, baton: Container, housing: Login
) -> None:
    """JetStream answers to any reply subject; across accounts the answer stays in the sender's account."""
    [whistle_id] = blow_direct(baton)
    await served.wait_idle()
    js = served.nc.jetstream()  # type: ignore[union-attr]
    before = (await js.stream_info(EVENTS_STREAM)).state.messages
    body = json.dumps({"command_id": uuid.uuid4().hex, "whistle_id": whistle_id}).encode()
    await housing.nc.publish("baton.dept.HOUSING.cmd.report_in", body, reply="baton.evt.whistle.blown")
    await housing.nc.flush()
    await _fetch(housing, "HOUSING", 2)  # the command was taken: its outcome arrived
    await served.wait_idle()
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == before + 1  # the report-in, not the ack
    assert baton.store.max_position() == before + 1


async def test_the_auditor_reads_baton_events_and_cannot_publish(
    served: Runtime, baton: Container, auditor: Login
) -> None:
    blow_direct(baton, 2)
    await served.wait_idle()
    info = await auditor.js.stream_info(EVENTS_STREAM)
    assert info.state.messages == baton.store.max_position()
    sub = await auditor.js.pull_subscribe_bind(durable=AUDITOR_DURABLE, stream=EVENTS_STREAM)
    msgs = await sub.fetch(5, timeout=3)
    assert [m.headers["Baton-Position"] for m in msgs][:2] == ["1", "2"]
    for msg in msgs:
        await msg.ack()

    for subject in ("baton.evt.whistle.blown", "baton.dept.HOUSING.cmd.report_in", "baton.audit.checkpoint"):
        await auditor.nc.publish(subject, b"{}")
        await auditor.nc.flush()
        await auditor.violation(f'Publish to "{subject}"')
    with pytest.raises(Exception):  # noqa: B017 - no delete, purge or consumer creation either
        await auditor.js.purge_stream(EVENTS_STREAM)
    await auditor.violation(f"{JS_API_PREFIX}.STREAM.PURGE.{EVENTS_STREAM}")
    assert (await served.nc.jetstream().stream_info(EVENTS_STREAM)).state.messages == info.state.messages  # type: ignore[union-attr]


async def test_a_department_added_while_serving_can_log_in(
    served: Runtime, baton: Container, settings: Settings
) -> None:
    baton.org.add_department(Context(actor=ADMIN, correlation_id="t"), code="REDCROSS", name="红十字会")
    creds = _auth(settings).department("REDCROSS")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while "REDCROSS" not in served.departments:
        assert loop.time() < deadline, "the new department never got its NATS login"
        await asyncio.sleep(0.1)
    async for login in _login(served, creds):
        info = await login.js.consumer_info(DEPT_STREAM, department_durable("REDCROSS"))
        assert info.name == department_durable("REDCROSS")


def test_nats_creds_issue_prints_a_working_login(baton: Container, settings: Settings, monkeypatch: Any) -> None:
    seed_county_direct(baton)
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    result = CliRunner().invoke(cli, ["nats-creds", "issue", "--department", "HOUSING"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = _auth(settings).department("HOUSING")
    assert (doc["user"], doc["password"], doc["inbox_prefix"]) == (
        expected.user,
        expected.password,
        "_INBOX_dept_HOUSING",
    )
    assert doc["consumer"] == {"stream": DEPT_STREAM, "durable": "dept_HOUSING"}
    assert doc["js_api_prefix"] == JS_API_PREFIX

    unknown = CliRunner().invoke(cli, ["nats-creds", "issue", "--department", "NOPE"])
    assert unknown.exit_code == 2 and "not a department" in unknown.output and "HOUSING" in unknown.output


async def test_the_example_department_system_runs_on_issued_credentials(
    served: Runtime, baton: Container, settings: Settings, tmp_path: Path, monkeypatch: Any
) -> None:
    [whistle_id] = blow_direct(baton)  # summons HOUSING
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    issued = CliRunner().invoke(cli, ["nats-creds", "issue", "--department", "HOUSING"])
    assert issued.exit_code == 0, issued.output
    creds = tmp_path / "housing.json"
    creds.write_text(issued.stdout)
    example = ROOT / "examples" / "department_system.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(example),
        str(creds),
        whistle_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = [line.split(" ", 1) for line in out.decode().splitlines()]
    outcomes = {json.loads(b)["command_id"]: json.loads(b) for s, b in lines if s == "baton.dept.HOUSING.outcome"}
    assert outcomes["h-1"]["status"] == "accepted"
    assert outcomes["h-2"]["status"] == "rejected" and outcomes["h-2"]["error"]["message"]
    assert "baton.dept.HOUSING.inbox.whistle.blown" in [s for s, _ in lines]


async def test_an_external_nats_configured_from_nats_creds_config(
    settings: Settings, tmp_path: Path, monkeypatch: Any, clock: ManualClock
) -> None:
    """The documented route for an external server: its accounts block from `baton nats-creds config`."""
    data_dir = settings.data_dir
    service = NatsAuth.load(data_dir).service()
    port = free_port()
    external = settings.model_copy(
        update={"nats_url": f"nats://127.0.0.1:{port}", "nats_user": service.user, "nats_password": service.password}
    )
    baton = bootstrap(external, clock)
    seed_county_direct(baton)
    monkeypatch.setenv("BATON_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BATON_STORE", "sqlite")
    printed = CliRunner().invoke(cli, ["nats-creds", "config"])
    assert printed.exit_code == 0, printed.output
    assert "DEPT_HOUSING" in printed.stdout and "password" in printed.stdout
    assert service.password not in printed.stdout  # only hashes go into a server's config
    store = tmp_path / "external"
    config = tmp_path / "external.conf"
    config.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{\n  store_dir: "{store}"\n}}\n' + printed.stdout)
    server = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runtime = Runtime(baton, watch=False)
    try:
        for _ in range(100):
            try:
                await runtime.start()
                break
            except Exception:
                await asyncio.sleep(0.1)
        assert runtime.embedded is None
        [whistle_id] = blow_direct(baton)
        async for housing in _login(runtime, NatsAuth.load(data_dir).department("HOUSING")):
            body = json.dumps({"command_id": "ext-1", "whistle_id": whistle_id}).encode()
            await housing.nc.jetstream().publish("baton.dept.HOUSING.cmd.report_in", body)
            msgs = await _fetch(housing, "HOUSING", 2)
            outcome = next(json.loads(m.data) for m in msgs if m.subject.endswith(".outcome"))
            assert outcome["status"] == "accepted"
            await housing.nc.publish("baton.dept.PSB.cmd.report_in", body)
            await housing.nc.flush()
            await housing.violation('Publish to "baton.dept.PSB.cmd.report_in"')
    finally:
        await runtime.stop()
        baton.close()
        server.terminate()
        server.wait(10)
