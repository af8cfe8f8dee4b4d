"""Fixtures: the real event store (SQLite and PostgreSQL), a real nats-server, real HTTP through the ASGI app."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import nats
import psycopg
import pytest
from psycopg import sql

from api.app import create_app
from api.tokens import Tokens
from infra.bootstrap import Container, Runtime, bootstrap
from infra.clock import ManualClock
from infra.jetstream import DEPT_STREAM, department_durable
from infra.nats_server import EmbeddedNats
from infra.settings import Settings
from services.access import Actor, Context, Role

if TYPE_CHECKING:
    from tests.faults import Served

PG_URL = os.environ.get("BATON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    problem = _postgres_reachable()
    if problem:
        message = f"PostgreSQL at {PG_URL} is not reachable: {problem}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + " (CI not set, so skipping)")
    return PG_URL


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return Settings(
            data_dir=tmp_path, store=f"{PG_URL}?schema={schema}", watch_interval=3600, checkpoint_interval=0.5
        )
    return Settings(data_dir=tmp_path, store="sqlite", watch_interval=3600, checkpoint_interval=0.5)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, store="sqlite", watch_interval=3600, checkpoint_interval=0.5)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def baton(settings: Settings, clock: ManualClock) -> Iterator[Container]:
    b = bootstrap(settings, clock)
    yield b
    b.close()


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server (the wheel's, v2.15) with JetStream, on a free port and its own data dir."""
    server = EmbeddedNats(tmp_path / "nats-test")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def runtime(baton: Container, nats_server: EmbeddedNats) -> AsyncIterator[Runtime]:
    rt = Runtime(baton, nats_url=nats_server.url, watch=False)
    await rt.start()
    yield rt
    await rt.stop()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(b"test-secret-that-is-long-enough-for-hs256!")


@pytest.fixture
async def client(baton: Container, tokens: Tokens) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(baton, tokens)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test") as c:
        yield c


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`baton serve` as a child process on free ports (SQLite, no rate limit), for tests over real HTTP."""
    from tests.faults import Served

    server = Served(tmp_path_factory.mktemp("served"), "sqlite")
    try:
        asyncio.run(server.start())
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[nats.aio.client.Client]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


class Auth:
    """Authorization headers for actors of the test county."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def __call__(self, role: str, unit: str | None = None, actor: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(role, unit, actor)}"}


@pytest.fixture
def auth(tokens: Tokens) -> Auth:
    return Auth(tokens)


UNITS = [
    {"id": "maanshan", "kind": "city", "name": "马鞍山市"},
    {"id": "dangtu", "kind": "district", "parent": "maanshan", "name": "当涂县"},
    {"id": "gushu", "kind": "street", "parent": "dangtu", "name": "姑孰镇"},
    {"id": "huxi", "kind": "street", "parent": "dangtu", "name": "护河镇"},
    {"id": "tishu", "kind": "community", "parent": "gushu", "name": "提署社区", "residents": 12000},
    {"id": "qingshan", "kind": "community", "parent": "gushu", "name": "青山社区", "residents": 9000},
    {"id": "taibai", "kind": "community", "parent": "huxi", "name": "太白社区", "residents": 8000},
    {"id": "tishu-g1", "kind": "grid", "parent": "tishu", "name": "提署一网格"},
]
DEPARTMENTS = [("PSB", "派出所"), ("HOUSING", "住建局"), ("URBAN", "城管局"), ("EDU", "教育局"), ("WATER", "水务公司")]
CATEGORIES = [
    {"code": "drainage", "name": "排水", "duty": "department", "departments": ["HOUSING"]},
    {"code": "security", "name": "治安", "duty": "department", "departments": ["PSB"]},
    {
        "code": "water_outage",
        "name": "停水",
        "duty": "department",
        "departments": ["WATER"],
        "deadline_class": "utilities",
    },
    {"code": "neighbourhood", "name": "邻里纠纷", "duty": "community", "departments": []},
]
ADMIN = Actor(Role.ADMIN, None, "root")


async def seed_county(client: httpx.AsyncClient, auth: Auth) -> None:
    """A small county over HTTP: a city, a district, two streets, three communities, a grid, five departments."""
    admin = auth("admin", None, "root")
    requests = [("/v1/org/units", u) for u in UNITS]
    requests += [("/v1/org/departments", {"code": c, "name": n}) for c, n in DEPARTMENTS]
    requests += [("/v1/org/categories", c) for c in CATEGORIES]
    for path, payload in requests:
        r = await client.post(path, json=payload, headers=admin)
        assert r.status_code == 201, r.text


