"""What every Baton application shares: the one governance log, the clock, idempotent commands."""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import structlog
from eventsourcing.application import Application, Recording, project_aggregate
from eventsourcing.domain import Aggregate, CanMutateAggregate
from eventsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    InterfaceError,
    Mapper,
    OperationalError,
    StoredEvent,
)

from domain.errors import Conflict, InvalidCommand
from infra import metrics
from infra.clock import Clock
from infra.sqlite import is_busy
from infra.store import CommandRecord, Store
from infra.store_faults import StoreFault
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
        self.group_commit = GroupCommit(self)
        self.deciding_into: CommandBatch[Any] | None = None
        """None, but on a batch's own copy of this application (CommandBatch.app): the batch its commands go to."""

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

    @contextmanager
    def batch(self: App) -> Iterator[CommandBatch[App]]:
        """A command batch: batch.app's commands are decided into it until batch.save(); this app saves as before."""
        batch = CommandBatch(self)
        try:
            yield batch
        finally:
            batch.closed = True

    def decide_into(self: App, batch: CommandBatch[App]) -> App:
        """A copy of this app (same store, repository, other apps) whose load() and execute() use the batch."""
        bound = copy.copy(self)
        bound.deciding_into = batch
        return bound

    def load(self, aggregate_id: UUID) -> Any:
        """The aggregate as of now, for a command to change; on a batch's app, the batch's own copy."""
        if self.deciding_into is not None:
            return self.deciding_into.load(aggregate_id)
        return self.repository.get(aggregate_id)

    def execute(self, ctx: Context, decide: Callable[[datetime], Decision]) -> Receipt:
        """Run decide(now) and save what it changed in one transaction, at most once per idempotency key."""
        if self.deciding_into is not None:  # a batch's app (CommandBatch.app): saved with the batch, not here
            return self.deciding_into.take(ctx, decide)
        # A repeated key is found when its save collides with the logged one (or deciding again fails): the
        # log is read only then, not before every command.
        key = ctx.idempotency_key
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                aggregates, body = decide(self.clock.now())
            except Exception:
                if key and (prior := self.store.commands.get(key)) is not None:
                    return replay(prior, ctx.fingerprint)
                raise
            if not key and not any(a.pending_events for a in aggregates):
                return Receipt(body=body)
            events = [e for a in aggregates for e in a.collect_events()]
            owned = tuple((e.originator_id, e.originator_version) for e in events)
            outcome = {"status": "accepted", "body": body}
            record = CommandRecord(key, ctx.fingerprint, outcome, events=owned) if key else None
            try:
                positions = self.group_commit.save(events, record)
            except IntegrityError:
                if key and (prior := self.store.commands.get(key)) is not None:
                    return replay(prior, ctx.fingerprint)
                log.info("command_conflict_retry", attempt=attempt)
                time.sleep(random.uniform(0, 0.005 * attempt))  # let the competing writers through
                continue
            log.debug("command_accepted", positions=positions, **_summary(body))
            return Receipt(body=body, positions=positions)
        raise ConcurrentChange(f"the record changed {MAX_ATTEMPTS} times while this command ran; send it again")


def replay(prior: CommandRecord, fingerprint: str) -> Receipt:
    """Answer a repeated command (HTTP Idempotency-Key or NATS command_id) from the command log."""
    if prior.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "this idempotency key was already used for a different request; send a new key for a new request"
        )
    if prior.outcome.get("status") != "accepted":
        raise PriorRejection(prior)
    log.info("command_replayed", key=prior.key)
    return Receipt(body=prior.outcome["body"], positions=prior.positions, replayed=True)


class BatchSpoiled(Exception):
    """A command of a batch failed halfway through changing an aggregate: the batch must not be saved."""


App = TypeVar("App", bound=BatonApplication)


