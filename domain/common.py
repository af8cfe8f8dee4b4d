"""Small shared pieces of the domain: event metadata and identifier rules."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from domain.errors import Conflict, DuplicateEntry, InvalidCommand

Meta = dict[str, Any]
"""Who caused an event and under which correlation id: {"actor": {...}, "correlation_id": "..."}."""

LOCAL_TIMEZONE = "Asia/Shanghai"
"""Where governance years, months and days are counted unless a scheme or policy names another zone."""

UNIT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEPARTMENT_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")
CATEGORY_CODE = re.compile(r"^[a-z][a-z0-9_]{1,40}$")


def check_identifier(kind: str, value: str, pattern: re.Pattern[str], hint: str) -> None:
    """Raise InvalidCommand unless value matches pattern."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidCommand(f"{kind} {value!r} is not valid: {hint}")


def check_text(field: str, value: str, max_length: int = 2000) -> str:
    """Return value stripped, or raise InvalidCommand if it is empty or too long."""
    text = (value or "").strip()
    if not text:
        raise InvalidCommand(f"{field} must not be empty")
    if len(text) > max_length:
        raise InvalidCommand(f"{field} is {len(text)} characters long; at most {max_length} allowed")
    return text


def local_year(moment: datetime, timezone: str = LOCAL_TIMEZONE) -> int:
    """The year a moment falls in, where governance counts it."""
    return moment.astimezone(ZoneInfo(timezone)).year


def year_end(year: int, timezone: str = LOCAL_TIMEZONE) -> datetime:
    """The moment a year ends where governance counts it: local midnight at New Year."""
    return datetime(year + 1, 1, 1, tzinfo=ZoneInfo(timezone))


def digest(document: dict[str, Any]) -> str:
    """SHA-256 of the document's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_version_digest(kind: str, version: str, published: str | None, document: dict[str, Any]) -> str:
    """The digest of a document to publish as version (published: that version's digest, if any); refused if taken."""
    found = digest(document)
    if published == found:
        raise DuplicateEntry(f"{kind} version {version} is already published")
    if published is not None:
        raise Conflict(f"{kind} version {version} is published with other content; use a new version")
    return found
