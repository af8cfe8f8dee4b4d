"""The deadline watcher: records missed deadlines and escalations as time passes."""

from __future__ import annotations

import asyncio
import uuid

import structlog

from infra.clock import Clock
from projections.whistle_board import WhistleBoardView
from services.access import SYSTEM_ACTOR, Context
from services.whistles import WhistleApp

log = structlog.get_logger("baton.watcher")


class DeadlineWatcher:
    """Asks each whistle with a due deadline to check itself against the clock."""

    def __init__(self, whistles: WhistleApp, board: WhistleBoardView, clock: Clock) -> None:
        self.whistles = whistles
        self.board = board
        self.clock = clock

    def tick(self) -> int:
        """Check every whistle with a deadline due by now; return how many recorded a miss."""
        due = self.board.due_deadlines(self.clock.now().isoformat())
        escalated = 0
        for whistle_id in due:
            ctx = Context(actor=SYSTEM_ACTOR, correlation_id=f"watch-{uuid.uuid4().hex[:12]}")
            if self.whistles.check_deadlines(ctx, whistle_id) is not None:
                escalated += 1
        if escalated:
            log.info("deadlines_missed", whistles=escalated)
        return escalated

    async def run(self, interval: float) -> None:
        """Tick every `interval` seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watcher_tick_failed")
            await asyncio.sleep(interval)
