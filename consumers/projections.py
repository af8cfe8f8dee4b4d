"""Feed every projection from BATON_EVENTS through one durable, batched pull consumer: each batch decoded once."""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from faststream.middlewares import AckPolicy
from faststream.nats import NatsRouter

from consumers.common import pull, stream
from infra.envelope import Envelope, EventTypes
from infra.jetstream import EVENTS_STREAM
from projections.base import BatonProjection

log = structlog.get_logger("baton.projections")

DURABLE = "baton_projections"
"""The read models' one durable consumer (each read model keeps its own position beside its tables)."""
RETIRED_DURABLES = tuple(
    f"baton_{name}" for name in ("whistle_board", "department_scorecard", "volunteering", "branches", "reports")
)
"""The per-read-model durables of releases before one consumer fed them all: deleted where found, since JetStream
keeps a durable's pending count (and its memory) for as long as it exists, read or not."""


def projection_router(projections: list[BatonProjection[Any]], types: EventTypes, batch_size: int = 500) -> NatsRouter:
    """One durable consumer for all read models; each one's batch and its position commit together.

    Four consumers (one per read model) fetched and decoded every event four times. A read model that is
    ahead skips what it has (its own position); one that is behind fills the gap from the store."""
    router = NatsRouter()

    @router.subscriber(
        "baton.evt.>",
        stream=stream(EVENTS_STREAM),
        durable=DURABLE,
        pull_sub=pull(batch_size),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="projections",
        include_in_schema=False,
    )
    async def apply_events(bodies: list[dict[str, Any]]) -> None:
        envelopes = [types.current(Envelope.from_body(b)) for b in bodies]  # as recorded -> as the code reads
        for projection in projections:
            try:
                position = await anyio.to_thread.run_sync(projection.process_batch, envelopes)
            except Exception:
                log.exception("projection_batch_failed", projection=projection.name, size=len(envelopes))
                await anyio.sleep(1.0)
                raise  # nacked: redelivered to all, and each read model skips what it has applied
            log.debug("projection_applied", projection=projection.name, size=len(envelopes), position=position)

    return router
