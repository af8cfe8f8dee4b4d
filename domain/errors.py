"""Named errors the domain raises when a command breaks a rule; each tells a person what to fix."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Thing(StrEnum):
    """The kinds of things a command or a query names by id."""

    UNIT = "unit"
    COMMUNITY = "community"
    DEPARTMENT = "department"
    CATEGORY = "category"
    CADRE = "cadre"
    WHISTLE = "whistle"
    REPORT = "report"
    PHOTO = "photo"
    MONTH = "month"
    VOLUNTEER = "volunteer"
    ACTIVITY = "activity"
    REWARD = "reward"
    BRANCH = "branch"
    RECTIFICATION = "rectification"
    STANDARD_VERSION = "standard version"
    PERSON = "person"
    YEAR = "year"
    TREE_SIZE = "tree size"
    POSITION = "position"


class DomainError(Exception):
    """A command broke a rule of the domain."""

    code = "domain_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCommand(DomainError):
    """The command can never succeed as written: fix the input."""

    code = "invalid_command"


class Conflict(DomainError):
    """The command does not fit the current state: look at the state and try another step."""

    code = "conflict"


class OutOfScope(DomainError):
    """The actor may not act on this thing."""

    code = "out_of_scope"


class Missing(DomainError):
    """Something named by id does not exist; thing and ref say what, so an adapter can tell where it was named."""

    def __init__(self, message: str, thing: Thing | None = None, ref: object = None) -> None:
        super().__init__(message)
        self.thing, self.ref = thing, None if ref is None else str(ref)


class NotFound(Missing):
    """The thing the command names does not exist."""

    code = "not_found"


class StepOutOfOrder(Conflict):
    """A whistle step was asked for that its current status does not allow."""

    code = "step_out_of_order"

    def __init__(self, step: str, status: str, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        nxt = ", ".join(allowed) if allowed else "none: the whistle is closed"
        super().__init__(f"cannot {step.replace('_', ' ')}: the whistle is '{status}'; steps allowed next: {nxt}")
        self.step = step
        self.status = status
        self.allowed = allowed


class AlreadyReportedIn(Conflict):
    """The department has already reported in to this whistle."""

    code = "already_reported_in"


class NotSummoned(OutOfScope):
    """Only a summoned department may report in."""

    code = "not_summoned"


class NotHandler(OutOfScope):
    """Only the department the work order is dispatched to may handle it."""

    code = "not_handler"


class AdmissionListViolation(InvalidCommand):
    """A department-duty matter was pushed onto a community without funding (权随责走、费随事走)."""

    code = "admission_list_unfunded"


class DuplicateEntry(Conflict):
    """Something with that identity already exists."""

    code = "duplicate"


class UnknownReference(InvalidCommand, Missing):
    """The command names a unit, department or category that does not exist."""

    code = "unknown_reference"


class YearNotOver(Conflict):
    """An assessment year was to be finalised before it may be: it has not ended (or the scheme's date come)."""

    code = "year_not_over"


class MonthNotOver(Conflict):
    """A month's ranking was to be finalised before the month ended (Asia/Shanghai)."""

    code = "month_not_over"


class NotFinal(Conflict):
    """A finalisation was to be voided that does not stand."""

    code = "not_final"