def seed_county_direct(baton: Container) -> None:
    """The same county, through the application services (no HTTP)."""
    ctx = Context(actor=ADMIN, correlation_id="seed")
    for u in UNITS:
        baton.org.add_unit(
            ctx,
            unit_id=u["id"],
            kind=u["kind"],
            parent_id=u.get("parent"),
            name=u["name"],
            residents=u.get("residents"),
        )
    for code, name in DEPARTMENTS:
        baton.org.add_department(ctx, code=code, name=name)
    for c in CATEGORIES:
        baton.org.define_category(
            ctx,
            code=c["code"],
            name=c["name"],
            duty=c["duty"],
            departments=c["departments"],
            deadline_class=c.get("deadline_class", "normal"),
            deadline_overrides={},
        )


def blow_direct(baton: Container, n: int = 1, community: str = "tishu") -> list[str]:
    """Blow n whistles through the application service; return their ids."""
    ctx = Context(actor=Actor(Role.COMMUNITY, community, "wang"), correlation_id="direct")
    return [
        baton.whistles.blow(
            ctx,
            community_id=community,
            category="drainage",
            title=f"Drain {i}",
            description="Blocked",
            summoned_departments=["HOUSING"],
        ).body["whistle_id"]
        for i in range(n)
    ]


async def blow(client: httpx.AsyncClient, auth: Auth, **overrides: Any) -> str:
    body = {
        "community_id": "tishu",
        "category": "drainage",
        "title": "Blocked drain at building 3",
        "description": "Sewage backing up into the courtyard since morning.",
        "summoned_departments": ["HOUSING", "PSB"],
    }
    body.update(overrides)
    r = await client.post("/v1/whistles", json=body, headers=auth("community", body["community_id"], "wang"))
    assert r.status_code == 201, r.text
    return str(r.json()["whistle_id"])


async def stream_messages(
    nc: nats.aio.client.Client, stream: str, subject: str = ">", timeout: float = 1.0
) -> list[Any]:
    """Every message a stream holds (on subject), read with an ephemeral ordered consumer."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out: list[Any] = []
    if not info.state.messages:
        return out
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except TimeoutError:
                break
            out.append(msg)
            if msg.metadata.sequence.stream >= info.state.last_seq:
                break
    finally:
        await sub.unsubscribe()
    return out


def body(msg: Any) -> dict[str, Any]:
    return dict(json.loads(msg.data))


class DepartmentFeed:
    """A department system's read of its durable consumer dept_CODE: outcomes, with inbox messages set aside."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.inbox: list[Any] = []

    @classmethod
    async def bind(cls, js: Any, code: str) -> DepartmentFeed:
        return cls(await js.pull_subscribe_bind(durable=department_durable(code), stream=DEPT_STREAM))

    async def outcomes(self, n: int, timeout: float = 10.0) -> list[Any]:
        """The next n outcome messages, each acked; TimeoutError if fewer arrive in time."""
        got: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < n:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{len(got)} of {n} outcomes arrived in {timeout}s")
            try:
                batch = await self.sub.fetch(n - len(got), timeout=min(left, 1.0))
            except TimeoutError:
                continue
            for msg in batch:
                await msg.ack()
                (got if msg.subject.endswith(".outcome") else self.inbox).append(msg)
        return got


# Servers' ports come from below the kernel's ephemeral range (so no outgoing connection takes one), and each
# parallel worker (pytest-xdist) draws from its own slice, so two workers never start servers on one port.
FREE_PORTS = range(20000, 32000)


def pytest_configure(config: pytest.Config) -> None:
    """Give this process (one xdist worker, or the only one) its own slice of FREE_PORTS."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = len(FREE_PORTS) // count
    low = FREE_PORTS.start + int(worker.removeprefix("gw")) * width
    os.environ["BATON_FREE_PORTS"] = f"{low}-{low + width - 1}"


_TIER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each test's setup, call and teardown time to its tier (tests/unit, integration, e2e)."""
    parts = report.nodeid.split("/")
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Seconds spent per tier (summed over parallel workers), so the suite's budget is watched where it goes."""
    if _TIER_SECONDS:
        shares = ", ".join(f"{tier} {seconds:.0f} s" for tier, seconds in sorted(_TIER_SECONDS.items()))
        terminalreporter.write_line(f"time per tier: {shares}")
