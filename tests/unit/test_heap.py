"""The start-up heap leaves later collections; a long collection is logged."""

from __future__ import annotations

import gc

import pytest
from structlog.testing import capture_logs

from infra import heap


def test_the_startup_heap_is_frozen_and_a_long_pause_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    before = list(gc.callbacks)
    try:
        heap.freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        heap.log_long_pauses(threshold=0.0)
        heap.log_long_pauses(threshold=0.0)  # once per process
        added = [c for c in gc.callbacks if c not in before]
        assert len(added) == 1
        with capture_logs() as logs:
            gc.collect()
        pauses = [entry for entry in logs if entry["event"] == "gc_pause"]
        assert pauses and pauses[0]["generation"] == 2 and pauses[0]["log_level"] == "warning", logs
    finally:
        gc.callbacks[:] = before
        gc.unfreeze()
