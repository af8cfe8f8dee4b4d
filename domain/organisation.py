"""The organisation: the four-level linkage (四级联动), departments, the category catalogue, cadres."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.common import (
    CATEGORY_CODE,
    DEPARTMENT_CODE,
    UNIT_ID,
    Meta,
    check_identifier,
    check_text,
)
from domain.errors import DuplicateEntry, InvalidCommand, NotFound, Thing, UnknownReference
from domain.geo import check_geometry, contains

ORGANISATION_ID: UUID = uuid5(NAMESPACE_URL, "baton:organisation")


class UnitKind(StrEnum):
    """Levels of the four-level linkage, plus the grid below the community."""

    CITY = "city"  # 市
    DISTRICT = "district"  # 区 / 县
    STREET = "street"  # 街道 / 镇
    COMMUNITY = "community"  # 社区
    GRID = "grid"  # 网格


PARENT_KIND: dict[UnitKind, UnitKind | None] = {
    UnitKind.CITY: None,
    UnitKind.DISTRICT: UnitKind.CITY,
    UnitKind.STREET: UnitKind.DISTRICT,
    UnitKind.COMMUNITY: UnitKind.STREET,
    UnitKind.GRID: UnitKind.COMMUNITY,
}


class Duty(StrEnum):
    """Whose duty a category of matter is, under the admission list (社区工作事项准入制度)."""

    COMMUNITY = "community"  # 社区职责: the community handles it
    DEPARTMENT = "department"  # 部门职责: may not be pushed onto a community unfunded


class DeadlineClass(StrEnum):
    """Default deadline sets from the field; every figure can be overridden per category."""

    UTILITIES = "utilities"  # water, power, gas: feedback within 24 h
    NORMAL = "normal"  # feedback within 7 days
    COMPLEX = "complex"  # feedback within 15 days


DEFAULT_DEADLINES: dict[DeadlineClass, dict[str, int]] = {
    DeadlineClass.UTILITIES: {"report_in_minutes": 120, "feedback_hours": 24},
    DeadlineClass.NORMAL: {"report_in_minutes": 24 * 60, "feedback_hours": 7 * 24},
    DeadlineClass.COMPLEX: {"report_in_minutes": 24 * 60, "feedback_hours": 15 * 24},
}
URGENT_DEADLINES: dict[str, int] = {"report_in_minutes": 30, "feedback_hours": 2}


def resolve_deadlines(
    deadline_class: str,
    overrides: dict[str, int | None] | None = None,
) -> dict[str, dict[str, int]]:
    """Return {"normal": {...}, "urgent": {...}} for a category from its class and overrides."""
    try:
        normal = dict(DEFAULT_DEADLINES[DeadlineClass(deadline_class)])
    except ValueError:
        allowed = ", ".join(c.value for c in DeadlineClass)
        raise InvalidCommand(f"deadline_class {deadline_class!r} is unknown; use one of: {allowed}") from None
    urgent = dict(URGENT_DEADLINES)
    overrides = overrides or {}
    for key, target, field in (
        ("report_in_minutes", normal, "report_in_minutes"),
        ("feedback_hours", normal, "feedback_hours"),
        ("urgent_report_in_minutes", urgent, "report_in_minutes"),
        ("urgent_feedback_hours", urgent, "feedback_hours"),
    ):
        value = overrides.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or value <= 0:
            raise InvalidCommand(f"{key} must be a whole number above zero, got {value!r}")
        target[field] = value
    return {"normal": normal, "urgent": urgent}


class Organisation(Aggregate):
    """Reference data of one deployment (a county), kept as events."""

    @staticmethod
    def create_id() -> UUID:
        return ORGANISATION_ID

    @event("Founded")
    def __init__(self, name: str, *, timestamp: datetime, meta: Meta) -> None:
        self.name = name
        self.units: dict[str, dict[str, Any]] = {}
        self.departments: dict[str, dict[str, Any]] = {}
        self.categories: dict[str, dict[str, Any]] = {}
        self.cadres: dict[str, dict[str, Any]] = {}
        self.boundaries: dict[str, dict[str, Any]] = {}

    # Units -----------------------------------------------------------------

    def add_unit(
        self,
        unit_id: str,
        kind: str,
        parent_id: str | None,
        name: str,
        residents: int | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Add a city, district, street, community or grid under its parent."""
        check_identifier("unit id", unit_id, UNIT_ID, "use 1-63 lower-case letters, digits or '-'")
        self.check_unit_is_new(unit_id)
        unit_kind = self.check_unit_kind(kind)
        self.check_parent(unit_kind, parent_id)
        if residents is not None and (not isinstance(residents, int) or residents < 0):
            raise InvalidCommand(f"residents must be a whole number of zero or more, got {residents!r}")
        self._unit_added(
            unit_id=unit_id,
            kind=unit_kind.value,
            parent_id=parent_id,
            name=check_text("name", name, 200),
            residents=residents,
            timestamp=timestamp,
            meta=meta,
        )

    @event("UnitAdded")
    def _unit_added(
        self,
        unit_id: str,
        kind: str,
        parent_id: str | None,
        name: str,
        residents: int | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.units[unit_id] = {
            "id": unit_id,
            "kind": kind,
            "parent": parent_id,
            "name": name,
            "residents": residents,
        }

    def check_unit_is_new(self, unit_id: str) -> None:
        if unit_id in self.units:
            raise DuplicateEntry(f"unit {unit_id!r} already exists")

    @staticmethod
    def check_unit_kind(kind: str) -> UnitKind:
        try:
            return UnitKind(kind)
        except ValueError:
            allowed = ", ".join(k.value for k in UnitKind)
            raise InvalidCommand(f"unit kind {kind!r} is unknown; use one of: {allowed}") from None

    def check_parent(self, kind: UnitKind, parent_id: str | None) -> None:
        expected = PARENT_KIND[kind]
        if parent_id is None:
            # A district may be the top of a deployment that does not model its city.
            if expected is None or kind is UnitKind.DISTRICT:
                return
            raise InvalidCommand(f"a {kind.value} needs a parent {expected.value}")
        parent = self.units.get(parent_id)
        if parent is None:
            raise UnknownReference(f"parent unit {parent_id!r} does not exist; add it first", Thing.UNIT, parent_id)
        if expected is None:
            raise InvalidCommand(f"a {kind.value} sits under no other unit; leave parent out")
        if parent["kind"] != expected.value:
            raise InvalidCommand(
                f"a {kind.value} must sit under a {expected.value}, but {parent_id!r} is a {parent['kind']}"
            )

    def unit(self, unit_id: str) -> dict[str, Any]:
        """Return the unit, or raise NotFound."""
        try:
            return self.units[unit_id]
        except KeyError:
            raise NotFound(f"unit {unit_id!r} does not exist", Thing.UNIT, unit_id) from None

    def ancestors(self, unit_id: str) -> list[str]:
        """Return the ids above unit_id, nearest first."""
        chain: list[str] = []
        parent = self.unit(unit_id)["parent"]
        while parent is not None:
            chain.append(parent)
            parent = self.units[parent]["parent"]
        return chain

    def is_within(self, unit_id: str, ancestor_id: str) -> bool:
        """True when unit_id is ancestor_id or lies below it."""
        return unit_id == ancestor_id or ancestor_id in self.ancestors(unit_id)

    def community(self, unit_id: str) -> dict[str, Any]:
        """Return the community unit, or raise UnknownReference when unit_id is not one."""
        unit = self.units.get(unit_id)
        if unit is None or unit["kind"] != UnitKind.COMMUNITY:
            raise UnknownReference(f"{unit_id!r} is not a community", Thing.COMMUNITY, unit_id)
        return unit

    # Boundaries ------------------------------------------------------------

    def draw_boundary(self, unit_id: str, geometry: Any, *, timestamp: datetime, meta: Meta) -> None:
        """Draw (or redraw) a community's or grid's boundary, so a report's coordinates find where it belongs."""
        unit = self.unit(unit_id)
        if unit["kind"] not in (UnitKind.COMMUNITY, UnitKind.GRID):
            raise InvalidCommand(f"boundaries are drawn for communities and grids; {unit_id!r} is a {unit['kind']}")
        self._boundary_drawn(unit_id=unit_id, geometry=check_geometry(geometry), timestamp=timestamp, meta=meta)

    @event("BoundaryDrawn")
    def _boundary_drawn(self, unit_id: str, geometry: dict[str, Any], *, timestamp: datetime, meta: Meta) -> None:
        self.boundaries = {**getattr(self, "boundaries", {}), unit_id: geometry}

    def locate(self, lat: float, long: float) -> tuple[str, str | None] | None:
        """(community, grid) whose boundary holds the point: a grid's first, then a community's; None when none does."""
        boundaries = getattr(self, "boundaries", {})
        for unit_id, geometry in sorted(boundaries.items()):
            unit = self.units[unit_id]
            if unit["kind"] == UnitKind.GRID and contains(geometry, lat, long):
                return unit["parent"], unit_id
        for unit_id, geometry in sorted(boundaries.items()):
            if self.units[unit_id]["kind"] == UnitKind.COMMUNITY and contains(geometry, lat, long):
                return unit_id, None
        return None

    # Departments -----------------------------------------------------------

    def add_department(self, code: str, name: str, *, timestamp: datetime, meta: Meta) -> None:
        """Add a functional department (职能部门) with its code."""
        check_identifier(
            "department code",
            code,
            DEPARTMENT_CODE,
            "use 2-32 upper-case letters, digits or '_', starting with a letter",
        )
        if code in self.departments:
            raise DuplicateEntry(f"department {code!r} already exists")
        self._department_added(code=code, name=check_text("name", name, 200), timestamp=timestamp, meta=meta)

    @event("DepartmentAdded")
    def _department_added(self, code: str, name: str, *, timestamp: datetime, meta: Meta) -> None:
        self.departments[code] = {"code": code, "name": name}

    def check_departments_exist(self, codes: list[str]) -> None:
        unknown = [c for c in codes if c not in self.departments]
        if unknown:
            raise UnknownReference(f"unknown department code(s): {', '.join(unknown)}", Thing.DEPARTMENT, unknown[0])

    # Categories ------------------------------------------------------------

    def define_category(
        self,
        code: str,
        name: str,
        duty: str,
        departments: list[str],
        deadline_class: str,
        deadline_overrides: dict[str, int | None] | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Define or redefine a category: its duty, responsible departments and deadlines."""
        check_identifier(
            "category code",
            code,
            CATEGORY_CODE,
            "use 2-41 lower-case letters, digits or '_', starting with a letter",
        )
        try:
            duty_value = Duty(duty).value
        except ValueError:
            raise InvalidCommand(f"duty {duty!r} is unknown; use 'community' or 'department'") from None
        if len(set(departments)) != len(departments):
            raise InvalidCommand("departments lists a code more than once")
        self.check_departments_exist(departments)
        if duty_value == Duty.DEPARTMENT and not departments:
            raise InvalidCommand("a department-duty category must name its responsible department(s)")
        self._category_defined(
            code=code,
            name=check_text("name", name, 200),
            duty=duty_value,
            departments=list(departments),
            deadline_class=deadline_class,
            deadlines=resolve_deadlines(deadline_class, deadline_overrides),
            timestamp=timestamp,
            meta=meta,
        )

    @event("CategoryDefined")
    def _category_defined(
        self,
        code: str,
        name: str,
        duty: str,
        departments: list[str],
        deadline_class: str,
        deadlines: dict[str, dict[str, int]],
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.categories[code] = {
            "code": code,
            "name": name,
            "duty": duty,
            "departments": departments,
            "deadline_class": deadline_class,
            "deadlines": deadlines,
        }

    def category(self, code: str) -> dict[str, Any]:
        """Return the category, or raise UnknownReference."""
        try:
            return self.categories[code]
        except KeyError:
            raise UnknownReference(f"category {code!r} does not exist", Thing.CATEGORY, code) from None

    # Cadres ----------------------------------------------------------------

    def register_cadre(
        self,
        cadre_id: str,
        name: str,
        department: str | None,
        unit_id: str | None,
        title: str | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Register a cadre (干部) who belongs to a department or a unit."""
        check_identifier("cadre id", cadre_id, UNIT_ID, "use 1-63 lower-case letters, digits or '-'")
        if cadre_id in self.cadres:
            raise DuplicateEntry(f"cadre {cadre_id!r} already exists")
        if (department is None) == (unit_id is None):
            raise InvalidCommand("a cadre belongs to exactly one of: a department, a unit")
        if department is not None:
            self.check_departments_exist([department])
        if unit_id is not None and unit_id not in self.units:
            raise UnknownReference(f"unit {unit_id!r} does not exist", Thing.UNIT, unit_id)
        self._cadre_registered(
            cadre_id=cadre_id,
            name=check_text("name", name, 200),
            department=department,
            unit_id=unit_id,
            title=(title or "").strip() or None,
            timestamp=timestamp,
            meta=meta,
        )

    @event("CadreRegistered")
    def _cadre_registered(
        self,
        cadre_id: str,
        name: str,
        department: str | None,
        unit_id: str | None,
        title: str | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.cadres[cadre_id] = {
            "id": cadre_id,
            "name": name,
            "department": department,
            "unit": unit_id,
            "title": title,
            "seconded_to": None,
        }

    def second_cadre(self, cadre_id: str, community_id: str, *, timestamp: datetime, meta: Meta) -> None:
        """Second a department cadre part-time to a community (兼职干部到社区报到)."""
        cadre = self.cadres.get(cadre_id)
        if cadre is None:
            raise NotFound(f"cadre {cadre_id!r} does not exist", Thing.CADRE, cadre_id)
        self.community(community_id)
        if cadre["department"] is None:
            raise InvalidCommand(
                f"cadre {cadre_id!r} belongs to a unit, not a department; only department cadres are seconded"
            )
        if cadre["seconded_to"] == community_id:
            raise DuplicateEntry(f"cadre {cadre_id!r} is already seconded to {community_id!r}")
        self._cadre_seconded(
            cadre_id=cadre_id,
            community_id=community_id,
            department=cadre["department"],
            timestamp=timestamp,
            meta=meta,
        )

    @event("CadreSeconded")
    def _cadre_seconded(
        self, cadre_id: str, community_id: str, department: str, *, timestamp: datetime, meta: Meta
    ) -> None:
        self.cadres[cadre_id]["seconded_to"] = community_id
