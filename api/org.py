"""Organisation routes: the tree, and the admin commands that change it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from api.common import ERRORS, CadreId, IdempotencyKey, actor_dependency, answer, command_context
from api.schemas import Accepted, CadreIn, CategoryIn, DepartmentIn, OrgTree, SecondmentIn, UnitIn
from api.tokens import Tokens
from infra.bootstrap import Baton
from services.access import Actor


def org_router(baton: Baton, tokens: Tokens) -> APIRouter:
    router = APIRouter(prefix="/v1/org", tags=["organisation"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))

    @router.get("", response_model=OrgTree, summary="The organisation: units, departments, categories, cadres")
    def get_org(actor: Actor = actor_dep) -> dict[str, Any]:
        org = baton.org.current()
        return {
            "units": list(org.units.values()),
            "departments": list(org.departments.values()),
            "categories": list(org.categories.values()),
            "cadres": list(org.cadres.values()),
        }

    @router.post("/units", status_code=201, response_model=Accepted, summary="Add a unit (admin)")
    def add_unit(
        body: UnitIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(
            response,
            baton.org.add_unit(
                ctx, unit_id=body.id, kind=body.kind, parent_id=body.parent, name=body.name, residents=body.residents
            ),
        )

    @router.post("/departments", status_code=201, response_model=Accepted, summary="Add a department (admin)")
    def add_department(
        body: DepartmentIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(response, baton.org.add_department(ctx, code=body.code, name=body.name))

    @router.post("/categories", status_code=201, response_model=Accepted, summary="Define a category (admin)")
    def define_category(
        body: CategoryIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        overrides = body.model_dump(
            include={"report_in_minutes", "feedback_hours", "urgent_report_in_minutes", "urgent_feedback_hours"}
        )
        return answer(
            response,
            baton.org.define_category(
                ctx,
                code=body.code,
                name=body.name,
                duty=body.duty,
                departments=body.departments,
                deadline_class=body.deadline_class,
                deadline_overrides=overrides,
            ),
        )

    @router.post("/cadres", status_code=201, response_model=Accepted, summary="Register a cadre (admin)")
    def register_cadre(
        body: CadreIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(
            response,
            baton.org.register_cadre(
                ctx, cadre_id=body.id, name=body.name, department=body.department, unit_id=body.unit, title=body.title
            ),
        )

    @router.post(
        "/cadres/{cadre_id}/secondment",
        status_code=201,
        response_model=Accepted,
        summary="Second a department cadre part-time to a community (admin)",
    )
    def second_cadre(
        cadre_id: CadreId,
        body: SecondmentIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(response, baton.org.second_cadre(ctx, cadre_id=cadre_id, community_id=body.community_id))

    return router
