"""The assessment's read side: scoring is a pure function of the history (the baton, 考核指挥棒).

score(events up to a cut-off position, year, unit type) folds the events into facts per unit (each handler named
by its event class, as the projections' are), evaluates each indicator's formula (data, not code, from
domain.assessment.Scheme) over the facts, normalises it between the scheme's worst and best values, and weighs
the indicators into a total, a grade and a rank. Every indicator lists the positions of the events behind it.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from domain.assessment import (
    CENT,
    FACTS,
    PLACES,
    UNIT_TYPES,
    AssessmentScheme,
    MutualEvaluation,
    NotApplicable,
    Scheme,
    evaluate,
)
from domain.branches import Branch
from domain.errors import Conflict, InvalidCommand
from domain.events import handlers_of, handles, name_of
from domain.organisation import Organisation
from domain.report import Report
from domain.volunteering import Volunteer
from domain.whistle import Whistle


def _positions(initial: Iterable[int] = ()) -> array[int]:
    """Event positions, 8 bytes each."""
    return array("q", initial)


class Facts:
    """The fold of the history into facts per unit for one year (the only state scoring keeps).

    Counts are kept for every unit; the positions behind them (the evidence) only for the unit type being
    scored (a street's are its communities'), as 8-byte integers, since they grow with the year's events.
    """

    PLACES = frozenset(name_of(e) for e in (Whistle.Blown, Volunteer.Registered, Branch.Registered, Report.Raised))
    """Events that say which community an aggregate belongs to, whatever their year."""
    TIMELESS = frozenset(name_of(e) for e in (Organisation.UnitAdded, Organisation.DepartmentAdded))
    """Events read whatever their year: the organisation's units and departments."""

    @classmethod
    def reads(cls) -> set[str]:
        """The names of the events this fold reads."""
        return {*cls.PLACES, *HANDLERS}

    def __init__(self, year: int, timezone: str, unit_type: str | None = None) -> None:
        self.year = year
        self.zone = ZoneInfo(timezone)
        self.evidenced = (
            set(UNIT_TYPES) if unit_type is None else {unit_type, "community"} if unit_type == "street" else {unit_type}
        )
        self.counts: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        self.evidence: dict[tuple[str, str], dict[str, array[int]]] = defaultdict(lambda: defaultdict(_positions))
        self.names: dict[tuple[str, str], str] = {}
        self.street_of: dict[str, str] = {}
        self.community_of: dict[str, str] = {}  # whistle, volunteer or branch id -> community
        self.served: dict[str, dict[str, tuple[Decimal, list[int]]]] = defaultdict(dict)
        self.audits: dict[str, tuple[str, Decimal, Decimal, int]] = {}
        self.triage_due: dict[str, str] = {}  # report id -> its triage deadline, until the community answers it
        self.resolved: set[str] = set()  # reports with a result already counted (a reopened one counts once)

    def in_year(self, occurred_at: str) -> bool:
        return datetime.fromisoformat(occurred_at).astimezone(self.zone).year == self.year

    def add(self, unit_type: str, unit: str | None, fact: str, position: int, amount: Decimal | int = 1) -> None:
        if unit is None:
            return
        self.counts[(unit_type, unit)][fact] += Decimal(amount)
        if unit_type in self.evidenced:
            self.evidence[(unit_type, unit)][fact].append(position)

    def apply(self, e: dict[str, Any]) -> None:
        name, d = f"{e['aggregate']}.{e['type']}", e["data"]
        if name in self.PLACES and d["community_id"]:
            self.community_of[e["aggregate_id"]] = d["community_id"]
        handler = HANDLERS.get(name)
        if handler is not None and (name in self.TIMELESS or self.in_year(e["occurred_at"])):
            handler(self, e, d, e["position"])

    @handles(Organisation.UnitAdded)
    def _unit(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        key = (d["kind"], d["unit_id"])
        self.names[key] = d["name"]
        if d["kind"] == "community":
            self.street_of[d["unit_id"]] = d["parent_id"]
            self.counts[key]["residents"] = Decimal(d.get("residents") or 0)
            if "community" in self.evidenced:
                self.evidence[key]["residents"] = _positions([pos])
        elif d["kind"] == "street":
            self.counts[key]

    @handles(Organisation.DepartmentAdded)
    def _department(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.names[("department", d["code"])] = d["name"]

    def _community(self, aggregate_id: str) -> str | None:
        return self.community_of.get(aggregate_id)

    # Whistles --------------------------------------------------------------------------------

    @handles(Whistle.Blown)
    def _blown(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("community", d["community_id"], "whistles_blown", pos)
        for code in d["summoned_departments"]:
            self.add("department", code, "summoned", pos)

    @handles(Whistle.ReportedIn)
    def _reported_in(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["department"], "reported_late" if d["late"] else "reported_on_time", pos)

    @handles(Whistle.Dispatched)
    def _dispatched(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["lead_department"], "work_orders", pos)

    @handles(Whistle.Declined)
    def _declined(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["department"], "declines", pos)

    @handles(Whistle.FedBack)
    def _fed_back(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["department"], "fed_back_on_time" if d["on_time"] else "fed_back_late", pos)

    @handles(Whistle.Evaluated)
    def _evaluated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d.get("department"), d["rating"], pos)
        if d["status"] == "reopened":
            self.add("department", d.get("department"), "reopens", pos)
        if d["status"] == "closed":
            self.add("community", self._community(e["aggregate_id"]), "whistles_closed", pos)

    @handles(Whistle.DeadlineMissed)
    def _deadline_missed(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        fact = "report_in_missed" if d["step"] == "report_in" else "feedback_missed"
        for code in d["departments"]:
            self.add("department", code, fact, pos)

    @handles(Whistle.Escalated)
    def _escalated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("community", self._community(e["aggregate_id"]), "escalations", pos)
        for code in d["departments"]:
            self.add("department", code, "escalations", pos)

    # Residents' reports: unreasonable complaints and duplicates are counted apart, as 12345 does -----------

    @handles(Report.Raised)
    def _report_raised(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("community", d["community_id"], "reports_raised", pos)
        self.triage_due[e["aggregate_id"]] = d["triage_due"]

    def _answered(self, e: dict[str, Any], pos: int) -> None:
        due = self.triage_due.pop(e["aggregate_id"], None)
        if due is not None and datetime.fromisoformat(e["occurred_at"]) <= datetime.fromisoformat(due):
            self.add("community", self._community(e["aggregate_id"]), "reports_responded_on_time", pos)

    @handles(Report.Accepted, Report.Escalated)
    def _report_answered(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self._answered(e, pos)

    @handles(Report.Merged)
    def _report_merged(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.triage_due.pop(e["aggregate_id"], None)
        self.add("community", self._community(e["aggregate_id"]), "reports_merged", pos)

    @handles(Report.ClosedUnreasonable)
    def _report_unreasonable(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.triage_due.pop(e["aggregate_id"], None)
        self.add("community", self._community(e["aggregate_id"]), "reports_unreasonable", pos)

    @handles(Report.Resolved)
    def _report_resolved(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        if e["aggregate_id"] not in self.resolved:
            self.resolved.add(e["aggregate_id"])
            self.add("community", self._community(e["aggregate_id"]), "reports_resolved", pos)

    @handles(Report.Rated)
    def _report_rated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        if d["rated_by"] in ("resident", "callback"):  # the resident's own rating; one given on their behalf is not
            community = self._community(e["aggregate_id"])
            self.add("community", community, "residents_rated", pos)
            if d["rating"] != "dissatisfied":
                self.add("community", community, "residents_satisfied", pos)

    # Volunteering ----------------------------------------------------------------------------

    @handles(Volunteer.PointsAwarded)
    def _points_awarded(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        community = self._community(e["aggregate_id"])
        if community:
            points, positions = self.served[community].get(e["aggregate_id"], (Decimal(0), []))
            self.served[community][e["aggregate_id"]] = (points + Decimal(d["points"]), [*positions, pos])

    @handles(Volunteer.AwardVoided)
    def _award_voided(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        community = self._community(e["aggregate_id"])
        if community and e["aggregate_id"] in self.served[community]:
            points, positions = self.served[community][e["aggregate_id"]]
            self.served[community][e["aggregate_id"]] = (
                points + Decimal(d["points"]) - Decimal(d["shortfall"]),
                [*positions, pos],
            )

    # Branches --------------------------------------------------------------------------------

    @handles(Branch.Audited)
    def _audited(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        cadence = [c for a in d["aspects"] for c in a["criteria"] if c["code"].endswith("_cadence")]
        met = sum(1 for c in cadence if not c["missed"])
        self.audits[e["aggregate_id"]] = (d["grade"], Decimal(met), Decimal(len(cadence)), pos)

    @handles(Branch.RectificationCompleted)
    def _rectification_completed(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add(
            "community",
            self._community(e["aggregate_id"]),
            "rectified_on_time" if d["on_time"] else "rectified_late",
            pos,
        )

    @handles(Branch.RectificationOverdue)
    def _rectification_overdue(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("community", self._community(e["aggregate_id"]), "rectifications_overdue", pos)

    # Two-way evaluation ----------------------------------------------------------------------

    @handles(MutualEvaluation.Rated)
    def _rated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        if d["year"] == self.year:
            self.add(d["ratee_type"], d["ratee"], "rating_sum", pos, d["score"])
            self.add(d["ratee_type"], d["ratee"], "ratings", pos)

    # The end of the fold ---------------------------------------------------------------------

    def settle(self, scheme: Scheme) -> None:
        """Facts that depend on the latest state: volunteers served, branch grades and cadence, streets."""
        for community, volunteers in self.served.items():
            for points, positions in volunteers.values():
                if points > 0:
                    self.counts[("community", community)]["volunteers_served"] += 1
                    if "community" in self.evidenced:
                        self.evidence[("community", community)]["volunteers_served"].extend(positions)
        for branch, (grade, met, required, pos) in self.audits.items():
            home = self._community(branch)
            self.add("community", home, "branch_grade_points", pos, scheme.branch_grade_points.get(grade, 0))
            self.add("community", home, "branches_audited", pos)
            self.add("community", home, "cadence_met", pos, met)
            self.add("community", home, "cadence_required", pos, required)
        for (kind, unit), facts in list(self.counts.items()):
            street = self.street_of.get(unit) if kind == "community" else None
            if street is None:
                continue
            for fact, value in facts.items():
                self.counts[("street", street)][fact] += value
                if "street" in self.evidenced:
                    self.evidence[("street", street)][fact].extend(self.evidence[(kind, unit)][fact])


HANDLERS = handlers_of(Facts)
PUBLISHED = name_of(AssessmentScheme.Published)
SCORED = frozenset({*Facts.reads(), PUBLISHED})
"""The events score() reads more of than their position and name: a caller may hand it only those three (and
empty data) for any other, without decoding it."""


def score(
    events: Iterable[dict[str, Any]],
    scheme_document: dict[str, Any],
    year: int,
    unit_type: str,
    cutoff_position: int | None = None,
) -> dict[str, Any]:
    """Score every unit of a type for a year from the events up to a cut-off position (inclusive).

    The scheme must be published in these events at or before the cut-off; the caller finds it (see
    `schemes_in`) so the events are read once, streaming.
    """
    if unit_type not in UNIT_TYPES:
        raise InvalidCommand(f"unit_type must be one of: {', '.join(UNIT_TYPES)}")
    scheme = Scheme.parse(scheme_document)
    facts = Facts(year, scheme.timezone, unit_type)
    counted, last, published = 0, 0, False
    for e in events:
        if cutoff_position is not None and e["position"] > cutoff_position:
            break
        counted, last = counted + 1, e["position"]
        if f"{e['aggregate']}.{e['type']}" == PUBLISHED:
            published = published or e["data"]["version"] == scheme.version
        facts.apply(e)
    if not published:
        raise Conflict(f"scheme version {scheme.version} is not published by position {last}")
    facts.settle(scheme)
    version = scheme.version
    units = _units(scheme, facts, unit_type)
    return {
        "year": year,
        "unit_type": unit_type,
        "scheme_version": version,
        "cutoff_position": last,
        "events": counted,
        "units": units,
    }


def schemes_in(events: Iterable[dict[str, Any]], cutoff_position: int | None = None) -> dict[str, dict[str, Any]]:
    """The scheme documents published in these events up to the cut-off, oldest first."""
    found: dict[str, dict[str, Any]] = {}
    for e in events:
        if cutoff_position is not None and e["position"] > cutoff_position:
            break
        if f"{e['aggregate']}.{e['type']}" == PUBLISHED:
            found[e["data"]["version"]] = e["data"]["document"]
    return found


def _units(scheme: Scheme, facts: Facts, unit_type: str) -> list[dict[str, Any]]:
    indicators = scheme.indicators.get(unit_type, ())
    keys = sorted(unit for kind, unit in facts.names if kind == unit_type)  # units the organisation registered
    out: list[dict[str, Any]] = []
    for unit in keys:
        known = facts.counts.get((unit_type, unit), {})
        values = {name: known.get(name, Decimal(0)) for name in FACTS[unit_type]}
        scored, weighted, weights = [], Decimal(0), Decimal(0)
        for ind in indicators:
            used = ind.facts()
            try:
                value: Decimal | None = evaluate(ind.tree, values).quantize(PLACES, rounding=ROUND_HALF_UP)
            except NotApplicable:
                value = None
            points = ind.normalise(value) if value is not None else None
            if points is not None:
                weighted += ind.weight * points
                weights += ind.weight
            positions = sorted({p for f in used for p in facts.evidence.get((unit_type, unit), {}).get(f, [])})
            scored.append(
                {
                    "code": ind.code,
                    "name": ind.name,
                    "weight": str(ind.weight),
                    "formula": ind.formula,
                    "value": None if value is None else str(value),
                    "score": None if points is None else str(points),
                    "facts": {f: str(values[f]) for f in used},
                    "events": positions,
                }
            )
        total = (weighted / weights).quantize(CENT, rounding=ROUND_HALF_UP) if weights else None
        out.append(
            {
                "unit": unit,
                "name": facts.names.get((unit_type, unit), unit),
                "total": None if total is None else str(total),
                "grade": None if total is None else scheme.grade_for(total),
                "rank": None,
                "indicators": scored,
            }
        )
    ranked = sorted((u for u in out if u["total"] is not None), key=lambda u: (-Decimal(u["total"]), u["unit"]))
    previous, rank = None, 0
    for i, row in enumerate(ranked, start=1):
        if row["total"] != previous:
            rank, previous = i, row["total"]
        row["rank"] = rank
    return out
