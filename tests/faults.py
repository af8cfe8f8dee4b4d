"""Fault-test harness: `baton serve` as a real child process, a load of whistles over HTTP and NATS, and the
exactly-once audit run afterwards (store vs BATON_EVENTS vs every read model vs what the clients were told)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client

from api.tokens import Keyring, Tokens
from infra.bootstrap import bootstrap
from infra.installation import terminate, until_healthy
from infra.jetstream import DEPT_STREAM, department_durable
from infra.nats_auth import NatsAuth
from infra.nats_server import free_port
from infra.settings import Settings, nats_servers
from tests.conftest import CATEGORIES, DEPARTMENTS, UNITS, stream_messages

BATON = str(Path(sys.executable).parent / "baton")
SECRET = "fault-tests-secret-that-is-long-enough-for-hs256"


class Served:
    """`baton serve` on a data dir and fixed ports, so a restart comes back at the same addresses.

    With `nats_url` it uses that NATS (a cluster's URLs comma-separated) and logs in with the service login derived
    from `nats_secret` (or the installation's secret under BATON_MASTER_KEY), as an operator's Baton would; else its
    embedded nats-server.
    """

    def __init__(
        self,
        data_dir: Path,
        store: str,
        nats_url: str | None = None,
        nats_secret: str | None = None,
        nats_replicas: int = 1,
        *,
        token_secret: str | None = SECRET,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir, self.store = data_dir, store
        self.nats_url, self.nats_secret, self.nats_replicas = nats_url, nats_secret, nats_replicas
        self.http_port, self.nats_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "serve.log"
        self.token_secret = token_secret
        self._issued: dict[tuple[str, str | None, str | None], str] = {}
        self.extra_env = dict(env or {})
        self.tokens = Tokens(Keyring.single(token_secret.encode(), "configured")) if token_secret else None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "BATON_DATA_DIR": str(self.data_dir),
            "BATON_STORE": self.store,
            "BATON_HTTP_PORT": str(self.http_port),
            "BATON_NATS_PORT": str(self.nats_port),
            "BATON_WATCH_INTERVAL": "3600",
            "BATON_RATE_LIMIT": "0",
            "BATON_LOG_LEVEL": "warning",
            **self.extra_env,
        }
        if self.token_secret is not None:
            env["BATON_TOKEN_SECRET"] = self.token_secret
        if self.nats_url is not None:
            env.update(BATON_NATS_URL=self.nats_url, BATON_NATS_REPLICAS=str(self.nats_replicas))
            if self.nats_secret is not None:
                env["BATON_NATS_SECRET"] = self.nats_secret
        return env

    def settings(self) -> Settings:
        master = self.extra_env.get("BATON_MASTER_KEY")
        return Settings(data_dir=self.data_dir, store=self.store, token_secret=self.token_secret, master_key=master)

    def cli(self, *args: str) -> str:
        """Run `baton ARGS` with this instance's environment; its output, or an error saying what it printed."""
        done = subprocess.run([BATON, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"baton {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([BATON, "serve"], env=self.env, stdout=log, stderr=log)
        self.starts += 1
        await self.ready()

    async def ready(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.process is not None
        return await until_healthy(self.process, self.url, self.log, timeout)

    async def position(self) -> int:
        """The store's position as GET /health reports it, whatever the health (NATS may be down)."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            return int((await client.get(f"{self.url}/health")).json()["store"]["position"])

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs (the embedded nats-server gets SIGTERM from the kernel)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def kill_nats(self) -> int:
        """SIGKILL the embedded nats-server; serve's supervisor must bring it back."""
        pid = int((self.data_dir / "nats" / "nats-server.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        terminate(self.process)

    async def departments_admitted(self, codes: set[str], timeout: float = 60.0) -> None:
        """Wait until serve gave these departments their NATS logins (the embedded server restarts for that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = await self.ready()
            if codes <= set(health["nats"]["departments"]) and health["nats"]["connected"]:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"serve did not admit departments {sorted(codes)} in {timeout}s")

    def auth(self, role: str, unit: str | None = None, actor: str | None = None) -> dict[str, str]:
        """A token's header: from BATON_TOKEN_SECRET if set, else issued by `baton token issue` (kept per actor)."""
        if self.tokens is not None:
            return {"Authorization": f"Bearer {self.tokens.issue(role, unit, actor)}"}
        key = (role, unit, actor)
        if key not in self._issued:
            args = ["--role", role, *(["--unit", unit] if unit else []), *(["--actor", actor] if actor else [])]
            self._issued[key] = self.cli("token", "issue", *args).strip()
        return {"Authorization": f"Bearer {self._issued[key]}"}

    def pause(self, pid: int) -> None:
        """SIGSTOP a process of this instance (serve or its projector): it stands still, connections open."""
        os.kill(pid, signal.SIGSTOP)

    def resume(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)

    async def nats(self) -> Client:
        """A service-level NATS connection to serve's NATS (for the audit and the department client)."""
        if self.nats_url is None:
            service = NatsAuth.load(self.data_dir).service()
            return await nats.connect(
                f"nats://127.0.0.1:{self.nats_port}", user=service.user, password=service.password
            )
        service = NatsAuth.load(self.data_dir, self.nats_secret).service()
        return await nats.connect(
            nats_servers(self.nats_url),
            user=service.user,
            password=service.password,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )


@dataclass
class Sent:
    """One command as the client saw it."""

    correlation_id: str
    what: str
    status: int | None = None
    attempts: int = 0
    unavailable: int = 0  # 503s and connection failures before the answer
    refused_503: int = 0
    codes_503: list[str] = field(default_factory=list)  # the error code of each 503
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Load:
    """Whistles through every step over HTTP, each command retried with its idempotency key until answered.

    Given several instances, commands go round them in turn, and a command that gets no answer (or 502-504) is
    sent again to the next one, as a load balancer does.
    """

    def __init__(self, served: Served | Sequence[Served], read_timeout: float = 10.0) -> None:
        self.targets = [served] if isinstance(served, Served) else list(served)
        self.served = self.targets[0]
        self.sent: list[Sent] = []
        self.nats_sent: dict[str, str] = {}  # command_id -> what, in the order sent
        self.nats_retries = 0
        self.whistles: list[str] = []
        self.stopping = False
        timeout = httpx.Timeout(read_timeout, connect=1.0)
        self.clients = [httpx.AsyncClient(base_url=s.url, timeout=timeout) for s in self.targets]
        self.client = self.clients[0]
        self.turn = itertools.count()
        self.community = self.served.auth("community", "tishu", "wang")
        self.housing = self.served.auth("department", "HOUSING", "housing-desk")

    async def command(self, what: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Sent:
        """Send until the server answers something other than 'unavailable'; the same key every time."""
        sent = Sent(correlation_id=uuid.uuid4().hex, what=what)
        self.sent.append(sent)
        headers = {**headers, "Idempotency-Key": sent.correlation_id, "X-Correlation-Id": sent.correlation_id}
        target = next(self.turn)
        while True:
            sent.attempts += 1
            client = self.clients[target % len(self.clients)]
            try:
                r = await client.post(path, json=body, headers=headers)
            except httpx.HTTPError:
                sent.unavailable += 1
                target += 1
                await asyncio.sleep(0.2 / len(self.clients))
                continue
            if r.status_code in (502, 503, 504):
                sent.unavailable += 1
                sent.refused_503 += r.status_code == 503
                if r.status_code == 503:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        sent.codes_503.append(r.json()["error"]["code"])
                target += 1
                await asyncio.sleep(0.2 / len(self.clients))
                continue
            sent.status, sent.body = r.status_code, r.json()
            return sent

    async def seed(self) -> None:
        admin = self.served.auth("admin", None, "root")
        for path, payload in (
            [("/v1/org/units", u) for u in UNITS]
            + [("/v1/org/departments", {"code": c, "name": n}) for c, n in DEPARTMENTS]
            + [("/v1/org/categories", c) for c in CATEGORIES]
        ):
            sent = await self.command("seed", path, payload, admin)
            assert sent.accepted, sent.body
        await self.served.departments_admitted({c for c, _ in DEPARTMENTS})

    async def story(self) -> None:
        """One whistle from blow to evaluation, with a step out of order that must be refused."""
        blown = await self.command(
            "blow",
            "/v1/whistles",
            {
                "community_id": "tishu",
                "category": "drainage",
                "title": "Blocked drain",
                "description": "Load test",
                "summoned_departments": ["HOUSING", "PSB"],
                "reporter": {"name": "王芳", "phone": "13900001111"},
            },
            self.community,
        )
        assert blown.accepted, blown.body
        wid = blown.body["whistle_id"]
        self.whistles.append(wid)
        steps: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
            ("evaluate-too-early", "evaluate", {"rating": "satisfied"}, self.community),
            ("report-in", "report-in", None, self.housing),
            ("dispatch", "dispatch", {"lead_department": "HOUSING"}, self.community),
            ("complete", "complete", {"summary": "cleared"}, self.housing),
            ("feedback", "feedback", {"result": "cleared", "resolved": True}, self.housing),
            ("evaluate", "evaluate", {"rating": "satisfied"}, self.community),
        ]
        for what, step, body, headers in steps:
            await self.command(what, f"/v1/whistles/{wid}/{step}", body, headers)

    async def worker(self) -> None:
        while not self.stopping:
            await self.story()

    async def department(self, nc: Client) -> None:
        """PSB reports in over NATS for each whistle, plus one malformed command per round; retried until acked."""
        js = nc.jetstream()
        done = 0
        while not self.stopping or done < len(self.whistles):
            if done >= len(self.whistles):
                await asyncio.sleep(0.05)
                continue
            wid = self.whistles[done]
            done += 1
            for action, body in [
                ("report_in", {"whistle_id": wid}),
                ("report_in", {"whistle_id": 42}),  # wrong type: rejected, no event
            ]:
                command_id = uuid.uuid4().hex
                self.nats_sent[command_id] = action
                data = json.dumps({"command_id": command_id, **body}).encode()
                while True:
                    try:
                        await js.publish(f"baton.dept.PSB.cmd.{action}", data, headers={"Nats-Msg-Id": command_id})
                        break
                    except Exception:
                        self.nats_retries += 1
                        await asyncio.sleep(0.2)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@dataclass
class Audit:
    """What the exactly-once audit found."""

    events: int
    published: int
    duplicated: int
    lost: int
    accepted: int
    rejected: int
    rejected_with_events: int
    accepted_without_events: int
    nats_rejected_with_events: int
    nats_accepted_without_events: int
    unavailable_answers: int
    nats_commands: int
    nats_retries: int
    nats_outcomes: Counter[str]
    nats_outcomes_in_order: bool
    read_models_match_rebuild: bool

    def figures(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}


async def department_outcomes(nc: Client, code: str, expected: set[str], timeout: float = 60.0) -> list[Any]:
    """Outcomes on department CODE's durable consumer (taken, as its system would) until each expected command
    id has one, or the time is up."""
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=department_durable(code), stream=DEPT_STREAM)
    out: list[Any] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not expected <= seen:
        try:
            batch = await sub.fetch(500, timeout=1.0)
        except TimeoutError:
            continue
        for msg in batch:
            await msg.ack()
            if msg.subject.endswith(".outcome"):
                seen.add(json.loads(msg.data)["command_id"])
                out.append(msg)
    with contextlib.suppress(TimeoutError):  # anything late would be a second outcome
        for msg in await sub.fetch(500, timeout=2.0):
            await msg.ack()
            if msg.subject.endswith(".outcome"):
                out.append(msg)
    return out


async def settle(served: Served, load: Load, timeout: float = 60.0) -> None:
    """Wait until relay and every projection have caught up with the store."""
    deadline = time.monotonic() + timeout
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = await served.ready()
        lags = [health["relay"]["lag"], *(p["lag"] for p in health["projections"].values())]
        if all(lag == 0 for lag in lags):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"read models did not catch up: {health}")


async def audit(served: Served, load: Load, others: Sequence[Served] = (), outcomes: list[Any] | None = None) -> Audit:
    """Store vs BATON_EVENTS vs read models vs what each client was told; serve must be running and settled.

    `others`: the installation's other instances, stopped with `served` before the read models are rebuilt.
    `outcomes`: PSB's outcomes as its system already read them (default: read from its durable now).
    """
    nc = await served.nats()
    try:
        published = await stream_messages(nc, "BATON_EVENTS", "baton.evt.>", timeout=2.0)
        if outcomes is None:
            outcomes = await department_outcomes(nc, "PSB", set(load.nats_sent))
    finally:
        await nc.close()
    for instance in (served, *others):
        instance.stop()

    baton = bootstrap(served.settings())
    try:
        by_correlation: Counter[str] = Counter()
        positions = []
        after = 0
        while batch := baton.store.select(after, 5000):
            for n in batch:
                envelope = baton.codec.envelope(n)
                by_correlation[envelope.correlation_id or ""] += 1
                positions.append(n.id)
            after = batch[-1].id
        live = {name: p.view.dump() for name, p in baton.projections.items()}
    finally:
        baton.close()
    rebuilt = subprocess.run([BATON, "rebuild"], env=served.env, capture_output=True, text=True, timeout=600)
    assert rebuilt.returncode == 0, rebuilt.stderr
    baton = bootstrap(served.settings())
    try:
        fresh = {name: p.view.dump() for name, p in baton.projections.items()}
    finally:
        baton.close()

    published_positions = [int(m.headers["Baton-Position"]) for m in published]
    outcome_ids = Counter(json.loads(m.data)["command_id"] for m in outcomes)
    outcome_status = Counter(json.loads(m.data)["status"] for m in outcomes)
    nats_status = {json.loads(m.data)["command_id"]: json.loads(m.data)["status"] for m in outcomes}
    missing = set(load.nats_sent) - set(outcome_ids)
    assert not missing, f"{len(missing)} of {len(load.nats_sent)} department commands got no outcome"
    assert max(outcome_ids.values()) == 1, "a department command got two outcomes"
    accepted = [s for s in load.sent if s.accepted]
    rejected = [s for s in load.sent if not s.accepted]
    return Audit(
        events=len(positions),
        published=len(published_positions),
        duplicated=len(published_positions) - len(set(published_positions)),
        lost=len(set(positions) - set(published_positions)),
        accepted=len(accepted),
        rejected=len(rejected),
        rejected_with_events=sum(1 for s in rejected if by_correlation[s.correlation_id]),
        accepted_without_events=sum(1 for s in accepted if not by_correlation[s.correlation_id]),
        nats_rejected_with_events=sum(1 for c, st in nats_status.items() if st != "accepted" and by_correlation[c]),
        nats_accepted_without_events=sum(
            1 for c, st in nats_status.items() if st == "accepted" and not by_correlation[c]
        ),
        unavailable_answers=sum(s.unavailable for s in load.sent),
        nats_commands=len(load.nats_sent),
        nats_retries=load.nats_retries,
        nats_outcomes=outcome_status,
        nats_outcomes_in_order=[json.loads(m.data)["command_id"] for m in outcomes] == list(load.nats_sent),
        read_models_match_rebuild=live == fresh and published_positions == positions,
    )


class HealthSamples:
    """serve's /health every 0.1 s: the store's position, the relay's and each read model's."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.rows: list[tuple[float, int, int, dict[str, int]]] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    h = (await client.get(f"{self.served.url}/health")).json()
                    views = {n: p["position"] for n, p in h["projections"].items()}
                    if h["relay"]["published"] is not None:
                        self.rows.append((time.monotonic(), h["store"]["position"], h["relay"]["published"], views))
                except (httpx.HTTPError, KeyError, TypeError, ValueError):
                    pass
                await asyncio.sleep(0.1)

    def stall(self, since: float, follower: Any) -> float:
        """The longest time after SINCE that a follower (relay or read model) stayed behind the store unmoved."""
        worst, behind_since, last = 0.0, None, None
        for t, top, published, views in self.rows:
            value = follower(published, views)
            if value != last or value >= top:  # it moved, or caught up: a stretch behind ends here
                if behind_since is not None and t > since:
                    worst = max(worst, t - max(behind_since, since))
                behind_since, last = None, value
            if value < top and behind_since is None:
                behind_since = t
        return round(worst, 2)


def recoveries(log: Path) -> dict[str, float]:
    """What serve and its projector logged on recovering: seconds each part had been interrupted."""
    found: dict[str, float] = {}
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") in ("relay_recovered", "pull_recovered"):
                found[entry.get("consumer", "relay")] = entry["stalled_s"]
    return found
