"""NATS loses what it held while Baton runs: BATON_EVENTS deleted, or the nats-server's whole data dir gone (every
stream and durable consumer). Without a restart Baton makes the streams and consumers again and republishes the
history from the store, in order, under the same ids; read models apply nothing twice, the inbox router copies
nothing twice, and no outcome is sent twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
import structlog
from nats.aio.client import Client
from structlog.testing import capture_logs

from consumers.inbox import recipients
from infra.bootstrap import Container, Runtime
from infra.jetstream import DEPT_STREAM, EVENTS_STREAM, department_durable
from infra.nats_auth import NatsAuth
from infra.nats_server import EmbeddedNats
from infra.relay import last_published
from infra.settings import Settings
from projections.base import catch_up_together
from tests.conftest import DEPARTMENTS, blow_direct, seed_county_direct
from tests.faults import Load, Served, audit, settle
from tests.scenarios import assert_stream_matches_store

SECRET = "nats-loss-tests-secret-long-enough-0123456789"
FAULTS = ("stream_deleted", "data_dir_lost")


class Department:
    """A department system: sends report_in commands (each until JetStream stores it), reads its durable all along
    (outcomes and inbox copies, acked), and re-sends with the same command_id what it has no outcome for."""

    def __init__(self, nc: Client, code: str) -> None:
        self.nc, self.code = nc, code
        self.sent: dict[str, bytes] = {}
        self.outcomes: list[Any] = []
        self.inbox: list[Any] = []
        self.lost_at: datetime | None = None
        """When NATS lost its data (set by the test): a message JetStream stored after it is in the new streams."""
        self.resent: set[str] = set()
        self._seen: set[tuple[int, int]] = set()  # (stream sequence, timestamp): a redelivery is not a second copy
        self.task: asyncio.Task[None] | None = None

    async def send(self, whistle_id: str, command_id: str | None = None) -> str:
        command_id = command_id or uuid.uuid4().hex
        data = self.sent.setdefault(
            command_id, json.dumps({"command_id": command_id, "whistle_id": whistle_id}).encode()
        )
        await self._publish(command_id, data)
        return command_id

    async def _publish(self, command_id: str, data: bytes) -> None:
        js = self.nc.jetstream(timeout=1.0)
        while True:
            try:
                await js.publish(f"baton.dept.{self.code}.cmd.report_in", data, headers={"Nats-Msg-Id": command_id})
                return
            except Exception:
                await asyncio.sleep(0.1)

    async def read(self) -> None:
        """Fetch and ack from dept_CODE until cancelled, riding out a consumer or server that is gone for a while."""
        sub = None
        while True:
            try:
                if sub is None:
                    js = self.nc.jetstream(timeout=1.0)
                    sub = await js.pull_subscribe_bind(durable=department_durable(self.code), stream=DEPT_STREAM)
                batch = await sub.fetch(500, timeout=0.5)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.1)
                continue
            for msg in batch:
                with contextlib.suppress(Exception):
                    await msg.ack()
                key = (msg.metadata.sequence.stream, msg.metadata.timestamp)
                if key in self._seen:
                    continue
                self._seen.add(key)
                (self.outcomes if msg.subject.endswith(".outcome") else self.inbox).append(msg)

    def start(self) -> None:
        self.task = asyncio.create_task(self.read())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def generation(self, msg: Any) -> int:
        """0 for a message of the streams before the loss, 1 for one of the streams after it (by when it was stored:
        a message of the old streams may still be read after the test learns of the loss, on a loaded machine)."""
        return int(self.lost_at is not None and msg.metadata.timestamp >= self.lost_at)

    def answered(self) -> Counter[str]:
        return Counter(json.loads(m.data)["command_id"] for m in self.outcomes)

    async def resend_unanswered(self) -> int:
        """What a department system does after NATS lost its outcomes: send again what got none."""
        unanswered = [c for c in self.sent if c not in self.answered()]
        self.resent.update(unanswered)
        for command_id in unanswered:
            await self._publish(command_id, self.sent[command_id])
        return len(unanswered)

    async def until_answered(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while set(self.sent) - set(self.answered()):
            assert time.monotonic() < deadline, f"{len(set(self.sent) - set(self.answered()))} commands unanswered"
            await asyncio.sleep(0.1)

    async def until_quiet(self, quiet: float = 1.5) -> None:
        """Wait until nothing new has arrived for QUIET seconds (anything later would be a second copy)."""
        count = -1
        while count != len(self.outcomes) + len(self.inbox):
            count = len(self.outcomes) + len(self.inbox)
            await asyncio.sleep(quiet)


def expected_copies(baton: Container, code: str) -> dict[str, int]:
    """Every inbox copy department CODE must get from the store's history: its Nats-Msg-Id and position."""
    out: dict[str, int] = {}
    after = 0
    while batch := baton.store.select(after, 5000):
        for notification in batch:
            envelope = baton.codec.recorded(notification)
            if code in recipients(envelope.body(), baton.codec.types):
                out[f"inbox:{code}:{envelope.msg_id}"] = envelope.position
        after = batch[-1].id
    return out


