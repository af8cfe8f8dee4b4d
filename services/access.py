"""Who is acting and what they may touch."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from domain.errors import OutOfScope

if TYPE_CHECKING:
    from domain.organisation import Organisation
    from domain.whistle import Whistle


class Role(StrEnum):
    """Roles a bearer token can carry; --unit bounds what the actor may touch."""

    ADMIN = "admin"
    DISTRICT = "district"  # 区 / 县
    STREET = "street"  # 街道 / 镇
    COMMUNITY = "community"  # 社区两委
    GRID = "grid"  # 网格员
    DEPARTMENT = "department"  # 职能部门
    ORGANISER = "organiser"
    VOLUNTEER = "volunteer"  # 志愿者
    INSPECTOR = "inspector"  # 组织部门 / 巡视
    AUDITOR = "auditor"  # 考核组
    SECRETARY = "secretary"  # 党支部书记: --unit is the branch id
    SYSTEM = "system"  # Baton itself (the deadline watcher); never issued as a token
    RESIDENT = "resident"  # 居民: through the e-station or an Open311 client's key; never issued as a token


UNIT_ROLES = {Role.DISTRICT, Role.STREET, Role.COMMUNITY, Role.GRID}
SEE_EVERYTHING = {Role.ADMIN, Role.INSPECTOR, Role.AUDITOR, Role.SYSTEM}


@dataclass(frozen=True)
class Actor:
    """The person or system behind a command."""

    role: Role
    unit: str | None
    id: str

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role.value, "unit": self.unit, "id": self.id}


SYSTEM_ACTOR = Actor(Role.SYSTEM, None, "deadline-watcher")


@dataclass(frozen=True)
class Context:
    """Who is acting, under which correlation id, and with which idempotency key."""

    actor: Actor
    correlation_id: str
    idempotency_key: str | None = None
    fingerprint: str = ""

    def meta(self) -> dict[str, Any]:
        return {"actor": self.actor.as_dict(), "correlation_id": self.correlation_id}


def require_role(actor: Actor, *roles: Role, action: str) -> None:
    """Raise OutOfScope unless the actor has one of roles."""
    if actor.role not in roles:
        allowed = ", ".join(r.value for r in roles if r is not Role.SYSTEM)
        raise OutOfScope(f"only {allowed} may {action}; this token's role is {actor.role.value}")


def check_community_scope(org: Organisation, actor: Actor, community_id: str, action: str) -> None:
    """Raise OutOfScope unless the actor's unit is, holds or lies in the community (a grid)."""
    if actor.role is Role.ADMIN:
        return
    if actor.role in UNIT_ROLES and actor.unit:
        if actor.role is Role.GRID:
            if actor.unit in org.units and org.units[actor.unit]["parent"] == community_id:
                return
        elif actor.unit in org.units and org.is_within(community_id, actor.unit):
            return
    raise OutOfScope(
        f"{actor.role.value} {actor.unit or ''} may not {action} for community {community_id!r}".replace("  ", " ")
    )


def check_acts_for_community(org: Organisation, actor: Actor, community_id: str, action: str, *roles: Role) -> None:
    """Raise OutOfScope unless the actor has one of roles and acts for this community (an organiser: its own)."""
    require_role(actor, *roles, action=action)
    if actor.role is Role.ORGANISER:
        if actor.unit != community_id:
            raise OutOfScope(f"an organiser acts for their own community ({actor.unit}), not {community_id!r}")
        return
    check_community_scope(org, actor, community_id, action)


def acting_handler(actor: Actor, whistle: Whistle) -> str:
    """The handler identity the actor takes on this whistle: its department code, or its own community."""
    if actor.role is Role.DEPARTMENT and actor.unit:
        return actor.unit
    if actor.role is Role.COMMUNITY and actor.unit == whistle.community_id:
        return whistle.community_id
    raise OutOfScope(
        "department steps are taken with the department's own token "
        "(or the community's, when the work order went to the community itself)"
    )


def can_read_whistle(org: Organisation, actor: Actor, community_id: str, departments: list[str]) -> bool:
    """True when the actor may see a whistle of this community that concerns these departments."""
    if actor.role in SEE_EVERYTHING:
        return True
    if actor.role is Role.DEPARTMENT:
        return actor.unit in departments
    if actor.role in UNIT_ROLES and actor.unit in org.units:
        if actor.role is Role.GRID:
            return org.units[actor.unit]["parent"] == community_id
        return community_id in org.units and org.is_within(community_id, actor.unit)
    return False


