"""Party-branch standardisation (党支部标准化建设): the standard as data, the organisational life log, audits,
grades (标准型 / 示范型 / 红旗型) and rectification."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventsourcing.domain import Aggregate, event

from domain.common import LOCAL_TIMEZONE, Meta, check_text, digest, new_version_digest
from domain.errors import Conflict, DuplicateEntry, InvalidCommand, NotFound, Thing

CENT = Decimal("0.01")
STANDARD_ID: UUID = uuid5(NAMESPACE_URL, "baton:branch-standard")


class MeetingKind(StrEnum):
    """三会一课 and the monthly themed party day."""

    GENERAL_MEETING = "general_meeting"  # 支部党员大会
    COMMITTEE_MEETING = "committee_meeting"  # 支部委员会
    GROUP_MEETING = "group_meeting"  # 党小组会
    PARTY_LECTURE = "party_lecture"  # 党课
    THEMED_PARTY_DAY = "themed_party_day"  # 主题党日


class ParentKind(StrEnum):
    """Where a branch sits."""

    COMMUNITY = "community"  # 社区
    DEPARTMENT = "department"  # 机关部门
    ENTERPRISE = "enterprise"  # 企业


# The standard, as data ----------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    code: str
    name: str
    max: Decimal
    source: str  # "auditor" or "computed"
    rule: dict[str, Any] | None


@dataclass(frozen=True)
class Aspect:
    code: str
    name: str
    weight: Decimal
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class Cadence:
    meeting: MeetingKind
    name: str
    period: str  # "month" or "quarter"
    at_least: int


def _decimal(value: Any, where: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidCommand(f"{where} must be a number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise InvalidCommand(f"{where} must be a number of zero or more, got {value!r}")
    return number


@dataclass(frozen=True)
class Standard:
    """A version of the branch standard: nine aspects, criteria and weights, grades, meeting cadence."""

    version: str
    name: str
    timezone: str
    rectification_days: int
    window_months: int
    window_quarters: int
    cadence: dict[MeetingKind, Cadence]
    grades: tuple[tuple[str, str, Decimal], ...]  # (grade, name, at least), highest first
    below: tuple[str, str]
    aspects: tuple[Aspect, ...]

    @classmethod
    def parse(cls, document: dict[str, Any]) -> Standard:
        """Read a standard document, or raise InvalidCommand saying what is wrong with it."""
        try:
            return cls._parse(document)
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidCommand(f"the standard document is missing or misshapes {exc}") from None

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> Standard:
        if d.get("kind") != "branch_standard":
            raise InvalidCommand('a branch standard document has "kind": "branch_standard"')
        version = check_text("version", d["version"], 40)
        try:
            ZoneInfo(d.get("timezone", LOCAL_TIMEZONE))
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidCommand(f"timezone {d.get('timezone')!r} is unknown") from None
        cadence = {}
        for kind, c in d["cadence"].items():
            try:
                meeting = MeetingKind(kind)
            except ValueError:
                raise InvalidCommand(f"cadence names an unknown meeting kind {kind!r}") from None
            if c["period"] not in ("month", "quarter"):
                raise InvalidCommand(f"cadence of {kind}: period must be month or quarter")
            cadence[meeting] = Cadence(meeting, c["name"], c["period"], int(c["at_least"]))
        aspects = []
        codes: set[str] = set()
        for a in d["aspects"]:
            criteria = []
            for c in a["criteria"]:
                if c["code"] in codes:
                    raise InvalidCommand(f"criterion {c['code']!r} appears twice")
                codes.add(c["code"])
                if c["source"] not in ("auditor", "computed"):
                    raise InvalidCommand(f"criterion {c['code']}: source must be auditor or computed")
                rule = c.get("rule")
                if c["source"] == "computed":
                    kinds = ("cadence", "dues_on_time")
                    if not rule or rule.get("kind") not in kinds:
                        raise InvalidCommand(
                            f"computed criterion {c['code']} needs a rule of kind {' or '.join(kinds)}"
                        )
                    if rule["kind"] == "cadence" and MeetingKind(rule["meeting"]) not in cadence:
                        raise InvalidCommand(f"criterion {c['code']}: no cadence for {rule['meeting']}")
                maximum = _decimal(c["max"], f"criterion {c['code']}.max")
                if maximum <= 0:
                    raise InvalidCommand(f"criterion {c['code']}.max must be above zero")
                criteria.append(Criterion(c["code"], c["name"], maximum, c["source"], rule))
            if not criteria:
                raise InvalidCommand(f"aspect {a['code']} has no criteria")
            aspects.append(
                Aspect(a["code"], a["name"], _decimal(a["weight"], f"aspect {a['code']}.weight"), tuple(criteria))
            )
        total = sum((a.weight for a in aspects), Decimal(0))
        if total != 100:
            raise InvalidCommand(f"aspect weights must add up to 100, they add up to {total}")
        grades = tuple(
            (g["grade"], g["name"], _decimal(g["at_least"], f"grade {g['grade']}.at_least")) for g in d["grades"]
        )
        if [g[2] for g in grades] != sorted((g[2] for g in grades), reverse=True):
            raise InvalidCommand("grades are listed highest first")
        return cls(
            version=version,
            name=d["name"],
            timezone=d.get("timezone", LOCAL_TIMEZONE),
            rectification_days=int(d.get("rectification_days", 30)),
            window_months=int(d["window"]["months"]),
            window_quarters=int(d["window"]["quarters"]),
            cadence=cadence,
            grades=grades,
            below=(d["below_grades"]["grade"], d["below_grades"]["name"]),
            aspects=tuple(aspects),
        )

    def grade_for(self, total: Decimal) -> str:
        for grade, _name, at_least in self.grades:
            if total >= at_least:
                return grade
        return self.below[0]

    def criteria(self) -> dict[str, Criterion]:
        return {c.code: c for a in self.aspects for c in a.criteria}

    def local_date(self, moment: datetime) -> date:
        return moment.astimezone(ZoneInfo(self.timezone)).date()


class BranchStandard(Aggregate):
    """The published versions of the branch standard; the newest applies from its publication on."""

    @staticmethod
    def create_id() -> UUID:
        return STANDARD_ID

    @event("Opened")
    def __init__(self, *, timestamp: datetime, meta: Meta) -> None:
        self.versions: dict[str, dict[str, Any]] = {}
        self.current: str | None = None

    def publish(self, document: dict[str, Any], *, timestamp: datetime, meta: Meta) -> str:
        """Publish a new version; returns it. A version is published once and never changed."""
        standard = Standard.parse(document)
        earlier = self.versions.get(standard.version)
        published = digest(earlier) if earlier is not None else None
        found = new_version_digest("standard", standard.version, published, document)
        self._published(version=standard.version, digest=found, document=document, timestamp=timestamp, meta=meta)
        return standard.version

    @event("Published")
    def _published(
        self, version: str, digest: str, document: dict[str, Any], *, timestamp: datetime, meta: Meta
    ) -> None:
        self.versions[version] = document
        self.current = version

    def standard(self) -> Standard:
        if self.current is None:
            raise Conflict("no branch standard is published yet; publish one with `baton standard publish`")
        return Standard.parse(self.versions[self.current])


# Computed criteria ---------------------------------------------------------------------------


def month_key(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def quarter_key(day: date) -> str:
    return f"{day.year:04d}-Q{(day.month - 1) // 3 + 1}"


def previous_periods(audited_on: date, period: str, count: int, since: date) -> list[str]:
    """The `count` whole periods before the one audited_on falls in, none starting before `since`'s period."""
    step = 1 if period == "month" else 3
    year, month = audited_on.year, audited_on.month
    month -= (month - 1) % step  # first month of the current period
    out = []
    for _ in range(count):
        month -= step
        if month < 1:
            month += 12
            year -= 1
        start = date(year, month, 1)
        first_of_since = date(since.year, since.month - (since.month - 1) % step, 1)
        if start < first_of_since:
            break
        out.append(month_key(start) if period == "month" else quarter_key(start))
    return list(reversed(out))


