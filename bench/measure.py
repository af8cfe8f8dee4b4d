"""Baton's public paths measured on one backend, each next to its bare substrate in the same run."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import json
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import structlog
from psycopg import sql

from api.app import create_app
from api.tokens import Tokens
from audit.verify import verify
from bench.substrate import BARE_STREAM, Timing, bare_publish, bare_read, bare_saves, bare_sha256
from demo.county import County, build_county
from infra.bootstrap import ALL, COMMANDS, Container, Runtime, bootstrap
from infra.cli import _rebuild
from infra.export import export
from infra.jetstream import (
    AUDITOR_DURABLE,
    EVENTS_STREAM,
    INTAKE_STREAM,
    JetStreamPublisher,
    ensure_streams,
)
from infra.nats_server import EmbeddedNats
from infra.relay import Relay
from infra.settings import Settings
from projections.base import BatonProjection
from services.access import Actor, Context, Role

log = structlog.get_logger("baton.bench")

PG_URL = os.environ.get("BATON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
HTTP_CONCURRENCY = 8
"""HTTP clients sending commands at once in the throughput measurement (closed loop)."""


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    http_commands: int
    intake_whistles: int
    departments_per_whistle: int
    offered_rates: tuple[int, ...]
    offered_seconds: float
    bare_latency_saves: int = 300
    drain_timeout: float = 90.0
    projector_process: bool = True
    log_file: Path | None = None
    """Where the projector process writes its log (default: this process's stderr)."""
    """Read models and notary in a second process, as `baton serve` runs them; False: all in this process."""

    @classmethod
    def full(cls) -> Plan:
        return cls(
            http_commands=1500,
            intake_whistles=300,
            departments_per_whistle=5,
            offered_rates=(100, 500, 1000),
            offered_seconds=3.0,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            http_commands=40,
            intake_whistles=8,
            departments_per_whistle=5,
            offered_rates=(100, 500, 1000),
            offered_seconds=0.1,
            bare_latency_saves=30,
            drain_timeout=30.0,
        )


@dataclass
class Figure:
    """One cell pair of the table: Baton's figure and the bare substrate's, with how to read them."""

    unit: str
    ours: float
    bare: float
    ours_p99: float | None = None
    bare_p99: float | None = None
    note: str = ""

    @property
    def latency(self) -> bool:
        return self.unit == "ms"

    @property
    def ratio(self) -> float:
        """The fraction of the substrate's speed Baton reaches (throughput ratio; bare/ours for a latency)."""
        if self.latency:
            return self.bare / self.ours if self.ours else 0.0
        return self.ours / self.bare if self.bare else 0.0

    @property
    def ratio_p99(self) -> float | None:
        if self.ours_p99 is None or self.bare_p99 is None or not self.ours_p99:
            return None
        return self.bare_p99 / self.ours_p99


@dataclass
class Results:
    """Every figure measured on one backend, by row key, and what went wrong if a measurement failed."""

    backend: str
    figures: dict[str, Figure] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    events: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def best(*timings: Timing) -> Timing:
    """The fastest of the bare runs around a measurement: a noisy neighbour slows the substrate, never speeds it."""
    return max(timings, key=lambda t: t.rate)


class BoardClock:
    """When the whistle board's read model reached each position: wraps the projection instance's process_batch."""

    def __init__(self, projection: BatonProjection[Any]) -> None:
        self.positions: list[int] = []
        self.times: list[float] = []
        original = projection.process_batch

        def timed(envelopes: Sequence[Any]) -> int:
            self.reached(original(envelopes))
            return self.positions[-1]

        projection.process_batch = timed  # type: ignore[method-assign]

    def reached(self, position: int) -> None:
        now = time.perf_counter()
        if not self.positions or position > self.positions[-1]:
            self.positions.append(position)
            self.times.append(now)

    def seen_at(self, position: int) -> float | None:
        """When the read model first held this position (None if not yet)."""
        index = bisect.bisect_left(self.positions, position)
        return self.times[index] if index < len(self.times) else None

    def stop(self) -> None:
        """Nothing to stop: the clock is the projection's own call."""


class BoardPoller(BoardClock):
    """The same clock for a board another process updates: its tracking position read every POLL seconds."""

    POLL = 0.002

    def __init__(self, projection: BatonProjection[Any]) -> None:
        self.positions, self.times = [], []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(projection,), name="board-poller", daemon=True)
        self._thread.start()

    def _poll(self, projection: BatonProjection[Any]) -> None:
        while not self._stopped.wait(self.POLL):
            self.reached(projection.position())

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


