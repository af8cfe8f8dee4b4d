"""Authorization matrix: every route of the app x every role x in scope / out of scope -> the expected answer."""

# The routes come from the app's own route table, so a new endpoint without a row in POLICY fails the suite.
# Each row says, per role, how far it reaches (see Reach); a role left out of a row is refused (403) there.

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.common import FIND
from api.dashboard import DEMO_ACTORS
from api.tokens import ISSUABLE, Tokens
from infra.bootstrap import Container
from infra.clock import ManualClock
from services.access import SYSTEM_ACTOR, Context, Role
from services.reports import resident
from tests.conftest import ADMIN as ROOT
from tests.conftest import START, Auth, seed_county
from tests.scenarios import AUDITOR_FULL, DOCUMENT, SCHEME

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

DOCS = {"GET /openapi.json", "GET /docs", "GET /docs/oauth2-redirect", "GET /redoc"}
DASHBOARD = {
    "GET /",
    "GET /signin",
    "GET /board",
    "GET /whistle",
    "GET /rankings",
    "GET /scorecards",
    "GET /reports",
    "GET /audit",
    "GET /volunteering",
    "GET /branches",
    "GET /assessment",
    "GET /map",
    "GET /demo/actors",
    "GET /assets/htmx.min.js",
    "GET /assets/echarts.min.js",
    "GET /assets/dashboard.js",
    "GET /assets/dashboard.css",
}
"""The dashboard's page shells and assets (undocumented, like /metrics): no data in them; the browser reads the data
from the API with the signed-in token, so each page shows what that token may read and the API's refusal otherwise."""
PUBLIC = {"GET /health", "GET /metrics", *DASHBOARD}  # operations and page shells: no personal data, no token
BY_CODE = {"GET /v1/track/{code}", "POST /v1/track/{code}/rating"}
"""A resident's routes: the tracking code in the path is the key, a token neither helps nor is needed."""
OPEN311 = {
    "GET /open311/v2/discovery.{format}",
    "GET /open311/v2/services.{format}",
    "GET /open311/v2/services/{service_code}.{format}",
    "GET /open311/v2/requests.{format}",
    "POST /open311/v2/requests.{format}",
    "GET /open311/v2/requests/{service_request_id}.{format}",
    "GET /open311/v2/tokens/{token}.{format}",
}
"""Open311 GeoReport v2: public reads, and a POST whose key is its app's api_key (a form field); a bearer token
neither helps nor is needed. Bodies are form-encoded; errors are Open311's, in the path's format (.json or .xml)."""


class Reach(StrEnum):
    """How far a role reaches on a route."""

    ANY = "any"  # allowed, whatever its unit
    IN = "in"  # allowed over the resource, 403 outside it
    SELF = "self"  # a volunteer: allowed for themself only, 403 for a peer of the same community too
    NARROW = "narrow"  # allowed; outside the resource the answer holds none of it (or is a 403)
    BLIND = "blind"  # allowed, but no unit of this role sees the resource in the answer (or gets a 403)


ANY, IN, SELF, NARROW, BLIND = Reach.ANY, Reach.IN, Reach.SELF, Reach.NARROW, Reach.BLIND
Leak = Callable[["World", httpx.Response], list[str]]


@dataclass(frozen=True)
class Req:
    """A valid request for a route; {name} in the path, query and string values are world ids."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    by_role: Mapping[Role, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One request to a route and who may send it; leak names what a narrowed answer must not hold."""

    req: Req
    allow: Mapping[Role, Reach]
    leak: Leak | None = None
    label: str = ""


def get(path: str, **query: str) -> Req:
    """A GET request."""
    return Req("GET", path, query)


def post(path: str, body: Any = None, **by_role: Any) -> Req:
    """A POST request (by_role: another body for a role, e.g. department=...)."""
    return Req("POST", path, body=body, by_role={Role(k): v for k, v in by_role.items()})


def put(path: str, body: Any = None) -> Req:
    """A PUT request."""
    return Req("PUT", path, body=body)


PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
SQUARE = {"type": "Polygon", "coordinates": [[[118.49, 31.55], [118.50, 31.55], [118.50, 31.56], [118.49, 31.55]]]}


def mentions(*names: str) -> Leak:
    """The named world ids that appear in the answer."""
    return lambda world, r: [n for n in names if world.ids[n] in r.text]


def names(*units: str) -> Leak:
    """The named units that appear as values in the answer."""
    return lambda world, r: [u for u in units if f'"{u}"' in r.text]


def counts_branches(world: World, r: httpx.Response) -> list[str]:
    """The overview counts branches of the street asked for."""
    return [f"{r.json()['branches']} branch(es)"] if r.status_code == 200 and r.json()["branches"] else []


# Who may do what --------------------------------------------------------------------------------

ROLES = [Role(r) for r in ISSUABLE]
EVERYONE = {role: ANY for role in ROLES}
ADMIN = {Role.ADMIN: ANY}
SEE_ALL = {Role.ADMIN: ANY, Role.INSPECTOR: ANY, Role.AUDITOR: ANY}
OVER_COMMUNITY = {Role.DISTRICT: IN, Role.STREET: IN, Role.COMMUNITY: IN}
COMMUNITY_READERS = {**SEE_ALL, **OVER_COMMUNITY, Role.GRID: IN, Role.ORGANISER: IN, Role.VOLUNTEER: IN}
ORGANISERS = {Role.ADMIN: ANY, Role.COMMUNITY: IN, Role.ORGANISER: IN}
HANDLER = {Role.DEPARTMENT: IN}
BRANCH_OWN = {Role.ADMIN: ANY, Role.SECRETARY: IN}
AUDIT_TRAIL = {**SEE_ALL, Role.DISTRICT: ANY}
LEAGUE_TABLES = {**SEE_ALL, Role.DISTRICT: ANY, Role.STREET: ANY, Role.COMMUNITY: ANY, Role.DEPARTMENT: ANY}
TRIAGERS = {Role.ADMIN: ANY, **OVER_COMMUNITY}
REPORT = {
    "channel": "walk_in",
    "category": "drainage",
    "description": "雨水井堵塞",
    "community_id": "tishu",
    "address": "提署路",
}
OPEN311_REQUEST = {
    "api_key": "{open311_key}",
    "jurisdiction_id": "dangtu",
    "service_code": "drainage",
    "lat": "31.551",
    "long": "118.499",
    "description": "雨水井堵塞",
    "first_name": "桂英",
    "last_name": "李",
    "phone": "13905551234",
}
"""Inside tishu-g1's boundary (SQUARE, drawn by build_world); jurisdiction_id, as the world has two districts."""
TISHU_WHISTLES = tuple(
    f"{step}_whistle" for step in ("read", "report", "dispatch", "decline", "progress", "complete", "feedback")
)

