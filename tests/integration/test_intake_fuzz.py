"""Hostile department commands: every message gets exactly one rejected outcome, and the intake keeps serving."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import pytest
from eventsourcing.persistence import OperationalError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumers.intake import MAX_BODY, Intake
from infra.bootstrap import Container, Runtime
from services.schemas import DEPARTMENT_COMMANDS
from tests.conftest import Auth, blow, blow_direct, seed_county, seed_county_direct

UNIT_CASES = 1500
"""Messages decided by Intake.decide directly, per backend."""
NATS_CASES = 600
"""Messages sent through nats-server to the running intake, per backend."""
MAX_ID = 200

ACTIONS = [*DEPARTMENT_COMMANDS]
FIELDS = {"decline": ["reason"], "progress": ["note"], "complete": ["summary"], "feedback": ["result", "resolved"]}
SUBJECT_CHARS = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters=".*>"
)
ID_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs",))

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
wrong_for_a_string = (
    st.none()
    | st.integers()
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), scalars, max_size=2)
)
wrong_for_a_bool = st.none() | st.lists(scalars, max_size=3) | st.text(min_size=6, max_size=12) | st.integers(2)


@dataclass(frozen=True)
class Message:
    """What a department system sends: a subject's tokens and a body (built lazily when it is huge)."""

    code: str
    action: str
    kind: str
    payload: Any

    @property
    def subject(self) -> str:
        return f"baton.dept.{self.code}.cmd.{self.action}"

    def data(self, unique: str) -> bytes:
        """The body bytes; a command_id that Baton would accept is made unique with `unique`."""
        if self.kind == "bytes":
            return bytes(self.payload)
        if self.kind == "nested":
            opener, depth = self.payload
            return opener * depth
        if self.kind == "huge":
            size, command_id = self.payload
            head = json.dumps({"command_id": f"{command_id}#{unique}", "pad": ""}).encode()[:-2]
            return head + b"x" * max(0, size - len(head) - 2) + b'"}'
        body = self.payload
        if isinstance(body, dict) and _valid_id(body.get("command_id")):
            body = {**body, "command_id": f"{body['command_id'][: MAX_ID - 40]}#{unique}"}
        return json.dumps(body, ensure_ascii=self.kind == "ascii-json").encode()


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID


@st.composite
def spoiled_commands(draw: st.DrawFn, whistle_id: str) -> tuple[str, dict[str, Any]]:
    """A command of the right shape with at least one thing wrong, so no version of it can be accepted."""
    action = draw(st.sampled_from(ACTIONS))
    body: dict[str, Any] = {
        "command_id": draw(st.text(ID_CHARS, min_size=1, max_size=60)),
        "whistle_id": draw(st.sampled_from([whistle_id, str(uuid.uuid4())])),
    }
    for name in FIELDS.get(action, []):
        body[name] = True if name == "resolved" else draw(st.text(min_size=1, max_size=30))
    spoilers = ["extra", "whistle_id", "command_id", "drop_whistle_id"] + [
        f"field:{name}" for name in FIELDS.get(action, [])
    ]
    known = {"command_id", "whistle_id", *FIELDS.get(action, [])}
    for spoiler in draw(st.lists(st.sampled_from(spoilers), min_size=1, max_size=3, unique=True)):
        if spoiler == "extra":
            name = draw(st.text(min_size=1, max_size=12).filter(lambda n: n not in known))
            body[name] = draw(json_values)
        elif spoiler == "whistle_id":
            body["whistle_id"] = draw(wrong_for_a_string | st.text(max_size=40).filter(lambda s: not _is_uuid(s)))
        elif spoiler == "command_id":
            body["command_id"] = draw(wrong_for_a_string | st.just("") | st.text(min_size=MAX_ID + 1, max_size=260))
        elif spoiler == "drop_whistle_id":
            body.pop("whistle_id")
        else:
            name = spoiler.split(":", 1)[1]
            body[name] = draw(wrong_for_a_bool if name == "resolved" else wrong_for_a_string | st.just(""))
    return action, body


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def hostile_messages(whistle_id: str, huge: bool = True) -> st.SearchStrategy[Message]:
    """Random bytes, JSON of the wrong shape, spoiled commands, deep nesting, huge bodies, odd subjects."""
    codes = st.sampled_from(["HOUSING", "PSB", "NOPE"]) | st.text(SUBJECT_CHARS, min_size=1, max_size=30)
    actions = (
        st.sampled_from([*ACTIONS, "launch_rocket", "report_in.extra", "REPORT_IN", "cmd"])
        | st.text(SUBJECT_CHARS, min_size=1, max_size=30)
        | st.lists(st.text(SUBJECT_CHARS, min_size=1, max_size=8), min_size=2, max_size=4).map(".".join)
    )
    raw = st.builds(Message, codes, actions, st.just("bytes"), st.binary(max_size=600))
    wrong_shape = st.builds(
        Message, codes, actions, st.sampled_from(["json", "ascii-json"]), json_values.filter(_not_an_object_or_no_id)
    )
    spoiled = st.builds(
        lambda code, command, kind: Message(code, command[0], kind, command[1]),
        st.sampled_from(["HOUSING", "HOUSING", "PSB", "NOPE"]) | codes,
        spoiled_commands(whistle_id),
        st.sampled_from(["json", "ascii-json"]),
    )
    valid_but_unknown_action = st.builds(
        lambda code, action: Message(
            code, action, "json", {"command_id": "fuzz", "whistle_id": whistle_id, "note": "n", "summary": "s"}
        ),
        st.just("HOUSING"),
        st.text(SUBJECT_CHARS, min_size=1, max_size=20).filter(lambda a: a not in DEPARTMENT_COMMANDS),
    )
    nested = st.builds(
        Message,
        codes,
        st.sampled_from(ACTIONS),
        st.just("nested"),
        st.tuples(st.sampled_from([b"[", b'{"a":', b'{"command_id":']), st.sampled_from([500, 5_000, 30_000])),
    )
    parts = [raw, wrong_shape, spoiled, spoiled, valid_but_unknown_action, nested]
    if huge:
        sizes = st.sampled_from([MAX_BODY + 1, MAX_BODY + 1_000, 300_000, 1_000_000, 1_040_000])
        parts.append(
            st.builds(
                Message,
                st.just("HOUSING"),
                st.sampled_from(ACTIONS),
                st.just("huge"),
                st.tuples(sizes, st.text(min_size=1, max_size=10)),
            )
        )
    return st.one_of(*parts)