def check_department(dept: Department, expected: dict[str, int], lost_after: int | None) -> dict[str, int]:
    """No outcome and no inbox copy twice on a durable; every command answered; every copy there (with the data dir
    lost: every copy of an event stored after the loss, since what BATON_DEPT held unread went with it).

    With the data dir lost, a copy or outcome that was in flight at that moment (stored and read, its ack lost
    with the server) is sent again to the new BATON_DEPT, whose dedupe memory is empty: counted, and allowed only
    for what was stored before the loss, once on each side of it."""
    twice_across = 0
    for kind, messages, ident in (
        ("outcomes", dept.outcomes, lambda m: json.loads(m.data)["command_id"]),
        ("inbox copies", dept.inbox, lambda m: m.headers["Nats-Msg-Id"]),
    ):
        per_generation = Counter((dept.generation(m), ident(m)) for m in messages)
        twice = [key for key, n in per_generation.items() if n > 1]
        assert not twice, f"{kind} twice on one durable: {twice[:5]}"
        across = Counter(ident(m) for m in messages)
        repeated = {key for key, n in across.items() if n > 1}
        if lost_after is None:
            assert not repeated, f"{kind} twice: {sorted(repeated)[:5]}"
        elif kind == "inbox copies":
            assert all(expected[key] <= lost_after for key in repeated), "a copy of a later event twice"
        twice_across += len(repeated)
    answered = dept.answered()
    assert set(answered) == set(dept.sent), "a command got no outcome"
    copies = Counter(m.headers["Nats-Msg-Id"] for m in dept.inbox)
    assert set(copies) <= set(expected), "an inbox copy of no stored event"
    if lost_after is None:
        assert set(copies) == set(expected), f"{len(set(expected) - set(copies))} inbox copies missing"
    else:
        late = {msg_id for msg_id, position in expected.items() if position > lost_after}
        assert late <= set(copies), f"{len(late - set(copies))} inbox copies after the loss missing"
    return {
        "outcomes": len(dept.outcomes),
        "inbox": len(dept.inbox),
        "expected_inbox": len(expected),
        "in_flight_at_loss_twice": twice_across,
    }


async def repeat_first_command(dept: Department, timeout: float = 20.0) -> str:
    """Send the first command NATS has forgotten again, same command_id and body: it is answered from the command log
    with its first outcome, the same bytes (that outcome is then set aside from the audit).

    Forgotten: answered only by the old streams and not resent. A command whose outcome was in flight at the loss
    (resent by the department, or its outcome sent again to the new BATON_DEPT) is in the new streams' duplicate
    window, so a repeat of it is rightly dropped there as a duplicate (seen on a loaded machine: the first command's
    outcome was still in flight 1.5 s after it was sent)."""
    by_generation: dict[str, set[int]] = {}
    for m in dept.outcomes:
        by_generation.setdefault(json.loads(m.data)["command_id"], set()).add(dept.generation(m))
    forgotten = [c for c in dept.sent if by_generation.get(c) == {0} and c not in dept.resent]
    assert forgotten, "no command was answered by the streams before the loss"
    first = forgotten[0]
    [before] = [m.data for m in dept.outcomes if json.loads(m.data)["command_id"] == first]
    count = len(dept.outcomes)
    await dept._publish(first, dept.sent[first])
    deadline = time.monotonic() + timeout
    while len(dept.outcomes) == count:
        assert time.monotonic() < deadline, "a repeated command got no outcome"
        await asyncio.sleep(0.05)
    again = dept.outcomes.pop()
    assert again.data == before, (again.data, before)
    return first


async def lose(
    fault: str, nc: Client, server: EmbeddedNats, position: Callable[[], Awaitable[int]]
) -> tuple[datetime, int]:
    """Delete BATON_EVENTS, or kill the nats-server, delete its store dir and start it again on the same port; the
    moment the old data was gone (the old server stores nothing after it) and the store's position then (a copy of
    an event after it cannot have gone to the old streams)."""
    if fault == "stream_deleted":
        await nc.jetstream().delete_stream(EVENTS_STREAM)
        return datetime.now(UTC), await position()
    assert server.process is not None
    server.kill()
    await server.stop()
    lost_at, lost_after = datetime.now(UTC), await position()
    await asyncio.to_thread(shutil.rmtree, server.dir)
    await server.start()
    return lost_at, lost_after


