"""Group commit for concurrent commands (HTTP): saves that queue behind a running save share one transaction."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from eventsourcing.persistence import DataError, OperationalError

from infra.bootstrap import Container, bootstrap
from infra.settings import Settings
from infra.sqlite import StoreBusy
from services.access import Actor, Context, Role
from services.base import BatonApplication, Receipt
from tests.conftest import ADMIN, Auth, seed_county, seed_county_direct
from tests.scenarios import Transactions, history

WANG = Actor(Role.COMMUNITY, "tishu", "wang")


class HeldFirstSave:
    """Holds the first save of `app` until `behind` other commands queue behind it, then lets it go.

    Counts the store's write transactions; the first raises `first_fails_with` (if set) once the queue is
    there, and from the second on `fail_with` (if set; only once if `fail_once`) is raised instead of saving.
    """

    def __init__(self, baton: Container, app: BatonApplication, behind: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.app = app
        self.behind = behind
        self.fail_with: BaseException | None = None
        self.first_fails_with: BaseException | None = None
        self.fail_once = False
        self.held = False
        insert = baton.store.recorder.insert_events

        def insert_events(*args: Any, **kwargs: Any) -> Any:
            if not self.held:
                self.held = True
                self._wait_for_queue()
                if self.first_fails_with is not None:
                    raise self.first_fails_with
            elif self.fail_with is not None:
                failure, self.fail_with = self.fail_with, None if self.fail_once else self.fail_with
                raise failure
            return insert(*args, **kwargs)

        monkeypatch.setattr(baton.store.recorder, "insert_events", insert_events)
        self.transactions = Transactions(baton, monkeypatch)

    def _wait_for_queue(self) -> None:
        deadline = time.monotonic() + 20
        while len(self.app.group_commit._queue) < self.behind:
            assert time.monotonic() < deadline, f"only {len(self.app.group_commit._queue)} commands queued"
            time.sleep(0.005)


def ctx(key: str, actor: Actor = WANG) -> Context:
    return Context(actor=actor, correlation_id=key, idempotency_key=f"test:{key}", fingerprint=key)


def concurrently(calls: list[Callable[[], Receipt]]) -> list[Receipt | BaseException]:
    """Run the calls in threads of their own, all at once; each one's receipt or error, in call order."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Receipt]) -> Receipt | BaseException:
        start.wait()
        try:
            return call()
        except BaseException as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def blow_call(baton: Container, i: int) -> Callable[[], Receipt]:
    return lambda: baton.whistles.blow(
        ctx(f"blow-{i}"),
        community_id="tishu",
        category="drainage",
        title=f"Drain {i}",
        description="Blocked",
        summoned_departments=["HOUSING", "PSB", "URBAN", "EDU", "WATER"],
    )


