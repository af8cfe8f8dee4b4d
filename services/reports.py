"""Residents' reports (居民提、社区管、部门办): raising, the community's triage, escalation into a whistle, and the
resident's own rating through their tracking code."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from domain.errors import Conflict, InvalidCommand, NotFound, OutOfScope, Thing, UnknownReference
from domain.organisation import UnitKind
from domain.report import (
    TRACKING_ALPHABET,
    Channel,
    RatedBy,
    Report,
    Status,
    check_coordinates,
    report_id,
    sniff_image,
)
from domain.whistle import Reporter, Whistle
from domain.whistle import Status as WhistleStatus
from infra.clock import Clock
from infra.store import Store
from services.access import Actor, Context, Role, check_community_scope, require_role
from services.base import BatonApplication, Decision, Receipt
from services.organisation import OrganisationApp
from services.whistles import REPORTER_FIELDS, WhistleApp, seal_reporter

TRIAGERS = (Role.ADMIN, Role.COMMUNITY, Role.STREET, Role.DISTRICT)
"""Who triages a report: the community (社区管), or a street or district acting for it."""
RAISERS = (Role.ADMIN, Role.COMMUNITY, Role.GRID, Role.STREET, Role.DISTRICT, Role.RESIDENT)
"""Who files a report: staff taking it down (hotline, walk-in, patrol) or a resident's channel (e-station, Open311)."""


