"""Leases and fences: each singleton role runs in one process at a time, and a holder that lost its lease
cannot write; a read model's position only moves forward from where its writer read it."""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from infra.bootstrap import Container, Runtime, bootstrap
from infra.clock import ManualClock
from infra.lease import Fence, LeaseLost, Leases, Roles
from infra.nats_server import EmbeddedNats
from infra.settings import Settings
from services.access import SYSTEM_ACTOR, Context
from tests.conftest import PG_URL, START, blow_direct, seed_county_direct


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_lease_is_held_by_one_renewed_by_it_and_taken_once_expired(baton: Container) -> None:
    a, b = Leases(baton.views, "a/1", ttl=0.4), Leases(baton.views, "b/1", ttl=0.4)
    first = a.ask("relay")
    assert first is not None and first.epoch == 1
    assert b.ask("relay") is None
    assert a.ask("relay") == first  # renewed, same epoch
    assert a.all()["relay"]["holder"] == "a/1"
    time.sleep(0.5)
    taken = b.ask("relay")
    assert taken is not None and taken.epoch == 2
    assert a.ask("relay") is None
    with baton.views.transaction() as tx:
        assert not a.holds(tx, first) and b.holds(tx, taken)
    b.release(taken)
    again = a.ask("relay")
    assert again is not None and again.epoch == 3


def test_a_holder_that_lost_its_lease_has_its_writes_refused(baton: Container) -> None:
    seed_county_direct(baton)
    blow_direct(baton, 3)
    old, new = Leases(baton.views, "old/1", ttl=0.3), Leases(baton.views, "new/1", ttl=5)
    holding = old.ask("projections")
    assert holding is not None
    board = baton.board
    board.fence = Fence(old, holding)
    board.catch_up(batch_size=10)
    applied = board.position()
    assert applied == baton.store.max_position()
    time.sleep(0.4)
    assert new.ask("projections") is not None
    blow_direct(baton, 2)
    with pytest.raises(LeaseLost, match="no longer held by old/1 at epoch 1"):
        board.catch_up()
    assert board.position() == applied and board.fence.refused == 1
    notary = baton.notary
    notary.fence = Fence(old, holding)
    with pytest.raises(LeaseLost):
        notary.catch_up()
    assert notary.position() == 0


def test_two_writers_of_one_read_model_apply_each_event_once(postgres_url: str, pg_schema: str, tmp_path: Path) -> None:
    """Two instances' projectors (no lease between them) catching up at once: positions only move forward."""
    store = f"{postgres_url}?schema={pg_schema}"
    clock = ManualClock(START)
    one = bootstrap(Settings(data_dir=tmp_path / "one", store=store), clock)
    two = bootstrap(Settings(data_dir=tmp_path / "two", store=store), clock)
    try:
        seed_county_direct(one)
        whistles = blow_direct(one, 100)
        clock.advance(timedelta(days=2))
        for whistle in whistles:  # each misses its report-in: HOUSING's escalations are counted +1 each
            assert one.whistles.check_deadlines(Context(actor=SYSTEM_ACTOR, correlation_id="t"), whistle)
        errors: list[BaseException] = []
        start = threading.Barrier(6)

        def catch_up(baton: Container) -> None:
            start.wait()
            try:
                baton.scorecard.catch_up(batch_size=3)
                baton.board.catch_up(batch_size=2)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=catch_up, args=(b,)) for b in (one, two) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        housing = next(c for c in one.scorecard.view.scorecards() if c["department"] == "HOUSING")
        assert (housing["summoned"], housing["escalations"]) == (100, 100)
        assert one.board.position() == one.store.max_position()
        assert len(one.board.view.dump()["baton_whistles"]) == 100
    finally:
        one.close()
        two.close()


def _start_on(schema: str) -> str:
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), store=f"{PG_URL}?schema={schema}")
    baton = bootstrap(settings)
    try:
        Leases(baton.views, "x/1")
        return "started"
    finally:
        baton.close()


def test_instances_starting_at_once_on_an_empty_database_all_start(postgres_url: str) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    try:
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            assert pool.map(_start_on, [schema] * 4) == ["started"] * 4
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_each_role_runs_in_one_process_and_moves_when_its_holder_dies(baton: Container) -> None:
    running: dict[str, list[str]] = {"relay": [], "watcher": []}

    def role(name: str, holder: str):
        async def run(fence: Fence) -> None:
            running[name].append(holder)
            try:
                await asyncio.Event().wait()
            finally:
                running[name].remove(holder)

        return run

    processes = {
        holder: Roles(Leases(baton.views, holder, ttl=0.5), {n: role(n, holder) for n in running})
        for holder in ("a/1", "b/1", "c/1")
    }
    for roles in processes.values():
        await roles.start()
    await asyncio.sleep(0.3)
    assert running == {"relay": ["a/1"], "watcher": ["a/1"]}  # the first to ask holds both, alone
    # a dies: its asking and its roles stop, nothing is released; another takes each role once its lease expires.
    dead = processes.pop("a/1")
    assert dead._tasks
    for task in [*dead._tasks, *(r.task for r in dead.running.values())]:
        task.cancel()
    await asyncio.sleep(0.05)
    assert running == {"relay": [], "watcher": []}
    started = time.monotonic()
    while not (running["relay"] and running["watcher"]):
        await asyncio.sleep(0.02)
        assert time.monotonic() - started < 5, running
    took = time.monotonic() - started
    await asyncio.sleep(0.5)
    assert len(running["relay"]) == len(running["watcher"]) == 1 and "a/1" not in running["relay"] + running["watcher"]
    print(f"roles taken over {took:.2f} s after their holder died (ttl 0.5 s)")
    for roles in processes.values():
        await roles.stop()
    assert running == {"relay": [], "watcher": []}


async def test_read_models_follow_the_store_when_nothing_reaches_them_over_nats(
    baton: Container, nats_server: EmbeddedNats
) -> None:
    """Another process holds the relay but publishes nothing (its NATS is elsewhere): the read models still
    catch up, from the store, within seconds."""
    assert Leases(baton.views, "elsewhere/1", ttl=3600).ask("relay") is not None
    runtime = Runtime(baton, nats_url=nats_server.url, watch=False)
    await runtime.start()
    try:
        assert "relay" not in runtime.roles.held and "projections" in runtime.roles.held
        await asyncio.sleep(0.5)  # the projections' catch-up at the start of their role is done
        seed_county_direct(baton)
        blow_direct(baton, 3)
        top = baton.store.max_position()
        started = time.monotonic()
        while baton.board.position() < top:
            assert time.monotonic() - started < 15, "the read models never caught up from the store"
            await asyncio.sleep(0.1)
        assert await runtime._published() == 0  # nothing went out on NATS
        assert len(baton.board.view.dump()["baton_whistles"]) == 3
    finally:
        await runtime.stop()
