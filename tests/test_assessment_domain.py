"""Assessment schemes as data and scoring as a pure function of events."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from domain.assessment import Scheme, schemes_in, score
from domain.errors import Conflict, InvalidCommand

SCHEME = json.loads((Path(__file__).parent.parent / "standards" / "assessment-scheme-2026.1.json").read_text())


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
