"""What every Baton application shares: the one governance log, the clock, idempotent commands."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.application import Application, Recording
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import InfrastructureFactory, IntegrityError, Mapper

from domain.errors import Conflict, InvalidCommand
from infra.clock import Clock
from infra.store import CommandRecord, Store
from services.access import Context

log = structlog.get_logger("baton.commands")

MAX_ATTEMPTS = 12


class ConcurrentChange(Conflict):
    """The aggregate kept changing under the command; the client should retry."""

    code = "concurrent_change"


class IdempotencyKeyReused(InvalidCommand):
    """An idempotency key came back with a different request."""

    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Receipt:
    """What an accepted command produced."""

    body: dict[str, Any]
    positions: list[int] = field(default_factory=list)
    replayed: bool = False

    @property
    def position(self) -> int | None:
        return self.positions[-1] if self.positions else None


Decision = tuple[Sequence[Aggregate], dict[str, Any]]


class BatonApplication(Application[UUID]):
    """An Application of one bounded context, writing into the shared governance log."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        super().__init__(env={"AGGREGATE_CACHE_MAXSIZE": "5000"})

    def construct_factory(self, env: Any) -> InfrastructureFactory:
        return self.store.factory

    def construct_mapper(self) -> Mapper[UUID]:
        return self.store.mapper

    def construct_recorder(self) -> Any:
        return self.store.recorder

    def _notify(self, recordings: list[Recording[UUID]]) -> None:
        if recordings:
            self.store.saved(recordings[-1].notification.id)

    def close(self) -> None:
        """The store belongs to whoever opened it; nothing to close here."""

    def execute(self, ctx: Context, decide: Callable[[datetime], Decision]) -> Receipt:
        """Run decide(now) and save what it changed in one transaction, at most once per idempotency key."""
        key = ctx.idempotency_key
        if key:
            prior = self.store.commands.get(key)
            if prior is not None:
                return self.replay(prior, ctx)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            aggregates, body = decide(self.clock.now())
            if not key and not any(a.pending_events for a in aggregates):
                return Receipt(body=body)
            record = CommandRecord(key, ctx.fingerprint, {"status": "accepted", "body": body}) if key else None
            try:
                recordings = self.save(*aggregates, command=record)
            except IntegrityError:
                if key and (prior := self.store.commands.get(key)) is not None:
                    return self.replay(prior, ctx)
                log.info("command_conflict_retry", attempt=attempt)
                time.sleep(random.uniform(0, 0.005 * attempt))  # let the competing writers through
                continue
            positions = [r.notification.id for r in recordings]
            log.info("command_accepted", positions=positions, **_summary(body))
            return Receipt(body=body, positions=positions)
        raise ConcurrentChange(f"the record changed {MAX_ATTEMPTS} times while this command ran; send it again")

    @staticmethod
    def replay(prior: CommandRecord, ctx: Context) -> Receipt:
        """Answer a repeated command from the command log."""
        if prior.fingerprint != ctx.fingerprint:
            raise IdempotencyKeyReused(
                "this idempotency key was already used for a different request; send a new key for a new request"
            )
        if prior.outcome.get("status") != "accepted":
            raise PriorRejection(prior)
        log.info("command_replayed", key=prior.key)
        return Receipt(body=prior.outcome["body"], positions=prior.positions, replayed=True)


class PriorRejection(Exception):
    """The command was seen before and rejected; its recorded outcome stands."""

    def __init__(self, record: CommandRecord) -> None:
        super().__init__(record.key)
        self.record = record


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if isinstance(v, str | int) and len(str(v)) < 80}
