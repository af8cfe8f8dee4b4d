"""The public form of a stored event: the body, subject and headers that go out on BATON_EVENTS.

An event has two forms. As recorded: its data exactly as stored, with the version it was stored at; this is what
BATON_EVENTS carries, what the Merkle leaves hash and what an export holds, so nothing signed ever changes. As
current: the same event upcast to the version the code knows (domain.events); this is what read models, scoring
and routing read. For an event stored at its class's version the two are the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, Mapper, Notification, UUIDAsHex
from eventsourcing.utils import resolve_topic

from audit import canonical as jcs
from domain.events import META_FIELDS, event_classes, public_name, upcast, version_of
from domain.privacy import SEALED_PREFIX, Sealed
from infra.privacy import SealedAsToken

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

    def astuple(self) -> tuple[Any, ...]:
        """The fields in order: Envelope(*envelope.astuple()) == envelope."""
        return (
            self.position,
            self.aggregate,
            self.aggregate_id,
            self.version,
            self.type,
            self.occurred_at,
            self.actor,
            self.data,
            self.correlation_id,
            self.type_version,
        )

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


def canonical(envelope: Envelope) -> bytes:
    """The event's canonical bytes: RFC 8785 JSON of its public body (what its Merkle leaf hashes)."""
    return jcs.dumps(envelope.body())


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


class _Slow(Exception):
    """This stored state takes the transcoder's own path (it holds something the fast decoder does not read)."""


_NESTED = (dict, list, float)
_LOWER_HEX32 = re.compile(r"[0-9a-f]{32}")


def _uuid_text(data: str) -> str:
    """str(UUID(data)), without making the UUID for the 32 lowercase hex digits UUIDAsHex writes."""
    if len(data) == 32 and _LOWER_HEX32.fullmatch(data):
        return f"{data[:8]}-{data[8:12]}-{data[12:16]}-{data[16:20]}-{data[20:]}"
    return str(UUID(data))


def _sealed_text(data: str) -> str:
    """Sealed(data).token, refusing what Sealed refuses."""
    if not data.startswith(SEALED_PREFIX) or data.count(".") != 2:
        raise _Slow
    return data


_AS_TEXT: dict[type, tuple[str, Callable[[str], str]]] = {
    UUIDAsHex: ("uuid_hex", _uuid_text),
    DecimalAsStr: ("decimal_str", lambda data: str(Decimal(data))),
    DatetimeAsISO: ("datetime_iso", lambda data: datetime.fromisoformat(data).isoformat()),
    SealedAsToken: ("sealed", _sealed_text),
}
"""Each transcoding Baton registers, read straight to the text jsonable() makes of the object it decodes to."""


def _fast_transcodings(mapper: Mapper[Any]) -> dict[str, Callable[[str], str]] | None:
    """The fast decoder's table for this mapper's transcoder, or None when it registers one the table lacks."""
    transcoder = mapper.transcoder
    if type(transcoder) is not JSONTranscoder:
        return None
    table = {}
    for name, transcoding in transcoder.names.items():
        known = _AS_TEXT.get(type(transcoding))
        if known is None or known[0] != name:
            return None
        table[name] = known[1]
    return table


