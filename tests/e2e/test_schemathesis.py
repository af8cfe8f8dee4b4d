"""Schemathesis with every check that applies, against the real app in-process and `baton serve` over the network."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from api.app import create_app, openapi_document
from api.tokens import Tokens
from infra.bootstrap import bootstrap
from infra.clock import ManualClock
from infra.settings import Settings
from tests.conftest import START, Auth, blow, seed_county
from tests.faults import Served
from tests.scenarios import ROOT

STANDARDS = ROOT / "standards"
DOCUMENT = openapi_document()


# Every check of `schemathesis run --checks all` but two: object_level_authorization needs identities from an
# auth provider (tests/integration/test_auth_matrix.py checks every route for every role instead), and max_response_time
# is a timed assertion. use_after_free and ensure_resource_availability look at the cases a case was derived
# from; with no DELETE and no stateful phase they find none here, and run in case that changes.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
    use_after_free,
    ensure_resource_availability,
    ignored_auth,
]


@dataclass
class Seeded:
    """Ids of what the seed created, tokens of the actors that may touch them, and what the run saw."""

    ids: dict[str, str] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    refused_by_a_rule: Counter[str] = field(default_factory=Counter)
    operations: set[str] = field(default_factory=set)
    started: float | None = None
    ended: float = 0.0

    def call(self, case: Any, checks: list[Any], **transport: Any) -> None:
        """Send the case and check the answer, counting its status and timing the run."""
        self.started = self.started or time.monotonic()
        self.operations.add(f"{case.method.upper()} {case.path}")
        self.statuses[case.call_and_validate(checks=self.checks(checks), **transport).status_code] += 1
        self.ended = time.monotonic()

    def checks(self, checks: list[Any]) -> list[Any]:
        """The checks, positive_data_acceptance as positive_data_acceptance_of_the_shape."""

        # A schema says what shape a request has. Which ids exist, whether a step fits the whistle's state, whether
        # an idempotency key was used for another body, dates against a branch's founding or the clock, a standard's
        # weights adding up to 100: those rules are beyond JSON Schema, and Baton answers them 422 with their own
        # code. A request of the documented shape that Baton's own validation refuses (invalid_request) still fails.
        def positive_data_acceptance_of_the_shape(ctx: CheckContext, response: Response, case: Any) -> bool | None:
            """positive_data_acceptance, but a 422 naming a broken rule (any code but invalid_request) is right."""
            try:
                return positive_data_acceptance(ctx, response, case)
            except RejectedPositiveData:
                code = (response.json().get("error") or {}).get("code") if response.status_code == 422 else None
                if response.status_code == 400 and case.operation.path.startswith("/open311/"):
                    code = "open311_400"  # Open311 answers a broken rule (a 91-day window, an unknown service) 400
                if code in (None, "invalid_request"):
                    raise
                self.refused_by_a_rule[code] += 1
                return None

        return [positive_data_acceptance_of_the_shape if c is positive_data_acceptance else c for c in checks]

    def figures(self) -> str:
        seconds = self.ended - (self.started or self.ended)
        return (
            f"{self.statuses.total()} cases in {seconds:.1f} s, statuses {dict(sorted(self.statuses.items()))}; "
            f"valid requests refused by a rule: {dict(self.refused_by_a_rule.most_common())}"
        )


OPERATIONS = {f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items() for method in item}


def every_operation_was_sent(county: Seeded, request: pytest.FixtureRequest) -> None:
    """Fail if a whole run (no -k) left an operation of the document untried: a runner that skips cases passes."""
    # Under pytest-xdist's --dist loadfile a run once sent one operation of 95 and passed: this catches that.
    if not request.config.option.keyword:
        missing = sorted(OPERATIONS - county.operations)
        assert not missing, f"{len(missing)} of {len(OPERATIONS)} operations never sent: {missing[:5]}"


async def seed(client: httpx.AsyncClient, auth: Auth, now: datetime) -> Seeded:
    """Over HTTP: a county, a whistle, a volunteer with an activity and a gift, a standard, a branch, a scheme."""
    seeded = Seeded()
    await seed_county(client, auth)

    async def post(path: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        r = await client.post(path, json=payload, headers=headers)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    organiser = auth("organiser", "tishu", "zhao")
    admin = auth("admin", None, "root")
    seeded.ids["whistle_id"] = await blow(client, auth)
    seeded.ids["volunteer_id"] = (await post("/v1/volunteers", {"community_id": "tishu", "name": "李敏"}, organiser))[
        "volunteer_id"
    ]
    start = now + timedelta(hours=1)
    activity = {
        "community_id": "tishu",
        "title": "敬老院义务理发",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=3)).isoformat(),
        "place": "敬老院",
        "capacity": 30,
        "points_per_hour": "10",
        "max_hours_per_person": "4",
    }
    seeded.ids["activity_id"] = (await post("/v1/activities", activity, organiser))["activity_id"]
    reward = {"community_id": "tishu", "name": "大米 5kg", "cost": "20", "stock": 5}
    seeded.ids["reward_id"] = (await post("/v1/rewards", reward, organiser))["reward_id"]
    await post("/v1/standards", json.loads((STANDARDS / "branch-standard-2026.1.json").read_text()), admin)
    branch = {
        "name": "提署社区第一党支部",
        "parent_kind": "community",
        "parent_id": "tishu",
        "members": 23,
        "established_on": "2024-06-01",
    }
    seeded.ids["branch_id"] = (await post("/v1/branches", branch, auth("community", "tishu")))["branch_id"]
    await post("/v1/assessment-schemes", json.loads((STANDARDS / "assessment-scheme-2026.1.json").read_text()), admin)
    seeded.ids.update(
        community_id="tishu", code="HOUSING", year=str(now.year), version="2026.1", position="1", size="1"
    )
    seeded.headers = {
        "admin": admin,
        "community": auth("community", "tishu", "wang"),
        "department": auth("department", "HOUSING", "clerk"),
        "organiser": organiser,
        "volunteer": auth("volunteer", "tishu", seeded.ids["volunteer_id"]),
        "secretary": auth("secretary", seeded.ids["branch_id"], "secretary-li"),
        "inspector": auth("inspector", None, "zhou"),
        "auditor": auth("auditor", None, "kao"),
        "none": {},
    }
    return seeded


ROLE_FOR = [
    ("/v1/whistles/{whistle_id}/report-in", "department"),
    ("/v1/whistles/{whistle_id}/decline", "department"),
    ("/v1/whistles/{whistle_id}/progress", "department"),
    ("/v1/whistles/{whistle_id}/complete", "department"),
    ("/v1/whistles/{whistle_id}/feedback", "department"),
    ("/v1/whistles", "community"),
    ("/v1/volunteers/{volunteer_id}/redemptions", "volunteer"),
    ("/v1/volunteers/{volunteer_id}/pledges", "volunteer"),
    ("/v1/activities/{activity_id}/signups", "volunteer"),
    ("/v1/volunteers", "organiser"),
    ("/v1/activities", "organiser"),
    ("/v1/rewards", "organiser"),
    ("/v1/branches/{branch_id}/meetings", "secretary"),
    ("/v1/branches/{branch_id}/dues", "secretary"),
    ("/v1/branches/{branch_id}/audits", "inspector"),
    ("/v1/branches", "community"),
    ("/v1/evaluations", "auditor"),
]


BODY_REFERENCES = {
    "community_id": "tishu",
    "parent": "gushu",
    "parent_id": "tishu",
    "category": "drainage",
    "summoned_departments": ["HOUSING"],
    "lead_department": "HOUSING",
    "volunteer_id": "volunteer_id",
    "reward_id": "reward_id",
    "ratee": "HOUSING",
    "grid_id": "tishu-g1",
}
"""Body fields that name something: two cases in three get a real one, so commands get past lookups."""


def _pick(case: Any, choices: int, salt: str) -> int:
    """A deterministic choice from the case's generated data."""
    body = None if case.body is NOT_SET else case.body  # NOT_SET's repr holds its address
    generated = repr((salt, case.method, case.path_parameters, case.query, body))
    return int(hashlib.sha256(generated.encode()).hexdigest(), 16) % choices


