"""HTTP request and response bodies (the OpenAPI document is generated from these)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from domain.common import CATEGORY_CODE, DEPARTMENT_CODE, UNIT_ID
from services.schemas import Strict, decimal, identifier

Points = decimal(8)
Hours = decimal(6)
UnitId = identifier("unit id", UNIT_ID, "use 1-63 lower-case letters, digits or '-'", "tishu")
CadreId = identifier("cadre id", UNIT_ID, "use 1-63 lower-case letters, digits or '-'", "cadre-001")
DepartmentCode = identifier(
    "department code", DEPARTMENT_CODE, "use 2-32 upper-case letters, digits or '_', starting with a letter", "PSB"
)
CategoryCode = identifier(
    "category code", CATEGORY_CODE, "use 2-41 lower-case letters, digits or '_', starting with a letter", "drainage"
)
ABSENT: dict[str, Any] = {"json_schema_extra": lambda schema: schema.pop("default")}
"""For an optional field whose default (None) is no value it may be given: the document shows no default."""
PERSONAL = "Personal data: null once the person's data is erased (and always for auditors and inspectors)."


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable reason, e.g. step_out_of_order.")
    message: str = Field(description="What went wrong and what to do about it, for a person.")


class ErrorBody(BaseModel):
    """Every error answer has this shape."""

    error: ErrorDetail


class WhistleCreated(BaseModel):
    whistle_id: str
    reporter_id: str | None = Field(
        None, description="The reporter's person id (erasure requests and linking later reports name it)."
    )
    position: int | None = Field(None, description="Store position of the last event written.")


class StepAccepted(BaseModel):
    whistle_id: str
    status: str
    position: int | None = None


class Accepted(BaseModel):
    """An organisation change was recorded."""

    model_config = {"extra": "allow"}
    position: int | None = None


class UnitIn(Strict):
    id: UnitId
    kind: Literal["city", "district", "street", "community", "grid"]
    parent: str | None = Field(None, max_length=63)
    name: str = Field(min_length=1, max_length=200)
    residents: int | None = Field(None, ge=0)


class DepartmentIn(Strict):
    code: DepartmentCode = Field(description="Used in NATS subjects.")
    name: str = Field(min_length=1, max_length=200)


class CategoryIn(Strict):
    code: CategoryCode
    name: str = Field(min_length=1, max_length=200)
    duty: Literal["community", "department"] = Field(
        description="community: 社区职责; department: 部门职责 (admission list: not pushed onto communities unfunded)."
    )
    departments: list[str] = Field(default_factory=list, max_length=20)
    deadline_class: Literal["utilities", "normal", "complex"] = "normal"
    report_in_minutes: int | None = Field(None, gt=0)
    feedback_hours: int | None = Field(None, gt=0)
    urgent_report_in_minutes: int | None = Field(None, gt=0)
    urgent_feedback_hours: int | None = Field(None, gt=0)


class CadreIn(Strict):
    """A cadre belongs to exactly one of: a department, a unit."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["department"]}, {"required": ["unit"]}]})

    id: CadreId
    name: str = Field(min_length=1, max_length=200)
    # Optional but not nullable: one named is one present, as the oneOf above says.
    department: str = Field(None, max_length=32, description="A department code.", **ABSENT)
    unit: str = Field(None, max_length=63, description="A unit id.", **ABSENT)
    title: str | None = Field(None, max_length=200)


class SecondmentIn(Strict):
    community_id: str = Field(max_length=63)


class Unit(BaseModel):
    id: str
    kind: str
    parent: str | None
    name: str
    residents: int | None


class Department(BaseModel):
    code: str
    name: str


class Deadlines(BaseModel):
    report_in_minutes: int
    feedback_hours: int


class Category(BaseModel):
    code: str
    name: str
    duty: str
    departments: list[str]
    deadline_class: str
    deadlines: dict[str, Deadlines]