class EnvelopeCodec:
    """Turns stored notifications into envelopes, the same way for the relay, projections and rebuild.

    Stored states are read by orjson and their transcoded values (UUIDs, decimals, datetimes, sealed tokens)
    straight into the text an envelope holds; a state holding anything else (a float among them: orjson reads an
    integer beyond 64 bits as one) takes the transcoder's own path.
    tests/unit/test_fast_decode.py shows both give the same envelope for every event type.
    """

    def __init__(self, mapper: Mapper[Any], types: EventTypes | None = None) -> None:
        self.mapper = mapper
        self.types = types or EventTypes()
        self._names: dict[str, tuple[str, str]] = {}
        self._text = _fast_transcodings(mapper)

    def recorded(self, notification: Notification) -> Envelope:
        """The event as stored: its data and version untouched (what is published, signed and exported)."""
        if self._text is not None:
            try:
                return self._recorded_fast(notification)
            except (_Slow, orjson.JSONDecodeError):
                pass
        return self.recorded_by_transcoder(notification)

    def recorded_by_transcoder(self, notification: Notification) -> Envelope:
        """recorded(), through eventsourcing's transcoder and jsonable() (the reference the fast path must equal)."""
        state: dict[str, Any] = self.mapper.transcoder.decode(notification.state)
        type_version = int(state.pop("class_version", 1))
        meta = state.get("meta") or {}
        timestamp = state["timestamp"]
        return self._envelope(
            notification,
            timestamp.isoformat() if isinstance(timestamp, datetime) else str(timestamp),
            meta.get("actor"),
            {k: jsonable(v) for k, v in state.items() if k not in META_FIELDS},
            meta.get("correlation_id"),
            type_version,
        )

    def _envelope(
        self,
        notification: Notification,
        occurred_at: str,
        actor: dict[str, Any] | None,
        data: dict[str, Any],
        correlation_id: str | None,
        type_version: int,
    ) -> Envelope:
        aggregate, type_ = self._name(notification.topic)
        return Envelope(
            position=notification.id,
            aggregate=aggregate,
            aggregate_id=str(notification.originator_id),
            version=notification.originator_version,
            type=type_,
            occurred_at=occurred_at,
            actor=actor,
            data=data,
            correlation_id=correlation_id,
            type_version=type_version,
        )

    def _recorded_fast(self, notification: Notification) -> Envelope:
        state = orjson.loads(notification.state)
        if type(state) is not dict or self._transcoded(state):
            raise _Slow
        data = {}
        for key, value in state.items():
            kind = type(value)
            if kind is float:  # orjson reads an integer beyond 64 bits as a float: let json read it
                raise _Slow
            if key not in META_FIELDS and key != "class_version":
                data[key] = self._plain(value) if kind is dict or kind is list else value
            elif (kind is dict or kind is list) and key != "timestamp" and key != "meta":
                raise _Slow
        timestamp = state["timestamp"]
        if type(timestamp) is dict:
            timestamp = self._plain(timestamp)
        if type(timestamp) is not str:
            raise _Slow
        meta = state.get("meta") or {}
        if type(meta) is not dict or self._transcoded(meta):
            raise _Slow
        for key, value in meta.items():  # only the actor may be an object, of plain values (and no floats)
            kind = type(value)
            if (
                kind is list
                or kind is float
                or (
                    kind is dict
                    and (key != "actor" or self._transcoded(value) or any(type(v) in _NESTED for v in value.values()))
                )
            ):
                raise _Slow
        actor, correlation_id = meta.get("actor"), meta.get("correlation_id")
        return self._envelope(notification, timestamp, actor, data, correlation_id, int(state.get("class_version", 1)))

    @staticmethod
    def _transcoded(value: dict[str, Any]) -> bool:
        """Whether the transcoder would read this object as a transcoded value."""
        return len(value) == 2 and "_type_" in value and "_data_" in value

    def _plain(self, value: Any) -> Any:
        """A decoded JSON value with each transcoded object replaced by the text jsonable() makes of it."""
        kind = type(value)
        if kind is dict:
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                name, data = value["_type_"], value["_data_"]
                if type(name) is not str or type(data) is not str:
                    raise _Slow
                assert self._text is not None
                convert = self._text.get(name)
                if convert is None:
                    raise _Slow
                return convert(data)
            return {k: self._plain(v) for k, v in value.items()}
        if kind is list:
            return [self._plain(v) for v in value]
        if kind is float:
            raise _Slow
        return value

    def envelope(self, notification: Notification) -> Envelope:
        """The event as the code reads it now: recorded, then upcast to its class's version."""
        return self.types.current(self.recorded(notification))

    def name(self, topic: str) -> tuple[str, str]:
        """(aggregate, type) of a stored event's topic, e.g. ("whistle", "blown")."""
        return self._name(topic)

    def _name(self, topic: str) -> tuple[str, str]:
        name = self._names.get(topic)
        if name is None:
            aggregate, _, type_ = public_name(topic.partition(":")[2]).partition(".")
            name = self._names[topic] = (aggregate, type_)
        return name