class Bench:
    """One backend's Baton (store, runtime on its own nats-server, ASGI app) and the measurements on it."""

    def __init__(self, settings: Settings, plan: Plan, results: Results) -> None:
        self.settings = settings
        self.plan = plan
        self.results = results
        self.county: County = build_county()
        self.tokens = Tokens(b"bench-secret-that-is-long-enough-for-hs256!")
        self.headers: dict[tuple[str, str | None], dict[str, str]] = {}
        self.rng = random.Random(7)
        self.baton: Container | None = None
        self.server: EmbeddedNats | None = None
        self.runtime: Runtime | None = None
        self.http: httpx.AsyncClient | None = None

    def auth(self, role: str, unit: str | None = None) -> dict[str, str]:
        key = (role, unit)
        if key not in self.headers:
            token = self.tokens.issue(role, unit, f"{role}-{unit or 'county'}")
            self.headers[key] = {"Authorization": f"Bearer {token}"}
        return self.headers[key]

    # Lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Bootstrap, seed the county, start nats-server and the runtime; stop all of it however we leave."""
        self.baton = bootstrap(self.settings)
        try:
            app = create_app(self.baton, self.tokens, rate_limit=0)

            @app.post("/bench/noop", include_in_schema=False)
            def noop() -> dict[str, Any]:
                """The HTTP stack alone: the same app, middleware and threadpool as a command, no work."""
                return {}

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://baton.bench", timeout=60) as http:
                self.http = http
                await self._seed()
                self.server = EmbeddedNats(self.settings.data_dir / "nats-runtime")
                await self.server.start()
                try:
                    part = COMMANDS if self.plan.projector_process else ALL
                    self.runtime = Runtime(
                        self.baton, nats_url=self.server.url, watch=False, part=part, projector_log=self.plan.log_file
                    )
                    await self.runtime.start()
                    try:
                        await self.settle(60)
                        yield
                    finally:
                        await self.stop_runtime()
                finally:
                    await self.server.stop()
        finally:
            self.baton.close()

    async def stop_runtime(self) -> None:
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            await runtime.stop()

    async def _seed(self) -> None:
        """The demo county (13 communities, their grids, 10 departments, 13 categories) over HTTP."""
        admin = self.auth("admin")
        steps = [("/v1/org/units", u) for u in self.county.units]
        steps += [("/v1/org/departments", d) for d in self.county.departments]
        steps += [("/v1/org/categories", c) for c in self.county.categories]
        for path, payload in steps:
            r = await self._client().post(path, json=payload, headers=admin)
            if r.status_code != 201:
                raise RuntimeError(f"seeding {path}: {r.status_code} {r.text}")

    def _client(self) -> httpx.AsyncClient:
        assert self.http is not None
        return self.http

    def _runtime(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    def _baton(self) -> Container:
        assert self.baton is not None
        return self.baton

    async def settle(self, timeout: float | None = None) -> None:
        """Wait until relay, projections, notary and every consumer of Baton's have nothing left to do.

        runtime.wait_idle() does not cover the inbox consumer (it fsyncs into BATON_DEPT); a bare loop timed
        while it still works measures nats-server's fsyncs as much as the backend.
        """
        runtime = self._runtime()
        timeout = timeout or self.plan.drain_timeout
        await runtime.wait_idle(timeout=timeout)
        assert runtime.nc is not None
        js = runtime.nc.jetstream()
        async with asyncio.timeout(timeout):
            while True:
                busy = [
                    c.name
                    for name in (EVENTS_STREAM, INTAKE_STREAM)
                    for c in await js.consumers_info(name)
                    if c.name != AUDITOR_DURABLE and (c.num_pending or c.num_ack_pending)
                ]
                if not busy:
                    break
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)

    async def bare_saves(self, n: int, name: str) -> Timing:
        """The bare save loop, timed once Baton has settled (so nothing of Baton's competes with it)."""
        await self.settle()
        return await asyncio.to_thread(bare_saves, self.settings, n, name)

    def blow_body(self, i: int, departments: list[str] | None = None) -> dict[str, Any]:
        community = self.county.communities[i % len(self.county.communities)]
        return {
            "community_id": community,
            "category": "drainage",
            "title": f"下水道堵塞 {i}",
            "description": "Sewage backing up into the courtyard of building 3 since morning.",
            "summoned_departments": departments or ["HOUSING"],
        }

    async def blow_http(self, i: int, path: str = "/v1/whistles") -> httpx.Response:
        body = self.blow_body(i)
        headers = {**self.auth("community", body["community_id"]), "Idempotency-Key": uuid.uuid4().hex}
        return await self._client().post(path, json=body, headers=headers)

    async def measure(self, key: str, step: Callable[[], Awaitable[Figure]]) -> None:
        """Run one measurement; a failure is recorded for its row and the run goes on."""
        started = time.perf_counter()
        try:
            self.results.figures[key] = await step()
        except Exception as exc:
            log.exception("bench_measurement_failed", backend=self.results.backend, measurement=key)
            self.results.errors[key] = f"{type(exc).__name__}: {exc}"[:200]
        seconds = round(time.perf_counter() - started, 1)
        log.info("bench_measured", backend=self.results.backend, measurement=key, seconds=seconds)

    # 1. HTTP commands -----------------------------------------------------------------------

    async def http_throughput(self) -> Figure:
        """Blow whistles over HTTP with HTTP_CONCURRENCY clients, store + relay + projections running."""
        n = self.plan.http_commands
        before = await self.bare_saves(n, "BareHttp")
        counter = iter(range(n))
        failures: list[str] = []

        async def client() -> None:
            for i in counter:
                r = await self.blow_http(i)
                if r.status_code != 201:
                    failures.append(r.text[:200])

        started = time.perf_counter()
        async with asyncio.timeout(self.plan.drain_timeout * 2):
            await asyncio.gather(*(client() for _ in range(HTTP_CONCURRENCY)))
        seconds = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{len(failures)} of {n} commands refused, e.g. {failures[0]}")
        noop = await self._closed_loop(n, lambda i: self.blow_http(i, "/bench/noop"))
        bare = best(before, await self.bare_saves(n, "BareHttp"))
        self.results.figures["http_noop"] = Figure("req/s", noop, bare.rate, note="the HTTP stack's own ceiling")
        return Figure("cmd/s", n / seconds, bare.rate, note=f"{HTTP_CONCURRENCY} clients")

    async def _closed_loop(self, n: int, send: Callable[[int], Awaitable[httpx.Response]]) -> float:
        """Requests/s of n requests sent by HTTP_CONCURRENCY clients, each sending its next on an answer."""
        counter = iter(range(n))

        async def client() -> None:
            for i in counter:
                r = await send(i)
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(HTTP_CONCURRENCY)))
        return n / (time.perf_counter() - started)

    # 2. NATS intake --------------------------------------------------------------------------

    async def intake_throughput(self) -> Figure:
        """report_in commands from department systems over NATS, counted by their outcomes."""
        plan = self.plan
        codes = [d["code"] for d in self.county.departments][: plan.departments_per_whistle]
        whistles = await asyncio.to_thread(self._blow_direct, plan.intake_whistles, codes)
        await self.settle()
        commands = [(code, w) for w in whistles for code in codes]
        self.rng.shuffle(commands)
        n = len(commands)
        before = await self.bare_saves(n, "BareIntake")

        nc = await nats.connect(self._runtime().url, connect_timeout=5)
        try:
            outcomes: list[dict[str, Any]] = []
            done = asyncio.Event()
            last = [0.0]

            async def on_outcome(msg: Any) -> None:
                outcomes.append(json.loads(msg.data))
                if len(outcomes) >= n:
                    last[0] = time.perf_counter()
                    done.set()

            sub = await nc.subscribe("baton.dept.*.outcome", cb=on_outcome)
            await nc.flush()
            js = nc.jetstream()
            started = time.perf_counter()
            async with asyncio.timeout(plan.drain_timeout):
                acks = []
                for code, whistle_id in commands:
                    payload = json.dumps({"command_id": uuid.uuid4().hex, "whistle_id": whistle_id}).encode()
                    acks.append(await js.publish_async(f"baton.dept.{code}.cmd.report_in", payload))
                await asyncio.gather(*acks)
                await done.wait()
            await sub.unsubscribe()
        finally:
            await nc.close()
        refused = [o for o in outcomes if o.get("status") != "accepted"]
        if refused:
            raise RuntimeError(f"{len(refused)} of {n} commands refused, e.g. {refused[0]}")
        bare = best(before, await self.bare_saves(n, "BareIntake"))
        return Figure(
            "cmd/s", n / (last[0] - started), bare.rate, note=f"{plan.departments_per_whistle} departments a whistle"
        )

    def _blow_direct(self, n: int, departments: list[str]) -> list[str]:
        whistles = self._baton().whistles
        out = []
        for i in range(n):
            body = self.blow_body(i, departments)
            ctx = Context(actor=Actor(Role.COMMUNITY, body["community_id"], "bench"), correlation_id="bench")
            out.append(str(whistles.blow(ctx, **body).body["whistle_id"]))
        return out

    # 3. Command-to-read-model latency -------------------------------------------------------

    async def latency(self, rate: int, board: BoardClock, bare: Timing) -> Figure:
        """Open loop: a blow every 1/rate s whatever the answers; latency = send until the board shows it."""
        plan = self.plan
        n = max(1, round(rate * plan.offered_seconds))
        await self.settle()
        sent: list[tuple[float, int | None]] = []
        answered: list[float] = []
        failures: list[str] = []

        async def one(i: int, due: float) -> None:
            r = await self.blow_http(i)
            answered.append(time.perf_counter())
            if r.status_code != 201:
                failures.append(r.text[:200])
                return
            sent.append((due, r.json()["position"]))

        tasks: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        for i in range(n):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        offered_for = time.perf_counter() - started
        try:
            async with asyncio.timeout(plan.drain_timeout):
                await asyncio.gather(*tasks)
                await self._runtime().wait_idle(timeout=plan.drain_timeout)
        finally:
            for task in tasks:
                task.cancel()
        idle_at = time.perf_counter()
        if failures:
            raise RuntimeError(f"{len(failures)} of {n} commands refused, e.g. {failures[0]}")
        latencies = []
        unclocked = 0
        for due, position in sent:
            seen = board.seen_at(position or 0)
            if seen is None:
                # The view holds it (wait_idle said so) but no timed batch showed it: count the time the runtime
                # was found idle, an upper bound, and say how many.
                seen, unclocked = idle_at, unclocked + 1
            latencies.append(max(seen - due, 0.0))
        achieved = n / max(max(answered) - started, n / rate)
        note = f"{n} commands"
        if unclocked:
            note += f" ({unclocked} timed at idle, an upper bound)"
        if achieved < 0.95 * rate or offered_for > 1.05 * n / rate:
            note += f"; achieved {achieved:,.0f}/s of {rate:,}/s offered"
        return Figure(
            "ms",
            statistics.median(latencies) * 1000,
            statistics.median(bare.each) * 1000,
            ours_p99=percentile(latencies, 99) * 1000,
            bare_p99=percentile(bare.each, 99) * 1000,
            note=note,
        )

    # 4. Relay ------------------------------------------------------------------------------

    async def relay_throughput(self) -> Figure:
        """The relay publishing the whole store to an empty BATON_EVENTS on a fresh nats-server until caught up."""
        await self.stop_runtime()
        baton = self._baton()
        top = await asyncio.to_thread(baton.store.max_position)
        payloads = await asyncio.to_thread(self._payloads, top)
        server = EmbeddedNats(self.settings.data_dir / "nats-relay")
        await server.start()
        try:
            before = await bare_publish(server.url, payloads, f"{BARE_STREAM}_1", timeout=self.plan.drain_timeout)
            nc = await nats.connect(server.url, connect_timeout=5)
            try:
                await ensure_streams(nc)
                publisher = JetStreamPublisher(nc)
                await publisher.start()
                relay = Relay(baton.store, baton.codec, nc, publisher)
                started = time.perf_counter()
                task = asyncio.create_task(relay.run(), name="bench-relay")
                try:
                    async with asyncio.timeout(self.plan.drain_timeout):
                        while relay.published < top:
                            if task.done():
                                task.result()
                            await asyncio.sleep(0.002)
                    seconds = time.perf_counter() - started
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    await publisher.close()
            finally:
                await nc.close()
            after = await bare_publish(server.url, payloads, f"{BARE_STREAM}_2", timeout=self.plan.drain_timeout)
            bare = best(before, after)
        finally:
            await server.stop()
        return Figure("ev/s", top / seconds, bare.rate, note=f"{top} events")

    def _payloads(self, top: int) -> list[tuple[str, bytes]]:
        """Each event's subject tail and body, exactly as the relay publishes them."""
        baton = self._baton()
        out: list[tuple[str, bytes]] = []
        after = 0
        while after < top:
            batch = baton.store.select(after, 2000)
            if not batch:
                break
            for notification in batch:
                envelope = baton.codec.envelope(notification)
                out.append((f"{envelope.aggregate}.{envelope.type}", envelope.to_json()))
            after = batch[-1].id
        return out


