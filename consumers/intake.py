"""Commands from department systems over NATS: each gets exactly one outcome, nothing is dropped.

The commands of one fetched batch are decided in message order, later ones seeing what earlier ones did
to a whistle, and saved together in one transaction with one command log row each (group commit). When
that save meets a concurrent change, the batch is decided again one command at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio
import psycopg
import structlog
from eventsourcing.persistence import IntegrityError, PersistenceError
from faststream.middlewares import AckPolicy
from faststream.nats import NatsRouter
from pydantic import ValidationError

from consumers.common import BatchMessage, pull, raw_bodies, stream
from domain.errors import DomainError
from domain.organisation import Organisation
from infra import metrics
from infra.jetstream import INTAKE_STREAM, JetStreamPublisher, publish_in_order
from infra.store import CommandLog, CommandRecord
from services.access import Context, department_system
from services.base import BatchSpoiled, CommandBatch, IdempotencyKeyReused, PriorRejection, Receipt, replay
from services.organisation import OrganisationApp
from services.schemas import DEPARTMENT_COMMANDS, DepartmentCommand, Outcome, OutcomeError
from services.whistles import WhistleApp

log = structlog.get_logger("baton.intake")

MAX_BODY = 64 * 1024
INTAKE_DURABLE = "baton_intake"
OUTCOME_PATIENCE = 20.0
"""Seconds a batch's outcomes are retried while BATON_DEPT has no leader (an election takes ~5 s), before the batch
is nacked: well inside the 30 s ack wait, so a nack lost with a dying consumer leader is not what redelivers it."""
TRANSIENT = (PersistenceError, psycopg.OperationalError, sqlite3.OperationalError)
"""Errors that pass (the store is unreachable, busy, full or read-only): the message is decided again, not rejected."""
FAULT_PAUSE = 2.0
"""Seconds the intake waits before a batch refused for a full or read-only store is redelivered and decided again."""

Step = Callable[[WhistleApp, Context, Any], Receipt]
STEPS: dict[str, Step] = {
    "report_in": lambda w, ctx, c: w.report_in(ctx, c.whistle_id),
    "decline": lambda w, ctx, c: w.decline(ctx, c.whistle_id, reason=c.reason),
    "progress": lambda w, ctx, c: w.record_progress(ctx, c.whistle_id, note=c.note),
    "complete": lambda w, ctx, c: w.complete(ctx, c.whistle_id, summary=c.summary),
    "feedback": lambda w, ctx, c: w.feed_back(ctx, c.whistle_id, result=c.result, resolved=c.resolved),
}


class Rejected(Exception):
    """A command that cannot be applied; the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Decided = tuple[str, Outcome, str]
"""What the intake answers a message with: (department code, outcome, Nats-Msg-Id of the outcome)."""


@dataclass(frozen=True)
class Incoming:
    """A message from BATON_INTAKE, with what its subject says and the fingerprint of subject and body."""

    subject: str
    data: bytes
    seq: int
    code: str
    action: str
    fingerprint: str

    @classmethod
    def of(cls, subject: str, data: bytes, seq: int) -> Incoming:
        tokens = subject.split(".")
        code = tokens[2] if len(tokens) > 2 else "unknown"
        fingerprint = hashlib.sha256(subject.encode() + b"\0" + data).hexdigest()
        return cls(subject, data, seq, code, ".".join(tokens[4:]), fingerprint)

    def key(self, command_id: str | None) -> str:
        """The command log key: the department's command_id, or the stream sequence when it has none."""
        return f"nats:{self.code}:{command_id}" if command_id else f"nats:{self.code}:seq:{self.seq}"

    def msg_id(self, command_id: str | None) -> str:
        return _msg_id(self.key(command_id), self.fingerprint)


