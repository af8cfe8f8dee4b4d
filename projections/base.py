"""Read models: views whose every write records the projection's position in the same transaction."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import orjson
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from audit.canonical import compact
from domain.events import handlers_of
from infra.envelope import Envelope
from infra.sql import Fenced, PositionMoved, Tx, View


class EventSource(Protocol):
    """The store, read as envelopes."""

    def envelopes(self, after: int, limit: int, stop: int | None = None) -> list[Envelope]: ...


TView = TypeVar("TView", bound=View)

Handler = Callable[[Any, Tx, Envelope], None]


class BatonProjection(Projection[TView], Generic[TView]):
    """Applies events to a view in batches; each batch and its position commit together."""

    name = "projection"
    fill_limit = 2000

    def __init__(self, view: TView, source: EventSource) -> None:
        super().__init__(view)
        self.source = source
        self.fence: Fenced | None = None
        """Set while this process holds the projections' lease: every batch checks it before it commits."""
        self.handlers: dict[str, Handler] = handlers_of(type(self))

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Apply one envelope (the eventsourcing Projection interface)."""
        self.process_batch([domain_event])

    def position(self) -> int:
        return self.view.max_tracking_id(self.name) or 0

    def process_batch(self, envelopes: Sequence[Envelope]) -> int:
        """Apply what is new in envelopes, filling any gap from the store; return the new position."""
        if not envelopes:
            return self.position()
        target = max(e.position for e in envelopes)
        while True:
            try:
                with self.view.db.transaction(pipelined=True) as tx:
                    if self.fence is not None:
                        self.fence.check(tx)
                    tracked = self.view.locked_position(tx, self.name)
                    if tracked >= target:
                        return tracked
                    fresh = sorted((e for e in envelopes if e.position > tracked), key=lambda e: e.position)
                    if [e.position for e in fresh] != list(range(tracked + 1, tracked + 1 + len(fresh))):
                        # Redelivered or missing messages: the store, not the stream, says what comes next.
                        fresh = self.source.envelopes(tracked, self.fill_limit, stop=target)
                    if not fresh:
                        return tracked
                    self.prepare(tx, fresh)
                    for envelope in fresh:
                        self.apply(tx, envelope)
                    self.flush(tx)
                    self.view.advance(tx, self.name, tracked, fresh[-1].position)
                    if fresh[-1].position >= target:
                        return fresh[-1].position
            except PositionMoved:
                continue  # the transaction rolled back; read the position again

    def apply(self, tx: Tx, envelope: Envelope) -> None:
        handler = self.handlers.get(envelope.name)
        if handler is not None:
            handler(self, tx, envelope)

    def prepare(self, tx: Tx, envelopes: Sequence[Envelope]) -> None:
        """Read what a batch's handlers will ask, at once, into tx.memo (nothing, unless a projection does)."""

    def flush(self, tx: Tx) -> None:
        """Write what apply() kept in tx.memo during this batch (nothing, unless a projection batches its writes)."""

    def catch_up(self, batch_size: int = 2000, progress: Callable[[int], None] | None = None) -> int:
        """Apply everything the store holds beyond this view's position; return the new position."""
        position = self.position()
        while True:
            batch = self.source.envelopes(position, batch_size)
            if not batch:
                return position
            position = self.process_batch(batch)
            if progress is not None:
                progress(position)

    def reset(self) -> None:
        """Drop the view's tables and position."""
        self.view.drop_tables(self.name)


def catch_up_together(
    projections: Sequence[BatonProjection[Any]], batch_size: int = 2000, progress: Callable[[int], None] | None = None
) -> int:
    """Catch several views up in one pass over the store: each batch is read and decoded once for all of them."""
    if not projections:
        return 0
    source = projections[0].source
    position = min(p.position() for p in projections)
    while True:
        batch = source.envelopes(position, batch_size)
        if not batch:
            return position
        for projection in projections:
            projection.process_batch(batch)
        position = batch[-1].position
        if progress is not None:
            progress(position)


def apply_together(
    projections: Sequence[BatonProjection[Any]],
    batches: Iterable[Sequence[Envelope]],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Apply each batch (consecutive events, decoded elsewhere) to every view in turn; return the last position."""
    position = min((p.position() for p in projections), default=0)
    for batch in batches:
        if not batch:
            continue
        for projection in projections:
            projection.process_batch(batch)
        position = batch[-1].position
        if progress is not None:
            progress(position)
    return position


def dumps(value: Any) -> str:
    """Compact JSON text (audit.canonical.compact: json.dumps's text, faster)."""
    return compact(value)


def loads(text: str | None) -> Any:
    """A view's JSON column read back: orjson (a board page reads ~160 of them); json where orjson would answer
    otherwise (a number of 19 digits or more, which orjson reads as a float; a lone surrogate, which it refuses)."""
    if not text:
        return None
    if len(text) < 19 or LONG_NUMBER.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


LONG_NUMBER = re.compile(r"\d{19}")
