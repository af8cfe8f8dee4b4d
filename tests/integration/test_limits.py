"""Hostile HTTP input: bodies over the limit get 413, a token over its rate gets 429 with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.limits import RateLimit
from api.tokens import Tokens
from infra.bootstrap import Container
from tests.conftest import Auth


def error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return dict(body["error"])


def http(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test")


@pytest.fixture
async def small(baton: Container, tokens: Tokens) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that takes bodies of at most 1 KiB and bursts of 3 requests, refilled one per 100 s."""
    # A refill slow enough that no machine, however loaded, runs the tests below long enough to see one.
    async with http(create_app(baton, tokens, max_body=1024, rate_limit=0.01, rate_burst=3)) as c:
        yield c


def unit(name_size: int) -> dict:
    return {"id": "tishu", "kind": "city", "name": "x" * name_size}


async def test_a_body_over_the_limit_is_413_from_its_content_length(small: httpx.AsyncClient, auth: Auth) -> None:
    admin = auth("admin", None, "root")
    r = await small.post("/v1/org/units", json=unit(2000), headers=admin)
    assert r.status_code == 413
    assert error(r)["code"] == "body_too_large" and "at most 1024 bytes" in error(r)["message"]
    assert "X-Correlation-Id" in r.headers
    r = await small.post("/v1/org/units", json=unit(150), headers=admin)
    assert r.status_code == 201, r.text


async def test_a_streamed_body_without_content_length_is_cut_off_with_413(small: httpx.AsyncClient, auth: Auth) -> None:
    chunks_sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        for _ in range(100):
            chunks_sent += 1
            yield b'{"id": "tishu", "kind": "city", "name": "' if chunks_sent == 1 else b"x" * 256

    headers = {**auth("admin", None, "root"), "Content-Type": "application/json"}
    r = await small.post("/v1/org/units", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413 and error(r)["code"] == "body_too_large"
    assert "streamed" in error(r)["message"]

    async def few() -> AsyncIterator[bytes]:
        yield b'{"id": "tishu", "kind": "city", '
        yield b'"name": "Tishu"}'

    r = await small.post("/v1/org/units", content=few(), headers=headers)
    assert r.status_code == 201, r.text


async def test_a_token_over_its_rate_is_429_with_retry_after(small: httpx.AsyncClient, auth: Auth) -> None:
    admin = auth("admin", None, "root")
    statuses = [(await small.get("/v1/org", headers=admin)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = await small.get("/v1/org", headers=admin)
    assert r.status_code == 429
    assert error(r)["code"] == "rate_limited" and "retry after" in error(r)["message"]
    assert int(r.headers["Retry-After"]) >= 1
    # Another actor has its own bucket; /health is never limited.
    assert (await small.get("/v1/org", headers=auth("admin", None, "other"))).status_code == 200
    for _ in range(10):
        assert (await small.get("/health")).status_code == 200


async def test_requests_without_a_valid_token_share_their_address_bucket(small: httpx.AsyncClient) -> None:
    forged = {"Authorization": "Bearer not-a-token"}
    statuses = [(await small.get("/v1/org", headers=forged if i % 2 else {})).status_code for i in range(5)]
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]


def test_the_bucket_refills_at_the_rate(baton: Container, tokens: Tokens) -> None:
    now = [100.0]
    limiter = RateLimit(create_app(baton, tokens), tokens, rate=2, burst=2, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] += 60
    assert [limiter.take("k") for _ in range(3)][:2] == [0.0, 0.0]


def test_idle_buckets_are_forgotten_when_there_are_too_many(baton: Container, tokens: Tokens) -> None:
    now = [0.0]
    limiter = RateLimit(create_app(baton, tokens), tokens, rate=10, burst=5, clock=lambda: now[0])
    limiter.MAX_KEYS = 100
    for i in range(100):
        limiter.take(f"k{i}")
    now[0] += 1.0
    limiter.take("new")
    assert set(limiter.buckets) == {"new"}


async def test_the_default_limits_come_from_the_settings(baton: Container, tokens: Tokens, auth: Auth) -> None:
    baton.settings.rate_limit = 0.01
    baton.settings.rate_burst = 2
    baton.settings.http_max_body = 10
    async with http(create_app(baton, tokens)) as c:
        admin = auth("admin", None, "root")
        assert (await c.post("/v1/org/units", json=unit(5), headers=admin)).status_code == 413
        assert (await c.get("/v1/org", headers=admin)).status_code == 200
        assert (await c.get("/v1/org", headers=admin)).status_code == 429


async def test_nul_characters_are_refused_wherever_they_come(baton: Container, tokens: Tokens, auth: Auth) -> None:
    admin = auth("admin", None, "root")
    async with http(create_app(baton, tokens, rate_limit=0)) as small:
        await _refuse_nul(small, admin)


async def _refuse_nul(small: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for r in (
        await small.get("/v1/whistles/abc%00def", headers=admin),
        await small.get("/v1/whistles", params={"community": "ti\x00shu"}, headers=admin),
        await small.post("/v1/org/units", json={"id": "x", "kind": "city", "name": "a\x00b"}, headers=admin),
    ):
        assert r.status_code == 422 and "NUL" in error(r)["message"], r.text

    async def split() -> AsyncIterator[bytes]:
        yield b'{"id": "x", "kind": "city", "name": "a\\u00'
        yield b'00b"}'

    headers = {**admin, "Content-Type": "application/json"}
    r = await small.post("/v1/org/units", content=split(), headers=headers)
    assert r.status_code == 422 and "NUL" in error(r)["message"], r.text


async def test_bodies_that_are_not_json_say_so_with_422(baton: Container, tokens: Tokens, auth: Auth) -> None:
    async with http(create_app(baton, tokens, rate_limit=0)) as c:
        headers = {**auth("admin", None, "root"), "Content-Type": "application/json"}
        cases = [
            (b'{"id": "\xff"}', "not UTF-8"),
            (b"[" * 100_000, "nested too deeply"),
            (b'{"id": "x",', "not valid JSON"),
        ]
        for content, says in cases:
            r = await c.post("/v1/org/units", content=content, headers=headers)
            assert r.status_code == 422 and says in error(r)["message"], r.text
