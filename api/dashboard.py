"""The governance dashboard: server-rendered page shells (Jinja2) whose data the browser reads from the JSON API.

The pages hold no data and need no token: the browser keeps the bearer token the user pasted in sessionStorage and
sends it with every API call (htmx, `api/web/static/dashboard.js`), so what a page shows, and the refusal it shows
instead, is the API's own answer. Tokens never go into URLs, cookies or logs. Assets are vendored
(`api/web/static/README.md`); templates are `api/web/templates`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from api.common import Router
from api.dashboard_labels import LABELS, LANGUAGES, REPORT_STATUSES, WHISTLE_STATUSES
from services.access import ASSESSMENT_READERS, SEE_EVERYTHING, UNIT_ROLES, Role

ASSETS = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "echarts.min.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGES = {
    "/": "overview.html",
    "/signin": "signin.html",
    "/board": "board.html",
    "/whistle": "whistle.html",
    "/rankings": "rankings.html",
    "/scorecards": "scorecards.html",
    "/reports": "reports.html",
    "/audit": "audit.html",
    "/volunteering": "volunteering.html",
    "/branches": "branches.html",
    "/assessment": "assessment.html",
    "/map": "map.html",
}
EVERYONE: frozenset[str] = frozenset()
NAV: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("/", "nav.overview", EVERYONE),
    ("/board", "nav.board", EVERYONE),
    ("/rankings", "nav.rankings", EVERYONE),
    ("/scorecards", "nav.scorecards", EVERYONE),
    ("/reports", "nav.reports", EVERYONE),
    ("/volunteering", "nav.volunteering", frozenset({*SEE_EVERYTHING, *UNIT_ROLES, Role.ORGANISER, Role.VOLUNTEER})),
    ("/branches", "nav.branches", frozenset({*SEE_EVERYTHING, *UNIT_ROLES, Role.SECRETARY, Role.DEPARTMENT})),
    ("/map", "nav.map", frozenset({*SEE_EVERYTHING, *UNIT_ROLES})),
    ("/assessment", "nav.assessment", frozenset(ASSESSMENT_READERS)),
    ("/audit", "nav.audit", EVERYONE),
)
"""The nav: (path, label, the roles it is shown to; empty: every role). Showing a link is a courtesy to the reader,
taken from `services.access`'s role sets; what a page then shows is still the API's answer to its token."""
SECURITY_HEADERS = {
    # Scripts only from this origin (no inline script, no eval: htmx runs with allowEval off); ECharts and htmx set
    # inline styles. Nothing is framed, nothing leaks in a Referer.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
DEMO_ACTORS = "demo-actors.json"
"""Written into the data dir by `baton demo` only: the demo's actors and their tokens, which the sign-in page offers.
An installation that was not filled by the demo has no such file, and GET /demo/actors answers [] there."""
LOCAL = ZoneInfo("Asia/Shanghai")
ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
UNIT_TYPES = ("community", "street", "department")
FILTERS = ("status", "community", "overdue")
"""Page query parameters that preset a page's filters (the page's own API call sends them)."""


def _asset(name: str) -> bytes:
    return resources.files("api").joinpath("web", "static", name).read_bytes()


def dashboard_router(data_dir: Path | None = None) -> APIRouter:
    """The pages at /, /signin, /board, /whistle, /rankings, /scorecards, /reports and their assets at /assets/NAME.

    Left out of the OpenAPI document: they are HTML for people, not the API (which they call).
    """
    router = Router(include_in_schema=False)
    templates = jinja2.Environment(
        loader=jinja2.PackageLoader("api", "web/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    assets = {name: _asset(name) for name in ASSETS}
    versions = {name: hashlib.sha256(body).hexdigest()[:12] for name, body in assets.items()}

    def page(path: str, template: str) -> None:
        def render(request: Request) -> HTMLResponse:
            lang = request.query_params.get("lang", "zh")
            lang = lang if lang in LANGUAGES else "zh"
            now = datetime.now(LOCAL)
            month = request.query_params.get("month", "")
            whistle = request.query_params.get("id", "")
            unit_type = request.query_params.get("unit_type", "community")
            context: dict[str, Any] = {
                "lang": lang,
                "other_lang": "en" if lang == "zh" else "zh",
                "t": LABELS[lang],
                "labels_json": json.dumps(LABELS[lang], ensure_ascii=False).replace("<", "\\u003c"),
                "path": path,
                "nav": [(href, key, " ".join(sorted(roles))) for href, key, roles in NAV],
                "v": versions,
                "month": month if MONTH.match(month) else now.strftime("%Y-%m"),
                "months": _months(now, 12),
                "year": int(y) if (y := request.query_params.get("year", "")).isdigit() and len(y) == 4 else now.year,
                "years": [now.year - i for i in range(5)],
                "unit_type": unit_type if unit_type in UNIT_TYPES else "community",
                "unit_types": UNIT_TYPES,
                "whistle_id": whistle if ID.match(whistle) else "",
                "position": p if (p := request.query_params.get("position", "")).isdigit() and len(p) < 16 else "",
                "whistle_statuses": WHISTLE_STATUSES,
                "report_statuses": REPORT_STATUSES,
                "q": {k: v for k, v in request.query_params.items() if k in FILTERS},
            }
            body = templates.get_template(template).render(context)
            return HTMLResponse(body, headers=SECURITY_HEADERS)

        render.__name__ = f"dashboard_{template.removesuffix('.html')}"
        router.add_api_route(path, render, methods=["GET"], response_class=HTMLResponse)

    for path, template in PAGES.items():
        page(path, template)

    def asset(name: str) -> None:
        body, media_type = assets[name], ASSETS[name]

        def serve() -> Response:
            headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
            return Response(body, media_type=media_type, headers=headers)

        serve.__name__ = "asset_" + re.sub(r"\W", "_", name)
        router.add_api_route(f"/assets/{name}", serve, methods=["GET"])

    for name in ASSETS:
        asset(name)

    @router.get("/demo/actors")
    def demo_actors() -> Response:
        """The demo's actors to sign in as: only in a data dir `baton demo` filled."""
        found = (data_dir / DEMO_ACTORS) if data_dir is not None else None
        if found is None or not found.is_file():  # not a demo: nobody to offer (an empty list, not an error)
            return Response("[]", media_type="application/json", headers=SECURITY_HEADERS)
        return Response(found.read_bytes(), media_type="application/json", headers=SECURITY_HEADERS)

    return router


def _months(now: datetime, n: int) -> list[str]:
    """The last n months, this one first (YYYY-MM)."""
    year, month, out = now.year, now.month, []
    for _ in range(n):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out
