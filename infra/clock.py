"""Clocks: time is an input, so tests and the demo can play weeks in seconds."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Tells the application what time it is."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        """Move the clock to moment, which may not be in its past."""
        with self._lock:
            if moment < self._now:
                raise ValueError(f"the clock cannot go back from {self._now} to {moment}")
            self._now = moment

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by delta and return the new time."""
        with self._lock:
            self._now += delta
            return self._now
