"""Monthly rankings (接诉即办): response, resolution and satisfaction rates per community, street and department.

A month's figures are over the cases that arrived in it (Asia/Shanghai), as the 12345 hotline counts its monthly
rates: a community's over the residents' reports raised that month, unreasonable complaints and duplicates left
out; a department's over the whistles that summoned it that month. The cases are followed up to the cut-off:
response = answered on time (a report triaged before its deadline; a summons reported in on time), resolution =
resolved (a report with a result; a whistle dispatched to the department as lead that it fed back resolved;
a lead that is a community is not ranked here), satisfaction = satisfied or
basically satisfied among the ratings (a report's by its resident, in person or on the callback; a whistle's
last evaluation). The composite weighs them 10 : 45 : 45, as Beijing's 三率 does; units are ranked by it and
sorted into four classes by quarter; a rate with no case behind it is left out of the composite and its weight
with it. Every figure lists the positions of the events behind it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from domain.common import LOCAL_TIMEZONE
from domain.errors import InvalidCommand
from domain.events import handlers_of, handles
from domain.organisation import Organisation
from domain.ranking import UNIT_TYPES, check_month
from domain.report import Report
from domain.whistle import Whistle

WEIGHTS = {"response": Decimal("0.10"), "resolution": Decimal("0.45"), "satisfaction": Decimal("0.45")}
CLASSES = ("advanced", "good", "average", "lagging")
"""先进, 较好, 一般, 后进: by quarter of the ranked units, the first quarter advanced."""
RATE = Decimal("0.0001")


def previous(month: str) -> str:
    year, m = check_month(month)
    return f"{year - 1}-12" if m == 1 else f"{year}-{m - 1:02d}"


@dataclass
class Case:
    """One report or one summons/whistle: where it counts, and what happened to it, with the evidence."""

    unit: str
    month: str
    counted: bool = True
    on_time: bool = False
    resolved: bool = False
    rating: str | None = None
    positions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))


class Cases:
    """The fold of the history into cases, by the month they arrived in."""

    def __init__(self, timezone: str = LOCAL_TIMEZONE) -> None:
        self.zone = ZoneInfo(timezone)
        self.reports: dict[str, Case] = {}
        self.triage_due: dict[str, str] = {}
        self.summons: dict[tuple[str, str], Case] = {}  # (whistle, department) -> the department's case
        self.whistles: dict[str, Case] = {}  # whistle -> the lead's case (resolution and satisfaction)
        self.whistle_month: dict[str, str] = {}
        self.names: dict[tuple[str, str], str] = {}
        self.street_of: dict[str, str] = {}

    def month_of(self, occurred_at: str) -> str:
        return datetime.fromisoformat(occurred_at).astimezone(self.zone).strftime("%Y-%m")

    def apply(self, e: dict[str, Any]) -> None:
        handler = HANDLERS.get(f"{e['aggregate']}.{e['type']}")
        if handler is not None:
            handler(self, e, e["data"], e["position"])

    @handles(Organisation.UnitAdded)
    def _unit(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.names[(d["kind"], d["unit_id"])] = d["name"]
        if d["kind"] == "community":
            self.street_of[d["unit_id"]] = d["parent_id"]

    @handles(Organisation.DepartmentAdded)
    def _department(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.names[("department", d["code"])] = d["name"]

    # Residents' reports: the community's cases ---------------------------------------------

    @handles(Report.Raised)
    def _raised(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case = self.reports[e["aggregate_id"]] = Case(d["community_id"], self.month_of(e["occurred_at"]))
        case.positions["raised"].append(pos)
        self.triage_due[e["aggregate_id"]] = d["triage_due"]

    def _report(self, e: dict[str, Any]) -> Case | None:
        return self.reports.get(e["aggregate_id"])

    @handles(Report.Accepted, Report.Escalated)
    def _answered(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case, due = self._report(e), self.triage_due.pop(e["aggregate_id"], None)
        if case is not None and due is not None:
            case.on_time = datetime.fromisoformat(e["occurred_at"]) <= datetime.fromisoformat(due)
            case.positions["answered"].append(pos)

    @handles(Report.Merged, Report.ClosedUnreasonable)
    def _left_out(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case = self._report(e)
        if case is not None:
            case.counted = False
            case.positions["left_out"].append(pos)

    @handles(Report.Resolved)
    def _resolved(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case = self._report(e)
        if case is not None:
            case.resolved = True
            case.positions["resolved"].append(pos)

    @handles(Report.Rated)
    def _rated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case = self._report(e)
        if case is not None and d["rated_by"] in ("resident", "callback"):
            case.rating = d["rating"]  # the latest of the resident's own ratings
            case.positions["rated"].append(pos)

    # Whistles: the departments' cases ------------------------------------------------------

    @handles(Whistle.Blown)
    def _blown(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        month = self.whistle_month[e["aggregate_id"]] = self.month_of(e["occurred_at"])
        for code in d["summoned_departments"]:
            case = self.summons[(e["aggregate_id"], code)] = Case(code, month)
            case.positions["summoned"].append(pos)

    @handles(Whistle.ReportedIn)
    def _reported_in(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case = self.summons.get((e["aggregate_id"], d["department"]))
        if case is not None:
            case.on_time = not d["late"]
            case.positions["answered"].append(pos)

    @handles(Whistle.Dispatched)
    def _dispatched(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        """The lead department owns the whistle's outcome from now: unresolved until it feeds back resolved."""
        case = self._lead_case(e, d["lead_department"])
        if case is not None:
            case.positions["dispatched"].append(pos)

    @handles(Whistle.FedBack)
    def _fed_back(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case = self._lead_case(e, d["department"])
        if case is not None:
            case.resolved = bool(d["resolved"])
            case.positions["resolved"].append(pos)

    @handles(Whistle.Evaluated)
    def _evaluated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        case = self._lead_case(e, d.get("department"))
        if case is not None:
            case.rating = d["rating"]
            case.positions["rated"].append(pos)

    def _lead_case(self, e: dict[str, Any], department: str | None) -> Case | None:
        month = self.whistle_month.get(e["aggregate_id"])
        if month is None or not department:
            return None
        case = self.whistles.get(e["aggregate_id"])
        if case is None or case.unit != department:  # a new lead takes the whistle's outcome over
            case = self.whistles[e["aggregate_id"]] = Case(department, month)
        return case


HANDLERS = handlers_of(Cases)


def _rate(part: int, whole: int) -> Decimal | None:
    return (Decimal(part) / Decimal(whole)).quantize(RATE, rounding=ROUND_HALF_UP) if whole else None


def _figures(cases: Cases, unit_type: str, month: str) -> dict[str, dict[str, Any]]:
    """Per unit: counts, rates, composite and evidence for one month."""
    tally: dict[str, dict[str, Any]] = defaultdict(
        lambda: (
            {k: 0 for k in ("cases", "on_time", "resolvable", "resolved", "rated", "satisfied")}
            | {"events": defaultdict(list)}
        )
    )

    def unit_of(case: Case) -> str | None:
        return cases.street_of.get(case.unit) if unit_type == "street" else case.unit

    if unit_type == "department":
        response = [c for c in cases.summons.values() if c.month == month]
        outcome = [c for c in cases.whistles.values() if c.month == month]
    else:
        response = outcome = [c for c in cases.reports.values() if c.month == month and c.counted]
    for case in response:
        unit = unit_of(case)
        if unit is None:
            continue
        t = tally[unit]
        t["cases"] += 1
        t["events"]["response"] += case.positions["raised" if unit_type != "department" else "summoned"]
        if case.on_time:
            t["on_time"] += 1
            t["events"]["response"] += case.positions["answered"]
    for case in outcome:
        unit = unit_of(case)
        if unit is None:
            continue
        t = tally[unit]
        t["resolvable"] += 1
        if case.resolved:
            t["resolved"] += 1
            t["events"]["resolution"] += case.positions["resolved"]
        if case.rating is not None:
            t["rated"] += 1
            t["events"]["satisfaction"] += case.positions["rated"]
            if case.rating != "dissatisfied":
                t["satisfied"] += 1
    out = {}
    for unit, t in tally.items():
        rates = {
            "response": _rate(t["on_time"], t["cases"]),
            "resolution": _rate(t["resolved"], t["resolvable"]),
            "satisfaction": _rate(t["satisfied"], t["rated"]),
        }
        weighed = [(WEIGHTS[k], v) for k, v in rates.items() if v is not None]
        total = sum((w for w, _ in weighed), Decimal(0))
        composite = (sum((w * v for w, v in weighed), Decimal(0)) / total * 100) if total else None
        out[unit] = {
            "unit": unit,
            "cases": t["cases"],
            "answered_on_time": t["on_time"],
            "resolvable": t["resolvable"],
            "resolved": t["resolved"],
            "rated": t["rated"],
            "satisfied": t["satisfied"],
            **{f"{k}_rate": None if v is None else str(v) for k, v in rates.items()},
            "composite": None if composite is None else str(composite.quantize(Decimal("0.01"), ROUND_HALF_UP)),
            "events": {k: sorted(set(v)) for k, v in t["events"].items()},
        }
    return out


def rank(events: Iterable[dict[str, Any]], month: str, unit_type: str, cutoff: int | None = None) -> dict[str, Any]:
    """The month's ranking of a unit type, from the events up to a cut-off position (inclusive)."""
    if unit_type not in UNIT_TYPES:
        raise InvalidCommand(f"unit_type must be one of: {', '.join(UNIT_TYPES)}")
    check_month(month)
    cases, last, counted = Cases(), 0, 0
    for e in events:
        if cutoff is not None and e["position"] > cutoff:
            break
        last, counted = e["position"], counted + 1
        cases.apply(e)
    now, before = _figures(cases, unit_type, month), _figures(cases, unit_type, previous(month))
    ranked = sorted(
        (r for r in now.values() if r["composite"] is not None), key=lambda r: (-Decimal(r["composite"]), r["unit"])
    )
    quarter = max(1, math.ceil(len(ranked) / 4))
    place, previous_composite = 0, None
    for i, row in enumerate(ranked, start=1):
        if row["composite"] != previous_composite:
            place, previous_composite = i, row["composite"]
        row["rank"] = place
        row["class"] = CLASSES[min((i - 1) // quarter, 3)]
    rows = []
    for unit, row in sorted(now.items()):
        earlier = before.get(unit, {}).get("composite")
        row.setdefault("rank", None)
        row.setdefault("class", None)
        row["name"] = cases.names.get((unit_type, unit), unit)
        row["previous_composite"] = earlier
        row["change"] = (
            str(Decimal(row["composite"]) - Decimal(earlier)) if row["composite"] is not None and earlier else None
        )
        rows.append(row)
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r["unit"]))
    return {
        "month": month,
        "unit_type": unit_type,
        "cutoff_position": last,
        "events": counted,
        "weights": {k: str(v) for k, v in WEIGHTS.items()},
        "units": rows,
    }