def _not_an_object_or_no_id(value: Any) -> bool:
    return not isinstance(value, dict) or not _valid_id(value.get("command_id"))


def expected_key(message: Message, data: bytes, seq: int) -> str:
    """The key Intake gives the message's outcome: its command_id when it has a usable one, else its sequence."""
    command_id = None
    if len(data) <= MAX_BODY:
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and _valid_id(body.get("command_id")) and b"\\u0000" not in data:
            command_id = body["command_id"]
    return f"nats:{message.code}:{command_id}" if command_id else f"nats:{message.code}:seq:{seq}"


def test_intake_decide_rejects_every_hostile_message(baton: Container) -> None:
    seed_county_direct(baton)
    (whistle_id,) = blow_direct(baton)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    before = baton.store.max_position()
    sequence = itertools.count(1_000)
    codes: dict[str, int] = {}

    @settings(
        max_examples=UNIT_CASES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(message=hostile_messages(whistle_id))
    def decide(message: Message) -> None:
        seq = next(sequence)
        data = message.data(str(seq))
        code, outcome, msg_id = intake.decide(message.subject, data, seq)
        assert code == message.code
        assert outcome.status == "rejected" and outcome.position is None, outcome
        assert outcome.error is not None and outcome.error.code not in ("", "internal_error"), outcome
        assert outcome.error.message
        assert len(outcome.error.message) <= 2_000, outcome.error.message[:200]
        assert msg_id.startswith(f"outcome:{expected_key(message, data, seq)}:")
        codes[outcome.error.code] = codes.get(outcome.error.code, 0) + 1

    decide()
    print(f"\nIntake.decide: {sum(codes.values())} hostile messages, rejections {dict(sorted(codes.items()))}")
    assert sum(codes.values()) >= UNIT_CASES
    assert {"malformed", "invalid_command", "unknown_action", "too_large"} <= set(codes)
    assert baton.store.max_position() == before, "a rejected command wrote an event"


async def test_hostile_commands_over_nats_each_get_one_rejected_outcome(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, nc: nats.aio.client.Client
) -> None:
    await seed_county(client, auth)
    whistle_id = await blow(client, auth, summoned_departments=["HOUSING"])
    await runtime.wait_idle()
    before = runtime.baton.store.max_position()
    js = nc.jetstream()
    # The fuzz plays every department at once (and codes no department has), so one consumer takes all outcomes
    # in place of the departments' own durables (a work queue admits one consumer per subject).
    for info in await js.consumers_info("BATON_DEPT"):
        await js.delete_consumer("BATON_DEPT", info.name)
    outcomes = await js.pull_subscribe("baton.dept.*.outcome", durable="fuzz", stream="BATON_DEPT")
    loop = asyncio.get_running_loop()
    expected: list[str] = []
    statuses: dict[str, int] = {}

    async def send(message: Message) -> None:
        data = message.data(str(len(expected)))
        ack = await js.publish(message.subject, data, timeout=10)
        key = expected_key(message, data, ack.seq)
        expected.append(key)
        (msg,) = await outcomes.fetch(1, timeout=20)
        await msg.ack()
        outcome = json.loads(msg.data)
        assert msg.subject == f"baton.dept.{message.code}.outcome"
        assert msg.headers["Nats-Msg-Id"].startswith(f"outcome:{key}:".replace("\r", " ").replace("\n", " ").strip())
        assert outcome["status"] == "rejected" and outcome["error"]["message"], outcome
        assert outcome["error"]["code"] != "internal_error", outcome
        statuses[outcome["error"]["code"]] = statuses.get(outcome["error"]["code"], 0) + 1

    @settings(
        max_examples=NATS_CASES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(message=hostile_messages(whistle_id))
    def one(message: Message) -> None:
        asyncio.run_coroutine_threadsafe(send(message), loop).result(timeout=60)

    started = time.monotonic()
    await asyncio.to_thread(one)
    elapsed = time.monotonic() - started

    with pytest.raises(nats.errors.MaxPayloadError):
        await js.publish("baton.dept.HOUSING.cmd.report_in", b"x" * (1024 * 1024 + 1))
    with pytest.raises(TimeoutError):
        await outcomes.fetch(1, timeout=1.0)  # no outcome beyond one per message

    assert runtime.baton.store.max_position() == before, "a rejected command wrote an event"
    good = {"command_id": f"after-fuzz-{uuid.uuid4().hex}", "whistle_id": whistle_id}
    await js.publish("baton.dept.HOUSING.cmd.report_in", json.dumps(good).encode())
    (msg,) = await outcomes.fetch(1, timeout=20)
    accepted = json.loads(msg.data)
    assert accepted["command_id"] == good["command_id"] and accepted["status"] == "accepted", accepted
    assert runtime.baton.store.max_position() == before + 1

    consumer = await js.consumer_info("BATON_DEPT", "fuzz")
    delivered = consumer.delivered.consumer_seq
    assert delivered == len(expected) + 1, f"{delivered} outcomes for {len(expected)} hostile messages and a good one"
    assert consumer.num_pending == 0 and consumer.num_redelivered == 0
    print(
        f"\nNATS intake: {len(expected)} hostile messages in {elapsed:.1f} s, one rejected outcome each "
        f"{dict(sorted(statuses.items()))}; then a valid command was accepted"
    )


def test_what_the_fuzz_found_is_rejected_with_a_reason(baton: Container) -> None:
    seed_county_direct(baton)
    (whistle_id,) = blow_direct(baton)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    subject = "baton.dept.HOUSING.cmd.report_in"
    nested = intake.decide(subject, b"[" * 30_000, 1)[1]
    assert nested.error is not None and nested.error.code == "malformed" and "nested" in nested.error.message
    nul = json.dumps({"command_id": "a\x00b", "whistle_id": whistle_id}).encode()
    outcome = intake.decide(subject, nul, 2)[1]
    assert outcome.error is not None and "NUL" in outcome.error.message


def test_a_message_that_breaks_a_step_is_rejected_and_the_next_one_is_decided(
    baton: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_county_direct(baton)
    (whistle_id,) = blow_direct(baton)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    subject = "baton.dept.HOUSING.cmd.report_in"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(baton.whistles, "report_in", broken)
        code, outcome, msg_id = intake.decide(
            subject, json.dumps({"command_id": "c1", "whistle_id": whistle_id}).encode(), 7
        )
    assert code == "HOUSING" and outcome.status == "rejected" and msg_id.startswith("outcome:nats:HOUSING:seq:7:")
    assert outcome.error is not None and outcome.error.code == "internal_error"
    outcome = intake.decide(subject, json.dumps({"command_id": "c2", "whistle_id": whistle_id}).encode(), 8)[1]
    assert outcome.status == "accepted", outcome

    def store_down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the store is down")

    with monkeypatch.context() as patch:
        patch.setattr(baton.whistles, "report_in", store_down)
        with pytest.raises(OperationalError):  # not rejected: the batch is redelivered and decided again
            intake.decide(subject, json.dumps({"command_id": "c3", "whistle_id": whistle_id}).encode(), 9)
