"""Input shapes of the whistle steps, shared by the HTTP API and the NATS intake."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


class Strict(BaseModel):
    """Unknown fields are an error, so a typo is reported rather than ignored."""

    model_config = ConfigDict(extra="forbid")


# A fractional JSON number is refused: its binary value is rarely the decimal written (0.35 arrives as
# 0.35000000000000003), and points and money must come out to the hundredth as sent.
def decimal(max_digits: int, *, positive: bool = True, description: str | None = None) -> Any:
    """A decimal of at most max_digits digits, two after the point, as a JSON string ("12.5") or whole number."""
    whole = max_digits - 2
    if positive:
        text = rf"^0*[1-9][0-9]{{0,{whole - 1}}}(\.[0-9]{{1,2}})?$|^0\.([0-9][1-9]|[1-9][0-9]?)$"
        rule = "a decimal above zero"
    else:
        text = rf"^[0-9]{{1,{whole}}}(\.[0-9]{{1,2}})?$"
        rule = "a decimal of zero or more"
    pattern = re.compile(text)
    hint = f'use {rule} with at most {whole} digits before the point and 2 after, as a string such as "12.5"'

    def check(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema counts 630.0 as an integer
        if isinstance(value, bool) or not isinstance(value, int | str) or not pattern.fullmatch(str(value)):
            raise ValueError(f"{value!r} is not valid: {hint}")
        return value

    documented = {
        "anyOf": [
            {"type": "string", "pattern": text},
            {"type": "integer", "minimum": 1 if positive else 0, "maximum": 10**whole - 1},
        ],
        "description": f"{description} ({hint})" if description else hint[0].upper() + hint[1:] + ".",
    }
    return Annotated[Decimal, BeforeValidator(check), WithJsonSchema(documented)]


Yuan = decimal(14)


def identifier(what: str, pattern: re.Pattern[str], hint: str, example: str) -> Any:
    """The id of something new: a string of the pattern the domain requires, documented and checked up front."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not valid: {hint}")
        return value

    described = f"{hint[0].upper()}{hint[1:]}, e.g. {example}."
    documented = {"type": "string", "pattern": pattern.pattern, "description": described}
    return Annotated[str, AfterValidator(check), WithJsonSchema(documented)]


class ReporterDetails(Strict):
    """The resident who raised the case: personal data, sealed under the person's own key and erasable."""

    name: str | None = Field(None, min_length=1, max_length=100)
    phone: str | None = Field(None, min_length=3, max_length=40, pattern=r"^[0-9+()\- ]+$")
    address: str | None = Field(None, min_length=1, max_length=300)
    person_id: UUID | None = Field(
        None, description="The reporter_id of an earlier whistle (or a volunteer id), to link the same resident."
    )


class BlowWhistle(Strict):
    """吹哨: raise a case and summon departments."""

    community_id: str = Field(description="The community (社区) blowing the whistle.", max_length=63)
    category: str = Field(description="A category code from GET /v1/org.", max_length=41)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=5000)
    urgency: Literal["normal", "urgent"] = "normal"
    summoned_departments: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Department codes that must report in; empty: the category's responsible departments.",
    )
    grid_id: str | None = Field(None, max_length=63)
    location: str | None = Field(None, max_length=500)
    source: Literal["resident", "grid_patrol", "community"] | None = Field(
        None, description="Default: resident when a reporter is given, else community (grid_patrol for a grid)."
    )
    reporter: ReporterDetails | None = None


class Funding(Strict):
    """Funds that come with a department-duty matter handed to a community (费随事走)."""

    amount_yuan: Yuan
    from_department: str = Field(max_length=32)
    note: str | None = Field(None, max_length=500)


class Dispatch(Strict):
    """派单: a work order to a lead department and co-handlers."""

    lead_department: str = Field(
        max_length=63,
        description="A department code, or the whistle's own community id (needs funding for a department duty).",
    )
    co_departments: list[str] = Field(default_factory=list, max_length=20)
    due_at: AwareDatetime | None = Field(None, description="Feedback due; default from the category.")
    funding: Funding | None = None


class Decline(Strict):
    """The dispatched department says it is not its duty."""

    reason: str = Field(min_length=1, max_length=2000)


class Progress(Strict):
    """办理: a progress note."""

    note: str = Field(min_length=1, max_length=5000)


class Complete(Strict):
    """办理: handling completed."""

    summary: str = Field(min_length=1, max_length=5000)


class Feedback(Strict):
    """反馈: the result reported back."""

    result: str = Field(min_length=1, max_length=5000)
    resolved: bool


class Evaluate(Strict):
    """评价: the resident's or community's rating."""

    rating: Literal["satisfied", "basically_satisfied", "dissatisfied"]
    comment: str | None = Field(None, max_length=2000)


class DepartmentCommand(Strict):
    """Fields every command from a department system carries."""

    command_id: str = Field(
        min_length=1, max_length=200, description="Unique per command; a repeat is answered, never applied twice."
    )
    whistle_id: UUID


