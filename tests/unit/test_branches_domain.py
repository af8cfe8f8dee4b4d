"""The branch standard as data, computed criteria from the log, grades at their edges."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from domain.branches import Branch, BranchStandard, Standard, assess, previous_periods
from domain.errors import Conflict, DuplicateEntry, InvalidCommand
from tests.scenarios import AUDITOR_FULL, DOCUMENT, STANDARD, full_year_log

META = {"actor": {"role": "inspector", "unit": None, "id": "zhou"}, "correlation_id": "c"}


def test_the_repository_standard_parses_with_nine_aspects_and_weights_adding_to_100() -> None:
    assert STANDARD.version == "2026.1" and len(STANDARD.aspects) == 9
    assert sum(a.weight for a in STANDARD.aspects) == 100
    assert [g[0] for g in STANDARD.grades] == ["red_flag", "exemplary", "standard"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["aspects"][0].update(weight="11"), "add up to 100, they add up to 101"),
        (lambda d: d["cadence"].update(tea_party={"name": "x", "period": "month", "at_least": 1}), "tea_party"),
        (lambda d: d["aspects"][1]["criteria"].append(dict(d["aspects"][0]["criteria"][0])), "appears twice"),
        (lambda d: d["aspects"][2]["criteria"][0].update(rule={"kind": "vibes"}), "needs a rule"),
        (lambda d: d["grades"].reverse(), "highest first"),
        (lambda d: d.pop("aspects"), "aspects"),
    ],
)
def test_a_malformed_standard_is_refused_with_a_reason(change, message: str) -> None:
    document = copy.deepcopy(DOCUMENT)
    change(document)
    with pytest.raises(InvalidCommand, match=message):
        Standard.parse(document)


def test_windows_are_whole_periods_before_the_audit_and_after_establishment() -> None:
    assert previous_periods(date(2026, 3, 2), "month", 3, date(2020, 1, 1)) == ["2025-12", "2026-01", "2026-02"]
    assert previous_periods(date(2026, 3, 2), "quarter", 4, date(2020, 1, 1)) == [
        "2025-Q1",
        "2025-Q2",
        "2025-Q3",
        "2025-Q4",
    ]
    assert previous_periods(date(2026, 3, 2), "month", 12, date(2025, 11, 15)) == [
        "2025-11",
        "2025-12",
        "2026-01",
        "2026-02",
    ]


def test_a_full_log_earns_every_computed_point() -> None:
    meetings, dues = full_year_log()
    total, grade, _ = assess(STANDARD, AUDITOR_FULL, meetings, dues, date(2026, 3, 2), date(2024, 1, 1))
    assert (total, grade) == (Decimal("100.00"), "red_flag")


def test_a_missed_month_fails_committee_cadence() -> None:
    meetings, dues = full_year_log(skip={("committee_meeting", "2025-07")})
    total, grade, aspects = assess(STANDARD, AUDITOR_FULL, meetings, dues, date(2026, 3, 2), date(2024, 1, 1))
    life = next(a for a in aspects if a["code"] == "organisational_life")
    committee = next(c for c in life["criteria"] if c["code"] == "committee_meeting_cadence")
    assert committee == {
        "code": "committee_meeting_cadence",
        "source": "computed",
        "max": "5",
        "score": "0",
        "missed": ["2025-07"],
    }
    assert life["score"] == "20.00" and total == Decimal("95.00") and grade == "red_flag"


def test_late_dues_fail_dues_on_time() -> None:
    meetings, dues = full_year_log()
    dues["2025-10"] = "2025-11-03"
    total, _, aspects = assess(STANDARD, AUDITOR_FULL, meetings, dues, date(2026, 3, 2), date(2024, 1, 1))
    members = next(a for a in aspects if a["code"] == "member_management")
    assert members["criteria"][0]["missed"] == ["2025-10"] and members["score"] == "5.00"
    assert total == Decimal("90.00")


def single_criterion_standard(thresholds: tuple[str, str, str]) -> Standard:
    document = copy.deepcopy(DOCUMENT)
    document["aspects"] = [
        {
            "code": "all",
            "name": "all",
            "weight": "100",
            "criteria": [{"code": "overall", "name": "overall", "max": "100", "source": "auditor"}],
        }
    ]
    for grade, at_least in zip(document["grades"], thresholds, strict=True):
        grade["at_least"] = at_least
    return Standard.parse(document)


@pytest.mark.parametrize(
    "score, grade",
    [
        ("100", "red_flag"),
        ("90", "red_flag"),
        ("89.99", "exemplary"),
        ("80", "exemplary"),
        ("79.99", "standard"),
        ("60", "standard"),
        ("59.99", "below_standard"),
        ("0", "below_standard"),
    ],
)
def test_grade_thresholds_at_their_edges(score: str, grade: str) -> None:
    standard = single_criterion_standard(("90", "80", "60"))
    total, got, _ = assess(standard, {"overall": score}, [], {}, date(2026, 3, 2), date(2026, 3, 1))
    assert (total, got) == (Decimal(score).quantize(Decimal("0.01")), grade)


def test_scores_are_checked_against_the_standard() -> None:
    with pytest.raises(InvalidCommand, match=r"missing: .*setup_compliant"):
        assess(
            STANDARD,
            {k: v for k, v in AUDITOR_FULL.items() if k != "setup_compliant"},
            [],
            {},
            date(2026, 3, 2),
            date(2024, 1, 1),
        )
    with pytest.raises(InvalidCommand, match="computed from the log"):
        assess(STANDARD, {**AUDITOR_FULL, "dues_on_time": 10}, [], {}, date(2026, 3, 2), date(2024, 1, 1))
    with pytest.raises(InvalidCommand, match="its maximum is 10"):
        assess(STANDARD, {**AUDITOR_FULL, "setup_compliant": 11}, [], {}, date(2026, 3, 2), date(2024, 1, 1))


def test_a_version_is_published_once() -> None:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    published = BranchStandard(timestamp=now, meta=META)
    assert published.publish(DOCUMENT, timestamp=now, meta=META) == "2026.1"
    with pytest.raises(DuplicateEntry):
        published.publish(DOCUMENT, timestamp=now, meta=META)
    changed = copy.deepcopy(DOCUMENT)
    changed["rectification_days"] = 60
    with pytest.raises(Conflict, match="new version"):
        published.publish(changed, timestamp=now, meta=META)


def test_meetings_and_dues_are_checked() -> None:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    branch = Branch.register(
        name="提署社区第一党支部",
        parent_kind="community",
        parent_id="tishu",
        community_id="tishu",
        members=23,
        established_on="2025-01-01",
        escalation_chain=["gushu", "dangtu"],
        today=date(2026, 3, 2),
        timestamp=now,
        meta=META,
    )
    today = date(2026, 3, 2)
    with pytest.raises(InvalidCommand, match="established_on 2026-03-03 is in the future"):
        Branch.register(
            name="将来党支部",
            parent_kind="community",
            parent_id="tishu",
            community_id="tishu",
            members=5,
            established_on="2026-03-03",
            escalation_chain=["gushu", "dangtu"],
            today=today,
            timestamp=now,
            meta=META,
        )
    with pytest.raises(InvalidCommand, match="future"):
        branch.hold_meeting("m", "committee_meeting", "2026-03-03", 5, "t", today, timestamp=now, meta=META)
    with pytest.raises(InvalidCommand, match="between 1 and the 23 members"):
        branch.hold_meeting("m", "committee_meeting", "2026-03-01", 24, "t", today, timestamp=now, meta=META)
    with pytest.raises(InvalidCommand, match="unknown"):
        branch.hold_meeting("m", "tea", "2026-03-01", 5, "t", today, timestamp=now, meta=META)
    branch.collect_dues("2026-02", "460.00", 23, "2026-02-20", today, timestamp=now, meta=META)
    with pytest.raises(DuplicateEntry):
        branch.collect_dues("2026-02", "460.00", 23, "2026-02-21", today, timestamp=now, meta=META)
    with pytest.raises(InvalidCommand, match="period"):
        branch.collect_dues("2026-13", "1", 1, "2026-02-21", today, timestamp=now, meta=META)
