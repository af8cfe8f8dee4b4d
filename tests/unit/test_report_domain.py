"""A resident's report in memory: its codes, its guards and its states, with no store and no clock but the one given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain.errors import Conflict, InvalidCommand
from domain.report import HANDLING_DAYS, TRIAGE_HOURS, Report, check_coordinates, check_media, normalise_code, report_id

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
META = {"actor": {"role": "community", "unit": "tishu", "id": "wang"}}


def raised(**overrides: object) -> Report:
    fields: dict = {
        "code": "R7KQ-42MX-9PTW",
        "channel": "e_station",
        "category": "drainage",
        "description": "Sewage at building 3",
        "community_id": "tishu",
        "grid_id": None,
        "address": "提署路 3 号",
        "coordinates": None,
        "media": [],
        "attributes": {},
        "reporter": None,
        "timestamp": T0,
        "meta": META,
    }
    fields.update(overrides)
    return Report.raise_(**fields)


def test_a_code_is_read_as_a_resident_types_it_and_opens_one_report() -> None:
    assert normalise_code(" r7kq 42mx 9ptw ") == "R7KQ-42MX-9PTW"
    assert report_id("r7kq42mx9ptw") == report_id("R7KQ-42MX-9PTW") == raised().id
    for bad in ("R7KQ-42MX-9PT", "R7KQ-42MX-9PTO", "R7KQ-42MX-9PT1", ""):
        with pytest.raises(InvalidCommand, match="12 letters and digits"):
            normalise_code(bad)


def test_where_and_what_are_checked() -> None:
    assert check_coordinates(None, None) is None
    assert check_coordinates(31.5, 118.4) == (31.5, 118.4)
    for lat, long in ((91, 0), (0, 181), (float("nan"), 0), (None, 1.0)):
        with pytest.raises(InvalidCommand):
            check_coordinates(lat, long)
    with pytest.raises(InvalidCommand, match="say where"):
        raised(address=None)
    with pytest.raises(InvalidCommand, match="at most 9"):
        check_media([{"url": "https://x.org/a.jpg"}] * 10)
    with pytest.raises(InvalidCommand, match="sha256"):
        check_media([{"sha256": "abc"}])
    with pytest.raises(InvalidCommand, match="channel"):
        raised(channel="fax")


def test_triage_then_rating_with_reopen() -> None:
    report = raised()
    assert report.due_at == T0 + timedelta(hours=TRIAGE_HOURS)
    with pytest.raises(Conflict, match="must be resolved"):
        report.rate("satisfied", None, "resident", timestamp=T0, meta=META)
    report.accept(None, timestamp=T0, meta=META)
    assert report.due_at == T0 + timedelta(days=HANDLING_DAYS)
    report.resolve("cleared", timestamp=T0, meta=META)
    report.rate("dissatisfied", None, "resident", timestamp=T0, meta=META)
    assert report.status == "accepted" and report.due_at == T0 + timedelta(days=HANDLING_DAYS)
    report.resolve("relaid", timestamp=T0, meta=META)
    report.rate("basically_satisfied", None, "callback", timestamp=T0, meta=META)
    assert report.status == "closed" and report.ratings == 2
    with pytest.raises(Conflict):
        report.merge("report", str(uuid4()), timestamp=T0, meta=META)


def test_an_escalated_report_follows_its_whistle() -> None:
    report = raised()
    whistle = uuid4()
    report.escalate(whistle, timestamp=T0, meta=META)
    assert report.status == "escalated" and report.whistle_id == str(whistle) and report.due_at is None
    with pytest.raises(Conflict):
        report.resolve("x", timestamp=T0, meta=META)
    report.whistle_fed_back("relaid", timestamp=T0, meta=META)
    report.rate("dissatisfied", None, "resident", timestamp=T0, meta=META)
    assert report.status == "escalated"  # the whistle reopens; the report follows it again
    report.whistle_closed(timestamp=T0, meta=META)
    assert report.status == "closed"


def test_a_missed_deadline_is_recorded_once_per_deadline() -> None:
    report = raised()
    assert not report.check_deadline(timestamp=T0 + timedelta(hours=TRIAGE_HOURS), meta=META)
    assert report.check_deadline(timestamp=T0 + timedelta(hours=TRIAGE_HOURS, minutes=1), meta=META)
    assert not report.check_deadline(timestamp=T0 + timedelta(hours=30), meta=META)
    report.accept(None, timestamp=T0 + timedelta(hours=30), meta=META)
    assert report.check_deadline(timestamp=T0 + timedelta(days=9), meta=META)
    report.close_unreasonable("not public", timestamp=T0 + timedelta(days=9), meta=META)
    assert not report.check_deadline(timestamp=T0 + timedelta(days=30), meta=META)