POLICY: dict[str, tuple[Case, ...]] = {
    # Operations and organisation: the tree is reference data for every token; only admins change it.
    "GET /health": (Case(get("/health"), EVERYONE),),
    "GET /metrics": (Case(get("/metrics"), EVERYONE),),
    **{route: (Case(get(route.split(" ", 1)[1]), EVERYONE),) for route in sorted(DASHBOARD)},
    "GET /v1/org": (Case(get("/v1/org"), EVERYONE),),
    "POST /v1/org/units": (
        Case(
            post("/v1/org/units", {"id": "matrix", "kind": "community", "parent": "gushu", "name": "矩阵社区"}), ADMIN
        ),
    ),
    "PUT /v1/org/units/{unit_id}/boundary": (Case(put("/v1/org/units/tishu-g1/boundary", SQUARE), ADMIN),),
    "GET /v1/org/boundaries": (Case(get("/v1/org/boundaries"), EVERYONE),),
    "POST /v1/org/departments": (Case(post("/v1/org/departments", {"code": "MATRIX", "name": "矩阵局"}), ADMIN),),
    "POST /v1/org/categories": (
        Case(post("/v1/org/categories", {"code": "matrix", "name": "矩阵", "duty": "community"}), ADMIN),
    ),
    "POST /v1/org/cadres": (
        Case(post("/v1/org/cadres", {"id": "cadre-m", "name": "陈刚", "department": "HOUSING"}), ADMIN),
    ),
    "POST /v1/org/cadres/{cadre_id}/secondment": (
        Case(post("/v1/org/cadres/cadre-1/secondment", {"community_id": "tishu"}), ADMIN),
    ),
    # The six steps: the community (or a level above) blows and dispatches; only the summoned or dispatched
    # department takes its own steps; the community evaluates.
    "POST /v1/whistles": (
        Case(
            post(
                "/v1/whistles",
                {"community_id": "tishu", "category": "drainage", "title": "积水", "description": "楼道积水"},
            ),
            {Role.ADMIN: ANY, **OVER_COMMUNITY, Role.GRID: IN},
        ),
    ),
    "POST /v1/whistles/{whistle_id}/report-in": (Case(post("/v1/whistles/{report_whistle}/report-in"), HANDLER),),
    "POST /v1/whistles/{whistle_id}/dispatch": (
        Case(
            post("/v1/whistles/{dispatch_whistle}/dispatch", {"lead_department": "HOUSING"}),
            {Role.ADMIN: ANY, **OVER_COMMUNITY},
        ),
    ),
    "POST /v1/whistles/{whistle_id}/decline": (
        Case(post("/v1/whistles/{decline_whistle}/decline", {"reason": "不属本部门职责"}), HANDLER),
    ),
    "POST /v1/whistles/{whistle_id}/progress": (
        Case(post("/v1/whistles/{progress_whistle}/progress", {"note": "已到场"}), HANDLER),
    ),
    "POST /v1/whistles/{whistle_id}/complete": (
        Case(post("/v1/whistles/{complete_whistle}/complete", {"summary": "已疏通"}), HANDLER),
    ),
    "POST /v1/whistles/{whistle_id}/feedback": (
        Case(post("/v1/whistles/{feedback_whistle}/feedback", {"result": "已解决", "resolved": True}), HANDLER),
    ),
    "POST /v1/whistles/{whistle_id}/evaluate": (
        Case(
            post("/v1/whistles/{evaluate_whistle}/evaluate", {"rating": "satisfied"}),
            {Role.ADMIN: ANY, Role.COMMUNITY: IN},
        ),
    ),
    "GET /v1/whistles": (
        Case(
            get("/v1/whistles", community="tishu", department="HOUSING"),
            {**SEE_ALL, Role.DISTRICT: NARROW, Role.STREET: NARROW, Role.COMMUNITY: IN, Role.GRID: IN, **HANDLER},
            mentions(*TISHU_WHISTLES),
        ),
    ),
    "GET /v1/whistles/{whistle_id}": (
        Case(get("/v1/whistles/{read_whistle}"), {**SEE_ALL, **OVER_COMMUNITY, Role.GRID: IN, **HANDLER}),
    ),
    # Residents' reports: staff of the community (or above, or its grid) take them down and read them; the
    # community (or a level above) triages; departments see the whistles a report is escalated into, not the report.
    "POST /v1/reports": (Case(post("/v1/reports", REPORT), {Role.ADMIN: ANY, **OVER_COMMUNITY, Role.GRID: IN}),),
    "GET /v1/reports": (
        Case(
            get("/v1/reports", community="tishu"), {**SEE_ALL, **OVER_COMMUNITY, Role.GRID: IN}, mentions("read_report")
        ),
    ),
    "GET /v1/reports/rates": (
        Case(
            get("/v1/reports/rates"),
            {**SEE_ALL, Role.DISTRICT: NARROW, Role.STREET: NARROW, Role.COMMUNITY: NARROW, Role.GRID: NARROW},
            names("tishu"),
        ),
    ),
    "GET /v1/reports/{report_id}": (
        Case(get("/v1/reports/{read_report}"), {**SEE_ALL, **OVER_COMMUNITY, Role.GRID: IN}),
    ),
    "GET /v1/reports/{report_id}/similar": (
        Case(get("/v1/reports/{read_report}/similar"), {**SEE_ALL, **OVER_COMMUNITY, Role.GRID: IN}),
    ),
    **{
        f"POST /v1/reports/{{report_id}}/{action}": (
            Case(post(f"/v1/reports/{{{action.replace('-', '_')}_report}}/{action}", body), TRIAGERS),
        )
        for action, body in (
            ("accept", {}),
            ("progress", {"note": "已联系物业"}),
            ("resolve", {"result": "已疏通"}),
            ("merge", {"into_report": "{read_report}"}),
            ("close-unreasonable", {"reason": "不属公共事务"}),
            ("escalate", {"title": "雨水井堵塞", "summoned_departments": ["HOUSING"]}),
            ("rating", {"rating": "satisfied", "rated_by": "callback"}),
        )
    },
    "POST /v1/media": (
        Case(post("/v1/media", PHOTO), {Role.ADMIN: ANY, **{r: ANY for r in OVER_COMMUNITY}, Role.GRID: ANY}),
    ),
    "GET /v1/media/{sha256}": (
        Case(
            get("/v1/media/{photo}"),
            {**SEE_ALL, **{r: ANY for r in OVER_COMMUNITY}, Role.GRID: ANY, Role.DEPARTMENT: ANY},
        ),
    ),
    "GET /v1/rankings/{month}": (
        Case(get("/v1/rankings/2026-01", unit_type="street"), {**LEAGUE_TABLES, Role.DEPARTMENT: ANY}),
    ),
    "GET /v1/changes": (Case(get("/v1/changes", wait="0"), EVERYONE),),
    "GET /v1/track/{code}": (Case(get("/v1/track/{read_code}"), EVERYONE),),
    "POST /v1/track/{code}/rating": (Case(post("/v1/track/{rate_code}/rating", {"rating": "satisfied"}), EVERYONE),),
    # Department scorecards are county-wide league tables; a department reads its own only.
    "GET /v1/scorecards": (
        Case(get("/v1/scorecards"), {**SEE_ALL, Role.DISTRICT: ANY, Role.STREET: ANY, Role.COMMUNITY: ANY}),
    ),
    "GET /v1/scorecards/{code}": (Case(get("/v1/scorecards/HOUSING"), {**LEAGUE_TABLES, **HANDLER}),),
    # Volunteering: organisers act for their own community, staff over it; a volunteer acts for themself.
    "POST /v1/volunteers": (
        Case(
            post("/v1/volunteers", {"community_id": "tishu", "name": "赵磊"}),
            {**ORGANISERS, Role.STREET: IN, Role.DISTRICT: IN},
        ),
    ),
    "POST /v1/volunteers/{volunteer_id}/redemptions": (
        Case(post("/v1/volunteers/{volunteer}/redemptions", {"reward_id": "{reward}"}), {Role.VOLUNTEER: SELF}),
    ),
    "POST /v1/volunteers/{volunteer_id}/pledges": (
        Case(
            post("/v1/volunteers/{volunteer}/pledges", {"year": 2026, "hours": "12"}),
            {Role.ADMIN: ANY, Role.COMMUNITY: IN, Role.VOLUNTEER: SELF},
        ),
    ),
    "POST /v1/activities": (
        Case(
            post(
                "/v1/activities",
                {
                    "community_id": "tishu",
                    "title": "义务理发",
                    "starts_at": "2026-03-10T09:00:00+08:00",
                    "ends_at": "2026-03-10T12:00:00+08:00",
                    "place": "敬老院",
                    "capacity": 10,
                    "points_per_hour": "10",
                    "max_hours_per_person": "3",
                },
            ),
            ORGANISERS,
        ),
    ),
    "POST /v1/activities/{activity_id}/signups": (
        Case(
            post("/v1/activities/{signup_activity}/signups", {"volunteer_id": "{volunteer}"}),
            {**ORGANISERS, Role.VOLUNTEER: SELF},
        ),
    ),
    "POST /v1/activities/{activity_id}/attendance": (
        Case(
            post("/v1/activities/{attendance_activity}/attendance", {"volunteer_id": "{volunteer}", "hours": "2"}),
            ORGANISERS,
        ),
    ),
    "POST /v1/activities/{activity_id}/void": (
        Case(post("/v1/activities/{void_activity}/void", {"reason": "居民投诉未到场"}), ORGANISERS),
    ),
    "POST /v1/rewards": (
        Case(post("/v1/rewards", {"community_id": "tishu", "name": "毛巾", "cost": "3", "stock": 5}), ORGANISERS),
    ),
    "POST /v1/rewards/{reward_id}/restock": (Case(post("/v1/rewards/{reward}/restock", {"quantity": 2}), ORGANISERS),),
    "PUT /v1/communities/{community_id}/points-policy": (
        Case(
            Req("PUT", "/v1/communities/tishu/points-policy", body={"kind": "year_end", "years": 1}),
            {Role.ADMIN: ANY, Role.COMMUNITY: IN},
        ),
    ),
    "GET /v1/volunteers/{volunteer_id}": (
        Case(get("/v1/volunteers/{volunteer}"), {**COMMUNITY_READERS, Role.VOLUNTEER: SELF}),
    ),
    "GET /v1/communities/{community_id}/leaderboard": (
        Case(get("/v1/communities/tishu/leaderboard"), COMMUNITY_READERS),
    ),
    "GET /v1/communities/{community_id}/participation": (
        Case(get("/v1/communities/tishu/participation", year="2026"), COMMUNITY_READERS),
    ),
    "GET /v1/participation": (
        Case(get("/v1/participation", year="2026"), {**SEE_ALL, Role.DISTRICT: NARROW}, names("tishu")),
    ),
    "GET /v1/activities": (Case(get("/v1/activities", community="tishu"), COMMUNITY_READERS),),
    "GET /v1/activities/{activity_id}": (Case(get("/v1/activities/{signup_activity}"), COMMUNITY_READERS),),
    "GET /v1/rewards": (Case(get("/v1/rewards", community="tishu"), COMMUNITY_READERS),),
    "GET /v1/redemptions": (
        Case(
            get("/v1/redemptions", community="tishu", volunteer="{volunteer}"),
            {**COMMUNITY_READERS, Role.VOLUNTEER: SELF},
        ),
    ),
    "GET /v1/party-service": (
        Case(get("/v1/party-service", year="2026", community="tishu"), COMMUNITY_READERS, label="community"),
        Case(
            get("/v1/party-service", year="2026"),
            {**SEE_ALL, Role.DISTRICT: NARROW},
            mentions("volunteer"),
            label="county",
        ),
    ),
    "GET /v1/party-service/branches": (
        Case(get("/v1/party-service/branches", year="2026", community="tishu"), COMMUNITY_READERS, label="community"),
        Case(get("/v1/party-service/branches", year="2026"), {**SEE_ALL, Role.DISTRICT: ANY}, label="county"),
    ),
    # Branches: admins publish the standard, the branch's own secretary keeps its log, inspectors audit.
    "POST /v1/standards": (Case(post("/v1/standards", {**DOCUMENT, "version": "2026.9"}), ADMIN),),
    "GET /v1/standards": (Case(get("/v1/standards"), EVERYONE),),
    "GET /v1/standards/{version}": (Case(get("/v1/standards/2026.1"), EVERYONE),),
    "POST /v1/branches": (
        Case(
            post(
                "/v1/branches",
                {
                    "name": "提署社区第三党支部",
                    "parent_kind": "community",
                    "parent_id": "tishu",
                    "members": 5,
                    "established_on": "2024-06-01",
                },
            ),
            {Role.ADMIN: ANY, **OVER_COMMUNITY},
        ),
    ),
    "POST /v1/branches/{branch_id}/members": (
        Case(post("/v1/branches/{branch}/members", {"members": 24}), BRANCH_OWN),
    ),
    "POST /v1/branches/{branch_id}/meetings": (
        Case(
            post(
                "/v1/branches/{branch}/meetings",
                {"kind": "themed_party_day", "held_on": "2026-02-10", "attendance": 20, "topic": "学习党章"},
            ),
            BRANCH_OWN,
        ),
    ),
    "POST /v1/branches/{branch_id}/dues": (
        Case(
            post(
                "/v1/branches/{branch}/dues",
                {"period": "2026-02", "amount_yuan": "460", "members_paid": 20, "collected_on": "2026-02-25"},
            ),
            BRANCH_OWN,
        ),
    ),
    "POST /v1/branches/{branch_id}/audits": (
        Case(
            post("/v1/branches/{branch}/audits", {"scores": {k: str(v) for k, v in AUDITOR_FULL.items()}}),
            {Role.INSPECTOR: ANY},
        ),
    ),
    "POST /v1/branches/{branch_id}/rectifications/{rectification_id}/complete": (
        Case(
            post("/v1/branches/{branch}/rectifications/{rectification}/complete", {"evidence": "已补齐台账"}),
            BRANCH_OWN,
        ),
    ),
    "GET /v1/branches": (
        Case(
            get("/v1/branches", community="tishu"),
            {
                **SEE_ALL,
                Role.DISTRICT: NARROW,
                Role.STREET: NARROW,
                Role.COMMUNITY: IN,
                Role.GRID: IN,
                Role.SECRETARY: NARROW,
                Role.DEPARTMENT: BLIND,
            },
            mentions("branch"),
        ),
    ),
    "GET /v1/branches/overview": (
        Case(
            get("/v1/branches/overview", street="gushu"),
            {
                **SEE_ALL,
                Role.DISTRICT: NARROW,
                Role.STREET: NARROW,
                Role.COMMUNITY: NARROW,
                Role.GRID: NARROW,
                Role.SECRETARY: NARROW,
                Role.DEPARTMENT: BLIND,
            },
            counts_branches,
        ),
    ),
    "GET /v1/branches/{branch_id}": (
        Case(get("/v1/branches/{branch}"), {**SEE_ALL, **OVER_COMMUNITY, Role.GRID: IN, Role.SECRETARY: IN}),
    ),
    # The baton: admins publish the scheme; communities and departments rate each other (as themselves);
    # scores are league tables; the district above the assessed units (or an admin) finalises a year that is
    # over (2025, whose end the world's history spans), and voids a finalisation with a reason.
    "POST /v1/assessment-schemes": (Case(post("/v1/assessment-schemes", {**SCHEME, "version": "2026.9"}), ADMIN),),
    "POST /v1/evaluations": (
        Case(
            post(
                "/v1/evaluations",
                {"year": 2026, "ratee": "HOUSING", "rating": "good"},
                department={"year": 2026, "ratee": "tishu", "rating": "good"},
            ),
            {Role.COMMUNITY: ANY, Role.DEPARTMENT: ANY},
        ),
    ),
    "GET /v1/assessments/{year}": (Case(get("/v1/assessments/2026", unit_type="community"), LEAGUE_TABLES),),
    "POST /v1/assessments/{year}/finalise": (
        Case(post("/v1/assessments/2025/finalise", {}), {Role.ADMIN: ANY, Role.DISTRICT: IN}),
    ),
    "POST /v1/assessments/{year}/void": (
        Case(
            post("/v1/assessments/2025/void", {"reason": "finalised by mistake"}), {Role.ADMIN: ANY, Role.DISTRICT: IN}
        ),
    ),
    "POST /v1/rankings/{month}/finalise": (
        Case(post("/v1/rankings/2025-12/finalise", {}), {Role.ADMIN: ANY, Role.DISTRICT: IN}),
    ),
    "GET /v1/rankings/{month}/finalisations": (Case(get("/v1/rankings/2025-12/finalisations"), LEAGUE_TABLES),),
    "GET /v1/assessments/{year}/final": (Case(get("/v1/assessments/2026/final"), LEAGUE_TABLES),),
    "GET /v1/assessments/{year}/finalisations": (Case(get("/v1/assessments/2026/finalisations"), LEAGUE_TABLES),),
    # The audit trail is the whole log, for those who check it.
    "GET /v1/audit/key": (Case(get("/v1/audit/key"), AUDIT_TRAIL),),
    "GET /v1/audit/checkpoint": (Case(get("/v1/audit/checkpoint"), AUDIT_TRAIL),),
    "GET /v1/audit/checkpoints/{size}": (Case(get("/v1/audit/checkpoints/{size}"), AUDIT_TRAIL),),
    "GET /v1/audit/proof/{position}": (Case(get("/v1/audit/proof/{position}"), AUDIT_TRAIL),),
    "GET /v1/audit/consistency": (
        Case(get("/v1/audit/consistency", **{"from": "{size}", "to": "{size}"}), AUDIT_TRAIL),
    ),
    "GET /v1/audit/events/{position}": (Case(get("/v1/audit/events/{position}"), SEE_ALL),),
    # Credentials: only an admin revokes a token or an actor's tokens.
    "POST /v1/tokens/revocations": (
        Case(post("/v1/tokens/revocations", {"actor": "matrix-departed", "reason": "调离"}), ADMIN),
    ),
    # Open311 GeoReport v2: public reads; a request is filed with an app's api_key, whatever bearer token comes along.
    "GET /open311/v2/discovery.{format}": (Case(get("/open311/v2/discovery.xml"), EVERYONE),),
    "GET /open311/v2/services.{format}": (Case(get("/open311/v2/services.json", jurisdiction_id="dangtu"), EVERYONE),),
    "GET /open311/v2/services/{service_code}.{format}": (
        Case(get("/open311/v2/services/drainage.xml", jurisdiction_id="dangtu"), EVERYONE),
    ),
    "POST /open311/v2/requests.{format}": (Case(post("/open311/v2/requests.json", OPEN311_REQUEST), EVERYONE),),
    "GET /open311/v2/requests.{format}": (Case(get("/open311/v2/requests.xml", jurisdiction_id="dangtu"), EVERYONE),),
    "GET /open311/v2/requests/{service_request_id}.{format}": (
        Case(get("/open311/v2/requests/{open311_report}.json", jurisdiction_id="dangtu"), EVERYONE),
    ),
    "GET /open311/v2/tokens/{token}.{format}": (
        Case(get("/open311/v2/tokens/{read_code}.xml", jurisdiction_id="dangtu"), EVERYONE),
    ),
    # Personal data: those who serve the person's community look it up and erase it; nobody else.
    "GET /v1/people/{person_id}": (Case(get("/v1/people/{reporter}"), {Role.ADMIN: ANY, **OVER_COMMUNITY}),),
    "POST /v1/people/{person_id}/erase": (
        Case(post("/v1/people/{reporter}/erase", {"reason": "居民申请, 工单 7"}), {Role.ADMIN: ANY, **OVER_COMMUNITY}),
    ),
}

