"""Branch routes: the standard, branches' organisational life and dues, audits, rectifications, the board."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.common import (
    ERRORS,
    BranchId,
    Commands,
    RectificationId,
    Router,
    StandardVersionId,
    actor_dependency,
    document,
)
from api.paging import PAGED, Page, paging
from api.schemas import (
    Accepted,
    AuditIn,
    BranchBoardRow,
    BranchDetail,
    BranchIn,
    BranchOverview,
    DuesIn,
    EvidenceIn,
    MeetingIn,
    MembersIn,
    StandardVersion,
)
from api.tokens import Tokens
from domain.errors import NotFound, Thing
from infra.clock import Clock
from projections.branches import BranchView
from services.access import Actor, Context, branch_scope, check_in_branch_scope, narrowed_branch_scope
from services.base import Receipt
from services.branches import BranchApp
from services.organisation import OrganisationApp

StandardDocument = document(
    "branch_standard",
    ["version", "name", "window", "cadence", "grades", "below_grades", "aspects"],
    "A branch standard, as standards/branch-standard-2026.1.json; aspect weights add up to 100.",
)


def branch_router(app: BranchApp, view: BranchView, org: OrganisationApp, clock: Clock, tokens: Tokens) -> APIRouter:
    router = Router(prefix="/v1", tags=["branches"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))
    command = Commands(router, actor_dep)

    @command.post(
        "/standards",
        status_code=201,
        response_model=Accepted,
        summary="Publish a version of the branch standard (admin); it applies to audits from now on",
    )
    def publish(ctx: Context, document: StandardDocument) -> Receipt:
        return app.publish_standard(ctx, document)

    @router.get("/standards", response_model=list[StandardVersion], summary="Published standard versions")
    def standards(actor: Actor = actor_dep) -> list[dict[str, Any]]:
        return view.standards()

    @router.get("/standards/{version}", summary="A published standard document, as published")
    def standard(version: StandardVersionId, actor: Actor = actor_dep) -> dict[str, Any]:
        document = view.standard_document(version)
        if document is None:
            raise NotFound(f"standard version {version} is not published", Thing.STANDARD_VERSION, version)
        return document

    @command.post("/branches", status_code=201, response_model=Accepted, summary="Register a party branch")
    def register(ctx: Context, body: BranchIn) -> Receipt:
        return app.register_branch(ctx, **{**body.model_dump(), "established_on": body.established_on.isoformat()})

    @command.post("/branches/{branch_id}/members", response_model=Accepted, summary="Update the members count")
    def members(ctx: Context, branch_id: BranchId, body: MembersIn) -> Receipt:
        return app.count_members(ctx, branch_id, members=body.members)

    @command.post(
        "/branches/{branch_id}/meetings",
        status_code=201,
        response_model=Accepted,
        summary="Log a meeting: 三会一课 or a themed party day (the branch's secretary)",
    )
    def meeting(ctx: Context, branch_id: BranchId, body: MeetingIn) -> Receipt:
        held_on = body.held_on.isoformat()
        return app.log_meeting(
            ctx, branch_id, kind=body.kind, held_on=held_on, attendance=body.attendance, topic=body.topic
        )

    @command.post(
        "/branches/{branch_id}/dues",
        status_code=201,
        response_model=Accepted,
        summary="Record a month's dues (党费) (the branch's secretary)",
    )
    def dues(ctx: Context, branch_id: BranchId, body: DuesIn) -> Receipt:
        return app.collect_dues(
            ctx,
            branch_id,
            period=body.period,
            amount_yuan=body.amount_yuan,
            members_paid=body.members_paid,
            collected_on=body.collected_on.isoformat(),
        )

    @command.post(
        "/branches/{branch_id}/audits",
        status_code=201,
        response_model=Accepted,
        summary="Audit a branch against the standard in force (inspectors only)",
    )
    def audit(ctx: Context, branch_id: BranchId, body: AuditIn) -> Receipt:
        findings = [{**f.model_dump(), "due_on": f.due_on.isoformat() if f.due_on else None} for f in body.findings]
        return app.audit(ctx, branch_id, scores=body.scores, findings=findings)

    @command.post(
        "/branches/{branch_id}/rectifications/{rectification_id}/complete",
        response_model=Accepted,
        summary="Report a finding rectified, with evidence (the branch's secretary)",
    )
    def complete(ctx: Context, branch_id: BranchId, rectification_id: RectificationId, body: EvidenceIn) -> Receipt:
        return app.complete_rectification(ctx, branch_id, rectification_id, evidence=body.evidence)

    @router.get(
        "/branches",
        response_model=list[BranchBoardRow],
        summary="The branch status board, by name (paged: a Link header names the next page)",
        responses=PAGED,
    )
    def board(
        actor: Actor = actor_dep,
        community: str | None = None,
        street: str | None = None,
        grade: str | None = None,
        page: Page = paging(1000, 1000, (str, str)),
    ) -> list[dict[str, Any]]:
        filters = narrowed_branch_scope(org.current(), actor, community_id=community, street_id=street, grade=grade)
        rows = view.board_with_cadence(filters, app.today(clock.now()), page.fetch_limit(), page.after)
        return page.cut(rows, ("name", "branch_id"))

    @router.get("/branches/overview", response_model=BranchOverview, summary="Branches by grade")
    def overview(actor: Actor = actor_dep, street: str | None = None) -> dict[str, Any]:
        return view.overview(narrowed_branch_scope(org.current(), actor, street_id=street))

    @router.get(
        "/branches/{branch_id}",
        response_model=BranchDetail,
        summary="A branch: grade, cadence this quarter, audit history, rectifications, recent log",
    )
    def detail(branch_id: BranchId, actor: Actor = actor_dep) -> dict[str, Any]:
        scope = branch_scope(org.current(), actor)
        row = view.detail(branch_id, app.today(clock.now()))
        if row is None:
            missing = f"branch {branch_id} does not exist (or is not in the read model yet)"
            raise NotFound(missing, Thing.BRANCH, branch_id)
        check_in_branch_scope(scope, row)
        return row

    return router
