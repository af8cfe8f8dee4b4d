"""A busy store is waited for, not reported unreachable: `baton serve` answers commands and finalisations while
its projector process catches up on thousands of events without a 503; two notaries catching up at once append
each leaf once; a SQLite store still locked after the busy timeout is answered 503 `store_busy`, saying so."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from api.tokens import Tokens
from audit.merkle import leaf_hash, root_of
from domain.assessment import UNIT_TYPES
from infra.bootstrap import Container, bootstrap
from infra.clock import ManualClock
from infra.notary import canonical
from infra.settings import Settings
from infra.sql import Tx
from services.access import Actor, Context, Role
from tests.conftest import ADMIN, START, Auth, seed_county_direct
from tests.faults import Load, Sent, Served
from tests.scenarios import ROOT

SCHEME = json.loads((ROOT / "standards" / "assessment-scheme-2026.1.json").read_text())
COMMUNITY = Context(actor=Actor(Role.COMMUNITY, "tishu", "wang"), correlation_id="seed")
HOUSING = Context(actor=Actor(Role.DEPARTMENT, "HOUSING", "duty"), correlation_id="seed")
YEARS = (2024, 2025)
ROUNDS = 3  # each (year, unit type) finalised this often: recorded once, then refused as already final
WORKERS = 4


def seed_whistles(baton: Container, clock: ManualClock, whistles: int) -> None:
    """Whistles blown, reported in, dispatched, completed and fed back: five events each, 500 whistles a save."""
    app = baton.whistles
    for start in range(0, whistles, 500):
        with app.batch() as batch:
            batched = batch.app
            for i in range(start, min(start + 500, whistles)):
                clock.advance(timedelta(minutes=10))
                wid = batched.blow(
                    COMMUNITY,
                    community_id="tishu",
                    category="drainage",
                    title=f"Drain {i}",
                    description="Blocked",
                    summoned_departments=["HOUSING"],
                ).body["whistle_id"]
                batched.report_in(HOUSING, wid)
                batched.dispatch(COMMUNITY, wid, lead_department="HOUSING")
                batched.complete(HOUSING, wid, summary="cleared")
                batched.feed_back(HOUSING, wid, result="cleared", resolved=True)
            batch.save()


def seed_history(settings: Settings, whistles: int) -> int:
    """The county, the scheme and the whistles of 2025, straight into the store; the views stay empty."""
    clock = ManualClock(datetime(2024, 12, 30, 1, 0, tzinfo=UTC))  # the history spans 2024 and 2025, both over
    baton = bootstrap(settings, clock)
    try:
        seed_county_direct(baton)
        baton.assessment.publish_scheme(Context(actor=ADMIN, correlation_id="seed"), SCHEME)
        seed_whistles(baton, clock, whistles)
        return baton.store.max_position()
    finally:
        baton.close()


async def finalisations(load: Load, admin: dict[str, str], lags: list[int]) -> list[Sent]:
    """Every (year, unit type) finalised ROUNDS times, one after another, noting the projector's lag before each."""
    sent = []
    for _ in range(ROUNDS):
        for year in YEARS:
            for unit_type in UNIT_TYPES:
                health = (await load.client.get("/health")).json()
                lags.append(max(p["lag"] or 0 for p in [*health["projections"].values(), health["notary"]]))
                path, body = f"/v1/assessments/{year}/finalise", {"unit_types": [unit_type]}
                sent.append(await load.command(f"finalise-{year}-{unit_type}", path, body, admin))
    return sent


async def test_commands_and_finalisations_while_the_projector_catches_up_are_never_a_503(tmp_path: Path) -> None:
    served = Served(tmp_path / "served", "sqlite")
    seeded = await asyncio.to_thread(seed_history, served.settings(), 2000)
    load = Load(served)
    lags: list[int] = []
    try:
        await served.start()
        workers = [asyncio.create_task(load.worker()) for _ in range(WORKERS)]
        try:
            finals = await finalisations(load, served.auth("admin", None, "root"), lags)
        finally:
            load.stopping = True
            await asyncio.gather(*workers)
    finally:
        served.stop()
        await load.close()

    answers = Counter(f"{s.status} {s.body.get('error', {}).get('code', '')}".strip() for s in load.sent)
    refused_503 = sum(s.refused_503 for s in load.sent)
    figures = {"seeded_events": seeded, "commands": len(load.sent), "answered_503": refused_503, "answers": answers}
    print("store-busy-figures", json.dumps({**figures, "projector_lag_at_first_finalisation": lags[0]}))
    assert lags[0] > 0, "the projector had caught up before the first finalisation: nothing was contended"
    assert refused_503 == 0, f"{refused_503} answers of 503 to {len(load.sent)} commands: {answers}"
    recorded = Counter(s.what for s in finals if s.status == 201)
    assert recorded == Counter({f"finalise-{y}-{t}": 1 for y in YEARS for t in UNIT_TYPES}), recorded
    assert all(s.status == 409 for s in finals if s.status != 201), [s.body for s in finals if s.status != 201]
    others = [s for s in load.sent if not s.what.startswith("finalise")]
    assert all(s.accepted or s.what == "evaluate-too-early" for s in others), answers