class CommandBatch(Generic[App]):
    """Commands decided one after another on shared copies of their aggregates, then saved in one transaction.

    In `with app.batch() as batch:`, the commands to batch are sent to batch.app, the application bound to this
    batch: its execute(ctx, decide) does not save, its load() hands decide the batch's copy of each aggregate, so
    a command sees what the batch's earlier commands did to it, and the command's events and command record wait
    for batch.save(). `app` itself is not changed: its commands (another thread's HTTP requests, say) save as
    usual. The caller answers repeated idempotency keys itself; the store's version check still refuses the save
    if anything changed meanwhile.
    """

    def __init__(self, app: App) -> None:
        self.app: App = app.decide_into(self)
        """The application whose commands are decided into this batch."""
        self.closed = False
        self.aggregates: dict[UUID, Aggregate] = {}
        self.events: list[CanMutateAggregate[UUID]] = []
        self.records: list[CommandRecord] = []
        self.taken: list[tuple[Receipt, slice]] = []
        self.keys: set[str] = set()
        self.remembered = 0

    def load(self, aggregate_id: UUID) -> Aggregate:
        """The batch's copy of the aggregate, loaded on first use."""
        aggregate = self.aggregates.get(aggregate_id)
        if aggregate is None:
            aggregate = self.aggregates[aggregate_id] = self.app.repository.get(aggregate_id)
        return aggregate

    def preload(self, aggregate_ids: Iterable[UUID]) -> None:
        """Load the batch's copies of these aggregates (those that exist) with one query."""
        wanted = [i for i in dict.fromkeys(aggregate_ids) if i not in self.aggregates]
        if not wanted:
            return
        stored: dict[UUID, list[StoredEvent]] = {}
        for event in self.app.store.recorder.select_events_of(wanted):
            stored.setdefault(event.originator_id, []).append(event)
        for aggregate_id, events in stored.items():
            aggregate = project_aggregate(None, map(self.app.mapper.to_domain_event, events))
            if aggregate is not None:
                self.aggregates[aggregate_id] = aggregate

    def take(self, ctx: Context, decide: Callable[[datetime], Decision]) -> Receipt:
        """Decide a command into the batch; its receipt's positions are filled in when the batch is saved."""
        if self.closed:
            raise RuntimeError("this command batch's block has ended: send the command to the application itself")
        key = ctx.idempotency_key
        if key in self.keys:
            raise ValueError(f"idempotency key {key!r} is already in this batch; answer the repeat from the first")
        try:
            aggregates, body = decide(self.app.clock.now())
        except Exception as exc:
            if any(a.pending_events for a in self.aggregates.values()):
                raise BatchSpoiled(f"a command failed halfway through changing an aggregate: {exc!r}") from exc
            raise
        start = len(self.events)
        for aggregate in aggregates:
            self.aggregates.setdefault(aggregate.id, aggregate)
            self.events.extend(aggregate.collect_events())
        receipt = Receipt(body=body)
        if key:
            self.keys.add(key)
            owned = tuple((e.originator_id, e.originator_version) for e in self.events[start:])
            self.records.append(CommandRecord(key, ctx.fingerprint, {"status": "accepted", "body": body}, events=owned))
        self.taken.append((receipt, slice(start, len(self.events))))
        return receipt

    def remember(self, record: CommandRecord) -> None:
        """Record an outcome without events (a rejection) in the batch's transaction."""
        if record.key in self.keys:
            raise ValueError(f"idempotency key {record.key!r} is already in this batch")
        self.keys.add(record.key)
        self.records.append(record)
        self.remembered += 1

    def save(self) -> None:
        """Save every command's events and record in one transaction; IntegrityError if a version was taken."""
        metrics.group_commit.labels("nats").observe(len(self.taken) + self.remembered)
        if self.events:
            recordings = self.app.save(*self.events, command=self.records)
            positions = [r.notification.id for r in recordings]
            for receipt, own in self.taken:
                receipt.positions.extend(positions[own])
            log.info("commands_accepted", commands=len(self.taken), first=positions[0], last=positions[-1])
        elif self.records:
            self.app.store.commands.put_all(self.records)


UNAVAILABLE = (OperationalError, InterfaceError, StoreFault)
"""The store could not be reached (after the recorder's own retries), or its disk is full or it is read-only: a 503,
whoever's command it was."""


def unreachable(exc: BaseException) -> bool:
    """Whether a save failed because the store could not be reached or take writes (not merely busy: the next save
    may pass)."""
    return isinstance(exc, UNAVAILABLE) and not is_busy(exc)


