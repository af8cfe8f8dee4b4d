"""Three `baton serve` instances on one PostgreSQL and a 3-node NATS cluster act as one Baton: started at once on
an empty database, one key set, each singleton role held by one process at a time and moved when its holder dies
or stands still, and nothing lost or doubled through the kill -9 of an instance and of a NATS node."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio

from infra.jetstream import AUDIT_STREAM, DEPT_STREAM, EVENTS_STREAM, INTAKE_STREAM
from infra.lease import ROLES
from infra.nats_auth import NatsAuth
from infra.nats_cluster import NatsCluster
from tests.conftest import DEPARTMENTS, PG_URL
from tests.faults import HealthSamples, Load, Served, audit, settle

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "scale-out-tests-nats-secret-long-enough-0123456789"
MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
LEASE_TTL = 2.0
STREAMS = (EVENTS_STREAM, INTAKE_STREAM, DEPT_STREAM, AUDIT_STREAM)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster(tmp_path_factory.mktemp("cluster"), NatsAuth(SECRET.encode()), [c for c, _ in DEPARTMENTS])
    await nodes.start()
    yield nodes
    await nodes.stop()


def instances(root: Path, store: str, cluster: NatsCluster, count: int = 3) -> list[Served]:
    """COUNT instances as an operator configures them: shared store, NATS, replicas and master key; nothing else."""
    shared = {
        "BATON_MASTER_KEY": MASTER_KEY,
        "BATON_LEASE_TTL": str(LEASE_TTL),
        "BATON_WATCH_INTERVAL": "0.5",
        "BATON_LOG_LEVEL": "info",
    }
    return [
        Served(
            root / f"i{n}",
            store,
            cluster.url,
            SECRET,
            nats_replicas=3,
            token_secret=None,
            env={**shared, "BATON_INSTANCE": f"i{n}"},
        )
        for n in range(1, count + 1)
    ]


async def health(served: Served) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return dict((await client.get(f"{served.url}/health")).json())


async def holders(served: Served) -> dict[str, str]:
    """Each role's live holder (instance/pid), as one instance's /health reports the lease table."""
    leases = (await health(served))["leases"]
    return {role: lease["holder"] for role, lease in leases.items() if lease["expires_in"] > 0}


async def until(check: Any, timeout: float = 60.0, step: float = 0.05) -> float:
    """Wait until CHECK (a coroutine function) is true; the seconds it took."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            if await check():
                return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"not so after {timeout} s"
        await asyncio.sleep(step)


class Positions:
    """Every read model's stored position, read from PostgreSQL every 50 ms: it must never go back."""

    def __init__(self, store: str, schema: str) -> None:
        self.conninfo, self.schema = store.split("?")[0], schema
        self.went_back: list[tuple[str, int, int]] = []
        self.samples = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        last: dict[str, int] = {}
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            while True:
                with contextlib.suppress(psycopg.Error):
                    cursor = await conn.execute(f'SELECT name, position FROM "{self.schema}".baton_tracking')
                    for name, position in await cursor.fetchall():
                        if position < last.get(name, 0):
                            self.went_back.append((name, last[name], position))
                        last[name] = position
                    self.samples += 1
                await asyncio.sleep(0.05)


