"""The baton (考核指挥棒): assessment schemes as data, and scoring as a pure function of the history.

score(events up to a cut-off position, year, unit type) reads the scheme in force from the history itself,
folds the events into facts per unit, evaluates each indicator's formula (data, not code) over the facts,
normalises it between the scheme's worst and best values, and weighs the indicators into a total, a
grade and a rank. Every indicator lists the positions of the events that produced it.
"""

from __future__ import annotations

import ast
from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, DivisionByZero, InvalidOperation
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventsourcing.domain import Aggregate, event

from domain.common import LOCAL_TIMEZONE, Meta, check_text, local_year, new_version_digest, year_end
from domain.errors import Conflict, InvalidCommand, NotFinal, YearNotOver

SCHEME_ID: UUID = uuid5(NAMESPACE_URL, "baton:assessment-scheme")
UNIT_TYPES = ("department", "community", "street")
CENT = Decimal("0.01")
PLACES = Decimal("0.0001")
HUNDRED = Decimal(100)

FACTS: dict[str, tuple[str, ...]] = {
    "department": (
        "summoned",
        "reported_on_time",
        "reported_late",
        "report_in_missed",
        "work_orders",
        "fed_back_on_time",
        "fed_back_late",
        "feedback_missed",
        "satisfied",
        "basically_satisfied",
        "dissatisfied",
        "declines",
        "reopens",
        "escalations",
        "rating_sum",
        "ratings",
    ),
    "community": (
        "whistles_blown",
        "whistles_closed",
        "escalations",
        "volunteers_served",
        "residents",
        "branch_grade_points",
        "branches_audited",
        "cadence_met",
        "cadence_required",
        "rectified_on_time",
        "rectified_late",
        "rectifications_overdue",
        "rating_sum",
        "ratings",
    ),
}
FACTS["street"] = FACTS["community"]


# Formulas --------------------------------------------------------------------------------------


class NotApplicable(Exception):
    """A formula divided by zero: the unit has nothing to be measured on for this indicator."""


def parse_formula(formula: str, names: Iterable[str]) -> ast.Expression:
    """Accept arithmetic over named facts (+ - * /, min, max, numbers); raise InvalidCommand otherwise."""
    known = set(names)
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError:
        raise InvalidCommand(f"formula {formula!r} is not an arithmetic expression") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in known and node.id not in ("min", "max"):
                raise InvalidCommand(f"formula {formula!r} names {node.id!r}, which is not a fact here")
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in ("min", "max")) or node.keywords:
                raise InvalidCommand(f"formula {formula!r} may call only min and max")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float) or isinstance(node.value, bool):
                raise InvalidCommand(f"formula {formula!r} has a constant that is not a number")
        elif not isinstance(
            node,
            ast.Expression
            | ast.BinOp
            | ast.UnaryOp
            | ast.Add
            | ast.Sub
            | ast.Mult
            | ast.Div
            | ast.USub
            | ast.Load
            | ast.Name
            | ast.Call
            | ast.Constant,
        ):
            raise InvalidCommand(f"formula {formula!r} uses {type(node).__name__}, which formulas may not")
    return tree


def evaluate(tree: ast.Expression, facts: dict[str, Decimal]) -> Decimal:
    """The formula's value in Decimal, or NotApplicable when it divides by zero."""

    def ev(node: ast.AST) -> Decimal:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return Decimal(str(node.value))
        if isinstance(node, ast.Name):
            return facts[node.id]
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand)
        if isinstance(node, ast.Call):
            values = [ev(a) for a in node.args]
            return min(values) if node.func.id == "min" else max(values)  # type: ignore[attr-defined]
        assert isinstance(node, ast.BinOp)
        left, right = ev(node.left), ev(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise NotApplicable
        return left / right

    try:
        return ev(tree)
    except (DivisionByZero, InvalidOperation):
        raise NotApplicable from None


# The scheme ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Indicator:
    code: str
    name: str
    weight: Decimal
    formula: str
    tree: ast.Expression = field(compare=False, repr=False)
    worst: Decimal
    best: Decimal

    def facts(self) -> list[str]:
        return sorted({n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name) and n.id not in ("min", "max")})

    def normalise(self, value: Decimal) -> Decimal:
        share = (value - self.worst) / (self.best - self.worst)
        return (max(Decimal(0), min(Decimal(1), share)) * HUNDRED).quantize(CENT, rounding=ROUND_HALF_UP)


