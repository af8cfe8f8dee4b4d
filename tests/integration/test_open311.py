"""Open311 GeoReport v2 over a real port: the PyPI `georeport` client, unchanged, reads services, service definitions
and requests in JSON and XML; a civic app files a resident's report with its api_key and follows it while the
community and a department handle it; hostile input gets Open311 errors; no personal data in any answer. Both stores.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import schemathesis
import uvicorn
import xmltodict
from fastapi import FastAPI
from georeport import GeoReport
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.transport import Response
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from typer.testing import CliRunner

from api.app import create_app, openapi_document
from api.tokens import Tokens
from infra.bootstrap import Container, Runtime, bootstrap
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.nats_server import free_port
from infra.settings import Settings
from services.access import Actor, Context, Role
from tests.conftest import START, Auth, seed_county

V2 = "/open311/v2"
ADMIN_CTX = Context(actor=Actor(Role.ADMIN, None, "root"), correlation_id="open311-test")
COMMUNITY = ("community", "tishu", "wang")
GRID = {
    "type": "Polygon",
    "coordinates": [[[118.48, 31.54], [118.50, 31.54], [118.50, 31.56], [118.48, 31.56], [118.48, 31.54]]],
}
INSIDE = {"lat": "31.5501", "long": "118.4902"}
PERSON = {"first_name": "桂英", "last_name": "李", "phone": "13905551234", "email": "li.guiying@example.org"}
PERSONAL = ("李桂英", "桂英", "13905551234", "li.guiying@example.org")


@pytest.fixture
def served(baton: Container, tokens: Tokens) -> Iterator[str]:
    """The app on the test Container, served by uvicorn on a free port in a thread (no rate limit)."""
    app = create_app(baton, tokens, rate_limit=0)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="open311-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(15)


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        yield client


async def county_with_a_grid(client: httpx.AsyncClient, auth: Auth) -> None:
    await seed_county(client, auth)
    r = await client.put("/v1/org/units/tishu-g1/boundary", json=GRID, headers=auth("admin"))
    assert r.status_code == 200, r.text


def issue_key(baton: Container, name: str = "civic-app", channel: str = "open311") -> str:
    return baton.credentials.issue_open311_key(ADMIN_CTX, name, channel)[1]


async def file(client: httpx.AsyncClient, key: str, fmt: str = "json", **fields: str) -> httpx.Response:
    body = {"api_key": key, "service_code": "drainage", "description": "雨水井堵塞, water over the pavement"}
    return await client.post(f"{V2}/requests.{fmt}", data={**body, **INSIDE, **fields})


def one(doc: Any) -> dict[str, Any]:
    """xmltodict's single child (a dict), or a list's only element."""
    if isinstance(doc, list):
        assert len(doc) == 1, doc
        return dict(doc[0])
    return dict(doc)


def open311_error(r: httpx.Response, fmt: str) -> dict[str, Any]:
    """The one error of an Open311 error answer, checked to be in the asked format and shape."""
    if fmt == "xml":
        assert r.headers["content-type"] == "application/xml; charset=utf-8", r.headers
        assert r.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'), r.text
        root = ET.fromstring(r.content)
        assert root.tag == "errors" and [e.tag for e in root] == ["error"], r.text
        (error,) = root
        assert [c.tag for c in error] == ["code", "description"], r.text
        found = {"code": int(error.findtext("code", "")), "description": error.findtext("description")}
    else:
        assert r.headers["content-type"] == "application/json", r.headers
        (found,) = r.json()
        assert set(found) == {"code", "description"}, r.text
    assert found["code"] == r.status_code and found["description"], r.text
    return found


# A real client, unchanged ------------------------------------------------------------------------------------


async def test_georeport_reads_services_definitions_and_requests_in_json_and_xml(
    served: str, http: httpx.AsyncClient, auth: Auth, baton: Container, runtime: Runtime, settings: Settings
) -> None:
    await county_with_a_grid(http, auth)
    # The key comes from the CLI, a second Container on the same store: what another instance would see.
    env = {"BATON_DATA_DIR": str(settings.data_dir), "BATON_STORE": settings.store}
    issued = await asyncio.to_thread(
        CliRunner().invoke, cli, ["open311", "key", "issue", "--name", "civic-app"], env=env
    )
    assert issued.exit_code == 0, issued.output
    key = next(word for word in issued.stdout.split() if word.startswith("o311_"))
    assert len(key) > 40
    filed = (await file(http, key, address_string="提署路 3 号")).json()[0]
    rid = filed["service_request_id"]
    await runtime.wait_idle()

    for jurisdiction in (None, "dangtu"):
        client = GeoReport(served + V2, jurisdiction=jurisdiction)
        services = await asyncio.to_thread(client.get_service_list)
        assert [s["service_code"] for s in services] == ["drainage", "neighbourhood", "security", "water_outage"]
        drainage = services[0]
        assert drainage == {
            "service_code": "drainage",
            "service_name": "排水",
            "description": drainage["description"],
            "metadata": False,
            "type": "realtime",
            "keywords": "drainage, 排水, 住建局",
            "group": "部门办理",
        }
        assert "住建局" in drainage["description"] and services[1]["group"] == "社区办理"
        definition = await asyncio.to_thread(client.get_service_definition, "drainage")
        assert definition == {"service_code": "drainage", "attributes": []}
        listed = await asyncio.to_thread(client.get_service_requests)
        assert [r["service_request_id"] for r in listed] == [rid]
        request = await asyncio.to_thread(client.get_service_request, rid)
        assert request == listed[0] and request["status"] == "open" and request["address"] == "提署路 3 号"
        assert request["lat"] == 31.5501 and request["long"] == 118.4902 and request["zipcode"] is None

        xml = GeoReport(served + V2, jurisdiction=jurisdiction, output_format="xml")
        services_xml = await asyncio.to_thread(xml.get_service_list)
        assert [s["service_code"] for s in services_xml] == [s["service_code"] for s in services]
        assert services_xml[0] == {k: str(v).lower() if isinstance(v, bool) else v for k, v in drainage.items()}
        definition_xml = await asyncio.to_thread(xml.get_service_definition, "drainage")
        assert definition_xml == {"service_code": "drainage", "attributes": None}
        listed_xml = one(await asyncio.to_thread(xml.get_service_requests))
        request_xml = one(await asyncio.to_thread(xml.get_service_request, rid))
        assert listed_xml == request_xml
        assert {k: v for k, v in request_xml.items() if v is not None} == {
            k: str(v) for k, v in request.items() if v is not None
        }
        assert request_xml["zipcode"] is None and request_xml["media_url"] is None

    discovery = (await http.get(f"{V2}/discovery.json")).json()
    (endpoint,) = discovery["endpoints"]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2" and endpoint["url"] == served + V2
    assert (
        endpoint["formats"] == ["application/json", "application/xml"]
        and "baton open311 key" in discovery["key_service"]
    )
    discovery_xml = xmltodict.parse((await http.get(f"{V2}/discovery.xml")).content)["discovery"]
    assert discovery_xml["endpoints"]["endpoint"]["formats"]["format"] == endpoint["formats"]
    assert discovery_xml["changeset"] == discovery["changeset"]


# The whole flow ------------------------------------------------------------------------------------------------


async def test_a_request_filed_through_open311_is_followed_to_its_close(
    http: httpx.AsyncClient, auth: Auth, baton: Container, runtime: Runtime
) -> None:
    await county_with_a_grid(http, auth)
    key = issue_key(baton)
    answers: list[str] = []

    async def get(path: str, **params: str) -> Any:
        r = await http.get(V2 + path, params=params)
        assert r.status_code == 200, r.text
        answers.append(r.text)
        return r.json() if path.endswith(".json") else xmltodict.parse(r.content)

    r = await file(http, key, **PERSON, media_url="https://example.org/photo/1.jpg")
    assert r.status_code == 201 and r.headers["content-type"] == "application/json", r.text
    (created,) = r.json()
    rid, token = created["service_request_id"], created["token"]
    assert set(created) == {"service_request_id", "token", "service_notice", "account_id"}
    assert created["account_id"] is None and "提署社区" in created["service_notice"]
    assert len(token) == 14 and created["service_request_id"] == str(baton.reports.id_of(token))

    # Idempotency-Key: the same request applied once, answered again.
    again = {"api_key": key, "service_code": "drainage", **INSIDE, **PERSON, "description": "Sent twice"}
    keyed = [await http.post(f"{V2}/requests.xml", data=again, headers={"Idempotency-Key": "app-42"}) for _ in range(2)]
    assert [k.status_code for k in keyed] == [201, 201] and keyed[1].headers["Idempotent-Replayed"] == "true"
    assert keyed[0].content == keyed[1].content
    other = xmltodict.parse(keyed[0].content)["service_requests"]["request"]["service_request_id"]
    await runtime.wait_idle()

    assert await get(f"/tokens/{token}.json") == [{"service_request_id": rid, "token": token}]
    by_token = (await get(f"/tokens/{token.lower().replace('-', '')}.xml"))["service_requests"]["request"]
    assert by_token == {"service_request_id": rid, "token": token}

    (request,) = await get(f"/requests/{rid}.json")
    raised = datetime.fromisoformat(request["requested_datetime"])
    assert request["status"] == "open" and request["service_code"] == "drainage" and request["service_name"] == "排水"
    assert datetime.fromisoformat(request["expected_datetime"]) == raised + timedelta(hours=24)
    assert request["agency_responsible"] == "提署社区" and request["status_notes"].startswith("Received")
    assert request["media_url"] == "https://example.org/photo/1.jpg" and request["description"].startswith("雨水井")

    community = auth(*COMMUNITY)
    r = await http.post(
        f"/v1/reports/{rid}/escalate",
        json={"title": "雨水井堵塞", "summoned_departments": ["HOUSING"]},
        headers=community,
    )
    assert r.status_code == 200, r.text
    wid = r.json()["whistle_id"]
    await runtime.wait_idle()
    (request,) = await get(f"/requests/{rid}.json")
    assert request["status"] == "open" and request["status_notes"].startswith("Escalated (吹哨)")
    assert request["agency_responsible"] == "提署社区"  # no work order yet: the community still answers for it

    housing = auth("department", "HOUSING", "clerk")
    assert (await http.post(f"/v1/whistles/{wid}/report-in", headers=housing)).status_code == 200
    r = await http.post(f"/v1/whistles/{wid}/dispatch", json={"lead_department": "HOUSING"}, headers=community)
    assert r.status_code == 200, r.text
    await runtime.wait_idle()
    (request,) = await get(f"/requests/{rid}.json")
    whistle = (await http.get(f"/v1/whistles/{wid}", headers=community)).json()
    assert request["agency_responsible"] == "住建局" and "住建局 has the work order" in request["status_notes"]
    assert request["expected_datetime"] == whistle["feedback_due"]

    assert (await http.post(f"/v1/whistles/{wid}/complete", json={"summary": "疏通"}, headers=housing)).is_success
    r = await http.post(
        f"/v1/whistles/{wid}/feedback", json={"result": "雨水井已疏通", "resolved": True}, headers=housing
    )
    assert r.status_code == 200, r.text
    await runtime.wait_idle()
    await asyncio.to_thread(runtime.watcher.tick)  # the report catches up with its whistle
    await runtime.wait_idle()
    (request,) = await get(f"/requests/{rid}.json")
    assert request["status"] == "open" and request["status_notes"].startswith("Resolved: 雨水井已疏通")

    r = await http.post(f"/v1/track/{token}/rating", json={"rating": "satisfied"})
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    await runtime.wait_idle()
    closed = (await get(f"/requests/{rid}.xml"))["service_requests"]["request"]
    assert closed["status"] == "closed" and closed["agency_responsible"] == "住建局"
    assert closed["status_notes"] == "Closed: 雨水井已疏通; the resident rated it satisfied."
    assert [r["service_request_id"] for r in await get("/requests.json", status="closed")] == [rid]
    assert rid not in [r["service_request_id"] for r in await get("/requests.json", status="open")]
    assert [r["service_request_id"] for r in await get("/requests.json", status="open,closed")] == [other, rid]
    listed = await get("/requests.json", service_request_id=f"{rid}, {other},unknown", status="open")
    assert [r["service_request_id"] for r in listed] == [other, rid]  # the ids override every other filter

    # Personal data: sealed in the vault for the community, never in an Open311 answer, the email not kept at all.
    answers.append((await http.get(f"{V2}/requests.xml")).text)
    for text in answers:
        assert not any(p in text for p in PERSONAL), text
    detail = (await http.get(f"/v1/reports/{rid}", headers=community)).json()
    assert detail["reporter"]["name"] == "李桂英" and detail["reporter"]["phone"] == "13905551234"
    assert detail["channel"] == "open311"
    for event in baton.store.select(0, 100_000):
        assert b"li.guiying" not in event.state and token.encode() not in event.state
        assert b"13905551234" not in event.state and key.encode() not in event.state


async def test_duplicates_and_unreasonable_complaints_say_so_and_why(
    client: httpx.AsyncClient, auth: Auth, baton: Container, runtime: Runtime
) -> None:
    await county_with_a_grid(client, auth)
    key = issue_key(baton, "wechat-estation", "e_station")
    first, second, third = [(await file(client, key, description=d)).json()[0] for d in ("积水", "又积水", "邻居太吵")]
    community = auth(*COMMUNITY)
    r = await client.post(
        f"/v1/reports/{second['service_request_id']}/merge",
        json={"into_report": first["service_request_id"]},
        headers=community,
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        f"/v1/reports/{third['service_request_id']}/close-unreasonable",
        json={"reason": "不属公共事务"},
        headers=community,
    )
    assert r.status_code == 200, r.text
    await client.post(f"/v1/reports/{first['service_request_id']}/accept", json={}, headers=community)
    await runtime.wait_idle()
    shown = {r["service_request_id"]: r for r in (await client.get(f"{V2}/requests.json")).json()}
    merged, unreasonable = shown[second["service_request_id"]], shown[third["service_request_id"]]
    assert merged["status"] == "closed" and "duplicate" in merged["status_notes"]
    assert first["service_request_id"] in merged["status_notes"]
    assert unreasonable["status"] == "closed" and unreasonable["status_notes"].endswith("不合理诉求): 不属公共事务")
    accepted = shown[first["service_request_id"]]
    assert accepted["status"] == "open" and accepted["status_notes"].startswith("Accepted: 提署社区 handles it")
    detail = (await client.get(f"/v1/reports/{first['service_request_id']}", headers=community)).json()
    assert detail["channel"] == "e_station"


async def test_reports_taken_down_by_staff_are_not_published(
    client: httpx.AsyncClient, auth: Auth, baton: Container, runtime: Runtime
) -> None:
    await county_with_a_grid(client, auth)
    filed = (await file(client, issue_key(baton))).json()[0]
    body = {"channel": "hotline_12345", "category": "drainage", "description": "王先生说邻居 13905550000 漏水"}
    r = await client.post(
        "/v1/reports", json={**body, "community_id": "tishu", "address": "x"}, headers=auth(*COMMUNITY)
    )
    hotline = r.json()["report_id"]
    await runtime.wait_idle()
    listed = [r["service_request_id"] for r in (await client.get(f"{V2}/requests.json")).json()]
    assert listed == [filed["service_request_id"]]
    r = await client.get(f"{V2}/requests/{hotline}.json")
    assert r.status_code == 404 and "not published" in open311_error(r, "json")["description"]
    r = await client.get(f"{V2}/requests.json", params={"service_request_id": hotline})
    assert r.status_code == 200 and r.json() == []


# Keys --------------------------------------------------------------------------------------------------------


async def test_keys_from_the_cli_work_at_once_and_a_revoked_one_is_refused(
    client: httpx.AsyncClient, auth: Auth, baton: Container, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await county_with_a_grid(client, auth)
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    runner = CliRunner()
    issued = runner.invoke(cli, ["open311", "key", "issue", "--name", "kiosk-1", "--channel", "e_station"])
    assert issued.exit_code == 0, issued.output
    key = next(word for word in issued.stdout.split() if word.startswith("o311_"))
    again = runner.invoke(cli, ["open311", "key", "issue", "--name", "kiosk-1"])
    assert again.exit_code == 2 and "revoke it first" in again.output
    wrong = runner.invoke(cli, ["open311", "key", "issue", "--name", "kiosk-2", "--channel", "hotline_12345"])
    assert wrong.exit_code == 2 and "open311 or e_station" in wrong.output
    listed = runner.invoke(cli, ["open311", "key", "list"])
    assert (
        listed.exit_code == 0 and listed.stdout.startswith("kiosk-1\te_station\tissued ") and key not in listed.output
    )

    assert (await file(client, key)).status_code == 201
    revoked = runner.invoke(cli, ["open311", "key", "revoke", "--name", "kiosk-1"])
    assert revoked.exit_code == 0, revoked.output
    for fmt in ("json", "xml"):
        r = await file(client, key, fmt)
        assert r.status_code == 403 and "revoked" in open311_error(r, fmt)["description"]
    assert runner.invoke(cli, ["open311", "key", "revoke", "--name", "kiosk-1"]).exit_code == 2
    assert runner.invoke(cli, ["open311", "key", "list"]).stdout == ""
    names = [e.topic for e in baton.store.select(0, 100_000)]
    assert sum("Open311KeyIssued" in n for n in names) == 1 and sum("Open311KeyRevoked" in n for n in names) == 1
    stored = b"".join(e.state for e in baton.store.select(0, 100_000))
    assert key.encode() not in stored


# Hostile input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_hostile_input_gets_open311_errors_that_say_what_to_fix(
    client: httpx.AsyncClient, auth: Auth, baton: Container, runtime: Runtime, fmt: str
) -> None:
    await county_with_a_grid(client, auth)
    key = issue_key(baton)
    base = {"api_key": key, "service_code": "drainage", "description": "积水", **INSIDE}

    async def refused(status: int, words: str, response: httpx.Response) -> None:
        assert response.status_code == status, response.text
        description = open311_error(response, fmt)["description"]
        assert words in description, description

    post = f"{V2}/requests.{fmt}"
    await refused(403, "api_key is missing", await client.post(post, data={**base, "api_key": ""}))
    await refused(403, "never issued or has been revoked", await client.post(post, data={**base, "api_key": "x"}))
    await refused(
        400, "service_code nope is not a service here", await client.post(post, data={**base, "service_code": "nope"})
    )
    await refused(400, "service_code is missing", await client.post(post, data={**base, "service_code": ""}))
    await refused(400, "not on Earth", await client.post(post, data={**base, "lat": "91"}))
    await refused(400, "both lat and long", await client.post(post, data={**base, "long": ""}))
    await refused(400, "numbers", await client.post(post, data={**base, "lat": "north"}))
    no_place = {k: v for k, v in base.items() if k not in ("lat", "long")}
    await refused(400, "say where", await client.post(post, data=no_place))
    await refused(
        400,
        "address_string or address_id alone",
        await client.post(post, data={**no_place, "address_string": "提署路"}),
    )
    r = await client.post(post, data={**base, "lat": "30.0", "long": "118.0"})
    await refused(400, "outside every drawn boundary", r)
    assert "e.g. lat=31.550000 long=118.490000 (inside 提署一网格)" in open311_error(r, fmt)["description"]
    await refused(400, "at most 5000", await client.post(post, data={**base, "description": "水" * 5001}))
    await refused(400, "at most 2,000", await client.post(post, data={**base, "media_url": "ftp://x"}))
    await refused(400, "defines no attributes", await client.post(post, data={**base, "attribute[WHISPAWN]": "1"}))
    await refused(400, "send it once", await client.post(post, data={**base, "lat": ["31.55", "31.56"]}))
    await refused(400, "as a form", await client.post(post, json=base))
    await refused(413, "at most 262144 bytes", await client.post(post, data={**base, "description": "x" * 300_000}))
    await refused(
        404,
        "jurisdiction_id nowhere is not served here; use one of: dangtu",
        await client.post(post, data={**base, "jurisdiction_id": "nowhere"}),
    )
    photo = {"media": ("photo.jpg", b"\xff\xd8", "image/jpeg")}
    await refused(400, "send a photo as media_url", await client.post(post, data=base, files=photo))
    boundary = "baton-open311"
    multipart = (
        "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in base.items())
        + f"--{boundary}--\r\n"
    )
    r = await client.post(
        post, content=multipart.encode(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 201, r.text

    requests = f"{V2}/requests.{fmt}"
    await refused(
        400,
        "spans 91.0 days",
        await client.get(requests, params={"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-04-02T00:00:00Z"}),
    )
    await refused(
        400,
        "is before start_date",
        await client.get(requests, params={"start_date": "2026-03-02", "end_date": "2026-03-01"}),
    )
    await refused(400, "not a w3 date-time", await client.get(requests, params={"start_date": "yesterday"}))
    await refused(400, "not an Open311 status", await client.get(requests, params={"status": "pending"}))
    await refused(400, "not a service here", await client.get(requests, params={"service_code": "nope"}))
    await refused(404, "use one of: dangtu", await client.get(requests, params={"jurisdiction_id": "beijing"}))
    await refused(404, "does not exist", await client.get(f"{V2}/requests/00000000-0000-4000-8000-000000000001.{fmt}"))
    await refused(
        404, "no service request has token R7KQ-42MX-9PTW", await client.get(f"{V2}/tokens/R7KQ-42MX-9PTW.{fmt}")
    )
    await refused(404, "12 letters and digits", await client.get(f"{V2}/tokens/0000.{fmt}"))
    await refused(404, "service_code nope is not a service", await client.get(f"{V2}/services/nope.{fmt}"))
    await refused(404, "not an Open311 resource", await client.get(f"{V2}/everything.{fmt}"))
    r = await client.put(requests)
    await refused(405, "use GET, POST", r)
    assert r.headers["Allow"] == "GET, POST"
    r = await client.get(f"{V2}/services.yaml")
    assert r.status_code == 404 and open311_error(r, "json")["description"].startswith("format 'yaml' is not served")

    # A second district: jurisdiction_id is needed, and a request must lie inside the one named.
    r = await client.post(
        "/v1/org/units",
        json={"id": "bowang", "kind": "district", "parent": "maanshan", "name": "博望区"},
        headers=auth("admin"),
    )
    assert r.status_code == 201, r.text
    await refused(400, "send jurisdiction_id, one of: bowang, dangtu", await client.get(f"{V2}/services.{fmt}"))
    await refused(
        400,
        "outside every drawn boundary of bowang",
        await client.post(post, data={**base, "jurisdiction_id": "bowang"}),
    )
    ok = await client.post(
        post, data={**base, "description": "控制字符\x01 stay XML"}, params={"jurisdiction_id": "dangtu"}
    )
    assert ok.status_code == 201, ok.text
    await runtime.wait_idle()
    assert (await client.get(f"{V2}/requests.json", params={"jurisdiction_id": "bowang"})).json() == []
    shown = await client.get(f"{V2}/requests.xml", params={"jurisdiction_id": "dangtu"})
    parsed = xmltodict.parse(shown.content)["service_requests"]["request"]
    assert [r["description"] for r in parsed] == ["控制字符\ufffd stay XML", "积水"]
    assert not any(p in shown.text for p in PERSONAL)


# Any input, as documented (schemathesis over the Open311 operations) ---------------------------------------------

OPEN311_SCHEMA = schemathesis.openapi.from_dict(
    openapi_document(),
    config=schemathesis.config.SchemathesisConfig.from_dict(
        {
            "seed": 20260302,
            "generation": {"max-examples": 30, "mode": "all", "database": "none", "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
        }
    ),
).include(path_regex="^/open311/")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str, Counter[str]]]:
    """The app on a SQLite store with the county, a drawn grid and an Open311 key; no rate limit."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("open311-fuzz"), store="sqlite", watch_interval=3600)
    baton = bootstrap(settings, ManualClock(START))
    tokens = Tokens(b"test-secret-that-is-long-enough-for-hs256!")
    app = create_app(baton, tokens, rate_limit=0)

    async def seeded() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test") as client:
            await county_with_a_grid(client, Auth(tokens))

    asyncio.run(seeded())
    refused: Counter[str] = Counter()
    yield app, issue_key(baton), refused
    print(f"\nOpen311 schemathesis: schema-valid requests refused by a rule (400): {dict(refused)}")
    baton.close()


