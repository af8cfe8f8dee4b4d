"""Open311 GeoReport v2 under /open311/v2: civic apps list Baton's categories as services, file residents' reports
as service requests with an API key, and follow them, in JSON or XML (http://wiki.open311.org/GeoReport_v2).

- jurisdiction_id is a district's (县/区) unit id; it may be left out where the organisation has one district.
- A request is placed by its lat/long: the grid (or community) whose drawn boundary holds it takes the report. Baton
  keeps no address registry, so address_string or address_id alone cannot place a request; both are kept with it.
- The answer's token is the resident's tracking code (Baton records only its hash); GET requests show no personal
  data: never the reporter's name, phone or email, never the token. email, device_id and account_id are not kept.
- Errors are Open311's: [{"code", "description"}] or <errors>, 400 for a request to fix, 403 for a missing or bad
  api_key, 404 for what does not exist (an unknown format suffix too).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, MutableMapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.common import IdempotencyKey, Router, command_context
from domain.common import LOCAL_TIMEZONE
from domain.errors import DomainError, NotFound, OutOfScope
from domain.geo import contains
from domain.organisation import Organisation, UnitKind
from domain.report import FINAL, OPEN, TRIAGE_HOURS, check_coordinates, normalise_code
from domain.whistle import Status as WhistleStatus
from projections.reports import ReportQuery, ReportView
from projections.whistle_board import WhistleBoardView
from services.credentials import CredentialsApp
from services.organisation import OrganisationApp
from services.reports import ReportApp, resident

PREFIX = "/open311/v2"
SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
MEDIA_TYPES = {"json": "application/json", "xml": "application/xml"}
MAX_SPAN = timedelta(days=90)
"""The widest start_date..end_date window of GET requests (the spec's), and the default one: the last 90 days."""
MAX_REQUESTS = 1000
"""Requests one GET answers at most, newest first (the spec's default volume)."""
GROUPS = {"community": "社区办理", "department": "部门办理"}
"""A service's group: whose duty the category is (社区管 the community's, 部门办 a department's)."""
OPEN311_STATUS = {**{s.value: "open" for s in OPEN}, **{s.value: "closed" for s in FINAL}}
"""Baton's report statuses as Open311's: received/accepted/escalated/resolved are open; the rest closed."""
WHISTLE_STEPS = {
    WhistleStatus.BLOWN: "the summoned departments are to report in (应哨)",
    WhistleStatus.ANSWERED: "departments reported in; a work order is to go out (派单)",
    WhistleStatus.DISPATCHED: "{lead} has the work order (派单)",
    WhistleStatus.DECLINED: "the department declined it as not its duty; the work order goes out again",
    WhistleStatus.IN_PROGRESS: "{lead} is handling it (办理)",
    WhistleStatus.COMPLETED: "{lead} completed the work; the result is to be reported back (反馈)",
    WhistleStatus.FED_BACK: "{lead} reported the result back (反馈)",
    WhistleStatus.CLOSED: "the whistle is closed (评价)",
    WhistleStatus.REOPENED: "the result was rated dissatisfied; the work order goes out again",
}
SINGULAR = {"endpoints": "endpoint", "formats": "format", "attributes": "attribute", "values": "value"}
"""XML: the element of each item of a list, by the list's element."""
NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot carry (control characters, lone surrogates): shown as U+FFFD."""
REPORTER_MAX = 200
"""Characters of a reporter's name or phone."""
LIST_SERVICES = f"GET {PREFIX}/services.json lists the services"
LIST_REQUESTS = f"GET {PREFIX}/requests.json lists the service requests of the last 90 days"
FIND = {"service": LIST_SERVICES, "request": LIST_REQUESTS, "token": f"POST {PREFIX}/requests.json answers a token"}
"""Where a person finds valid ids of each Open311 resource; a 404 about an unknown one ends with it."""

Format = Annotated[
    str,
    Path(
        description="json or xml; any other suffix is answered 404.",
        json_schema_extra={"enum": ["json", "xml"]},
    ),
]
WHEN: dict[str, Any] = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "maxLength": 0}]}
"""A w3 date-time, or empty (Open311: an empty parameter is one not sent)."""
Jurisdiction = Annotated[
    str | None,
    Query(
        description="A district's unit id (GET /v1/org lists the units); may be left out where there is one district. "
        "An unknown one is answered 404."
    ),
]


