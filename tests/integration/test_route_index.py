"""The app's route index (api.common.RouteIndex) answers every path as FastAPI's own walk over all routes does:
the same route, 401 before a token, 404, 405 with its Allow, trailing-slash redirects."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.routing import Route

from api.app import create_app
from api.common import RouteIndex
from api.tokens import Tokens
from infra.bootstrap import Container

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def concrete(path: str) -> str:
    """A route's path with a plausible value for each parameter."""
    return re.sub(r"\{[^}]+\}", "x1", path)


@pytest.fixture
async def apps(baton: Container, tokens: Tokens) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, list]]:
    indexed = create_app(baton, tokens, rate_limit=0)
    walked = create_app(baton, tokens, rate_limit=0)
    assert isinstance(indexed.router.middleware_stack, RouteIndex)
    walked.router.middleware_stack = walked.router.app  # FastAPI's own: every route in turn
    routes = [r for r in indexed.router.routes if isinstance(r, Route)]
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=indexed), base_url="http://baton.test") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=walked), base_url="http://baton.test") as b,
    ):
        yield a, b, routes


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_every_path_is_answered_as_the_full_walk_answers_it(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, list],
) -> None:
    indexed, walked, routes = apps
    assert len(routes) > 90, len(routes)
    paths = {"/", "/nowhere", "/v1", "/v1/", "/v1/nowhere", "/v1/whistles/x1/nowhere", "/open311/v2/nowhere.json"}
    for route in routes:
        path = concrete(route.path_format)
        paths |= {path, path + "/", path.rstrip("/") or "/", path + "/extra", path.upper()}
    seen: set[int] = set()
    for path in sorted(paths):
        for method in METHODS:
            ours = await indexed.request(method, path, headers={"content-type": "application/json"}, content=b"{}")
            theirs = await walked.request(method, path, headers={"content-type": "application/json"}, content=b"{}")
            assert (ours.status_code, ours.headers.get("location"), ours.headers.get("allow")) == (
                theirs.status_code,
                theirs.headers.get("location"),
                theirs.headers.get("allow"),
            ), (method, path)
            if ours.headers.get("content-type", "").startswith("application/json"):
                assert ours.json() == theirs.json(), (method, path)
            seen.add(ours.status_code)
    assert seen >= {307, 401, 404, 405}, seen  # matched (no token), unknown, wrong method, trailing slash