def prepare(case: Any, seeded: Seeded) -> dict[str, str]:
    """Real ids for half the cases; the token to send (usually of the role the operation wants), {} for a bad one."""
    # The token goes into the case and back to be passed as headers: so schemathesis knows it is a real one, and
    # ignored_auth checks that the route refuses the request without it or with a bad one.
    role = next((r for prefix, r in ROLE_FOR if case.operation.path.startswith(prefix)), "admin")
    roles = [role, role, role, "admin", "community", "none"]
    token = seeded.headers[roles[_pick(case, len(roles), "role")]]
    # New containers: schemathesis derives later cases from this one's, and they must not inherit the seeded ids.
    if case.path_parameters and not _negative(case, ParameterLocation.PATH) and _pick(case, 2, "path") == 0:
        case.path_parameters = {name: seeded.ids.get(name, v) for name, v in case.path_parameters.items()}
    if isinstance(case.body, dict) and not _negative(case, ParameterLocation.BODY) and _pick(case, 3, "body") != 0:
        real = {name: seeded.ids.get(v, v) if isinstance(v, str) else list(v) for name, v in BODY_REFERENCES.items()}
        case.body = {name: real.get(name, value) for name, value in case.body.items()}
    if "authorization" in _negated(case):
        return {}
    case.headers = {**{k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}, **token}
    return token


