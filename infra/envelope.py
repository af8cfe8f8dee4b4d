"""The public form of a stored event: the body, subject and headers that go out on BATON_EVENTS.

An event has two forms. As recorded: its data exactly as stored, with the version it was stored at; this is what
BATON_EVENTS carries, what the Merkle leaves hash and what an export holds, so nothing signed ever changes. As
current: the same event upcast to the version the code knows (domain.events); this is what read models, scoring
and routing read. For an event stored at its class's version the two are the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, Notification
from eventsourcing.utils import resolve_topic

from domain.events import META_FIELDS, event_classes, public_name, upcast, version_of
from domain.privacy import Sealed

EVENT_SUBJECT_PREFIX = "baton.evt"


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
    type_version: int = 1
    """The version of the event's type its data is in (domain.events); the body says it only when above 1."""

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
        body = {
            "position": self.position,
            "aggregate": self.aggregate,
            "aggregate_id": self.aggregate_id,
            "version": self.version,
            "type": self.type,
            "occurred_at": self.occurred_at,
            "actor": self.actor,
            "data": self.data,
        }
        if self.type_version != 1:  # absent means 1, so the bytes of every version-1 event stay as first signed
            body["type_version"] = self.type_version
        return body

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
            type_version=int(body.get("type_version", 1)),
        )


class EventTypes:
    """Each public event name's class, resolved through its topic (so a registered replacement class is used)."""

    def __init__(self) -> None:
        self._topics = {f"{a}.{e}": f"{cls.__module__}:{cls.__qualname__}" for a, e, cls in event_classes()}
        self._versions: dict[str, int] = {}

    def version(self, name: str) -> int:
        """The version the code knows for NAME (1 for a name it does not know)."""
        known = self._versions.get(name)
        if known is None:
            topic = self._topics.get(name)
            known = self._versions[name] = version_of(resolve_topic(topic)) if topic else 1
        return known

    def current_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """An event body as the code reads it now (the body itself when already at the code's version)."""
        if body.get("type_version", 1) >= self.version(f"{body['aggregate']}.{body['type']}"):
            return body
        return self.current(Envelope.from_body(body)).body()

    def current(self, envelope: Envelope) -> Envelope:
        """The envelope upcast to the version the code knows; itself when already there."""
        if envelope.type_version >= self.version(envelope.name):
            return envelope
        cls = resolve_topic(self._topics[envelope.name])
        data = jsonable(upcast(cls, envelope.type_version, envelope.data))
        return replace(envelope, data=data, type_version=version_of(cls))


class EnvelopeCodec:
    """Turns stored notifications into envelopes, the same way for the relay, projections and rebuild."""

    def __init__(self, mapper: Mapper[Any], types: EventTypes | None = None) -> None:
        self.mapper = mapper
        self.types = types or EventTypes()
        self._names: dict[str, tuple[str, str]] = {}

    def recorded(self, notification: Notification) -> Envelope:
        """The event as stored: its data and version untouched (what is published, signed and exported)."""
        state: dict[str, Any] = self.mapper.transcoder.decode(notification.state)
        type_version = int(state.pop("class_version", 1))
        aggregate, type_ = self._name(notification.topic)
        meta = state.get("meta") or {}
        timestamp = state["timestamp"]
        return Envelope(
            position=notification.id,
            aggregate=aggregate,
            aggregate_id=str(notification.originator_id),
            version=notification.originator_version,
            type=type_,
            occurred_at=timestamp.isoformat() if isinstance(timestamp, datetime) else str(timestamp),
            actor=meta.get("actor"),
            data={k: jsonable(v) for k, v in state.items() if k not in META_FIELDS},
            correlation_id=meta.get("correlation_id"),
            type_version=type_version,
        )

    def envelope(self, notification: Notification) -> Envelope:
        """The event as the code reads it now: recorded, then upcast to its class's version."""
        return self.types.current(self.recorded(notification))

    def _name(self, topic: str) -> tuple[str, str]:
        name = self._names.get(topic)
        if name is None:
            aggregate, _, type_ = public_name(topic.partition(":")[2]).partition(".")
            name = self._names[topic] = (aggregate, type_)
        return name
