"""Garbage collection for a long-running process whose heap is mostly what it built at start-up."""

from __future__ import annotations

import gc
import time
from typing import Any

import structlog

log = structlog.get_logger("baton.heap")

PAUSE_LOGGED = 0.05
"""A collection that held the process up longer than this (seconds) is logged as a warning."""


def freeze_startup_heap() -> None:
    """Collect once, then leave everything alive out of later collections (gc.freeze): a full collection walked the
    organisation, the app and the modules each time, ~0.25 s at county x 10 with every request waiting on it (the
    p99 of reads at 50/s). What is made later is collected as before; frozen objects are still freed by their
    reference counts, only cycles among them are not."""
    gc.collect()
    gc.freeze()


def log_long_pauses(threshold: float = PAUSE_LOGGED) -> None:
    """Log each garbage collection that takes longer than threshold seconds (once per process)."""
    if any(getattr(callback, "baton_pauses", False) for callback in gc.callbacks):
        return
    started: list[float] = [0.0]

    def observe(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (took := time.perf_counter() - started[0]) > threshold:
            log.warning(
                "gc_pause", ms=round(took * 1000, 1), generation=info["generation"], frozen=gc.get_freeze_count()
            )

    observe.baton_pauses = True  # type: ignore[attr-defined]
    gc.callbacks.append(observe)
