"""The per-read-model durables of earlier releases are deleted when the projector starts; its one durable stays."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from consumers.projections import DURABLE, RETIRED_DURABLES
from infra.bootstrap import Container, Runtime
from infra.jetstream import EVENTS_STREAM, ensure_streams
from infra.nats_server import EmbeddedNats


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_earlier_releases_durables_are_retired_and_the_one_durable_made(
    baton: Container, nats_server: EmbeddedNats
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(nc)
        for durable in RETIRED_DURABLES[:2]:
            await js.add_consumer(
                EVENTS_STREAM,
                ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, filter_subject="baton.evt.>"),
            )
        runtime = Runtime(baton, nats_url=nats_server.url, watch=False)
        await runtime.start()
        try:
            names: set[str] = set(RETIRED_DURABLES)
            for _ in range(200):
                names = {c.name for c in await js.consumers_info(EVENTS_STREAM)}
                if DURABLE in names and not names & set(RETIRED_DURABLES):
                    break
                await asyncio.sleep(0.05)
            assert DURABLE in names and not names & set(RETIRED_DURABLES), names
        finally:
            await runtime.stop()
    finally:
        await nc.close()
