"""RFC 8785 (JCS) canonical JSON: orjson for the shapes Baton writes, the rfc8785 package for the rest.

A Merkle leaf hashes an event's canonical bytes, so these must be exactly the bytes rfc8785.dumps gives.
For a JSON value (what json.loads returns: dicts with string keys, lists, strings, ints, floats, booleans,
None) orjson with sorted keys and the 53-bit integer limit writes the same bytes as RFC 8785 unless the
value holds a float (ECMAScript number formatting differs; orjson writes NaN as null), a type that is no JSON
value (orjson writes UUIDs and enums where rfc8785 refuses them), or a key order that
UTF-16 code units and code points disagree on (a character from U+E000 to U+FFFF beside one above U+FFFF).
Those go to rfc8785, as does anything orjson refuses (a lone surrogate, an integer beyond 2^53 - 1), so the
errors are rfc8785's too. tests/unit/test_canonical.py checks the equality over generated values.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import rfc8785

_PLAIN = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""Anything but plain JSON types goes to default (which refuses it), not orjson's own encoding."""
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER | _PLAIN
_HIGH_BMP = re.compile(rb"[\xee\xef]")
"""UTF-8 lead bytes of U+E000 to U+FFFF."""
_ASTRAL = re.compile(rb"[\xf0-\xf4]")
"""UTF-8 lead bytes above U+FFFF (a surrogate pair in UTF-16)."""


def _refuse(value: Any) -> Any:
    raise TypeError(f"not a JSON value: {type(value).__name__}")


_SCALARS = frozenset({str, int, bool, type(None)})


def plain(value: Any) -> bool:
    """Whether a list or dict holds only strings, integers, booleans, None, lists and dicts: no float, nothing
    orjson would write its own way (UUIDs, enums) where json and rfc8785 refuse it."""
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind not in _SCALARS and not ((kind is dict or kind is list or kind is tuple) and plain(item)):
            return False
    return True


def dumps(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value: rfc8785.dumps(value), faster."""
    kind = type(value)
    if kind not in _SCALARS and not ((kind is dict or kind is list or kind is tuple) and plain(value)):
        return rfc8785.dumps(value)
    try:
        out = orjson.dumps(value, default=_refuse, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        return rfc8785.dumps(value)
    if _HIGH_BMP.search(out) and _ASTRAL.search(out):
        return rfc8785.dumps(value)
    return out


def compact(value: Any) -> str:
    """json.dumps(value, ensure_ascii=False, separators=(",", ":")), faster where orjson writes the same text
    (no float, whose text differs; nothing orjson refuses or json would refuse)."""
    kind = type(value)
    if (kind is dict or kind is list) and plain(value):
        try:
            return orjson.dumps(value, default=_refuse, option=_PLAIN).decode()
        except (orjson.JSONEncodeError, TypeError):
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def loads(data: bytes) -> Any:
    """A JSON document as json.loads reads it: orjson, or json when orjson refuses it (NaN) or it holds a float
    (orjson reads an integer beyond 64 bits as a float)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
    kind = type(value)
    if kind is float or ((kind is dict or kind is list) and not plain(value)):
        return json.loads(data)
    return value