class Cadre(BaseModel):
    id: str
    name: str
    department: str | None
    unit: str | None
    title: str | None
    seconded_to: str | None


class OrgTree(BaseModel):
    units: list[Unit]
    departments: list[Department]
    categories: list[Category]
    cadres: list[Cadre]


class WhistleSummary(BaseModel):
    whistle_id: str
    community_id: str
    street_id: str | None
    district_id: str | None
    grid_id: str | None
    category: str
    duty: str
    title: str
    urgency: str
    source: str
    status: str
    summoned: list[str]
    reported: list[str]
    lead_department: str | None
    co_departments: list[str]
    dispatch_round: int
    report_in_due: str
    feedback_due: str | None
    overdue: bool
    escalation_level: int
    escalated_to: str | None
    declines: int
    reopens: int
    rating: str | None
    resolved: bool | None
    blown_at: str
    updated_at: str
    version: int
    last_position: int


class TimelineEntry(BaseModel):
    position: int
    version: int
    type: str
    occurred_at: str
    actor: dict[str, Any] | None
    data: dict[str, Any]


class ReporterOut(BaseModel):
    """The resident who raised the case; their details are null once erased (or for auditors and inspectors)."""

    person_id: str
    name: str | None
    phone: str | None
    address: str | None
    erased: bool


class WhistleDetail(WhistleSummary):
    description: str
    location: str | None
    reporter: ReporterOut | None = None
    missed_report_in: list[str]
    timeline: list[TimelineEntry]


class WhistlePage(BaseModel):
    items: list[WhistleSummary]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null at the end.")


class Scorecard(BaseModel):
    department: str
    summoned: int
    report_in: dict[str, int]
    work_orders: int
    handling: dict[str, int]
    ratings: dict[str, int]
    declines: int
    reopens: int
    escalations: int
    report_in_on_time_pct: str | None = Field(description="On-time report-ins / (report-ins + missed), in %.")
    handled_on_time_pct: str | None = Field(description="Work orders fed back on time / (fed back + missed), in %.")
    satisfaction_pct: str | None = Field(description="(Satisfied + basically satisfied) / evaluations, in %.")
    resident_ratings: dict[str, int] = Field(
        description="The evaluations residents gave themselves (a report's tracking code): counted among ratings too."
    )
    resident_satisfaction_pct: str | None = Field(
        None, description="(Satisfied + basically satisfied) / the residents' own evaluations, in %."
    )
    mean_report_in_minutes: float | None
    mean_handling_hours: float | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    instance: str | None = Field(None, description="This instance's name (BATON_INSTANCE, default host:port).")
    roles: list[str] = Field(default_factory=list, description="The singleton roles this instance holds now.")
    leases: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Every singleton's lease: holder (instance/pid), epoch, seconds until it expires, held for.",
    )
    unheld: list[str] = Field(default_factory=list, description="Roles nobody holds: the status is degraded.")
    store: dict[str, Any]
    nats: dict[str, Any]
    relay: dict[str, Any]
    projections: dict[str, dict[str, Any]]
    notary: dict[str, Any] | None = Field(None, description="Merkle tree lag, last signed checkpoint size, origin.")
    projector: dict[str, Any] | None = Field(
        None, description="The process of the read models and the notary (running, pid, restarts), if one runs."
    )


# Volunteering ---------------------------------------------------------------------------------


class VolunteerIn(Strict):
    """Register a volunteer with the community where they live (在职党员到社区报到 for party members)."""

    community_id: str = Field(max_length=63)
    name: str = Field(min_length=1, max_length=100)
    phone: str | None = Field(None, max_length=40)
    party_member: bool = False
    branch: str | None = Field(None, max_length=200, description="An in-service party member's own branch.")
    work_unit: str | None = Field(None, max_length=200)


class ActivityIn(Strict):
    community_id: str = Field(max_length=63)
    title: str = Field(min_length=1, max_length=200)
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    place: str = Field(min_length=1, max_length=300)
    capacity: int = Field(gt=0, le=10_000)
    points_per_hour: Points
    max_hours_per_person: decimal(6, description="Cap on credited hours.")