def test_two_notaries_catching_up_at_once_append_every_leaf_once(settings: Settings) -> None:
    """A finalisation's notary and the projector's catch up at once: the second waits for the first's position (its
    row locked on PostgreSQL, the file on SQLite) and appends only what is left."""
    clock = ManualClock(START)
    first, second = bootstrap(settings, clock), bootstrap(settings, clock)
    try:
        seed_county_direct(first)
        seed_whistles(first, clock, 600)
        inside, read = threading.Event(), threading.Event()
        first_position, second_position = first.notary.view.locked_position, second.notary.view.locked_position

        def first_reads(tx: Tx, name: str) -> int:
            tracked = first_position(tx, name)
            if not inside.is_set():
                inside.set()
                # The second cannot read the position before this transaction commits (PostgreSQL: the row is
                # locked FOR UPDATE; SQLite: BEGIN IMMEDIATE), so this waits out its bound and goes on.
                read.wait(timeout=2.0)
            return tracked

        def second_reads(tx: Tx, name: str) -> int:
            tracked = second_position(tx, name)
            read.set()
            return tracked

        first.notary.view.locked_position = first_reads  # type: ignore[method-assign]
        second.notary.view.locked_position = second_reads  # type: ignore[method-assign]
        sizes: dict[str, int | BaseException] = {}

        def catch_up(name: str, baton: Container) -> None:
            if name == "second":
                inside.wait(timeout=30)
            try:
                sizes[name] = baton.notary.catch_up()
            except BaseException as exc:
                sizes[name] = exc

        threads = [threading.Thread(target=catch_up, args=(n, b)) for n, b in (("first", first), ("second", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        top = first.store.max_position()
        stored = first.store.select(0, top + 1)
        assert sizes == {"first": len(stored), "second": len(stored)}, sizes
        view = first.notary.view
        assert [p for p, _ in view.leaves(0, len(stored))] == [n.id for n in stored]
        assert view.root(len(stored)) == root_of([leaf_hash(canonical(first.codec.envelope(n))) for n in stored])
    finally:
        first.close()
        second.close()


async def test_a_store_locked_past_the_busy_timeout_is_answered_503_store_busy(tmp_path: Path, tokens: Tokens) -> None:
    """A write lock held past BATON_SQLITE_BUSY_TIMEOUT is answered 'busy', not 'unreachable'; then it is recorded."""
    settings = Settings(data_dir=tmp_path, store="sqlite", watch_interval=3600, sqlite_busy_timeout=1)
    baton = bootstrap(settings, ManualClock(START))
    seed_county_direct(baton)
    auth = Auth(tokens)
    blow = {"community_id": "tishu", "category": "drainage", "title": "Drain", "description": "Blocked"}
    headers = {**auth("community", "tishu", "wang"), "Idempotency-Key": "blow-1"}
    other = sqlite3.connect(tmp_path / "events.sqlite", isolation_level=None)
    try:
        transport = httpx.ASGITransport(app=create_app(baton, tokens))
        async with httpx.AsyncClient(transport=transport, base_url="http://baton.test") as client:
            before = baton.store.max_position()
            other.execute("BEGIN IMMEDIATE")
            busy = await client.post("/v1/whistles", json=blow, headers=headers)
            other.execute("ROLLBACK")
            assert busy.status_code == 503, busy.text
            error: dict[str, Any] = busy.json()["error"]
            assert error["code"] == "store_busy"
            assert "events.sqlite stayed locked by another writer for 1 s" in error["message"], error
            assert busy.headers["Retry-After"] == "1"
            assert baton.store.max_position() == before
            again = await client.post("/v1/whistles", json=blow, headers=headers)
            assert again.status_code == 201, again.text
            assert "Idempotent-Replayed" not in again.headers
    finally:
        other.close()
        baton.close()