def _number(value: Any, where: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidCommand(f"{where} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise InvalidCommand(f"{where} must be a finite number")
    return number


@dataclass(frozen=True)
class Scheme:
    """A version of the assessment scheme: per unit type, indicators with weights, formulas and scales."""

    version: str
    name: str
    timezone: str
    grades: tuple[tuple[str, str, Decimal], ...]
    below: tuple[str, str]
    branch_grade_points: dict[str, Decimal]
    indicators: dict[str, tuple[Indicator, ...]]
    finalisation_opens: tuple[int, int] | None = None
    """(month, day) of the assessed year from which it may be finalised; None: once the year has ended."""

    @classmethod
    def parse(cls, document: dict[str, Any]) -> Scheme:
        try:
            return cls._parse(document)
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidCommand(f"the scheme document is missing or misshapes {exc}") from None

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> Scheme:
        if d.get("kind") != "assessment_scheme":
            raise InvalidCommand('an assessment scheme document has "kind": "assessment_scheme"')
        indicators: dict[str, tuple[Indicator, ...]] = {}
        for unit_type, spec in d["unit_types"].items():
            if unit_type not in UNIT_TYPES:
                raise InvalidCommand(f"unit type {unit_type!r} is unknown; use {', '.join(UNIT_TYPES)}")
            parsed = []
            for i in spec["indicators"]:
                where = f"{unit_type}.{i['code']}"
                worst, best = _number(i["worst"], f"{where}.worst"), _number(i["best"], f"{where}.best")
                if worst == best:
                    raise InvalidCommand(f"{where}: worst and best must differ")
                weight = _number(i["weight"], f"{where}.weight")
                if weight <= 0:
                    raise InvalidCommand(f"{where}.weight must be above zero")
                tree = parse_formula(i["formula"], FACTS[unit_type])
                parsed.append(Indicator(i["code"], i["name"], weight, i["formula"], tree, worst, best))
            total = sum((p.weight for p in parsed), Decimal(0))
            if total != 100:
                raise InvalidCommand(f"{unit_type} indicator weights must add up to 100, they add up to {total}")
            if len({p.code for p in parsed}) != len(parsed):
                raise InvalidCommand(f"{unit_type} lists an indicator code twice")
            indicators[unit_type] = tuple(parsed)
        grades = tuple((g["grade"], g["name"], _number(g["at_least"], f"grade {g['grade']}")) for g in d["grades"])
        if [g[2] for g in grades] != sorted((g[2] for g in grades), reverse=True):
            raise InvalidCommand("grades are listed highest first")
        try:
            ZoneInfo(d.get("timezone", LOCAL_TIMEZONE))
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidCommand(
                f"timezone {d.get('timezone')!r} is unknown; use an IANA name such as Asia/Shanghai"
            ) from None
        return cls(
            version=check_text("version", d["version"], 40),
            name=d["name"],
            timezone=d.get("timezone", LOCAL_TIMEZONE),
            grades=grades,
            below=(d["below_grades"]["grade"], d["below_grades"]["name"]),
            branch_grade_points={
                k: _number(v, f"branch_grade_points.{k}") for k, v in d["branch_grade_points"].items()
            },
            indicators=indicators,
            finalisation_opens=_opens(d.get("finalisation_opens", "year_end")),
        )

    def opens_at(self, year: int) -> datetime:
        """When the year's assessment may be finalised: local midnight of the scheme's date, or at New Year."""
        if self.finalisation_opens is None:
            return year_end(year, self.timezone)
        month, day = self.finalisation_opens
        return datetime(year, month, day, tzinfo=ZoneInfo(self.timezone))

    def grade_for(self, total: Decimal) -> str:
        for grade, _name, at_least in self.grades:
            if total >= at_least:
                return grade
        return self.below[0]


def _opens(value: Any) -> tuple[int, int] | None:
    """The scheme's finalisation_opens: "year_end" (the default), or "MM-DD" of the assessed year."""
    if value == "year_end":
        return None
    try:
        month, day = (int(part) for part in str(value).split("-"))
        datetime(2024, month, day)  # a leap year, so 02-29 is a date
        if len(str(value)) != 5:
            raise ValueError
    except ValueError:
        raise InvalidCommand(
            f'finalisation_opens must be "year_end" or a date of the assessed year as "MM-DD", got {value!r}'
        ) from None
    return month, day


class AssessmentScheme(Aggregate):
    """The published versions of the assessment scheme; the newest applies from its publication on."""

    @staticmethod
    def create_id() -> UUID:
        return SCHEME_ID

    @event("Opened")
    def __init__(self, *, timestamp: datetime, meta: Meta) -> None:
        self.versions: dict[str, str] = {}

    def publish(self, document: dict[str, Any], *, timestamp: datetime, meta: Meta) -> str:
        scheme = Scheme.parse(document)
        found = new_version_digest("scheme", scheme.version, self.versions.get(scheme.version), document)
        self._published(version=scheme.version, digest=found, document=document, timestamp=timestamp, meta=meta)
        return scheme.version

    @event("Published")
    def _published(
        self, version: str, digest: str, document: dict[str, Any], *, timestamp: datetime, meta: Meta
    ) -> None:
        self.versions[version] = digest


# Two-way evaluation (双向评价) ---------------------------------------------------------------------


RATINGS = {"excellent": 5, "good": 4, "fair": 3, "poor": 2, "bad": 1}


def evaluation_id(year: int, rater: str, ratee: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"baton:evaluation:{year}:{rater}:{ratee}")


class MutualEvaluation(Aggregate):
    """One unit's yearly rating of another: communities rate departments, departments rate communities."""

    @staticmethod
    def create_id(year: int, rater: str, ratee: str) -> UUID:
        return evaluation_id(year, rater, ratee)

    @classmethod
    def rate(
        cls,
        *,
        year: int,
        rater_type: str,
        rater: str,
        ratee_type: str,
        ratee: str,
        rating: str,
        comment: str | None,
        timestamp: datetime,
        meta: Meta,
    ) -> MutualEvaluation:
        if rating not in RATINGS:
            raise InvalidCommand(f"rating {rating!r} is unknown; use one of: {', '.join(RATINGS)}")
        if (rater_type, ratee_type) not in (("community", "department"), ("department", "community")):
            raise InvalidCommand("communities rate departments, and departments rate communities")
        if year > local_year(timestamp):
            raise InvalidCommand(
                f"year {year} has not begun; rate a year once it has begun (it is {local_year(timestamp)})"
            )
        return cls(
            year=year,
            rater_type=rater_type,
            rater=rater,
            ratee_type=ratee_type,
            ratee=ratee,
            rating=rating,
            score=RATINGS[rating],
            comment=(comment or "").strip() or None,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Rated")
    def __init__(
        self,
        year: int,
        rater_type: str,
        rater: str,
        ratee_type: str,
        ratee: str,
        rating: str,
        score: int,
        comment: str | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.year, self.rater, self.ratee, self.rating = year, rater, ratee, rating


# Finalisation ----------------------------------------------------------------------------------


def assessment_id(year: int) -> UUID:
    return uuid5(NAMESPACE_URL, f"baton:assessment:{year}")


class Assessment(Aggregate):
    """A year's finalised scores, each tied to the Merkle tree of the history it was computed from.

    A finalisation is final until it is voided, with a reason, by a later event; the unit type may then be
    finalised again. Nothing is erased: both stay in the history, and `baton verify` replays both.
    """

    @staticmethod
    def create_id(year: int) -> UUID:
        return assessment_id(year)

    @event("Opened")
    def __init__(self, year: int, *, timestamp: datetime, meta: Meta) -> None:
        self.year = year
        self.finalised: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []

    @staticmethod
    def check_year_over(year: int, opens: datetime, as_of: datetime, now: datetime) -> None:
        """A year is finalised once it may be (its end, unless the scheme says otherwise), as of then or later."""
        if as_of > now:
            raise InvalidCommand(
                f"as_of {as_of.isoformat()} is in the future (it is now {now.isoformat()}); "
                "give a past cut-off, or none for now"
            )
        local = opens.isoformat(sep=" ")
        if now < opens:
            raise YearNotOver(
                f"the {year} assessment cannot be finalised before {local} ({opens.tzinfo}): until then its "
                f"scores are provisional (GET /v1/assessments/{year}) and a finalisation would fix them for good"
            )
        if as_of < opens:
            raise InvalidCommand(
                f"as_of {as_of.isoformat()} is before the {year} assessment may be finalised ({local}): that cut-off "
                "would leave out the rest of the year; give a later as_of, or none for now"
            )

    def final_unit_types(self) -> list[str]:
        """The unit types whose finalisation stands (not voided)."""
        return [record["unit_type"] for record in self.history if record["voided"] is None]

    def finalise(
        self,
        result: dict[str, Any],
        tree_size: int,
        root: str,
        *,
        opens: datetime,
        as_of: datetime,
        timestamp: datetime,
        meta: Meta,
    ) -> int:
        """Record the final score of every unit in a computed result; return how many."""
        self.check_year_over(self.year, opens, as_of, timestamp)
        unit_type = result["unit_type"]
        if unit_type in self.final_unit_types():
            raise Conflict(
                f"the {self.year} assessment of {unit_type} units is already final; "
                f"void it first (POST /v1/assessments/{self.year}/void) if it was made by mistake"
            )
        if result["events"] != tree_size:
            raise Conflict("the result was computed from another tree size than the one given")
        for unit in result["units"]:
            self._finalised(
                year=self.year,
                unit_type=unit_type,
                unit=unit["unit"],
                score=unit["total"],
                grade=unit["grade"],
                rank=unit["rank"],
                scheme_version=result["scheme_version"],
                cutoff_position=result["cutoff_position"],
                tree_size=tree_size,
                root=root,
                timestamp=timestamp,
                meta=meta,
            )
        return len(result["units"])

    @event("Finalised")
    def _finalised(
        self,
        year: int,
        unit_type: str,
        unit: str,
        score: str | None,
        grade: str | None,
        rank: int | None,
        scheme_version: str,
        cutoff_position: int,
        tree_size: int,
        root: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.finalised[f"{unit_type}:{unit}"] = {"score": score, "tree_size": tree_size}
        key = (unit_type, scheme_version, cutoff_position, tree_size, root)
        current = self.history[-1] if self.history else None
        if current is None or current["voided"] is not None or _finalisation_key(current) != key:
            current = {
                "unit_type": unit_type,
                "scheme_version": scheme_version,
                "cutoff_position": cutoff_position,
                "tree_size": tree_size,
                "root": root,
                "units": 0,
                "finalised_at": timestamp,
                "finalised_by": meta.get("actor"),
                "voided": None,
            }
            self.history.append(current)
        current["units"] += 1

    def void(self, unit_types: list[str] | None, reason: str, *, timestamp: datetime, meta: Meta) -> list[str]:
        """Void the standing finalisation of these unit types (default: all), with a reason; return them."""
        standing = self.final_unit_types()
        wanted = list(dict.fromkeys(unit_types)) if unit_types else standing
        if not wanted:
            raise NotFinal(f"no part of the {self.year} assessment is final; there is nothing to void")
        for unit_type in wanted:
            if unit_type not in standing:
                raise NotFinal(f"the {self.year} assessment of {unit_type} units is not final; nothing to void")
        why = check_text("reason", reason, 2000)
        for unit_type in wanted:
            record = next(r for r in self.history if r["unit_type"] == unit_type and r["voided"] is None)
            self._finalisation_voided(
                year=self.year,
                unit_type=unit_type,
                reason=why,
                scheme_version=record["scheme_version"],
                cutoff_position=record["cutoff_position"],
                tree_size=record["tree_size"],
                root=record["root"],
                units=record["units"],
                timestamp=timestamp,
                meta=meta,
            )
        return wanted

    @event("FinalisationVoided")
    def _finalisation_voided(
        self,
        year: int,
        unit_type: str,
        reason: str,
        scheme_version: str,
        cutoff_position: int,
        tree_size: int,
        root: str,
        units: int,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        key = (unit_type, scheme_version, cutoff_position, tree_size, root)
        for record in self.history:
            if record["voided"] is None and _finalisation_key(record) == key:
                record["voided"] = {"reason": reason, "voided_at": timestamp, "voided_by": meta.get("actor")}
        self.finalised = {k: v for k, v in self.finalised.items() if not k.startswith(f"{unit_type}:")}


def _finalisation_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record[k] for k in ("unit_type", "scheme_version", "cutoff_position", "tree_size", "root"))


# Scoring ---------------------------------------------------------------------------------------


def _positions(initial: Iterable[int] = ()) -> array[int]:
    """Event positions, 8 bytes each."""
    return array("q", initial)


class Facts:
    """The fold of the history into facts per unit for one year (the only state scoring keeps).

    Counts are kept for every unit; the positions behind them (the evidence) only for the unit type being
    scored (a street's are its communities'), as 8-byte integers, since they grow with the year's events.
    """

    PLACES = ("whistle.blown", "volunteer.registered", "branch.registered")
    """Events that say which community an aggregate belongs to, whatever their year."""

    @classmethod
    def reads(cls) -> set[str]:
        """The names of the events this fold reads: the organisation's, PLACES, and one `_aggregate__type` each."""
        handlers = {name[1:].replace("__", ".") for name in vars(cls) if name.startswith("_") and "__" in name[1:-2]}
        return {"organisation.unit_added", "organisation.department_added", *cls.PLACES, *handlers}

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

    def in_year(self, occurred_at: str) -> bool:
        return datetime.fromisoformat(occurred_at).astimezone(self.zone).year == self.year

    def add(self, unit_type: str, unit: str | None, fact: str, position: int, amount: Decimal | int = 1) -> None:
        if unit is None:
            return
        self.counts[(unit_type, unit)][fact] += Decimal(amount)
        if unit_type in self.evidenced:
            self.evidence[(unit_type, unit)][fact].append(position)

    def apply(self, e: dict[str, Any]) -> None:
        name, d, pos = f"{e['aggregate']}.{e['type']}", e["data"], e["position"]
        if name == "organisation.unit_added":
            self._unit(e)
            return
        if name == "organisation.department_added":
            self.names[("department", d["code"])] = d["name"]
            return
        if name in self.PLACES and d["community_id"]:
            self.community_of[e["aggregate_id"]] = d["community_id"]
        if not self.in_year(e["occurred_at"]):
            return
        handler = getattr(self, "_" + name.replace(".", "__"), None)
        if handler is not None:
            handler(e, d, pos)

    def _unit(self, e: dict[str, Any]) -> None:
        d = e["data"]
        key = (d["kind"], d["unit_id"])
        self.names[key] = d["name"]
        if d["kind"] == "community":
            self.street_of[d["unit_id"]] = d["parent_id"]
            self.counts[key]["residents"] = Decimal(d.get("residents") or 0)
            if "community" in self.evidenced:
                self.evidence[key]["residents"] = _positions([e["position"]])
        elif d["kind"] == "street":
            self.counts[key]

    def _community(self, aggregate_id: str) -> str | None:
        return self.community_of.get(aggregate_id)

    # Whistles --------------------------------------------------------------------------------

    def _whistle__blown(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("community", d["community_id"], "whistles_blown", pos)
        for code in d["summoned_departments"]:
            self.add("department", code, "summoned", pos)

    def _whistle__reported_in(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["department"], "reported_late" if d["late"] else "reported_on_time", pos)

    def _whistle__dispatched(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["lead_department"], "work_orders", pos)

    def _whistle__declined(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["department"], "declines", pos)

    def _whistle__fed_back(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d["department"], "fed_back_on_time" if d["on_time"] else "fed_back_late", pos)

    def _whistle__evaluated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("department", d.get("department"), d["rating"], pos)
        if d["status"] == "reopened":
            self.add("department", d.get("department"), "reopens", pos)
        if d["status"] == "closed":
            self.add("community", self._community(e["aggregate_id"]), "whistles_closed", pos)

    def _whistle__deadline_missed(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        fact = "report_in_missed" if d["step"] == "report_in" else "feedback_missed"
        for code in d["departments"]:
            self.add("department", code, fact, pos)

    def _whistle__escalated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("community", self._community(e["aggregate_id"]), "escalations", pos)
        for code in d["departments"]:
            self.add("department", code, "escalations", pos)

    # Volunteering ----------------------------------------------------------------------------

    def _volunteer__points_awarded(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        community = self._community(e["aggregate_id"])
        if community:
            points, positions = self.served[community].get(e["aggregate_id"], (Decimal(0), []))
            self.served[community][e["aggregate_id"]] = (points + Decimal(d["points"]), [*positions, pos])

    def _volunteer__award_voided(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        community = self._community(e["aggregate_id"])
        if community and e["aggregate_id"] in self.served[community]:
            points, positions = self.served[community][e["aggregate_id"]]
            self.served[community][e["aggregate_id"]] = (
                points + Decimal(d["points"]) - Decimal(d["shortfall"]),
                [*positions, pos],
            )

    # Branches --------------------------------------------------------------------------------

    def _branch__audited(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        cadence = [c for a in d["aspects"] for c in a["criteria"] if c["code"].endswith("_cadence")]
        met = sum(1 for c in cadence if not c["missed"])
        self.audits[e["aggregate_id"]] = (d["grade"], Decimal(met), Decimal(len(cadence)), pos)

    def _branch__rectification_completed(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add(
            "community",
            self._community(e["aggregate_id"]),
            "rectified_on_time" if d["on_time"] else "rectified_late",
            pos,
        )

    def _branch__rectification_overdue(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
        self.add("community", self._community(e["aggregate_id"]), "rectifications_overdue", pos)

    # Two-way evaluation ----------------------------------------------------------------------

    def _mutual_evaluation__rated(self, e: dict[str, Any], d: dict[str, Any], pos: int) -> None:
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
        if e["aggregate"] == "assessment_scheme" and e["type"] == "published":
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
        if e["aggregate"] == "assessment_scheme" and e["type"] == "published":
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
