"""Helper processes on both cores for the long offline passes over the history: each reads, decodes and
canonicalises (or hashes) stretches of the store while the calling process keeps what must go in order.

Spawned, not forked (the caller holds connections and threads), one per core, each opening its own Store.
Used by the notary's catch-up (Notary.catch_up(helpers=True)), `baton export` and `baton rebuild`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from audit.merkle import leaf_hash
from infra.envelope import EnvelopeCodec, canonical
from infra.settings import Settings
from infra.store import Store

HELP_STRETCH = 20_000
"""Positions one helper task reads."""
DOCUMENTED = frozenset({"assessment_scheme.published", "branch_standard.published", "assessment.finalised"})
"""Events whose documents an export copies beside the events (infra.export)."""

_helper: tuple[Store, EnvelopeCodec] | None = None


def _start_helper(settings: Settings) -> None:
    """In a helper process: open the store and a codec, once."""
    global _helper
    store = Store(settings)
    _helper = (store, EnvelopeCodec(store.mapper))


def _notifications(after: int, stop: int) -> Iterator[tuple[EnvelopeCodec, Any]]:
    assert _helper is not None
    store, codec = _helper
    while notifications := store.select(after, 2000, stop=stop):
        for n in notifications:
            yield codec, n
        after = notifications[-1].id


def helper_leaves(after: int, stop: int) -> tuple[list[int], bytes]:
    """The positions in (after, stop] and their leaf hashes, 32 bytes each, concatenated."""
    positions, hashes = [], bytearray()
    for codec, n in _notifications(after, stop):
        positions.append(n.id)
        hashes += leaf_hash(canonical(codec.recorded(n)))
    return positions, bytes(hashes)


def helper_lines(after: int, stop: int) -> tuple[list[int], bytes, list[dict[str, Any]]]:
    """The positions in (after, stop], their canonical bytes as lines of events.jsonl, and the bodies of the
    events whose documents an export copies (DOCUMENTED)."""
    positions, lines, documents = [], bytearray(), []
    for codec, n in _notifications(after, stop):
        envelope = codec.recorded(n)
        positions.append(n.id)
        lines += canonical(envelope) + b"\n"
        if envelope.name in DOCUMENTED:
            documents.append(envelope.body())
    return positions, bytes(lines), documents


def helper_envelopes(after: int, stop: int) -> list[tuple[Any, ...]]:
    """The envelopes (as the code reads them: codec.envelope) of the events in (after, stop], as field tuples."""
    return [codec.envelope(n).astuple() for codec, n in _notifications(after, stop)]


def helped(
    settings: Settings, after: int, top: int, work: Callable[[int, int], Any], stretch: int | None = None
) -> Iterator[tuple[int, Any]]:
    """(start, work(start, stop)) for each stretch of positions (HELP_STRETCH unless given) from after up to top,
    in order, computed by the helpers a few stretches ahead."""
    step = stretch or HELP_STRETCH
    stretches = iter([(a, min(a + step, top)) for a in range(after, top, step)])
    workers = max(1, min(2, os.cpu_count() or 1))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_start_helper, initargs=(settings,)) as pool:
        pending: deque[tuple[int, Future[Any]]] = deque()
        try:
            for start, stop in stretches:
                pending.append((start, pool.submit(work, start, stop)))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                start, future = pending.popleft()
                done = future.result()
                following = next(stretches, None)
                if following is not None:
                    pending.append((following[0], pool.submit(work, *following)))
                yield start, done
        finally:
            for _, left in pending:
                left.cancel()
