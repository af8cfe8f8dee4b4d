"""Each department's inbox: the events that concern it, copied to baton.dept.CODE.inbox.<aggregate>.<event>.

The router remembers the store position it has routed up to (a Cursor in the views database, fenced by its lease)
and skips what is at or below it: BATON_EVENTS republished from the store after it was lost hands the router the
whole history again, and its copies' Nats-Msg-Ids are remembered by BATON_DEPT for minutes only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from faststream.middlewares import AckPolicy
from faststream.nats import NatsRouter

from consumers.common import BatchMessage, pull, stream
from domain.common import DEPARTMENT_CODE
from domain.events import name_of
from domain.whistle import Whistle
from infra.envelope import EventTypes
from infra.jetstream import EVENTS_STREAM, JetStreamPublisher, Message, publish_all
from infra.sql import Cursor

log = structlog.get_logger("baton.inbox")

PATIENCE = 20.0
"""Seconds a batch's copies are retried while BATON_DEPT has no leader, before the batch is nacked (ack wait: 30 s)."""

ROUTES: dict[type, Callable[[dict[str, Any]], list[str]]] = {
    Whistle.Blown: lambda d: d["summoned_departments"],
    Whistle.Dispatched: lambda d: [d["lead_department"], *d["co_departments"]],
    Whistle.Evaluated: lambda d: d["departments"],
    Whistle.DeadlineMissed: lambda d: d["departments"],
    Whistle.Escalated: lambda d: d["departments"],
}
"""The whistle events a department's inbox gets, and which departments each concerns."""
_ROUTES = {name_of(event): route for event, route in ROUTES.items()}


def recipients(body: dict[str, Any], types: EventTypes) -> list[str]:
    """Department codes that must see this whistle event (a community handling a work order is not one)."""
    route = _ROUTES.get(f"{body['aggregate']}.{body['type']}")
    if route is None:
        return []
    data = types.current_body(body)["data"]
    return [code for code in dict.fromkeys(route(data)) if code and DEPARTMENT_CODE.match(code)]


def copies(msg: BatchMessage, bodies: list[dict[str, Any]], types: EventTypes, after: int = 0) -> list[Message]:
    """The inbox copies of a batch's events beyond position AFTER: one per event and department it concerns, deduped
    by event and department. A copy is the event as recorded, as on BATON_EVENTS."""
    out: list[Message] = []
    for raw, body in zip(msg.raw_message, bodies, strict=True):
        if body["position"] <= after:
            continue
        msg_id = (raw.headers or {}).get("Nats-Msg-Id", f"{body['aggregate_id']}:{body['version']}")
        for code in recipients(body, types):
            out.append(
                (
                    f"baton.dept.{code}.inbox.{body['aggregate']}.{body['type']}",
                    raw.data,
                    {"Nats-Msg-Id": f"inbox:{code}:{msg_id}", "Baton-Position": str(body["position"])},
                )
            )
    return out


def inbox_router(
    publisher: Callable[[], JetStreamPublisher], types: EventTypes, cursor: Cursor, batch_size: int = 500
) -> NatsRouter:
    """Copies whistle events into the inboxes of the departments they concern, each event once."""
    router = NatsRouter()

    @router.subscriber(
        "baton.evt.whistle.>",
        stream=stream(EVENTS_STREAM),
        durable="baton_inbox",
        pull_sub=pull(batch_size),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="inbox",
        include_in_schema=False,
    )
    async def route_to_inboxes(bodies: list[dict[str, Any]], msg: BatchMessage) -> None:
        try:
            routed = await anyio.to_thread.run_sync(cursor.position)
            top = max(body["position"] for body in bodies)
            if top <= routed:
                log.debug("inbox_already_routed", size=len(bodies), last=top, routed=routed)
                return
            await publish_all(publisher(), copies(msg, bodies, types, after=routed), patience=PATIENCE)
            await anyio.to_thread.run_sync(cursor.advance, top)
        except Exception:
            log.exception("inbox_batch_failed", size=len(bodies))
            await asyncio.sleep(0.5)
            raise

    return router