class SignupIn(Strict):
    volunteer_id: str


class AttendanceIn(Strict):
    volunteer_id: str
    hours: Hours


class VoidIn(Strict):
    reason: str = Field(min_length=1, max_length=2000, description="The complaint that voids the credit.")


class RewardIn(Strict):
    community_id: str = Field(max_length=63)
    name: str = Field(min_length=1, max_length=200)
    cost: decimal(10, description="Points per item.")
    stock: int = Field(ge=0, le=1_000_000)


class RestockIn(Strict):
    quantity: int = Field(gt=0, le=1_000_000)


class RedemptionIn(Strict):
    reward_id: str


class PledgeIn(Strict):
    year: int = Field(ge=2000, le=2100)
    hours: Hours | None = None
    service: str | None = Field(None, max_length=500)


class PointsPolicyIn(Strict):
    kind: Literal["never", "year_end", "after_years", "after_days"] = Field(
        description="year_end: points lapse at the end of the year they were earned in (+ years - 1)."
    )
    years: int | None = Field(None, gt=0, le=50)
    days: int | None = Field(None, gt=0, le=36_500)
    timezone: str = "Asia/Shanghai"


class LedgerEntry(BaseModel):
    position: int
    version: int
    kind: Literal["award", "void", "redeem", "expire"]
    points: str = Field(description="Signed; the entries sum to the balance.")
    balance: str
    ref: str | None
    note: str | None
    occurred_at: str


class VolunteerSummary(BaseModel):
    volunteer_id: str
    community_id: str
    name: str | None = Field(
        description="Personal data: null once the person's data is erased (or for auditors and inspectors)."
    )
    party_member: bool
    branch: str | None
    work_unit: str | None
    balance: str
    earned: str
    voided: str
    redeemed: str
    expired: str
    hours: str
    activities: int
    next_expiry_at: str | None
    registered_at: str


class VolunteerDetail(VolunteerSummary):
    entries: list[LedgerEntry]
    erased: bool = Field(False, description="True once the volunteer's personal data was erased on request.")


class LeaderboardRow(VolunteerSummary):
    rank: int


class RosterEntry(BaseModel):
    volunteer_id: str
    name: str | None = Field(
        description="Personal data: null once the person's data is erased (or for auditors and inspectors)."
    )
    signed_up_at: str
    hours: str | None
    credited_hours: str | None
    points: str | None
    confirmed_at: str | None
    voided: bool


class ActivitySummary(BaseModel):
    activity_id: str
    community_id: str
    title: str
    starts_at: str
    ends_at: str
    place: str
    capacity: int
    points_per_hour: str
    max_hours_per_person: str
    signups: int
    confirmed: int
    status: str
    voided_reason: str | None


class ActivityDetail(ActivitySummary):
    roster: list[RosterEntry]


class RewardOut(BaseModel):
    reward_id: str
    community_id: str
    name: str
    cost: str
    stock: int
    handed_out: int


class RedemptionOut(BaseModel):
    redemption_id: str
    volunteer_id: str
    reward_id: str
    reward_name: str
    community_id: str
    points: str
    occurred_at: str
    position: int


class PartyService(BaseModel):
    volunteer_id: str
    name: str | None = Field(
        description="Personal data: null once the person's data is erased (or for auditors and inspectors)."
    )
    community_id: str
    branch: str | None
    pledged_hours: str | None
    pledged_service: str | None
    served_hours: str
    fulfilled: bool | None


class BranchService(BaseModel):
    branch: str
    year: int
    members: int
    pledged: int
    fulfilled: int
    pledged_hours: str
    served_hours: str


class Participation(BaseModel):
    community_id: str
    year: int
    residents: int | None
    volunteers_served: int
    per_1000_residents: str | None


# Branches -------------------------------------------------------------------------------------


class BranchIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    parent_kind: Literal["community", "department", "enterprise"]
    parent_id: str = Field(max_length=200, description="Community id, department code, or the enterprise's name.")
    community_id: str | None = Field(None, max_length=63, description="Where an enterprise branch sits (optional).")
    members: int = Field(ge=3, le=10_000)
    established_on: date


class MembersIn(Strict):
    members: int = Field(ge=3, le=10_000)


class MeetingIn(Strict):
    kind: Literal["general_meeting", "committee_meeting", "group_meeting", "party_lecture", "themed_party_day"] = Field(
        description="三会一课: 支部党员大会, 支部委员会, 党小组会, 党课; and 主题党日."
    )
    held_on: date
    attendance: int = Field(gt=0, le=10_000)
    topic: str = Field(min_length=1, max_length=500)


class DuesIn(Strict):
    period: str = Field(
        pattern=r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])$", description="The month the dues are for, e.g. 2026-03."
    )
    amount_yuan: decimal(12)
    members_paid: int = Field(gt=0, le=10_000)
    collected_on: date


class FindingIn(Strict):
    text: str = Field(min_length=1, max_length=2000)
    criterion: str | None = None
    due_on: date | None = Field(None, description="Default: the standard's rectification_days after the audit.")


class AuditIn(Strict):
    scores: dict[str, decimal(8, positive=False)] = Field(
        description="A score for every auditor criterion of the standard in force."
    )
    findings: list[FindingIn] = Field(default_factory=list, max_length=100)


class EvidenceIn(Strict):
    evidence: str = Field(min_length=1, max_length=5000)


class BranchRow(BaseModel):
    branch_id: str
    name: str
    parent_kind: str
    parent_id: str
    community_id: str | None
    street_id: str | None
    district_id: str | None
    members: int
    established_on: str
    grade: str | None
    total: str | None
    standard_version: str | None
    last_audit_on: str | None
    audits: int
    open_rectifications: int
    overdue_rectifications: int
    escalation_level: int
    escalated_to: str | None


class CadencePeriod(BaseModel):
    period: str
    held: int
    status: Literal["met", "missed", "pending"]


class Cadence(BaseModel):
    meeting: str
    name: str
    every: str
    at_least: int
    periods: list[CadencePeriod]
    met_so_far: bool


class AuditOut(BaseModel):
    audit_id: str
    standard_version: str
    audited_on: str
    total: str
    grade: str
    previous_grade: str | None
    aspects: list[dict[str, Any]]
    auditor: str | None
    position: int


class RectificationOut(BaseModel):
    rectification_id: str
    audit_id: str
    criterion: str | None
    text: str
    due_on: str
    status: Literal["open", "overdue", "completed"]
    evidence: str | None
    completed_on: str | None
    on_time: bool | None
    escalated_to: str | None


class BranchBoardRow(BranchRow):
    cadence_this_quarter: dict[str, Literal["met", "missed", "pending"]] = Field(
        description="Per meeting kind, this quarter so far: met, a period missed, or the current period pending."
    )


class BranchDetail(BranchRow):
    cadence_this_quarter: list[Cadence]
    audit_history: list[AuditOut]
    rectifications: list[RectificationOut]
    recent_meetings: list[dict[str, Any]]
    dues: list[dict[str, Any]]


class BranchOverview(BaseModel):
    branches: int
    by_grade: dict[str, int]
    open_rectifications: int
    overdue_rectifications: int


class StandardVersion(BaseModel):
    version: str
    digest: str
    published_at: str
    position: int


class EraseIn(Strict):
    """A resident's request to delete their personal data (PIPL art. 47)."""

    reason: str = Field(min_length=1, max_length=500, description="Who asked and how, e.g. the ticket number.")


class PersonOut(BaseModel):
    """What Baton holds about a person: never the personal data itself."""

    person_id: str
    community_id: str
    erased: bool
    erased_at: str | None = None
    reason: str | None = None
    position: int | None = Field(None, description="Store position of the erasure event, in the answer to an erasure.")


