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
