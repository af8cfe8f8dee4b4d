"""A resident's report (民情诉求): raised through a channel, triaged by the community (社区管), handled by the
community itself or escalated into a whistle (部门办), and rated by the resident (回访)."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.common import Meta, check_text
from domain.errors import Conflict, InvalidCommand
from domain.whistle import Rating, Reporter

TRIAGE_HOURS = 24
"""Hours the community has to triage a new report (accept, merge, close as unreasonable or escalate)."""
HANDLING_DAYS = 7
"""Days the community has to resolve a report it accepted, unless it gives its own due date."""
MAX_MEDIA = 9
"""Photos a report may carry (a WeChat post's limit)."""
MAX_PHOTO_BYTES = 5 * 1024 * 1024
"""Bytes one uploaded photo may have (a phone's photo, compressed as WeChat sends it)."""
TRACKING_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
"""Crockford-like: no 0/O, 1/I, so a resident can read their code over the phone."""


class Channel(StrEnum):
    """How a report reached Baton."""

    E_STATION = "e_station"  # 民情e站 (WeChat mini-program)
    HOTLINE = "hotline_12345"  # a 12345 hotline transfer
    GRID_PATROL = "grid_patrol"  # 网格员巡查
    WALK_IN = "walk_in"  # 来访
    OPEN311 = "open311"  # a civic app over Open311 GeoReport v2


class Status(StrEnum):
    """Where a report stands."""

    RECEIVED = "received"  # waiting for the community's triage
    ACCEPTED = "accepted"  # the community handles it itself
    ESCALATED = "escalated"  # a whistle (吹哨) handles it; the report follows the whistle
    RESOLVED = "resolved"  # the result is reported; waiting for the resident's rating
    CLOSED = "closed"  # rated satisfied or basically satisfied, or the whistle closed
    MERGED = "merged"  # a duplicate of an open report or whistle
    UNREASONABLE = "unreasonable"  # closed as an unreasonable complaint (不合理诉求), counted apart


OPEN = frozenset({Status.RECEIVED, Status.ACCEPTED, Status.ESCALATED, Status.RESOLVED})
FINAL = frozenset({Status.CLOSED, Status.MERGED, Status.UNREASONABLE})


class RatedBy(StrEnum):
    """Who gave a rating: the resident, the resident by phone (the callback), or staff on their behalf."""

    RESIDENT = "resident"  # the resident, with their tracking code
    CALLBACK = "callback"  # 回访: the rating the resident gave by phone, recorded by staff
    ON_BEHALF = "on_behalf"  # staff rated without hearing the resident: counted separately


def normalise_code(code: str) -> str:
    """The code as issued: upper case, dashes where they belong, O read as 0 and I/L as 1 refused plainly."""
    raw = "".join(ch for ch in (code or "").upper() if ch.isalnum())
    if len(raw) != 12 or any(ch not in TRACKING_ALPHABET for ch in raw):
        raise InvalidCommand(
            "a tracking code is 12 letters and digits, e.g. R7KQ-42MX-9PTW (no 0, O, 1 or I); check the one you got"
        )
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def report_id(code: str) -> UUID:
    """The report a tracking code opens: derived from the code's hash, so the log never holds the code."""
    digest = hashlib.sha256(normalise_code(code).encode()).hexdigest()
    return uuid5(NAMESPACE_URL, f"baton:report:{digest}")


def check_coordinates(lat: float | None, long: float | None) -> tuple[float, float] | None:
    """(lat, long) as WGS-84 degrees, both or neither, or raise InvalidCommand."""
    if lat is None and long is None:
        return None
    if lat is None or long is None:
        raise InvalidCommand("give both lat and long (WGS-84 degrees), or neither")
    try:
        la, lo = float(lat), float(long)
    except (TypeError, ValueError):
        raise InvalidCommand("lat and long must be numbers of degrees, e.g. lat=31.55 long=118.49") from None
    if not (math.isfinite(la) and math.isfinite(lo)) or not -90 <= la <= 90 or not -180 <= lo <= 180:
        raise InvalidCommand(f"lat {lat} / long {long} is not on Earth: lat is -90..90, long -180..180")
    return la, lo


def check_media(media: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Photos as {url} (an http(s) media_url) or {sha256, content_type, bytes} (an upload kept outside the log)."""
    if len(media) > MAX_MEDIA:
        raise InvalidCommand(f"a report carries at most {MAX_MEDIA} photos; this one has {len(media)}")
    out: list[dict[str, Any]] = []
    for item in media:
        url = item.get("url")
        if url is not None:
            if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 2000:
                raise InvalidCommand(f"media_url {str(url)[:80]!r} must be an http(s) URL of at most 2,000 characters")
            out.append({"url": url})
        else:
            digest = str(item.get("sha256", ""))
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise InvalidCommand("an uploaded photo is named by its sha256 (64 hex digits) from POST /v1/media")
            out.append({"sha256": digest, "content_type": item.get("content_type"), "bytes": item.get("bytes")})
    return out


def sniff_image(data: bytes) -> str:
    """The image type a photo's first bytes say it is (JPEG, PNG, WebP, GIF), or InvalidCommand."""
    if not data:
        raise InvalidCommand("the photo is empty: send the image's bytes as the request body")
    if len(data) > MAX_PHOTO_BYTES:
        raise InvalidCommand(
            f"the photo is {len(data):,} bytes; at most {MAX_PHOTO_BYTES:,} are kept: send it smaller (as WeChat does)"
        )
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    raise InvalidCommand("only JPEG, PNG, WebP or GIF photos are kept; this body is none of them")


class Report(Aggregate):
    """A resident's report, from raising to the resident's rating."""

    def check_open(self, action: str) -> None:
        if Status(self.status) in FINAL:
            raise Conflict(f"the report is {self.status}; it cannot {action} any more")

    def check_status(self, action: str, *allowed: Status) -> None:
        if Status(self.status) not in allowed:
            wanted = " or ".join(s.value for s in allowed)
            raise Conflict(f"to {action}, the report must be {wanted}; it is {self.status}")

    @classmethod
    def raise_(
        cls,
        *,
        code: str,
        channel: str,
        category: str,
        description: str,
        community_id: str,
        grid_id: str | None,
        address: str | None,
        coordinates: tuple[float, float] | None,
        media: list[dict[str, Any]],
        attributes: dict[str, str],
        reporter: Reporter | None,
        timestamp: datetime,
        meta: Meta,
    ) -> Report:
        """A resident raises a report (居民提); the community must triage it within TRIAGE_HOURS."""
        try:
            channel_value = Channel(channel)
        except ValueError:
            allowed = ", ".join(c.value for c in Channel)
            raise InvalidCommand(f"channel {channel!r} is unknown; use one of: {allowed}") from None
        if address is None and coordinates is None:
            raise InvalidCommand("say where: an address, or lat and long (or both)")
        return cls._create(
            cls.Raised,
            id=report_id(code),
            channel=channel_value.value,
            category=category,
            description=check_text("description", description, 5000),
            community_id=community_id,
            grid_id=grid_id,
            address=check_text("address", address, 500) if address is not None else None,
            lat=coordinates[0] if coordinates else None,
            long=coordinates[1] if coordinates else None,
            media=check_media(media),
            attributes=dict(attributes),
            reporter=reporter.as_event() if reporter is not None else None,
            triage_due=timestamp + timedelta(hours=TRIAGE_HOURS),
            timestamp=timestamp,
            meta=meta,
        )

    class Raised(Aggregate.Created):
        channel: str
        category: str
        description: str
        community_id: str
        grid_id: str | None
        address: str | None
        lat: float | None
        long: float | None
        media: list[dict[str, Any]]
        attributes: dict[str, str]
        reporter: dict[str, Any] | None
        triage_due: datetime
        meta: Meta

    def __init__(
        self,
        channel: str,
        category: str,
        description: str,
        community_id: str,
        grid_id: str | None,
        address: str | None,
        lat: float | None,
        long: float | None,
        media: list[dict[str, Any]],
        attributes: dict[str, str],
        reporter: dict[str, Any] | None,
        triage_due: datetime,
        meta: Meta,
    ) -> None:
        self.channel, self.category, self.description = channel, category, description
        self.community_id, self.grid_id = community_id, grid_id
        self.address, self.lat, self.long = address, lat, long
        self.media, self.attributes, self.reporter = media, attributes, reporter
        self.status = Status.RECEIVED.value
        self.due_at: datetime | None = triage_due
        self.whistle_id: str | None = None
        self.ratings = 0
        self.missed: list[str] = []

    # Triage (社区管) -------------------------------------------------------------------------

    def accept(self, due_at: datetime | None, *, timestamp: datetime, meta: Meta) -> None:
        """The community takes the report on itself, to resolve by due_at (default HANDLING_DAYS)."""
        self.check_status("accept it", Status.RECEIVED)
        due = due_at or timestamp + timedelta(days=HANDLING_DAYS)
        if due <= timestamp:
            raise InvalidCommand(f"due_at {due.isoformat()} is not in the future; give a later date or none")
        self._accepted(due_at=due, timestamp=timestamp, meta=meta)

    @event("Accepted")
    def _accepted(self, due_at: datetime, *, timestamp: datetime, meta: Meta) -> None:
        self.status, self.due_at = Status.ACCEPTED.value, due_at

    def record_progress(self, note: str, *, timestamp: datetime, meta: Meta) -> None:
        self.check_status("record progress", Status.ACCEPTED)
        self._progress_recorded(note=check_text("note", note, 2000), timestamp=timestamp, meta=meta)

    @event("ProgressRecorded")
    def _progress_recorded(self, note: str, *, timestamp: datetime, meta: Meta) -> None:
        pass

    def resolve(self, result: str, *, timestamp: datetime, meta: Meta) -> None:
        """The community reports the result it reached itself; the resident rates it next."""
        self.check_status("report its result", Status.ACCEPTED)
        self._resolved(result=check_text("result", result, 2000), timestamp=timestamp, meta=meta)

    @event("Resolved")
    def _resolved(self, result: str, *, timestamp: datetime, meta: Meta) -> None:
        self.status, self.due_at = Status.RESOLVED.value, None

    def merge(self, into_kind: str, into_id: str, *, timestamp: datetime, meta: Meta) -> None:
        """A duplicate: it follows the open report or whistle it repeats (the service checks that one is open)."""
        self.check_status("merge it", Status.RECEIVED, Status.ACCEPTED)
        if into_kind not in ("report", "whistle"):
            raise InvalidCommand("merge into a 'report' or a 'whistle'")
        if into_kind == "report" and into_id == str(self.id):
            raise InvalidCommand("a report cannot be merged into itself")
        self._merged(into_kind=into_kind, into_id=into_id, timestamp=timestamp, meta=meta)

    @event("Merged")
    def _merged(self, into_kind: str, into_id: str, *, timestamp: datetime, meta: Meta) -> None:
        self.status, self.due_at = Status.MERGED.value, None

    def close_unreasonable(self, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        """Closed as unreasonable (不合理诉求), with the reason the resident is told; counted apart from the rates."""
        self.check_status("close it as unreasonable", Status.RECEIVED, Status.ACCEPTED)
        self._closed_unreasonable(reason=check_text("reason", reason, 2000), timestamp=timestamp, meta=meta)

    @event("ClosedUnreasonable")
    def _closed_unreasonable(self, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        self.status, self.due_at = Status.UNREASONABLE.value, None

    def escalate(self, whistle_id: UUID, *, timestamp: datetime, meta: Meta) -> None:
        """吹哨: a whistle blown for this report handles it; the report shows the whistle's steps."""
        self.check_status("escalate it", Status.RECEIVED, Status.ACCEPTED)
        self._escalated(whistle_id=str(whistle_id), timestamp=timestamp, meta=meta)

    @event("Escalated")
    def _escalated(self, whistle_id: str, *, timestamp: datetime, meta: Meta) -> None:
        self.status, self.whistle_id, self.due_at = Status.ESCALATED.value, whistle_id, None

    # The result, from the whistle ----------------------------------------------------------

    def whistle_fed_back(self, result: str, *, timestamp: datetime, meta: Meta) -> None:
        """The escalated whistle's lead department reported the result back: the resident can rate it."""
        self.check_status("take the whistle's result", Status.ESCALATED)
        self._resolved(result=result, timestamp=timestamp, meta=meta)

    def whistle_closed(self, *, timestamp: datetime, meta: Meta) -> None:
        """The escalated whistle closed (its community evaluated it) before the resident rated: the report closes."""
        self.check_status("close with its whistle", Status.ESCALATED, Status.RESOLVED)
        self._closed_with_whistle(whistle_id=self.whistle_id, timestamp=timestamp, meta=meta)

    @event("ClosedWithWhistle")
    def _closed_with_whistle(self, whistle_id: str | None, *, timestamp: datetime, meta: Meta) -> None:
        self.status = Status.CLOSED.value

    # 回访: the resident's rating -------------------------------------------------------------

    def rate(self, rating: str, comment: str | None, rated_by: str, *, timestamp: datetime, meta: Meta) -> None:
        """The resident rates the result; dissatisfied reopens it (the community's, or the whistle's)."""
        try:
            value = Rating(rating)
        except ValueError:
            allowed = ", ".join(r.value for r in Rating)
            raise InvalidCommand(f"rating {rating!r} is unknown; use one of: {allowed}") from None
        try:
            by = RatedBy(rated_by)
        except ValueError:
            allowed = ", ".join(r.value for r in RatedBy)
            raise InvalidCommand(f"rated_by {rated_by!r} is unknown; use one of: {allowed}") from None
        self.check_status("be rated", Status.RESOLVED)
        reopened = value is Rating.DISSATISFIED
        after = (Status.ESCALATED if self.whistle_id else Status.ACCEPTED) if reopened else Status.CLOSED
        self._rated(
            rating=value.value,
            comment=(comment or "").strip()[:2000] or None,
            rated_by=by.value,
            status=after.value,
            due_at=timestamp + timedelta(days=HANDLING_DAYS) if reopened and not self.whistle_id else None,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Rated")
    def _rated(
        self,
        rating: str,
        comment: str | None,
        rated_by: str,
        status: str,
        due_at: datetime | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.status, self.due_at = status, due_at
        self.ratings += 1

    # Deadlines -------------------------------------------------------------------------------

    def check_deadline(self, *, timestamp: datetime, meta: Meta) -> bool:
        """Record a missed triage or handling deadline once; True when one was missed now."""
        step = {Status.RECEIVED: "triage", Status.ACCEPTED: "handling"}.get(Status(self.status))
        if step is None or self.due_at is None or timestamp <= self.due_at:
            return False
        key = f"{step}:{self.due_at.isoformat()}"
        if key in self.missed:
            return False
        self._deadline_missed(step=step, due_at=self.due_at, timestamp=timestamp, meta=meta)
        return True

    @event("DeadlineMissed")
    def _deadline_missed(self, step: str, due_at: datetime, *, timestamp: datetime, meta: Meta) -> None:
        self.missed.append(f"{step}:{due_at.isoformat()}")