class Intake:
    """Decides each department command: applied once and accepted, or rejected with a reason."""

    def __init__(self, whistles: WhistleApp, org: OrganisationApp, commands: CommandLog) -> None:
        self.whistles = whistles
        self.org = org
        self.commands = commands

    def decide(self, subject: str, data: bytes, seq: int) -> Decided:
        """Return (department code, outcome, dedupe id of the outcome) for one message, in its own transaction."""
        msg = Incoming.of(subject, data, seq)
        with structlog.contextvars.bound_contextvars(intake_seq=seq, correlation_id=None):
            try:
                return self._decide(msg)
            except TRANSIENT:
                raise  # the store is down: the batch is redelivered and decided again
            except Exception:
                return self._failed(msg)

    def decide_batch(self, items: Sequence[tuple[str, bytes, int]]) -> list[Decided]:
        """Decide a batch of (subject, data, seq) in message order, saving all it changes in one transaction.

        If the save meets a concurrent change (or a command fails halfway), the batch is decided again one
        message at a time, each in its own transaction with retries. A transient store error propagates.
        """
        try:
            return self._decide_together([Incoming.of(*item) for item in items])
        except (IntegrityError, BatchSpoiled) as exc:
            log.info("intake_batch_one_by_one", size=len(items), reason=type(exc).__name__)
        except TRANSIENT:
            raise
        except Exception:
            log.exception("intake_batch_one_by_one", size=len(items), reason="error")
        return [self.decide(*item) for item in items]

    def _failed(self, msg: Incoming) -> Decided:
        """A message Baton could not decide (a bug): rejected and logged, so it cannot block the intake."""
        log.exception("department_command_failed", subject=msg.subject[:200], size=len(msg.data))
        outcome = Outcome(
            command_id=None,
            status="rejected",
            error=OutcomeError(
                code="internal_error",
                message=f"Baton could not decide this command and did not apply it (intake sequence {msg.seq}); "
                "it is logged for the operators: send the step again with a new command_id later",
            ),
        )
        return msg.code, outcome, msg.msg_id(None)

    def _decide(self, msg: Incoming) -> Decided:
        command_id: str | None = None
        try:
            body, command_id = _read(msg.data)
            structlog.contextvars.bind_contextvars(correlation_id=command_id)
            prior = self.commands.get(msg.key(command_id))
            if prior is not None:
                return msg.code, self._replay(prior, msg.fingerprint), msg.msg_id(command_id)
            receipt = self._step(msg, body, command_id, self.org.current)
            outcome = Outcome(command_id=command_id, status="accepted", position=receipt.position)
        except PriorRejection as prior:
            outcome = Outcome.model_validate(prior.record.outcome)
        except Rejected as rejected:
            outcome = _rejection(command_id, rejected)
            key = msg.key(command_id)
            record = CommandRecord(key, msg.fingerprint, outcome.model_dump(mode="json"))
            if command_id and not self.commands.put(record):
                prior_record = self.commands.get(key)
                assert prior_record is not None
                outcome = self._replay(prior_record, msg.fingerprint)
        _log_outcome(msg, command_id, outcome)
        return msg.code, outcome, msg.msg_id(command_id)

    def _decide_together(self, messages: list[Incoming]) -> list[Decided]:
        """Decide every message into one command batch, save it, then answer each in order."""
        reads = [_try_read(msg.data) for msg in messages]
        priors = self.commands.get_many(msg.key(read[1]) for msg, read in zip(messages, reads, strict=True) if read[1])
        org = functools.cache(self.org.current)
        seen: dict[str, CommandRecord] = {}
        with self.whistles.batch() as batch:
            batch.preload(_whistle_ids(reads))
            answers = [
                self._take(batch, msg, read, priors, seen, org) for msg, read in zip(messages, reads, strict=True)
            ]
            batch.save()
        return [answer() for answer in answers]

    def _take(
        self,
        batch: CommandBatch[WhistleApp],
        msg: Incoming,
        read: tuple[dict[str, Any] | Rejected, str | None],
        priors: dict[str, CommandRecord],
        seen: dict[str, CommandRecord],
        org: Callable[[], Organisation],
    ) -> Callable[[], Decided]:
        """Decide one message into the batch; the answer is read once the batch is saved."""
        body, command_id = read
        with structlog.contextvars.bound_contextvars(intake_seq=msg.seq, correlation_id=command_id):
            try:
                if isinstance(body, Rejected):
                    raise body
                assert command_id is not None
                key = msg.key(command_id)
                prior = seen.get(key) or priors.get(key)
                if prior is not None:
                    return lambda: (msg.code, self._replay(prior, msg.fingerprint), msg.msg_id(command_id))
                receipt = self._step(msg, body, command_id, org, batch.app)
                # A repeat later in the batch replays this record; its positions (the receipt's) arrive on save.
                accepted = {"status": "accepted", "body": receipt.body}
                seen[key] = CommandRecord(key, msg.fingerprint, accepted, receipt.positions)
                return lambda: _answer(
                    msg, command_id, Outcome(command_id=command_id, status="accepted", position=receipt.position)
                )
            except Rejected as rejected:
                outcome = _rejection(command_id, rejected)
                if command_id:
                    record = CommandRecord(msg.key(command_id), msg.fingerprint, outcome.model_dump(mode="json"))
                    batch.remember(record)
                    seen[record.key] = record
                return lambda: _answer(msg, command_id, outcome)
            except (BatchSpoiled, *TRANSIENT):
                raise
            except Exception:
                failed = self._failed(msg)
                return lambda: failed

    def _step(
        self,
        msg: Incoming,
        body: dict[str, Any],
        command_id: str,
        org: Callable[[], Organisation],
        whistles: WhistleApp | None = None,
    ) -> Receipt:
        """Apply the command to its whistle (through `whistles`, a batch's app, if given); Rejected if it cannot be."""
        model = DEPARTMENT_COMMANDS.get(msg.action)
        if model is None:
            raise Rejected(
                "unknown_action",
                f"unknown action {msg.action!r}; publish to baton.dept.{msg.code}.cmd.<action> with one of: "
                + ", ".join(DEPARTMENT_COMMANDS),
            )
        try:
            command: DepartmentCommand = model.model_validate(body)
        except ValidationError as exc:
            raise Rejected("invalid_command", _explain(exc)) from None
        if msg.code not in org().departments:
            raise Rejected("unknown_department", f"department {msg.code!r} is not registered in Baton")
        ctx = Context(
            actor=department_system(msg.code),
            correlation_id=command_id,
            idempotency_key=msg.key(command_id),
            fingerprint=msg.fingerprint,
        )
        try:
            return STEPS[msg.action](whistles or self.whistles, ctx, command)
        except DomainError as exc:
            raise Rejected(exc.code, exc.message) from None

    @staticmethod
    def _replay(prior: CommandRecord, fingerprint: str) -> Outcome:
        """The outcome of a repeated command_id: services.base.replay's answer, as an outcome."""
        command_id = prior.key.split(":", 2)[-1]
        try:
            receipt = replay(prior, fingerprint)
        except IdempotencyKeyReused:
            return Outcome(
                command_id=command_id,
                status="rejected",
                error=OutcomeError(
                    code="command_id_reused",
                    message="this command_id was already used for a different command; use a new command_id",
                ),
            )
        except PriorRejection:
            return Outcome.model_validate(prior.outcome)
        return Outcome(command_id=command_id, status="accepted", position=receipt.position)


