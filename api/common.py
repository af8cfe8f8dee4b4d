"""What every HTTP route shares: the error shape, authentication, command context and idempotency."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import structlog
from eventsourcing.persistence import PersistenceError
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, BeforeValidator, WithJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from api.schemas import ErrorBody
from api.tokens import InvalidToken, Tokens
from domain.errors import Conflict, DomainError, InvalidCommand, Missing, NotFound, OutOfScope, Thing
from infra import metrics
from infra.patches import require_version
from infra.sqlite import StoreBusy
from infra.store_faults import RETRY_AFTER, StoreFault
from services.access import Actor, Context
from services.base import Receipt

log = structlog.get_logger("baton.http")

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (OutOfScope, 403),
    (Conflict, 409),
    (InvalidCommand, 422),
]
ERRORS = {
    401: {
        "model": ErrorBody,
        "description": "No token, or a bad one.",
        "headers": {"WWW-Authenticate": {"description": "Always `Bearer`.", "schema": {"type": "string"}}},
    },
    403: {"model": ErrorBody, "description": "Outside the actor's scope."},
    404: {
        "model": ErrorBody,
        "description": "`not_found`: an id in the path names nothing that exists; the message says where to find ids.",
    },
    409: {"model": ErrorBody, "description": "A step out of order, or a concurrent change."},
    413: {"model": ErrorBody, "description": "The request body is over the limit (BATON_HTTP_MAX_BODY)."},
    422: {
        "model": ErrorBody,
        "description": (
            "Invalid input: `invalid_request` (the shape), `invalid_command` and others (a rule), or "
            "`unknown_reference`: the body or a query parameter names something that does not exist."
        ),
    },
    429: {
        "model": ErrorBody,
        "description": "Too many requests for this token (BATON_RATE_LIMIT per second, BATON_RATE_BURST at once).",
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    },
    503: {
        "model": ErrorBody,
        "description": (
            "The store could not serve the request and nothing was recorded; send the same request (same "
            "Idempotency-Key) again after Retry-After: "
            "`store_unavailable` (the store cannot be reached), `store_busy` (SQLite's write lock stayed held), "
            "`store_full` (the store's disk or tablespace is full: the operator frees space) or `store_read_only` "
            "(the store takes no writes: the operator makes it writable again)."
        ),
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    },
}


FIND: dict[Thing, str] = {
    Thing.UNIT: "GET /v1/org lists the units",
    Thing.COMMUNITY: "GET /v1/org lists the units (a community is a unit of kind community)",
    Thing.DEPARTMENT: "GET /v1/org lists the departments",
    Thing.CATEGORY: "GET /v1/org lists the categories",
    Thing.CADRE: "GET /v1/org lists the cadres",
    Thing.WHISTLE: "GET /v1/whistles lists the whistles this token sees",
    Thing.VOLUNTEER: (
        "POST /v1/volunteers answers a volunteer_id; GET /v1/communities/{community_id}/leaderboard lists "
        "a community's volunteers"
    ),
    Thing.ACTIVITY: "GET /v1/activities?community=ID lists a community's activities",
    Thing.REWARD: "GET /v1/rewards?community=ID lists a community's catalogue",
    Thing.BRANCH: "GET /v1/branches lists the branches this token sees",
    Thing.RECTIFICATION: "GET /v1/branches/{branch_id} lists a branch's rectifications",
    Thing.STANDARD_VERSION: "GET /v1/standards lists the published versions",
    Thing.PERSON: (
        "a person id is a whistle's reporter.person_id (GET /v1/whistles/{whistle_id}) or a volunteer_id "
        "(GET /v1/volunteers/{volunteer_id})"
    ),
    Thing.YEAR: "GET /v1/assessments/{year} takes the years from the first recorded event's to the current one",
    Thing.REPORT: "GET /v1/reports lists the reports you may read; a resident follows theirs at /v1/track/{code}",
    Thing.PHOTO: "POST /v1/media answers a photo's sha256; a report's detail lists its photos",
    Thing.MONTH: "a month is YYYY-MM, from the first recorded event's to this one",
    Thing.TREE_SIZE: "GET /v1/audit/checkpoint shows the latest signed tree size",
    Thing.POSITION: "positions run from 1 to the latest signed tree size (GET /v1/audit/checkpoint)",
}
"""Where a person finds valid ids of each thing; every message about an unknown one ends with it."""


def path_id(thing: Thing, kind: type = str, **constraints: Any) -> Any:
    """The type of a path parameter that names a thing: documented with where its ids are listed."""
    described = f"Names a {thing} ({FIND[thing]}); an unknown one is answered 404 not_found."
    return Annotated[kind, Path(description=described, **constraints), thing]


WhistleId = path_id(Thing.WHISTLE)
CommunityId = path_id(Thing.COMMUNITY)
DepartmentCode = path_id(Thing.DEPARTMENT)
CadreId = path_id(Thing.CADRE)
VolunteerId = path_id(Thing.VOLUNTEER)
ActivityId = path_id(Thing.ACTIVITY)
RewardId = path_id(Thing.REWARD)
BranchId = path_id(Thing.BRANCH)
RectificationId = path_id(Thing.RECTIFICATION)
StandardVersionId = path_id(Thing.STANDARD_VERSION)
PersonId = path_id(Thing.PERSON)
UNKNOWN_IN_QUERY = "; an unknown one is answered 422 unknown_reference"
"""Ends the description of a query parameter that names a thing."""


NO_NUL = "^[^\\u0000]*$"
"""Text holds no NUL character: PostgreSQL cannot store one, so the request guard refuses any (422)."""
JSON_VALUE = "JsonValue"
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": "Any JSON value whose text holds no NUL character.",
    "anyOf": [
        {"type": "string"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": f"#/components/schemas/{JSON_VALUE}"}},
        {"type": "object", "additionalProperties": {"$ref": f"#/components/schemas/{JSON_VALUE}"}},
    ],
}


def document(kind: str, required: list[str], description: str) -> Any:
    """The type of a JSON document body of this kind (the domain checks what JSON Schema cannot say)."""
    return Annotated[
        dict[str, Any],
        Body(),
        WithJsonSchema(
            {
                "type": "object",
                "description": description,
                "required": ["kind", *required],
                "properties": {
                    "kind": {"const": kind},
                    "version": {"type": "string", "minLength": 1, "maxLength": 40},
                    "name": {"type": "string"},
                    "timezone": {"type": "string", "description": "An IANA time zone; default Asia/Shanghai."},
                },
                "additionalProperties": {"$ref": f"#/components/schemas/{JSON_VALUE}"},
            }
        ),
    ]


def without_nul(node: Any) -> None:
    """Say in every string schema and every open object's property names that text holds no NUL character."""
    if isinstance(node, list):
        for item in node:
            without_nul(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "string" and not node.keys() & {"pattern", "format", "enum", "const"}:
        node["pattern"] = NO_NUL
    if node.get("type") == "object" and node.get("additionalProperties", True) is not False:
        node.setdefault("propertyNames", {"pattern": NO_NUL})
    for value in node.values():
        without_nul(value)


def install_openapi(app: FastAPI) -> None:
    """The generated document, plus the rules FastAPI cannot derive: no NUL in text, the JSON value type."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("schemas", {})[JSON_VALUE] = JSON_VALUE_SCHEMA
            without_nul(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class ApiError(Exception):
    """An HTTP error with the contract's body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class Correlate:
    """Tag each request's logs and response with X-Correlation-Id (plain ASGI: BaseHTTPMiddleware costs ~1 ms)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-correlation-id"), None)
        correlation_id = given.decode("latin-1") if given else uuid.uuid4().hex
        header = (b"x-correlation-id", correlation_id.encode("latin-1"))

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
            await self.app(scope, receive, tagged)


class Measure:
    """Count every request by route template and status, time it, and count commands by outcome (plain ASGI)."""

    COMMANDS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timer = metrics.Timer()
        answer: dict[str, Any] = {"status": 500, "replayed": False}

        async def observed(message: Any) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["replayed"] = any(k == b"idempotent-replayed" for k, _ in message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            seconds, method, status = timer(), scope["method"], answer["status"]
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_seconds.labels(method, route).observe(seconds)
            if method in self.COMMANDS and route != "unmatched":
                metrics.commands.labels("http", f"{method} {route}", _outcome(status, answer["replayed"])).inc()
                metrics.command_seconds.labels("http").observe(seconds)


def _outcome(status: int, replayed: bool) -> str:
    if status < 300:
        return "replayed" if replayed else "accepted"
    if status in (503, 504):
        return "unavailable"
    return "rejected" if status < 500 else "error"


def install_middleware(app: FastAPI) -> None:
    app.add_middleware(Correlate)
    app.add_middleware(Measure)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        if isinstance(exc, Missing) and exc.thing is not None:
            message = f"{exc.message}; {FIND[exc.thing]}"
            if names_in_path(request, exc):
                return error_response(404, NotFound.code, message)
            return error_response(422, "unknown_reference", message)
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
            if error.get("type") == "json_invalid":
                reason = (error.get("ctx") or {}).get("error", "JSON decode error")
                at = error.get("loc", ("body", "?"))[-1]
                parts.append(f"the body is not valid JSON ({reason} at character {at}); send a JSON object")
                continue
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {error.get('msg')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "the request is not valid")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            return error_response(422, "invalid_request", "the body is not UTF-8; send JSON encoded as UTF-8")
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            return error_response(422, "invalid_request", "the body is nested too deeply; send a flatter JSON object")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = ", ".join(allowed_methods(request))
            headers["Allow"] = allowed
            message = f"{request.method} is not served at {request.url.path}; use {allowed}"
            return error_response(405, "method_not_allowed", message, headers)
        return error_response(exc.status_code, "http_error", str(exc.detail), headers)

    @app.exception_handler(StoreBusy)
    async def store_busy(request: Request, exc: StoreBusy) -> JSONResponse:
        log.warning("store_busy", error=str(exc), database=exc.database, seconds=exc.seconds)
        return error_response(
            503,
            "store_busy",
            f"the store is reachable but stayed busy: {exc}; nothing was recorded, retry",
            {"Retry-After": "1"},
        )

    @app.exception_handler(StoreFault)
    async def store_fault(request: Request, exc: StoreFault) -> JSONResponse:
        log.warning("store_fault", code=exc.code, where=exc.where, error=exc.detail)
        return error_response(503, exc.code, str(exc), {"Retry-After": str(RETRY_AFTER)})

    @app.exception_handler(PersistenceError)
    async def store_down(request: Request, exc: PersistenceError) -> JSONResponse:
        log.warning("store_unavailable", error=str(exc))
        return error_response(
            503,
            "store_unavailable",
            "the event store cannot be reached; nothing was recorded, retry shortly",
            {"Retry-After": "2"},
        )


def allowed_methods(request: Request) -> list[str]:
    """Every method a route serves at the request's path (Starlette's 405 names the first such route's only)."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        route = context.route
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


def names_in_path(request: Request, missing: Missing) -> bool:
    """Whether a path parameter of the request's route, typed with the missing thing, holds its id."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return False
    dependants = [route.dependant]
    while dependants:
        dependant = dependants.pop()
        dependants.extend(dependant.dependencies)
        for field in dependant.path_params:
            if not any(m is missing.thing for m in field.field_info.metadata):
                continue
            value, errors = field.validate(request.path_params.get(field.name), loc=("path", field.name))
            if not errors and str(value) == missing.ref:
                return True
    return False


def off_loop(endpoint: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A sync endpoint as a coroutine that runs it in the thread pool: FastAPI hands a sync endpoint to the pool,
    then hands its answer to the pool again to check it against the response model; this way once."""

    async def run(*args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(endpoint, *args, **kwargs)

    run.__signature__ = inspect.signature(endpoint, eval_str=True)  # type: ignore[attr-defined]
    for name in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(run, name, getattr(endpoint, name))
    return run


FASTAPI_VERSION = "0.163.2"


def install_param_cache() -> None:
    """FastAPI 0.163 works out each parameter's kind (a model? a sequence? its aliases?) from its annotation again
    on every request: with seven query parameters ~40 % of a read's CPU. The answers depend only on the field,
    made once when the route is declared, so each is kept the first time it is asked (once per process)."""
    require_version("fastapi", FASTAPI_VERSION, "api.common.install_param_cache")
    from fastapi.dependencies import utils

    if getattr(utils, "_baton_param_cache", False):
        return
    for name in ("_get_param_model", "_get_param_aliases", "_is_json_field"):
        setattr(utils, name, _kept_by_field(getattr(utils, name)))
    utils.field_annotation_is_sequence = _kept_by_annotation(utils.field_annotation_is_sequence)
    utils._baton_param_cache = True  # type: ignore[attr-defined]


def _kept_by_field(work: Callable[..., Any]) -> Callable[..., Any]:
    kept: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # the field kept too, so that its id is never reused

    def answer(field: Any, **options: Any) -> Any:
        key = (id(field), *options.items())
        found = kept.get(key)
        if found is None:
            found = kept[key] = (field, work(field, **options))
        return found[1]

    return answer


def _kept_by_annotation(work: Callable[[Any], bool]) -> Callable[[Any], bool]:
    kept: dict[Any, bool] = {}

    def answer(annotation: Any) -> bool:
        try:
            return kept[annotation]
        except KeyError:
            found = kept[annotation] = work(annotation)
            return found
        except TypeError:  # an annotation that cannot be a key
            return work(annotation)

    return answer


class RouteIndex:
    """The app's router, walking only the routes that can match a path's first two segments.

    FastAPI's router tries every route in turn (a 404 walks all of them twice, the second time for a trailing-
    slash redirect): ~2 us a route, ~0.4 ms a request here. Routes whose first two segments are literal are kept
    in a router per those segments; the others (a parameter there) are tried in every one, in the app's order.
    Each request then runs FastAPI's own matching over its bucket: same answers, redirects, 405s and 404s."""

    def __init__(self, router: APIRouter) -> None:
        self.router = router
        self.built_for = -1
        self.buckets: dict[tuple[str, ...], APIRouter] = {}
        self.anywhere = router

    @staticmethod
    def key(path: str) -> tuple[str, ...]:
        return tuple(path.rstrip("/").split("/", 3)[1:3])

    def build(self) -> None:
        routes = list(self.router.routes)
        keyed: dict[tuple[str, ...], list[int]] = {}
        anywhere: list[int] = []
        for i, route in enumerate(routes):
            path = getattr(route, "path_format", None)
            key = self.key(path) if isinstance(path, str) and isinstance(route, Route) else None
            if key is None or any("{" in part for part in key):
                anywhere.append(i)
            else:
                keyed.setdefault(key, []).append(i)

        def bucket(indices: list[int]) -> APIRouter:
            router = APIRouter(redirect_slashes=self.router.redirect_slashes, default=self.router.default)
            router.routes = [routes[i] for i in sorted({*indices, *anywhere})]
            return router

        self.buckets = {key: bucket(indices) for key, indices in keyed.items()}
        self.anywhere = bucket([])
        self.built_for = len(routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.router.app(scope, receive, send)
            return
        if len(self.router.routes) != self.built_for:
            self.build()
        scope.setdefault("router", self.router)  # url_for looks up every route, not the bucket's
        await self.buckets.get(self.key(scope["path"]), self.anywhere).app(scope, receive, send)


class Router(APIRouter):
    """An APIRouter whose sync endpoints run in the thread pool once per request (off_loop)."""

    def __init__(self, **router: Any) -> None:
        super().__init__(**router)

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **route: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = off_loop(endpoint)
        super().add_api_route(path, endpoint, **route)


BEARER = HTTPBearer(
    auto_error=False, description="A token from `baton token issue`; a missing, bad or expired one is answered 401."
)


def actor_dependency(tokens: Tokens) -> Callable[..., Awaitable[Actor]]:
    """The bearer token's actor, checked on the event loop (a thread hand-off costs more than the check) unless
    the check must read the credentials log or the keyring, which it then does in the thread pool."""

    async def actor(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> Actor:
        if credentials is None:
            raise ApiError(
                401, "unauthenticated", "send Authorization: Bearer <token>; get one with `baton token issue`"
            )
        try:
            found = tokens.verify_cached(credentials.credentials)
            if found is None:
                found = await run_in_threadpool(tokens.verify, credentials.credentials)
            return found
        except InvalidToken as exc:
            raise ApiError(401, "unauthenticated", str(exc)) from None

    return actor


MAX_POSITION = 2**63 - 1
"""The largest store position or tree size (a signed 64-bit integer in SQLite and PostgreSQL)."""


DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]")


def _written_out(value: Any) -> Any:
    if isinstance(value, datetime) or (isinstance(value, str) and DATE_TIME.match(value)):
        return value
    raise ValueError("give a date and time with its offset, e.g. 2026-03-01T00:00:00+08:00 (not a number)")


When = Annotated[AwareDatetime, BeforeValidator(_written_out)]
"""A date and time in a query: ISO 8601 with its offset; a bare number (which pydantic reads as epoch seconds) is
refused, as the document says."""

MinPosition = Annotated[
    int | None,
    Query(ge=0, le=MAX_POSITION, description="Wait (up to 5 s) until the board has applied this store position."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="Same key and body: applied once, answered again."),
]


def command_context(request: Request, actor: Actor, key: str | None, body: Any = None) -> Context:
    payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
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


def answer(response: Response, receipt: Receipt) -> dict[str, Any]:
    if receipt.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return {**receipt.body, "position": receipt.position}


Decide = Callable[..., Receipt]
"""A command route's own part: given the command's Context and the route's parameters, the service's receipt."""


class Commands:
    """Registers a router's command routes: each names its path, parameters and service call; the rest is shared.

    A command route is a function of (ctx, its path parameters, body): it calls the service and returns the
    receipt. Shared: the actor from the bearer token, the Idempotency-Key header, the Context (its fingerprint
    covers the method, the path and the parameter named body), and the answer: the receipt's body and position,
    with Idempotent-Replayed when the command log answered it. Errors go to the app's handlers.
    """

    def __init__(self, router: APIRouter, actor: Any) -> None:
        self.router = router
        self.actor = actor

    def post(self, path: str, **route: Any) -> Callable[[Decide], Decide]:
        """Register decide as POST path (route: FastAPI's route arguments: status_code, response_model, summary...)."""
        return self.route("POST", path, route)

    def put(self, path: str, **route: Any) -> Callable[[Decide], Decide]:
        """Register decide as PUT path."""
        return self.route("PUT", path, route)

    def route(self, method: str, path: str, route: dict[str, Any]) -> Callable[[Decide], Decide]:
        """Register decide under method and path, its parameters (after ctx) and the shared ones as the endpoint's."""

        def register(decide: Decide) -> Decide:
            own = list(inspect.signature(decide, eval_str=True).parameters.values())[1:]

            async def endpoint(
                request: Request, response: Response, actor: Actor, idempotency_key: str | None, **params: Any
            ) -> dict[str, Any]:
                ctx = command_context(request, actor, idempotency_key, params.get("body"))
                # one hand-off to the thread pool, for the decision and the save; FastAPI would add another for
                # checking the answer against the response model if the endpoint were not a coroutine
                return answer(response, await run_in_threadpool(decide, ctx, **params))

            shared = [
                inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
                inspect.Parameter("response", inspect.Parameter.KEYWORD_ONLY, annotation=Response),
                inspect.Parameter("actor", inspect.Parameter.KEYWORD_ONLY, annotation=Actor, default=self.actor),
                inspect.Parameter(
                    "idempotency_key", inspect.Parameter.KEYWORD_ONLY, annotation=IdempotencyKey, default=None
                ),
            ]
            parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
            endpoint.__signature__ = inspect.Signature(parameters, return_annotation=dict[str, Any])  # type: ignore[attr-defined]
            endpoint.__name__ = endpoint.__qualname__ = decide.__name__
            self.router.api_route(path, methods=[method], **route)(endpoint)
            return decide

        return register
