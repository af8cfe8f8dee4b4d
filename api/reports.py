"""Residents' reports: the community's inbox and triage, and the resident's own status page and rating by code."""

from __future__ import annotations

import math
from typing import Annotated, Any

import anyio
import structlog
from fastapi import APIRouter, Depends, Query, Request, Response

from api.common import (
    ERRORS,
    Commands,
    IdempotencyKey,
    MinPosition,
    Router,
    When,
    actor_dependency,
    answer,
    command_context,
    path_id,
)
from api.schemas import (
    PhotoKept,
    ReportCreated,
    ReportDetail,
    ReportPage,
    ReportRates,
    ReportStep,
    ReportTracked,
    SimilarCases,
)
from api.tokens import Tokens
from domain.errors import NotFound, OutOfScope, Thing
from domain.report import OPEN
from infra.privacy import Vault
from projections.reports import ReportProjection, ReportQuery
from projections.whistle_board import BoardQuery, WhistleBoardProjection
from services.access import Actor, Context, Role, check_reads, report_communities, sees_personal_data
from services.base import Receipt
from services.organisation import OrganisationApp
from services.reports import ReportApp, resident
from services.schemas import (
    AcceptReport,
    CloseUnreasonable,
    EscalateReport,
    MergeReport,
    Progress,
    RaiseReport,
    RecordRating,
    ResidentRating,
    ResolveReport,
)

log = structlog.get_logger("baton.http")

ReportId = path_id(Thing.REPORT)
TrackingCode = path_id(Thing.REPORT)
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")
NEARBY_METRES = 500
"""Open cases of the same category within this distance are suggested as the one a new report duplicates."""