def test_commands_queued_behind_a_save_share_one_transaction_and_keep_their_own_positions(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    before = baton.store.max_position()
    held = HeldFirstSave(baton, baton.whistles, behind=11, monkeypatch=monkeypatch)

    receipts = concurrently([blow_call(baton, i) for i in range(12)])

    assert all(isinstance(r, Receipt) for r in receipts), receipts
    assert held.transactions.count == 2, "the first save alone, then the eleven that queued behind it"
    stored = {n.id: str(n.originator_id) for n in baton.store.select(before, 1000)}
    assert len(stored) == 12
    for i, receipt in enumerate(receipts):
        assert isinstance(receipt, Receipt) and len(receipt.positions) == 1
        assert stored[receipt.positions[0]] == receipt.body["whistle_id"], "each command's own event"
        record = baton.store.commands.get(f"test:blow-{i}")
        assert record is not None and record.positions == receipt.positions


def test_a_group_whose_commands_change_one_aggregate_is_split_and_every_command_lands(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    first = blow_call(baton, 0)()
    whistle_id = first.body["whistle_id"]
    codes = ["HOUSING", "PSB", "URBAN", "EDU", "WATER"]
    held = HeldFirstSave(baton, baton.whistles, behind=len(codes) - 1, monkeypatch=monkeypatch)

    receipts = concurrently(
        [
            (lambda c=c: baton.whistles.report_in(ctx(f"in-{c}", Actor(Role.DEPARTMENT, c, "duty")), whistle_id))
            for c in codes
        ]
    )

    assert all(isinstance(r, Receipt) for r in receipts), receipts
    reported = [d for t, d in history(baton, whistle_id) if t == "ReportedIn"]
    assert sorted(reported) == sorted(codes), "every department once, none lost to the shared version"
    assert held.transactions.count > 2, "the joined save failed on the shared version and was split"
    for c, receipt in zip(codes, receipts, strict=True):
        record = baton.store.commands.get(f"test:in-{c}")
        assert isinstance(receipt, Receipt) and record is not None and record.positions == receipt.positions


def test_a_store_failure_of_a_joined_save_is_every_members_answer_and_nothing_of_it_is_saved(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    before = baton.store.max_position()
    held = HeldFirstSave(baton, baton.whistles, behind=5, monkeypatch=monkeypatch)
    held.fail_with = OperationalError("the store went away")

    receipts = concurrently([blow_call(baton, i) for i in range(6)])

    accepted = [r for r in receipts if isinstance(r, Receipt)]
    failed = [r for r in receipts if isinstance(r, OperationalError)]
    assert len(accepted) == 1 and len(failed) == 5, receipts
    assert held.transactions.count == 2, "the failed group was not retried one by one"
    assert [n.id for n in baton.store.select(before, 1000)] == accepted[0].positions
    held.fail_with = None
    again = concurrently([blow_call(baton, i) for i in range(6)])
    assert all(isinstance(r, Receipt) for r in again), again
    replayed = [r for r in again if isinstance(r, Receipt) and r.replayed]
    assert len(replayed) == 1 and replayed[0].body == accepted[0].body


def test_commands_queued_while_the_store_could_not_be_reached_get_that_answer_without_another_wait(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    before = baton.store.max_position()
    held = HeldFirstSave(baton, baton.whistles, behind=5, monkeypatch=monkeypatch)
    held.first_fails_with = OperationalError("connection refused (after the recorder's retries)")

    receipts = concurrently([blow_call(baton, i) for i in range(6)])

    assert all(isinstance(r, OperationalError) for r in receipts), receipts
    assert held.transactions.count == 1, "the five that queued behind the failing save did not try again"
    assert baton.store.max_position() == before
    again = concurrently([blow_call(baton, i) for i in range(6)])
    assert all(isinstance(r, Receipt) and not r.replayed for r in again), again


def test_a_save_that_found_the_store_busy_is_the_answer_of_its_own_commands_only(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    before = baton.store.max_position()
    held = HeldFirstSave(baton, baton.whistles, behind=5, monkeypatch=monkeypatch)
    held.first_fails_with = StoreBusy("events.sqlite", 30)

    receipts = concurrently([blow_call(baton, i) for i in range(6)])

    busy = [r for r in receipts if isinstance(r, StoreBusy)]
    accepted = [r for r in receipts if isinstance(r, Receipt)]
    assert len(busy) == 1 and len(accepted) == 5, receipts
    assert held.transactions.count == 2, "the five that queued behind the busy save were saved together next"
    assert sorted(p for r in accepted for p in r.positions) == [n.id for n in baton.store.select(before, 1000)]


def test_a_joined_save_refused_for_one_commands_data_is_split_and_the_others_land(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    held = HeldFirstSave(baton, baton.whistles, behind=4, monkeypatch=monkeypatch)
    held.fail_with, held.fail_once = DataError("value too long for one command's column"), True

    receipts = concurrently([blow_call(baton, i) for i in range(5)])

    assert all(isinstance(r, Receipt) for r in receipts), receipts
    assert held.transactions.count == 1 + 1 + 4, "the first, the refused group, then its four one by one"


def test_when_a_split_groups_member_finds_the_store_gone_every_member_is_answered(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    before = baton.store.max_position()
    HeldFirstSave(baton, baton.whistles, behind=4, monkeypatch=monkeypatch)
    # After the first save: the group of four is refused for one's data, then the first of them alone finds
    # the store gone.
    failures = [None, DataError("value too long for one command's column"), OperationalError("the store went away")]
    insert = baton.store.recorder.insert_events
    saves: list[int] = []

    def insert_events(*args: Any, **kwargs: Any) -> Any:
        saves.append(len(args[0]))
        failure = failures.pop(0) if failures else None
        if failure is not None:
            raise failure
        return insert(*args, **kwargs)

    monkeypatch.setattr(baton.store.recorder, "insert_events", insert_events)
    receipts: list[Receipt | BaseException | None] = [None] * 5

    def run(i: int) -> None:
        try:
            receipts[i] = blow_call(baton, i)()
        except BaseException as exc:
            receipts[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), f"unanswered: {receipts}"  # a member left out spun forever
    assert sum(isinstance(r, Receipt) for r in receipts) == 1, receipts
    assert sum(isinstance(r, OperationalError) for r in receipts) == 4, receipts
    assert saves == [1, 4, 1], "the first, the refused group, its first member alone; no more"
    assert baton.store.max_position() == before + 1


async def test_concurrent_http_commands_are_answered_each_and_saved_together(
    baton: Container, client: httpx.AsyncClient, auth: Auth, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_county(client, auth)
    before = baton.store.max_position()
    held = HeldFirstSave(baton, baton.whistles, behind=9, monkeypatch=monkeypatch)
    body = {"community_id": "tishu", "category": "drainage", "title": "t", "description": "d"}

    async def post(i: int) -> httpx.Response:
        headers = {**auth("community", "tishu", "wang"), "Idempotency-Key": f"http-{i}"}
        return await client.post("/v1/whistles", json={**body, "title": f"t{i}"}, headers=headers)

    answers = await asyncio.gather(*(post(i) for i in range(10)))

    assert [r.status_code for r in answers] == [201] * 10, [r.text for r in answers]
    assert held.transactions.count == 2
    ids = {r.json()["whistle_id"] for r in answers}
    assert len(ids) == 10
    assert {str(n.originator_id) for n in baton.store.select(before, 1000)} == ids
    again = await post(3)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == answers[3].json()


def test_a_new_key_is_not_looked_up_and_a_repeated_one_is_answered_even_where_deciding_again_fails(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    whistle_id = blow_call(baton, 0)().body["whistle_id"]
    lookups: list[str] = []
    get = baton.store.commands.get

    def counted(key: str) -> Any:
        lookups.append(key)
        return get(key)

    monkeypatch.setattr(baton.store.commands, "get", counted)
    housing = ctx("in-HOUSING", Actor(Role.DEPARTMENT, "HOUSING", "duty"))

    first = baton.whistles.report_in(housing, whistle_id)
    assert lookups == [], "an accepted new command costs no read of the command log"

    again = baton.whistles.report_in(housing, whistle_id)  # deciding again: already reported in
    assert again.replayed and again.body == first.body and again.positions == first.positions
    assert lookups == ["test:in-HOUSING"]


def test_the_organisation_another_process_changes_is_seen_within_a_second_and_our_own_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("services.organisation.time", SimpleNamespace(monotonic=lambda: now[0]))
    ours, theirs = bootstrap(settings), bootstrap(settings)
    try:
        seed_county_direct(ours)
        admin = Context(actor=ADMIN, correlation_id="seed")
        assert "GAS" not in ours.org.current().departments
        theirs.org.add_department(admin, code="GAS", name="燃气公司")
        now[0] += ours.org.FRESH_FOR / 2
        assert "GAS" not in ours.org.current().departments, "trusted for a second without asking the store"
        now[0] += ours.org.FRESH_FOR / 2
        assert "GAS" in ours.org.current().departments
        ours.org.add_department(admin, code="HEAT", name="热力公司")
        assert "HEAT" in ours.org.current().departments, "our own change counts at once"
    finally:
        ours.close()
        theirs.close()


def test_commands_from_many_threads_are_each_accepted_at_positions_of_their_own(baton: Container) -> None:
    seed_county_direct(baton)
    receipts = concurrently([blow_call(baton, i) for i in range(24)])
    assert all(isinstance(r, Receipt) for r in receipts), receipts
    positions = [p for r in receipts if isinstance(r, Receipt) for p in r.positions]
    assert len(positions) == len(set(positions)) == 24
    assert len({uuid.UUID(r.body["whistle_id"]) for r in receipts if isinstance(r, Receipt)}) == 24