@dataclass(frozen=True)
class CriterionScore:
    code: str
    max: Decimal
    score: Decimal
    source: str
    missed: tuple[str, ...] = ()


def compute(
    criterion: Criterion,
    standard: Standard,
    meetings: list[tuple[str, str]],
    dues: dict[str, str],
    audited_on: date,
    established_on: date,
) -> CriterionScore:
    """Score a computed criterion from the log: every period of the window met, or none of the points."""
    rule = criterion.rule or {}
    if rule["kind"] == "cadence":
        cadence = standard.cadence[MeetingKind(rule["meeting"])]
        count = standard.window_months if cadence.period == "month" else standard.window_quarters
        periods = previous_periods(audited_on, cadence.period, count, established_on)
        key = month_key if cadence.period == "month" else quarter_key
        held: dict[str, int] = {}
        for kind, day in meetings:
            if kind == cadence.meeting:
                held[key(date.fromisoformat(day))] = held.get(key(date.fromisoformat(day)), 0) + 1
        missed = tuple(p for p in periods if held.get(p, 0) < cadence.at_least)
    else:
        due_day = int(rule.get("due_day", 31))
        missed_list = []
        for period in previous_periods(audited_on, "month", standard.window_months, established_on):
            year, month = int(period[:4]), int(period[5:])
            deadline = date(year, month, min(due_day, calendar.monthrange(year, month)[1]))
            collected = dues.get(period)
            if collected is None or date.fromisoformat(collected) > deadline:
                missed_list.append(period)
        missed = tuple(missed_list)
    return CriterionScore(criterion.code, criterion.max, Decimal(0) if missed else criterion.max, "computed", missed)