async def until_republished(nc: Client, position: int, timeout: float = 120.0) -> float:
    """Seconds until BATON_EVENTS holds the history up to POSITION again."""
    started = time.monotonic()
    js = nc.jetstream(timeout=1.0)
    while True:
        with contextlib.suppress(Exception):
            if await last_published(js) >= position:
                return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"BATON_EVENTS did not reach {position} in {timeout}s"
        await asyncio.sleep(0.02)


async def connect(url: str, **login: Any) -> Client:
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, **login)


@pytest.mark.parametrize("fault", FAULTS)
async def test_the_runtime_rebuilds_nats_from_the_store(
    baton: Container, nats_server: EmbeddedNats, fault: str, backend: str
) -> None:
    """In-process Runtime: whistles blown and HOUSING reporting in over NATS while the fault strikes."""
    await asyncio.to_thread(seed_county_direct, baton)
    await asyncio.to_thread(blow_direct, baton, 2000)  # a history to republish
    runtime = Runtime(baton, nats_url=nats_server.url, watch=False)
    nc = await connect(nats_server.url)
    housing = Department(await connect(nats_server.url), "HOUSING")
    statuses: list[str] = []
    stopping = False

    async def traffic() -> None:
        while not stopping:
            [whistle_id] = await asyncio.to_thread(blow_direct, baton, 1)
            await housing.send(whistle_id)
            await asyncio.sleep(0.005)

    async def watch_health() -> None:
        while True:
            with contextlib.suppress(Exception):
                statuses.append((await runtime.health())["status"])
            await asyncio.sleep(0.05)

    with capture_logs(processors=[structlog.processors.TimeStamper(fmt="%H:%M:%S.%f")]) as logs:
        await runtime.start()
        housing.start()
        watcher = asyncio.create_task(watch_health())
        try:
            await runtime.wait_idle(timeout=60)
            flowing = asyncio.create_task(traffic())
            await asyncio.sleep(1.5)
            top = await asyncio.to_thread(baton.store.max_position)
            lost_at = time.monotonic()
            housing.lost_at, lost_after = await lose(
                fault, nc, nats_server, lambda: asyncio.to_thread(baton.store.max_position)
            )
            republished_s = await until_republished(nc, top)
            await asyncio.sleep(1.5)  # commands go on after the recovery
            stopping = True
            await flowing
            if fault == "data_dir_lost":
                resent = await housing.resend_unanswered()
            await housing.until_answered()
            await runtime.wait_idle(timeout=60)
            await housing.until_quiet()
            if fault == "data_dir_lost":
                repeated = await repeat_first_command(housing)
            await assert_stream_matches_store(nc, baton)
            assert (await runtime.health())["status"] == "ok"
        finally:
            watcher.cancel()
            await housing.stop()
            await runtime.stop()
            await housing.nc.close()
            await nc.close()

    recovered_s = round(time.monotonic() - lost_at, 2)
    for entry in logs:
        if entry["log_level"] in ("warning", "error") and entry["event"] != "command_rejected":
            print("nats-loss-log", {k: v for k, v in entry.items() if k != "exc_info"})
    figures = check_department(
        housing,
        await asyncio.to_thread(expected_copies, baton, "HOUSING"),
        lost_after if fault == "data_dir_lost" else None,
    )
    # every accepted command's events are in the store once
    by_correlation = Counter(e.correlation_id for e in baton.source.envelopes(0, 10_000_000))
    statuses_of = [json.loads(m.data)["status"] for m in housing.outcomes]
    assert set(statuses_of) == {"accepted"}
    assert all(by_correlation[c] == 1 for c in housing.sent)
    # every read model equals a rebuild from the store
    live = {name: p.view.dump() for name, p in baton.projections.items()}
    for projection in baton.projections.values():
        projection.reset()
    await asyncio.to_thread(catch_up_together, list(baton.projections.values()))
    assert {name: p.view.dump() for name, p in baton.projections.items()} == live
    # logged once, and /health said degraded meanwhile
    events = [entry["event"] for entry in logs]
    assert events.count("stream_lost") == 1 and events.count("stream_recreated") == 1, Counter(events)
    [done] = [entry for entry in logs if entry["event"] == "relay_republished"]
    assert done["events"] > 0 and done["to_position"] >= top
    assert "degraded" in statuses and statuses[-1] == "ok"
    if fault == "data_dir_lost":
        assert resent >= 0 and repeated
        assert "checkpoints_republished" in events
    print(
        "nats-loss-figures",
        json.dumps(
            {
                "fault": fault,
                "backend": backend,
                "history_at_loss": top,
                "until_republished_s": round(republished_s, 2),
                "relay_republished": {k: done[k] for k in ("events", "seconds", "events_per_s")},
                "until_settled_s": recovered_s,
                "resent_after_loss": resent if fault == "data_dir_lost" else None,
                **figures,
            }
        ),
    )