class Open311Error(Exception):
    """An Open311 error answer: the HTTP status, and a description that tells a person what to fix."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status, self.description = status, description


# Documented shapes (the JSON; the XML has the same element names) --------------------------------------------


class ErrorItem(BaseModel):
    code: int
    description: str


class Service(BaseModel):
    service_code: str
    service_name: str
    description: str
    metadata: bool
    type: Literal["realtime", "batch", "blackbox"]
    keywords: str
    group: str


class AttributeValue(BaseModel):
    key: str
    name: str


class Attribute(BaseModel):
    variable: bool
    code: str
    datatype: Literal["string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"]
    required: bool
    datatype_description: str | None
    order: int
    description: str
    values: list[AttributeValue]


class ServiceDefinition(BaseModel):
    service_code: str
    attributes: list[Attribute]


class Created(BaseModel):
    service_request_id: str
    token: str
    service_notice: str | None
    account_id: None


class ServiceRequest(BaseModel):
    service_request_id: str
    status: Literal["open", "closed"]
    status_notes: str | None
    service_name: str | None
    service_code: str
    description: str | None
    agency_responsible: str | None
    service_notice: str | None
    requested_datetime: str
    updated_datetime: str
    expected_datetime: str | None
    address: str | None
    address_id: str | None
    zipcode: None
    lat: float | None
    long: float | None
    media_url: str | None


class TokenAnswer(BaseModel):
    service_request_id: str
    token: str


class Endpoint(BaseModel):
    specification: str
    url: str
    changeset: str
    type: Literal["production", "test"]
    formats: list[str]


class Discovery(BaseModel):
    changeset: str
    contact: str
    key_service: str
    endpoints: list[Endpoint]


PUBLISHED = ("open311", "e_station")
"""Channels whose reports GET requests shows: filed by the resident through an app. A report taken down by the
hotline, at a walk-in or on a grid patrol was not filed to be published, and its text may hold personal details."""


def _xml_document(description: str) -> dict[str, Any]:
    return {"application/xml": {"schema": {"type": "string", "description": description}}}


def _answer(status: int, xml: str) -> dict[int | str, dict[str, Any]]:
    """The XML beside a route's JSON answer (its response_model)."""
    return {status: {"content": _xml_document(xml)}}


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": list[ErrorItem], "description": what, "content": _xml_document("<errors><error>...")}
    for status, what in (
        (
            400,
            "A request to fix: the description says what (an unknown service_code, a location outside every drawn "
            "boundary, a span over 90 days...).",
        ),
        (403, "api_key missing, never issued or revoked."),
        (404, "No such service, request, token or jurisdiction; or a format other than json and xml."),
        (413, "The body is over the limit (BATON_HTTP_MAX_BODY)."),
        (429, "Too many requests from one address (BATON_RATE_LIMIT per second)."),
        (503, "The store could not serve the request and nothing was recorded; retry after Retry-After."),
    )
}
FORM_FIELDS: dict[str, dict[str, Any]] = {
    "api_key": {
        "type": "string",
        "minLength": 1,
        "description": "The key issued to your app (baton open311 key issue).",
    },
    "jurisdiction_id": {"type": "string", "description": "A district's unit id; optional with one district."},
    "service_code": {"type": "string", "minLength": 1, "description": LIST_SERVICES + "."},
    "lat": {"type": "number", "minimum": -90, "maximum": 90, "description": "WGS-84 latitude; with long."},
    "long": {"type": "number", "minimum": -180, "maximum": 180, "description": "WGS-84 longitude; with lat."},
    "address_string": {"type": "string", "maxLength": 500, "description": "Where, in words (kept with the report)."},
    "address_id": {"type": "string", "maxLength": 200, "description": "Your address registry's id (kept as given)."},
    "email": {"type": "string", "description": "Accepted and not kept."},
    "device_id": {"type": "string", "description": "Accepted and not kept."},
    "account_id": {"type": "string", "description": "Accepted and not kept."},
    "first_name": {"type": "string", "maxLength": REPORTER_MAX, "description": "Sealed; never shown by GET."},
    "last_name": {"type": "string", "maxLength": REPORTER_MAX, "description": "Sealed; never shown by GET."},
    "phone": {"type": "string", "maxLength": REPORTER_MAX, "description": "Sealed; never shown by GET."},
    "description": {"type": "string", "maxLength": 5000, "description": "What is wrong (default: the service name)."},
    "media_url": {"type": "string", "maxLength": 2000, "description": "An http(s) URL of a photo."},
}
FORM_BODY = {
    "type": "object",
    "required": ["api_key", "service_code"],
    "properties": FORM_FIELDS,
    "description": "lat and long place the request (inside a drawn grid or community boundary); attribute[CODE] "
    "answers a service definition's attribute (today's services define none).",
}