def _read(data: bytes) -> tuple[dict[str, Any], str]:
    """The body and its command_id, or Rejected."""
    body = _parse(data)
    command_id = body.get("command_id")
    if isinstance(command_id, str) and 0 < len(command_id) <= 200:
        return body, command_id
    raise Rejected("invalid_command", "command_id is required: a string of 1-200 characters")


def _try_read(data: bytes) -> tuple[dict[str, Any] | Rejected, str | None]:
    try:
        return _read(data)
    except Rejected as rejected:
        return rejected, None


def _whistle_ids(reads: Sequence[tuple[dict[str, Any] | Rejected, str | None]]) -> list[UUID]:
    """The whistles the readable commands name, to be loaded with one query."""
    ids = []
    for body, _ in reads:
        if isinstance(body, dict) and isinstance(body.get("whistle_id"), str):
            try:
                ids.append(UUID(body["whistle_id"]))
            except ValueError:
                continue
    return ids


def _rejection(command_id: str | None, rejected: Rejected) -> Outcome:
    return Outcome(
        command_id=command_id, status="rejected", error=OutcomeError(code=rejected.code, message=rejected.message)
    )


def _log_outcome(msg: Incoming, command_id: str | None, outcome: Outcome) -> None:
    log.info(
        "department_command",
        intake_seq=msg.seq,
        correlation_id=command_id,
        department=msg.code,
        action=msg.action,
        command_id=command_id,
        status=outcome.status,
        error=outcome.error.code if outcome.error else None,
    )


def _answer(msg: Incoming, command_id: str | None, outcome: Outcome) -> Decided:
    """A message's answer once its batch is saved; rejections are logged one by one, acceptances by the batch."""
    if outcome.status != "accepted":
        _log_outcome(msg, command_id, outcome)
    return msg.code, outcome, msg.msg_id(command_id)


