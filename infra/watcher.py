"""The watcher: as time passes, records missed deadlines, lapses expired points, marks overdue rectifications."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from services.access import SYSTEM_ACTOR, Context
from services.base import Receipt

if TYPE_CHECKING:
    from infra.bootstrap import Baton

log = structlog.get_logger("baton.watcher")


@dataclass(frozen=True)
class Tick:
    """What one tick recorded."""

    escalated: int = 0
    expired: int = 0
    overdue: int = 0


class Watcher:
    """Asks each aggregate with something due (from the read models' indexes) to check itself against the clock."""

    def __init__(self, baton: Baton) -> None:
        self.baton = baton

    def tick(self) -> Tick:
        """Check everything due by now."""
        b = self.baton
        now = b.clock.now()
        tick = Tick(
            escalated=self._each(b.board.view.due_deadlines(now.isoformat()), b.whistles.check_deadlines),
            expired=self._each(b.volunteers.view.due_expiries(now.isoformat()), b.volunteering.expire_points),
            overdue=self._each(
                b.branch_board.view.due_rectifications(b.branches.today(now).isoformat()),
                b.branches.check_rectifications,
            ),
        )
        if tick.escalated or tick.expired or tick.overdue:
            log.info(
                "watcher_recorded",
                whistles_escalated=tick.escalated,
                volunteers_expired=tick.expired,
                branches_overdue=tick.overdue,
            )
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