# Rendering -------------------------------------------------------------------------------------------------


def render(fmt: str, root: str, item: str | None, payload: Any, status: int = 200) -> Response:
    """The payload as JSON, or as XML under root (a list's entries as item elements), UTF-8."""
    if fmt == "json":
        return JSONResponse(payload, status_code=status)
    document = ET.Element(root)
    if isinstance(payload, list):
        for entry in payload:
            _xml(document, item or "item", entry)
    else:
        for name, value in payload.items():
            _xml(document, name, value)
    body = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(document, encoding="unicode")
    return Response(body.encode("utf-8"), status_code=status, media_type="application/xml; charset=utf-8")


def _xml(parent: ET.Element, name: str, value: Any) -> None:
    element = ET.SubElement(parent, name)
    if isinstance(value, dict):
        for key, inner in value.items():
            _xml(element, key, inner)
    elif isinstance(value, list):
        for inner in value:
            _xml(element, SINGULAR.get(name, "item"), inner)
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = NOT_XML.sub("\ufffd", str(value))


def error_response(fmt: str, status: int, description: str, headers: dict[str, str] | None = None) -> Response:
    response = render(fmt, "errors", "error", [{"code": status, "description": description}], status)
    response.headers.update(headers or {})
    return response


def format_of(path: str) -> str:
    """The format an answer to this path takes: xml for a .xml suffix, else json."""
    return "xml" if path.endswith(".xml") else "json"


def install_open311_errors(app: FastAPI) -> None:
    """Open311 errors for Open311 paths: raised ones rendered in the asked format, and every other error answer
    there (no such route, method not allowed, body too large, rate limited, store down) turned into Open311's shape."""

    async def open311_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Open311Error)
        return error_response(format_of(request.url.path), exc.status, exc.description)

    app.add_exception_handler(Open311Error, open311_error)
    app.add_middleware(Open311ErrorShape)