def new_tracking_code() -> str:
    """A fresh tracking code, e.g. R7KQ-42MX-9PTW (60 bits from the system's random source)."""
    raw = "".join(secrets.choice(TRACKING_ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


class ReportApp(BatonApplication):
    """Takes residents' reports from raising to the resident's rating."""

    def __init__(self, store: Store, clock: Clock, org: OrganisationApp, whistles: WhistleApp) -> None:
        super().__init__(store, clock)
        self.org, self.whistles = org, whistles

    def get(self, rid: UUID | str) -> Report:
        try:
            return self.load(UUID(str(rid)))
        except (AggregateNotFoundError, ValueError):
            raise NotFound(f"report {rid} does not exist", Thing.REPORT, rid) from None

    @staticmethod
    def id_of(code: str) -> UUID:
        """The report id a tracking code opens; a code that cannot be one is not found, with how codes look."""
        try:
            return report_id(code)
        except InvalidCommand as exc:
            raise NotFound(f"tracking code {code} cannot be one: {exc.message}", Thing.REPORT, code) from None

    def by_code(self, code: str) -> Report:
        """The report a tracking code opens (the code is checked, never stored)."""
        try:
            return self.load(self.id_of(code))
        except AggregateNotFoundError:
            raise NotFound(
                f"no report has tracking code {code}; check it against the message you got when you raised it",
                Thing.REPORT,
                code,
            ) from None

    def contact_of(self, rid: UUID | str) -> tuple[str, dict[str, Any] | None]:
        """The report's community and its resident's contact details in clear (None if none or erased): for the
        notification gateway only."""
        report = self.get(rid)
        if not report.reporter:
            return report.community_id, None
        sealed = {f: getattr(report.reporter.get(f), "token", report.reporter.get(f)) for f in REPORTER_FIELDS}
        shown = self.store.vault.reveal_in(sealed)
        return report.community_id, shown if any(shown.values()) else None

    # 居民提 ----------------------------------------------------------------------------------

    def raise_report(
        self,
        ctx: Context,
        *,
        channel: str,
        category: str,
        description: str,
        community_id: str | None = None,
        grid_id: str | None = None,
        address: str | None = None,
        lat: float | None = None,
        long: float | None = None,
        media: list[dict[str, Any]] | None = None,
        attributes: dict[str, str] | None = None,
        reporter: dict[str, Any] | None = None,
    ) -> Receipt:
        """Raise a report; the answer carries its id and the resident's tracking code (shown once)."""
        actor = ctx.actor
        require_role(actor, *RAISERS, action="raise a report")
        if actor.role is Role.RESIDENT and channel not in (Channel.E_STATION, Channel.OPEN311):
            raise OutOfScope("a resident's channel files through the e-station or Open311 only")
        org = self.org.current()
        coordinates = check_coordinates(lat, long)
        if community_id is None and coordinates is not None:
            located = org.locate(*coordinates)
            if located is not None:
                community_id, grid_id = located[0], grid_id or located[1]
        if community_id is None:
            raise InvalidCommand(
                "say which community: community_id, or lat/long inside a grid whose boundary the organisation holds"
            )
        org.community(community_id)
        if actor.role is not Role.RESIDENT:
            check_community_scope(org, actor, community_id, "raise a report")
        if actor.role is Role.GRID:
            grid_id = grid_id or actor.unit
        if grid_id is not None:
            grid = org.units.get(grid_id)
            if grid is None or grid["kind"] != UnitKind.GRID or grid["parent"] != community_id:
                raise UnknownReference(f"{grid_id!r} is not a grid of community {community_id!r}", Thing.UNIT, grid_id)
        org.category(category)
        if reporter is not None and not any((reporter.get(f) or "").strip() for f in REPORTER_FIELDS):
            raise InvalidCommand("a reporter needs at least one of name, phone or address; or leave reporter out")
        person_id = self.whistles._reporter_id(reporter)
        media = self._with_uploads(list(media or []))
        code = new_tracking_code()

        def decide(now: datetime) -> Decision:
            sealed = None
            if reporter is not None and person_id is not None:
                sealed = seal_reporter(self.store.vault, person_id, community_id, reporter)
            report = Report.raise_(
                code=code,
                channel=channel,
                category=category,
                description=description,
                community_id=community_id,
                grid_id=grid_id,
                address=address,
                coordinates=coordinates,
                media=media,
                attributes=dict(attributes or {}),
                reporter=sealed,
                timestamp=now,
                meta=ctx.meta(),
            )
            body = {"report_id": str(report.id), "tracking_code": code, "community_id": community_id}
            return [report], body

        return self.execute(ctx, decide)

    def upload_photo(self, ctx: Context, data: bytes) -> dict[str, Any]:
        """Keep a photo outside the event log under its SHA-256, which a report then names (idempotent)."""
        require_role(ctx.actor, *RAISERS, action="upload a photo")
        content_type = sniff_image(data)
        digest = hashlib.sha256(data).hexdigest()
        self.store.recorder.put_media(digest, content_type, data)
        return {"sha256": digest, "content_type": content_type, "bytes": len(data)}

    def photo(self, digest: str) -> tuple[str, bytes]:
        """A kept photo's type and bytes, or NotFound."""
        found = self.store.recorder.get_media(digest)
        if found is None:
            raise NotFound(f"no photo has sha256 {digest}", Thing.PHOTO, digest)
        return found

    def _with_uploads(self, media: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each uploaded photo named by hash, with its type and size as kept (it must have been uploaded)."""
        out = []
        for item in media:
            digest = item.get("sha256")
            if digest is None:
                out.append(item)
                continue
            found = self.store.recorder.get_media(str(digest))
            if found is None:
                raise UnknownReference(
                    f"photo {digest} was not uploaded; POST its bytes to /v1/media first", Thing.PHOTO, str(digest)
                )
            out.append({"sha256": digest, "content_type": found[0], "bytes": len(found[1])})
        return out

    # 社区管 ----------------------------------------------------------------------------------

    def _triage(
        self, ctx: Context, rid: UUID | str, action: str, act: Callable[[Report, datetime], list[Any]]
    ) -> Receipt:
        require_role(ctx.actor, *TRIAGERS, action=action)

        def decide(now: datetime) -> Decision:
            report = self.get(rid)
            check_community_scope(self.org.current(), ctx.actor, report.community_id, action)
            more = act(report, now)
            body: dict[str, Any] = {"report_id": str(report.id), "status": report.status}
            if report.whistle_id:
                body["whistle_id"] = report.whistle_id
            return [report, *more], body

        return self.execute(ctx, decide)

    def accept(self, ctx: Context, rid: UUID | str, *, due_at: datetime | None = None) -> Receipt:
        return self._triage(
            ctx, rid, "accept a report", lambda r, now: r.accept(due_at, timestamp=now, meta=ctx.meta()) or []
        )

    def record_progress(self, ctx: Context, rid: UUID | str, *, note: str) -> Receipt:
        return self._triage(
            ctx,
            rid,
            "record a report's progress",
            lambda r, now: r.record_progress(note, timestamp=now, meta=ctx.meta()) or [],
        )

    def resolve(self, ctx: Context, rid: UUID | str, *, result: str) -> Receipt:
        return self._triage(
            ctx, rid, "resolve a report", lambda r, now: r.resolve(result, timestamp=now, meta=ctx.meta()) or []
        )

    def close_unreasonable(self, ctx: Context, rid: UUID | str, *, reason: str) -> Receipt:
        return self._triage(
            ctx,
            rid,
            "close a report as unreasonable",
            lambda r, now: r.close_unreasonable(reason, timestamp=now, meta=ctx.meta()) or [],
        )

    def merge(
        self, ctx: Context, rid: UUID | str, *, into_report: str | None = None, into_whistle: str | None = None
    ) -> Receipt:
        """A duplicate follows the open report or whistle of the same community it repeats."""
        if (into_report is None) == (into_whistle is None):
            raise InvalidCommand("merge into exactly one of into_report or into_whistle")

        def act(report: Report, now: datetime) -> list[Any]:
            if into_report is not None:
                target = self.get(into_report)
                if Status(target.status) not in (Status.RECEIVED, Status.ACCEPTED, Status.ESCALATED, Status.RESOLVED):
                    raise Conflict(f"report {into_report} is {target.status}; merge into an open one")
                where, kind, tid = target.community_id, "report", str(target.id)
            else:
                whistle = self.whistles.get(str(into_whistle))
                if whistle.status is WhistleStatus.CLOSED:
                    raise Conflict(f"whistle {into_whistle} is closed; merge into an open one")
                where, kind, tid = whistle.community_id, "whistle", str(whistle.id)
            if where != report.community_id:
                raise InvalidCommand(
                    f"the {kind} {tid} is community {where}'s; a duplicate is merged within its community"
                )
            report.merge(kind, tid, timestamp=now, meta=ctx.meta())
            return []

        return self._triage(ctx, rid, "merge a report", act)

    def escalate(
        self,
        ctx: Context,
        rid: UUID | str,
        *,
        title: str,
        urgency: str = "normal",
        summoned_departments: list[str] | None = None,
    ) -> Receipt:
        """吹哨: blow a whistle for the report, in the same transaction; the report follows the whistle."""
        report = self.get(rid)
        make, _ = self.whistles.whistle_maker(
            ctx,
            community_id=report.community_id,
            category=report.category,
            title=title,
            description=report.description,
            urgency=urgency,
            summoned_departments=summoned_departments,
            grid_id=report.grid_id,
            location=report.address,
            source="resident",
            sealed_reporter=Reporter(**report.reporter) if report.reporter else None,
        )

        def act(r: Report, now: datetime) -> list[Any]:
            whistle = make(now)
            r.escalate(whistle.id, timestamp=now, meta=ctx.meta())
            return [whistle]

        return self._triage(ctx, rid, "escalate a report", act)

    # Following the whistle -------------------------------------------------------------------

    def follow_whistle(self, ctx: Context, rid: UUID | str) -> Receipt | None:
        """Bring an escalated report up to its whistle (result fed back, whistle closed); None when nothing is new."""
        changed = False

        def decide(now: datetime) -> Decision:
            nonlocal changed
            report = self.get(rid)
            if report.whistle_id is None:
                return [], {"report_id": str(report.id), "status": report.status}
            whistle: Whistle = self.whistles.get(report.whistle_id)
            status = Status(report.status)
            if status is Status.ESCALATED and whistle.status in (WhistleStatus.FED_BACK, WhistleStatus.CLOSED):
                report.whistle_fed_back(
                    getattr(whistle, "result", None) or "(no result text)", timestamp=now, meta=ctx.meta()
                )
                changed = True
                status = Status.RESOLVED
            if status in (Status.ESCALATED, Status.RESOLVED) and whistle.status is WhistleStatus.CLOSED:
                report.whistle_closed(timestamp=now, meta=ctx.meta())
                changed = True
            return [report], {"report_id": str(report.id), "status": report.status}

        receipt = self.execute(ctx, decide)
        return receipt if changed else None

    def check_deadline(self, ctx: Context, rid: UUID | str) -> Receipt | None:
        """Record a missed triage or handling deadline as of now; None when none was missed."""
        missed = False

        def decide(now: datetime) -> Decision:
            nonlocal missed
            report = self.get(rid)
            missed = report.check_deadline(timestamp=now, meta=ctx.meta())
            return [report], {"report_id": str(report.id), "missed": missed}

        receipt = self.execute(ctx, decide)
        return receipt if missed else None

    # 回访 ------------------------------------------------------------------------------------

    def rate_by_code(self, ctx: Context, code: str, *, rating: str, comment: str | None = None) -> Receipt:
        """The resident rates with their tracking code; on an escalated report the whistle is rated with it."""
        rid = self.by_code(code).id
        return self._rate(ctx, rid, rating, comment, RatedBy.RESIDENT)

    def rate_for(
        self, ctx: Context, rid: UUID | str, *, rating: str, rated_by: str, comment: str | None = None
    ) -> Receipt:
        """Staff record a rating: the one the resident gave on the callback, or their own on the resident's behalf."""
        require_role(ctx.actor, *TRIAGERS, action="record a resident's rating")
        if rated_by == RatedBy.RESIDENT:
            raise InvalidCommand(
                "only the resident rates as 'resident' (with their tracking code); use callback or on_behalf"
            )
        report = self.get(rid)
        check_community_scope(self.org.current(), ctx.actor, report.community_id, "record a resident's rating")
        return self._rate(ctx, report.id, rating, comment, rated_by)

    def _rate(self, ctx: Context, rid: UUID, rating: str, comment: str | None, rated_by: str) -> Receipt:
        def decide(now: datetime) -> Decision:
            report = self.get(rid)
            more: list[Any] = []
            report.rate(rating, comment, rated_by, timestamp=now, meta=ctx.meta())
            if report.whistle_id is not None:
                whistle: Whistle = self.whistles.get(report.whistle_id)
                if whistle.status is WhistleStatus.FED_BACK:
                    whistle.evaluate(rating, comment, timestamp=now, meta={**ctx.meta(), "rated_by": rated_by})
                    more.append(whistle)
            return [report, *more], {"report_id": str(report.id), "status": report.status}

        return self.execute(ctx, decide)


def resident(channel: str, client: str | None = None) -> Actor:
    """The actor for a resident's own channel: the e-station, or an Open311 client by its key's name."""
    return Actor(Role.RESIDENT, None, f"{channel}:{client}" if client else channel)
