"""The six-step whistle (吹哨、应哨、派单、办理、反馈、评价) and its deadlines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.common import Meta, check_text
from domain.errors import (
    AdmissionListViolation,
    AlreadyReportedIn,
    InvalidCommand,
    NotHandler,
    NotSummoned,
    StepOutOfOrder,
)
from domain.organisation import Duty
from domain.privacy import Sealed

REOPENS_BEFORE_ESCALATION = 2
"""A whistle reopened this many times (dissatisfied evaluations) escalates one level."""

ESCALATION_LEVELS = ("community", "street", "district", "city")


class Status(StrEnum):
    """Where a whistle stands in the six steps."""

    BLOWN = "blown"  # 吹哨: departments summoned, none reported in yet
    ANSWERED = "answered"  # 应哨: at least one summoned department reported in (部门报到)
    DISPATCHED = "dispatched"  # 派单: a work order went to a lead department
    DECLINED = "declined"  # the lead said "not our duty"; waiting for re-dispatch
    IN_PROGRESS = "in_progress"  # 办理: progress recorded
    COMPLETED = "completed"  # 办理: handling completed
    FED_BACK = "fed_back"  # 反馈: result reported back
    CLOSED = "closed"  # 评价: satisfied or basically satisfied
    REOPENED = "reopened"  # 评价: dissatisfied; waiting for re-dispatch


class Step(StrEnum):
    """Commands on a whistle after it is blown."""

    REPORT_IN = "report_in"  # 应哨
    DISPATCH = "dispatch"  # 派单
    DECLINE = "decline"
    PROGRESS = "progress"  # 办理
    COMPLETE = "complete"  # 办理
    FEEDBACK = "feedback"  # 反馈
    EVALUATE = "evaluate"  # 评价


class Urgency(StrEnum):
    """How fast departments must answer."""

    NORMAL = "normal"
    URGENT = "urgent"


class Rating(StrEnum):
    """A resident's or community's evaluation."""

    SATISFIED = "satisfied"  # 满意
    BASICALLY_SATISFIED = "basically_satisfied"  # 基本满意
    DISSATISFIED = "dissatisfied"  # 不满意


class Source(StrEnum):
    """Where a case came from."""

    RESIDENT = "resident"  # 居民 via the e-station (民情e站)
    GRID_PATROL = "grid_patrol"  # 网格员巡查
    COMMUNITY = "community"  # 社区


@dataclass(frozen=True)
class Reporter:
    """The resident who raised the case, their contact details sealed under their own key."""

    person_id: UUID
    name: Sealed | None = None
    phone: Sealed | None = None
    address: Sealed | None = None

    def __post_init__(self) -> None:
        if self.name is None and self.phone is None and self.address is None:
            raise InvalidCommand("a reporter needs at least one of name, phone or address; or leave reporter out")

    def as_event(self) -> dict[str, Any]:
        return {"person_id": self.person_id, "name": self.name, "phone": self.phone, "address": self.address}


STEPS_BY_STATUS: dict[Status, frozenset[Step]] = {
    Status.BLOWN: frozenset({Step.REPORT_IN}),
    Status.ANSWERED: frozenset({Step.REPORT_IN, Step.DISPATCH}),
    Status.DISPATCHED: frozenset({Step.REPORT_IN, Step.DECLINE, Step.PROGRESS, Step.COMPLETE}),
    Status.DECLINED: frozenset({Step.REPORT_IN, Step.DISPATCH}),
    Status.IN_PROGRESS: frozenset({Step.REPORT_IN, Step.PROGRESS, Step.COMPLETE}),
    Status.COMPLETED: frozenset({Step.REPORT_IN, Step.FEEDBACK}),
    Status.FED_BACK: frozenset({Step.REPORT_IN, Step.EVALUATE}),
    Status.REOPENED: frozenset({Step.REPORT_IN, Step.DISPATCH}),
    Status.CLOSED: frozenset(),
}

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.BLOWN: frozenset({Status.ANSWERED}),
    Status.ANSWERED: frozenset({Status.DISPATCHED}),
    Status.DISPATCHED: frozenset({Status.DECLINED, Status.IN_PROGRESS, Status.COMPLETED}),
    Status.DECLINED: frozenset({Status.DISPATCHED}),
    Status.IN_PROGRESS: frozenset({Status.COMPLETED}),
    Status.COMPLETED: frozenset({Status.FED_BACK}),
    Status.FED_BACK: frozenset({Status.CLOSED, Status.REOPENED}),
    Status.REOPENED: frozenset({Status.DISPATCHED}),
    Status.CLOSED: frozenset(),
}
"""Every status change a whistle may make; staying in the same status is always allowed."""


def _minutes(later: datetime, earlier: datetime) -> int:
    return int((later - earlier).total_seconds() // 60)


def check_funding(funding: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return funding normalised as {amount_yuan, from_department, note}, or raise InvalidCommand."""
    if funding is None:
        return None
    try:
        amount = Decimal(str(funding.get("amount_yuan")))
    except (InvalidOperation, ValueError):
        raise InvalidCommand("funding.amount_yuan must be a number of yuan") from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidCommand("funding.amount_yuan must be above zero")
    source = funding.get("from_department")
    if not isinstance(source, str) or not source:
        raise InvalidCommand("funding.from_department must name the department that pays")
    note = funding.get("note")
    return {"amount_yuan": str(amount), "from_department": source, "note": note}


