"""The HTTP contract: tokens, scopes, errors that say what to fix, idempotency, the board's filters and paging."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import jwt

from api.tokens import Tokens
from infra.bootstrap import Runtime
from infra.clock import ManualClock
from tests.conftest import Auth, blow, seed_county
from tests.faults import Served


def error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return dict(body["error"])


async def test_no_token_or_a_bad_one_is_401(client: httpx.AsyncClient, tokens: Tokens) -> None:
    assert error(await client.get("/v1/org"))["code"] == "unauthenticated"
    forged = jwt.encode({"role": "admin", "sub": "x", "iss": "baton", "iat": 0, "exp": 2**40}, "w" * 40, "HS256")
    r = await client.get("/v1/org", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and "not valid" in error(r)["message"]
    expired = Tokens(tokens.keyring, timedelta(seconds=-10)).issue("admin", None)
    r = await client.get("/v1/org", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in error(r)["message"]


async def test_only_admins_change_the_organisation(client: httpx.AsyncClient, auth: Auth) -> None:
    r = await client.post("/v1/org/departments", json={"code": "PSB", "name": "x"}, headers=auth("community", "tishu"))
    assert r.status_code == 403 and "only admin" in error(r)["message"]


async def test_the_org_tree_reads_back_with_resolved_deadlines(client: httpx.AsyncClient, auth: Auth) -> None:
    await seed_county(client, auth)
    org = (await client.get("/v1/org", headers=auth("grid", "tishu-g1"))).json()
    assert {u["id"] for u in org["units"]} >= {"maanshan", "dangtu", "gushu", "tishu", "tishu-g1"}
    water = next(c for c in org["categories"] if c["code"] == "water_outage")
    assert water["deadlines"] == {
        "normal": {"report_in_minutes": 120, "feedback_hours": 24},
        "urgent": {"report_in_minutes": 30, "feedback_hours": 2},
    }


async def test_invalid_input_is_422_with_a_message_naming_the_field(client: httpx.AsyncClient, auth: Auth) -> None:
    await seed_county(client, auth)
    community = auth("community", "tishu")
    r = await client.post("/v1/whistles", json={"community_id": "tishu", "category": "drainage"}, headers=community)
    assert r.status_code == 422
    assert "title: Field required" in error(r)["message"] and "description" in error(r)["message"]
    r = await client.post(
        "/v1/whistles",
        json={"community_id": "tishu", "category": "drainage", "title": "t", "description": "d", "urgncy": "urgent"},
        headers=community,
    )
    assert r.status_code == 422 and "urgncy" in error(r)["message"]
    r = await client.post(
        "/v1/whistles",
        json={"community_id": "tishu", "category": "potholes", "title": "t", "description": "d"},
        headers=community,
    )
    assert r.status_code == 422 and error(r) == {
        "code": "unknown_reference",
        "message": "category 'potholes' does not exist; GET /v1/org lists the categories",
    }
    r = await client.post(
        "/v1/org/units",
        json={"id": "New Street", "kind": "street", "parent": "dangtu", "name": "x"},
        headers=auth("admin"),
    )
    assert r.status_code == 422 and "lower-case" in error(r)["message"]


async def test_communities_blow_only_for_themselves_and_grids_for_their_own_grid(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    await seed_county(client, auth)
    body = {"community_id": "taibai", "category": "drainage", "title": "t", "description": "d"}
    r = await client.post("/v1/whistles", json=body, headers=auth("community", "tishu"))
    assert r.status_code == 403
    r = await client.post("/v1/whistles", json=body, headers=auth("street", "huxi"))
    assert r.status_code == 201
    grid = auth("grid", "tishu-g1")
    r = await client.post("/v1/whistles", json={**body, "community_id": "tishu"}, headers=grid)
    assert r.status_code == 201
    r = await client.post("/v1/whistles", json={**body, "community_id": "taibai"}, headers=grid)
    assert r.status_code == 403


async def test_unknown_whistle_is_404_and_a_step_out_of_order_is_409(client: httpx.AsyncClient, auth: Auth) -> None:
    await seed_county(client, auth)
    housing = auth("department", "HOUSING")
    r = await client.post("/v1/whistles/8f6c0c64-0000-4000-8000-000000000000/report-in", headers=housing)
    assert r.status_code == 404
    r = await client.post("/v1/whistles/not-a-uuid/report-in", headers=housing)
    assert r.status_code == 404
    whistle_id = await blow(client, auth)
    r = await client.post(f"/v1/whistles/{whistle_id}/complete", json={"summary": "x"}, headers=housing)
    assert r.status_code == 409
    assert error(r) == {
        "code": "step_out_of_order",
        "message": "cannot complete: the whistle is 'blown'; steps allowed next: report_in",
    }


async def test_an_unknown_id_is_404_in_the_path_and_422_in_the_body_or_query(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    await seed_county(client, auth)
    admin = auth("admin", None, "root")
    cadre = {"id": "cadre-1", "name": "李强", "department": "HOUSING"}
    assert (await client.post("/v1/org/cadres", json=cadre, headers=admin)).status_code == 201
    r = await client.post("/v1/org/cadres/cadre-9/secondment", json={"community_id": "tishu"}, headers=admin)
    assert r.status_code == 404
    assert error(r) == {"code": "not_found", "message": "cadre 'cadre-9' does not exist; GET /v1/org lists the cadres"}
    r = await client.post("/v1/org/cadres/cadre-1/secondment", json={"community_id": "nowhere"}, headers=admin)
    assert r.status_code == 422 and error(r)["code"] == "unknown_reference"
    assert error(r)["message"].startswith("'nowhere' is not a community; GET /v1/org lists the units")
    r = await client.get("/v1/activities", params={"community": "nowhere"}, headers=admin)
    assert r.status_code == 422 and error(r)["code"] == "unknown_reference"
    r = await client.get("/v1/communities/nowhere/leaderboard", headers=admin)
    assert r.status_code == 404 and error(r)["code"] == "not_found"

    organiser = auth("organiser", "tishu", "zhao")
    r = await client.post("/v1/volunteers", json={"community_id": "tishu", "name": "李敏"}, headers=organiser)
    volunteer = r.json()["volunteer_id"]
    unknown = "00000000-0000-4000-8000-000000000404"
    r = await client.post(
        f"/v1/volunteers/{volunteer}/redemptions",
        json={"reward_id": unknown},
        headers=auth("volunteer", "tishu", volunteer),
    )
    assert r.status_code == 422 and error(r)["code"] == "unknown_reference"
    assert f"reward {unknown} does not exist; GET /v1/rewards?community=ID lists" in error(r)["message"]
    stranger = auth("volunteer", "tishu", unknown)
    r = await client.post(f"/v1/volunteers/{unknown}/redemptions", json={"reward_id": unknown}, headers=stranger)
    assert r.status_code == 404 and error(r)["message"].startswith(f"volunteer {unknown} does not exist")


async def test_the_same_idempotency_key_and_body_apply_once(client: httpx.AsyncClient, auth: Auth, baton) -> None:
    await seed_county(client, auth)
    community = {**auth("community", "tishu", "wang"), "Idempotency-Key": "blow-1"}
    body = {"community_id": "tishu", "category": "drainage", "title": "t", "description": "d"}
    first = await client.post("/v1/whistles", json=body, headers=community)
    before = baton.store.max_position()
    again = await client.post("/v1/whistles", json=body, headers=community)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers["Idempotent-Replayed"] == "true"
    assert baton.store.max_position() == before
    changed = await client.post("/v1/whistles", json={**body, "title": "other"}, headers=community)
    assert changed.status_code == 422 and error(changed)["code"] == "idempotency_key_reused"
    concurrent = await asyncio.gather(
        *(client.post("/v1/whistles", json=body, headers={**community, "Idempotency-Key": "blow-2"}) for _ in range(6))
    )
    assert len({r.json()["whistle_id"] for r in concurrent}) == 1
    assert len(baton.store.select(before, 100)) == 1  # (PostgreSQL may skip positions of refused saves)


async def test_board_filters_scopes_and_cursor_paging(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, clock: ManualClock
) -> None:
    await seed_county(client, auth)
    tishu = [await blow(client, auth) for _ in range(5)]
    qingshan = await blow(client, auth, community_id="qingshan", summoned_departments=["PSB"])
    taibai = await blow(client, auth, community_id="taibai", summoned_departments=["EDU"])
    await client.post(f"/v1/whistles/{tishu[0]}/report-in", headers=auth("department", "HOUSING"))
    await client.post(f"/v1/whistles/{tishu[0]}/report-in", headers=auth("department", "PSB"))
    clock.advance(timedelta(days=1, minutes=1))
    await runtime.wait_idle()
    await asyncio.to_thread(runtime.watcher.tick)
    await runtime.wait_idle()
    admin = auth("admin")

    async def ids(query: str, headers: dict) -> list[str]:
        r = await client.get(f"/v1/whistles{query}", headers=headers)
        assert r.status_code == 200, r.text
        return [i["whistle_id"] for i in r.json()["items"]]

    assert await ids("", admin) == [taibai, qingshan, *reversed(tishu)]
    assert await ids("?community=tishu&status=answered", admin) == [tishu[0]]
    assert await ids("?overdue=true", admin) == [taibai, qingshan, *reversed(tishu[1:])]
    assert await ids("?department=EDU", admin) == [taibai]
    assert await ids("", auth("street", "gushu")) == [qingshan, *reversed(tishu)]
    assert await ids("", auth("district", "dangtu")) == [taibai, qingshan, *reversed(tishu)]
    assert await ids("", auth("grid", "tishu-g1")) == list(reversed(tishu))
    assert (await client.get("/v1/whistles?community=taibai", headers=auth("community", "tishu"))).status_code == 403
    assert (await client.get("/v1/whistles", headers=auth("volunteer", "tishu"))).status_code == 403

    pages, cursor = [], None
    while True:
        r = await client.get(
            "/v1/whistles", params={"limit": 3, **({"cursor": cursor} if cursor else {})}, headers=admin
        )
        page = r.json()
        pages.append([i["whistle_id"] for i in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [w for page in pages for w in page] == [taibai, qingshan, *reversed(tishu)]

    detail = (await client.get(f"/v1/whistles/{tishu[1]}", headers=admin)).json()
    assert detail["overdue"] and detail["escalated_to"] == "gushu" and detail["escalation_level"] == 1
    assert [t["type"] for t in detail["timeline"]] == ["blown", "deadline_missed", "escalated"]
    assert detail["timeline"][1]["actor"]["role"] == "system"

    # PSB never reports in, yet once the case is closed it is no longer overdue.
    housing, community = auth("department", "HOUSING"), auth("community", "tishu")
    await client.post(f"/v1/whistles/{tishu[1]}/report-in", headers=housing)
    await client.post(f"/v1/whistles/{tishu[1]}/dispatch", json={"lead_department": "HOUSING"}, headers=community)
    await client.post(f"/v1/whistles/{tishu[1]}/complete", json={"summary": "done"}, headers=housing)
    await client.post(f"/v1/whistles/{tishu[1]}/feedback", json={"result": "ok", "resolved": True}, headers=housing)
    r = await client.post(f"/v1/whistles/{tishu[1]}/evaluate", json={"rating": "satisfied"}, headers=community)
    await runtime.wait_idle()
    detail = (await client.get(f"/v1/whistles/{tishu[1]}", headers=admin)).json()
    assert r.json()["status"] == "closed" and detail["missed_report_in"] == ["HOUSING", "PSB"]
    assert detail["overdue"] is False and tishu[1] not in await ids("?overdue=true", admin)


async def test_read_your_writes_with_min_position(client: httpx.AsyncClient, auth: Auth, runtime: Runtime) -> None:
    await seed_county(client, auth)
    r = await client.post(
        "/v1/whistles",
        json={"community_id": "tishu", "category": "drainage", "title": "t", "description": "d"},
        headers=auth("community", "tishu"),
    )
    created = r.json()
    detail = await client.get(
        f"/v1/whistles/{created['whistle_id']}", params={"min_position": created["position"]}, headers=auth("admin")
    )
    assert detail.status_code == 200 and detail.json()["last_position"] == created["position"]


async def test_health_reports_store_nats_relay_and_projections(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    from api.app import create_app

    app = create_app(runtime.baton, Tokens(b"x" * 32), runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        await seed_county(c, auth.__class__(Tokens(b"x" * 32)))
        await runtime.wait_idle()
        health = (await c.get("/health")).json()
    assert health["status"] == "ok"
    assert health["nats"]["connected"] is True and health["nats"]["url"].startswith("nats://")
    assert health["relay"]["lag"] == 0
    top = runtime.baton.store.max_position()
    assert health["projections"] == {name: {"lag": 0, "position": top} for name in runtime.baton.projections}
    assert set(health["projections"]) == {
        "whistle_board",
        "department_scorecard",
        "volunteering",
        "branches",
        "reports",
    }


def test_a_method_a_path_does_not_serve_is_405_with_every_allowed_method_over_http(served: Served) -> None:
    """RFC 9110: a 405 carries Allow, naming every method served at the path (not only the first route's)."""
    allowed = {
        "/health": "GET",
        "/v1/activities/0": "GET",
        "/v1/whistles": "GET, POST",
        "/v1/communities/tishu/points-policy": "PUT",
        "/v1/assessments/2026/finalise": "POST",
    }
    with httpx.Client(base_url=served.url) as client:
        for path, methods in allowed.items():
            for method in ("TRACE", "DELETE", "PATCH", "OPTIONS"):
                r = client.request(method, path)
                assert r.status_code == 405, (method, path, r.text)
                assert r.headers.get("Allow") == methods, (method, path, r.headers)
                assert error(r) == {
                    "code": "method_not_allowed",
                    "message": f"{method} is not served at {path}; use {methods}",
                }