class ReportInCommand(DepartmentCommand):
    """应哨 over NATS: baton.dept.CODE.cmd.report_in."""


class DeclineCommand(DepartmentCommand, Decline):
    """Decline over NATS: baton.dept.CODE.cmd.decline."""


class ProgressCommand(DepartmentCommand, Progress):
    """办理 over NATS: baton.dept.CODE.cmd.progress."""


class CompleteCommand(DepartmentCommand, Complete):
    """办理 over NATS: baton.dept.CODE.cmd.complete."""


class FeedbackCommand(DepartmentCommand, Feedback):
    """反馈 over NATS: baton.dept.CODE.cmd.feedback."""


DEPARTMENT_COMMANDS: dict[str, type[DepartmentCommand]] = {
    "report_in": ReportInCommand,
    "decline": DeclineCommand,
    "progress": ProgressCommand,
    "complete": CompleteCommand,
    "feedback": FeedbackCommand,
}


class ActorBody(BaseModel):
    """Who caused an event."""

    role: str
    unit: str | None
    id: str


class EventBody(BaseModel):
    """An event as published on BATON_EVENTS and into a department's inbox."""

    position: int = Field(description="Global position in the store (also the Baton-Position header).")
    aggregate: str
    aggregate_id: str
    version: int = Field(description="The aggregate's version this event made (1 for the event that created it).")
    type: str
    occurred_at: AwareDatetime
    actor: ActorBody | None
    data: dict[str, Any] = Field(
        description="The event's fields as recorded, in the version `type_version` says (docs/events.json)."
    )
    type_version: int = Field(
        default=1,
        description=(
            "The version of the event type the data is in; absent means 1. Present only from 2 on, so the signed "
            "bytes of every version-1 event stay as they were. Upcast older versions as domain/events.py does."
        ),
    )


class OutcomeError(BaseModel):
    """Why a command was rejected, for a person to fix."""

    code: str
    message: str


class Outcome(BaseModel):
    """The one answer to each command a department sent."""

    command_id: str | None
    status: Literal["accepted", "rejected"]
    position: int | None = None
    error: OutcomeError | None = None


# Residents' reports (居民提、社区管、部门办) -----------------------------------------------------------


class MediaIn(Strict):
    """A photo: a media_url (http or https), or an upload named by its sha256 from POST /v1/media."""

    url: str | None = Field(None, max_length=2000, pattern=r"^https?://")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class RaiseReport(Strict):
    """A resident's report (民情诉求), taken down by staff (hotline transfer, walk-in, grid patrol) or filed by a
    resident's channel."""

    channel: Literal["e_station", "hotline_12345", "grid_patrol", "walk_in", "open311"]
    category: str = Field(description="A category code from GET /v1/org.", max_length=41)
    description: str = Field(min_length=1, max_length=5000)
    community_id: str | None = Field(
        None, max_length=63, description="The community; may be left out when lat/long fall in a grid's boundary."
    )
    grid_id: str | None = Field(None, max_length=63)
    address: str | None = Field(None, min_length=1, max_length=500, description="Where the problem is.")
    lat: float | None = Field(None, ge=-90, le=90, description="WGS-84 latitude of the problem.")
    long: float | None = Field(None, ge=-180, le=180, description="WGS-84 longitude of the problem.")
    media: list[MediaIn] = Field(default_factory=list, max_length=9)
    reporter: ReporterDetails | None = None


class AcceptReport(Strict):
    """社区管: the community handles the report itself."""

    due_at: AwareDatetime | None = Field(None, description="When it will be resolved; default: in 7 days.")


class ResolveReport(Strict):
    """The community reports the result it reached; the resident rates it next."""

    result: str = Field(min_length=1, max_length=2000)


class MergeReport(Strict):
    """A duplicate: it follows the open report or whistle (of the same community) it repeats."""

    into_report: str | None = Field(None, max_length=36)
    into_whistle: str | None = Field(None, max_length=36)


class CloseUnreasonable(Strict):
    """Closed as an unreasonable complaint (不合理诉求), with the reason the resident is told."""

    reason: str = Field(min_length=1, max_length=2000)


class EscalateReport(Strict):
    """吹哨: blow a whistle for the report; the report follows the whistle and closes with it."""

    title: str = Field(min_length=1, max_length=200)
    urgency: Literal["normal", "urgent"] = "normal"
    summoned_departments: list[str] = Field(default_factory=list, max_length=20)


class RecordRating(Strict):
    """回访: the rating the resident gave on the callback, or one given on their behalf (counted separately)."""

    rating: Literal["satisfied", "basically_satisfied", "dissatisfied"]
    rated_by: Literal["callback", "on_behalf"]
    comment: str | None = Field(None, max_length=2000)


class ResidentRating(Strict):
    """The resident's own rating, with their tracking code."""

    rating: Literal["satisfied", "basically_satisfied", "dissatisfied"]
    comment: str | None = Field(None, max_length=2000)