def report_router(
    reports: ReportApp,
    projection: ReportProjection,
    board: WhistleBoardProjection,
    org: OrganisationApp,
    vault: Vault,
    tokens: Tokens,
) -> APIRouter:
    router = Router(prefix="/v1/reports", tags=["reports"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))
    command = Commands(router, actor_dep)
    view = projection.view

    def wait(position: int | None) -> None:
        if position:
            try:
                view.wait(projection.name, position, timeout=5.0)
            except TimeoutError:
                log.info("read_model_behind", wanted=position)

    def readable(actor: Actor, row: dict[str, Any]) -> None:
        communities = report_communities(org.current(), actor)
        if communities is not None and row["community_id"] not in communities:
            raise OutOfScope("this report is outside your scope")

    @command.post("", status_code=201, response_model=ReportCreated, summary="居民提 Raise a resident's report")
    def raise_report(ctx: Context, body: RaiseReport) -> Receipt:
        fields = body.model_dump(exclude={"media", "reporter"})
        media = [m.model_dump(exclude_none=True) for m in body.media]
        reporter = body.reporter.model_dump() if body.reporter else None
        return reports.raise_report(ctx, **fields, media=media, reporter=reporter)

    @router.get("", response_model=ReportPage, summary="The community's inbox of reports, newest first")
    def inbox(
        actor: Actor = actor_dep,
        community: str | None = None,
        status: str | None = None,
        channel: str | None = None,
        overdue: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(pattern=r"^\d+$", description="next_cursor of the previous page")] = None,
        min_position: MinPosition = None,
    ) -> dict[str, Any]:
        wait(min_position)
        communities = report_communities(org.current(), actor)
        if community is not None:
            if communities is not None and community not in communities:
                raise OutOfScope(f"community {community} is outside your scope")
            communities = (community,)
        items = view.query(
            ReportQuery(
                communities=communities,
                status=status,
                channel=channel,
                overdue=overdue,
                limit=limit,
                before_position=int(cursor) if cursor else None,
            )
        )
        shown = vault.reveal_in(items, visible=sees_personal_data(actor))
        return {"items": shown, "next_cursor": str(items[-1]["raised_position"]) if len(items) == limit else None}

    @router.get(
        "/rates", response_model=list[ReportRates], summary="Response, resolution and satisfaction per community"
    )
    def rates(
        actor: Actor = actor_dep,
        raised_from: When | None = None,
        raised_until: When | None = None,
    ) -> list[dict[str, Any]]:
        communities = report_communities(org.current(), actor)
        return view.rates(
            communities,
            raised_from.isoformat() if raised_from else None,
            raised_until.isoformat() if raised_until else None,
        )

    @router.get("/{report_id}", response_model=ReportDetail, summary="A report, its timeline and its whistle's")
    def detail(report_id: ReportId, actor: Actor = actor_dep, min_position: MinPosition = None) -> dict[str, Any]:
        wait(min_position)
        row = view.get(report_id)
        if row is None:
            raise NotFound(f"report {report_id} does not exist (or is not in the inbox yet)", Thing.REPORT, report_id)
        readable(actor, row)
        if row["whistle_id"]:
            whistle = board.view.get(row["whistle_id"])
            row["whistle_timeline"] = [
                {"type": t["type"], "occurred_at": t["occurred_at"], "position": t["position"]}
                for t in (whistle or {}).get("timeline", [])
            ]
        return vault.reveal_in(row, visible=sees_personal_data(actor))  # type: ignore[no-any-return]

    @router.get("/{report_id}/similar", response_model=SimilarCases, summary="Open cases it may duplicate, to merge")
    def similar(report_id: ReportId, actor: Actor = actor_dep) -> dict[str, Any]:
        row = view.get(report_id)
        if row is None:
            raise NotFound(f"report {report_id} does not exist", Thing.REPORT, report_id)
        readable(actor, row)
        open_ones = [
            r
            for status in sorted(s.value for s in OPEN)
            for r in view.query(
                ReportQuery(communities=(row["community_id"],), status=status, category=row["category"], limit=200)
            )
            if r["report_id"] != report_id and _near(row, r)
        ]
        open_ones.sort(key=lambda r: -r["raised_position"])
        whistles = [
            {k: w[k] for k in ("whistle_id", "title", "status", "grid_id", "location", "blown_at")}
            for w in board.view.query(BoardQuery(community=row["community_id"], limit=200))
            if w["category"] == row["category"] and w["status"] != "closed" and w["grid_id"] == row["grid_id"]
        ]
        shown = vault.reveal_in(open_ones[:20], visible=sees_personal_data(actor))
        return {"reports": shown, "whistles": whistles[:20]}

    @command.post("/{report_id}/accept", response_model=ReportStep, summary="社区管 Accept: the community handles it")
    def accept(ctx: Context, report_id: ReportId, body: AcceptReport) -> Receipt:
        return reports.accept(ctx, report_id, due_at=body.due_at)

    @command.post("/{report_id}/progress", response_model=ReportStep, summary="Record progress on an accepted report")
    def progress(ctx: Context, report_id: ReportId, body: Progress) -> Receipt:
        return reports.record_progress(ctx, report_id, note=body.note)

    @command.post("/{report_id}/resolve", response_model=ReportStep, summary="Report the community's result")
    def resolve(ctx: Context, report_id: ReportId, body: ResolveReport) -> Receipt:
        return reports.resolve(ctx, report_id, result=body.result)

    @command.post("/{report_id}/merge", response_model=ReportStep, summary="Merge a duplicate into an open case")
    def merge(ctx: Context, report_id: ReportId, body: MergeReport) -> Receipt:
        return reports.merge(ctx, report_id, into_report=body.into_report, into_whistle=body.into_whistle)

    @command.post(
        "/{report_id}/close-unreasonable", response_model=ReportStep, summary="Close as unreasonable (不合理诉求)"
    )
    def close_unreasonable(ctx: Context, report_id: ReportId, body: CloseUnreasonable) -> Receipt:
        return reports.close_unreasonable(ctx, report_id, reason=body.reason)

    @command.post("/{report_id}/escalate", response_model=ReportStep, summary="吹哨 Escalate: blow a whistle for it")
    def escalate(ctx: Context, report_id: ReportId, body: EscalateReport) -> Receipt:
        return reports.escalate(
            ctx, report_id, title=body.title, urgency=body.urgency, summoned_departments=body.summoned_departments
        )

    @command.post("/{report_id}/rating", response_model=ReportStep, summary="回访 Record the callback's rating")
    def rating(ctx: Context, report_id: ReportId, body: RecordRating) -> Receipt:
        return reports.rate_for(ctx, report_id, rating=body.rating, rated_by=body.rated_by, comment=body.comment)

    return router


