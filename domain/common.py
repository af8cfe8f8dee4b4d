"""Small shared pieces of the domain: event metadata and identifier rules."""

from __future__ import annotations

import re
from typing import Any

from domain.errors import InvalidCommand

Meta = dict[str, Any]
"""Who caused an event and under which correlation id: {"actor": {...}, "correlation_id": "..."}."""

UNIT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEPARTMENT_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")
CATEGORY_CODE = re.compile(r"^[a-z][a-z0-9_]{1,40}$")


def check_identifier(kind: str, value: str, pattern: re.Pattern[str], hint: str) -> None:
    """Raise InvalidCommand unless value matches pattern."""
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidCommand(f"{kind} {value!r} is not valid: {hint}")


def check_text(field: str, value: str, max_length: int = 2000) -> str:
    """Return value stripped, or raise InvalidCommand if it is empty or too long."""
    text = (value or "").strip()
    if not text:
        raise InvalidCommand(f"{field} must not be empty")
    if len(text) > max_length:
        raise InvalidCommand(f"{field} is {len(text)} characters long; at most {max_length} allowed")
    return text