class Whistle(Aggregate):
    """A case a community cannot solve alone, taken through the six steps."""

    @classmethod
    def blow(
        cls,
        *,
        community_id: str,
        escalation_chain: list[str],
        category: dict[str, Any],
        title: str,
        description: str,
        urgency: str,
        summoned_departments: list[str],
        grid_id: str | None,
        location: str | None,
        source: str,
        timestamp: datetime,
        meta: Meta,
        reporter: Reporter | None = None,
    ) -> Whistle:
        """Blow the whistle (吹哨): raise a case and summon the departments that must report in."""
        try:
            urgency_value = Urgency(urgency)
        except ValueError:
            raise InvalidCommand(f"urgency {urgency!r} is unknown; use 'normal' or 'urgent'") from None
        try:
            source_value = Source(source)
        except ValueError:
            allowed = ", ".join(s.value for s in Source)
            raise InvalidCommand(f"source {source!r} is unknown; use one of: {allowed}") from None
        summoned = list(summoned_departments) or list(category["departments"])
        if not summoned:
            raise InvalidCommand(
                f"summon at least one department: category {category['code']!r} names none to default to"
            )
        if len(set(summoned)) != len(summoned):
            raise InvalidCommand("summoned_departments lists a department more than once")
        deadlines = category["deadlines"][urgency_value.value]
        return cls(
            community_id=community_id,
            escalation_chain=list(escalation_chain),
            category=category["code"],
            duty=category["duty"],
            title=check_text("title", title, 200),
            description=check_text("description", description, 5000),
            urgency=urgency_value.value,
            summoned_departments=summoned,
            grid_id=grid_id,
            location=(location or "").strip() or None,
            source=source_value.value,
            report_in_due=timestamp + timedelta(minutes=deadlines["report_in_minutes"]),
            feedback_hours=deadlines["feedback_hours"],
            status=Status.BLOWN.value,
            reporter=reporter.as_event() if reporter is not None else None,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Blown")
    def __init__(
        self,
        community_id: str,
        escalation_chain: list[str],
        category: str,
        duty: str,
        title: str,
        description: str,
        urgency: str,
        summoned_departments: list[str],
        grid_id: str | None,
        location: str | None,
        source: str,
        report_in_due: datetime,
        feedback_hours: int,
        status: str,
        reporter: dict[str, Any] | None = None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.community_id = community_id
        self.reporter_id: UUID | None = reporter["person_id"] if reporter else None
        self.escalation_chain = escalation_chain
        self.category = category
        self.duty = duty
        self.title = title
        self.urgency = urgency
        self.summoned: dict[str, datetime | None] = dict.fromkeys(summoned_departments)
        self.blown_at = timestamp
        self.report_in_due = report_in_due
        self.feedback_hours = feedback_hours
        self.status = Status(status)
        self.escalation_level = 0
        self.lead: str | None = None
        self.co_departments: list[str] = []
        self.dispatch_round = 0
        self.dispatched_at: datetime | None = None
        self.feedback_due: datetime | None = None
        self.funding: dict[str, Any] | None = None
        self.declines = 0
        self.reopens = 0
        self.missed: set[str] = set()

    # Queries ---------------------------------------------------------------

    @property
    def pending_departments(self) -> list[str]:
        """Summoned departments that have not reported in yet."""
        return [d for d, at in self.summoned.items() if at is None]

    def allowed_steps(self) -> list[str]:
        """Steps the whistle's current status allows."""
        steps = set(STEPS_BY_STATUS[self.status])
        if not self.pending_departments:
            steps.discard(Step.REPORT_IN)
        return sorted(s.value for s in steps)

    def handlers(self) -> list[str]:
        """The lead and co-handlers of the current work order."""
        return [self.lead, *self.co_departments] if self.lead else list(self.co_departments)

    def check_step(self, step: Step) -> None:
        if step.value not in self.allowed_steps():
            raise StepOutOfOrder(step.value, self.status.value, self.allowed_steps())

    # 应哨 report in ----------------------------------------------------------

    def report_in(self, department: str, *, timestamp: datetime, meta: Meta) -> None:
        """A summoned department reports in (部门报到)."""
        if department not in self.summoned:
            raise NotSummoned(f"department {department!r} is not summoned to this whistle")
        if self.summoned[department] is not None:
            raise AlreadyReportedIn(f"department {department!r} already reported in")
        self.check_step(Step.REPORT_IN)
        status = Status.ANSWERED if self.status is Status.BLOWN else self.status
        self._reported_in(
            department=department,
            late=timestamp > self.report_in_due,
            minutes=_minutes(timestamp, self.blown_at),
            status=status.value,
            timestamp=timestamp,
            meta=meta,
        )

    @event("ReportedIn")
    def _reported_in(
        self, department: str, late: bool, minutes: int, status: str, *, timestamp: datetime, meta: Meta
    ) -> None:
        self.summoned[department] = timestamp
        self.status = Status(status)

    # 派单 dispatch -----------------------------------------------------------

    def dispatch(
        self,
        lead_department: str,
        co_departments: list[str],
        due_at: datetime | None,
        funding: dict[str, Any] | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Dispatch a work order to a lead department and co-handlers, with a due time."""
        self.check_step(Step.DISPATCH)
        if lead_department in co_departments:
            raise InvalidCommand("the lead department cannot also be a co-handler")
        if len(set(co_departments)) != len(co_departments):
            raise InvalidCommand("co_departments lists a department more than once")
        funding = check_funding(funding)
        self.check_admission_list([lead_department, *co_departments], funding)
        if due_at is not None and due_at.tzinfo is None:
            raise InvalidCommand("due_at needs a timezone, e.g. 2026-11-30T18:00:00+08:00")
        due = due_at.astimezone(UTC) if due_at else timestamp + timedelta(hours=self.feedback_hours)
        if due <= timestamp:
            raise InvalidCommand("due_at must be later than now")
        self._dispatched(
            lead_department=lead_department,
            co_departments=list(co_departments),
            due_at=due,
            funding=funding,
            round=self.dispatch_round + 1,
            status=Status.DISPATCHED.value,
            timestamp=timestamp,
            meta=meta,
        )

    def check_admission_list(self, handlers: list[str], funding: dict[str, Any] | None) -> None:
        """A department-duty matter goes to a community only with funds (权随责走、费随事走)."""
        if self.duty == Duty.DEPARTMENT and self.community_id in handlers and funding is None:
            raise AdmissionListViolation(
                f"category {self.category!r} is a department duty on the admission list: it cannot be "
                f"dispatched to community {self.community_id!r} unless funding comes with it; add "
                "funding {amount_yuan, from_department} or dispatch it to a department"
            )

    @event("Dispatched")
    def _dispatched(
        self,
        lead_department: str,
        co_departments: list[str],
        due_at: datetime,
        funding: dict[str, Any] | None,
        round: int,
        status: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.lead = lead_department
        self.co_departments = co_departments
        self.feedback_due = due_at
        self.funding = funding
        self.dispatch_round = round
        self.dispatched_at = timestamp
        self.status = Status(status)

    # Decline ---------------------------------------------------------------

    def decline(self, department: str, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        """A dispatched department says "not our duty" (counted: buck-passing, 推诿)."""
        self.check_involved(department)
        self.check_step(Step.DECLINE)
        if department not in self.handlers():
            raise NotHandler(f"{department!r} has no work order on this whistle to decline")
        role = "lead" if department == self.lead else "co"
        status = Status.DECLINED if role == "lead" else self.status
        self._declined(
            department=department,
            reason=check_text("reason", reason, 2000),
            role=role,
            round=self.dispatch_round,
            status=status.value,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Declined")
    def _declined(
        self,
        department: str,
        reason: str,
        role: str,
        round: int,
        status: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.declines += 1
        if role == "lead":
            self.lead = None
            self.feedback_due = None
        else:
            self.co_departments = [d for d in self.co_departments if d != department]
        self.status = Status(status)

    # 办理 handle -------------------------------------------------------------

    def record_progress(self, department: str, note: str, *, timestamp: datetime, meta: Meta) -> None:
        """The lead or a co-handler records progress."""
        self.check_involved(department)
        self.check_step(Step.PROGRESS)
        if department not in self.handlers():
            raise NotHandler(f"{department!r} is not handling this whistle")
        self._progress_recorded(
            department=department,
            note=check_text("note", note, 5000),
            status=Status.IN_PROGRESS.value,
            timestamp=timestamp,
            meta=meta,
        )

    @event("ProgressRecorded")
    def _progress_recorded(self, department: str, note: str, status: str, *, timestamp: datetime, meta: Meta) -> None:
        self.status = Status(status)

    def complete(self, department: str, summary: str, *, timestamp: datetime, meta: Meta) -> None:
        """The lead department completes the handling."""
        self.check_involved(department)
        self.check_step(Step.COMPLETE)
        self.check_lead(department, "complete")
        self._completed(
            department=department,
            summary=check_text("summary", summary, 5000),
            status=Status.COMPLETED.value,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Completed")
    def _completed(self, department: str, summary: str, status: str, *, timestamp: datetime, meta: Meta) -> None:
        self.status = Status(status)

    def check_involved(self, department: str) -> None:
        """Outsiders are refused before the status is checked, so a refusal never tells them the state."""
        if department not in self.summoned and department not in self.handlers():
            raise NotHandler(f"{department!r} is neither summoned to nor handling this whistle")

    def check_lead(self, department: str, step: str) -> None:
        if department != self.lead:
            lead = f"the lead is {self.lead!r}" if self.lead else "no lead is dispatched"
            raise NotHandler(f"only the lead department may {step}; {lead}")

    # 反馈 feedback -----------------------------------------------------------

    def feed_back(self, department: str, result: str, resolved: bool, *, timestamp: datetime, meta: Meta) -> None:
        """The lead department reports the result back to the community and the resident."""
        self.check_involved(department)
        self.check_step(Step.FEEDBACK)
        self.check_lead(department, "give feedback")
        assert self.feedback_due is not None and self.dispatched_at is not None
        self._fed_back(
            department=department,
            result=check_text("result", result, 5000),
            resolved=bool(resolved),
            on_time=timestamp <= self.feedback_due,
            minutes=_minutes(timestamp, self.dispatched_at),
            status=Status.FED_BACK.value,
            timestamp=timestamp,
            meta=meta,
        )

    @event("FedBack")
    def _fed_back(
        self,
        department: str,
        result: str,
        resolved: bool,
        on_time: bool,
        minutes: int,
        status: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.status = Status(status)
        self.result = result

    # 评价 evaluate -----------------------------------------------------------

    def evaluate(self, rating: str, comment: str | None, *, timestamp: datetime, meta: Meta) -> None:
        """The resident or community rates the handling; dissatisfied reopens the case."""
        try:
            rating_value = Rating(rating)
        except ValueError:
            allowed = ", ".join(r.value for r in Rating)
            raise InvalidCommand(f"rating {rating!r} is unknown; use one of: {allowed}") from None
        self.check_step(Step.EVALUATE)
        reopened = rating_value is Rating.DISSATISFIED
        rated = self.departments_on_record()
        self._evaluated(
            rating=rating_value.value,
            comment=(comment or "").strip() or None,
            department=self.lead,
            departments=self.handlers(),
            status=(Status.REOPENED if reopened else Status.CLOSED).value,
            reopens=self.reopens + (1 if reopened else 0),
            timestamp=timestamp,
            meta=meta,
        )
        if reopened and self.reopens >= REOPENS_BEFORE_ESCALATION:
            self.escalate("reopened_repeatedly", rated, timestamp, meta)

    @event("Evaluated")
    def _evaluated(
        self,
        rating: str,
        comment: str | None,
        department: str | None,
        departments: list[str],
        status: str,
        reopens: int,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.status = Status(status)
        self.reopens = reopens
        if self.status is Status.REOPENED:
            self.lead = None
            self.co_departments = []
            self.feedback_due = None

    def departments_on_record(self) -> list[str]:
        """Every department summoned to or dispatched on this whistle, summoned first."""
        seen = dict.fromkeys(self.summoned)
        seen.update(dict.fromkeys(self.handlers()))
        return list(seen)

    # Deadlines and escalation (四级联动) --------------------------------------

    def check_deadlines(self, *, timestamp: datetime, meta: Meta) -> int:
        """Record each deadline missed by `timestamp` once, escalating one level for each; return how many."""
        missed = 0
        pending = self.pending_departments
        if pending and timestamp > self.report_in_due and "report_in" not in self.missed:
            self._deadline_missed(
                step=Step.REPORT_IN.value,
                key="report_in",
                departments=pending,
                due_at=self.report_in_due,
                timestamp=timestamp,
                meta=meta,
            )
            self.escalate("report_in_missed", pending, timestamp, meta)
            missed += 1
        key = f"feedback:{self.dispatch_round}"
        if (
            self.status in (Status.DISPATCHED, Status.IN_PROGRESS, Status.COMPLETED)
            and self.feedback_due is not None
            and timestamp > self.feedback_due
            and key not in self.missed
        ):
            self._deadline_missed(
                step=Step.FEEDBACK.value,
                key=key,
                departments=[d for d in [self.lead] if d],
                due_at=self.feedback_due,
                timestamp=timestamp,
                meta=meta,
            )
            self.escalate("feedback_missed", [d for d in [self.lead] if d], timestamp, meta)
            missed += 1
        return missed

    @event("DeadlineMissed")
    def _deadline_missed(
        self,
        step: str,
        key: str,
        departments: list[str],
        due_at: datetime,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.missed.add(key)

    def escalate(self, reason: str, departments: list[str], timestamp: datetime, meta: Meta) -> None:
        """Raise the whistle one level up the four-level linkage, if there is a level above."""
        if self.escalation_level >= len(self.escalation_chain):
            return
        level = self.escalation_level + 1
        self._escalated(
            from_level=ESCALATION_LEVELS[self.escalation_level],
            to_level=ESCALATION_LEVELS[level],
            to_unit=self.escalation_chain[level - 1],
            level=level,
            reason=reason,
            departments=list(departments),
            timestamp=timestamp,
            meta=meta,
        )

    @event("Escalated")
    def _escalated(
        self,
        from_level: str,
        to_level: str,
        to_unit: str,
        level: int,
        reason: str,
        departments: list[str],
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.escalation_level = level