async def rebuild_throughput(settings: Settings) -> Figure:
    """`baton rebuild` (every read model, the CLI's own code path) against one plain read of the log."""
    before = await asyncio.to_thread(bare_read, settings)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the CLI's progress bars
        await asyncio.to_thread(_rebuild, settings, None)
    seconds = time.perf_counter() - started
    bare = best(before, await asyncio.to_thread(bare_read, settings))
    return Figure("ev/s", bare.count / seconds, bare.rate, note=f"{bare.count} events, 4 read models")


async def audit_throughput(settings: Settings, out: Path) -> tuple[Figure, Figure, Figure]:
    """`baton export` then `baton verify`, against SHA-256 of every exported event line."""

    def run_export() -> tuple[dict[str, Any], float]:
        baton = bootstrap(settings)
        try:
            started = time.perf_counter()
            manifest = export(baton, out)
            return manifest, time.perf_counter() - started
        finally:
            baton.close()

    manifest, export_seconds = await asyncio.to_thread(run_export)
    started = time.perf_counter()
    report = await asyncio.to_thread(verify, out)
    verify_seconds = time.perf_counter() - started
    if not report.ok:
        raise RuntimeError(f"verify said {report.code}: {report.notes[:2]}")
    lines = (out / "events.jsonl").read_bytes().splitlines()
    bare = best(*[await asyncio.to_thread(bare_sha256, lines) for _ in range(2)])
    n = int(manifest["tree_size"])
    both = Figure("ev/s", n / (export_seconds + verify_seconds), bare.rate, note=f"{n} events")
    return both, Figure("ev/s", n / export_seconds, bare.rate), Figure("ev/s", n / verify_seconds, bare.rate)


