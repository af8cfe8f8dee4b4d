"""Feed each projection from BATON_EVENTS through its own durable, batched pull consumer."""

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


def projection_router(projections: list[BatonProjection[Any]], types: EventTypes, batch_size: int = 500) -> NatsRouter:
    """One durable consumer per projection; a batch and its position commit together."""
    router = NatsRouter()
    for projection in projections:
        _subscribe(router, projection, types, batch_size)
    return router


def _subscribe(router: NatsRouter, projection: BatonProjection[Any], types: EventTypes, batch_size: int) -> None:
    @router.subscriber(
        "baton.evt.>",
        stream=stream(EVENTS_STREAM),
        durable=f"baton_{projection.name}",
        pull_sub=pull(batch_size),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=f"projection.{projection.name}",
        include_in_schema=False,
    )
    async def apply_events(bodies: list[dict[str, Any]]) -> None:
        envelopes = [types.current(Envelope.from_body(b)) for b in bodies]  # as recorded -> as the code reads
        try:
            position = await anyio.to_thread.run_sync(projection.process_batch, envelopes)
        except Exception:
            log.exception("projection_batch_failed", projection=projection.name, size=len(envelopes))
            await anyio.sleep(1.0)
            raise
        log.debug("projection_applied", projection=projection.name, size=len(envelopes), position=position)