class _Pending:
    """One command's events and record waiting in a group commit, and what became of them."""

    __slots__ = ("error", "events", "positions", "record")

    def __init__(self, events: list[CanMutateAggregate[UUID]], record: CommandRecord | None) -> None:
        self.events = events
        self.record = record
        self.positions: list[int] | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.positions is not None or self.error is not None


class GroupCommit:
    """Concurrent commands' saves joined into one transaction: whoever finds no save running leads.

    A command that arrives while a save runs waits; when the save ends, one waiter takes everything that
    queued meanwhile and saves it in one transaction (at most `limit` commands). Alone, a command saves at
    once, so an idle server adds no delay. If a joined save fails for one command's sake (a taken version:
    two commands changed one aggregate, or another writer did), each command of it is saved again on its
    own, so each gets its own answer. If the store cannot be reached, that is the answer of every member
    and of every command that queued meanwhile: their own saves would fail the same way, after as long. A
    store that stayed busy (SQLite's write lock held elsewhere for the whole busy timeout) is the answer of
    that save's members only; those queued meanwhile are saved next, as usual. A full disk or a read-only store
    is like an unreachable one: the whole transaction rolled back, and every member and waiter is told why.
    """

    def __init__(self, app: BatonApplication, limit: int = 200) -> None:
        self.app = app
        self.limit = limit
        self._changed = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False

    def save(self, events: list[CanMutateAggregate[UUID]], record: CommandRecord | None) -> list[int]:
        """Save one command's events and record; their positions, or the error its own save would raise."""
        pending = _Pending(events, record)
        with self._changed:
            self._queue.append(pending)
            while self._leading and not pending.done:
                self._changed.wait()
            leader = not pending.done
            if leader:
                self._leading = True
        if leader:
            try:
                while not pending.done:
                    with self._changed:
                        group, self._queue = self._queue[: self.limit], self._queue[self.limit :]
                    unavailable = self._commit(group)
                    with self._changed:
                        if unavailable is not None:
                            # Those who queued while the store failed have waited out its retries already:
                            # they get its answer now rather than wait through another round of them.
                            for p in self._queue:
                                p.error = unavailable
                            self._queue = []
                        self._changed.notify_all()
            finally:
                with self._changed:
                    self._leading = False
                    self._changed.notify_all()
        if pending.error is not None:
            raise pending.error
        assert pending.positions is not None
        return pending.positions

    def _commit(self, group: list[_Pending]) -> BaseException | None:
        """Save the group; the store's failure if it could not be reached (every member has it as its error)."""
        if len(group) > 1:
            events = [e for p in group for e in p.events]
            records = [p.record for p in group if p.record is not None]
            try:
                recordings = self.app.save(*events, command=records)
            except Exception as exc:
                if unreachable(exc) or is_busy(exc):
                    for p in group:  # each member's own save would fail the same way
                        p.error = exc
                    # Unreachable, so would the saves of those queued meanwhile; busy, the next save may pass.
                    return exc if unreachable(exc) else None
                # a taken version, or one member's data: each is saved on its own
                log.info("group_commit_split", commands=len(group), error=type(exc).__name__)
            else:
                metrics.group_commit.labels("http").observe(len(group))
                positions = [r.notification.id for r in recordings]
                start = 0
                for p in group:
                    p.positions, start = positions[start : start + len(p.events)], start + len(p.events)
                return None
        for i, p in enumerate(group):
            try:
                p.positions = [r.notification.id for r in self.app.save(*p.events, command=p.record)]
                metrics.group_commit.labels("http").observe(1)
            except BaseException as exc:
                p.error = exc
                if unreachable(exc) or is_busy(exc):  # the rest of the group would fail the same way
                    for rest in group[i + 1 :]:
                        rest.error = exc
                    return exc if unreachable(exc) else None
        return None


class PriorRejection(Exception):
    """The command was seen before and rejected; its recorded outcome stands."""

    def __init__(self, record: CommandRecord) -> None:
        super().__init__(record.key)
        self.record = record


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if isinstance(v, str | int) and len(str(v)) < 80}