class Open311ErrorShape:
    """Under /open311/, an error answered with the contract's {"error": {"code", "message"}} body is re-answered as
    an Open311 error in the path's format, its status kept (422 becomes Open311's 400) and its headers too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def convert(message: MutableMapping[str, Any]) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", ()))
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"application/json"):
                    held = dict(message)
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                await send_converted(held, b"".join(chunks))
                return
            await send(message)

        async def send_converted(start: dict[str, Any], body: bytes) -> None:
            try:
                error = json.loads(body)["error"]
                status, description = int(start["status"]), str(error["message"])
            except (ValueError, KeyError, TypeError):  # already Open311's (a list), or not an error body
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            status = 400 if status == 422 else status
            if status == 404 and error.get("code") == "http_error":  # no route: say which there are
                description = (
                    f"{path} is not an Open311 resource: {PREFIX}/ serves discovery, services, services/{{code}}, "
                    "requests, requests/{id} and tokens/{token}, each ending in .json or .xml"
                )
            kept = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in start.get("headers", ())
                if k.lower() not in (b"content-type", b"content-length")
            }
            response = error_response(format_of(path), status, description, kept)
            await response(scope, receive, send)

        await self.app(scope, receive, convert)


# The gateway -----------------------------------------------------------------------------------------------


def open311_router(
    reports: ReportApp,
    report_view: ReportView,
    whistle_view: WhistleBoardView,
    org: OrganisationApp,
    credentials: CredentialsApp,
) -> APIRouter:
    """The GeoReport v2 routes over the reports service, its read model (and the whistles a report is escalated
    into, for who handles it), the organisation (services, jurisdictions, boundaries) and the Open311 keys."""
    router = Router(prefix=PREFIX, tags=["open311"], responses=ERRORS)

    @router.get(
        "/discovery.{format}",
        response_model=Discovery,
        responses=_answer(200, "<discovery><changeset>...</changeset>...</discovery>"),
        summary="Service discovery: the GeoReport v2 endpoint, its formats and how to get a key",
    )
    def discovery(request: Request, format: Format) -> Response:
        fmt = _format(format)
        changed = org.current().modified_on.isoformat()
        document = {
            "changeset": changed,
            "contact": "The operator of this Baton installation; residents follow their own request with its token "
            "(GET /v1/track/{token}).",
            "key_service": "The operator issues one key per app: `baton open311 key issue --name APP "
            "[--channel open311|e_station]` prints it once.",
            "endpoints": [
                {
                    "specification": SPECIFICATION,
                    "url": str(request.base_url).rstrip("/") + PREFIX,
                    "changeset": changed,
                    "type": "production",
                    "formats": ["application/json", "application/xml"],
                }
            ],
        }
        return render(fmt, "discovery", None, document)

    @router.get(
        "/services.{format}",
        response_model=list[Service],
        responses=_answer(200, "<services><service>...</service></services>"),
        summary="Services: Baton's categories of matters, with who handles each",
    )
    def services(format: Format, jurisdiction_id: Jurisdiction = None) -> Response:
        fmt = _format(format)
        current = org.current()
        _jurisdiction(current, jurisdiction_id)
        return render(fmt, "services", "service", [_service(current, c) for _, c in sorted(current.categories.items())])

    @router.get(
        "/services/{service_code}.{format}",
        response_model=ServiceDefinition,
        responses=_answer(200, "<service_definition>...</service_definition>"),
        summary="A service definition: the attributes a request of this service answers (none today)",
    )
    def service_definition(
        service_code: Annotated[str, Path(description=f"A service_code ({LIST_SERVICES}).")],
        format: Format,
        jurisdiction_id: Jurisdiction = None,
    ) -> Response:
        fmt = _format(format)
        current = org.current()
        _jurisdiction(current, jurisdiction_id)
        if service_code not in current.categories:
            raise Open311Error(404, f"service_code {service_code} is not a service here; {LIST_SERVICES}")
        return render(fmt, "service_definition", None, {"service_code": service_code, "attributes": []})

    @router.post(
        "/requests.{format}",
        status_code=201,
        response_model=list[Created],
        responses=_answer(201, "<service_requests><request>...</request></service_requests>"),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {"schema": FORM_BODY},
                    "multipart/form-data": {"schema": FORM_BODY},
                },
            }
        },
        summary="File a resident's report (居民提) with your app's api_key; the token is the resident's tracking code",
    )
    async def create_request(
        request: Request, format: Format, jurisdiction_id: Jurisdiction = None, idempotency_key: IdempotencyKey = None
    ) -> Response:
        fmt = _format(format)
        form = await _form(request)
        if jurisdiction_id and not form.get("jurisdiction_id"):  # some clients name it in the URL
            form["jurisdiction_id"] = [jurisdiction_id]
        answer, replayed = await run_in_threadpool(create, request, form, idempotency_key)
        response = render(fmt, "service_requests", "request", [answer], 201)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    def create(request: Request, form: dict[str, list[str]], key: str | None) -> tuple[dict[str, Any], bool]:
        fields = {name: values[0] for name, values in form.items() if not name.startswith("attribute[")}
        api_key = fields.get("api_key", "")
        if not api_key:
            raise Open311Error(403, "api_key is missing: send the key the operator issued to your app")
        client = credentials.open311_client(api_key)
        if client is None:
            raise Open311Error(
                403, "api_key is not valid: it was never issued or has been revoked; ask the operator for a new one"
            )
        twice = sorted(n for n in FORM_FIELDS if len(form.get(n, ())) > 1)
        if twice:
            raise Open311Error(400, f"{twice[0]} is sent {len(form[twice[0]])} times; send it once")
        current = org.current()
        jurisdiction = _jurisdiction(current, fields.get("jurisdiction_id"))
        code = fields.get("service_code", "")
        if not code:
            raise Open311Error(400, f"service_code is missing: say which service the request is for; {LIST_SERVICES}")
        category = current.categories.get(code)
        if category is None:
            known = ", ".join(sorted(current.categories)) or "none yet"
            raise Open311Error(400, f"service_code {code} is not a service here (services: {known}); {LIST_SERVICES}")
        attributes = sorted(name for name in form if name.startswith("attribute["))
        if attributes:
            raise Open311Error(
                400,
                f"service {code} defines no attributes (GET {PREFIX}/services/{code}.json), so {attributes[0]} "
                "cannot be answered: leave attribute[...] out",
            )
        located = _locate(current, jurisdiction, fields)
        community = current.units[located]["name"]
        reporter = _reporter(fields)
        address_id = fields.get("address_id") or None
        if address_id is not None and len(address_id) > 200:
            raise Open311Error(400, f"address_id is {len(address_id)} characters long; at most 200")
        payload = {k: v for k, v in form.items() if k in FORM_FIELDS and k != "api_key"}
        ctx = command_context(request, resident(client.channel, client.name), key, payload)
        try:
            receipt = reports.raise_report(
                ctx,
                channel=client.channel,
                category=code,
                description=fields.get("description") or category["name"],
                address=fields.get("address_string") or None,
                lat=float(fields["lat"]),
                long=float(fields["long"]),
                media=[{"url": fields["media_url"]}] if fields.get("media_url") else [],
                attributes={"open311.address_id": address_id} if address_id else {},
                reporter=reporter,
            )
        except DomainError as exc:
            raise _open311(exc) from None
        body = receipt.body
        notice = (
            f"{community} received it and triages it within {TRIAGE_HOURS} hours. The token is the resident's "
            f"tracking code: keep it to follow the request (GET {PREFIX}/tokens/{{token}}.json) and to rate the "
            "result; Baton cannot show it again."
        )
        answer = {
            "service_request_id": body["report_id"],
            "token": body["tracking_code"],
            "service_notice": notice,
            "account_id": None,
        }
        return answer, receipt.replayed

    @router.get(
        "/requests.{format}",
        response_model=list[ServiceRequest],
        responses=_answer(200, "<service_requests><request>...</request></service_requests>"),
        summary="Service requests, newest first (at most 1,000 over at most 90 days); no personal data",
    )
    def list_requests(
        format: Format,
        jurisdiction_id: Jurisdiction = None,
        service_request_id: Annotated[
            str | None, Query(description="Comma-separated ids; overrides every other filter.")
        ] = None,
        service_code: Annotated[str | None, Query(description="Comma-separated service codes.")] = None,
        start_date: Annotated[
            str | None,
            Query(
                description="Requested at or after (w3 date-time, e.g. 2026-03-01T00:00:00Z); default: 90 days "
                "before end_date, or before now.",
                json_schema_extra=WHEN,
            ),
        ] = None,
        end_date: Annotated[
            str | None,
            Query(
                description="Requested at or before; default: 90 days after start_date, or now. At most 90 days "
                "after start_date.",
                json_schema_extra=WHEN,
            ),
        ] = None,
        status: Annotated[
            str | None,
            Query(
                description="open, closed, or both comma-separated.",
                json_schema_extra={"pattern": "^ *((open|closed) *(, *(open|closed) *)*)?$"},
            ),
        ] = None,
    ) -> Response:
        fmt = _format(format)
        current = org.current()
        communities = _communities(current, _jurisdiction(current, jurisdiction_id))
        ids = _listed(service_request_id)
        if ids:
            if len(ids) > MAX_REQUESTS:
                raise Open311Error(400, f"service_request_id lists {len(ids)} ids; ask for at most {MAX_REQUESTS}")
            rows = report_view.query(
                ReportQuery(communities=communities, ids=tuple(ids), channels=PUBLISHED, limit=MAX_REQUESTS)
            )
        else:
            codes = _listed(service_code)
            unknown = [c for c in codes if c not in current.categories]
            if unknown:
                raise Open311Error(400, f"service_code {unknown[0]} is not a service here; {LIST_SERVICES}")
            start, end = _window(start_date, end_date, reports.clock.now())
            statuses = _statuses(status)
            rows = []
            for category in codes or [None]:
                for baton_status in statuses or [None]:
                    rows += report_view.query(
                        ReportQuery(
                            communities=communities,
                            channels=PUBLISHED,
                            status=baton_status,
                            category=category,
                            raised_from=start.astimezone(UTC).isoformat(),
                            raised_until=end.astimezone(UTC).isoformat(),
                            limit=MAX_REQUESTS,
                        )
                    )
        rows = sorted(rows, key=lambda r: -int(r["raised_position"]))[:MAX_REQUESTS]
        shown = _Shown(current, whistle_view)
        return render(fmt, "service_requests", "request", [shown.request(r) for r in rows])

    @router.get(
        "/requests/{service_request_id}.{format}",
        response_model=list[ServiceRequest],
        responses=_answer(200, "<service_requests><request>...</request></service_requests>"),
        summary="One service request (an array of one, as the spec has it); no personal data",
    )
    def one_request(
        service_request_id: Annotated[str, Path(description=f"A service_request_id ({LIST_REQUESTS}).")],
        format: Format,
        jurisdiction_id: Jurisdiction = None,
    ) -> Response:
        fmt = _format(format)
        current = org.current()
        communities = _communities(current, _jurisdiction(current, jurisdiction_id))
        row = report_view.get(service_request_id)
        if row is None:
            try:
                reports.get(service_request_id)
            except NotFound:
                raise Open311Error(
                    404, f"service request {service_request_id} does not exist; {LIST_REQUESTS}"
                ) from None
            raise Open311Error(
                404, f"service request {service_request_id} is recorded but not shown yet; ask again in a moment"
            )
        if row["channel"] not in PUBLISHED:
            raise Open311Error(
                404,
                f"service request {service_request_id} was not filed through Open311 and is not published; "
                + LIST_REQUESTS,
            )
        if communities is not None and row["community_id"] not in communities:
            raise Open311Error(
                404, f"service request {service_request_id} is not in jurisdiction {jurisdiction_id}; {LIST_REQUESTS}"
            )
        return render(fmt, "service_requests", "request", [_Shown(current, whistle_view).request(row)])

    @router.get(
        "/tokens/{token}.{format}",
        response_model=list[TokenAnswer],
        responses=_answer(200, "<service_requests><request>...</request></service_requests>"),
        summary="The service_request_id a token (the resident's tracking code) names",
    )
    def token(
        token: Annotated[str, Path(description="The token POST requests answered (a tracking code).")],
        format: Format,
        jurisdiction_id: Jurisdiction = None,
    ) -> Response:
        fmt = _format(format)
        current = org.current()
        communities = _communities(current, _jurisdiction(current, jurisdiction_id))
        try:
            normalised = normalise_code(token)
        except DomainError as exc:
            raise Open311Error(404, f"no service request has token {token}: {exc.message}; {FIND['token']}") from None
        try:
            report = reports.by_code(normalised)
        except NotFound:
            raise Open311Error(
                404, f"no service request has token {token}; check it against the answer to your POST"
            ) from None
        if communities is not None and report.community_id not in communities:
            raise Open311Error(404, f"no service request of jurisdiction {jurisdiction_id} has token {token}")
        return render(fmt, "service_requests", "request", [{"service_request_id": str(report.id), "token": normalised}])

    return router


# Reading the input -----------------------------------------------------------------------------------------


def _format(value: str) -> str:
    if value not in MEDIA_TYPES:
        raise Open311Error(404, f"format {value!r} is not served: end the path in .json or .xml")
    return value


async def _form(request: Request) -> dict[str, list[str]]:
    """The form's fields (url-encoded or multipart) by name, each with the values sent under it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise Open311Error(
            400,
            f"send the request as a form (application/x-www-form-urlencoded, or multipart/form-data), not "
            f"{content_type or 'a body without a Content-Type'}",
        )
    try:
        form = await request.form()
    except (StarletteHTTPException, ValueError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "detail", exc)
        raise Open311Error(400, f"the form cannot be read ({detail}); send it UTF-8 encoded") from None
    fields: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            raise Open311Error(400, f"{name} is a file: send a photo as media_url (an http(s) URL), not as an upload")
        fields.setdefault(name, []).append(value)
    return fields


