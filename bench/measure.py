"""Baton's public paths measured on one backend, each next to its bare substrate in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import tempfile
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
from bench.served import BoardPoller, Load, Row, Served, latencies, measure_reads, p50_p99, run_paced, write_rows, wrk
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
from services.access import Actor, Context, Role

log = structlog.get_logger("baton.bench")

PG_URL = os.environ.get("BATON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    wrk_seconds: float
    """How long wrk loads each HTTP row (whole seconds)."""
    intake_whistles: int
    departments_per_whistle: int
    offered_rates: tuple[int, ...]
    offered_seconds: float
    read_rate: int = 200
    read_seconds: float = 5.0
    bare_latency_saves: int = 300
    drain_timeout: float = 90.0
    projector_process: bool = True
    """Read models and notary in a second process, as `baton serve` runs them; False: all in this process."""
    log_file: Path | None = None
    """Where the projector process writes its log (default: this process's stderr)."""
    http_only: bool = False
    """Only the HTTP rows (baton serve from outside); the in-process ones are not measured."""

    @classmethod
    def full(cls) -> Plan:
        return cls(
            wrk_seconds=5,
            intake_whistles=300,
            departments_per_whistle=5,
            offered_rates=(100, 500, 1000),
            offered_seconds=3.0,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            wrk_seconds=1,
            intake_whistles=8,
            departments_per_whistle=5,
            offered_rates=(100, 500, 1000),
            offered_seconds=0.1,
            read_seconds=0.2,
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
    bare_unit: str | None = None
    """The substrate's unit when it is not Baton's (req/s of bare Starlette next to Baton's cmd/s)."""

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


async def measure(results: Results, key: str, step: Callable[[], Awaitable[Figure]]) -> None:
    """Run one measurement; a failure is recorded for its row and the run goes on."""
    started = time.perf_counter()
    try:
        results.figures[key] = await step()
    except Exception as exc:
        log.exception("bench_measurement_failed", backend=results.backend, measurement=key)
        results.errors[key] = f"{type(exc).__name__}: {exc}"[:200]
    seconds = round(time.perf_counter() - started, 1)
    log.info("bench_measured", backend=results.backend, measurement=key, seconds=seconds)


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

    async def measure(self, key: str, step: Callable[[], Awaitable[Figure]]) -> None:
        """Run one measurement; a failure is recorded for its row and the run goes on."""
        await measure(self.results, key, step)

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


class ServedBench:
    """The HTTP rows on a served Baton: rates by wrk against bare Starlette's, latencies by the paced client."""

    HTTP_ROWS = ("http_404", "http_org", "http_board", "http_blow", "http_report_in")

    def __init__(self, served: Served, plan: Plan, results: Results) -> None:
        self.served, self.plan, self.results = served, plan, results
        self.scratch = served.settings.data_dir / "load"
        self.scratch.mkdir(exist_ok=True)
        self.loads: dict[str, Load] = {}

    async def wrk(self, name: str, url: str, rows: Sequence[Row]) -> Load:
        """wrk against url with rows, in its own process; refused answers or socket errors fail the row."""
        path = write_rows(self.scratch / f"{name}.tsv", rows)
        load = await asyncio.to_thread(wrk, url, path, self.plan.wrk_seconds, self.scratch / "rows.lua")
        log.info("bench_wrk", backend=self.results.backend, row=name, rate=round(load.rate), p99_ms=load.p99_ms)
        if load.socket_errors:
            raise RuntimeError(f"{load.socket_errors} of {load.requests} requests failed on the socket")
        if name != "http_404" and load.status_errors:
            raise RuntimeError(f"{load.status_errors} of {load.requests} requests were answered 4xx/5xx")
        self.loads[name] = load
        return load

    async def rate_row(self, key: str, rows: Callable[[], Awaitable[Sequence[Row]]]) -> None:
        async def step() -> Figure:
            await self.wrk(key, self.served.url, await rows())
            return Figure("req/s", 0, 0)  # filled in once bare Starlette's figure of the run is known

        await measure(self.results, key, step)

    async def run(self) -> None:
        served, plan = self.served, self.plan
        bare_rows = [Row("bare", "GET", "/")]
        before = await self.wrk("bare_before", served.bare_url, bare_rows)

        async def rows(*made: Row) -> Sequence[Row]:
            return made

        admin = served.auth("admin")
        await self.rate_row("http_404", lambda: rows(Row("404", "GET", "/v1/no-such-path")))
        await self.rate_row("http_org", lambda: rows(Row("org", "GET", "/v1/org", admin)))
        await self.rate_row("http_blow", lambda: rows(*served.blow_rows()))
        await served.settle(plan.drain_timeout)
        await self.rate_row("http_board", lambda: rows(Row("board", "GET", "/v1/whistles?limit=1", admin)))

        async def report_in() -> Sequence[Row]:
            return served.report_in_rows(await served.whistles())

        await self.rate_row("http_report_in", report_in)
        after = await self.wrk("bare_after", served.bare_url, bare_rows)
        bare = max(before.rate, after.rate)
        for key in self.HTTP_ROWS:
            if key in self.loads:
                self.results.figures[key] = self.rate_figure(key, bare)
        await served.settle(plan.drain_timeout)
        one_save = await asyncio.to_thread(bare_saves, served.settings, plan.bare_latency_saves, "BareLatency")
        write_rows(self.scratch / "blow.tsv", served.blow_rows())
        for rate in plan.offered_rates:
            await measure(self.results, f"latency_{rate}", lambda rate=rate: self.board_latency(rate, one_save))
        await measure(self.results, "reads", self.reads)

    def rate_figure(self, key: str, bare: float) -> Figure:
        load = self.loads[key]
        unit = "cmd/s" if key in ("http_blow", "http_report_in") else "req/s"
        note = f"p50 {load.p50_ms:.1f} / p99 {load.p99_ms:.1f} ms"
        return Figure(unit, load.rate, bare, note=note, bare_unit="req/s")

    async def board_latency(self, rate: int, one_save: Timing) -> Figure:
        """Blows at `rate` from the paced client's process; latency = due until the board (read from here) has it."""
        served, plan = self.served, self.plan
        await served.settle(plan.drain_timeout)
        poller = BoardPoller(served._baton())
        try:
            out = self.scratch / f"paced-{rate}.jsonl"
            records = await asyncio.to_thread(
                run_paced, served.url, self.scratch / "blow.tsv", rate, plan.offered_seconds, out, plan.drain_timeout
            )
            refused = [r for r in records if r["status"] != 201]
            if refused:
                raise RuntimeError(f"{len(refused)} of {len(records)} commands refused, e.g. status {refused[0]}")
            await served.settle(plan.drain_timeout)
        finally:
            poller.stop()

        def seen(position: int) -> float:
            at = poller.seen_at(position)
            assert at is not None, f"the board never showed position {position}"
            return at

        p50, p99 = p50_p99(latencies(records, seen))
        started = min(r["due"] for r in records)
        achieved = len(records) / max(max(r["answered"] for r in records) - started, len(records) / rate)
        note = f"{len(records)} commands, from the paced client's process"
        if achieved < 0.95 * rate:
            note += f"; achieved {achieved:,.0f}/s of {rate:,}/s offered"
        bare_p50, bare_p99 = p50_p99(one_save.each)
        return Figure("ms", p50, bare_p50, ours_p99=p99, bare_p99=bare_p99, note=note)

    async def reads(self) -> Figure:
        """Reads a community's pages make, round robin at plan.read_rate, against GET {} of bare Starlette."""
        served, plan = self.served, self.plan
        await served.settle(plan.drain_timeout)
        found = await measure_reads(served, self.scratch, plan.read_rate, plan.read_seconds, plan.drain_timeout)
        (p50, p99), (bare_p50, bare_p99) = found["ours"], found["bare"]
        by_kind = found["kinds"]
        worst = max(by_kind, key=lambda k: by_kind[k][1])
        note = f"{len(by_kind)} kinds round robin ({', '.join(by_kind)}); "
        note += f"slowest p99: {worst} {by_kind[worst][1]:.1f} ms"
        return Figure("ms", p50, bare_p50, ours_p99=p99, bare_p99=bare_p99, note=note)


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
    schemas = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    try:
        with tempfile.TemporaryDirectory(prefix=f"baton-bench-{backend}-") as tmp:
            served, data_dir = Path(tmp) / "served", Path(tmp) / "in-process"
            stores = [f"{PG_URL}?schema={s}" if backend == "postgres" else "sqlite" for s in schemas]
            try:
                await _measure_served(_settings(served, stores[0]), plan, results)
                if not plan.http_only:
                    await _measure_all(_settings(data_dir, stores[1]), plan, results)
            finally:
                if backend == "postgres":
                    for schema in schemas:
                        await asyncio.to_thread(drop_schema, schema)
    except Exception as exc:
        log.exception("bench_backend_failed", backend=backend)
        results.errors["*"] = f"{type(exc).__name__}: {exc}"[:200]
    return results


def _settings(data_dir: Path, store: str) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=data_dir, store=store, watch_interval=3600, _env_file=None)  # type: ignore[call-arg]


async def _measure_served(settings: Settings, plan: Plan, results: Results) -> None:
    """The HTTP rows: `baton serve` and bare Starlette in their own processes, loaded from others."""
    served = Served(settings, plan.projector_process, plan.log_file)
    try:
        async with served.running():
            await ServedBench(served, plan, results).run()
    except Exception as exc:
        log.exception("bench_served_failed", backend=results.backend)
        for key in (*ServedBench.HTTP_ROWS, "reads", *(f"latency_{rate}" for rate in plan.offered_rates)):
            if key not in results.figures:
                results.errors.setdefault(key, f"{type(exc).__name__}: {exc}"[:200])


async def _measure_all(settings: Settings, plan: Plan, results: Results) -> None:
    bench = Bench(settings, plan, results)
    async with bench.running():
        await bench.measure("intake", bench.intake_throughput)
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