# Each role's tokens: (scope, unit, actor id); "in" covers the resource of every request above, "out" does not;
# a volunteer's "peer" is another volunteer of the same community.
ACTORS: dict[Role, tuple[tuple[str, str | None, str | None], ...]] = {
    Role.ADMIN: (("any", None, "root"),),
    Role.DISTRICT: (("in", "dangtu", None), ("out", "bowang", None)),
    Role.STREET: (("in", "gushu", None), ("out", "huxi", None)),
    Role.COMMUNITY: (("in", "tishu", None), ("out", "taibai", None)),
    Role.GRID: (("in", "tishu-g1", None), ("out", "taibai-g1", None)),
    Role.DEPARTMENT: (("in", "HOUSING", None), ("out", "EDU", None)),
    Role.ORGANISER: (("in", "tishu", None), ("out", "taibai", None)),
    Role.VOLUNTEER: (
        ("in", "tishu", "{volunteer}"),
        ("peer", "tishu", "{helper}"),
        ("out", "taibai", "{other_volunteer}"),
    ),
    Role.INSPECTOR: (("any", None, None),),
    Role.AUDITOR: (("any", None, None),),
    Role.SECRETARY: (("in", "{branch}", None), ("out", "{other_branch}", None)),
}


@dataclass(frozen=True)
class Gap:
    """A case where the code disagrees with the policy, kept visible until the team decides."""

    route: str
    who: frozenset[tuple[Role, str]]
    phase: str | None
    observed: frozenset[int]
    why: str
    leaks: bool = False
    label: str = ""


