"""Notifications for an SMS/WeChat gateway: every change a resident must hear of, and every deadline about to lapse,
on BATON_NOTIFY (baton.notify.>), which only the gateway's NATS login reads (the resident's contact is in clear).

Each notification is published once: the notifier's Cursor (fenced by its lease) says how far it has got, and the
Nats-Msg-Id (the event's aggregate id and version) lets JetStream drop a repeat sent after a crash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog
from faststream.middlewares import AckPolicy
from faststream.nats import NatsRouter

from consumers.common import BatchMessage, pull, stream
from domain.events import name_of
from domain.report import Report
from infra.envelope import EventTypes
from infra.jetstream import EVENTS_STREAM, JetStreamPublisher, Message, publish_all
from infra.sql import Cursor

log = structlog.get_logger("baton.notify")

WARN_AHEAD = timedelta(hours=2)
"""A community hears of a report's deadline this long before it lapses."""

RESIDENT_HEARS: dict[type, tuple[str, str]] = {
    Report.Raised: ("received", "您反映的问题已收到，社区将在24小时内处理。"),
    Report.Accepted: ("accepted", "社区已受理您反映的问题，正在办理。"),
    Report.Escalated: ("escalated", "社区已就您反映的问题吹哨，相关部门正在报到办理。"),
    Report.Resolved: ("result", "您反映的问题已有办理结果，请查看并评价。"),
    Report.Merged: ("merged", "您反映的问题与已在办理的事项相同，已合并办理。"),
    Report.ClosedUnreasonable: ("closed_unreasonable", "您反映的事项经社区核实不予受理，原因见详情。"),
    Report.Rated: ("reopened", "您对办理结果不满意，事项已重新办理。"),
    Report.ClosedWithWhistle: ("closed", "您反映的问题已办结。"),
}
"""Report events a resident hears of: the kind and the text (Chinese first; the gateway may translate)."""
_HEARS = {name_of(event): said for event, said in RESIDENT_HEARS.items()}
_MISSED = name_of(Report.DeadlineMissed)


def notifications(
    bodies: list[dict[str, Any]],
    types: EventTypes,
    about: Callable[[str], tuple[str, dict[str, Any] | None]],
    after: int = 0,
) -> list[Message]:
    """The notifications for a batch of report events beyond position AFTER, each with its Nats-Msg-Id."""
    out: list[Message] = []
    for recorded in bodies:
        if recorded["position"] <= after:
            continue
        body = types.current_body(recorded)
        name, d = f"{body['aggregate']}.{body['type']}", body["data"]
        said = _HEARS.get(name)
        report = body["aggregate_id"]
        if said is None and name != _MISSED:
            continue
        community, contact = about(report)
        if said is not None and not (name == name_of(Report.Rated) and d.get("status") == "closed"):
            kind, text = said
            note = {
                "kind": kind,
                "report_id": report,
                "text": text,
                "detail": d.get("result") or d.get("reason"),
                "community_id": community,
                "contact": contact,
                "occurred_at": body["occurred_at"],
                "position": body["position"],
            }
            out.append(_message(f"baton.notify.resident.{report}", note, f"notify:{report}:{body['version']}"))
        elif name == _MISSED:
            note = {
                "kind": "deadline_missed",
                "report_id": report,
                "community_id": community,
                "step": d["step"],
                "due_at": d["due_at"],
                "text": "民情诉求已超时，请尽快处理。",
                "occurred_at": body["occurred_at"],
                "position": body["position"],
            }
            out.append(_message(f"baton.notify.community.{community}", note, f"notify:{report}:{body['version']}"))
    return out


def warnings(due: list[dict[str, Any]]) -> list[Message]:
    """A warning to each report's community that its deadline lapses within WARN_AHEAD."""
    return [
        _message(
            f"baton.notify.community.{row['community_id']}",
            {
                "kind": "deadline_near",
                "report_id": row["report_id"],
                "community_id": row["community_id"],
                "status": row["status"],
                "due_at": row["due_at"],
                "text": "民情诉求即将超时，请及时处理。",
            },
            f"notify:due:{row['report_id']}:{row['due_at']}",
        )
        for row in due
    ]


def _message(subject: str, note: dict[str, Any], msg_id: str) -> Message:
    return subject, json.dumps(note, ensure_ascii=False).encode(), {"Nats-Msg-Id": msg_id}


def notify_router(
    publisher: Callable[[], JetStreamPublisher],
    types: EventTypes,
    cursor: Cursor,
    about: Callable[[str], tuple[str, dict[str, Any] | None]],
    batch_size: int = 200,
) -> NatsRouter:
    """Turns report events into notifications for the gateway, each once."""
    router = NatsRouter()

    @router.subscriber(
        "baton.evt.report.>",
        stream=stream(EVENTS_STREAM),
        durable="baton_notify",
        pull_sub=pull(batch_size),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="notify",
        include_in_schema=False,
    )
    async def notify(bodies: list[dict[str, Any]], msg: BatchMessage) -> None:
        try:
            done = await anyio.to_thread.run_sync(cursor.position)
            top = max(body["position"] for body in bodies)
            if top <= done:
                return
            out = await anyio.to_thread.run_sync(lambda: notifications(bodies, types, about, after=done))
            await publish_all(publisher(), out, patience=20.0)
            await anyio.to_thread.run_sync(cursor.advance, top)
            if out:
                log.debug("notified", count=len(out), last=top)
        except Exception:
            log.exception("notify_batch_failed", size=len(bodies))
            await asyncio.sleep(0.5)
            raise

    return router


async def warn_of_deadlines(
    publisher: Callable[[], JetStreamPublisher],
    due_between: Callable[[str, str], list[dict[str, Any]]],
    cursor: Cursor,
    now: Callable[[], datetime],
    interval: float,
) -> None:
    """Every interval, warn of the deadlines that came within WARN_AHEAD since the last time (the cursor keeps the
    epoch second warned up to), until cancelled."""
    while True:
        try:
            horizon = now() + WARN_AHEAD
            since = await anyio.to_thread.run_sync(cursor.position)
            start = datetime.fromtimestamp(since, horizon.tzinfo) if since else now()
            if horizon > start:
                rows = await anyio.to_thread.run_sync(due_between, start.isoformat(), horizon.isoformat())
                await publish_all(publisher(), warnings(rows), patience=20.0)
                await anyio.to_thread.run_sync(cursor.advance, int(horizon.timestamp()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("deadline_warnings_failed")
        await asyncio.sleep(interval)
