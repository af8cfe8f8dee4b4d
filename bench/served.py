"""Baton's HTTP measured from outside: `baton serve` and a bare Starlette app, each in its own process on the same
uvicorn options, loaded from other processes by wrk (rates) and by a paced client (latencies at an offered rate).

`python -m bench.served bare PORT` serves the bare app; `python -m bench.served paced URL ROWS RATE SECONDS OUT`
sends ROWS' requests at RATE per second, open loop, and writes one JSON line per request to OUT.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from api.tokens import Keyring, Tokens
from bench.substrate import Timing, bare_saves
from demo.county import County, build_county
from infra.bootstrap import Container, bootstrap
from infra.installation import terminate, until_healthy
from infra.nats_server import free_port
from infra.settings import Settings

log = structlog.get_logger("baton.bench")

BATON = str(Path(sys.executable).parent / "baton")
SECRET = "bench-served-secret-that-is-long-enough-for-hs256"
WRK_THREADS = 2
WRK_CONNECTIONS = 16
PACED_CONNECTIONS = 256
"""At most this many requests of the paced client in flight; a request due while all are busy waits (and its
latency, counted from when it was due, says so)."""

WRK_SCRIPT = r"""
-- Rows from a file (kind TAB method TAB path TAB authorization TAB body); thread k of n sends rows k, k+n, ...
-- in turn (again from its first when it runs out; all of them if fewer than n), each POST with its own
-- Idempotency-Key.
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  local stride = tonumber(args[2])
  rows, next_row, sent, prefix = {}, 1, 0, args[3]
  local lines = {}
  for line in io.lines(args[1]) do lines[#lines + 1] = line end
  if #lines < stride then stride = 1 end
  for i, line in ipairs(lines) do
    if stride == 1 or (i - 1) % stride == id then
      local kind, method, path, auth, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {}
      if auth ~= "" then headers["Authorization"] = auth end
      if body ~= "" then headers["Content-Type"] = "application/json" else body = nil end
      rows[#rows + 1] = {method, path, headers, body}
    end
  end
end

function request()
  local row = rows[next_row]
  next_row = next_row % #rows + 1
  sent = sent + 1
  if row[1] == "POST" then row[3]["Idempotency-Key"] = prefix .. "-" .. id .. "-" .. sent end
  return wrk.format(row[1], row[2], row[3], row[4])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Row:
    """One request a load generator sends: its kind (for the figures), method, path, authorization and body."""

    kind: str
    method: str
    path: str
    auth: str = ""
    body: str = ""

    def line(self) -> str:
        return "\t".join((self.kind, self.method, self.path, self.auth, self.body))

    @classmethod
    def parse(cls, line: str) -> Row:
        kind, method, path, auth, body = line.rstrip("\n").split("\t", 4)
        return cls(kind, method, path, auth, body)


def write_rows(path: Path, rows: Iterable[Row]) -> Path:
    path.write_text("".join(row.line() + "\n" for row in rows), encoding="utf-8")
    return path


@dataclass
class Load:
    """What wrk measured: answers, how long, how many were not 2xx/3xx or failed on the socket, p50/p99."""

    requests: int
    seconds: float
    status_errors: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, rows: Path, seconds: float, script: Path) -> Load:
    """wrk -t2 -c16 for `seconds` (whole seconds, at least one) sending rows in turn; its summary."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (`make bench` does, as root)")
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    command = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(rows),
        str(WRK_THREADS),
        uuid.uuid4().hex[:12],
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr[-300:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        status_errors=summary["status_errors"],
        socket_errors=summary["socket_errors"],
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
    )


# The bare app ---------------------------------------------------------------------------------


def bare_app() -> Any:
    """Starlette alone: GET / answers {} (the least an HTTP JSON endpoint can cost on this server stack); /health
    says it is up, as `baton serve`'s does."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def empty(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/", empty), Route("/health", health)])


# The paced client --------------------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 keep-alive connection: a request's bytes out, the status and body back (Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def raw_request(row: Row, host: str) -> bytes:
    body = row.body.encode()
    headers = [f"{row.method} {row.path} HTTP/1.1", f"Host: {host}"]
    if row.auth:
        headers.append(f"Authorization: {row.auth}")
    if row.method != "GET":
        headers += [
            "Content-Type: application/json",
            f"Idempotency-Key: {uuid.uuid4().hex}",
            f"Content-Length: {len(body)}",
        ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def paced(url: str, rows: Sequence[Row], rate: float, seconds: float) -> list[dict[str, Any]]:
    """Open loop: request i is due at start + i/rate whatever the answers; each one's due and answered times."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    n = max(1, round(rate * seconds))
    idle = [await Connection.open(host, port) for _ in range(min(16, n))]
    slots = asyncio.Semaphore(PACED_CONNECTIONS)
    out: list[dict[str, Any]] = []

    async def one(row: Row, due: float) -> None:
        async with slots:
            connection = idle.pop() if idle else await Connection.open(host, port)
            try:
                status, body = await connection.request(raw_request(row, parts.netloc))
            except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                status, body = 0, b""
                connection.close()
            else:
                idle.append(connection)
        answered = time.monotonic()
        position = json.loads(body).get("position") if row.method != "GET" and 200 <= status < 300 else None
        out.append({"kind": row.kind, "due": due, "answered": answered, "status": status, "position": position})

    tasks = []
    started = time.monotonic() + 0.05
    for i in range(n):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(rows[i % len(rows)], due)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return out


def run_paced(url: str, rows: Path, rate: float, seconds: float, out: Path, timeout: float) -> list[dict[str, Any]]:
    """The paced client in its own process; each request's record."""
    command = [sys.executable, "-m", "bench.served", "paced", url, str(rows), str(rate), str(seconds), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the paced client exited {done.returncode}: {done.stderr[-300:]}")
    return [json.loads(line) for line in out.read_text().splitlines()]


# Baton served ------------------------------------------------------------------------------------


class BoardPoller:
    """When the whistle board reached each position, as another process sees it: its position read every POLL s."""

    POLL = 0.002

    def __init__(self, baton: Container) -> None:
        self.board = baton.board
        self.positions: list[int] = []
        self.times: list[float] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="board-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopped.wait(self.POLL):
            position, now = self.board.position(), time.monotonic()
            if not self.positions or position > self.positions[-1]:
                self.positions.append(position)
                self.times.append(now)

    def seen_at(self, position: int) -> float | None:
        """When the board first held this position (None if not yet)."""
        index = bisect.bisect_left(self.positions, position)
        return self.times[index] if index < len(self.times) else None

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


@dataclass
class Served:
    """`baton serve` (its own process, the projector its child) and the bare Starlette app (another process)."""

    settings: Settings
    projector_process: bool = True
    log_file: Path | None = None
    http_port: int = field(default_factory=free_port)
    bare_port: int = field(default_factory=free_port)
    county: County = field(default_factory=build_county)
    tokens: Tokens = field(default_factory=lambda: Tokens(Keyring.single(SECRET.encode(), "configured")))
    baton: Container | None = None
    seed: bool = True
    """Seed the demo county over HTTP; False: serve the history the data dir holds."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def bare_url(self) -> str:
        return f"http://127.0.0.1:{self.bare_port}"

    def auth(self, role: str, unit: str | None = None) -> str:
        actor = f"bench-{role}-{unit or 'county'}"
        return f"Bearer {self.tokens.issue(role, unit, actor)}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "BATON_DATA_DIR": str(data_dir),
            "BATON_STORE": self.settings.store,
            "BATON_HTTP_PORT": str(self.http_port),
            "BATON_NATS_PORT": str(free_port()),
            "BATON_WATCH_INTERVAL": "3600",
            "BATON_RATE_LIMIT": "0",
            "BATON_LOG_LEVEL": "warning",
            "BATON_LOG_FORMAT": "json",
            "BATON_TOKEN_SECRET": SECRET,
            "BATON_PROJECTOR_PROCESS": "true" if self.projector_process else "false",
        }
        log_path = self.log_file or data_dir / "serve.log"
        with log_path.open("ab") as out:
            serve = subprocess.Popen([BATON, "serve"], env=env, stdout=out, stderr=out)
            bare = subprocess.Popen(
                [sys.executable, "-m", "bench.served", "bare", str(self.bare_port)], stdout=out, stderr=out
            )
        try:
            await until_healthy(serve, self.url, log_path, 90)
            await until_healthy(bare, self.bare_url, log_path, 30)
            if self.seed:
                await self._seed()
            self.baton = await asyncio.to_thread(bootstrap, self.settings)
            try:
                yield
            finally:
                self.baton.close()
        finally:
            terminate(bare)
            terminate(serve)

    async def _seed(self) -> None:
        """The demo county (13 communities, their grids, 10 departments, 13 categories) over HTTP."""
        headers = {"Authorization": self.auth("admin")}
        steps = [("/v1/org/units", u) for u in self.county.units]
        steps += [("/v1/org/departments", d) for d in self.county.departments]
        steps += [("/v1/org/categories", c) for c in self.county.categories]
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            for path, payload in steps:
                r = await client.post(path, json=payload, headers=headers)
                if r.status_code != 201:
                    raise RuntimeError(f"seeding {path}: {r.status_code} {r.text}")

    def _baton(self) -> Container:
        assert self.baton is not None
        return self.baton

    async def settle(self, timeout: float) -> None:
        """Wait until the whistle board holds everything stored (so a measurement does not pay for the last one's)."""
        baton = self._baton()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            top = await asyncio.to_thread(baton.store.max_position)
            if await asyncio.to_thread(baton.board.position) >= top:
                await asyncio.sleep(0.2)
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the whistle board did not catch up within {timeout:.0f} s")

    async def idle(self, timeout: float) -> dict[str, Any]:
        """Wait until /health says the relay, every read model and the notary hold everything stored; the health."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while True:
                health = (await client.get("/health")).json()
                lags = [health["relay"].get("lag"), (health.get("notary") or {}).get("lag")]
                lags += [p.get("lag") for p in health["projections"].values()]
                if all(lag == 0 for lag in lags):
                    return dict(health)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"baton serve did not catch up within {timeout:.0f} s: {health}")
                await asyncio.sleep(1.0)

    # What the load generators send ---------------------------------------------------------------

    def blow_rows(self) -> list[Row]:
        """A whistle blown by each community in turn, summoning every department (so each can report in)."""
        departments = [d["code"] for d in self.county.departments]
        rows = []
        for i, community in enumerate(self.county.communities):
            body = {
                "community_id": community,
                "category": "drainage",
                "title": f"下水道堵塞 {i}",
                "description": "Sewage backing up into the courtyard of building 3 since morning.",
                "summoned_departments": departments,
            }
            rows.append(Row("blow", "POST", "/v1/whistles", self.auth("community", community), _json(body)))
        return rows

    async def whistles(self) -> list[dict[str, Any]]:
        """Every whistle on the board, newest first (the board's own paging)."""
        headers = {"Authorization": self.auth("admin")}
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while True:
                params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
                r = await client.get("/v1/whistles", params=params, headers=headers)
                r.raise_for_status()
                page = r.json()
                items += page["items"]
                cursor = page["next_cursor"]
                if not cursor:
                    return items

    async def _any_department(self) -> str | None:
        """A department the board's newest whistle summoned (the demo county's HOUSING is not in every county)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            r = await client.get("/v1/whistles", params={"limit": 1}, headers={"Authorization": self.auth("admin")})
            items = r.json()["items"]
        summoned = items[0].get("summoned") if items else None
        return str(summoned[0]) if summoned else None

    def report_in_rows(self, whistles: Sequence[dict[str, Any]]) -> list[Row]:
        """Each summoned department reporting in on each whistle, once, shuffled."""
        departments = [d["code"] for d in self.county.departments]
        tokens = {code: self.auth("department", code) for code in departments}
        rows = [
            Row("report_in", "POST", f"/v1/whistles/{w['whistle_id']}/report-in", tokens[code])
            for w in whistles
            for code in departments
        ]
        random.Random(18).shuffle(rows)
        return rows

    async def read_rows(self) -> list[Row]:
        """Reads a community's page makes: the board (a filter, a second page), a whistle, a scorecard, a branch
        list, a leaderboard; each by the token a person reading it would hold."""
        as_street = self.auth("admin")
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            busiest = await client.get("/v1/whistles", params={"limit": 1}, headers={"Authorization": as_street})
            community = busiest.json()["items"][0]["community_id"]  # one with whistles, in any county
            as_community = self.auth("community", community)
            page = await client.get("/v1/whistles", params={"limit": 20}, headers={"Authorization": as_street})
            ours = await client.get(
                "/v1/whistles", params={"community": community, "limit": 1}, headers={"Authorization": as_community}
            )
        cursor = page.json()["next_cursor"] or "0"
        whistle = ours.json()["items"][0]["whistle_id"]
        department = (await self._any_department()) or "HOUSING"
        return [
            Row("board", "GET", "/v1/whistles?limit=20", as_street),
            Row("board filtered", "GET", f"/v1/whistles?community={community}&status=blown&limit=20", as_community),
            Row("board page 2", "GET", f"/v1/whistles?limit=20&cursor={cursor}", as_street),
            Row("detail", "GET", f"/v1/whistles/{whistle}", as_community),
            Row("scorecard", "GET", f"/v1/scorecards/{department}", as_street),
            Row("branches", "GET", f"/v1/branches?community={community}", as_community),
            Row("leaderboard", "GET", f"/v1/communities/{community}/leaderboard", as_community),
        ]


async def measure_reads(served: Served, scratch: Path, rate: int, seconds: float, timeout: float) -> dict[str, Any]:
    """Reads a community's pages make, round robin at `rate`, then GET {} of bare Starlette at the same rate: p50 and
    p99 of each (ms), and of each kind of read."""
    rows = write_rows(scratch / "reads.tsv", await served.read_rows())
    bare_rows = write_rows(scratch / "bare.tsv", [Row("bare", "GET", "/")])
    ours = await asyncio.to_thread(run_paced, served.url, rows, rate, seconds, scratch / "r.jsonl", timeout)
    bare = await asyncio.to_thread(run_paced, served.bare_url, bare_rows, rate, seconds, scratch / "b.jsonl", timeout)
    refused = [r for r in ours if r["status"] != 200]
    if refused:
        raise RuntimeError(f"{len(refused)} of {len(ours)} reads refused, e.g. {refused[0]}")
    kinds = sorted({r["kind"] for r in ours})
    return {
        "rate": rate,
        "requests": len(ours),
        "ours": p50_p99(latencies(ours)),
        "bare": p50_p99(latencies(bare)),
        "kinds": {k: p50_p99(latencies([r for r in ours if r["kind"] == k])) for k in kinds},
    }


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def latencies(records: Sequence[dict[str, Any]], seen_at: Any = None) -> list[float]:
    """Seconds from when each request was due until it was answered (or, given seen_at, until the board had it)."""
    if seen_at is None:
        return [r["answered"] - r["due"] for r in records]
    return [max(seen_at(r["position"]) - r["due"], 0.0) for r in records]


def p50_p99(values: Sequence[float]) -> tuple[float, float]:
    """Median and 99th percentile (nearest rank), in milliseconds."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(0.99 * len(ordered) + 0.5) - 1))
    return statistics.median(ordered) * 1000, ordered[rank] * 1000


def bare_one_save(settings: Settings, n: int) -> Timing:
    return bare_saves(settings, n, "BareLatency")


def main(argv: list[str]) -> int:
    if argv[:1] == ["bare"]:
        from infra.cli import run_http

        run_http(bare_app(), "127.0.0.1", int(argv[1]))
        return 0
    if argv[:1] == ["paced"]:
        url, rows_file, rate, seconds, out = argv[1:6]
        rows = [Row.parse(line) for line in Path(rows_file).read_text(encoding="utf-8").splitlines()]
        records = asyncio.run(paced(url, rows, float(rate), float(seconds)))
        Path(out).write_text("".join(json.dumps(r) + "\n" for r in records))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
