"""Baton on a 3-node NATS cluster: replicated streams that are never downgraded, clients that know every node, and
`baton serve` riding out the SIGKILL of the node that leads BATON_EVENTS and every other stream and consumer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from typer.testing import CliRunner

from infra.bootstrap import Container, Runtime, bootstrap
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.jetstream import (
    AUDIT_STREAM,
    AUDITOR_DURABLE,
    DEPT_STREAM,
    EVENTS_STREAM,
    INTAKE_STREAM,
    STREAMS,
    UNAVAILABLE,
    ensure_department_consumers,
    ensure_streams,
    jetstream_api,
    replicas_of,
)
from infra.nats_auth import NatsAuth
from infra.nats_cluster import NatsCluster
from infra.settings import Settings
from tests.conftest import DEPARTMENTS, START, blow_direct, seed_county_direct
from tests.faults import HealthSamples, Load, Served, audit, recoveries, settle
from tests.scenarios import ROOT

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "cluster-tests-nats-secret-long-enough-0123456789"
SECOND = 1_000_000_000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    """Three nats-server nodes on loopback with Baton's accounts from SECRET (shared by this module's tests)."""
    nodes = NatsCluster(tmp_path_factory.mktemp("cluster"), NatsAuth(SECRET.encode()), [c for c, _ in DEPARTMENTS])
    await nodes.start()
    yield nodes
    await nodes.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def nc(cluster: NatsCluster) -> AsyncIterator[Client]:
    """Baton's service login to the cluster; Baton's streams are deleted afterwards, so each test starts afresh."""
    conn = await cluster.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    yield conn
    for stream in STREAMS:
        try:
            await jetstream_api(conn, f"STREAM.DELETE.{stream}")
        except NotFoundError:
            pass
    await conn.close()


async def copies(nc: Client, stream: str, durable: str | None = None) -> int:
    """How many nodes hold the stream (or its consumer) now."""
    call = f"CONSUMER.INFO.{stream}.{durable}" if durable else f"STREAM.INFO.{stream}"
    return replicas_of(await jetstream_api(nc, call))


async def consumers(nc: Client, stream: str) -> list[str]:
    return list((await jetstream_api(nc, f"CONSUMER.NAMES.{stream}")).get("consumers") or [])


async def until(check: Any, timeout: float = 60.0) -> None:
    """Wait until CHECK is true; JetStream not answering (a stream moving to new peers) counts as not yet."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(*UNAVAILABLE):
            if await check():
                return
        assert asyncio.get_running_loop().time() < deadline, f"not so after {timeout}s"
        await asyncio.sleep(0.2)


async def update_stream(nc: Client, stream: str, **changes: Any) -> None:
    """An operator's change to a stream's configuration (as `nats stream edit` makes it)."""
    config = (await jetstream_api(nc, f"STREAM.INFO.{stream}"))["config"]
    await jetstream_api(nc, f"STREAM.UPDATE.{stream}", {**config, **changes})


