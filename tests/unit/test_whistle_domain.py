"""The whistle's rules, on the aggregate alone."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from domain.errors import (
    AdmissionListViolation,
    AlreadyReportedIn,
    InvalidCommand,
    NotHandler,
    NotSummoned,
    StepOutOfOrder,
)
from domain.organisation import resolve_deadlines
from domain.whistle import Status, Whistle
from tests.scenarios import WHISTLE_META as META
from tests.scenarios import WHISTLE_T0 as T0

DRAINAGE = {
    "code": "drainage",
    "duty": "department",
    "departments": ["HOUSING"],
    "deadlines": resolve_deadlines("utilities"),
}
NEIGHBOURS = {"code": "neighbourhood", "duty": "community", "departments": [], "deadlines": resolve_deadlines("normal")}


def blow(category: dict = DRAINAGE, urgency: str = "normal", summoned: list[str] | None = None) -> Whistle:
    return Whistle.blow(
        community_id="tishu",
        escalation_chain=["gushu", "dangtu", "maanshan"],
        category=category,
        title="Blocked drain",
        description="Sewage in the courtyard",
        urgency=urgency,
        summoned_departments=["HOUSING", "PSB"] if summoned is None else summoned,
        grid_id=None,
        location="Building 3",
        source="resident",
        timestamp=T0,
        meta=META,
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def names(w: Whistle) -> list[str]:
    return [type(e).__name__ for e in w.collect_events()]


def test_the_six_steps_in_order() -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(10), meta=META)
    w.dispatch("HOUSING", ["PSB"], None, None, timestamp=at(20), meta=META)
    w.record_progress("PSB", "patrol posted", timestamp=at(30), meta=META)
    w.complete("HOUSING", "drain cleared", timestamp=at(60), meta=META)
    w.feed_back("HOUSING", "cleared and disinfected", True, timestamp=at(70), meta=META)
    w.evaluate("satisfied", "quick", timestamp=at(80), meta=META)
    assert w.status is Status.CLOSED
    assert names(w) == [
        "Blown",
        "ReportedIn",
        "Dispatched",
        "ProgressRecorded",
        "Completed",
        "FedBack",
        "Evaluated",
    ]


def test_default_summons_come_from_the_category_and_deadlines_from_urgency() -> None:
    w = blow(summoned=[], urgency="urgent")
    assert list(w.summoned) == ["HOUSING"]
    assert w.report_in_due == at(30)
    assert w.feedback_hours == 2


def test_a_whistle_with_no_department_to_summon_is_refused() -> None:
    with pytest.raises(InvalidCommand, match="summon at least one department"):
        blow(category=NEIGHBOURS, summoned=[])


def test_dispatch_before_any_report_in_names_the_state_and_the_allowed_steps() -> None:
    w = blow()
    with pytest.raises(StepOutOfOrder) as caught:
        w.dispatch("HOUSING", [], None, None, timestamp=at(5), meta=META)
    assert "'blown'" in caught.value.message and "report_in" in caught.value.message
    assert caught.value.allowed == ["report_in"]


def test_only_summoned_departments_report_in_and_only_once() -> None:
    w = blow()
    with pytest.raises(NotSummoned):
        w.report_in("EDU", timestamp=at(1), meta=META)
    w.report_in("PSB", timestamp=at(1), meta=META)
    with pytest.raises(AlreadyReportedIn):
        w.report_in("PSB", timestamp=at(2), meta=META)


def test_late_report_in_is_recorded_as_late() -> None:
    w = blow()
    w.collect_events()
    w.report_in("HOUSING", timestamp=at(121), meta=META)
    (event,) = w.collect_events()
    assert event.late is True and event.minutes == 121


def test_admission_list_refuses_an_unfunded_department_duty_for_the_community() -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(1), meta=META)
    with pytest.raises(AdmissionListViolation, match="unless funding comes with it"):
        w.dispatch("tishu", [], None, None, timestamp=at(2), meta=META)
    with pytest.raises(AdmissionListViolation):
        w.dispatch("HOUSING", ["tishu"], None, None, timestamp=at(2), meta=META)
    w.dispatch("tishu", [], None, {"amount_yuan": "5000", "from_department": "HOUSING"}, timestamp=at(3), meta=META)
    assert w.lead == "tishu" and w.funding == {"amount_yuan": "5000", "from_department": "HOUSING", "note": None}


def test_a_community_duty_needs_no_funding() -> None:
    w = blow(category=NEIGHBOURS, summoned=["PSB"])
    w.report_in("PSB", timestamp=at(1), meta=META)
    w.dispatch("tishu", [], None, None, timestamp=at(2), meta=META)
    assert w.status is Status.DISPATCHED


@pytest.mark.parametrize(
    "funding, message",
    [
        ({"amount_yuan": "0", "from_department": "HOUSING"}, "above zero"),
        ({"amount_yuan": "lots", "from_department": "HOUSING"}, "number of yuan"),
        ({"amount_yuan": "10"}, "from_department"),
    ],
)
def test_funding_must_be_real_money_from_a_department(funding: dict, message: str) -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(1), meta=META)
    with pytest.raises(InvalidCommand, match=message):
        w.dispatch("tishu", [], None, funding, timestamp=at(2), meta=META)


def test_decline_by_the_lead_returns_the_case_for_redispatch_and_is_counted() -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(1), meta=META)
    w.dispatch("PSB", ["HOUSING"], None, None, timestamp=at(2), meta=META)
    with pytest.raises(NotHandler):
        w.decline("EDU", "not ours", timestamp=at(3), meta=META)
    w.decline("HOUSING", "drains belong to the water company", timestamp=at(3), meta=META)
    assert w.status is Status.DISPATCHED and w.co_departments == []
    w.decline("PSB", "not a security matter", timestamp=at(4), meta=META)
    assert w.status is Status.DECLINED and w.lead is None and w.declines == 2
    w.dispatch("HOUSING", [], None, None, timestamp=at(5), meta=META)
    assert w.dispatch_round == 2


def test_only_the_lead_completes_and_feeds_back() -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(1), meta=META)
    w.dispatch("HOUSING", ["PSB"], None, None, timestamp=at(2), meta=META)
    with pytest.raises(NotHandler, match="only the lead"):
        w.complete("PSB", "done", timestamp=at(3), meta=META)
    w.complete("HOUSING", "done", timestamp=at(3), meta=META)
    with pytest.raises(NotHandler):
        w.feed_back("PSB", "done", True, timestamp=at(4), meta=META)


def test_feedback_after_the_due_time_is_late() -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(1), meta=META)
    w.dispatch("HOUSING", [], at(60), None, timestamp=at(2), meta=META)
    w.complete("HOUSING", "done", timestamp=at(50), meta=META)
    w.collect_events()
    w.feed_back("HOUSING", "fixed", True, timestamp=at(61), meta=META)
    (event,) = w.collect_events()
    assert event.on_time is False and event.minutes == 59


def test_due_at_must_be_in_the_future_and_carry_a_timezone() -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(1), meta=META)
    with pytest.raises(InvalidCommand, match="later than now"):
        w.dispatch("HOUSING", [], at(1), None, timestamp=at(2), meta=META)
    with pytest.raises(InvalidCommand, match="timezone"):
        w.dispatch("HOUSING", [], datetime(2026, 3, 9, 8), None, timestamp=at(2), meta=META)


def _to_fed_back(w: Whistle, t: float) -> None:
    w.dispatch("HOUSING", [], None, None, timestamp=at(t), meta=META)
    w.complete("HOUSING", "done", timestamp=at(t + 1), meta=META)
    w.feed_back("HOUSING", "done", True, timestamp=at(t + 2), meta=META)


def test_dissatisfied_reopens_and_repeated_reopening_escalates() -> None:
    w = blow()
    w.report_in("HOUSING", timestamp=at(1), meta=META)
    _to_fed_back(w, 2)
    w.evaluate("dissatisfied", "still smells", timestamp=at(5), meta=META)
    assert w.status is Status.REOPENED and w.reopens == 1 and w.escalation_level == 0
    _to_fed_back(w, 10)
    w.collect_events()
    w.evaluate("dissatisfied", "again", timestamp=at(15), meta=META)
    events = w.collect_events()
    assert [type(e).__name__ for e in events] == ["Evaluated", "Escalated"]
    assert events[1].reason == "reopened_repeatedly" and events[1].to_unit == "gushu"
    assert events[1].departments == ["HOUSING", "PSB"]


def test_missed_deadlines_are_recorded_once_and_escalate_one_level_each() -> None:
    w = blow()
    w.collect_events()
    assert w.check_deadlines(timestamp=at(119), meta=META) == 0
    assert w.check_deadlines(timestamp=at(121), meta=META) == 1
    missed, escalated = w.collect_events()
    assert missed.step == "report_in" and missed.departments == ["HOUSING", "PSB"]
    assert (escalated.from_level, escalated.to_level, escalated.to_unit) == ("community", "street", "gushu")
    assert w.check_deadlines(timestamp=at(500), meta=META) == 0
    w.report_in("HOUSING", timestamp=at(501), meta=META)
    w.dispatch("HOUSING", [], None, None, timestamp=at(502), meta=META)
    assert w.check_deadlines(timestamp=at(502 + 24 * 60 + 1), meta=META) == 1
    events = w.collect_events()
    assert events[-1].to_unit == "dangtu" and events[-1].level == 2


def test_escalation_stops_at_the_top_of_the_chain() -> None:
    w = Whistle.blow(
        community_id="tishu",
        escalation_chain=["gushu"],
        category=DRAINAGE,
        title="t",
        description="d",
        urgency="normal",
        summoned_departments=["HOUSING"],
        grid_id=None,
        location=None,
        source="community",
        timestamp=T0,
        meta=META,
    )
    w.check_deadlines(timestamp=at(1000), meta=META)
    w.report_in("HOUSING", timestamp=at(1001), meta=META)
    w.dispatch("HOUSING", [], None, None, timestamp=at(1002), meta=META)
    w.check_deadlines(timestamp=at(5000), meta=META)
    assert w.escalation_level == 1


@pytest.mark.parametrize(
    "field, value, message",
    [("urgency", "asap", "urgency"), ("source", "rumour", "source"), ("title", "  ", "title must not be empty")],
)
def test_bad_input_says_what_to_fix(field: str, value: str, message: str) -> None:
    kwargs = dict(
        community_id="tishu",
        escalation_chain=[],
        category=DRAINAGE,
        title="t",
        description="d",
        urgency="normal",
        summoned_departments=["HOUSING"],
        grid_id=None,
        location=None,
        source="community",
        timestamp=T0,
        meta=META,
    )
    kwargs[field] = value
    with pytest.raises(InvalidCommand, match=message):
        Whistle.blow(**kwargs)
