"""Department commands through the NATS intake versus a bare one-event-per-transaction loop, on the same backend.

    .venv/bin/python -m bench.intake_group_commit [--commands 2000] [--backend sqlite|postgres|both]
                                                  [--batch-size 100] [--full]

For each backend, in one run:
  bare      plain eventsourcing, `app.save(Tick())` N times: one event per transaction (Baton's recorder type
            and database);
  decisions Intake.decide_batch in this process on N report_in commands, batch by batch: the store's share;
  intake    N report_in commands queued on BATON_INTAKE, then the intake started (FastStream batch pull
            subscriber, as `baton serve` wires it) and timed until its durable consumer has acked them all,
            each outcome stored on BATON_DEPT by then; --full runs relay, projections, inbox and notary too;
  NATS only the same with a stub intake that answers without the store: what JetStream itself allows here
            (nats-server with sync_interval: always, as Baton runs it, fsyncs every stored outcome).
The county has one community and 2N whistles summoning HOUSING. Logs use the production configuration (JSON
at info level), written to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from faststream.nats import NatsBroker
from psycopg import sql

from consumers.intake import Decided, Incoming, Intake, intake_router
from infra.bootstrap import Container, Runtime, bootstrap, install_patches
from infra.clock import SystemClock
from infra.jetstream import INTAKE_STREAM, JetStreamPublisher, ensure_department_consumers, ensure_streams
from infra.logging import configure_logging
from infra.nats_server import EmbeddedNats
from infra.settings import Settings
from infra.store import Store
from services.access import Actor, Context, Role
from services.schemas import Outcome

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
ADMIN = Context(actor=Actor(Role.ADMIN, None, "bench"), correlation_id="bench")
COMMUNITY = Context(actor=Actor(Role.COMMUNITY, "tishu", "bench"), correlation_id="bench")
SUBJECT = "baton.dept.HOUSING.cmd.report_in"


class Tick(Aggregate):
    """One event: created."""

    @event("Created")
    def __init__(self, payload: str) -> None:
        self.payload = payload


class StubIntake:
    """Accepts every command without touching the store."""

    def decide_batch(self, items: Sequence[tuple[str, bytes, int]]) -> list[Decided]:
        decided = []
        for subject, data, seq in items:
            msg = Incoming.of(subject, data, seq)
            command_id = json.loads(data)["command_id"]
            outcome = Outcome(command_id=command_id, status="accepted", position=seq)
            decided.append((msg.code, outcome, msg.msg_id(command_id)))
        return decided


def bare_rate(settings: Settings, n: int) -> float:
    """Events per second saving n aggregates of one event each, one transaction each."""
    env = dict(Store._environment(settings))
    if not settings.is_postgres:
        env["SQLITE_DBNAME"] = str(settings.data_dir / "bare.sqlite")
    app = type("BareIntakeBench", (Application,), {})(env=env)
    try:
        app.save(Tick("warm-up"))
        started = time.perf_counter()
        for _ in range(n):
            app.save(Tick("x" * 200))
        return n / (time.perf_counter() - started)
    finally:
        app.close()


def seed(baton: Container, n: int) -> list[str]:
    """One community, HOUSING, a category it answers for, and n whistles summoning it (500 per transaction)."""
    org = baton.org
    org.add_unit(ADMIN, unit_id="dangtu", kind="district", parent_id=None, name="当涂县", residents=None)
    org.add_unit(ADMIN, unit_id="gushu", kind="street", parent_id="dangtu", name="姑孰镇", residents=None)
    org.add_unit(ADMIN, unit_id="tishu", kind="community", parent_id="gushu", name="提署社区", residents=12000)
    org.add_department(ADMIN, code="HOUSING", name="住建局")
    org.define_category(
        ADMIN,
        code="drainage",
        name="排水",
        duty="department",
        departments=["HOUSING"],
        deadline_class="normal",
        deadline_overrides={},
    )
    whistles: list[str] = []
    for start in range(0, n, 500):
        with baton.whistles.batch() as batch:
            receipts = [
                batch.app.blow(
                    COMMUNITY,
                    community_id="tishu",
                    category="drainage",
                    title=f"Drain {i}",
                    description="Blocked",
                    summoned_departments=["HOUSING"],
                )
                for i in range(start, min(n, start + 500))
            ]
            batch.save()
        whistles += [r.body["whistle_id"] for r in receipts]
    return whistles


def commands(whistles: list[str], prefix: str) -> list[bytes]:
    return [json.dumps({"command_id": f"{prefix}-{i}", "whistle_id": w}).encode() for i, w in enumerate(whistles)]


def decision_rate(baton: Container, whistles: list[str], batch_size: int) -> float:
    """Commands per second through Intake.decide_batch, without NATS."""
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    items = [(SUBJECT, data, seq) for seq, data in enumerate(commands(whistles, "direct"), 1)]
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        decided = intake.decide_batch(items[start : start + batch_size])
        assert all(outcome.status == "accepted" for _, outcome, _ in decided), decided[0]
    return len(items) / (time.perf_counter() - started)


async def intake_rate(
    baton: Container, intake: Any, tmp: Path, whistles: list[str], full: bool, batch_size: int
) -> float:
    """Commands per second: a backlog of one report_in per whistle, from starting the intake until all are acked."""
    server = EmbeddedNats(tmp)
    await server.start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    publisher = JetStreamPublisher(nc)
    await publisher.start()
    broker: NatsBroker | None = None
    runtime: Runtime | None = None
    try:
        if full:  # the runtime catches up with the seeding first; the commands queue while it is down
            warm = Runtime(baton, nats_url=server.url, watch=False)
            await warm.start()
            await warm.wait_idle(timeout=600)
            await warm.stop()
        else:
            await ensure_streams(nc)
            await ensure_department_consumers(nc, ["HOUSING"])
        acks = [await publisher.publish(SUBJECT, data) for data in commands(whistles, "nats")]
        last = max(ack.seq for ack in await asyncio.gather(*acks))
        before = await asyncio.to_thread(baton.store.max_position)
        started = time.perf_counter()
        if full:
            runtime = Runtime(baton, nats_url=server.url, watch=False)
            await runtime.start()
        else:
            install_patches()  # as Runtime.start() does before its brokers
            broker = NatsBroker(server.url, logger=None)
            broker.include_router(intake_router(intake, lambda: publisher, batch_size=batch_size))
            await broker.start()
        while True:
            info = await js.consumer_info(INTAKE_STREAM, "baton_intake")
            if info.ack_floor.stream_seq >= last and not info.num_ack_pending:
                break
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        if isinstance(intake, Intake):
            applied = await asyncio.to_thread(baton.store.max_position) - before
            assert applied == len(whistles), f"{applied} events for {len(whistles)} commands"
        return len(whistles) / elapsed
    finally:
        if broker is not None:
            await broker.stop()
        if runtime is not None:
            await runtime.stop()
        await publisher.close()
        await nc.close()
        await server.stop()


async def run(backend: str, n: int, full: bool, batch_size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as name:
        tmp = Path(name)
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        store = f"{PG_URL}?schema={schema}" if backend == "postgres" else "sqlite"
        settings = Settings(data_dir=tmp, store=store, watch_interval=3600, checkpoint_interval=1.0)
        try:
            baton = bootstrap(settings, SystemClock())
            try:
                bare = bare_rate(settings, n)
                whistles = await asyncio.to_thread(seed, baton, 2 * n)
                decisions = await asyncio.to_thread(decision_rate, baton, whistles[:n], batch_size)
                intake = Intake(baton.whistles, baton.org, baton.store.commands)
                nats_intake = await intake_rate(baton, intake, tmp / "nats", whistles[n:], full, batch_size)
                nats_only = await intake_rate(baton, StubIntake(), tmp / "nats-stub", whistles[n:], False, batch_size)
            finally:
                baton.close()
        finally:
            if backend == "postgres":
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    mode = "full runtime" if full else "intake only"
    print(f"{backend}, {n} commands, batches of {batch_size}:")
    print(f"  bare eventsourcing, one event per transaction   {bare:7.0f} events/s")
    for label, rate in [
        ("intake decisions in process (decide_batch)", decisions),
        (f"NATS intake, end to end ({mode})", nats_intake),
        ("NATS alone (stub intake, no store)", nats_only),
    ]:
        print(f"  {label:46} {rate:7.0f} commands/s  {rate / bare:4.1f}x bare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=100, help="the intake's pull batch (not with --full)")
    parser.add_argument("--full", action="store_true", help="run relay, projections, inbox and notary as well")
    args = parser.parse_args()
    log_file = Path(tempfile.gettempdir()) / "baton-bench-intake.log"
    configure_logging("info", "json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(log_file.open("w"))
    for backend in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
        asyncio.run(run(backend, args.commands, args.full, args.batch_size))
    print(f"(logs in {log_file})")


if __name__ == "__main__":
    main()