def assess(
    standard: Standard,
    auditor_scores: dict[str, Any],
    meetings: list[tuple[str, str]],
    dues: dict[str, str],
    audited_on: date,
    established_on: date,
) -> tuple[Decimal, str, list[dict[str, Any]]]:
    """(total, grade, aspects with their criteria) for an audit under this standard."""
    criteria = standard.criteria()
    expected = {c for c, crit in criteria.items() if crit.source == "auditor"}
    unknown = sorted(set(auditor_scores) - set(criteria))
    if unknown:
        raise InvalidCommand(
            f"scores name criteria the standard {standard.version} does not have: {', '.join(unknown)}"
        )
    computed_given = sorted(set(auditor_scores) - expected)
    if computed_given:
        raise InvalidCommand(f"criteria computed from the log cannot be scored by hand: {', '.join(computed_given)}")
    missing = sorted(expected - set(auditor_scores))
    if missing:
        raise InvalidCommand(
            f"score every auditor criterion of standard {standard.version}; missing: {', '.join(missing)}"
        )
    total = Decimal(0)
    aspects = []
    for aspect in standard.aspects:
        scored = []
        for c in aspect.criteria:
            if c.source == "auditor":
                value = _decimal(auditor_scores[c.code], f"score of {c.code}")
                if value > c.max:
                    raise InvalidCommand(f"score of {c.code} is {value}; its maximum is {c.max}")
                scored.append(CriterionScore(c.code, c.max, value, "auditor"))
            else:
                scored.append(compute(c, standard, meetings, dues, audited_on, established_on))
        earned = sum((s.score for s in scored), Decimal(0))
        possible = sum((s.max for s in scored), Decimal(0))
        score = (aspect.weight * earned / possible).quantize(CENT, rounding=ROUND_HALF_UP)
        total += score
        aspects.append(
            {
                "code": aspect.code,
                "weight": str(aspect.weight),
                "score": str(score),
                "criteria": [
                    {
                        "code": s.code,
                        "source": s.source,
                        "max": str(s.max),
                        "score": str(s.score),
                        "missed": list(s.missed),
                    }
                    for s in scored
                ],
            }
        )
    return total, standard.grade_for(total), aspects


# Branches ------------------------------------------------------------------------------------


