"""Assessment schemes as data and scoring as a pure function of events."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from audit.scoring import schemes_in, score
from domain.assessment import Assessment, MutualEvaluation, Scheme
from domain.errors import Conflict, InvalidCommand, NotFinal, YearNotOver
from tests.scenarios import ROOT

SCHEME = json.loads((ROOT / "standards" / "assessment-scheme-2026.1.json").read_text())


def event(
    position: int,
    aggregate: str,
    type_: str,
    data: dict,
    aggregate_id: str = "a",
    version: int = 1,
    at: str = "2026-05-01T02:00:00+00:00",
) -> dict:
    return {
        "position": position,
        "aggregate": aggregate,
        "aggregate_id": aggregate_id,
        "version": version,
        "type": type_,
        "occurred_at": at,
        "actor": None,
        "data": data,
    }


@pytest.mark.parametrize(
    "formula, message",
    [
        ("__import__('os').system('true')", "may call only min and max"),
        ("reported_on_time.real", "Attribute"),
        ("salary / 2", "'salary', which is not a fact"),
        ("reported_on_time if declines else 1", "IfExp"),
        ("'1' + 1", "not a number"),
        ("reported_on_time /", "not an arithmetic expression"),
    ],
)
def test_formulas_are_arithmetic_over_facts_only(formula: str, message: str) -> None:
    document = copy.deepcopy(SCHEME)
    document["unit_types"]["department"]["indicators"][0]["formula"] = formula
    with pytest.raises(InvalidCommand, match=message):
        Scheme.parse(document)


def test_weights_add_up_to_100_per_unit_type() -> None:
    document = copy.deepcopy(SCHEME)
    document["unit_types"]["street"]["indicators"][0]["weight"] = "30"
    with pytest.raises(InvalidCommand, match="street indicator weights must add up to 100, they add up to 95"):
        Scheme.parse(document)


@pytest.mark.parametrize("timezone", ["", "../etc", "/UTC", "Nowhere/City"])
def test_an_unknown_timezone_is_refused_by_name(timezone: str) -> None:
    with pytest.raises(InvalidCommand, match=f"timezone {timezone!r} is unknown"):
        Scheme.parse({**SCHEME, "timezone": timezone})


def history() -> list[dict]:
    """Two departments, one community; PSB answers on time and is rated well, HOUSING is late and declines."""
    return [
        event(1, "organisation", "department_added", {"code": "PSB", "name": "派出所"}, "org", 1),
        event(2, "organisation", "department_added", {"code": "HOUSING", "name": "住建局"}, "org", 2),
        event(
            3,
            "organisation",
            "unit_added",
            {"unit_id": "gushu", "kind": "street", "parent_id": None, "name": "姑孰镇", "residents": None},
            "org",
            3,
        ),
        event(
            4,
            "organisation",
            "unit_added",
            {"unit_id": "tishu", "kind": "community", "parent_id": "gushu", "name": "提署社区", "residents": 2000},
            "org",
            4,
        ),
        event(5, "assessment_scheme", "published", {"version": "2026.1", "digest": "x", "document": SCHEME}, "s"),
        event(6, "whistle", "blown", {"community_id": "tishu", "summoned_departments": ["PSB", "HOUSING"]}, "w1"),
        event(7, "whistle", "reported_in", {"department": "PSB", "late": False}, "w1", 2),
        event(8, "whistle", "reported_in", {"department": "HOUSING", "late": True}, "w1", 3),
        event(9, "whistle", "dispatched", {"lead_department": "HOUSING"}, "w1", 4),
        event(10, "whistle", "declined", {"department": "HOUSING"}, "w1", 5),
        event(11, "whistle", "dispatched", {"lead_department": "PSB"}, "w1", 6),
        event(12, "whistle", "fed_back", {"department": "PSB", "on_time": True}, "w1", 7),
        event(13, "whistle", "evaluated", {"department": "PSB", "rating": "satisfied", "status": "closed"}, "w1", 8),
        event(
            14,
            "mutual_evaluation",
            "rated",
            {"year": 2026, "ratee_type": "department", "ratee": "PSB", "score": 5},
            "e1",
        ),
        event(
            15,
            "whistle",
            "blown",
            {"community_id": "tishu", "summoned_departments": ["PSB"]},
            "w2",
            at="2025-12-31T15:59:00+00:00",
        ),  # 2025 in Asia/Shanghai: not this year's
    ]


def test_scores_from_a_small_history() -> None:
    result = score(history(), SCHEME, 2026, "department")
    assert (result["cutoff_position"], result["events"], result["scheme_version"]) == (15, 15, "2026.1")
    by_unit = {u["unit"]: u for u in result["units"]}
    psb, housing = by_unit["PSB"], by_unit["HOUSING"]
    assert (psb["total"], psb["grade"], psb["rank"]) == ("100.00", "excellent", 1)
    response = next(i for i in housing["indicators"] if i["code"] == "response_rate")
    assert (response["value"], response["score"], response["events"]) == ("0.0000", "0.00", [8])
    declines = next(i for i in housing["indicators"] if i["code"] == "declines")
    assert (declines["value"], declines["score"], declines["facts"]) == ("1.0000", "83.33", {"declines": "1"})
    rated = next(i for i in housing["indicators"] if i["code"] == "rated_by_communities")
    assert rated["value"] is None and rated["score"] is None  # not rated: the weight is left out
    assert housing["rank"] == 2


def test_communities_and_streets() -> None:
    community = {u["unit"]: u for u in score(history(), SCHEME, 2026, "community")["units"]}["tishu"]
    resolved = next(i for i in community["indicators"] if i["code"] == "whistles_resolved")
    assert (resolved["value"], resolved["events"]) == ("1.0000", [6, 13])
    street = {u["unit"]: u for u in score(history(), SCHEME, 2026, "street")["units"]}["gushu"]
    assert next(i for i in street["indicators"] if i["code"] == "whistles_resolved")["value"] == "1.0000"


def test_a_cut_off_sees_only_what_came_before_it() -> None:
    early = score(history(), SCHEME, 2026, "department", cutoff_position=9)
    assert early["cutoff_position"] == 9 and early["events"] == 9
    psb = {u["unit"]: u for u in early["units"]}["PSB"]
    assert next(i for i in psb["indicators"] if i["code"] == "satisfaction_rate")["value"] is None


def test_the_same_history_gives_the_same_result() -> None:
    assert score(history(), SCHEME, 2026, "community") == score(iter(history()), SCHEME, 2026, "community")


def test_a_scheme_must_be_in_the_history_by_the_cut_off() -> None:
    with pytest.raises(Conflict, match="not published by position 4"):
        score(history(), SCHEME, 2026, "department", cutoff_position=4)
    assert list(schemes_in(history())) == ["2026.1"]


# Finalisation: not before the year may be finalised, and a way back that the history shows ----------

SHANGHAI = ZoneInfo("Asia/Shanghai")
META = {"actor": {"role": "admin", "unit": None, "id": "root"}, "correlation_id": "t"}


def result(unit_type: str = "department", cutoff: int = 40) -> dict:
    """A computed result of two units, as AssessmentApp.compute returns it."""
    units = [
        {"unit": "PSB", "total": "91.00", "grade": "excellent", "rank": 1},
        {"unit": "HOUSING", "total": "70.00", "grade": "pass", "rank": 2},
    ]
    return {
        "unit_type": unit_type,
        "scheme_version": "2026.1",
        "cutoff_position": cutoff,
        "events": cutoff,
        "units": units,
    }


def test_a_year_opens_for_finalisation_at_its_end_in_the_schemes_timezone_unless_the_scheme_says_otherwise() -> None:
    assert Scheme.parse(SCHEME).opens_at(2026) == datetime(2027, 1, 1, tzinfo=SHANGHAI)
    early = copy.deepcopy(SCHEME) | {"finalisation_opens": "12-15"}
    assert Scheme.parse(early).opens_at(2026) == datetime(2026, 12, 15, tzinfo=SHANGHAI)
    assert Scheme.parse(copy.deepcopy(SCHEME) | {"finalisation_opens": "year_end"}).finalisation_opens is None
    for bad in ("12-32", "2-3", "13-01", "soon", 1215):
        with pytest.raises(InvalidCommand, match='finalisation_opens must be "year_end" or a date'):
            Scheme.parse(copy.deepcopy(SCHEME) | {"finalisation_opens": bad})


def test_finalising_before_the_year_ends_or_as_of_the_future_or_before_then_is_refused() -> None:
    opens = Scheme.parse(SCHEME).opens_at(2026)
    new_year = datetime(2026, 12, 31, 16, 0, tzinfo=UTC)  # 2027-01-01 00:00 in Shanghai
    assessment = Assessment(year=2026, timestamp=new_year, meta=META)
    with pytest.raises(YearNotOver, match=r"cannot be finalised before 2027-01-01 00:00:00\+08:00 \(Asia/Shanghai\)"):
        at = new_year - timedelta(seconds=1)
        assessment.finalise(result(), 40, "root", opens=opens, as_of=at, timestamp=at, meta=META)
    with pytest.raises(InvalidCommand, match="is in the future"):
        later = new_year + timedelta(days=1)
        assessment.finalise(result(), 40, "root", opens=opens, as_of=later, timestamp=new_year, meta=META)
    with pytest.raises(InvalidCommand, match="would leave out the rest of the year"):
        june = datetime(2026, 6, 1, tzinfo=UTC)
        assessment.finalise(result(), 40, "root", opens=opens, as_of=june, timestamp=new_year, meta=META)
    assert assessment.finalise(result(), 40, "root", opens=opens, as_of=new_year, timestamp=new_year, meta=META) == 2
    assert assessment.final_unit_types() == ["department"]


def test_a_finalisation_is_voided_with_a_reason_and_the_unit_type_finalised_again() -> None:
    now = datetime(2027, 1, 5, tzinfo=UTC)
    opens = Scheme.parse(SCHEME).opens_at(2026)
    assessment = Assessment(year=2026, timestamp=now, meta=META)
    with pytest.raises(NotFinal, match="nothing to void"):
        assessment.void(None, "by mistake", timestamp=now, meta=META)
    assessment.finalise(result(), 40, "r1", opens=opens, as_of=now, timestamp=now, meta=META)
    assessment.finalise(result("community"), 40, "r1", opens=opens, as_of=now, timestamp=now, meta=META)
    with pytest.raises(Conflict, match="already final; void it first"):
        assessment.finalise(result(), 40, "r1", opens=opens, as_of=now, timestamp=now, meta=META)
    with pytest.raises(NotFinal, match="street units is not final"):
        assessment.void(["street"], "by mistake", timestamp=now, meta=META)
    with pytest.raises(InvalidCommand, match="reason must not be empty"):
        assessment.void(["department"], "  ", timestamp=now, meta=META)
    assert assessment.void(["department"], "cut-off before the late evaluations", timestamp=now, meta=META) == [
        "department"
    ]
    assert sorted(assessment.finalised) == ["community:HOUSING", "community:PSB"]
    assessment.finalise(result(cutoff=50), 50, "r2", opens=opens, as_of=now, timestamp=now, meta=META)
    history = [
        (r["unit_type"], r["cutoff_position"], r["units"], r["voided"] and r["voided"]["reason"])
        for r in assessment.history
    ]
    assert history == [
        ("department", 40, 2, "cut-off before the late evaluations"),
        ("community", 40, 2, None),
        ("department", 50, 2, None),
    ]
    assert assessment.finalised["department:PSB"]["tree_size"] == 50
    assert assessment.void(None, "scheme misprinted", timestamp=now, meta=META) == ["community", "department"]
    assert assessment.finalised == {} and assessment.final_unit_types() == []


def test_a_year_that_has_not_begun_cannot_be_rated() -> None:
    december = datetime(2026, 12, 31, 15, 59, tzinfo=UTC)  # 23:59 in Shanghai
    rate = dict(
        rater_type="community", rater="tishu", ratee_type="department", ratee="PSB", rating="good", comment=None
    )
    with pytest.raises(InvalidCommand, match="year 2027 has not begun"):
        MutualEvaluation.rate(year=2027, timestamp=december, meta=META, **rate)
    MutualEvaluation.rate(year=2027, timestamp=december + timedelta(minutes=1), meta=META, **rate)


def test_residents_reports_are_facts_of_their_community_with_complaints_and_duplicates_apart() -> None:
    """The fold counts reports, answers on time, results (once per report) and the residents' own ratings."""
    from audit.scoring import Facts

    facts = Facts(2026, "Asia/Shanghai", "community")
    position = 0

    def event(report: str, kind: str, at: str, **data: object) -> None:
        nonlocal position
        position += 1
        facts.apply(
            {
                "aggregate": "report",
                "type": kind,
                "aggregate_id": report,
                "position": position,
                "occurred_at": at,
                "data": data,
            }
        )

    raised = {"community_id": "tishu", "triage_due": "2026-03-03T09:00:00+00:00"}
    for report in ("a", "b", "c", "d"):
        event(report, "raised", "2026-03-02T09:00:00+00:00", **raised)
    event("a", "accepted", "2026-03-02T10:00:00+00:00", due_at="2026-03-09T10:00:00+00:00")
    event("a", "resolved", "2026-03-03T10:00:00+00:00", result="x")
    event("a", "rated", "2026-03-03T11:00:00+00:00", rating="dissatisfied", rated_by="resident", status="accepted")
    event("a", "resolved", "2026-03-04T10:00:00+00:00", result="y")
    event("a", "rated", "2026-03-04T11:00:00+00:00", rating="satisfied", rated_by="callback", status="closed")
    event("b", "escalated", "2026-03-04T10:00:00+00:00", whistle_id="w")  # a day late
    event("c", "merged", "2026-03-02T12:00:00+00:00", into_kind="report", into_id="a")
    event("d", "closed_unreasonable", "2026-03-02T12:00:00+00:00", reason="x")
    event("d", "rated", "2026-03-02T13:00:00+00:00", rating="satisfied", rated_by="on_behalf", status="closed")
    counts = facts.counts[("community", "tishu")]
    assert {k: int(v) for k, v in counts.items() if k.startswith(("reports", "residents"))} == {
        "reports_raised": 4,
        "reports_responded_on_time": 1,
        "reports_resolved": 1,
        "residents_rated": 2,
        "residents_satisfied": 1,
        "reports_merged": 1,
        "reports_unreasonable": 1,
    }
    assert list(facts.evidence[("community", "tishu")]["reports_raised"]) == [1, 2, 3, 4]