async def test_streams_and_consumers_get_the_replicas_set_and_never_lose_them(nc: Client) -> None:
    """R1 streams of a single-node past are raised to R3; a later start with BATON_NATS_REPLICAS=1 lowers nothing,
    and the operator's own settings survive every start."""
    assert await ensure_streams(nc, 1) == dict.fromkeys(STREAMS, 1)
    await ensure_department_consumers(nc, ["PSB"], 1)
    auditor = (await jetstream_api(nc, f"CONSUMER.INFO.{AUDIT_STREAM}.{AUDITOR_DURABLE}"))["config"]
    await jetstream_api(  # a consumer pinned to one copy (an older Baton, or an operator)
        nc,
        f"CONSUMER.CREATE.{AUDIT_STREAM}.{AUDITOR_DURABLE}",
        {"stream_name": AUDIT_STREAM, "config": {**auditor, "num_replicas": 1}, "action": "update"},
    )

    assert await ensure_streams(nc, 3) == dict.fromkeys(STREAMS, 3)
    await ensure_department_consumers(nc, ["PSB"], 3)

    async def all_on_three_nodes() -> bool:
        for stream in STREAMS:
            if await copies(nc, stream) != 3:
                return False
            for durable in await consumers(nc, stream):
                if await copies(nc, stream, durable) != 3:
                    return False
        return True

    await until(all_on_three_nodes)  # JetStream scales a stream up in the background
    assert set(await consumers(nc, DEPT_STREAM)) == {"dept_PSB"}

    # The operator's own settings, and a contract field changed by mistake.
    await update_stream(nc, INTAKE_STREAM, max_age=90 * 86400 * SECOND, compression="s2")
    await update_stream(nc, EVENTS_STREAM, duplicate_window=300 * SECOND, discard="old", metadata={"owner": "ops"})

    assert await ensure_streams(nc, 1) == dict.fromkeys(STREAMS, 3)  # a second instance with the default setting
    await ensure_department_consumers(nc, ["PSB"], 1)
    for stream in STREAMS:
        info = await jetstream_api(nc, f"STREAM.INFO.{stream}")
        assert info["config"]["num_replicas"] == 3, stream
        assert replicas_of(info) == 3, stream
        for durable in await consumers(nc, stream):
            assert await copies(nc, stream, durable) == 3, (stream, durable)
    intake = (await jetstream_api(nc, f"STREAM.INFO.{INTAKE_STREAM}"))["config"]
    assert (intake["max_age"], intake["compression"]) == (90 * 86400 * SECOND, "s2")
    events = (await jetstream_api(nc, f"STREAM.INFO.{EVENTS_STREAM}"))["config"]
    assert events["duplicate_window"] == 300 * SECOND  # longer than Baton's: kept
    assert events["discard"] == "new"  # Baton's contract: restored
    assert events["metadata"]["owner"] == "ops"


@pytest.fixture
def sqlite_cluster_settings(tmp_path: Path, cluster: NatsCluster) -> Settings:
    return Settings(
        data_dir=tmp_path,
        store="sqlite",
        nats_url=cluster.url,
        nats_secret=SECRET,
        nats_replicas=3,
        watch_interval=3600,
        checkpoint_interval=0.5,
    )


@pytest.fixture
def cluster_baton(sqlite_cluster_settings: Settings) -> Iterator[Container]:
    baton = bootstrap(sqlite_cluster_settings, ManualClock(START))
    seed_county_direct(baton)
    yield baton
    baton.close()


