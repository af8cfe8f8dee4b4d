"""Branch routes: the standard, branches' organisational life and dues, audits, rectifications, the board."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from api.common import (
    ERRORS,
    BranchId,
    IdempotencyKey,
    RectificationId,
    StandardVersionId,
    actor_dependency,
    answer,
    command_context,
    document,
)
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
from domain.errors import NotFound, OutOfScope, Thing
from infra.bootstrap import Baton
from services.access import SEE_EVERYTHING, UNIT_ROLES, Actor, Role, article

StandardDocument = document(
    "branch_standard",
    ["version", "name", "window", "cadence", "grades", "below_grades", "aspects"],
    "A branch standard, as standards/branch-standard-2026.1.json; aspect weights add up to 100.",
)


def branch_router(baton: Baton, tokens: Tokens) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["branches"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))
    app = baton.branches
    view = baton.branch_board.view

    def scope_filters(actor: Actor) -> dict[str, str | None]:
        """The board rows this actor may see."""
        if actor.role in SEE_EVERYTHING:
            return {}
        if actor.role is Role.SECRETARY:
            return {"branch_id": actor.unit}
        if actor.role is Role.DEPARTMENT:
            return {"parent_kind": "department", "parent_id": actor.unit}
        org = baton.org.current()
        if actor.role in UNIT_ROLES and actor.unit in org.units:
            kind = org.units[actor.unit]["kind"]
            if kind == "grid":
                return {"community_id": org.units[actor.unit]["parent"]}
            if kind in ("community", "street", "district"):
                return {f"{kind}_id": actor.unit}
            if kind == "city":
                return {}
        raise OutOfScope(f"{article(actor.role.value)} token cannot read branches")

    @router.post(
        "/standards",
        status_code=201,
        response_model=Accepted,
        summary="Publish a version of the branch standard (admin); it applies to audits from now on",
    )
    def publish(
        request: Request,
        response: Response,
        document: StandardDocument,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key)
        return answer(response, app.publish_standard(ctx, document))

    @router.get("/standards", response_model=list[StandardVersion], summary="Published standard versions")
    def standards(actor: Actor = actor_dep) -> list[dict[str, Any]]:
        return view.standards()

    @router.get("/standards/{version}", summary="A published standard document, as published")
    def standard(version: StandardVersionId, actor: Actor = actor_dep) -> dict[str, Any]:
        document = view.standard_document(version)
        if document is None:
            raise NotFound(f"standard version {version} is not published", Thing.STANDARD_VERSION, version)
        return document

    @router.post("/branches", status_code=201, response_model=Accepted, summary="Register a party branch")
    def register(
        body: BranchIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        fields = body.model_dump()
        fields["established_on"] = body.established_on.isoformat()
        return answer(response, app.register_branch(ctx, **fields))

    @router.post("/branches/{branch_id}/members", response_model=Accepted, summary="Update the members count")
    def members(
        branch_id: BranchId,
        body: MembersIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(response, app.count_members(ctx, branch_id, members=body.members))

    @router.post(
        "/branches/{branch_id}/meetings",
        status_code=201,
        response_model=Accepted,
        summary="Log a meeting: 三会一课 or a themed party day (the branch's secretary)",
    )
    def meeting(
        branch_id: BranchId,
        body: MeetingIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(
            response,
            app.log_meeting(
                ctx,
                branch_id,
                kind=body.kind,
                held_on=body.held_on.isoformat(),
                attendance=body.attendance,
                topic=body.topic,
            ),
        )

    @router.post(
        "/branches/{branch_id}/dues",
        status_code=201,
        response_model=Accepted,
        summary="Record a month's dues (党费) (the branch's secretary)",
    )
    def dues(
        branch_id: BranchId,
        body: DuesIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(
            response,
            app.collect_dues(
                ctx,
                branch_id,
                period=body.period,
                amount_yuan=body.amount_yuan,
                members_paid=body.members_paid,
                collected_on=body.collected_on.isoformat(),
            ),
        )

    @router.post(
        "/branches/{branch_id}/audits",
        status_code=201,
        response_model=Accepted,
        summary="Audit a branch against the standard in force (inspectors only)",
    )
    def audit(
        branch_id: BranchId,
        body: AuditIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        findings = [{**f.model_dump(), "due_on": f.due_on.isoformat() if f.due_on else None} for f in body.findings]
        return answer(response, app.audit(ctx, branch_id, scores=body.scores, findings=findings))

    @router.post(
        "/branches/{branch_id}/rectifications/{rectification_id}/complete",
        response_model=Accepted,
        summary="Report a finding rectified, with evidence (the branch's secretary)",
    )
    def complete(
        branch_id: BranchId,
        rectification_id: RectificationId,
        body: EvidenceIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(response, app.complete_rectification(ctx, branch_id, rectification_id, evidence=body.evidence))

    @router.get("/branches", response_model=list[BranchBoardRow], summary="The branch status board")
    def board(
        actor: Actor = actor_dep, community: str | None = None, street: str | None = None, grade: str | None = None
    ) -> list[dict[str, Any]]:
        filters = narrowed(actor, community_id=community, street_id=street, grade=grade)
        return view.board_with_cadence(filters, app.today(baton.clock.now()))

    @router.get("/branches/overview", response_model=BranchOverview, summary="Branches by grade")
    def overview(actor: Actor = actor_dep, street: str | None = None) -> dict[str, Any]:
        return view.overview(narrowed(actor, street_id=street))

    def narrowed(actor: Actor, **asked: str | None) -> dict[str, str | None]:
        """The actor's scope narrowed by the query; a filter outside the scope is refused, never widened."""
        filters = {**scope_filters(actor)}
        for column, value in asked.items():
            if value is not None:
                if filters.get(column) not in (None, value):
                    raise OutOfScope(f"this token sees {column} {filters[column]} only")
                filters[column] = value
        return filters

    @router.get(
        "/branches/{branch_id}",
        response_model=BranchDetail,
        summary="A branch: grade, cadence this quarter, audit history, rectifications, recent log",
    )
    def detail(branch_id: BranchId, actor: Actor = actor_dep) -> dict[str, Any]:
        filters = scope_filters(actor)
        row = view.detail(branch_id, app.today(baton.clock.now()))
        if row is None:
            missing = f"branch {branch_id} does not exist (or is not in the read model yet)"
            raise NotFound(missing, Thing.BRANCH, branch_id)
        if any(row.get(column) != value for column, value in filters.items()):
            raise OutOfScope("this branch is outside your scope")
        return row

    return router