def _negated(case: Any) -> set[str]:
    """The (lower-case) names of the parameters schemathesis made invalid on purpose."""
    data = case.meta.phase.data if case.meta is not None else None
    names = [getattr(data, "parameter", None), *(m.parameter for m in getattr(data, "mutations", ()))]
    return {name.lower() for name in names if name}


def _negative(case: Any, location: ParameterLocation) -> bool:
    """Whether schemathesis made this part of the request invalid on purpose (then it is sent as made)."""
    return case.meta is not None and case.meta.is_negative_at(location)


def config(max_examples: int) -> schemathesis.config.SchemathesisConfig:
    """Seeded and deterministic; the stateful phase is off (no operation links to another)."""
    return schemathesis.config.SchemathesisConfig.from_dict(
        {
            "seed": 20260302,
            "generation": {"max-examples": max_examples, "mode": "all", "database": "none", "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
        }
    )


# In-process: the ASGI app on a store whose clock stands still ------------------------------------------------

schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=config(20))
# ignored_auth re-sends a request without its token through `requests`, which cannot reach an app in-process;
# the served run below checks it.
IN_PROCESS_CHECKS = [check for check in CHECKS if check is not ignored_auth]


@pytest.fixture(scope="module")
def fuzzed_app(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[FastAPI, Seeded]]:
    """The real app on a fresh SQLite store with the test county seeded; no rate limit (it is tested elsewhere)."""
    clock = ManualClock(START)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"), store="sqlite", watch_interval=3600, checkpoint_interval=0.5
    )
    baton = bootstrap(settings, clock)
    tokens = Tokens(b"test-secret-that-is-long-enough-for-hs256!")
    app = create_app(baton, tokens, rate_limit=0)

    async def seeded() -> Seeded:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test") as client:
            return await seed(client, Auth(tokens), clock.now())

    county = asyncio.run(seeded())
    yield app, county
    print(f"\nschemathesis in-process: {county.figures()}")
    every_operation_was_sent(county, request)
    baton.close()


@schema.parametrize()
def test_the_api_answers_any_input_as_documented(case: Any, fuzzed_app: tuple[FastAPI, Seeded]) -> None:
    """Valid and invalid requests alike: never a 5xx, and status, headers, media type and body as documented."""
    app, seeded = fuzzed_app
    seeded.call(case, IN_PROCESS_CHECKS, app=app, headers=prepare(case, seeded))


# Served: `baton serve` as a child process, its own document, real HTTP, the wall clock ----------------------

SERVED_EXAMPLES = 3
"""Examples per operation for the fuzzing phase of the served run; the examples and coverage phases add theirs."""


# schemathesis.pytest.from_fixture would load the document from the served process, but its lazy runner reads
# pytest's private Node._nodeid, which pytest 9 no longer has; the fixture checks the served document is this one.
served_schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=config(SERVED_EXAMPLES))


@pytest.fixture(scope="module")
def served_county(served: Served, request: pytest.FixtureRequest) -> Iterator[Seeded]:
    """The test county seeded into `baton serve` over HTTP (which serves the document the cases come from)."""
    assert httpx.get(f"{served.url}/openapi.json").json() == DOCUMENT

    async def seeded() -> Seeded:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            return await seed(client, Auth(served.tokens), datetime.now(UTC))

    county = asyncio.run(seeded())
    yield county
    print(f"\nschemathesis served: {county.figures()}")
    every_operation_was_sent(county, request)


@served_schema.parametrize()
def test_baton_serve_answers_any_input_as_documented(case: Any, served: Served, served_county: Seeded) -> None:
    """The same cases over the network against the served process, tokens of several roles, every check."""
    served_county.call(case, CHECKS, base_url=served.url, headers=prepare(case, served_county))
