"""The intake publishes one batch's outcomes while it decides the next: in order, acked only once stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from faststream.nats import NatsBroker

from consumers.intake import Intake, OutcomeQueue, intake_router
from infra.bootstrap import Container, install_patches
from infra.jetstream import INTAKE_STREAM, JetStreamPublisher, ensure_department_consumers, ensure_streams
from infra.nats_server import EmbeddedNats
from tests.conftest import DepartmentFeed, blow_direct, body, seed_county_direct

BATCH = 10


class HeldPublisher:
    """A JetStreamPublisher whose outcome publishes for `held` commands wait for `release`; or fail once."""

    def __init__(self, inner: JetStreamPublisher, held: set[str] = frozenset(), fail_first: bool = False) -> None:
        self.inner = inner
        self.held = held
        self.release = asyncio.Event()
        self.fail_first = fail_first
        self.failed = 0

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
        if self.fail_first and not self.failed:
            self.failed += 1
            raise ConnectionError("nats-server went away mid-batch")
        if json.loads(data).get("command_id") in self.held:
            await self.release.wait()
        return await self.inner.publish(subject, data, headers)


@pytest.fixture
async def js_publisher(nats_server: EmbeddedNats) -> AsyncIterator[tuple[Any, JetStreamPublisher]]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(nc)
    await ensure_department_consumers(nc, ["HOUSING"])
    publisher = JetStreamPublisher(nc)
    await publisher.start()
    yield js, publisher
    await publisher.close()
    await nc.close()


async def queue_commands(js: Any, whistles: list[str]) -> list[str]:
    """One report_in per whistle, queued on BATON_INTAKE before the intake runs; their command ids."""
    ids = [f"c-{i:03d}" for i in range(len(whistles))]
    for command_id, whistle_id in zip(ids, whistles, strict=True):
        payload = json.dumps({"command_id": command_id, "whistle_id": whistle_id}).encode()
        await js.publish("baton.dept.HOUSING.cmd.report_in", payload)
    return ids


async def running_intake(baton: Container, url: str, publisher: HeldPublisher, queue: OutcomeQueue) -> NatsBroker:
    install_patches()  # as Runtime.start() does before its brokers
    broker = NatsBroker(url, logger=None)
    intake = Intake(baton.whistles, baton.org, baton.store.commands)
    broker.include_router(intake_router(intake, lambda: publisher, batch_size=BATCH, outcomes=queue))  # type: ignore[arg-type, return-value]
    await broker.start()
    return broker


async def until(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_batch_is_acked_only_once_its_outcomes_are_stored_and_outcomes_keep_command_order(
    baton: Container, nats_server: EmbeddedNats, js_publisher: tuple[Any, JetStreamPublisher]
) -> None:
    js, inner = js_publisher
    seed_county_direct(baton)
    whistles = blow_direct(baton, 3 * BATCH)
    ids = await queue_commands(js, whistles)
    before = baton.store.max_position()
    publisher = HeldPublisher(inner, held=set(ids[BATCH : 2 * BATCH]))  # the second batch's outcomes wait
    queue = OutcomeQueue()
    broker = await running_intake(baton, nats_server.url, publisher, queue)
    try:

        async def three_batches_decided() -> bool:
            return await asyncio.to_thread(baton.store.max_position) == before + 3 * BATCH

        await until(three_batches_decided)
        feed = await DepartmentFeed.bind(js, "HOUSING")
        first = await feed.outcomes(BATCH)
        with pytest.raises(TimeoutError):  # the third batch's outcomes wait behind the held second's
            await feed.outcomes(1, timeout=1.0)
        consumer = await js.consumer_info(INTAKE_STREAM, "baton_intake")
        assert consumer.ack_floor.stream_seq == BATCH, "only the first batch is acked: its outcomes alone are stored"

        publisher.release.set()
        rest = await feed.outcomes(2 * BATCH)

        async def all_acked() -> bool:
            info = await js.consumer_info(INTAKE_STREAM, "baton_intake")
            return info.ack_floor.stream_seq == 3 * BATCH and not info.num_ack_pending

        await until(all_acked)
    finally:
        await queue.drain()
        await broker.stop()
    assert [body(m)["command_id"] for m in first + rest] == ids
    assert all(body(m)["status"] == "accepted" for m in first + rest)


async def test_outcomes_that_fail_to_publish_come_again_from_the_command_log_once_each(
    baton: Container, nats_server: EmbeddedNats, js_publisher: tuple[Any, JetStreamPublisher]
) -> None:
    js, inner = js_publisher
    seed_county_direct(baton)
    whistles = blow_direct(baton, 2 * BATCH)
    ids = await queue_commands(js, whistles)
    before = baton.store.max_position()
    publisher = HeldPublisher(inner, fail_first=True)
    queue = OutcomeQueue()
    broker = await running_intake(baton, nats_server.url, publisher, queue)
    try:

        async def all_acked() -> bool:
            info = await js.consumer_info(INTAKE_STREAM, "baton_intake")
            return info.ack_floor.stream_seq == 2 * BATCH and not info.num_ack_pending

        await until(all_acked)
        feed = await DepartmentFeed.bind(js, "HOUSING")
        stored = await feed.outcomes(2 * BATCH)
        with pytest.raises(TimeoutError):
            await feed.outcomes(1, timeout=1.0)
    finally:
        await queue.drain()
        await broker.stop()
    assert publisher.failed == 1
    assert sorted(body(m)["command_id"] for m in stored) == ids, "one outcome per command, none lost or doubled"
    assert baton.store.max_position() == before + 2 * BATCH, "the redelivered batch was not applied again"