def answered(response: Response) -> tuple[httpx.Response, str]:
    """schemathesis's response as httpx's, and the format its path asked for."""
    headers = {name: ", ".join(values) for name, values in response.headers.items()}
    fmt = "xml" if unquote(urlsplit(response.request.url).path).endswith(".xml") else "json"
    return httpx.Response(response.status_code, headers=headers, content=response.content), fmt


def errors_are_open311s(ctx: CheckContext, response: Response, case: Any) -> bool | None:
    """Every error under /open311/ is Open311's, in the path's format, its code the HTTP status."""
    if response.status_code >= 400:
        open311_error(*answered(response))
    return None


@OPEN311_SCHEMA.parametrize()
def test_open311_answers_any_input_as_documented(case: Any, fuzzed: tuple[FastAPI, str, Counter[str]]) -> None:
    """Never a 5xx; status, headers, media type and body as documented; every error in Open311's shape. Two POSTs in
    three carry the real key and service (one of those inside the grid), so they reach the gateway's own checks."""
    app, key, refused = fuzzed
    body = None if case.body is NOT_SET else case.body
    pick = int(hashlib.sha256(repr((case.method, case.path_parameters, case.query, body)).encode()).hexdigest(), 16)
    positive = case.meta is None or not case.meta.is_negative_at(schemathesis.core.parameters.ParameterLocation.BODY)
    if isinstance(body, dict) and positive and pick % 3:
        case.body = {**body, "api_key": key, "service_code": "drainage", **(INSIDE if pick % 3 == 1 else {})}

    def valid_or_a_rule(ctx: CheckContext, response: Response, case: Any) -> bool | None:
        try:
            return positive_data_acceptance(ctx, response, case)
        except RejectedPositiveData:
            if response.status_code != 400:
                raise
            refused[open311_error(*answered(response))["description"][:40]] += 1
            return None

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
        negative_data_rejection,
        valid_or_a_rule,
        missing_required_header,
        unsupported_method,
        allow_header_conformance,
        errors_are_open311s,
    ]
    case.call_and_validate(app=app, checks=checks)
