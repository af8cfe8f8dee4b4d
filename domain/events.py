"""Every event Baton records: its public name, its version and its fields, and the upcasters between versions.

An event's name is `aggregate.event` (snake case of the classes, e.g. `whistle.reported_in`). Its version is the
class's `class_version` (1 when not set). Changing an event's fields means raising `class_version` and adding
`upcast_vN_vM(state)` static methods, as the eventsourcing library does: stored events are never rewritten, and
an old one is upcast when read. An upcaster adds, drops or renames the event's own fields and sets plain JSON
values (str, int, float, bool, None, lists and dicts of them): it runs on the decoded state when an aggregate
loads and on the published `data` when a read model, the scoring or an auditor reads the event.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from eventsourcing.domain import CanMutateAggregate

from domain.assessment import Assessment, AssessmentScheme, MutualEvaluation
from domain.branches import Branch, BranchStandard
from domain.credentials import Credentials
from domain.organisation import Organisation
from domain.privacy import PersonalData
from domain.ranking import MonthlyRanking
from domain.report import Report
from domain.volunteering import Activity, PointsPolicy, Reward, Volunteer
from domain.whistle import Whistle

AGGREGATES: tuple[type, ...] = (
    Organisation,
    Whistle,
    Report,
    Volunteer,
    Activity,
    Reward,
    PointsPolicy,
    Branch,
    BranchStandard,
    AssessmentScheme,
    MutualEvaluation,
    Assessment,
    MonthlyRanking,
    PersonalData,
    Credentials,
)
META_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic", "meta"})
"""Attributes every event has that are not its data: they go into the envelope's own fields."""
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name: str) -> str:
    """ReportedIn -> reported_in."""
    return _CAMEL.sub("_", name).lower()


def public_name(qualname: str) -> str:
    """Whistle.ReportedIn -> whistle.reported_in."""
    parts = qualname.split(".")
    aggregate = snake(parts[-2]) if len(parts) > 1 else "event"
    return f"{aggregate}.{snake(parts[-1])}"


def name_of(event: type) -> str:
    """The class Whistle.ReportedIn -> whistle.reported_in: readers name events by class, never by a typed string."""
    return public_name(event.__qualname__)


F = TypeVar("F", bound=Callable[..., Any])


def handles(*events: type) -> Callable[[F], F]:
    """Mark a method as the handler of these event classes (renaming a class renames what it handles)."""

    def mark(fn: F) -> F:
        fn.handles = tuple(name_of(event) for event in events)  # type: ignore[attr-defined]
        return fn

    return mark


def handlers_of(cls: type) -> dict[str, Callable[..., Any]]:
    """Event name -> the method of cls marked to handle it."""
    found: dict[str, Callable[..., Any]] = {}
    for attr in dir(cls):
        for name in getattr(getattr(cls, attr), "handles", ()):
            if name in found:
                raise TypeError(f"{cls.__name__} handles {name} twice")
            found[name] = getattr(cls, attr)
    return found


def event_classes() -> list[tuple[str, str, type]]:
    """(aggregate, event, class) for every event Baton records."""
    found = []
    for aggregate in AGGREGATES:
        for name, value in vars(aggregate).items():
            if isinstance(value, type) and issubclass(value, CanMutateAggregate) and name not in ("Event", "Created"):
                found.append((snake(aggregate.__name__), snake(name), value))
    return found


def version_of(cls: type) -> int:
    """The event class's version: its class_version, 1 when it has none."""
    return int(getattr(cls, "class_version", 1))


def fields_of(cls: type) -> dict[str, str]:
    """The event's own fields and their types, as written in its class."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        hints.update(getattr(klass, "__annotations__", {}))
    return {
        name: hint.__name__ if isinstance(hint, type) else str(hint)
        for name, hint in hints.items()
        if name not in META_FIELDS and not str(hint).startswith("ClassVar") and not name.startswith("_")
    }


def catalogue() -> dict[str, dict[str, Any]]:
    """Every event's name, version and fields: what docs/events.json and each corpus record."""
    return {
        f"{aggregate}.{event}": {"version": version_of(cls), "fields": fields_of(cls)}
        for aggregate, event, cls in sorted(event_classes(), key=lambda found: (found[0], found[1]))
    }


def upcasters(cls: type, from_version: int) -> list[Callable[[dict[str, Any]], None]]:
    """The upcasters that take a stored state of FROM_VERSION to the class's version, in order."""
    steps = []
    for version in range(from_version, version_of(cls)):
        step = getattr(cls, f"upcast_v{version}_v{version + 1}", None)
        if step is None:
            missing = f"upcast_v{version}_v{version + 1}"
            raise TypeError(f"{cls.__qualname__} is version {version_of(cls)} but has no {missing}")
        steps.append(step)
    return steps


def upcast(cls: type, from_version: int, data: dict[str, Any]) -> dict[str, Any]:
    """A copy of an event's data of FROM_VERSION, upcast to the class's version."""
    state = dict(data)
    for step in upcasters(cls, from_version):
        step(state)
    return state
