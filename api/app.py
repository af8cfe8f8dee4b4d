"""The HTTP API under /v1: commands go to the applications, reads come from the projections."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import structlog
from eventsourcing.persistence import PersistenceError
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import (
    Accepted,
    CadreIn,
    CategoryIn,
    DepartmentIn,
    ErrorBody,
    Health,
    OrgTree,
    Scorecard,
    SecondmentIn,
    StepAccepted,
    UnitIn,
    WhistleCreated,
    WhistleDetail,
    WhistlePage,
)
from api.tokens import InvalidToken, Tokens
from domain.errors import Conflict, DomainError, InvalidCommand, NotFound, OutOfScope
from infra.bootstrap import Baton, Runtime
from projections.scorecard import empty_scorecard
from projections.whistle_board import BoardQuery
from services.access import SEE_EVERYTHING, Actor, Context, Role, can_read_whistle
from services.base import Receipt
from services.schemas import (
    BlowWhistle,
    Complete,
    Decline,
    Dispatch,
    Evaluate,
    Feedback,
    Progress,
)

log = structlog.get_logger("baton.http")

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (OutOfScope, 403),
    (Conflict, 409),
    (InvalidCommand, 422),
]
ERRORS = {
    401: {"model": ErrorBody, "description": "No token, or a bad one."},
    403: {"model": ErrorBody, "description": "Outside the actor's scope."},
    404: {"model": ErrorBody, "description": "Unknown id."},
    409: {"model": ErrorBody, "description": "A step out of order, or a concurrent change."},
    422: {"model": ErrorBody, "description": "Invalid input."},
}


class ApiError(Exception):
    """An HTTP error with the contract's body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_app(baton: Baton, tokens: Tokens, runtime: Runtime | None = None) -> FastAPI:
    """The ASGI app; with a runtime, starting the app starts NATS, relay and consumers too."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            await runtime.start()
        try:
            yield
        finally:
            if runtime is not None:
                await runtime.stop()

    app = FastAPI(
        title="Baton",
        version="1.0.0",
        description=(
            "Event-sourced backbone of community governance: the six-step whistle "
            "(吹哨、应哨、派单、办理、反馈、评价), departments reporting in, and the read models built from them. "
            "Every command needs `Authorization: Bearer <token>` (`baton token issue`) and accepts an "
            "`Idempotency-Key` header: the same key and body never apply twice."
        ),
        lifespan=lifespan,
    )
    app.state.baton = baton
    app.state.runtime = runtime
    _install_middleware(app)
    _install_error_handlers(app)
    app.include_router(_health_router(runtime))
    app.include_router(_org_router(baton, tokens))
    app.include_router(_whistle_router(baton, tokens))
    app.include_router(_scorecard_router(baton, tokens))
    return app


def _install_middleware(app: FastAPI) -> None:
    @app.middleware("http")
    async def correlate(request: Request, call_next: Callable[[Request], Any]) -> Response:
        correlation_id = request.headers.get("X-Correlation-Id") or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        try:
            response: Response = await call_next(request)
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id")
        response.headers["X-Correlation-Id"] = correlation_id
        return response


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        status = next((s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls)), 422)
        return error_response(status, exc.code, exc.message)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {error.get('msg')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "the request is not valid")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(PersistenceError)
    async def store_down(request: Request, exc: PersistenceError) -> JSONResponse:
        log.warning("store_unavailable", error=str(exc))
        return error_response(
            503,
            "store_unavailable",
            "the event store cannot be reached; nothing was recorded, retry shortly",
            {"Retry-After": "2"},
        )


# Authentication and command context ---------------------------------------------------------


def _actor_dependency(tokens: Tokens) -> Callable[..., Actor]:
    def actor(authorization: Annotated[str | None, Header()] = None) -> Actor:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(
                401, "unauthenticated", "send Authorization: Bearer <token>; get one with `baton token issue`"
            )
        try:
            return tokens.verify(authorization.split(" ", 1)[1].strip())
        except InvalidToken as exc:
            raise ApiError(401, "unauthenticated", str(exc)) from None

    return actor


MinPosition = Annotated[
    int | None, Query(ge=0, description="Wait (up to 5 s) until the board has applied this store position.")
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="Same key and body: applied once, answered again."),
]


def _context(request: Request, actor: Actor, key: str | None, body: Any = None) -> Context:
    payload = body.model_dump(mode="json") if body is not None else None
    fingerprint = hashlib.sha256(
        json.dumps([request.method, request.url.path, payload], sort_keys=True).encode()
    ).hexdigest()
    correlation_id = structlog.contextvars.get_contextvars().get("correlation_id") or uuid.uuid4().hex
    return Context(
        actor=actor,
        correlation_id=correlation_id,
        idempotency_key=f"http:{actor.role.value}:{actor.unit}:{actor.id}:{key}" if key else None,
        fingerprint=fingerprint,
    )


def _answer(response: Response, receipt: Receipt) -> dict[str, Any]:
    if receipt.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return {**receipt.body, "position": receipt.position}


# Routes --------------------------------------------------------------------------------------


def _health_router(runtime: Runtime | None) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", response_model=Health, summary="Store, NATS, relay lag and projection lags")
    async def health() -> dict[str, Any]:
        if runtime is None:
            return {
                "status": "degraded",
                "store": {},
                "nats": {"url": None, "connected": False},
                "relay": {"lag": None},
                "projections": {},
            }
        return await runtime.health()

    return router


def _org_router(baton: Baton, tokens: Tokens) -> APIRouter:
    router = APIRouter(prefix="/v1/org", tags=["organisation"], responses=ERRORS)
    actor_dep = Depends(_actor_dependency(tokens))

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
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(
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
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, baton.org.add_department(ctx, code=body.code, name=body.name))

    @router.post("/categories", status_code=201, response_model=Accepted, summary="Define a category (admin)")
    def define_category(
        body: CategoryIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        overrides = body.model_dump(
            include={"report_in_minutes", "feedback_hours", "urgent_report_in_minutes", "urgent_feedback_hours"}
        )
        return _answer(
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
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(
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
        cadre_id: str,
        body: SecondmentIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, baton.org.second_cadre(ctx, cadre_id=cadre_id, community_id=body.community_id))

    return router


def _whistle_router(baton: Baton, tokens: Tokens) -> APIRouter:
    router = APIRouter(prefix="/v1/whistles", tags=["whistles"], responses=ERRORS)
    actor_dep = Depends(_actor_dependency(tokens))
    whistles = baton.whistles

    @router.post("", status_code=201, response_model=WhistleCreated, summary="吹哨 Blow a whistle")
    def blow(
        body: BlowWhistle,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, whistles.blow(ctx, **body.model_dump()))

    @router.post("/{whistle_id}/report-in", response_model=StepAccepted, summary="应哨 Report in (department)")
    def report_in(
        whistle_id: str,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        return _answer(response, whistles.report_in(_context(request, actor, idempotency_key), whistle_id))

    @router.post("/{whistle_id}/dispatch", response_model=StepAccepted, summary="派单 Dispatch a work order")
    def dispatch(
        whistle_id: str,
        body: Dispatch,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        funding = body.funding.model_dump() if body.funding else None
        return _answer(
            response,
            whistles.dispatch(
                ctx,
                whistle_id,
                lead_department=body.lead_department,
                co_departments=body.co_departments,
                due_at=body.due_at,
                funding=funding,
            ),
        )

    @router.post("/{whistle_id}/decline", response_model=StepAccepted, summary="Decline the work order (department)")
    def decline(
        whistle_id: str,
        body: Decline,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, whistles.decline(ctx, whistle_id, reason=body.reason))

    @router.post("/{whistle_id}/progress", response_model=StepAccepted, summary="办理 Record progress")
    def progress(
        whistle_id: str,
        body: Progress,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, whistles.record_progress(ctx, whistle_id, note=body.note))

    @router.post("/{whistle_id}/complete", response_model=StepAccepted, summary="办理 Complete the handling")
    def complete(
        whistle_id: str,
        body: Complete,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, whistles.complete(ctx, whistle_id, summary=body.summary))

    @router.post("/{whistle_id}/feedback", response_model=StepAccepted, summary="反馈 Report the result back")
    def feedback(
        whistle_id: str,
        body: Feedback,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, whistles.feed_back(ctx, whistle_id, result=body.result, resolved=body.resolved))

    @router.post("/{whistle_id}/evaluate", response_model=StepAccepted, summary="评价 Evaluate the handling")
    def evaluate(
        whistle_id: str,
        body: Evaluate,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = _context(request, actor, idempotency_key, body)
        return _answer(response, whistles.evaluate(ctx, whistle_id, rating=body.rating, comment=body.comment))

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
        _wait_for(baton, min_position)
        query = _scoped_query(
            baton,
            actor,
            BoardQuery(
                community=community,
                department=department,
                status=status,
                overdue=overdue,
                limit=limit,
                before_position=int(cursor) if cursor else None,
            ),
        )
        items = baton.board.view.query(query)
        next_cursor = str(items[-1]["blown_position"]) if len(items) == limit else None
        return {"items": items, "next_cursor": next_cursor}

    @router.get("/{whistle_id}", response_model=WhistleDetail, summary="A whistle, with its timeline oldest first")
    def detail(
        whistle_id: str,
        actor: Actor = actor_dep,
        min_position: MinPosition = None,
    ) -> dict[str, Any]:
        _wait_for(baton, min_position)
        row = baton.board.view.get(whistle_id)
        if row is None:
            raise NotFound(f"whistle {whistle_id} does not exist (or is not on the board yet)")
        departments = baton.board.view.departments_of(whistle_id)
        if not can_read_whistle(baton.org.current(), actor, row["community_id"], departments):
            raise OutOfScope("this whistle is outside your scope")
        return row

    return router


def _wait_for(baton: Baton, position: int | None) -> None:
    if position:
        try:
            baton.board.view.wait(baton.board.name, position, timeout=5.0)
        except TimeoutError:
            log.info("read_model_behind", wanted=position)


def _scoped_query(baton: Baton, actor: Actor, query: BoardQuery) -> BoardQuery:
    """Narrow a board query to what the actor may see; refuse filters outside it."""
    if actor.role in SEE_EVERYTHING:
        return query
    org = baton.org.current()
    fields: dict[str, Any] = {**query.__dict__}
    if actor.role is Role.DEPARTMENT:
        if query.department not in (None, actor.unit):
            raise OutOfScope(f"a department sees its own whistles only; use department={actor.unit}")
        fields["department"] = actor.unit
    elif actor.role in (Role.COMMUNITY, Role.GRID) and actor.unit in org.units:
        community = actor.unit if actor.role is Role.COMMUNITY else org.units[actor.unit]["parent"]
        if query.community not in (None, community):
            raise OutOfScope(f"this token sees community {community} only")
        fields["community"] = community
    elif actor.role in (Role.STREET, Role.DISTRICT) and actor.unit in org.units:
        kind = org.units[actor.unit]["kind"]
        if kind not in ("street", "district", "city"):
            raise OutOfScope(f"unit {actor.unit} is a {kind}; a {actor.role.value} token needs a street or district")
        fields["scope_column"], fields["scope_value"] = f"{kind}_id", actor.unit
    else:
        raise OutOfScope(f"a {actor.role.value} token cannot read whistles")
    return BoardQuery(**fields)


def _scorecard_router(baton: Baton, tokens: Tokens) -> APIRouter:
    router = APIRouter(prefix="/v1/scorecards", tags=["scorecards"], responses=ERRORS)
    actor_dep = Depends(_actor_dependency(tokens))
    readers = {Role.ADMIN, Role.DISTRICT, Role.STREET, Role.COMMUNITY, Role.INSPECTOR, Role.AUDITOR, Role.DEPARTMENT}

    def cards(actor: Actor, department: str | None) -> list[dict[str, Any]]:
        if actor.role not in readers:
            raise OutOfScope(f"a {actor.role.value} token cannot read department scorecards")
        if actor.role is Role.DEPARTMENT and department != actor.unit:
            raise OutOfScope(f"a department reads its own scorecard only: /v1/scorecards/{actor.unit}")
        known = baton.org.current().departments
        return [c for c in baton.scorecard.view.scorecards(department) if c["department"] in known]

    @router.get("", response_model=list[Scorecard], summary="Every department's scorecard")
    def all_scorecards(actor: Actor = actor_dep) -> list[dict[str, Any]]:
        return cards(actor, None)

    @router.get("/{code}", response_model=Scorecard, summary="One department's scorecard")
    def one_scorecard(code: str, actor: Actor = actor_dep) -> dict[str, Any]:
        found = cards(actor, code)
        if not found:
            if code not in baton.org.current().departments:
                raise NotFound(f"department {code} does not exist")
            return empty_scorecard(code)
        return found[0]

    return router


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, generated from an app on a throwaway store."""
    import tempfile
    from pathlib import Path

    from infra.bootstrap import bootstrap
    from infra.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        baton = bootstrap(Settings(data_dir=Path(tmp), store="sqlite"))
        try:
            return create_app(baton, Tokens(b"documentation-only")).openapi()
        finally:
            baton.close()
