"""The relay: every stored event reaches BATON_EVENTS once, in order, across crashes of NATS and of itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

from infra.bootstrap import Container, Runtime, bootstrap
from infra.nats_server import EmbeddedNats
from infra.settings import Settings
from tests.conftest import blow_direct, seed_county_direct, stream_messages
from tests.scenarios import assert_stream_matches_store


async def test_relay_survives_nats_server_killed_mid_stream(baton: Container, nats_server: EmbeddedNats, nc) -> None:
    await asyncio.to_thread(seed_county_direct, baton)
    runtime = Runtime(baton, nats_url=nats_server.url, watch=False)
    await runtime.start()
    try:
        writer = asyncio.create_task(asyncio.to_thread(blow_direct, baton, 600))
        kills = 0
        while not writer.done():
            await asyncio.sleep(0.15)
            if 0 < runtime.relay.published < baton.store.max_position():
                nats_server.kill()
                kills += 1
                await asyncio.sleep(0.3)
            if kills >= 3:
                break
        await writer
        assert kills >= 1, "the writer finished before the relay could be interrupted"
        assert nats_server.restarts >= 1
        await runtime.wait_idle(timeout=60)
        await nc.flush()
        count = await assert_stream_matches_store(nc, baton)
        assert count == baton.store.max_position()
    finally:
        await runtime.stop()


async def test_relay_restart_resumes_without_gap_or_duplicate(baton: Container, nats_server: EmbeddedNats, nc) -> None:
    await asyncio.to_thread(seed_county_direct, baton)
    first = Runtime(baton, nats_url=nats_server.url, watch=False)
    await first.start()
    writer = asyncio.create_task(asyncio.to_thread(blow_direct, baton, 300))
    while first.relay.published < 100:
        await asyncio.sleep(0.01)
    await first.stop()  # the relay dies mid-stream; the writer goes on
    await writer
    second = Runtime(baton, nats_url=nats_server.url, watch=False)
    await second.start()
    try:
        await second.wait_idle(timeout=60)
        assert await assert_stream_matches_store(nc, baton) == baton.store.max_position()
    finally:
        await second.stop()


async def test_a_stream_from_another_store_is_refused(nats_server: EmbeddedNats, nc, tmp_path: Path) -> None:
    one = bootstrap(Settings(data_dir=tmp_path / "one"))
    two = bootstrap(Settings(data_dir=tmp_path / "two"))
    try:
        await asyncio.to_thread(seed_county_direct, one)
        runtime = Runtime(one, nats_url=nats_server.url, watch=False)
        await runtime.start()
        await runtime.wait_idle()
        await runtime.stop()
        await asyncio.to_thread(seed_county_direct, two)
        await asyncio.to_thread(blow_direct, two, 1)
        other = Runtime(two, nats_url=nats_server.url, watch=False)
        await other.start()
        await asyncio.sleep(1.0)
        health = await other.health()
        assert health["status"] == "degraded"
        assert "not of this store" in (health["relay"]["error"] or "")
        await other.stop()
        assert len(await stream_messages(nc, "BATON_EVENTS")) == one.store.max_position()
    finally:
        one.close()
        two.close()