NO_PERSONAL_DATA = {Role.AUDITOR, Role.INSPECTOR}


def sees_personal_data(actor: Actor) -> bool:
    """Residents' names, phones and addresses are for those who serve them, not for assessors."""
    return actor.role not in NO_PERSONAL_DATA


def article(word: str) -> str:
    """'an organiser', 'a street': for messages that name a role."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


# Reads ------------------------------------------------------------------------------------------
# Who may list or see what: the HTTP routes (and any other reader) ask these, never decide it themselves.

SCORECARD_READERS = {
    Role.ADMIN,
    Role.DISTRICT,
    Role.STREET,
    Role.COMMUNITY,
    Role.INSPECTOR,
    Role.AUDITOR,
    Role.DEPARTMENT,
}
ASSESSMENT_READERS = {
    Role.ADMIN,
    Role.DISTRICT,
    Role.STREET,
    Role.COMMUNITY,
    Role.DEPARTMENT,
    Role.INSPECTOR,
    Role.AUDITOR,
}
AUDIT_READERS = {Role.ADMIN, Role.DISTRICT, Role.INSPECTOR, Role.AUDITOR}
COUNTY_READERS = {*SEE_EVERYTHING, Role.DISTRICT}


def check_reads(actor: Actor, allowed: set[Role], what: str) -> None:
    """Raise OutOfScope unless the actor's role may read what (a read bounded by role alone)."""
    if actor.role not in allowed:
        raise OutOfScope(f"{article(actor.role.value)} token cannot read {what}")


def whistle_board_scope(
    org: Organisation, actor: Actor, community: str | None, department: str | None
) -> dict[str, str | None]:
    """The whistle board filters that bound what the actor lists; asking for a filter outside them is refused."""
    if actor.role in SEE_EVERYTHING:
        return {}
    if actor.role is Role.DEPARTMENT:
        if department not in (None, actor.unit):
            raise OutOfScope(f"a department sees its own whistles only; use department={actor.unit}")
        return {"department": actor.unit}
    if actor.role in (Role.COMMUNITY, Role.GRID) and actor.unit in org.units:
        own = actor.unit if actor.role is Role.COMMUNITY else org.units[actor.unit]["parent"]
        if community not in (None, own):
            raise OutOfScope(f"this token sees community {own} only")
        return {"community": own}
    if actor.role in (Role.STREET, Role.DISTRICT) and actor.unit in org.units:
        kind = org.units[actor.unit]["kind"]
        if kind not in ("street", "district", "city"):
            raise OutOfScope(
                f"unit {actor.unit} is a {kind}; {article(actor.role.value)} token needs a street or district"
            )
        return {"scope_column": f"{kind}_id", "scope_value": actor.unit}
    raise OutOfScope(f"{article(actor.role.value)} token cannot read whistles")


def check_reads_scorecard(actor: Actor, department: str | None) -> None:
    """Raise OutOfScope unless the actor may read this department's scorecard (None: every department's)."""
    check_reads(actor, SCORECARD_READERS, "department scorecards")
    if actor.role is Role.DEPARTMENT and department != actor.unit:
        raise OutOfScope(f"a department reads its own scorecard only: /v1/scorecards/{actor.unit}")


def check_reads_volunteering(org: Organisation, actor: Actor, community_id: str) -> None:
    """Raise OutOfScope unless the actor is staff over the community, or one of its organisers or volunteers."""
    org.community(community_id)
    if actor.role in SEE_EVERYTHING:
        return
    if actor.role in (Role.ORGANISER, Role.VOLUNTEER) and actor.unit == community_id:
        return
    if actor.role in UNIT_ROLES and actor.unit in org.units:
        unit = org.units[actor.unit]
        if (unit["kind"] == "grid" and unit["parent"] == community_id) or org.is_within(community_id, actor.unit):
            return
    raise OutOfScope(f"community {community_id}'s volunteering is outside this token's scope")