def _day(value: str | date, field: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InvalidCommand(f"{field} must be a date like 2026-03-15, got {value!r}") from None


class Branch(Aggregate):
    """A party branch (党支部): its members, organisational life, dues, audits and rectifications."""

    @classmethod
    def register(
        cls,
        *,
        name: str,
        parent_kind: str,
        parent_id: str,
        community_id: str | None,
        members: int,
        established_on: str,
        escalation_chain: list[str],
        today: date,
        timestamp: datetime,
        meta: Meta,
    ) -> Branch:
        try:
            kind = ParentKind(parent_kind)
        except ValueError:
            raise InvalidCommand("parent_kind must be community, department or enterprise") from None
        if not isinstance(members, int) or members < 3:
            raise InvalidCommand(f"a branch has at least 3 members, got {members!r}")
        established = _day(established_on, "established_on")
        if established > today:
            # Audits count the periods since establishment: a future date would leave none to miss.
            raise InvalidCommand(f"established_on {established} is in the future; register a branch once it exists")
        return cls(
            name=check_text("name", name, 200),
            parent_kind=kind.value,
            parent_id=check_text("parent_id", parent_id, 200),
            community_id=community_id,
            members=members,
            established_on=established.isoformat(),
            escalation_chain=escalation_chain,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Registered")
    def __init__(
        self,
        name: str,
        parent_kind: str,
        parent_id: str,
        community_id: str | None,
        members: int,
        established_on: str,
        escalation_chain: list[str],
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.name = name
        self.parent_kind = ParentKind(parent_kind)
        self.parent_id = parent_id
        self.community_id = community_id
        self.members = members
        self.established_on = date.fromisoformat(established_on)
        self.escalation_chain = escalation_chain
        self.escalation_level = 0
        self.meetings: list[tuple[str, str]] = []
        self.dues: dict[str, str] = {}
        self.grade: str | None = None
        self.rectifications: dict[str, dict[str, Any]] = {}

    def count_members(self, members: int, *, timestamp: datetime, meta: Meta) -> None:
        if not isinstance(members, int) or members < 3:
            raise InvalidCommand(f"a branch has at least 3 members, got {members!r}")
        self._members_counted(members=members, timestamp=timestamp, meta=meta)

    @event("MembersCounted")
    def _members_counted(self, members: int, *, timestamp: datetime, meta: Meta) -> None:
        self.members = members

    def hold_meeting(
        self,
        meeting_id: str,
        kind: str,
        held_on: str,
        attendance: int,
        topic: str,
        today: date,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Log a meeting of 三会一课 or a themed party day."""
        try:
            kind_value = MeetingKind(kind)
        except ValueError:
            allowed = ", ".join(k.value for k in MeetingKind)
            raise InvalidCommand(f"meeting kind {kind!r} is unknown; use one of: {allowed}") from None
        day = _day(held_on, "held_on")
        if day > today:
            raise InvalidCommand(f"held_on {day} is in the future; log a meeting after it is held")
        if day < self.established_on:
            raise InvalidCommand(f"held_on {day} is before the branch was established ({self.established_on})")
        if not isinstance(attendance, int) or not 0 < attendance <= self.members:
            raise InvalidCommand(f"attendance must be between 1 and the {self.members} members, got {attendance!r}")
        self._meeting_held(
            meeting_id=meeting_id,
            kind=kind_value.value,
            held_on=day.isoformat(),
            attendance=attendance,
            topic=check_text("topic", topic, 500),
            timestamp=timestamp,
            meta=meta,
        )

    @event("MeetingHeld")
    def _meeting_held(
        self,
        meeting_id: str,
        kind: str,
        held_on: str,
        attendance: int,
        topic: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.meetings.append((kind, held_on))

    def collect_dues(
        self,
        period: str,
        amount_yuan: Any,
        members_paid: int,
        collected_on: str,
        today: date,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Record the dues collected for a month (党费), once per month."""
        try:
            year, month = int(period[:4]), int(period[5:7])
            if len(period) != 7 or period[4] != "-" or not 1 <= month <= 12:
                raise ValueError
            month_starts = date(year, month, 1)
        except ValueError:
            raise InvalidCommand(f"period must be a month like 2026-03, got {period!r}") from None
        if period in self.dues:
            raise DuplicateEntry(f"dues for {period} are already recorded")
        day = _day(collected_on, "collected_on")
        if day > today:
            raise InvalidCommand(f"collected_on {day} is in the future")
        if day < month_starts:
            raise InvalidCommand(f"dues for {period} cannot be collected before the month starts")
        try:
            money = Decimal(str(amount_yuan))
        except (InvalidOperation, ValueError):
            raise InvalidCommand("amount_yuan must be a number") from None
        if not money.is_finite() or money <= 0:
            raise InvalidCommand("amount_yuan must be above zero")
        if not isinstance(members_paid, int) or not 0 < members_paid <= self.members:
            raise InvalidCommand(f"members_paid must be between 1 and the {self.members} members")
        self._dues_collected(
            period=period,
            amount_yuan=money.quantize(CENT),
            members_paid=members_paid,
            collected_on=day.isoformat(),
            timestamp=timestamp,
            meta=meta,
        )

    @event("DuesCollected")
    def _dues_collected(
        self,
        period: str,
        amount_yuan: Decimal,
        members_paid: int,
        collected_on: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.dues[period] = collected_on

    def audit(
        self,
        audit_id: str,
        standard: Standard,
        scores: dict[str, Any],
        findings: list[dict[str, Any]],
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """An inspector audits the branch against the standard in force; the grade follows from the scores."""
        audited_on = standard.local_date(timestamp)
        total, grade, aspects = assess(standard, scores, self.meetings, self.dues, audited_on, self.established_on)
        default_due = date.fromordinal(audited_on.toordinal() + standard.rectification_days).isoformat()
        ordered = []
        for n, finding in enumerate(findings, start=1):
            due_on = _day(finding.get("due_on") or default_due, "findings.due_on")
            if due_on <= audited_on:
                raise InvalidCommand(f"finding {n}: due_on must be after the audit date {audited_on}")
            ordered.append(
                {
                    "rectification_id": f"{audit_id[:8]}-{n}",
                    "criterion": finding.get("criterion"),
                    "text": check_text(f"finding {n} text", finding.get("text", ""), 2000),
                    "due_on": due_on.isoformat(),
                }
            )
        for a in aspects:
            for c in a["criteria"]:
                if c["missed"]:
                    ordered.append(
                        {
                            "rectification_id": f"{audit_id[:8]}-{len(ordered) + 1}",
                            "criterion": c["code"],
                            "text": f"{standard.criteria()[c['code']].name}: not met in {', '.join(c['missed'])}",
                            "due_on": default_due,
                        }
                    )
        self._audited(
            audit_id=audit_id,
            standard_version=standard.version,
            audited_on=audited_on.isoformat(),
            total=total,
            grade=grade,
            previous_grade=self.grade,
            aspects=aspects,
            rectifications=ordered,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Audited")
    def _audited(
        self,
        audit_id: str,
        standard_version: str,
        audited_on: str,
        total: Decimal,
        grade: str,
        previous_grade: str | None,
        aspects: list[dict[str, Any]],
        rectifications: list[dict[str, Any]],
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.grade = grade
        for r in rectifications:
            self.rectifications[r["rectification_id"]] = {**r, "status": "open", "audit_id": audit_id}

    def rectification(self, rectification_id: str) -> dict[str, Any]:
        try:
            return self.rectifications[rectification_id]
        except KeyError:
            raise NotFound(
                f"rectification {rectification_id} does not exist on this branch", Thing.RECTIFICATION, rectification_id
            ) from None

    def complete_rectification(
        self, rectification_id: str, evidence: str, *, timestamp: datetime, meta: Meta, today: date
    ) -> None:
        """The branch reports a finding rectified, with evidence; late completions are recorded as late."""
        r = self.rectification(rectification_id)
        if r["status"] == "completed":
            raise Conflict(f"rectification {rectification_id} is already completed")
        self._rectification_completed(
            rectification_id=rectification_id,
            evidence=check_text("evidence", evidence, 5000),
            on_time=today <= date.fromisoformat(r["due_on"]),
            timestamp=timestamp,
            meta=meta,
        )

    @event("RectificationCompleted")
    def _rectification_completed(
        self, rectification_id: str, evidence: str, on_time: bool, *, timestamp: datetime, meta: Meta
    ) -> None:
        self.rectifications[rectification_id]["status"] = "completed"

    def check_rectifications(self, today: date, *, timestamp: datetime, meta: Meta) -> int:
        """Record each open rectification past its due date once, escalating one level; return how many."""
        overdue = [
            r for r in self.rectifications.values() if r["status"] == "open" and date.fromisoformat(r["due_on"]) < today
        ]
        for r in sorted(overdue, key=lambda r: r["rectification_id"]):
            level = min(self.escalation_level + 1, len(self.escalation_chain))
            self._rectification_overdue(
                rectification_id=r["rectification_id"],
                due_on=r["due_on"],
                escalated_to=self.escalation_chain[level - 1] if level else None,
                level=level,
                timestamp=timestamp,
                meta=meta,
            )
        return len(overdue)

    @event("RectificationOverdue")
    def _rectification_overdue(
        self,
        rectification_id: str,
        due_on: str,
        escalated_to: str | None,
        level: int,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.rectifications[rectification_id]["status"] = "overdue"
        self.escalation_level = level