def _listed(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _statuses(value: str | None) -> list[str]:
    """Baton's statuses for Open311's open/closed (none: every status)."""
    wanted = set(_listed(value))
    wrong = sorted(wanted - {"open", "closed"})
    if wrong:
        raise Open311Error(400, f"status {wrong[0]!r} is not an Open311 status: use open, closed or open,closed")
    if len(wanted) != 1:
        return []
    (only,) = wanted
    return sorted(baton for baton, open311 in OPEN311_STATUS.items() if open311 == only)


def _when(name: str, value: str) -> datetime:
    """A w3 date-time; one without an offset is local time (Asia/Shanghai), a bare date its midnight."""
    text = re.sub(r" (\d\d:?\d\d)$", r"+\1", value.strip())  # a '+' sent unencoded in the query reads as a space
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        raise Open311Error(
            400, f"{name} {value!r} is not a w3 date-time: send e.g. 2026-03-01T00:00:00Z or 2026-03-01T08:00:00+08:00"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(LOCAL_TIMEZONE))


def _window(start_date: str | None, end_date: str | None, now: datetime) -> tuple[datetime, datetime]:
    start = _when("start_date", start_date) if start_date else None
    end = _when("end_date", end_date) if end_date else None
    if start is None:
        end = end or now
        start = end - MAX_SPAN
    elif end is None:
        end = start + MAX_SPAN
    if end < start:
        raise Open311Error(400, f"end_date {end_date} is before start_date {start_date}: swap them")
    if end - start > MAX_SPAN:
        days = (end - start).total_seconds() / 86400
        raise Open311Error(
            400,
            f"start_date to end_date spans {days:.1f} days; ask for at most 90 days at a time "
            "(several windows for a longer stretch)",
        )
    return start, end


def _reporter(fields: dict[str, str]) -> dict[str, Any] | None:
    """The resident (sealed in the vault, never shown by GET): first and last name, phone; email is not kept."""
    first, last = fields.get("first_name", "").strip(), fields.get("last_name", "").strip()
    phone = fields.get("phone", "").strip()
    for name, value in (("first_name", first), ("last_name", last), ("phone", phone)):
        if len(value) > REPORTER_MAX:
            raise Open311Error(400, f"{name} is {len(value)} characters long; at most {REPORTER_MAX}")
    # 李 + 桂英: a Chinese name is written family name first, without a space
    name = last + first if _cjk(first) and _cjk(last) else " ".join(part for part in (first, last) if part)
    if not name and not phone:
        return None
    return {"name": name or None, "phone": phone or None, "address": None}


def _cjk(text: str) -> bool:
    return bool(text) and all("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in text)


def _locate(org: Organisation, jurisdiction: str | None, fields: dict[str, str]) -> str:
    """The community whose drawn boundary (a grid's, or its own) holds lat/long, in the jurisdiction."""
    lat, long = fields.get("lat") or None, fields.get("long") or None
    if lat is None and long is None:
        where = _place(org, jurisdiction)
        if fields.get("address_string") or fields.get("address_id"):
            raise Open311Error(
                400,
                "Baton places a request by its lat and long (it keeps no address registry), so address_string or "
                f"address_id alone cannot place it: add lat and long (WGS-84 degrees){where}",
            )
        raise Open311Error(400, f"say where: send lat and long (WGS-84 degrees){where}, and address_string if any")
    try:
        coordinates = check_coordinates(*(cast(Any, v) for v in (lat, long)))  # numbers from the form's text
    except DomainError as exc:
        raise Open311Error(400, exc.message) from None
    assert coordinates is not None
    located = org.locate(*coordinates)
    if located is None or (jurisdiction is not None and not org.is_within(located[0], jurisdiction)):
        raise Open311Error(
            400,
            f"lat {coordinates[0]} long {coordinates[1]} is outside every drawn boundary"
            + (f" of {jurisdiction}" if jurisdiction else "")
            + f": no community or grid holds it. Send lat/long inside the jurisdiction{_place(org, jurisdiction)}",
        )
    return located[0]


def _place(org: Organisation, jurisdiction: str | None) -> str:
    """', e.g. lat=.. long=.. (inside NAME)' for a point inside a drawn boundary of the jurisdiction, or ''."""
    for unit_id, geometry in sorted(getattr(org, "boundaries", {}).items()):
        community = unit_id if org.units[unit_id]["kind"] == UnitKind.COMMUNITY else org.units[unit_id]["parent"]
        if jurisdiction is not None and not org.is_within(community, jurisdiction):
            continue
        for lat, long in _inside_candidates(geometry):
            if contains(geometry, lat, long):
                return f", e.g. lat={lat:.6f} long={long:.6f} (inside {org.units[unit_id]['name']})"
    return ""


def _inside_candidates(geometry: dict[str, Any]) -> Iterable[tuple[float, float]]:
    """Points likely inside a polygon: its vertices' mean, then the centroids of a fan of its triangles."""
    for polygon in geometry["coordinates"]:
        ring = polygon[0][:-1]
        yield sum(p[1] for p in ring) / len(ring), sum(p[0] for p in ring) / len(ring)
        for a, b in pairwise(ring[1:]):
            yield (ring[0][1] + a[1] + b[1]) / 3, (ring[0][0] + a[0] + b[0]) / 3


# Jurisdictions ---------------------------------------------------------------------------------------------


def _jurisdiction(org: Organisation, given: str | None) -> str | None:
    """The district asked for (or the only one); 404 for an unknown one, 400 when several exist and none is named."""
    districts = sorted(u for u, unit in org.units.items() if unit["kind"] == UnitKind.DISTRICT)
    named = ", ".join(districts) or "none yet"
    if given:
        if given not in districts:
            raise Open311Error(404, f"jurisdiction_id {given} is not served here; use one of: {named}")
        return given
    if len(districts) > 1:
        raise Open311Error(400, f"this endpoint serves several jurisdictions: send jurisdiction_id, one of: {named}")
    return districts[0] if districts else None


def _communities(org: Organisation, jurisdiction: str | None) -> tuple[str, ...] | None:
    if jurisdiction is None:
        return None
    return tuple(
        sorted(
            u for u, unit in org.units.items() if unit["kind"] == UnitKind.COMMUNITY and org.is_within(u, jurisdiction)
        )
    )


def _open311(exc: DomainError) -> Open311Error:
    """A domain refusal as Open311's answer: 404 for what does not exist, 403 outside scope, 400 for the rest."""
    status = 404 if isinstance(exc, NotFound) else 403 if isinstance(exc, OutOfScope) else 400
    return Open311Error(status, exc.message)


# Showing -----------------------------------------------------------------------------------------------------


def _service(org: Organisation, category: dict[str, Any]) -> dict[str, Any]:
    departments = [org.departments.get(d, {"name": d})["name"] for d in category["departments"]]
    hours = category.get("deadlines", {}).get("normal", {}).get("feedback_hours")
    if category["duty"] == "community":
        handled = "the community handles it itself (社区管)"
    else:
        handled = f"the community passes it to {', '.join(departments)} (部门办)"
    deadline = f"; departments feed back within {hours} hours of the work order" if hours and departments else ""
    return {
        "service_code": category["code"],
        "service_name": category["name"],
        "description": f"{category['name']}: {handled} after triage within {TRIAGE_HOURS} hours{deadline}.",
        "metadata": False,
        "type": "realtime",
        "keywords": ", ".join([category["code"], category["name"], *departments]),
        "group": GROUPS.get(category["duty"], category["duty"]),
    }


class _Shown:
    """Turns read-model rows into Open311 service requests: public facts only, never the reporter or the token."""

    def __init__(self, org: Organisation, whistles: WhistleBoardView) -> None:
        self.org, self.whistles = org, whistles
        self._whistle: dict[str, dict[str, Any] | None] = {}

    def whistle(self, whistle_id: str | None) -> dict[str, Any] | None:
        if whistle_id is None:
            return None
        if whistle_id not in self._whistle:
            self._whistle[whistle_id] = self.whistles.get(whistle_id)
        return self._whistle[whistle_id]

    def department(self, code: str | None) -> str | None:
        if code is None:
            return None
        return str(self.org.departments.get(code, {"name": code})["name"])

    def request(self, row: dict[str, Any]) -> dict[str, Any]:
        community = str(self.org.units.get(row["community_id"], {"name": row["community_id"]})["name"])
        whistle = self.whistle(row["whistle_id"])
        lead = self.department(whistle["lead_department"]) if whistle else None
        category = self.org.categories.get(row["category"])
        expected = row["due_at"] or (whistle.get("feedback_due") if whistle and row["status"] == "escalated" else None)
        media = next((m["url"] for m in row["media"] or [] if isinstance(m, dict) and m.get("url")), None)
        return {
            "service_request_id": row["report_id"],
            "status": OPEN311_STATUS.get(row["status"], "open"),
            "status_notes": _notes(row, community, lead),
            "service_name": category["name"] if category else None,
            "service_code": row["category"],
            "description": row["description"],
            "agency_responsible": lead or community,
            "service_notice": _service(self.org, category)["description"] if category else None,
            "requested_datetime": row["raised_at"],
            "updated_datetime": row["updated_at"],
            "expected_datetime": expected,
            "address": row["address"],
            "address_id": (row["attributes"] or {}).get("open311.address_id"),
            "zipcode": None,
            "lat": row["lat"],
            "long": row["long"],
            "media_url": media,
        }


def _notes(row: dict[str, Any], community: str, lead: str | None) -> str:
    """The request's latest step, for a person: what happened and why, without names of residents or staff."""
    status = row["status"]
    overdue = f" It is overdue since {row['due_at']}." if row.get("overdue") else ""
    notes: dict[str, Callable[[], str]] = {
        "received": lambda: f"Received; {community} triages it by {row['due_at']}.{overdue}",
        "accepted": lambda: f"Accepted: {community} handles it itself, by {row['due_at']}.{overdue}",
        "escalated": lambda: (
            "Escalated (吹哨): the community summoned the departments; "
            + WHISTLE_STEPS.get(row["whistle_status"] or "blown", "the departments handle it").format(
                lead=lead or "the lead department"
            )
            + "."
        ),
        "resolved": lambda: f"Resolved: {row['result']}. The resident rates the result with their token.",
        "closed": lambda: (
            f"Closed: {row['result']}" + (f"; the resident rated it {row['rating']}." if row["rating"] else ".")
            if row["result"]
            else "Closed with the whistle that handled it."
        ),
        "merged": lambda: (
            "Closed as a duplicate: it repeats "
            + _merged_into(row["merged_into"])
            + ", which is open and handles the same matter; follow that one."
        ),
        "unreasonable": lambda: f"Closed as an unreasonable complaint (不合理诉求): {row['reason']}",
    }
    return notes[status]() if status in notes else status


def _merged_into(into: dict[str, Any] | None) -> str:
    if not into:
        return "another case"
    kind = "service request" if into.get("kind") == "report" else "a whistle (吹哨)"
    return f"{kind} {into.get('id')}"