def check_reads_volunteer(org: Organisation, actor: Actor, volunteer_id: str, community_id: str) -> None:
    """Raise OutOfScope unless the actor is the volunteer, or reads their community's volunteering (not a volunteer)."""
    if actor.role is Role.VOLUNTEER and actor.id == volunteer_id:
        return
    if actor.role is Role.VOLUNTEER:
        raise OutOfScope("a volunteer reads their own points only")
    check_reads_volunteering(org, actor, community_id)


def check_reads_redemptions(org: Organisation, actor: Actor, community: str | None, volunteer: str | None) -> None:
    """Raise OutOfScope unless the actor may list these redemptions: a volunteer their own, staff a community's."""
    if actor.role is Role.VOLUNTEER:
        if volunteer != actor.id:
            raise OutOfScope(f"a volunteer reads their own redemptions: ?volunteer={actor.id}")
    elif community:
        check_reads_volunteering(org, actor, community)
    elif actor.role not in SEE_EVERYTHING:
        raise OutOfScope("name the community: ?community=ID")


def check_reads_party_service(org: Organisation, actor: Actor, community: str | None) -> None:
    """Raise OutOfScope unless the actor reads the community's party service, or county-wide (district and up)."""
    if community:
        check_reads_volunteering(org, actor, community)
    elif actor.role not in COUNTY_READERS:
        raise OutOfScope("name the community: ?community=ID (county-wide views need a district token)")


def check_reads_county_participation(actor: Actor) -> None:
    """Raise OutOfScope unless the actor may read every community's participation (district and up)."""
    if actor.role not in COUNTY_READERS:
        raise OutOfScope("county-wide participation is for district, admin, inspector and auditor tokens")


def district_communities(org: Organisation, actor: Actor) -> set[str] | None:
    """The communities a district token's county-wide views cover (its own district's); None: no such bound."""
    if actor.role is not Role.DISTRICT:
        return None
    return {u for u, unit in org.units.items() if unit["kind"] == "community" and org.is_within(u, actor.unit or "")}


def report_communities(org: Organisation, actor: Actor) -> tuple[str, ...] | None:
    """The communities whose residents' reports the actor may read (None: every one); staff of the unit, those above
    it, and inspectors and auditors; a grid worker reads its community's. Departments read the whistles instead."""
    if actor.role in SEE_EVERYTHING:
        return None
    require_role(actor, *UNIT_ROLES, action="read residents' reports (departments: read the whistles they are on)")
    unit = org.units.get(actor.unit or "")
    if unit is None:
        return ()
    if unit["kind"] == "grid":
        return (unit["parent"],)
    return tuple(
        sorted(u for u, row in org.units.items() if row["kind"] == "community" and org.is_within(u, unit["id"]))
    )


def branch_scope(org: Organisation, actor: Actor) -> dict[str, str | None]:
    """The branch board columns and values that bound the rows the actor may see ({}: every row)."""
    if actor.role in SEE_EVERYTHING:
        return {}
    if actor.role is Role.SECRETARY:
        return {"branch_id": actor.unit}
    if actor.role is Role.DEPARTMENT:
        return {"parent_kind": "department", "parent_id": actor.unit}
    if actor.role in UNIT_ROLES and actor.unit in org.units:
        kind = org.units[actor.unit]["kind"]
        if kind == "grid":
            return {"community_id": org.units[actor.unit]["parent"]}
        if kind in ("community", "street", "district"):
            return {f"{kind}_id": actor.unit}
        if kind == "city":
            return {}
    raise OutOfScope(f"{article(actor.role.value)} token cannot read branches")


def narrowed_branch_scope(org: Organisation, actor: Actor, **asked: str | None) -> dict[str, str | None]:
    """The actor's branch scope narrowed by the query; a filter outside the scope is refused, never widened."""
    filters = {**branch_scope(org, actor)}
    for column, value in asked.items():
        if value is not None:
            if filters.get(column) not in (None, value):
                raise OutOfScope(f"this token sees {column} {filters[column]} only")
            filters[column] = value
    return filters


def check_in_branch_scope(scope: dict[str, str | None], row: dict[str, Any]) -> None:
    """Raise OutOfScope unless the branch row lies within the scope branch_scope() gave."""
    if any(row.get(column) != value for column, value in scope.items()):
        raise OutOfScope("this branch is outside your scope")


def department_system(code: str) -> Actor:
    """The actor a department system's NATS command acts as: the department, bound to its own code."""
    return Actor(Role.DEPARTMENT, code, f"nats:{code}")