async def test_a_department_system_reaches_baton_through_any_node(
    cluster: NatsCluster,
    nc: Client,
    cluster_baton: Container,
    sqlite_cluster_settings: Settings,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    """Baton connects with every URL of BATON_NATS_URL; `baton nats-creds issue` hands them all out (and never
    Baton's own login); the example department system runs on them with one node down."""
    runtime = Runtime(cluster_baton, watch=False)
    await runtime.start()
    try:
        [whistle_id] = blow_direct(cluster_baton)  # summons HOUSING
        await runtime.wait_idle()
        health = await runtime.health()
        assert health["status"] == "ok" and health["nats"]["url"] == runtime.url
        for name, value in {
            "BATON_DATA_DIR": str(sqlite_cluster_settings.data_dir),
            "BATON_STORE": "sqlite",
            "BATON_NATS_SECRET": SECRET,
            "BATON_NATS_URL": ",".join(u.replace("nats://", "nats://baton:hunter2@") for u in runtime.servers),
        }.items():
            monkeypatch.setenv(name, value)
        issued = CliRunner().invoke(cli, ["nats-creds", "issue", "--department", "HOUSING"])
        assert issued.exit_code == 0, issued.output
        creds = json.loads(issued.stdout)
        assert creds["servers"] == runtime.servers and "hunter2" not in issued.stdout
        (tmp_path / "housing.json").write_text(issued.stdout)
        await cluster.kill(cluster.node(creds_first_node(cluster, creds)))
        try:
            for stream, durable in [(INTAKE_STREAM, "baton_intake"), (DEPT_STREAM, "dept_HOUSING")]:
                await cluster.stream_leader(stream, nc)  # the survivors have elected new leaders
                await cluster.consumer_leader(stream, durable, nc)
            example = ROOT / "examples" / "department_system.py"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(example),
                str(tmp_path / "housing.json"),
                whistle_id,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            for node in cluster.nodes:
                await cluster.start_node(node)
        assert proc.returncode == 0, err.decode()
        lines = [line.split(" ", 1) for line in out.decode().splitlines()]
        outcomes = {json.loads(b)["command_id"]: json.loads(b) for s, b in lines if s.endswith(".outcome")}
        assert outcomes["h-1"]["status"] == "accepted"
        assert outcomes["h-2"]["status"] == "rejected"
    finally:
        await runtime.stop()


def creds_first_node(cluster: NatsCluster, creds: dict[str, Any]) -> str:
    """The node behind the first URL a department system is given."""
    return next(n.name for n in cluster.nodes if n.url == creds["servers"][0])


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_serve_rides_out_the_death_of_the_node_leading_every_stream(
    cluster: NatsCluster, nc: Client, settings: Settings, tmp_path: Path
) -> None:
    """`baton serve` (HTTP, intake, inbox, relay; read models in its projector process) on R3 streams under load;
    the node leading BATON_EVENTS, BATON_INTAKE, BATON_DEPT, BATON_AUDIT and every consumer is SIGKILLed. With
    that node still dead everything catches up; after it rejoins: no event lost or doubled, BATON_EVENTS equal to
    the store in order, every read model equal to a rebuild, one outcome per department command."""
    served = Served(tmp_path / "served", settings.store, nats_url=cluster.url, nats_secret=SECRET, nats_replicas=3)
    streams = (EVENTS_STREAM, INTAKE_STREAM, DEPT_STREAM, AUDIT_STREAM)
    samples = HealthSamples(served)
    try:
        await served.start()
        load = Load(served)
        await load.seed()
        for stream in streams:
            assert await copies(nc, stream) == 3, stream
            for durable in await consumers(nc, stream):
                assert await copies(nc, stream, durable) == 3, (stream, durable)
        victim = await cluster.stream_leader(EVENTS_STREAM)
        await cluster.gather_leaders(victim, streams)
        department_nc = await served.nats()
        samples.task = asyncio.create_task(samples.run())
        workers = [asyncio.create_task(load.worker()) for _ in range(4)]
        department = asyncio.create_task(load.department(department_nc))
        try:
            await asyncio.sleep(3.0)
            killed_at = time.monotonic()
            await cluster.kill(victim)
            await asyncio.sleep(4.0)  # commands go on through the election
        finally:
            load.stopping = True
            await asyncio.gather(*workers)
            await department
            await department_nc.close()
        await settle(served, load, timeout=120)  # caught up with the node still dead
        samples.task.cancel()
        stalls = {"relay": samples.stall(killed_at, lambda published, views: published)}
        for name in samples.rows[-1][3]:
            stalls[name] = samples.stall(killed_at, lambda published, views, name=name: views[name])

        await cluster.start_node(victim)
        await cluster.wait_current(streams)
        result = await audit(served, load)
        await load.close()
    finally:
        if samples.task is not None:
            samples.task.cancel()
        served.stop()
    logged = recoveries(served.log)
    print("cluster-fault-figures", json.dumps({**result.figures(), "stall_s": stalls, "logged_stall_s": logged}))
    assert result.lost == 0 and result.duplicated == 0
    assert result.published == result.events
    assert result.rejected > 0 and result.rejected_with_events == 0
    assert result.accepted > 0 and result.accepted_without_events == 0
    assert result.nats_rejected_with_events == 0 and result.nats_accepted_without_events == 0
    assert result.read_models_match_rebuild
