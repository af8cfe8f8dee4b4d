"""The public form of a stored event: the body, subject and headers that go out on BATON_EVENTS."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, Notification

from domain.privacy import Sealed

EVENT_SUBJECT_PREFIX = "baton.evt"
META_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic", "meta"})
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name: str) -> str:
    """ReportedIn -> reported_in."""
    return _CAMEL.sub("_", name).lower()


def jsonable(value: Any) -> Any:
    """Plain JSON values for event attributes."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, Sealed):
        return value.token
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(jsonable(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as every subscriber sees it."""

    position: int
    aggregate: str
    aggregate_id: str
    version: int
    type: str
    occurred_at: str
    actor: dict[str, Any] | None
    data: dict[str, Any]
    correlation_id: str | None = None

    @property
    def subject(self) -> str:
        return f"{EVENT_SUBJECT_PREFIX}.{self.aggregate}.{self.type}"

    @property
    def name(self) -> str:
        """aggregate.type, e.g. whistle.blown."""
        return f"{self.aggregate}.{self.type}"

    @property
    def msg_id(self) -> str:
        """The JetStream dedupe id: one per event, the same every time it is published."""
        return f"{self.aggregate_id}:{self.version}"

    def body(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "aggregate": self.aggregate,
            "aggregate_id": self.aggregate_id,
            "version": self.version,
            "type": self.type,
            "occurred_at": self.occurred_at,
            "actor": self.actor,
            "data": self.data,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Nats-Msg-Id": self.msg_id, "Baton-Position": str(self.position)}
        if self.correlation_id:
            headers["Baton-Correlation-Id"] = self.correlation_id
        return headers

    @classmethod
    def from_body(cls, body: dict[str, Any], correlation_id: str | None = None) -> Envelope:
        return cls(
            position=int(body["position"]),
            aggregate=body["aggregate"],
            aggregate_id=body["aggregate_id"],
            version=int(body["version"]),
            type=body["type"],
            occurred_at=body["occurred_at"],
            actor=body.get("actor"),
            data=body.get("data") or {},
            correlation_id=correlation_id,
        )


class EnvelopeCodec:
    """Turns stored notifications into envelopes, the same way for the relay, projections and rebuild."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.mapper = mapper
        self._names: dict[str, tuple[str, str]] = {}

    def envelope(self, notification: Notification) -> Envelope:
        event = self.mapper.to_domain_event(notification)
        aggregate, type_ = self._name(notification.topic, type(event).__qualname__)
        meta = getattr(event, "meta", None) or {}
        return Envelope(
            position=notification.id,
            aggregate=aggregate,
            aggregate_id=str(event.originator_id),
            version=event.originator_version,
            type=type_,
            occurred_at=event.timestamp.isoformat(),
            actor=meta.get("actor"),
            data={k: jsonable(v) for k, v in event.__dict__.items() if k not in META_FIELDS},
            correlation_id=meta.get("correlation_id"),
        )

    def _name(self, topic: str, qualname: str) -> tuple[str, str]:
        name = self._names.get(topic)
        if name is None:
            parts = qualname.split(".")
            aggregate = snake(parts[-2]) if len(parts) > 1 else "event"
            name = self._names[topic] = (aggregate, snake(parts[-1]))
        return name
