"""The watcher: as time passes, records missed deadlines and escalations, and lapses expired points."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from infra.clock import Clock
from projections.volunteering import VolunteeringView
from projections.whistle_board import WhistleBoardView
from services.access import SYSTEM_ACTOR, Context
from services.base import Receipt
from services.volunteering import VolunteeringApp
from services.whistles import WhistleApp

log = structlog.get_logger("baton.watcher")


@dataclass(frozen=True)
class Tick:
    """What one tick recorded."""

    escalated: int = 0
    expired: int = 0


class Watcher:
    """Asks each aggregate with something due (from the read models' indexes) to check itself against the clock."""

    def __init__(
        self,
        clock: Clock,
        whistles: WhistleApp,
        board: WhistleBoardView,
        volunteering: VolunteeringApp,
        volunteers: VolunteeringView,
    ) -> None:
        self.clock = clock
        self.whistles = whistles
        self.board = board
        self.volunteering = volunteering
        self.volunteers = volunteers

    def tick(self) -> Tick:
        """Check everything due by now."""
        now = self.clock.now().isoformat()
        tick = Tick(
            escalated=self._each(self.board.due_deadlines(now), self.whistles.check_deadlines),
            expired=self._each(self.volunteers.due_expiries(now), self.volunteering.expire_points),
        )
        if tick.escalated or tick.expired:
            log.info("watcher_recorded", whistles_escalated=tick.escalated, volunteers_expired=tick.expired)
        return tick

    @staticmethod
    def _each(ids: list[str], check: Callable[[Context, str], Receipt | None]) -> int:
        changed = 0
        for aggregate_id in ids:
            ctx = Context(actor=SYSTEM_ACTOR, correlation_id=f"watch-{uuid.uuid4().hex[:12]}")
            if check(ctx, aggregate_id) is not None:
                changed += 1
        return changed

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