STEP_ROUTES = [f"POST /v1/whistles/{{whistle_id}}/{step}" for step in ("decline", "complete", "feedback")]
KNOWN_GAPS: list[Gap] = []


# The world ---------------------------------------------------------------------------------------


@dataclass
class World:
    """The ids of everything the requests touch."""

    ids: dict[str, str] = field(default_factory=dict)

    def fill(self, value: Any) -> Any:
        """The value with {name} of every known id replaced by the id."""
        if isinstance(value, str):
            return re.sub(r"\{(\w+)\}", lambda m: self.ids.get(m.group(1), m.group(0)), value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value


async def build_world(client: httpx.AsyncClient, auth: Auth, baton: Container) -> World:
    """The test county plus a second district and grid, whistles at every step, volunteering, branches, a scheme."""
    world = World()
    ids = world.ids

    async def call(method: str, path: str, body: Any, headers: dict[str, str], status: int = 201) -> dict[str, Any]:
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status_code == status, f"{method} {path}: {r.text}"
        return dict(r.json())

    admin, community = auth("admin", None, "root"), auth("community", "tishu", "wang")
    housing, organiser = auth("department", "HOUSING", "housing"), auth("organiser", "tishu", "zhao")
    await seed_county(client, auth)  # in December 2025 (the clock fixture below), so 2025 is over and finalisable
    baton.clock.set(START)  # type: ignore[attr-defined]
    for unit in (
        {"id": "bowang", "kind": "district", "parent": "maanshan", "name": "博望区"},
        {"id": "taibai-g1", "kind": "grid", "parent": "taibai", "name": "太白一网格"},
    ):
        await call("POST", "/v1/org/units", unit, admin)
    await call("POST", "/v1/org/cadres", {"id": "cadre-1", "name": "李强", "department": "HOUSING"}, admin)

    whistle = {"community_id": "tishu", "category": "drainage", "title": "雨水井堵塞", "description": "积水"}
    blown = await call(
        "POST", "/v1/whistles", {**whistle, "reporter": {"name": "张秀兰", "phone": "13905556677"}}, community
    )
    ids.update(read_whistle=blown["whistle_id"], reporter=blown["reporter_id"], position=str(blown["position"]))
    ids["photo"] = baton.reports.upload_photo(Context(ROOT, "matrix"), PHOTO)["sha256"]
    (baton.settings.data_dir / DEMO_ACTORS).write_text(
        '[{"label": "admin", "role": "admin", "unit": null, "token": "t"}]'
    )
    steps = {
        "report": [],
        "dispatch": ["report-in"],
        "decline": ["report-in", "dispatch"],
        "progress": ["report-in", "dispatch"],
        "complete": ["report-in", "dispatch"],
        "feedback": ["report-in", "dispatch", "complete"],
        "evaluate": ["report-in", "dispatch", "complete", "feedback"],
    }
    bodies = {
        "report-in": (None, housing, 200),
        "dispatch": ({"lead_department": "HOUSING"}, community, 200),
        "complete": ({"summary": "已疏通"}, housing, 200),
        "feedback": ({"result": "已解决", "resolved": True}, housing, 200),
    }
    for name, done in steps.items():
        w = (await call("POST", "/v1/whistles", {**whistle, "summoned_departments": ["HOUSING", "PSB"]}, community))[
            "whistle_id"
        ]
        for step in done:
            body, headers, status = bodies[step]
            await call("POST", f"/v1/whistles/{w}/{step}", body, headers, status)
        ids[f"{name}_whistle"] = w

    await call("PUT", "/v1/org/units/tishu-g1/boundary", SQUARE, admin, 200)  # places Open311 requests
    _, ids["open311_key"] = baton.credentials.issue_open311_key(Context(SYSTEM_ACTOR, "matrix"), "matrix-app")
    filed = baton.reports.raise_report(
        Context(resident("open311", "matrix-app"), "matrix"),
        channel="open311",
        category="drainage",
        description="雨水井堵塞",
        community_id="tishu",
        address="提署路",
    )
    ids["open311_report"] = filed.body["report_id"]
    reported = {**REPORT, "reporter": {"name": "李桂英", "phone": "13905550000"}}
    for name, done in {
        "read": [],
        "accept": [],
        "progress": ["accept"],
        "resolve": ["accept"],
        "merge": [],
        "close_unreasonable": [],
        "escalate": [],
        "rating": ["accept", "resolve"],
        "rate": ["accept", "resolve"],
    }.items():
        created = await call("POST", "/v1/reports", reported, community)
        for action in done:
            await call(
                "POST",
                f"/v1/reports/{created['report_id']}/{action}",
                {"result": "已处理"} if action == "resolve" else {},
                community,
                200,
            )
        ids[f"{name}_report"], ids[f"{name}_code"] = created["report_id"], created["tracking_code"]

    await call("PUT", "/v1/communities/tishu/points-policy", {"kind": "never"}, community, 200)
    volunteer = {"community_id": "tishu", "name": "李敏", "party_member": True, "branch": "提署社区第一党支部"}
    ids["volunteer"] = (await call("POST", "/v1/volunteers", volunteer, organiser))["volunteer_id"]
    ids["helper"] = (await call("POST", "/v1/volunteers", {"community_id": "tishu", "name": "王芳"}, organiser))[
        "volunteer_id"
    ]
    other = {"community_id": "taibai", "name": "周平"}
    ids["other_volunteer"] = (await call("POST", "/v1/volunteers", other, auth("organiser", "taibai")))["volunteer_id"]
    now = baton.clock.now()
    activity = {
        "community_id": "tishu",
        "title": "清扫楼道",
        "starts_at": (now - timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=5)).isoformat(),
        "place": "提署小区",
        "capacity": 30,
        "points_per_hour": "10",
        "max_hours_per_person": "3",
    }
    for name in ("earn", "void", "attendance", "signup"):
        ids[f"{name}_activity"] = (await call("POST", "/v1/activities", activity, organiser))["activity_id"]
    for name, who in (("earn", "volunteer"), ("earn", "helper"), ("void", "helper"), ("attendance", "volunteer")):
        path = f"/v1/activities/{ids[name + '_activity']}"
        await call("POST", f"{path}/signups", {"volunteer_id": ids[who]}, organiser)
        if name != "attendance":
            await call("POST", f"{path}/attendance", {"volunteer_id": ids[who], "hours": "3"}, organiser)
    reward = {"community_id": "tishu", "name": "大米 5kg", "cost": "5", "stock": 10}
    ids["reward"] = (await call("POST", "/v1/rewards", reward, organiser))["reward_id"]

    await call("POST", "/v1/standards", DOCUMENT, admin)
    for key, unit in (("branch", "tishu"), ("other_branch", "taibai")):
        branch = {
            "name": f"{unit}社区第一党支部",
            "parent_kind": "community",
            "parent_id": unit,
            "members": 23,
            "established_on": "2024-06-01",
        }
        ids[key] = (await call("POST", "/v1/branches", branch, auth("community", unit)))["branch_id"]
    audit = {"scores": {k: str(v) for k, v in AUDITOR_FULL.items()}, "findings": [{"text": "党员教育管理台账不完整"}]}
    audited = await call("POST", f"/v1/branches/{ids['branch']}/audits", audit, auth("inspector", None, "zhou"))
    ids["rectification"] = audited["rectifications"][0]
    await call("POST", "/v1/assessment-schemes", SCHEME, admin)

    baton.notary.catch_up()
    signed = baton.notary.sign()
    assert signed is not None
    ids["size"] = str(signed[1])
    for projection in baton.projections.values():
        projection.catch_up()
    return world


