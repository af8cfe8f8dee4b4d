"""audit.canonical writes exactly rfc8785's bytes (or fails as it does) and reads JSON exactly as json does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import canonical

# Every string a JSON document can hold, surrogates included (rfc8785 refuses a lone one; so must the fast path).
TEXT = st.text(st.characters(codec=None), max_size=12)
# Keys that tell code points from UTF-16 code units: U+E000..U+FFFF sorts after a surrogate pair in UTF-16.
KEY_CHARS = st.sampled_from(["a", "B", "é", "中", "\ue000", "\uffff", "\uff21", "\U0001f600", "\U00010000", "\x7f"])
KEYS = st.one_of(TEXT, st.text(KEY_CHARS, max_size=4))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) - 2, max_value=2**53 + 2),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=20,
)


def outcome(fn: Any, value: Any) -> Any:
    """fn(value), or the kind of error it raised."""
    try:
        return fn(value)
    except Exception as exc:
        return type(exc)


@settings(max_examples=1500)
@given(JSON)
def test_dumps_is_rfc8785(value: Any) -> None:
    assert outcome(canonical.dumps, value) == outcome(rfc8785.dumps, value)


@settings(max_examples=300)
@given(st.dictionaries(st.text(KEY_CHARS, min_size=1, max_size=3), st.integers(0, 9), min_size=2, max_size=8))
def test_keys_sort_by_utf16_code_units(value: dict[str, int]) -> None:
    assert canonical.dumps(value) == rfc8785.dumps(value)


def test_a_non_bmp_key_sorts_before_u_e000() -> None:
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert canonical.dumps(value) == rfc8785.dumps(value) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()


def test_numbers_and_escapes_at_the_edges() -> None:
    for value in (
        [2**53 - 1, -(2**53) + 1, 0, -1, True, False, None],
        {"s": '\x00\x1f\x7f\u2028"\\/\b\f\n\r\t', "e": "", "t": "已处理"},
        [1.0, 0.5, 1e21, 1e-7, -0.0, 5e-324],
        ("a", ("b",)),
    ):
        assert canonical.dumps(value) == rfc8785.dumps(value)
    for bad in (2**53, -(2**53), math.nan, math.inf, "\ud800", {1: "x"}, {"k": object()}):
        assert outcome(canonical.dumps, bad) == outcome(rfc8785.dumps, bad)


@settings(max_examples=800)
@given(JSON)
def test_loads_reads_what_json_reads(value: Any) -> None:
    try:
        text = json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return  # a lone surrogate is no UTF-8 document
    assert repr(canonical.loads(text)) == repr(json.loads(text))


def test_loads_refuses_what_json_refuses() -> None:
    for bad in (b"", b"{", b"[1,]", b'{"a":1}x'):
        with pytest.raises(ValueError):
            canonical.loads(bad)


@settings(max_examples=800)
@given(JSON)
def test_compact_is_json_dumps(value: Any) -> None:
    def reference(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))

    assert outcome(canonical.compact, value) == outcome(reference, value)


def test_compact_leaves_other_types_to_json() -> None:
    import enum
    import uuid

    class Colour(enum.Enum):
        RED = "red"

    for value in ({"u": uuid.UUID(int=1)}, [Colour.RED], {1: "int key"}, ["\ud800"], {"t": (1, "x")}, [1.5]):
        expected = outcome(lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")), value)
        assert outcome(canonical.compact, value) == expected


def test_dumps_refuses_what_rfc8785_refuses() -> None:
    import enum
    import uuid

    class Colour(enum.Enum):
        RED = "red"

    for value in ({"u": uuid.UUID(int=1)}, [Colour.RED], uuid.UUID(int=1), {"t": (1, "x")}):
        assert outcome(canonical.dumps, value) == outcome(rfc8785.dumps, value)
