"""An event's fields change: a new version and an upcaster, never a rewrite. Shown with a test-only version 2 of
whistle.reported_in (it adds `channel`) standing in for the recorded class over the corpus of release 0.1.0:
old events load upcast, the leaves and exported bytes stay those signed, the read models and every finalised
score come out the same, and new version-2 events are published, signed and verified beside the old ones."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing import utils
from eventsourcing.domain import event

from audit.verify import verify
from domain.common import Meta
from domain.events import upcast
from domain.whistle import Status
from domain.whistle import Whistle as RecordedWhistle
from infra.envelope import Envelope, EventTypes
from infra.export import export
from infra.settings import Settings
from projections.base import catch_up_together
from tests.corpus.record import read_figures
from tests.scenarios import CORPUS, differences, load, old_bundle

FIRST = CORPUS / "0.1.0"


class Whistle(RecordedWhistle):
    """Named like the class it stands in for, so its events keep their public names."""

    class ReportedIn(RecordedWhistle.Event):
        class_version = 2
        department: str
        late: bool
        minutes: int
        status: str
        channel: str
        meta: Meta

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["channel"] = "unrecorded"

    @event(ReportedIn)
    def _reported_in(
        self,
        department: str,
        late: bool,
        minutes: int,
        status: str,
        channel: str = "http",
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.summoned[department] = timestamp
        self.status = Status(status)
        self.report_in_channel = channel


@pytest.fixture
def version_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored whistles and their report-ins resolve to the version-2 classes, as if domain/whistle.py had changed."""
    monkeypatch.setitem(utils._topic_cache, "domain.whistle:Whistle", Whistle)
    for name, cls in vars(RecordedWhistle).items():  # the other events stay the recorded classes
        if isinstance(cls, type) and issubclass(cls, RecordedWhistle.Event) and name != "ReportedIn":
            monkeypatch.setitem(utils._topic_cache, f"domain.whistle:Whistle.{name}", cls)
    monkeypatch.setitem(utils._topic_cache, "domain.whistle:Whistle.ReportedIn", Whistle.ReportedIn)


def test_an_upcaster_runs_on_the_published_data_as_on_the_stored_state(version_2: None) -> None:
    """Envelopes from BATON_EVENTS are upcast by the same function the aggregate's loading uses."""
    body = {
        "position": 7,
        "aggregate": "whistle",
        "aggregate_id": "a",
        "version": 2,
        "type": "reported_in",
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "actor": None,
        "data": {"department": "HOUSING", "late": False, "minutes": 3, "status": "answered"},
    }
    types = EventTypes()
    current = types.current(Envelope.from_body(body))
    assert current.type_version == 2 and current.data["channel"] == "unrecorded"
    assert current.data == upcast(Whistle.ReportedIn, 1, body["data"])
    assert "type_version" not in body and types.current_body(body)["type_version"] == 2
    assert types.current(current) is current


def test_version_2_over_the_recorded_history(version_2: None, settings: Settings, tmp_path: Path) -> None:
    """Old events load as version 2; leaves, exported bytes, figures and finalised scores are unchanged; new
    version-2 events are published with their version and verify beside the old ones."""
    baton = load(FIRST, tmp_path / "var", settings.store)
    try:
        reported = 0
        pending = None
        for notification in baton.store.select(0, 1_000_000):
            if notification.topic == "domain.whistle:Whistle" or not notification.topic.startswith("domain.whistle:"):
                continue
            if notification.topic.endswith(":Whistle.ReportedIn"):
                whistle = baton.whistles.repository.get(notification.originator_id)
                assert isinstance(whistle, Whistle) and whistle.report_in_channel == "unrecorded"
                envelope = baton.codec.recorded(notification)
                assert envelope.type_version == 1 and "channel" not in envelope.data
                assert baton.codec.envelope(notification).data["channel"] == "unrecorded"
                reported += 1
        assert reported, "the corpus has report-ins"
        for notification in baton.store.select(0, 1_000_000):
            if notification.topic.endswith(":Whistle.Blown"):
                whistle = baton.whistles.repository.get(notification.originator_id)
                if whistle.pending_departments and whistle.status in (Status.BLOWN, Status.ANSWERED):
                    pending = whistle
                    break
        assert pending is not None, "the corpus has a whistle waiting for a department"

        catch_up_together(list(baton.projections.values()))
        assert differences(json.loads((FIRST / "figures.json").read_text()), asyncio.run(read_figures(baton))) == []
        size = baton.notary.catch_up()
        old = old_bundle(FIRST, tmp_path / "old")
        assert b"".join(leaf for _, leaf in baton.notary.view.leaves(0, size)) == (old / "leaves.bin").read_bytes()

        department = pending.pending_departments[0]
        at = baton.clock.now() + timedelta(minutes=1)
        pending.report_in(department, timestamp=at, meta={"actor": {"role": "department", "unit": department}})
        baton.whistles.save(pending)
        position = baton.store.max_position()
        [stored] = baton.store.select(position - 1, 1)
        recorded = baton.codec.recorded(stored)
        assert recorded.type_version == 2 and recorded.data["channel"] == "http"
        assert json.loads(recorded.to_json())["type_version"] == 2
        catch_up_together(list(baton.projections.values()))
        assert all(projection.position() == position for projection in baton.projections.values())
        assert baton.notary.catch_up() == size + 1

        new = tmp_path / "new"
        export(baton, new)
        lines = (new / "events.jsonl").read_bytes().splitlines(keepends=True)
        assert b"".join(lines[:size]) == (old / "events.jsonl").read_bytes()
        assert b'"type_version":2' in lines[size]
    finally:
        baton.close()
    report = verify(new)
    assert report.ok, report.notes
    assert report.finalised and report.events == size + 1
