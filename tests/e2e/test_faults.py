"""Faults under load, on a real `baton serve`: kill -9 and restart, nats-server killed, PostgreSQL restarted.
After each, every accepted command's events are in BATON_EVENTS and every read model exactly once, and no
rejected command left an event."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from tests.faults import Audit, Load, Served, audit, settle

WORKERS = 4


async def _run(
    served: Served, fault: Callable[[Load], Awaitable[None]], seconds: float = 2.0, read_timeout: float = 10.0
) -> tuple[Load, Audit]:
    await served.start()
    load = Load(served, read_timeout)
    await load.seed()
    nc = await served.nats()
    workers = [asyncio.create_task(load.worker()) for _ in range(WORKERS)]
    department = asyncio.create_task(load.department(nc))
    try:
        await asyncio.sleep(seconds)
        await fault(load)
        await asyncio.sleep(seconds)
    finally:
        load.stopping = True
        await asyncio.gather(*workers)
        await department
        await nc.close()
    await settle(served, load)
    result = await audit(served, load)
    await load.close()
    return load, result


def _check(result: Audit) -> None:
    print("fault-figures", json.dumps(result.figures()))
    assert result.lost == 0 and result.duplicated == 0
    assert result.published == result.events
    assert result.rejected > 0 and result.rejected_with_events == 0
    assert result.accepted > 0 and result.accepted_without_events == 0
    assert result.nats_rejected_with_events == 0 and result.nats_accepted_without_events == 0
    assert result.read_models_match_rebuild


async def test_kill_9_of_serve_then_restart(settings: Settings, tmp_path: Path) -> None:
    served = Served(tmp_path / "served", settings.store)
    projectors: list[int] = []

    async def fault(load: Load) -> None:
        projectors.append((await served.ready())["projector"]["pid"])
        served.kill9()
        await asyncio.sleep(0.5)
        await served.start()
        projectors.append((await served.ready())["projector"]["pid"])
        assert not await eventually_gone(projectors[0]), "the projector outlived the server killed under it"

    try:
        _, result = await _run(served, fault)
    finally:
        served.stop()
    _check(result)
    assert served.starts == 2
    assert result.unavailable_answers > 0  # the clients really met the crash
    assert projectors[0] != projectors[1]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_projector_killed_and_restarted(settings: Settings, tmp_path: Path) -> None:
    """The read models' process dies under load: serve restarts it and the views end equal to a rebuild."""
    served = Served(tmp_path / "served", settings.store)
    health: list[dict[str, Any]] = []

    async def fault(load: Load) -> None:
        health.append((await served.ready())["projector"])
        os.kill(health[0]["pid"], signal.SIGKILL)
        deadline = asyncio.get_running_loop().time() + 30
        while (current := (await served.ready())["projector"])["pid"] == health[0]["pid"]:
            assert asyncio.get_running_loop().time() < deadline, "the projector was not restarted"
            await asyncio.sleep(0.1)
        health.append(current)

    try:
        _, result = await _run(served, fault)
    finally:
        served.stop()
    _check(result)
    assert health[0]["restarts"] == 0 and health[1]["restarts"] == 1 and health[1]["running"]


async def eventually_gone(pid: int, timeout: float = 15.0) -> bool:
    """False once no live process has this pid (a zombie counts as gone); True if one still does at timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # NATS faults do not depend on the store
async def test_nats_server_killed_and_restarted(settings: Settings, tmp_path: Path) -> None:
    served = Served(tmp_path / "served", settings.store)

    killed: list[int] = []

    async def fault(load: Load) -> None:
        killed.append(served.kill_nats())
        await asyncio.sleep(1.0)
        await served.ready()
        killed.append(int((served.data_dir / "nats" / "nats-server.pid").read_text()))

    try:
        _, result = await _run(served, fault)
    finally:
        served.stop()
    _check(result)
    assert killed[0] != killed[1]  # serve's supervisor started a new nats-server


def _pg_cluster() -> list[str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


@pytest.mark.exclusive
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_restarted(settings: Settings, tmp_path: Path) -> None:
    if shutil.which("pg_ctlcluster") is None:
        pytest.fail("pg_ctlcluster is needed to restart PostgreSQL")
    # A short outage is absorbed by the store's retries (10 attempts, each waiting up to connect_timeout for a
    # connection); past them a command is answered 503. connect_timeout=1 keeps that within seconds here.
    served = Served(tmp_path / "served", settings.store + "&connect_timeout=1")

    async def fault(load: Load) -> None:
        await asyncio.to_thread(subprocess.run, [*_pg_cluster(), "stop", "-m", "fast"], check=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90  # the store retries 10 times first; a busy machine stretches each
        while not any(s.refused_503 for s in load.sent) and loop.time() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.to_thread(subprocess.run, [*_pg_cluster(), "start"], check=True)

    try:
        # The 503 comes after the store's ten tries (~1.2 s each here, longer behind a group commit's leader
        # retrying the same way): a client that gives up at 10 s saw none on a slow day, only its own timeouts.
        load, result = await _run(served, fault, read_timeout=60.0)
    finally:
        subprocess.run([*_pg_cluster(), "start"], check=False, capture_output=True)
        served.stop()
    _check(result)
    refused = [s for s in load.sent if s.refused_503]
    assert refused, "no command was answered 503 during the outage"
    assert all(s.accepted or s.what == "evaluate-too-early" for s in refused)  # and each succeeded on retry
