"""Whistle routes (the six steps, the board, a whistle's detail) and department scorecards."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any
from uuid import UUID

import structlog
from fastapi import APIRouter, Depends, Query

from api.common import (
    ERRORS,
    Commands,
    DepartmentCode,
    MinPosition,
    Router,
    WhistleId,
    actor_dependency,
)
from api.schemas import Scorecard, StepAccepted, WhistleCreated, WhistleDetail, WhistlePage
from api.tokens import Tokens
from domain.errors import NotFound, OutOfScope, Thing
from infra.privacy import Vault
from projections.scorecard import ScorecardView, empty_scorecard
from projections.whistle_board import BoardQuery, WhistleBoardProjection
from services.access import (
    Actor,
    Context,
    can_read_whistle,
    check_reads_scorecard,
    sees_personal_data,
    whistle_board_scope,
)
from services.base import Receipt
from services.organisation import OrganisationApp
from services.schemas import BlowWhistle, Complete, Decline, Dispatch, Evaluate, Feedback, Progress
from services.whistles import WhistleApp

log = structlog.get_logger("baton.http")


def whistle_router(
    whistles: WhistleApp, projection: WhistleBoardProjection, org: OrganisationApp, vault: Vault, tokens: Tokens
) -> APIRouter:
    router = Router(prefix="/v1/whistles", tags=["whistles"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))
    command = Commands(router, actor_dep)

    @command.post("", status_code=201, response_model=WhistleCreated, summary="吹哨 Blow a whistle")
    def blow(ctx: Context, body: BlowWhistle) -> Receipt:
        return whistles.blow(ctx, **body.model_dump())

    @command.post("/{whistle_id}/report-in", response_model=StepAccepted, summary="应哨 Report in (department)")
    def report_in(ctx: Context, whistle_id: WhistleId) -> Receipt:
        return whistles.report_in(ctx, whistle_id)

    @command.post("/{whistle_id}/dispatch", response_model=StepAccepted, summary="派单 Dispatch a work order")
    def dispatch(ctx: Context, whistle_id: WhistleId, body: Dispatch) -> Receipt:
        return whistles.dispatch(
            ctx,
            whistle_id,
            lead_department=body.lead_department,
            co_departments=body.co_departments,
            due_at=body.due_at,
            funding=body.funding.model_dump() if body.funding else None,
        )

    @command.post("/{whistle_id}/decline", response_model=StepAccepted, summary="Decline the work order (department)")
    def decline(ctx: Context, whistle_id: WhistleId, body: Decline) -> Receipt:
        return whistles.decline(ctx, whistle_id, reason=body.reason)

    @command.post("/{whistle_id}/progress", response_model=StepAccepted, summary="办理 Record progress")
    def progress(ctx: Context, whistle_id: WhistleId, body: Progress) -> Receipt:
        return whistles.record_progress(ctx, whistle_id, note=body.note)

    @command.post("/{whistle_id}/complete", response_model=StepAccepted, summary="办理 Complete the handling")
    def complete(ctx: Context, whistle_id: WhistleId, body: Complete) -> Receipt:
        return whistles.complete(ctx, whistle_id, summary=body.summary)

    @command.post("/{whistle_id}/feedback", response_model=StepAccepted, summary="反馈 Report the result back")
    def feedback(ctx: Context, whistle_id: WhistleId, body: Feedback) -> Receipt:
        return whistles.feed_back(ctx, whistle_id, result=body.result, resolved=body.resolved)

    @command.post("/{whistle_id}/evaluate", response_model=StepAccepted, summary="评价 Evaluate the handling")
    def evaluate(ctx: Context, whistle_id: WhistleId, body: Evaluate) -> Receipt:
        return whistles.evaluate(ctx, whistle_id, rating=body.rating, comment=body.comment)

    @router.get("", response_model=WhistlePage, summary="The whistle board, newest first")
    def board(
        actor: Actor = actor_dep,
        community: str | None = None,
        department: str | None = None,
        status: str | None = None,
        overdue: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(pattern=r"^\d+$", description="next_cursor of the previous page")] = None,
        min_position: MinPosition = None,
    ) -> dict[str, Any]:
        _wait_for(projection, min_position)
        query = BoardQuery(
            community=community,
            department=department,
            status=status,
            overdue=overdue,
            limit=limit,
            before_position=int(cursor) if cursor else None,
        )
        query = replace(query, **whistle_board_scope(org.current(), actor, community, department))
        items = projection.view.query(query)
        next_cursor = str(items[-1]["blown_position"]) if len(items) == limit else None
        return {"items": items, "next_cursor": next_cursor}

    @router.get("/{whistle_id}", response_model=WhistleDetail, summary="A whistle, with its timeline oldest first")
    def detail(
        whistle_id: WhistleId,
        actor: Actor = actor_dep,
        min_position: MinPosition = None,
    ) -> dict[str, Any]:
        _wait_for(projection, min_position)
        row = projection.view.get(whistle_id)
        if row is None:
            missing = f"whistle {whistle_id} does not exist (or is not on the board yet)"
            raise NotFound(missing, Thing.WHISTLE, whistle_id)
        departments = projection.view.departments_of(whistle_id)
        if not can_read_whistle(org.current(), actor, row["community_id"], departments):
            raise OutOfScope("this whistle is outside your scope")
        row = vault.reveal_in(row, visible=sees_personal_data(actor))
        if row["reporter"] is not None:
            person = vault.person(UUID(row["reporter"]["person_id"]))
            row["reporter"]["erased"] = person is None or person.erased
        return row

    return router


def _wait_for(board: WhistleBoardProjection, position: int | None) -> None:
    if position:
        try:
            board.view.wait(board.name, position, timeout=5.0)
        except TimeoutError:
            log.info("read_model_behind", wanted=position)


def scorecard_router(scorecards: ScorecardView, org: OrganisationApp, tokens: Tokens) -> APIRouter:
    router = Router(prefix="/v1/scorecards", tags=["scorecards"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))

    def cards(actor: Actor, department: str | None) -> list[dict[str, Any]]:
        check_reads_scorecard(actor, department)
        known = org.current().departments
        return [c for c in scorecards.scorecards(department) if c["department"] in known]

    @router.get("", response_model=list[Scorecard], summary="Every department's scorecard")
    def all_scorecards(actor: Actor = actor_dep) -> list[dict[str, Any]]:
        return cards(actor, None)

    @router.get("/{code}", response_model=Scorecard, summary="One department's scorecard")
    def one_scorecard(code: DepartmentCode, actor: Actor = actor_dep) -> dict[str, Any]:
        found = cards(actor, code)
        if not found:
            if code not in org.current().departments:
                raise NotFound(f"department {code} does not exist", Thing.DEPARTMENT, code)
            return empty_scorecard(code)
        return found[0]

    return router
