"""Organisation routes: the tree, and the admin commands that change it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response
from pydantic import TypeAdapter, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from api.common import ERRORS, JSON_VALUE, CadreId, Commands, Router, actor_dependency, path_id
from api.schemas import Accepted, CadreIn, CategoryIn, DepartmentIn, OrgTree, SecondmentIn, UnitIn
from api.tokens import Tokens
from domain.errors import Thing
from domain.organisation import Organisation
from services.access import Actor, Context
from services.base import Receipt
from services.organisation import OrganisationApp

UnitInPath = path_id(Thing.UNIT)
Boundary = Annotated[
    dict[str, Any],
    Body(),
    WithJsonSchema(
        {
            "type": "object",
            "description": "A GeoJSON Polygon or MultiPolygon (or a Feature holding one), WGS-84 "
            "[longitude, latitude], rings closed; at most 20,000 vertices.",
            "required": ["type"],
            "properties": {"type": {"enum": ["Polygon", "MultiPolygon", "Feature"]}},
            "additionalProperties": {"$ref": f"#/components/schemas/{JSON_VALUE}"},
        }
    ),
]


def org_router(org: OrganisationApp, tokens: Tokens) -> APIRouter:
    router = Router(prefix="/v1/org", tags=["organisation"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))
    command = Commands(router, actor_dep)

    tree = TypeAdapter(OrgTree)
    answered: list[tuple[Organisation, bytes]] = []

    @router.get("", response_model=OrgTree, summary="The organisation: units, departments, categories, cadres")
    async def get_org(actor: Actor = actor_dep) -> Response:
        # Checked against OrgTree and encoded as FastAPI would, once per organisation snapshot (shared, never
        # changed): checking the whole county's tree on every request was ~60 % of this route's CPU. On the event
        # loop while the snapshot is fresh: the thread pool's hand-off cost as much as the rest of the request.
        current = org.fresh() or await run_in_threadpool(org.current)
        if not answered or answered[-1][0] is not current:
            encoded = await run_in_threadpool(encode, current)
            answered[:] = [(current, encoded)]
        return Response(answered[-1][1], media_type="application/json")

    def encode(current: Organisation) -> bytes:
        document = {
            "units": list(current.units.values()),
            "departments": list(current.departments.values()),
            "categories": list(current.categories.values()),
            "cadres": list(current.cadres.values()),
        }
        return tree.dump_json(tree.validate_python(document), by_alias=True)

    @command.post("/units", status_code=201, response_model=Accepted, summary="Add a unit (admin)")
    def add_unit(ctx: Context, body: UnitIn) -> Receipt:
        return org.add_unit(
            ctx, unit_id=body.id, kind=body.kind, parent_id=body.parent, name=body.name, residents=body.residents
        )

    @command.post("/departments", status_code=201, response_model=Accepted, summary="Add a department (admin)")
    def add_department(ctx: Context, body: DepartmentIn) -> Receipt:
        return org.add_department(ctx, code=body.code, name=body.name)

    @command.post("/categories", status_code=201, response_model=Accepted, summary="Define a category (admin)")
    def define_category(ctx: Context, body: CategoryIn) -> Receipt:
        overrides = body.model_dump(
            include={"report_in_minutes", "feedback_hours", "urgent_report_in_minutes", "urgent_feedback_hours"}
        )
        return org.define_category(
            ctx,
            code=body.code,
            name=body.name,
            duty=body.duty,
            departments=body.departments,
            deadline_class=body.deadline_class,
            deadline_overrides=overrides,
        )

    @command.post("/cadres", status_code=201, response_model=Accepted, summary="Register a cadre (admin)")
    def register_cadre(ctx: Context, body: CadreIn) -> Receipt:
        return org.register_cadre(
            ctx, cadre_id=body.id, name=body.name, department=body.department, unit_id=body.unit, title=body.title
        )

    @command.post(
        "/cadres/{cadre_id}/secondment",
        status_code=201,
        response_model=Accepted,
        summary="Second a department cadre part-time to a community (admin)",
    )
    def second_cadre(ctx: Context, cadre_id: CadreId, body: SecondmentIn) -> Receipt:
        return org.second_cadre(ctx, cadre_id=cadre_id, community_id=body.community_id)

    @command.put(
        "/units/{unit_id}/boundary", response_model=Accepted, summary="Draw a community's or grid's boundary (admin)"
    )
    def draw_boundary(ctx: Context, unit_id: UnitInPath, body: Boundary) -> Receipt:
        return org.draw_boundary(ctx, unit_id=unit_id, geometry=body)

    @router.get("/boundaries", summary="The boundaries drawn, as a GeoJSON FeatureCollection (unit id, kind, name)")
    def boundaries(actor: Actor = actor_dep) -> dict[str, Any]:
        current = org.current()
        return {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "id": unit_id,
                    "properties": {k: current.units[unit_id][k] for k in ("id", "kind", "name", "parent")},
                    "geometry": geometry,
                }
                for unit_id, geometry in sorted(current.boundaries.items())
            ],
        }

    return router
