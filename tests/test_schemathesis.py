"""Schemathesis against the OpenAPI document of the real app (SQLite): no 5xx, every answer as documented."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app, openapi_document
from api.tokens import Tokens
from infra.bootstrap import bootstrap
from infra.clock import ManualClock
from infra.settings import Settings
from tests.conftest import START, Auth, blow, seed_county

STANDARDS = Path(__file__).parent.parent / "standards"
MAX_EXAMPLES = 20
"""Examples per operation for the fuzzing phase; the examples and coverage phases add their own cases."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@dataclass
class Seeded:
    """Ids of what the seed created, and tokens of the actors that may touch them."""

    ids: dict[str, str] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)


async def _seed(app: FastAPI, auth: Auth, clock: ManualClock) -> Seeded:
    """A county, a whistle, a volunteer with an activity and a gift, a standard, a branch, a scheme."""
    seeded = Seeded()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test") as client:
        await seed_county(client, auth)

        async def post(path: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
            r = await client.post(path, json=payload, headers=headers)
            assert r.status_code in (200, 201), r.text
            return dict(r.json())

        organiser = auth("organiser", "tishu", "zhao")
        admin = auth("admin", None, "root")
        seeded.ids["whistle_id"] = await blow(client, auth)
        seeded.ids["volunteer_id"] = (
            await post("/v1/volunteers", {"community_id": "tishu", "name": "李敏"}, organiser)
        )["volunteer_id"]
        start = clock.now() + timedelta(hours=1)
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
        await post(
            "/v1/assessment-schemes", json.loads((STANDARDS / "assessment-scheme-2026.1.json").read_text()), admin
        )
    seeded.ids.update(community_id="tishu", code="HOUSING", year="2026", version="2026.1", position="1", size="1")
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


CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "seed": 20260302,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none", "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, Seeded]]:
    """The real app on a fresh SQLite store with the test county seeded; no rate limit (it is tested elsewhere)."""
    clock = ManualClock(START)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"), store="sqlite", watch_interval=3600, checkpoint_interval=0.5
    )
    baton = bootstrap(settings, clock)
    tokens = Tokens(b"test-secret-that-is-long-enough-for-hs256!")
    app = create_app(baton, tokens, rate_limit=0)
    seeded = asyncio.run(_seed(app, Auth(tokens), clock))
    started = time.monotonic()
    yield app, seeded
    print(
        f"\nschemathesis: {sum(seeded.statuses.values())} cases in {time.monotonic() - started:.1f} s, "
        f"statuses {dict(sorted(seeded.statuses.items()))}"
    )
    baton.close()


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
    generated = repr((salt, case.path_parameters, case.query, case.body))
    return int(hashlib.sha256(generated.encode()).hexdigest(), 16) % choices


def _prepare(case: Any, seeded: Seeded) -> None:
    """Send a real token (usually of the role the operation wants) and, for half the cases, real ids."""
    path = case.operation.path
    role = next((r for prefix, r in ROLE_FOR if path.startswith(prefix)), "admin")
    roles = [role, role, role, "admin", "community", "none"]
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    headers.update(seeded.headers[roles[_pick(case, len(roles), "role")]])
    case.headers = headers
    if case.path_parameters and not _negative(case, ParameterLocation.PATH) and _pick(case, 2, "path") == 0:
        for name in case.path_parameters:
            if name in seeded.ids:
                case.path_parameters[name] = seeded.ids[name]
    if isinstance(case.body, dict) and not _negative(case, ParameterLocation.BODY) and _pick(case, 3, "body") != 0:
        for name, value in BODY_REFERENCES.items():
            if name in case.body:
                case.body[name] = seeded.ids.get(value, value) if isinstance(value, str) else list(value)


def _negative(case: Any, location: ParameterLocation) -> bool:
    """Whether schemathesis made this part of the request invalid on purpose (then it is sent as made)."""
    return case.meta is not None and case.meta.is_negative_at(location)


@schema.parametrize()
def test_the_api_answers_any_input_as_documented(case: Any, fuzzed_app: tuple[FastAPI, Seeded]) -> None:
    """Valid and invalid requests alike: never a 5xx, and status, headers, media type and body as documented."""
    app, seeded = fuzzed_app
    _prepare(case, seeded)
    response = case.call_and_validate(checks=CHECKS, app=app)
    seeded.statuses[response.status_code] = seeded.statuses.get(response.status_code, 0) + 1
