"""The watcher: as time passes, records missed deadlines, lapses expired points, marks overdue rectifications."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from infra.clock import Clock
from services.access import SYSTEM_ACTOR, Context
from services.base import Receipt

log = structlog.get_logger("baton.watcher")


@dataclass(frozen=True)
class Tick:
    """What one tick recorded."""

    escalated: int = 0
    expired: int = 0
    overdue: int = 0
    reports_overdue: int = 0
    reports_followed: int = 0


@dataclass(frozen=True)
class Due:
    """One kind of thing that falls due: the ids of those due by a moment (a read model's index), and the command
    that has one check itself against the clock (None when it had nothing to record)."""

    ids: Callable[[datetime], list[str]]
    check: Callable[[Context, str], Receipt | None]


class Watcher:
    """Asks each aggregate with something due to check itself against the clock; the composition root says where
    the due ids come from (infra.bootstrap.deadline_watcher)."""

    def __init__(
        self,
        clock: Clock,
        *,
        deadlines: Due,
        expiries: Due,
        rectifications: Due,
        reports: Due | None = None,
        following: Due | None = None,
    ) -> None:
        self.clock = clock
        self.reports = reports
        self.following = following
        self.deadlines = deadlines
        self.expiries = expiries
        self.rectifications = rectifications

    def tick(self) -> Tick:
        """Check everything due by now."""
        now = self.clock.now()
        tick = Tick(
            escalated=self._each(self.deadlines, now),
            expired=self._each(self.expiries, now),
            overdue=self._each(self.rectifications, now),
            reports_overdue=self._each(self.reports, now) if self.reports else 0,
            reports_followed=self._each(self.following, now) if self.following else 0,
        )
        if any(vars(tick).values()):
            log.info(
                "watcher_recorded",
                whistles_escalated=tick.escalated,
                volunteers_expired=tick.expired,
                branches_overdue=tick.overdue,
                reports_overdue=tick.reports_overdue,
                reports_followed=tick.reports_followed,
            )
        return tick

    @staticmethod
    def _each(due: Due, now: datetime) -> int:
        changed = 0
        for aggregate_id in due.ids(now):
            ctx = Context(actor=SYSTEM_ACTOR, correlation_id=f"watch-{uuid.uuid4().hex[:12]}")
            if due.check(ctx, aggregate_id) is not None:
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
