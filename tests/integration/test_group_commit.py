"""Group commit in the NATS intake: a batch of department commands is decided in order and saved in one transaction."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nats
import pytest
from eventsourcing.persistence import OperationalError

from consumers.intake import Intake
from domain.whistle import Whistle
from infra.bootstrap import Container, Runtime
from infra.jetstream import ensure_streams
from infra.nats_server import EmbeddedNats
from services.access import Actor, Context, Role
from services.base import CommandBatch
from tests.conftest import DepartmentFeed, blow_direct, body, seed_county_direct, stream_messages
from tests.scenarios import Transactions, history

COMMUNITY = Context(actor=Actor(Role.COMMUNITY, "tishu", "wang"), correlation_id="test")


def command(
    action: str, command_id: str | None, whistle_id: str, code: str = "HOUSING", **fields: Any
) -> tuple[str, bytes]:
    """(subject, body) of a department command."""
    payload: dict[str, Any] = {"whistle_id": whistle_id, **fields}
    if command_id is not None:
        payload["command_id"] = command_id
    return f"baton.dept.{code}.cmd.{action}", json.dumps(payload).encode()


def numbered(messages: list[tuple[str, bytes]], first: int = 1) -> list[tuple[str, bytes, int]]:
    """The messages with stream sequences, as the intake receives them."""
    return [(subject, data, seq) for seq, (subject, data) in enumerate(messages, first)]


def blow_two(baton: Container, n: int = 1) -> list[str]:
    """Whistles that summon HOUSING and PSB."""
    return [
        baton.whistles.blow(
            COMMUNITY,
            community_id="tishu",
            category="drainage",
            title=f"Flooded cellar {i}",
            description="Water in the cellar",
            summoned_departments=["HOUSING", "PSB"],
        ).body["whistle_id"]
        for i in range(n)
    ]


def blow_edu(baton: Container) -> str:
    """A whistle of taibai that summons EDU only."""
    ctx = Context(actor=Actor(Role.COMMUNITY, "taibai", "li"), correlation_id="test")
    receipt = baton.whistles.blow(
        ctx,
        community_id="taibai",
        category="drainage",
        title="School drain",
        description="Blocked",
        summoned_departments=["EDU"],
    )
    return str(receipt.body["whistle_id"])


def positions_of(baton: Container, after: int) -> list[tuple[str, str]]:
    """(aggregate id, event type) of each event stored after `after`, in store order."""
    return [(str(n.originator_id), n.topic.split(":")[-1]) for n in baton.store.select(after, 1000)]


def test_a_batch_is_one_transaction_and_each_command_logs_its_own_positions(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    whistles = blow_direct(baton, 30)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    items = numbered([command("report_in", f"r-{i}", w) for i, w in enumerate(whistles)])
    before = baton.store.max_position()
    transactions = Transactions(baton, monkeypatch)

    decided = intake.decide_batch(items)

    assert transactions.count == 1
    assert [outcome.status for _, outcome, _ in decided] == ["accepted"] * len(whistles)
    assert [outcome.position for _, outcome, _ in decided] == list(range(before + 1, before + len(whistles) + 1))
    assert positions_of(baton, before) == [(w, "Whistle.ReportedIn") for w in whistles]
    records = baton.store.commands.get_many(f"nats:HOUSING:r-{i}" for i in range(len(whistles)))
    for i, w in enumerate(whistles):
        record = records[f"nats:HOUSING:r-{i}"]
        assert record.positions == [before + i + 1]
        assert record.outcome == {"status": "accepted", "body": {"whistle_id": w, "status": "answered"}}
    assert [(code, msg_id.rsplit(":", 1)[0]) for code, _, msg_id in decided] == [
        ("HOUSING", f"outcome:nats:HOUSING:r-{i}") for i in range(len(whistles))
    ]

    again = intake.decide_batch(items)  # redelivered: answered from the command log, nothing applied twice
    assert [(o.status, o.position) for _, o, _ in again] == [(o.status, o.position) for _, o, _ in decided]
    assert [m for _, _, m in again] == [m for _, _, m in decided]
    assert baton.store.max_position() == before + len(whistles)
    assert transactions.count == 1


def test_commands_on_one_whistle_in_one_batch_apply_in_message_order(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    first, second = blow_two(baton, 2)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    before = baton.store.max_position()
    transactions = Transactions(baton, monkeypatch)

    decided = intake.decide_batch(
        numbered(
            [
                command("report_in", "h-1", first),
                command("report_in", "p-1", first, code="PSB"),
                command("report_in", "h-2", first),  # HOUSING reported in two messages ago, in this very batch
                command("report_in", "p-2", second, code="PSB"),
            ]
        )
    )
    assert [(o.command_id, o.status, o.error.code if o.error else o.position) for _, o, _ in decided] == [
        ("h-1", "accepted", before + 1),
        ("p-1", "accepted", before + 2),
        ("h-2", "rejected", "already_reported_in"),
        ("p-2", "accepted", before + 3),
    ]
    assert transactions.count == 1
    assert history(baton, first) == [("Blown", None), ("ReportedIn", "HOUSING"), ("ReportedIn", "PSB")]
    assert baton.whistles.get(first).status.value == "answered"

    baton.whistles.dispatch(COMMUNITY, first, lead_department="HOUSING", co_departments=["PSB"])
    baton.whistles.report_in(Context(Actor(Role.DEPARTMENT, "HOUSING", "h"), "t"), second)
    baton.whistles.dispatch(COMMUNITY, second, lead_department="HOUSING")
    before = baton.store.max_position()
    transactions.count = 0
    decided = intake.decide_batch(
        numbered(
            [
                command("decline", "p-3", first, code="PSB", reason="not a police matter"),
                command("progress", "h-3", first, note="crew on site"),
                command("progress", "p-4", first, code="PSB", note="too late"),  # PSB declined two messages ago
                command("complete", "h-4", first, summary="pumped out"),
                command("feedback", "h-5", first, result="dry again", resolved=True),  # after complete: accepted
                command("feedback", "h-6", second, result="too early", resolved=True),  # before complete: rejected
                command("complete", "h-7", second, summary="fixed"),
            ],
            first=100,
        )
    )
    assert [(o.command_id, o.status, o.error.code if o.error else o.position) for _, o, _ in decided] == [
        ("p-3", "accepted", before + 1),
        ("h-3", "accepted", before + 2),
        ("p-4", "rejected", "not_handler"),
        ("h-4", "accepted", before + 3),
        ("h-5", "accepted", before + 4),
        ("h-6", "rejected", "step_out_of_order"),
        ("h-7", "accepted", before + 5),
    ]
    assert transactions.count == 1
    assert history(baton, first)[-4:] == [
        ("Declined", "PSB"),
        ("ProgressRecorded", "HOUSING"),
        ("Completed", "HOUSING"),
        ("FedBack", "HOUSING"),
    ]
    assert baton.whistles.get(first).status.value == "fed_back"
    assert baton.whistles.get(second).status.value == "completed"
    record = baton.store.commands.get("nats:HOUSING:h-5")
    assert record is not None and record.positions == [before + 4]
    assert record.outcome == {"status": "accepted", "body": {"whistle_id": first, "status": "fed_back"}}


def mixed_batch(whistles: list[str], other: str) -> tuple[list[tuple[str, bytes]], list[tuple[str | None, str, Any]]]:
    """A batch of valid, invalid, replayed and repeated commands, and the (command_id, status, detail) each gets.

    `whistles[0]` was reported in by HOUSING with command_id "old" and "spent" was rejected, both earlier.
    """
    w1, w2, w3 = whistles[1], whistles[2], whistles[3]
    messages = [
        command("report_in", "new-1", w1),
        command("report_in", "old", whistles[0]),  # a replay of an accepted command: same answer
        command("report_in", "new-1", w1),  # a repeat within the batch: same answer, applied once
        command("report_in", "new-1", w2),  # the same command_id for another command
        ("baton.dept.HOUSING.cmd.report_in", b"\xff not json"),
        command("report_in", None, w2),  # no command_id
        command("launch", "rocket", w2),  # unknown action
        command("report_in", "typo", w2, colour="red"),  # unknown field
        command("report_in", "scope", other),  # HOUSING is not summoned there
        command("report_in", "spent", whistles[0]),  # a replay of a rejection: same answer
        command("report_in", "nope", w2, code="NOPE"),  # no such department
        command("report_in", "new-2", w2),
        command("complete", "early", w2, summary="x"),  # no work order yet, in this very batch
        command("complete", "early", w2, summary="x"),  # its repeat: the same rejection
        command("report_in", "new-3", w3),
        command("report_in", "typo", w3),  # "typo" was rejected two lines above: this is another command
    ]
    expected: list[tuple[str | None, str, Any]] = [
        ("new-1", "accepted", "new"),
        ("old", "accepted", "old"),
        ("new-1", "accepted", "new-1"),
        ("new-1", "rejected", "command_id_reused"),
        (None, "rejected", "malformed"),
        (None, "rejected", "invalid_command"),
        ("rocket", "rejected", "unknown_action"),
        ("typo", "rejected", "invalid_command"),
        ("scope", "rejected", "not_summoned"),
        ("spent", "rejected", "already_reported_in"),
        ("nope", "rejected", "unknown_department"),
        ("new-2", "accepted", "new"),
        ("early", "rejected", "step_out_of_order"),
        ("early", "rejected", "step_out_of_order"),
        ("new-3", "accepted", "new"),
        ("typo", "rejected", "command_id_reused"),
    ]
    return messages, expected


def earlier_commands(intake: Intake, whistle_id: str) -> int:
    """Decide "old" (accepted) and "spent" (rejected) on the whistle in an earlier batch; return the old position."""
    decided = intake.decide_batch(
        numbered([command("report_in", "old", whistle_id), command("report_in", "spent", whistle_id)], first=1000)
    )
    assert [o.status for _, o, _ in decided] == ["accepted", "rejected"]
    position = decided[0][1].position
    assert position is not None
    return position


def check_mixed(
    outcomes: list[tuple[str | None, str, str | None, int | None]], expected: list[Any], old: int, before: int
) -> None:
    """Outcomes as (command_id, status, error code, position) against mixed_batch's expectations."""
    new = iter(range(before + 1, before + 4))
    positions: dict[str, int] = {}
    for (command_id, status, code, position), (want_id, want_status, detail) in zip(outcomes, expected, strict=True):
        assert (command_id, status) == (want_id, want_status)
        if status == "rejected":
            assert (code, position) == (detail, None)
        elif detail == "new":
            assert position == next(new)
            positions[command_id] = position  # type: ignore[index]
        else:
            assert position == (old if detail == "old" else positions[detail])