@pytest.mark.parametrize(
    ("backend", "fault"), [("postgres", "stream_deleted"), ("sqlite", "data_dir_lost")], indirect=["backend"]
)
async def test_serve_rebuilds_nats_from_the_store(settings: Settings, tmp_path: Path, fault: str, backend: str) -> None:
    """`baton serve` (a child process, its read models in its projector process) on an external nats-server the
    test owns; HTTP clients play whistles and PSB reports in over NATS while the fault strikes. (Each fault on one
    store here; the in-process test above runs both faults on both.)"""
    codes = [code for code, _ in DEPARTMENTS]
    server = EmbeddedNats(tmp_path / "external", auth=NatsAuth(SECRET.encode()), departments=codes)
    await server.start()
    served = Served(tmp_path / "served", settings.store, nats_url=server.url, nats_secret=SECRET)
    statuses: list[str] = []
    try:
        await served.start()
        load = Load(served)
        await load.seed()
        service = NatsAuth(SECRET.encode()).service()
        login = {"user": service.user, "password": service.password}
        nc = await connect(server.url, **login)
        psb = Department(await connect(server.url, **login), "PSB")
        housing = Department(await connect(server.url, **login), "HOUSING")
        psb.start()
        housing.start()

        async def department() -> None:
            done = 0
            while not load.stopping or done < len(load.whistles):
                if done >= len(load.whistles):
                    await asyncio.sleep(0.05)
                    continue
                command_id = await psb.send(load.whistles[done])
                load.nats_sent[command_id] = "report_in"
                done += 1

        async def watch_health() -> None:
            import httpx

            async with httpx.AsyncClient(timeout=2.0) as client:
                while True:
                    with contextlib.suppress(Exception):
                        statuses.append((await client.get(f"{served.url}/health")).json()["status"])
                    await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_health())
        workers = [asyncio.create_task(load.worker()) for _ in range(4)]
        sending = asyncio.create_task(department())
        try:
            await asyncio.sleep(2.5)
            top = (await served.ready())["store"]["position"]
            psb.lost_at, lost_after = await lose(fault, nc, server, served.position)
            housing.lost_at = psb.lost_at
            republished_s = await until_republished(nc, top)
            await asyncio.sleep(2.0)
        finally:
            load.stopping = True
            await asyncio.gather(*workers)
            await sending
        if fault == "data_dir_lost":
            await psb.resend_unanswered()
        await psb.until_answered()
        await settle(served, load, timeout=120)
        await psb.until_quiet()
        await housing.until_quiet()
        watcher.cancel()
        await psb.stop()
        await housing.stop()
        for conn in (psb.nc, housing.nc, nc):
            await conn.close()
        lost_after = lost_after if fault == "data_dir_lost" else None
        first_outcomes = {json.loads(m.data)["command_id"]: m for m in reversed(psb.outcomes)}  # repeats: checked below
        result = await audit(served, load, outcomes=list(first_outcomes.values()))  # stops serve, rebuilds read models
        await load.close()
        from infra.bootstrap import bootstrap

        baton = bootstrap(served.settings())
        try:
            expected = {code: await asyncio.to_thread(expected_copies, baton, code) for code in ("PSB", "HOUSING")}
        finally:
            baton.close()
    finally:
        served.stop()
        await server.stop()
    figures = {
        "PSB": check_department(psb, expected["PSB"], lost_after),
        "HOUSING": check_department(housing, expected["HOUSING"], lost_after),
    }
    log = served.log.read_text()
    print(
        "nats-loss-serve-figures",
        json.dumps(
            {
                "fault": fault,
                "backend": backend,
                "history_at_loss": top,
                "until_republished_s": round(republished_s, 2),
                **result.figures(),
                **figures,
                "republished": [
                    {k: e.get(k) for k in ("events", "seconds", "events_per_s")}
                    for e in map(json.loads, (ln for ln in log.splitlines() if '"relay_republished"' in ln))
                ],
            }
        ),
    )
    assert result.lost == 0 and result.duplicated == 0
    assert result.published == result.events
    assert result.accepted > 0 and result.accepted_without_events == 0
    assert result.rejected_with_events == 0
    assert result.nats_rejected_with_events == 0 and result.nats_accepted_without_events == 0
    assert result.read_models_match_rebuild
    if fault == "data_dir_lost":
        # A server down for seconds is seen; a deleted stream of this small history is recreated and refilled within
        # one poll of a loaded machine (the in-process test above sees it on a longer history).
        assert "degraded" in statuses
    for event in ("stream_lost", "stream_recreated", "relay_republished"):
        assert f'"{event}"' in log, event