async def run_backend(backend: str, plan: Plan) -> Results:
    """Every measurement on one backend, in a temporary data dir (and PostgreSQL schema), cleaned up after."""
    results = Results(backend)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        with tempfile.TemporaryDirectory(prefix=f"baton-bench-{backend}-") as tmp:
            data_dir = Path(tmp)
            store = f"{PG_URL}?schema={schema}" if backend == "postgres" else "sqlite"
            settings = Settings(data_dir=data_dir, store=store, watch_interval=3600, _env_file=None)  # type: ignore[call-arg]
            try:
                await _measure_all(settings, plan, results)
            finally:
                if backend == "postgres":
                    await asyncio.to_thread(drop_schema, schema)
    except Exception as exc:
        log.exception("bench_backend_failed", backend=backend)
        results.errors["*"] = f"{type(exc).__name__}: {exc}"[:200]
    return results


async def _measure_all(settings: Settings, plan: Plan, results: Results) -> None:
    bench = Bench(settings, plan, results)
    async with bench.running():
        await bench.measure("http", bench.http_throughput)
        await bench.measure("intake", bench.intake_throughput)
        bare = await bench.bare_saves(plan.bare_latency_saves, "BareLatency")
        in_process = None if plan.projector_process else BoardClock(bench._baton().board)
        for rate in plan.offered_rates:
            board = in_process or BoardPoller(bench._baton().board)
            try:
                await bench.measure(f"latency_{rate}", lambda rate=rate, board=board: bench.latency(rate, board, bare))
            finally:
                board.stop()
        await bench.measure("relay", bench.relay_throughput)
        results.events = await asyncio.to_thread(bench._baton().store.max_position)
    await bench.measure("rebuild", lambda: rebuild_throughput(settings))

    async def audit() -> Figure:
        both, exported, verified = await audit_throughput(settings, settings.data_dir / "export")
        results.figures["export"], results.figures["verify"] = exported, verified
        return both

    await bench.measure("audit", audit)


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