# Running the matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """A token of the matrix."""

    role: Role
    scope: str
    headers: dict[str, str]
    unit: str | None
    actor_id: str


@dataclass
class Record:
    """One request of the matrix and what came back."""

    route: str
    label: str
    actor: Actor
    phase: str
    expected: str
    status: int
    text: str
    found: list[str]  # what of the resource the answer holds (for a case with a leak check)

    def where(self) -> str:
        label = f" [{self.label}]" if self.label else ""
        return f"{self.route}{label} as {self.actor.role.value}/{self.actor.scope} ({self.phase})"


def expectation(case: Case, actor: Actor) -> str:
    """allow, deny, or narrow (allowed, but nothing of the resource in the answer, or a 403)."""
    reach = case.allow.get(actor.role)
    if reach is None:
        return "deny"
    if reach is BLIND:
        return "narrow"
    if reach is SELF:
        return "allow" if actor.scope == "in" else "deny"
    if reach is ANY or actor.scope != "out":
        return "allow"
    return "deny" if reach is IN else "narrow"


def app_routes(app: FastAPI) -> set[str]:
    """Every 'METHOD /path' the app serves (HEAD aside), included routers flattened."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Iterable[Any] = flatten(app.routes) if flatten else app.routes
    found = set()
    for route in routes:
        for method in getattr(route, "methods", None) or {"ANY"}:
            if method != "HEAD":
                found.add(f"{method} {route.path}")
    return found


def actors(tokens: Tokens, world: World) -> list[Actor]:
    """Every issuable role, in and out of scope."""
    out = []
    for role, scopes in ACTORS.items():
        for scope, unit, actor_id in scopes:
            unit, actor_id = world.fill(unit), world.fill(actor_id) or f"{role.value}-{scope}"
            token = tokens.issue(role.value, unit, actor_id)
            out.append(Actor(role, scope, {"Authorization": f"Bearer {token}"}, unit, actor_id))
    return out


async def send(
    client: httpx.AsyncClient, world: World, req: Req, role: Role, headers: dict[str, str]
) -> httpx.Response:
    body = world.fill(req.by_role.get(role, req.body))
    query = {k: world.fill(v) for k, v in req.query.items()}
    sent = {"headers": headers, **payload(req, body, headers)}
    return await client.request(req.method, world.fill(req.path), params=query, **sent)


def payload(req: Req, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    """The body as the route takes it: a form for Open311, bytes for a photo, JSON for the rest."""
    if isinstance(body, bytes):
        return {"content": body, "headers": {**headers, "Content-Type": "image/jpeg"}}
    return {"data": body} if req.path.startswith("/open311/") else {"json": body}


def error_of(text: str) -> dict[str, Any] | None:
    """The contract's error object, or None when the body is not {"error": {"code", "message"}}."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return None
    error = body["error"]
    ok = set(error) == {"code", "message"} and all(isinstance(error[k], str) and error[k] for k in error)
    return error if ok else None


