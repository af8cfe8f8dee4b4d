"""The bare substrate: the least each measured path could cost on the same backend, measured in the same run."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import nats
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from infra.settings import Settings
from infra.store import Store

BARE_STREAM = "BENCH_BARE"


@dataclass
class Timing:
    """How many items took how long, and (when kept) each item's own duration in seconds."""

    count: int
    seconds: float
    each: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


class Tick(Aggregate):
    """The most trivial aggregate: created with a payload, one event."""

    @event("Created")
    def __init__(self, payload: str) -> None:
        self.payload = payload


def bare_environment(settings: Settings, name: str) -> dict[str, str]:
    """Baton's own persistence settings and recorder type, with the bare app's tables beside Baton's."""
    env = dict(Store._environment(settings))
    if not settings.is_postgres:
        env["SQLITE_DBNAME"] = str(settings.data_dir / f"{name.lower()}.sqlite")
    return env


def bare_saves(settings: Settings, n: int, name: str = "BareBench", payload_size: int = 200) -> Timing:
    """n x `app.save(Tick(...))`: one event per transaction, through eventsourcing alone."""
    app_class = type(name, (Application,), {})
    app = app_class(env=bare_environment(settings, name))
    payload = "x" * payload_size
    try:
        app.save(Tick(payload))  # warm up: tables, connections, statement caches
        each = []
        started = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            app.save(Tick(payload))
            each.append(time.perf_counter() - t0)
        return Timing(n, time.perf_counter() - started, each)
    finally:
        app.close()


def bare_stream_config(name: str) -> StreamConfig:
    """A stream with BATON_EVENTS's durability settings (file storage; the server fsyncs every write)."""
    return StreamConfig(
        name=name,
        subjects=[f"bench.{name.lower()}.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        duplicate_window=120.0,
    )


async def bare_publish(
    url: str, payloads: Sequence[tuple[str, bytes]], stream: str = BARE_STREAM, timeout: float = 120.0
) -> Timing:
    """nats-py `js.publish_async` of the same messages to a new stream like BATON_EVENTS, until every ack is in."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        await js.add_stream(bare_stream_config(stream))
        prefix = f"bench.{stream.lower()}"
        started = time.perf_counter()
        async with asyncio.timeout(timeout):
            futures = [await js.publish_async(f"{prefix}.{subject}", payload) for subject, payload in payloads]
            await asyncio.gather(*futures)
        return Timing(len(payloads), time.perf_counter() - started)
    finally:
        await nc.close()


def bare_read(settings: Settings, page: int = 5000) -> Timing:
    """The whole notification log read in big pages, with nothing done to the rows."""
    store = Store(settings)
    try:
        recorder = store.recorder
        count, after = 0, 0
        started = time.perf_counter()
        while True:
            batch = recorder.select_notifications(start=after, limit=page, inclusive_of_start=False)
            if not batch:
                break
            count += len(batch)
            after = batch[-1].id
        return Timing(count, time.perf_counter() - started)
    finally:
        store.close()


def bare_sha256(lines: Sequence[bytes]) -> Timing:
    """hashlib SHA-256 of each line, nothing else."""
    started = time.perf_counter()
    for line in lines:
        hashlib.sha256(line).digest()
    return Timing(len(lines), time.perf_counter() - started)