async def test_three_instances_act_as_one_through_deaths_and_a_pause(
    cluster: NatsCluster, pg_schema: str, tmp_path: Path
) -> None:
    store = f"{PG_URL}?schema={pg_schema}&pool_size=3&max_overflow=4"
    three = instances(tmp_path, store, cluster)
    positions = Positions(store, pg_schema)
    figures: dict[str, Any] = {}
    try:
        # 1. Started at once on an empty database: all healthy, one key set, every role held exactly once.
        started = time.monotonic()
        await asyncio.gather(*(served.start() for served in three))
        figures["started_at_once_s"] = round(time.monotonic() - started, 1)
        held = [set((await health(served))["roles"]) for served in three]
        assert set().union(*held) == set(ROLES) and sum(len(h) for h in held) == len(ROLES), held
        admin = three[0].auth("admin", None, "root")
        async with httpx.AsyncClient(timeout=10.0) as client:
            keys = [(await client.get(f"{s.url}/v1/audit/key", headers=admin)).json() for s in three]
        assert keys[0] == keys[1] == keys[2] and "vkey" in keys[0]  # a token of i1's accepted on i2 and i3
        positions.task = asyncio.create_task(positions.run())
        load = Load(three)
        await load.seed()

        # 2. Deadlines pass with three watchers able to run: each is recorded once, and escalates once.
        community, housing = load.community, load.housing
        due = []
        for _ in range(4):
            blown = await load.command("blow", "/v1/whistles", DRAIN, community)
            wid = blown.body["whistle_id"]
            await load.command("report-in", f"/v1/whistles/{wid}/report-in", None, housing)
            soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
            dispatch = {"lead_department": "HOUSING", "due_at": soon}
            assert (await load.command("dispatch", f"/v1/whistles/{wid}/dispatch", dispatch, community)).accepted
            due.append(wid)

        async def all_missed() -> bool:
            async with httpx.AsyncClient(timeout=5.0) as client:
                for wid in due:
                    timeline = (await client.get(f"{three[1].url}/v1/whistles/{wid}", headers=admin)).json()
                    if not any(t["type"] == "deadline_missed" for t in timeline["timeline"]):
                        return False
            return True

        await until(all_missed, timeout=30)
        await asyncio.sleep(1.5)  # three more watcher ticks
        async with httpx.AsyncClient(timeout=5.0) as client:
            for wid in due:
                timeline = (await client.get(f"{three[2].url}/v1/whistles/{wid}", headers=admin)).json()["timeline"]
                kinds = Counter(t["type"] for t in timeline)
                assert kinds["deadline_missed"] == 1 and kinds["escalated"] == 1, kinds

        # 3. The projector holding the read models stands still past its lease: another takes over; resumed, it
        # finds its lease lost, stops what it was doing (any write it was making is refused by the fence) and
        # follows, holding nothing.
        before = await holders(three[0])
        paused_holder = before["projections"]
        paused_pid = int(paused_holder.rsplit("/", 1)[1])
        owner = next(s for s in three if paused_holder.startswith(f"{s.extra_env['BATON_INSTANCE']}/"))
        owner.pause(paused_pid)
        paused_at = time.monotonic()
        try:
            workers = [asyncio.create_task(load.worker()) for _ in range(2)]

            async def projections_moved() -> bool:
                now = await holders(three[0])
                return now.get("projections") not in (None, paused_holder)

            figures["paused_projector_replaced_s"] = round(await until(projections_moved, timeout=30), 2)
            top = (await health(three[0]))["store"]["position"]

            async def views_caught_up_without_it() -> bool:
                h = await health(three[0])
                return all(p["position"] >= top for p in h["projections"].values())

            await until(views_caught_up_without_it, timeout=30)
            figures["views_caught_up_after_pause_s"] = round(time.monotonic() - paused_at, 2)
        finally:
            owner.resume(paused_pid)
        await asyncio.sleep(LEASE_TTL * 2)
        load.stopping = True
        await asyncio.gather(*workers)
        load.stopping = False
        after = await holders(three[0])
        assert after["projections"] != paused_holder and after["notary"] != paused_holder
        os.kill(paused_pid, 0)  # it is alive: a follower now
        resumed_log = owner.log.read_text()
        assert '"lease_lost"' in resumed_log and '"lease": "projections"' in resumed_log

        # 4. Mixed load; kill -9 of the instance that relays (and of its projector with it), then of the NATS node
        # leading BATON_EVENTS. Measured: how long until events are relayed again, read models move again.
        relaying = (await holders(three[0]))["relay"]
        victim = next(s for s in three if relaying.startswith(f"{s.extra_env['BATON_INSTANCE']}/"))
        survivors = [s for s in three if s is not victim]
        samples = HealthSamples(survivors[0])
        samples.task = asyncio.create_task(samples.run())
        department_nc = await survivors[0].nats()
        workers = [asyncio.create_task(load.worker()) for _ in range(4)]
        department = asyncio.create_task(load.department(department_nc))
        try:
            await asyncio.sleep(3.0)
            killed_at = time.monotonic()
            victim.kill9()

            async def relayed_elsewhere() -> bool:
                return (await holders(survivors[0])).get("relay", relaying) != relaying

            figures["relay_lease_moved_s"] = round(await until(relayed_elsewhere, timeout=30), 2)
            await asyncio.sleep(3.0)
            node = await cluster.stream_leader(EVENTS_STREAM)
            node_killed_at = time.monotonic()
            await cluster.kill(node)
            await asyncio.sleep(4.0)
        finally:
            load.stopping = True
            await asyncio.gather(*workers)
            await department
            await department_nc.close()
        for served in survivors:
            await settle(served, load, timeout=120)
        samples.task.cancel()
        figures["relay_stall_after_instance_kill_s"] = samples.stall(killed_at, lambda published, views: published)
        figures["views_stall_after_instance_kill_s"] = max(
            samples.stall(killed_at, lambda p, views, n=name: views[n]) for name in samples.rows[-1][3]
        )
        figures["relay_stall_after_node_kill_s"] = samples.stall(node_killed_at, lambda published, views: published)
        async with httpx.AsyncClient(timeout=10.0) as client:
            boards = [
                (await client.get(f"{s.url}/v1/whistles", params={"limit": 200}, headers=admin)).json()
                for s in survivors
            ]
        assert boards[0] == boards[1]  # every instance reads the same read models
        await cluster.start_node(node)
        await cluster.wait_current(STREAMS)
        positions.task.cancel()
        result = await audit(survivors[0], load, others=survivors[1:])
        await load.close()
        # One checkpoint chain under one key, across the notary's failover: an export verifies pinned to that key.
        bundle = tmp_path / "bundle"
        await asyncio.to_thread(survivors[0].cli, "export", "--out", str(bundle))
        verified = await asyncio.to_thread(survivors[1].cli, "verify", str(bundle), "--key", keys[0]["vkey"])
        figures["verified"] = verified.strip().splitlines()[-1]
    finally:
        if positions.task is not None:
            positions.task.cancel()
        for served in three:
            served.stop()
    print("scale-out-figures", json.dumps({**result.figures(), **figures, "position_samples": positions.samples}))
    assert positions.went_back == [] and positions.samples > 50
    assert result.lost == 0 and result.duplicated == 0 and result.published == result.events
    assert result.accepted > 0 and result.accepted_without_events == 0 and result.rejected_with_events == 0
    assert result.nats_rejected_with_events == 0 and result.nats_accepted_without_events == 0
    assert result.nats_outcomes_in_order
    assert result.read_models_match_rebuild


DRAIN = {
    "community_id": "tishu",
    "category": "drainage",
    "title": "Blocked drain",
    "description": "Scale-out test",
    "summoned_departments": ["HOUSING"],
}