def _parse(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_BODY:
        raise Rejected("too_large", f"the body is {len(data)} bytes; at most {MAX_BODY} allowed")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("malformed", "the body is not JSON; send a JSON object with command_id and whistle_id") from None
    except RecursionError:
        raise Rejected("malformed", "the body is nested too deeply; send a flat JSON object") from None
    if not isinstance(body, dict):
        raise Rejected("malformed", "the body must be a JSON object with command_id and whistle_id")
    if b"\\u0000" in data:
        raise Rejected("invalid_command", "the body contains a NUL character (\\u0000), which Baton cannot store")
    return body


def _explain(exc: ValidationError, at_most: int = 10) -> str:
    parts = []
    errors = exc.errors()
    for error in errors[:at_most]:
        where = ".".join(str(p) for p in error["loc"])[:100] or "body"
        parts.append(f"{where}: {error['msg']}")
    if len(errors) > at_most:
        parts.append(f"and {len(errors) - at_most} more problems")
    return "; ".join(parts)


def _outcome_headers(msg_id: str, outcome: Outcome) -> dict[str, str]:
    headers = {"Nats-Msg-Id": msg_id}
    if outcome.command_id:
        headers["Baton-Correlation-Id"] = outcome.command_id
    return headers


def _msg_id(key: str, fingerprint: str) -> str:
    return f"outcome:{key}:{fingerprint[:16]}"


class OutcomeQueue:
    """One decided batch's outcomes in flight while the next batch is decided; its commands acked once they are stored.

    Deciding (the store) and publishing outcomes (nats-server fsyncing each) take turns otherwise. A batch's
    outcomes go out only after the previous batch's were stored, so each department sees them in order; a
    batch is acked only when every outcome is stored, and nacked (redelivered, answered again from the
    command log under the same Nats-Msg-Id) if any is not.
    """

    def __init__(self) -> None:
        self._in_flight: asyncio.Task[None] | None = None

    async def put(self, publisher: JetStreamPublisher, decided: list[Decided], msg: BatchMessage) -> None:
        """Wait for the previous batch's outcomes, then send this batch's (without waiting for them)."""
        await self.drain()
        self._in_flight = asyncio.create_task(self._answer(publisher, decided, msg), name="intake-outcomes")

    async def drain(self) -> None:
        """Wait until the batch in flight is answered and acked (or nacked)."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task

    @staticmethod
    async def _answer(publisher: JetStreamPublisher, decided: list[Decided], msg: BatchMessage) -> None:
        try:
            await publish_in_order(
                publisher,
                [
                    (
                        f"baton.dept.{code}.outcome",
                        outcome.model_dump_json(exclude_none=True).encode(),
                        _outcome_headers(msg_id, outcome),
                    )
                    for code, outcome, msg_id in decided
                ],
                key=lambda message: message[0],  # each department's outcomes in the order its commands came
                patience=OUTCOME_PATIENCE,
            )
            await msg.ack()
        except Exception:
            log.exception("intake_outcomes_failed", size=len(decided))
            with contextlib.suppress(Exception):
                await msg.nack(delay=0.5)


def intake_router(
    intake: Intake,
    publisher: Callable[[], JetStreamPublisher],
    batch_size: int = 100,
    outcomes: OutcomeQueue | None = None,
) -> NatsRouter:
    """The durable consumer of BATON_INTAKE."""
    router = NatsRouter()
    queue = outcomes or OutcomeQueue()

    @router.subscriber(
        "baton.dept.*.cmd.>",
        stream=stream(INTAKE_STREAM),
        durable=INTAKE_DURABLE,
        pull_sub=pull(batch_size),
        decoder=raw_bodies,
        ack_policy=AckPolicy.MANUAL,
        title="intake",
        include_in_schema=False,
    )
    async def take_commands(bodies: list[bytes], msg: BatchMessage) -> None:
        items = [(m.subject, m.data, m.metadata.sequence.stream) for m in msg.raw_message]
        timer = metrics.Timer()
        try:
            while True:
                try:
                    decided = await anyio.to_thread.run_sync(intake.decide_batch, items)
                    break
                except TRANSIENT as exc:
                    # Nothing of the batch was recorded and no outcome sent. The same batch is decided again here,
                    # in place, once the store takes writes: a nack would let later commands of a department be
                    # fetched and decided before these. Each message is kept in progress meanwhile.
                    log.warning("intake_paused", code=getattr(exc, "code", "store_unavailable"), error=str(exc))
                    metrics.commands.labels("nats", "batch", "unavailable").inc(len(items))
                    await anyio.sleep(FAULT_PAUSE)
                    for raw in msg.raw_message:
                        await raw.in_progress()
        except Exception:
            log.exception("intake_batch_failed", size=len(items))
            metrics.commands.labels("nats", "batch", "unavailable").inc(len(items))
            await anyio.sleep(0.5)
            await msg.nack()
            return
        metrics.command_seconds.labels("nats").observe(timer())
        for (subject, _, _), (_, outcome, _) in zip(items, decided, strict=True):
            action = subject.rsplit(".", 1)[-1]
            metrics.commands.labels("nats", action if action in STEPS else "unknown", outcome.status).inc()
        await queue.put(publisher(), decided, msg)

    return router