Sha256 = path_id(Thing.PHOTO, max_length=64)
PHOTO_READERS = {Role.ADMIN, Role.INSPECTOR, Role.AUDITOR, Role.DISTRICT, Role.STREET, Role.COMMUNITY, Role.GRID}
PHOTO_READERS |= {Role.DEPARTMENT}  # the department handling an escalated report sees its photos


def media_router(reports: ReportApp, tokens: Tokens) -> APIRouter:
    """Residents' photos: kept outside the event log by SHA-256, which the report's event names."""
    router = Router(prefix="/v1/media", tags=["reports"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))

    @router.post(
        "",
        status_code=201,
        response_model=PhotoKept,
        summary="Upload a photo (JPEG, PNG, WebP or GIF, up to 5 MB) as the body; a report then names its sha256",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
            }
        },
    )
    async def upload(request: Request, actor: Actor = actor_dep) -> dict[str, Any]:
        data = await request.body()
        ctx = command_context(request, actor, None)
        return await anyio.to_thread.run_sync(reports.upload_photo, ctx, data)

    @router.get(
        "/{sha256}",
        response_class=Response,
        responses={200: {"content": {t: {} for t in IMAGE_TYPES}}},
        summary="A photo's bytes",
    )
    def photo(sha256: Sha256, actor: Actor = actor_dep) -> Response:
        check_reads(actor, PHOTO_READERS, "residents' photos")
        content_type, data = reports.photo(sha256)
        return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=86400"})

    return router


def tracking_router(reports: ReportApp, projection: ReportProjection) -> APIRouter:
    """The resident's own page: no token, the tracking code is the key; no personal data in or out."""
    router = Router(prefix="/v1/track", tags=["reports"], responses=ERRORS)

    @router.get("/{code}", response_model=ReportTracked, summary="Follow your report with its tracking code")
    def track(code: TrackingCode) -> dict[str, Any]:
        rid = str(reports.id_of(code))
        row = projection.view.get(rid)
        if row is None:
            reports.by_code(code)  # NotFound with the resident's wording when the code opens nothing
            raise NotFound("your report is recorded but not shown yet; try again in a moment", Thing.REPORT, rid)
        return public_status(row)

    @router.post("/{code}/rating", response_model=ReportStep, summary="回访 Rate the result of your report")
    def rate(
        code: TrackingCode, body: ResidentRating, request: Request, response: Response, key: IdempotencyKey = None
    ) -> dict[str, Any]:
        ctx = command_context(request, resident("tracking"), key, body)
        return answer(response, reports.rate_by_code(ctx, code, rating=body.rating, comment=body.comment))

    return router


def public_status(row: dict[str, Any]) -> dict[str, Any]:
    """What the resident (and anyone holding the code) sees: no reporter, no staff names."""
    return {
        "report_id": row["report_id"],
        "status": row["status"],
        "category": row["category"],
        "community_id": row["community_id"],
        "raised_at": row["raised_at"],
        "updated_at": row["updated_at"],
        "due_at": row["due_at"],
        "result": row["result"],
        "reason": row["reason"],
        "rating": row["rating"],
        "whistle_id": row["whistle_id"],
        "whistle_status": row["whistle_status"],
        "steps": [{"type": t["type"], "occurred_at": t["occurred_at"]} for t in row["timeline"]],
    }


def _near(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Within NEARBY_METRES when both have coordinates; the same grid (or both none) otherwise."""
    if None not in (a["lat"], a["long"], b["lat"], b["long"]):
        return _metres(a["lat"], a["long"], b["lat"], b["long"]) <= NEARBY_METRES
    return bool(a["grid_id"] == b["grid_id"])


def _metres(lat1: float, long1: float, lat2: float, long2: float) -> float:
    """Great-circle distance (haversine) on a 6,371 km Earth."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(long2 - long1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))
