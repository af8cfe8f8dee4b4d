"""Monthly rankings equal a recount of the cases they are made of, month boundaries in Asia/Shanghai, unreasonable
complaints and duplicates left out; generated histories, not hand-picked ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.ranking import check_month, previous, rank
from domain.errors import InvalidCommand

COMMUNITIES = {"c1": "s1", "c2": "s1", "c3": "s2"}
DEPARTMENTS = ("D1", "D2", "D3")
# Around the turn of January into February in Shanghai (UTC+8): 2026-01-31T16:00Z is February 1st there.
TURN = datetime(2026, 1, 31, 16, tzinfo=UTC)


@dataclass
class Report:
    community: str
    offset_minutes: int  # raised at TURN + offset (negative: January in Shanghai)
    fate: str  # answered, late, unanswered, merged, unreasonable
    resolved: bool
    rating: str | None
    rated_by: str


@dataclass
class Summons:
    departments: list[str]
    offset_minutes: int
    on_time: dict[str, bool]
    lead: str | None
    fed_back: bool
    resolved: bool
    rating: str | None


reports = st.builds(
    Report,
    community=st.sampled_from(sorted(COMMUNITIES)),
    offset_minutes=st.integers(-3000, 3000),
    fate=st.sampled_from(["answered", "late", "unanswered", "merged", "unreasonable"]),
    resolved=st.booleans(),
    rating=st.sampled_from([None, "satisfied", "basically_satisfied", "dissatisfied"]),
    rated_by=st.sampled_from(["resident", "callback", "on_behalf"]),
)


@st.composite
def summonses(draw: Any) -> Summons:
    departments = draw(st.lists(st.sampled_from(DEPARTMENTS), min_size=1, max_size=3, unique=True))
    return Summons(
        departments=departments,
        offset_minutes=draw(st.integers(-3000, 3000)),
        on_time={d: draw(st.booleans()) for d in departments},
        lead=draw(st.sampled_from([None, *departments])),
        fed_back=draw(st.booleans()),
        resolved=draw(st.booleans()),
        rating=draw(st.sampled_from([None, "satisfied", "dissatisfied"])),
    )


def history(rs: list[Report], ss: list[Summons]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    def add(aggregate: str, event: str, aid: str, at: datetime, **data: Any) -> None:
        events.append(
            {
                "aggregate": aggregate,
                "type": event,
                "aggregate_id": aid,
                "position": len(events) + 1,
                "occurred_at": at.isoformat(),
                "data": data,
            }
        )

    at0 = TURN - timedelta(days=40)
    for c, street in COMMUNITIES.items():
        add("organisation", "unit_added", "org", at0, kind="community", unit_id=c, parent_id=street, name=c)
    for i, r in enumerate(rs):
        rid, raised = f"r{i}", TURN + timedelta(minutes=r.offset_minutes)
        due = raised + timedelta(hours=24)
        add("report", "raised", rid, raised, community_id=r.community, triage_due=due.isoformat())
        if r.fate in ("answered", "late"):
            answered = raised + (timedelta(hours=1) if r.fate == "answered" else timedelta(hours=30))
            add("report", "accepted", rid, answered, due_at=(answered + timedelta(days=7)).isoformat())
            if r.resolved:
                add("report", "resolved", rid, answered + timedelta(hours=2), result="x")
                if r.rating:
                    status = "accepted" if r.rating == "dissatisfied" else "closed"
                    add(
                        "report",
                        "rated",
                        rid,
                        answered + timedelta(hours=3),
                        rating=r.rating,
                        rated_by=r.rated_by,
                        status=status,
                    )
        elif r.fate == "merged":
            add("report", "merged", rid, raised + timedelta(hours=1), into_kind="report", into_id="r0")
        elif r.fate == "unreasonable":
            add("report", "closed_unreasonable", rid, raised + timedelta(hours=1), reason="x")
    for i, s in enumerate(ss):
        wid, blown = f"w{i}", TURN + timedelta(minutes=s.offset_minutes)
        add("whistle", "blown", wid, blown, summoned_departments=s.departments)
        for d in s.departments:
            add("whistle", "reported_in", wid, blown + timedelta(minutes=30), department=d, late=not s.on_time[d])
        if s.lead:
            add("whistle", "dispatched", wid, blown + timedelta(hours=1), lead_department=s.lead)
        if s.lead and s.fed_back:
            add("whistle", "fed_back", wid, blown + timedelta(days=1), department=s.lead, resolved=s.resolved)
            if s.rating:
                add("whistle", "evaluated", wid, blown + timedelta(days=2), department=s.lead, rating=s.rating)
    return events


def month_of(offset_minutes: int) -> str:
    return (TURN + timedelta(minutes=offset_minutes) + timedelta(hours=8)).strftime("%Y-%m")


def rate(part: int, whole: int) -> str | None:
    return str((Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001"), ROUND_HALF_UP)) if whole else None


def recount_communities(rs: list[Report], month: str, by_street: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, int]] = {}
    for r in rs:
        if month_of(r.offset_minutes) != month or r.fate in ("merged", "unreasonable"):
            continue
        unit = COMMUNITIES[r.community] if by_street else r.community
        t = out.setdefault(unit, {"cases": 0, "on_time": 0, "resolved": 0, "rated": 0, "satisfied": 0})
        t["cases"] += 1
        t["on_time"] += r.fate == "answered"
        done = r.fate in ("answered", "late") and r.resolved
        t["resolved"] += done
        own = done and r.rating is not None and r.rated_by != "on_behalf"
        t["rated"] += own
        t["satisfied"] += own and r.rating != "dissatisfied"
    return {
        u: {
            "response_rate": rate(t["on_time"], t["cases"]),
            "resolution_rate": rate(t["resolved"], t["cases"]),
            "satisfaction_rate": rate(t["satisfied"], t["rated"]),
        }
        for u, t in out.items()
    }


def recount_departments(ss: list[Summons], month: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, int]] = {}

    def t(d: str) -> dict[str, int]:
        return out.setdefault(d, {"cases": 0, "on_time": 0, "resolvable": 0, "resolved": 0, "rated": 0, "satisfied": 0})

    for s in ss:
        if month_of(s.offset_minutes) != month:
            continue
        for d in s.departments:
            t(d)["cases"] += 1
            t(d)["on_time"] += s.on_time[d]
        if s.lead:
            t(s.lead)["resolvable"] += 1
            t(s.lead)["resolved"] += s.fed_back and s.resolved
            t(s.lead)["rated"] += s.fed_back and s.rating is not None
            t(s.lead)["satisfied"] += s.fed_back and s.rating == "satisfied"
    return {
        d: {
            "response_rate": rate(x["on_time"], x["cases"]),
            "resolution_rate": rate(x["resolved"], x["resolvable"]),
            "satisfaction_rate": rate(x["satisfied"], x["rated"]),
        }
        for d, x in out.items()
    }


def figures(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        u["unit"]: {k: u[k] for k in ("response_rate", "resolution_rate", "satisfaction_rate")} for u in result["units"]
    }


@settings(max_examples=60, deadline=None)
@given(
    rs=st.lists(reports, max_size=40),
    ss=st.lists(summonses(), max_size=25),
    month=st.sampled_from(["2026-01", "2026-02"]),
)
def test_the_monthly_rates_equal_a_recount_of_their_cases(rs: list[Report], ss: list[Summons], month: str) -> None:
    events = history(rs, ss)
    assert figures(rank(events, month, "community")) == recount_communities(rs, month, by_street=False)
    assert figures(rank(events, month, "street")) == recount_communities(rs, month, by_street=True)
    assert figures(rank(events, month, "department")) == recount_departments(ss, month)


@settings(max_examples=40, deadline=None)
@given(rs=st.lists(reports, min_size=1, max_size=40))
def test_ranks_follow_the_composite_and_the_classes_split_by_quarter(rs: list[Report]) -> None:
    result = rank(history(rs, []), "2026-02", "community")
    ranked = [u for u in result["units"] if u["rank"] is not None]
    composites = [Decimal(u["composite"]) for u in ranked]
    assert composites == sorted(composites, reverse=True)
    assert all(u["composite"] is None and u["class"] is None for u in result["units"] if u["rank"] is None)
    classes = [u["class"] for u in ranked]
    order = ["advanced", "good", "average", "lagging"]
    assert classes == sorted(classes, key=order.index) and (not ranked or classes[0] == "advanced")
    for u in ranked:
        assert set(u["events"]) <= {"response", "resolution", "satisfaction"}


def test_a_case_counts_in_its_shanghai_month_and_changes_against_the_month_before() -> None:
    january = Report("c1", -1, "answered", True, "satisfied", "resident")  # 23:59 on January 31st in Shanghai
    february = Report("c1", 1, "late", True, "dissatisfied", "callback")  # 00:01 on February 1st
    events = history([january, february], [])
    (jan,) = rank(events, "2026-01", "community")["units"]
    (feb,) = rank(events, "2026-02", "community")["units"]
    assert (jan["response_rate"], feb["response_rate"]) == ("1.0000", "0.0000")
    assert jan["composite"] == "100.00" and feb["composite"] == "45.00"
    assert feb["previous_composite"] == "100.00" and feb["change"] == "-55.00"
    assert jan["events"] == {"response": [4, 5], "resolution": [6], "satisfaction": [7]}
    assert feb["events"] == {"response": [8], "resolution": [10], "satisfaction": [11]}


def test_months_are_checked() -> None:
    assert previous("2026-01") == "2025-12" and previous("2026-03") == "2026-02"
    with pytest.raises(InvalidCommand, match="YYYY-MM"):
        check_month("2026-13")
    with pytest.raises(InvalidCommand, match="unit_type"):
        rank([], "2026-01", "grid")