def open311_error_of(r: httpx.Response) -> dict[str, Any] | None:
    """Open311's one error, {"code": int, "description": str}, from [{...}] or <errors><error>..., else None."""
    try:
        if r.headers.get("content-type", "").startswith("application/xml"):
            root = ET.fromstring(r.content)
            errors = [{"code": int(e.findtext("code", "")), "description": e.findtext("description")} for e in root]
            errors = errors if root.tag == "errors" else []
        else:
            errors = r.json()
    except (ValueError, ET.ParseError):
        return None
    if not isinstance(errors, list) or len(errors) != 1 or not isinstance(errors[0], dict):
        return None
    (error,) = errors
    ok = set(error) == {"code", "description"} and isinstance(error["code"], int) and error["description"]
    return error if ok else None


def names_what_is_wrong(message: str, actor: Actor) -> bool:
    """A refusal names this token (its role, unit or actor), the roles that may, or what the token reaches."""
    words = [*(r.value for r in ROLES), *(w for w in (actor.unit, actor.actor_id) if w)]
    words += ["scope", "only", "own", "themself", "not summoned", "not handling", "no work order"]
    return any(w.lower() in message.lower() for w in words)


@pytest.fixture
def clock() -> ManualClock:
    """The organisation is recorded at the end of 2025, the rest in 2026: 2025 is a year whose assessment is due."""
    return ManualClock(datetime(2025, 12, 20, 2, tzinfo=UTC))


