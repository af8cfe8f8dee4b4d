"""Read models built from the events, each recording its position in the same transaction as its rows."""

from __future__ import annotations

from domain.assessment import Assessment, AssessmentScheme
from domain.branches import BranchStandard
from domain.credentials import Credentials
from domain.organisation import Organisation
from domain.privacy import PersonalData
from domain.ranking import MonthlyRanking
from domain.volunteering import PointsPolicy

NOT_PROJECTED: dict[type, str] = {
    Assessment.Opened: "the assessment aggregate's creation; scores are computed from the log",
    Assessment.Finalised: "read from the log by the assessment service and by `baton verify`",
    Assessment.FinalisationVoided: "read from the log by the assessment service and by `baton verify`",
    MonthlyRanking.Opened: "the monthly ranking aggregate's creation; rankings are counted from the log",
    MonthlyRanking.Finalised: "read from its aggregate by the assessment service, and from the log by `baton verify`",
    AssessmentScheme.Opened: "the scheme aggregate's creation",
    AssessmentScheme.Published: "read from the log by the assessment service and by `baton verify`",
    BranchStandard.Opened: "the standard aggregate's creation; versions are read by the branch board",
    Credentials.Opened: "the credentials log's creation",
    Credentials.ActorRevoked: "read by the API's token check from the credentials aggregate",
    Credentials.KeyRetired: "read by the API's token check from the credentials aggregate",
    Credentials.KeyRotated: "read by the API's token check from the credentials aggregate",
    Credentials.Open311KeyIssued: "read by the Open311 gateway's api_key check from the credentials aggregate",
    Credentials.Open311KeyRevoked: "read by the Open311 gateway's api_key check from the credentials aggregate",
    Credentials.TokenRevoked: "read by the API's token check from the credentials aggregate",
    Organisation.Founded: "the organisation's creation; the organisation is read from its aggregate",
    Organisation.CadreRegistered: "read from the organisation aggregate (GET /v1/org)",
    Organisation.CadreSeconded: "read from the organisation aggregate (GET /v1/org)",
    Organisation.BoundaryDrawn: "read from the organisation aggregate (GET /v1/org/boundaries) to place a report",
    Organisation.CategoryDefined: "read from the organisation aggregate (GET /v1/org)",
    Organisation.DepartmentAdded: "read from the organisation aggregate (GET /v1/org) and by the assessment",
    PersonalData.Erased: "the person's key is destroyed in the same transaction; reads find it gone",
    PointsPolicy.Established: "read from the points policy aggregate when points are awarded",
    PointsPolicy.PolicySet: "read from the points policy aggregate when points are awarded",
}
"""Event classes no read model handles, each with where it is read instead: a new event must be handled or listed
here."""
