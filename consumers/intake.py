"""Commands from department systems over NATS: each gets exactly one outcome, nothing is dropped."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import structlog
from eventsourcing.persistence import PersistenceError
from faststream.middlewares import AckPolicy
from faststream.nats import NatsRouter
from pydantic import ValidationError

from consumers.common import BatchMessage, pull, raw_bodies, stream
from domain.errors import DomainError
from infra.jetstream import INTAKE_STREAM, JetStreamPublisher
from infra.store import CommandLog, CommandRecord
from services.access import Actor, Context, Role
from services.base import PriorRejection, Receipt
from services.organisation import OrganisationApp
from services.schemas import DEPARTMENT_COMMANDS, DepartmentCommand, Outcome, OutcomeError
from services.whistles import WhistleApp

log = structlog.get_logger("baton.intake")

MAX_BODY = 64 * 1024
TRANSIENT = (PersistenceError, psycopg.OperationalError, sqlite3.OperationalError)
"""Errors that pass (the store is unreachable or busy): the message is decided again, not rejected."""

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


class Intake:
    """Decides each department command: applied once and accepted, or rejected with a reason."""

    def __init__(self, whistles: WhistleApp, org: OrganisationApp, commands: CommandLog) -> None:
        self.whistles = whistles
        self.org = org
        self.commands = commands

    def decide(self, subject: str, data: bytes, seq: int) -> tuple[str, Outcome, str]:
        """Return (department code, outcome, dedupe id of the outcome) for one message."""
        with structlog.contextvars.bound_contextvars(intake_seq=seq, correlation_id=None):
            try:
                return self._decide(subject, data, seq)
            except TRANSIENT:
                raise  # the store is down: the batch is redelivered and decided again
            except Exception:
                return self._failed(subject, data, seq)

    def _failed(self, subject: str, data: bytes, seq: int) -> tuple[str, Outcome, str]:
        """A message Baton could not decide (a bug): rejected and logged, so it cannot block the intake."""
        log.exception("department_command_failed", subject=subject[:200], size=len(data))
        tokens = subject.split(".")
        code = tokens[2] if len(tokens) > 2 else "unknown"
        outcome = Outcome(
            command_id=None,
            status="rejected",
            error=OutcomeError(
                code="internal_error",
                message=f"Baton could not decide this command and did not apply it (intake sequence {seq}); "
                "it is logged for the operators: send the step again with a new command_id later",
            ),
        )
        key = f"nats:{code}:seq:{seq}"
        return code, outcome, _msg_id(key, hashlib.sha256(subject.encode() + b"\0" + data).hexdigest())

    def _decide(self, subject: str, data: bytes, seq: int) -> tuple[str, Outcome, str]:
        tokens = subject.split(".")
        code = tokens[2] if len(tokens) > 2 else "unknown"
        action = ".".join(tokens[4:])
        command_id: str | None = None
        fingerprint = hashlib.sha256(subject.encode() + b"\0" + data).hexdigest()
        try:
            body = _parse(data)
            raw_id = body.get("command_id")
            if isinstance(raw_id, str) and 0 < len(raw_id) <= 200:
                command_id = raw_id
            else:
                raise Rejected("invalid_command", "command_id is required: a string of 1-200 characters")
            key = f"nats:{code}:{command_id}"
            structlog.contextvars.bind_contextvars(correlation_id=command_id)
            prior = self.commands.get(key)
            if prior is not None:
                return code, self._replay(prior, fingerprint), _msg_id(key, fingerprint)
            outcome = self._apply(code, action, body, key, fingerprint)
        except Rejected as rejected:
            outcome = Outcome(
                command_id=command_id,
                status="rejected",
                error=OutcomeError(code=rejected.code, message=rejected.message),
            )
            key = f"nats:{code}:{command_id}" if command_id else f"nats:{code}:seq:{seq}"
            if command_id and not self.commands.put(CommandRecord(key, fingerprint, outcome.model_dump(mode="json"))):
                prior = self.commands.get(key)
                assert prior is not None
                outcome = self._replay(prior, fingerprint)
        log.info(
            "department_command",
            department=code,
            action=action,
            command_id=command_id,
            status=outcome.status,
            error=outcome.error.code if outcome.error else None,
        )
        return code, outcome, _msg_id(key, fingerprint)

    def _apply(self, code: str, action: str, body: dict[str, Any], key: str, fingerprint: str) -> Outcome:
        model = DEPARTMENT_COMMANDS.get(action)
        if model is None:
            raise Rejected(
                "unknown_action",
                f"unknown action {action!r}; publish to baton.dept.{code}.cmd.<action> with one of: "
                + ", ".join(DEPARTMENT_COMMANDS),
            )
        try:
            command: DepartmentCommand = model.model_validate(body)
        except ValidationError as exc:
            raise Rejected("invalid_command", _explain(exc)) from None
        if code not in self.org.current().departments:
            raise Rejected("unknown_department", f"department {code!r} is not registered in Baton")
        ctx = Context(
            actor=Actor(Role.DEPARTMENT, code, f"nats:{code}"),
            correlation_id=command.command_id,
            idempotency_key=key,
            fingerprint=fingerprint,
        )
        try:
            receipt = STEPS[action](self.whistles, ctx, command)
        except DomainError as exc:
            raise Rejected(exc.code, exc.message) from None
        except PriorRejection as prior:
            return Outcome.model_validate(prior.record.outcome)
        return Outcome(command_id=command.command_id, status="accepted", position=receipt.position)

    @staticmethod
    def _replay(prior: CommandRecord, fingerprint: str) -> Outcome:
        if prior.fingerprint != fingerprint:
            command_id = prior.key.split(":", 2)[-1]
            return Outcome(
                command_id=command_id,
                status="rejected",
                error=OutcomeError(
                    code="command_id_reused",
                    message="this command_id was already used for a different command; use a new command_id",
                ),
            )
        if prior.outcome.get("status") == "accepted":
            command_id = prior.key.split(":", 2)[-1]
            position = prior.positions[-1] if prior.positions else None
            return Outcome(command_id=command_id, status="accepted", position=position)
        return Outcome.model_validate(prior.outcome)


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


def intake_router(intake: Intake, publisher: Callable[[], JetStreamPublisher], batch_size: int = 100) -> NatsRouter:
    """The durable consumer of BATON_INTAKE."""
    router = NatsRouter()

    @router.subscriber(
        "baton.dept.*.cmd.>",
        stream=stream(INTAKE_STREAM),
        durable="baton_intake",
        pull_sub=pull(batch_size),
        decoder=raw_bodies,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="intake",
        include_in_schema=False,
    )
    async def take_commands(bodies: list[bytes], msg: BatchMessage) -> None:
        items = [(m.subject, m.data, m.metadata.sequence.stream) for m in msg.raw_message]
        try:
            decided = await anyio.to_thread.run_sync(lambda: [intake.decide(*item) for item in items])
            pub = publisher()
            futures = [
                await pub.publish(
                    f"baton.dept.{code}.outcome",
                    outcome.model_dump_json(exclude_none=True).encode(),
                    _outcome_headers(msg_id, outcome),
                )
                for code, outcome, msg_id in decided
            ]
            for result in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        except Exception:
            log.exception("intake_batch_failed", size=len(items))
            await anyio.sleep(0.5)
            raise

    return router
