"""The baton (考核指挥棒): assessment schemes as data (indicators whose formulas are parsed, never run as code),
two-way evaluations, and the assessment's finalisations. Scoring, the fold of the history into facts and scores,
is the read side's: projections.scoring.
"""

from __future__ import annotations

import ast
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
        "reports_raised",
        "reports_unreasonable",
        "reports_merged",
        "reports_responded_on_time",
        "reports_resolved",
        "residents_rated",
        "residents_satisfied",
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
