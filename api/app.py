"""The HTTP API under /v1: commands go to the applications, reads come from the projections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Response

from api.assessment import assessment_router
from api.branches import branch_router
from api.changes import changes_router
from api.common import (
    RouteIndex,
    Router,
    install_error_handlers,
    install_middleware,
    install_openapi,
    install_param_cache,
)
from api.credentials import credentials_router
from api.dashboard import dashboard_router
from api.limits import RateLimit, RequestGuard
from api.open311 import install_open311_errors, open311_router
from api.org import org_router
from api.privacy import privacy_router
from api.reports import media_router, report_router, tracking_router
from api.schemas import Health
from api.tokens import Tokens
from api.volunteering import volunteering_router
from api.whistles import scorecard_router, whistle_router
from infra import metrics
from infra.bootstrap import Container, Runtime


def create_app(
    baton: Container,
    tokens: Tokens,
    runtime: Runtime | None = None,
    *,
    max_body: int | None = None,
    rate_limit: float | None = None,
    rate_burst: int | None = None,
) -> FastAPI:
    """The ASGI app (starting it starts a given runtime too); body and rate limits default to the settings."""
    install_param_cache()

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
        # Baton's metrics are Prometheus'; with OpenTelemetry on (no provider set), FastAPI asks every request
        # whether a provider has appeared since.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.assessment = baton.assessment  # the years the history reaches, for paths with a year
    app.state.runtime = runtime
    settings = baton.settings
    app.add_middleware(RequestGuard, max_bytes=settings.http_max_body if max_body is None else max_body)
    app.add_middleware(
        RateLimit,
        tokens=tokens,
        rate=settings.rate_limit if rate_limit is None else rate_limit,
        burst=settings.rate_burst if rate_burst is None else rate_burst,
    )
    install_middleware(app)
    install_error_handlers(app)
    install_openapi(app)
    include(app, _health_router(runtime))
    vault = baton.store.vault
    include(app, org_router(baton.org, tokens))
    include(app, whistle_router(baton.whistles, baton.board, baton.org, vault, tokens))
    include(app, scorecard_router(baton.scorecard.view, baton.org, tokens))
    include(app, volunteering_router(baton.volunteering, baton.volunteers.view, baton.org, vault, baton.clock, tokens))
    include(app, branch_router(baton.branches, baton.branch_board.view, baton.org, baton.clock, tokens))
    include(app, assessment_router(baton.assessment, baton.notary, tokens))
    include(app, report_router(baton.reports, baton.report_board, baton.board, baton.org, vault, tokens))
    include(app, tracking_router(baton.reports, baton.report_board))
    include(app, media_router(baton.reports, tokens))
    views = list(baton.projections.values())
    include(app, changes_router(lambda: min(p.position() for p in views), tokens))
    include(app, privacy_router(baton.privacy, tokens))
    include(app, credentials_router(baton.credentials, tokens))
    include(app, open311_router(baton.reports, baton.report_board.view, baton.board.view, baton.org, baton.credentials))
    install_open311_errors(app)
    # HTML shells at / (outside /v1 and the OpenAPI); data from the API
    include(app, dashboard_router(baton.settings.data_dir))
    tokens.attach(baton.credentials.current)
    app.router.middleware_stack = RouteIndex(app.router)
    return app


def include(app: FastAPI, router: APIRouter) -> None:
    """Put the router's routes on the app itself: FastAPI's include_router keeps each router as a branch that every
    request walks route by route, twice (matching, then handling); flat, a 404 cost ~5x bare Starlette's CPU."""
    app.router.routes.extend(router.routes)


def _health_router(runtime: Runtime | None) -> APIRouter:
    router = Router(tags=["operations"])

    @router.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        """Prometheus text format: commands, latency, group commit, lags, leases, NATS reconnects."""
        if runtime is not None:
            await runtime.observe()
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

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