class RevocationIn(Strict):
    """Name exactly one of token (that token stops working) or actor (every token issued to it so far)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["token"]}, {"required": ["actor"]}]})

    # Optional but not nullable: one named is one present, as the oneOf above says.
    token: str = Field(None, min_length=1, max_length=4096, description="The bearer token to revoke.", **ABSENT)
    actor: str = Field(None, min_length=1, max_length=200, description="An actor id (the token's sub).", **ABSENT)
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_target(self) -> RevocationIn:
        if (self.token is None) == (self.actor is None):
            raise ValueError("name exactly one of token or actor")
        return self


class RevocationOut(BaseModel):
    revoked: Literal["token", "actor"]
    jti: str | None = None
    expires_at: str | None = None
    actor_id: str | None = None
    issued_before: str | None = None
    position: int | None = None


# Residents' reports ---------------------------------------------------------------------------------


class ReportCreated(BaseModel):
    report_id: str
    tracking_code: str = Field(
        description="Give it to the resident (once): it opens GET /v1/track/{code} and their rating; Baton keeps only "
        "a hash of it."
    )
    community_id: str
    position: int | None = None


class ReportStep(BaseModel):
    report_id: str
    status: str
    whistle_id: str | None = None
    position: int | None = None


class ReportReporter(BaseModel):
    """The resident who raised it; details null once erased, or for readers who do not see personal data."""

    person_id: str
    name: str | None
    phone: str | None
    address: str | None


class ReportSummary(BaseModel):
    report_id: str
    community_id: str
    grid_id: str | None
    channel: str
    category: str
    description: str
    address: str | None
    lat: float | None
    long: float | None
    status: str
    due_at: str | None
    overdue: bool
    responded_on_time: bool | None
    whistle_id: str | None
    whistle_status: str | None
    merged_into: dict[str, str] | None
    rating: str | None
    rated_by: str | None
    raised_at: str
    updated_at: str
    raised_position: int


class ReportEntry(BaseModel):
    position: int
    version: int
    type: str
    occurred_at: str
    role: str | None = Field(description="The role that acted (resident, community, system...), never a name.")
    data: dict[str, Any]


class ReportDetail(ReportSummary):
    media: list[dict[str, Any]]
    attributes: dict[str, str]
    reporter: ReportReporter | None = None
    result: str | None
    reason: str | None
    triage_due: str
    timeline: list[ReportEntry]
    whistle_timeline: list[dict[str, Any]] = Field(default_factory=list)


class ReportPage(BaseModel):
    items: list[ReportSummary]
    next_cursor: str | None = None


class SimilarCases(BaseModel):
    reports: list[ReportSummary]
    whistles: list[dict[str, Any]]


class ReportRates(BaseModel):
    """Per community; unreasonable complaints and duplicates are counted apart and left out of the rates (as 12345)."""

    community_id: str
    raised: int
    unreasonable: int
    merged: int
    counted: int
    responded_on_time: int
    resolved: int
    rated_by_resident: int
    satisfied_by_resident: int
    rated_on_behalf: int
    satisfied_on_behalf: int
    response_rate: str | None
    resolution_rate: str | None
    satisfaction_rate: str | None = Field(description="The residents' own ratings (theirs or on the callback) only.")


class ReportTracked(BaseModel):
    """A report as its resident sees it with the tracking code: no personal data."""

    report_id: str
    status: str
    category: str
    community_id: str
    raised_at: str
    updated_at: str
    due_at: str | None
    result: str | None
    reason: str | None
    rating: str | None
    whistle_id: str | None
    whistle_status: str | None
    steps: list[dict[str, str]]


class PhotoKept(BaseModel):
    """An uploaded photo, kept under its hash: name it in a report's media as {"sha256": ...}."""

    sha256: str
    content_type: str
    bytes: int