@pytest.fixture
def matrix_app(baton: Container, tokens: Tokens) -> FastAPI:
    """The real app without its rate limit (one token sends dozens of requests a second here)."""
    return create_app(baton, tokens, rate_limit=0)


@pytest.fixture
async def matrix_client(matrix_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The matrix app over ASGI."""
    transport = httpx.ASGITransport(app=matrix_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://baton.test") as client:
        yield client


def test_the_policy_table_lists_every_route_and_role(baton: Container, tokens: Tokens) -> None:
    """A route the app serves must have a row in POLICY (and every row a route); every issuable role has tokens."""
    served = app_routes(create_app(baton, tokens)) - DOCS
    assert not served - set(POLICY), f"routes without a row in POLICY: {sorted(served - set(POLICY))}"
    assert not set(POLICY) - served, f"POLICY rows for routes the app no longer has: {sorted(set(POLICY) - served)}"
    assert set(ACTORS) == set(ROLES), "every issuable role needs tokens in ACTORS"
    for key, cases in POLICY.items():
        method, path = key.split(" ", 1)
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path))
        for case in cases:
            assert case.req.method == method and re.fullmatch(pattern, case.req.path), key
            assert set(case.allow) <= set(ROLES), key
    for gap in KNOWN_GAPS:
        assert gap.route in POLICY, gap.route


async def test_every_route_every_role_every_scope(
    matrix_client: httpx.AsyncClient, tokens: Tokens, auth: Auth, baton: Container
) -> None:
    """Each route, sent by every role in and out of scope, answers as POLICY says; no or a bad token is 401."""
    started = time.monotonic()
    client = matrix_client
    world = await build_world(client, auth, baton)
    everyone = actors(tokens, world)
    records: list[Record] = []
    problems: list[str] = []
    unauthenticated = 0

    for route, cases in POLICY.items():
        for case in cases:
            planned = [(actor, expectation(case, actor)) for actor in everyone]
            denied = [(a, e) for a, e in planned if e == "deny"]
            allowed = [(a, e) for a, e in planned if e != "deny"]
            for phase, batch in (("deny", denied), ("allow", allowed), ("deny-after", denied)):
                for actor, expected in batch:
                    r = await send(client, world, case.req, actor.role, actor.headers)
                    found = case.leak(world, r) if case.leak else []
                    records.append(Record(route, case.label, actor, phase, expected, r.status_code, r.text, found))

    expired = Tokens(tokens.keyring, ttl=timedelta(minutes=-1)).issue("admin", None, "root")  # past the leeway
    for route, case in ((route, cases[0]) for route, cases in POLICY.items()):
        for what, headers in (
            ("no token", {}),
            ("a garbage token", {"Authorization": "Bearer not-a-token"}),
            ("an expired token", {"Authorization": f"Bearer {expired}"}),
        ):
            r = await send(client, world, case.req, Role.ADMIN, headers)
            if route in BY_CODE or route in OPEN311:
                if r.status_code == 401:
                    problems.append(f"{route} with {what}: 401; a tracking code or an Open311 route needs no token")
                continue
            if route in PUBLIC:
                if r.status_code != 200:
                    problems.append(f"{route} with {what}: {r.status_code}, want 200 (public) {r.text[:200]}")
                continue
            error = error_of(r.text)
            if r.status_code != 401 or error is None or error["code"] != "unauthenticated":
                problems.append(f"{route} with {what}: {r.status_code} {r.text[:200]}, want 401 unauthenticated")
            elif what == "an expired token" and "expired" not in error["message"]:
                problems.append(f"{route} with {what}: the message does not say it expired: {error['message']}")
            elif r.headers.get("WWW-Authenticate") != "Bearer":
                problems.append(f"{route} with {what}: 401 without WWW-Authenticate: Bearer")
        unauthenticated += 3

    gap_hits: Counter[int] = Counter()
    succeeded: set[tuple[str, str]] = set()
    for rec in records:
        gap = next(
            (
                (i, g)
                for i, g in enumerate(KNOWN_GAPS)
                if g.route == rec.route
                and g.label == rec.label
                and (rec.actor.role, rec.actor.scope) in g.who
                and g.phase in (None, rec.phase)
            ),
            None,
        )
        if gap is not None:
            i, g = gap
            gap_hits[i] += 1
            if 200 <= rec.status < 300:
                succeeded.add((rec.route, rec.label))  # the state moved on: later allowed requests may be 409
            if rec.status not in g.observed or (g.leaks and not rec.found):
                problems.append(
                    f"KNOWN_GAPS[{i}] no longer holds for {rec.where()}: now {rec.status} {rec.text[:160]}; "
                    "if it is fixed, remove the entry"
                )
            continue
        problems.extend(check(rec, succeeded))
    for i, g in enumerate(KNOWN_GAPS):
        if not gap_hits[i]:
            problems.append(f"KNOWN_GAPS[{i}] ({g.route}) matched no request; remove it")
    for route, cases in POLICY.items():
        for case in cases:
            if (route, case.label) not in succeeded:
                problems.append(f"{route} [{case.label}]: no allowed request succeeded; the matrix's request is wrong")
            shown = [
                r for r in records if (r.route, r.label) == (route, case.label) and r.expected == "allow" and r.found
            ]
            if case.leak and not shown:
                problems.append(
                    f"{route} [{case.label}]: no reader in scope sees the resource; the leak check is blind"
                )

    summarise(records, unauthenticated, time.monotonic() - started)
    assert not problems, f"{len(problems)} authorization problem(s):\n" + "\n".join(problems)


UNKNOWN_ID = "00000000-0000-4000-8000-000000000404"


def renamed(value: Any, known: str, unknown: str) -> Any:
    """The value with every string equal to known replaced by unknown."""
    if isinstance(value, str):
        return unknown if value == known else value
    if isinstance(value, dict):
        return {k: renamed(v, known, unknown) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed(v, known, unknown) for v in value]
    return value


async def test_an_unknown_id_in_the_path_is_404_for_every_route(
    matrix_app: FastAPI, matrix_client: httpx.AsyncClient, tokens: Tokens, auth: Auth, baton: Container
) -> None:
    """An id nothing has in any path parameter is 404 not_found, naming it and where ids are listed, for every role."""
    # Everything else is POLICY's request, so the id in the path is the only thing wrong; a token scoped to the
    # replaced id (a secretary's branch, a volunteer's own id, a community) is scoped to the unknown one instead.
    world = await build_world(matrix_client, auth, baton)
    everyone = actors(tokens, world)
    documented = matrix_app.openapi()["paths"]
    problems: list[str] = []
    sent = 0
    for route in sorted(r for r in app_routes(matrix_app) - DOCS if "{" in r):
        method, template = route.split(" ", 1)
        req = POLICY[route][0].req
        parameters = {p["name"]: p["schema"] for p in documented[template][method.lower()]["parameters"]}
        segments = template.split("/")
        for index, segment in enumerate(segments):
            named = [n for n in re.findall(r"\{(\w+)\}", segment) if n != "format"]  # .{format} names no thing
            if not named:
                continue
            (name,) = named
            filled = world.fill(req.path.split("/")[index])
            found = re.fullmatch(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(segment)), filled)
            assert found is not None, f"{route}: POLICY's path {req.path} does not fit the template"
            known = found[name]
            unknown = str(parameters[name]["maximum"]) if parameters[name]["type"] == "integer" else UNKNOWN_ID
            replaced = filled[: found.start(name)] + unknown + filled[found.end(name) :]
            path = "/".join(replaced if i == index else world.fill(s) for i, s in enumerate(req.path.split("/")))
            for actor in everyone:
                if expectation(POLICY[route][0], actor) == "deny":
                    continue
                unit, actor_id = renamed(actor.unit, known, unknown), renamed(actor.actor_id, known, unknown)
                headers = {"Authorization": f"Bearer {tokens.issue(actor.role.value, unit, actor_id)}"}
                body = renamed(world.fill(req.by_role.get(actor.role, req.body)), known, unknown)
                query = {k: renamed(world.fill(v), known, unknown) for k, v in req.query.items()}
                options = {"headers": headers, **payload(req, body, headers)}
                r = await matrix_client.request(method, path, params=query, **options)
                sent += 1
                error = error_of(r.text)
                where = f"{method} {path} ({name} unknown) as {actor.role.value}/{actor.scope}"
                if route in OPEN311:
                    described = open311_error_of(r)
                    if r.status_code != 404 or described is None or described["code"] != 404:
                        problems.append(f"{where}: {r.status_code} {r.text[:200]}; want 404 in Open311's error shape")
                    elif unknown not in described["description"] or "/open311/v2/" not in described["description"]:
                        problems.append(f"{where}: the description does not name {unknown} and where ids are listed")
                    continue
                if r.status_code != 404 or error is None or error["code"] != "not_found":
                    problems.append(f"{where}: {r.status_code} {r.text[:200]}; want 404 not_found")
                elif unknown not in error["message"] or not any(hint in error["message"] for hint in FIND.values()):
                    problems.append(f"{where}: the message does not name {unknown} and where ids are listed")
    print(f"\nunknown ids in the path: {sent} requests, {len(problems)} problems")
    assert sent and not problems, f"{len(problems)} route(s) not answering 404:\n" + "\n".join(problems)


def check(rec: Record, succeeded: set[tuple[str, str]]) -> list[str]:
    """What is wrong with one answer, given what POLICY expects."""
    got = f"{rec.status} {rec.text[:200]}"
    if rec.expected == "deny":
        return check_denied(rec)
    if rec.status >= 500 or rec.status in (401, 413, 429):
        return [f"{rec.where()}: {got}; want an allowed answer"]
    if rec.expected == "narrow":
        if rec.found:
            return [f"{rec.where()}: the answer holds {rec.found}, outside this token's scope"]
        if rec.status == 403:
            return check_denied(rec)
        if rec.status != 200:
            return [f"{rec.where()}: {got}; want 200 narrowed to the token's scope, or 403"]
        succeeded.add((rec.route, rec.label))
        return []
    if rec.status == 403:
        return [f"{rec.where()}: 403 {rec.text[:200]}; POLICY allows it"]
    if 200 <= rec.status < 300:
        succeeded.add((rec.route, rec.label))
        return []
    if rec.route.startswith("GET "):
        return [f"{rec.where()}: {got}; a read that POLICY allows should answer 200"]
    if (rec.route, rec.label) not in succeeded:
        return [f"{rec.where()}: {got}; the first allowed request of a command should succeed"]
    if rec.status not in (404, 409, 422):
        return [f"{rec.where()}: {got}"]
    return []


def check_denied(rec: Record) -> list[str]:
    """A refusal is exactly 403 with the contract's error body and a message that says what is wrong."""
    if rec.status != 403:
        return [f"{rec.where()}: {rec.status} {rec.text[:200]}; want 403"]
    error = error_of(rec.text)
    if error is None:
        return [f"{rec.where()}: 403 without the contract's error body: {rec.text[:200]}"]
    if not names_what_is_wrong(error["message"], rec.actor):
        return [f"{rec.where()}: the refusal does not say what is wrong: {error}"]
    return []


def summarise(records: list[Record], unauthenticated: int, seconds: float) -> None:
    """Print the figures (pytest -s) for the README."""
    cells = [r for r in records if r.phase != "deny-after"]
    denied = sum(r.status == 403 for r in cells)
    tokens = len({(r.actor.role, r.actor.scope) for r in records})
    moved_on = Counter(r.status for r in records if r.expected != "deny" and r.status not in (200, 201))
    print(
        f"\nauthorization matrix: {len({r.route for r in records})} routes ({len(cells) // tokens} requests) x "
        f"{tokens} tokens of {len(ACTORS)} roles = {len(cells)} cells "
        f"({len(cells) - denied} allowed, {denied} denied), "
        f"{len(records) - len(cells)} refusals re-sent after the state moved on, {unauthenticated} requests with no, "
        f"a garbage or an expired token: {len(records) + unauthenticated} requests in {seconds:.1f} s; "
        f"{len(KNOWN_GAPS)} known gaps"
    )
    print(f"allowed but not 2xx (an earlier allowed request moved the state on): {dict(sorted(moved_on.items()))}")
    for gap in KNOWN_GAPS:
        who = ", ".join(f"{role.value}/{scope}" for role, scope in sorted(gap.who))
        print(f"known gap: {gap.route} as {who}: {gap.why}")