def test_a_mixed_batch_gives_one_answer_per_message_and_events_only_for_accepted_commands(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    whistles = blow_direct(baton, 4)
    other = blow_edu(baton)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    old = earlier_commands(intake, whistles[0])
    messages, expected = mixed_batch(whistles, other)
    before = baton.store.max_position()
    transactions = Transactions(baton, monkeypatch)

    decided = intake.decide_batch(numbered(messages))

    assert transactions.count == 1
    check_mixed(
        [(o.command_id, o.status, o.error and o.error.code, o.position) for _, o, _ in decided], expected, old, before
    )
    assert positions_of(baton, before) == [(w, "Whistle.ReportedIn") for w in whistles[1:]]
    assert [code for code, _, _ in decided] == ["HOUSING"] * 10 + ["NOPE"] + ["HOUSING"] * 5
    msg_ids = [m for _, _, m in decided]
    assert msg_ids[0] == msg_ids[2], "a repeat has the same outcome id, so JetStream keeps one outcome"
    assert msg_ids[12] == msg_ids[13]
    assert len(set(msg_ids)) == len(messages) - 2
    assert msg_ids[4].startswith("outcome:nats:HOUSING:seq:5:") and msg_ids[5].startswith("outcome:nats:HOUSING:seq:6:")
    records = baton.store.commands.get_many(["nats:HOUSING:early", "nats:HOUSING:typo", "nats:NOPE:nope"])
    assert {k: (r.outcome["status"], r.positions) for k, r in records.items()} == {
        "nats:HOUSING:early": ("rejected", []),
        "nats:HOUSING:typo": ("rejected", []),
        "nats:NOPE:nope": ("rejected", []),
    }

    one_by_one = [intake.decide(*item) for item in numbered(messages)]  # the same messages redelivered
    assert [(o.model_dump(), m) for _, o, m in one_by_one] == [(o.model_dump(), m) for _, o, m in decided]
    assert baton.store.max_position() == before + 3


def test_a_conflict_with_a_concurrent_writer_falls_back_to_one_by_one(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    whistles = blow_two(baton, 5)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    psb = Context(Actor(Role.DEPARTMENT, "PSB", "http"), "http-1", idempotency_key="http:PSB:1", fingerprint="f")
    saves = {"group": 0}
    group_save = CommandBatch.save

    def save_after_a_concurrent_writer(batch: CommandBatch) -> None:
        saves["group"] += 1
        with ThreadPoolExecutor(1) as other_thread:  # another writer (HTTP), outside this batch
            other_thread.submit(baton.whistles.report_in, psb, whistles[2]).result()
        group_save(batch)

    monkeypatch.setattr(CommandBatch, "save", save_after_a_concurrent_writer)
    items = numbered(
        [command("report_in", f"h-{i}", w) for i, w in enumerate(whistles)]
        + [command("report_in", "p-2", whistles[2], code="PSB")]  # PSB, already in by HTTP when decided again
    )
    before = baton.store.max_position()
    transactions = Transactions(baton, monkeypatch)

    decided = intake.decide_batch(items)

    assert saves["group"] == 1
    assert transactions.count == 1 + 1 + len(items), "the failed group, the other writer, then one by one"
    assert [(o.command_id, o.status) for _, o, _ in decided[:-1]] == [(f"h-{i}", "accepted") for i in range(5)]
    assert decided[-1][1].error is not None and decided[-1][1].error.code == "already_reported_in"
    assert len(baton.store.select(before, 1000)) == 1 + len(whistles)  # PostgreSQL skips the group's positions
    for i, w in enumerate(whistles):
        reported = [d for t, d in history(baton, w) if t == "ReportedIn"]
        assert sorted(reported) == (["HOUSING", "PSB"] if i == 2 else ["HOUSING"])
        record = baton.store.commands.get(f"nats:HOUSING:h-{i}")
        assert record is not None and record.positions == [decided[i][1].position]
    assert baton.store.commands.get("http:PSB:1") is not None


def test_a_command_failing_halfway_spoils_the_batch_and_nothing_of_it_is_saved(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    whistles = blow_direct(baton, 3)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    report_in = Whistle.report_in

    def half_then_crash(self: Whistle, department: str, *, timestamp: Any, meta: Any) -> None:
        report_in(self, department, timestamp=timestamp, meta=meta)
        if str(self.id) == whistles[1]:
            raise RuntimeError("a bug after the event")

    monkeypatch.setattr(Whistle, "report_in", half_then_crash)
    before = baton.store.max_position()
    decided = intake.decide_batch(numbered([command("report_in", f"h-{i}", w) for i, w in enumerate(whistles)]))

    assert [o.status for _, o, _ in decided] == ["accepted", "rejected", "accepted"]
    assert decided[1][1].error is not None and decided[1][1].error.code == "internal_error"
    assert positions_of(baton, before) == [(whistles[0], "Whistle.ReportedIn"), (whistles[2], "Whistle.ReportedIn")]


def test_a_transient_store_error_leaves_nothing_and_the_batch_is_decided_again(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    whistles = blow_direct(baton, 3)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    items = numbered([command("report_in", f"h-{i}", w) for i, w in enumerate(whistles)] + [command("x", "bad", "")])
    before = baton.store.max_position()
    with monkeypatch.context() as patch:
        patch.setattr(baton.store.recorder, "insert_events", _store_down)
        with pytest.raises(OperationalError):
            intake.decide_batch(items)
    assert baton.store.max_position() == before
    assert baton.store.commands.get_many(["nats:HOUSING:h-0", "nats:HOUSING:bad"]) == {}

    decided = intake.decide_batch(items)
    assert [o.status for _, o, _ in decided] == ["accepted"] * 3 + ["rejected"]
    assert baton.store.max_position() == before + 3


def _store_down(*args: Any, **kwargs: Any) -> Any:
    raise OperationalError("the store is down")


async def test_a_backlog_over_nats_is_one_transaction_with_one_outcome_per_message(
    baton: Container, nats_server: EmbeddedNats, nc: nats.aio.client.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    whistles = blow_direct(baton, 4)
    other = blow_edu(baton)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    old = earlier_commands(intake, whistles[0])
    messages, expected = mixed_batch(whistles, other)
    many = blow_direct(baton, 40)
    messages += [command("report_in", f"bulk-{i}", w) for i, w in enumerate(many)]
    expected += [(f"bulk-{i}", "accepted", "bulk") for i in range(len(many))]
    js = nc.jetstream()
    await ensure_streams(nc)
    for subject, data in messages:  # queued while Baton is down: the intake fetches them as one batch
        await js.publish(subject, data)
    before = baton.store.max_position()
    transactions = Transactions(baton, monkeypatch)

    runtime = Runtime(baton, nats_url=nats_server.url, watch=False)
    await runtime.start()
    try:
        feed = await DepartmentFeed.bind(js, "HOUSING")
        received = [body(m) for m in await feed.outcomes(len(messages) - 3, timeout=30)]  # 2 repeats, 1 NOPE
        with pytest.raises(TimeoutError):
            await feed.outcomes(1, timeout=1.0)
        await runtime.wait_idle()
        events = await stream_messages(nc, "BATON_EVENTS", "baton.evt.whistle.reported_in")
        nope = await js.get_last_msg("BATON_DEPT", "baton.dept.NOPE.outcome")
        dept = await js.stream_info("BATON_DEPT", subjects_filter="baton.dept.NOPE.outcome")
    finally:
        await runtime.stop()

    assert transactions.count == 1
    assert dept.state.subjects == {"baton.dept.NOPE.outcome": 1}
    assert body(nope)["command_id"] == "nope" and body(nope)["error"]["code"] == "unknown_department"
    by_message = {(o.get("command_id"), o["status"], (o.get("error") or {}).get("code")): o for o in received}
    outcomes = []
    for command_id, status, detail in expected:
        if command_id == "nope":
            outcomes.append((command_id, status, detail, None))  # its outcome went to NOPE's subject
            continue
        key = (command_id, status, detail if status == "rejected" else None)
        outcomes.append((command_id, status, key[2], by_message[key].get("position")))
    bulk = [o for o in outcomes if o[0] and o[0].startswith("bulk-")]
    check_mixed(outcomes[: -len(many)], expected[: -len(many)], old, before)
    assert [o[3] for o in bulk] == list(range(before + 4, before + 4 + len(many)))
    assert baton.store.max_position() == before + 3 + len(many)
    assert [body(e)["position"] for e in events][-(3 + len(many)) :] == list(range(before + 1, before + 4 + len(many)))
