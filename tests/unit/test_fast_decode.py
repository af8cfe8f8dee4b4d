"""The codec's fast decoder gives the envelope (and so the canonical bytes, the Merkle leaf) that eventsourcing's
transcoder and jsonable() give, for every event type Baton records, over generated field values."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import rfc8785
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    Notification,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import canonical
from domain.events import event_classes, fields_of, version_of
from domain.privacy import Sealed
from infra.envelope import EnvelopeCodec
from infra.privacy import SealedAsToken

EVENTS = sorted(event_classes(), key=lambda found: (found[0], found[1]))
TEXT = st.text(st.characters(codec="utf-8"), max_size=10)  # what a stored state can hold (no lone surrogates)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-3, minutes=-30))])
DATETIMES = st.datetimes(timezones=ZONES)
SEALED = st.builds(
    lambda person, body: Sealed(f"pii1.{person.hex}.{body}"),
    st.uuids(),
    st.text("abcXYZ019-_", min_size=1, max_size=20),
)
DECIMALS = st.decimals(allow_nan=False, allow_infinity=False, places=3) | st.decimals(allow_nan=False)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)
ANY = st.recursive(
    JSON | st.uuids() | DECIMALS | DATETIMES | SEALED,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


def strategy(hint: str) -> st.SearchStrategy[Any]:
    """Values of a field as its class declares it (domain.events.fields_of)."""
    if hint.endswith(" | None"):
        return st.none() | strategy(hint.removesuffix(" | None"))
    simple: dict[str, st.SearchStrategy[Any]] = {
        "str": TEXT,
        "int": st.integers(-(2**70), 2**70),
        "bool": st.booleans(),
        "float": st.floats(),
        "UUID": st.uuids(),
        "Decimal": DECIMALS,
        "datetime": DATETIMES,
        "Sealed": SEALED,
        "list[str]": st.lists(TEXT, max_size=3),
        "dict[str, str]": st.dictionaries(TEXT, TEXT, max_size=3),
        "dict[str, dict[str, int]]": st.dictionaries(
            TEXT, st.dictionaries(TEXT, st.integers(), max_size=2), max_size=2
        ),
        "dict[str, Any]": st.dictionaries(TEXT, ANY, max_size=4),
        "list[dict[str, Any]]": st.lists(st.dictionaries(TEXT, ANY, max_size=3), max_size=3),
    }
    return simple[hint]


def transcoder() -> JSONTranscoder:
    """The transcoder as infra.store.Store registers it."""
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), SealedAsToken()):
        t.register(transcoding)
    return t


CODEC = EnvelopeCodec(Mapper(transcoder=transcoder()))
ACTORS = st.none() | st.fixed_dictionaries({"role": TEXT, "unit": st.none() | TEXT, "id": TEXT})


@st.composite
def stored(draw: st.DrawFn) -> Notification:
    """A stored event of any type: its state as eventsourcing's mapper writes it."""
    aggregate, _, cls = draw(st.sampled_from(EVENTS))
    state: dict[str, Any] = {"timestamp": draw(DATETIMES), "originator_topic": f"{cls.__module__}:{aggregate}"}
    for name, hint in fields_of(cls).items():
        state[name] = draw(strategy(hint))
    if version_of(cls) > 1 or draw(st.booleans()):
        state["class_version"] = draw(st.integers(1, version_of(cls)))
    state["meta"] = {"actor": draw(ACTORS), "correlation_id": draw(st.none() | TEXT)}
    return Notification(
        id=draw(st.integers(1, 2**40)),
        originator_id=draw(st.uuids()),
        originator_version=draw(st.integers(1, 10_000)),
        topic=f"{cls.__module__}:{cls.__qualname__}",
        state=CODEC.mapper.transcoder.encode(state),
    )


def notification(topic: str, state: bytes) -> Notification:
    return Notification(id=1, originator_id=uuid.uuid4(), originator_version=1, topic=topic, state=state)


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return type(exc)


@settings(max_examples=1500, deadline=None)
@given(stored())
def test_fast_decoder_equals_the_transcoder_and_so_do_the_canonical_bytes(notification: Notification) -> None:
    fast, reference = CODEC.recorded(notification), CODEC.recorded_by_transcoder(notification)
    assert repr(fast) == repr(reference)
    assert outcome(canonical.dumps, fast.body()) == outcome(rfc8785.dumps, reference.body())


def test_every_event_type_takes_the_fast_path() -> None:
    """Not a fallback in disguise: plain states of every type decode without the transcoder."""
    for aggregate, event, cls in EVENTS:
        state = {
            "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
            "originator_topic": f"{cls.__module__}:{aggregate}",
            **{name: uuid.uuid4() if hint == "UUID" else Decimal("1.50") for name, hint in fields_of(cls).items()},
            "meta": {"actor": {"role": "admin", "unit": None, "id": "a"}, "correlation_id": "c"},
        }
        n = notification(f"{cls.__module__}:{cls.__qualname__}", CODEC.mapper.transcoder.encode(state))
        assert CODEC._recorded_fast(n) == CODEC.recorded_by_transcoder(n), f"{aggregate}.{event}"


def test_a_state_the_fast_decoder_does_not_read_fails_as_before() -> None:
    """An unknown transcoding, or a huge integer, goes to the transcoder and fails or reads as it always did."""
    topic = "domain.whistle:Whistle.ReportedIn"
    stamp = b'"timestamp":{"_type_":"datetime_iso","_data_":"2026-01-01T00:00:00+00:00"}'
    unknown = b"{" + stamp + b',"x":{"_type_":"y","_data_":"z"}}'
    n = notification(topic, unknown)
    assert outcome(CODEC.recorded, n) == outcome(CODEC.recorded_by_transcoder, n) == TranscodingNotRegisteredError
    huge = b"{" + stamp + b',"x":' + b"9" * 30 + b"}"
    n = notification(topic, huge)
    assert CODEC.recorded(n).data["x"] == 10**30 - 1
