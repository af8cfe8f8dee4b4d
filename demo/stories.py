"""The demo's stories: async iterators that yield when they next act, played in time order on a ManualClock."""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from datetime import datetime

from infra.clock import ManualClock


async def run_stories(clock: ManualClock, stories: list[AsyncIterator[datetime]], end: datetime) -> None:
    """Interleave stories in time order: each yields when it next acts, and the clock moves there."""
    counter = itertools.count()
    queue: list[tuple[datetime, int, AsyncIterator[datetime]]] = []
    for story in stories:
        with contextlib.suppress(StopAsyncIteration):
            heapq.heappush(queue, (await anext(story), next(counter), story))
    while queue:
        moment, _, story = heapq.heappop(queue)
        if moment > end:
            continue
        if moment > clock.now():
            clock.set(moment)
        try:
            heapq.heappush(queue, (await anext(story), next(counter), story))
        except StopAsyncIteration:
            pass
    clock.set(max(clock.now(), end))
