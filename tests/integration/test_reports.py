"""Residents raise, the community manages, departments handle: a report's lifecycle over HTTP on both stores, with
the relay, the read models and the watcher running on a real nats-server."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from infra.bootstrap import Runtime
from infra.clock import ManualClock
from tests.conftest import Auth, seed_county

COMMUNITY = ("community", "tishu", "wang")


async def raise_report(client: httpx.AsyncClient, auth: Auth, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "hotline_12345",
        "category": "drainage",
        "description": "Sewage backing up at building 3 since morning",
        "community_id": "tishu",
        "grid_id": "tishu-g1",
        "address": "提署路 3 号",
        "lat": 31.5501,
        "long": 118.4902,
        "media": [{"url": "https://example.org/photo/1.jpg"}],
        "reporter": {"name": "李阿姨", "phone": "13900001111"},
    }
    body.update(overrides)
    r = await client.post("/v1/reports", json=body, headers=auth(*COMMUNITY))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def step(client: httpx.AsyncClient, auth: Auth, report_id: str, action: str, body: dict[str, Any]) -> dict:
    r = await client.post(f"/v1/reports/{report_id}/{action}", json=body, headers=auth(*COMMUNITY))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_report_the_community_resolves_is_rated_by_its_resident(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    created = await raise_report(client, auth)
    rid, code = created["report_id"], created["tracking_code"]
    assert created["community_id"] == "tishu" and len(code) == 14
    await runtime.wait_idle()

    inbox = (await client.get("/v1/reports", params={"status": "received"}, headers=auth(*COMMUNITY))).json()
    assert [r["report_id"] for r in inbox["items"]] == [rid]
    detail = (await client.get(f"/v1/reports/{rid}", headers=auth(*COMMUNITY))).json()
    assert detail["reporter"]["name"] == "李阿姨" and detail["media"] == [{"url": "https://example.org/photo/1.jpg"}]
    audited = (await client.get(f"/v1/reports/{rid}", headers=auth("auditor"))).json()
    assert audited["reporter"]["name"] is None and audited["reporter"]["phone"] is None
    other = await client.get(f"/v1/reports/{rid}", headers=auth("community", "taibai", "zhao"))
    assert other.status_code == 403
    assert (await client.get("/v1/reports", headers=auth("department", "HOUSING"))).status_code == 403

    await step(client, auth, rid, "accept", {})
    await step(client, auth, rid, "progress", {"note": "called the property company"})
    assert (await step(client, auth, rid, "resolve", {"result": "drain cleared"}))["status"] == "resolved"
    r = await client.post(f"/v1/track/{code}/rating", json={"rating": "dissatisfied", "comment": "still smells"})
    assert r.status_code == 200 and r.json()["status"] == "accepted", r.text  # reopened: the community's again
    await step(client, auth, rid, "resolve", {"result": "pipe replaced"})
    r = await client.post(f"/v1/track/{code.lower().replace('-', '')}/rating", json={"rating": "satisfied"})
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    await runtime.wait_idle()

    tracked = (await client.get(f"/v1/track/{code}")).json()
    assert tracked["status"] == "closed" and tracked["result"] == "pipe replaced"
    assert [s["type"] for s in tracked["steps"]] == [
        "raised",
        "accepted",
        "progress_recorded",
        "resolved",
        "rated",
        "resolved",
        "rated",
    ]
    assert "李阿姨" not in json.dumps(tracked) and "13900001111" not in json.dumps(tracked)
    rates = (await client.get("/v1/reports/rates", headers=auth("admin"))).json()
    assert rates == [
        {
            "community_id": "tishu",
            "raised": 1,
            "unreasonable": 0,
            "merged": 0,
            "counted": 1,
            "responded_on_time": 1,
            "resolved": 1,
            "rated_by_resident": 1,
            "satisfied_by_resident": 1,
            "rated_on_behalf": 0,
            "satisfied_on_behalf": 0,
            "response_rate": "1.0000",
            "resolution_rate": "1.0000",
            "satisfaction_rate": "1.0000",
        }
    ]
    for event in runtime.baton.store.select(0, 10_000):
        assert b"\xe6\x9d\x8e\xe9\x98\xbf\xe5\xa7\xa8" not in event.state and b"13900001111" not in event.state
        assert code.encode() not in event.state


async def test_an_escalated_report_follows_its_whistle_and_the_residents_rating_evaluates_it(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, clock: ManualClock
) -> None:
    await seed_county(client, auth)
    created = await raise_report(client, auth)
    rid, code = created["report_id"], created["tracking_code"]
    escalated = await step(
        client, auth, rid, "escalate", {"title": "Sewage at building 3", "summoned_departments": ["HOUSING"]}
    )
    wid = escalated["whistle_id"]
    assert escalated["status"] == "escalated"
    housing = auth("department", "HOUSING")
    assert (await client.post(f"/v1/whistles/{wid}/report-in", headers=housing)).status_code == 200
    r = await client.post(f"/v1/whistles/{wid}/dispatch", json={"lead_department": "HOUSING"}, headers=auth(*COMMUNITY))
    assert r.status_code == 200
    assert (await client.post(f"/v1/whistles/{wid}/complete", json={"summary": "done"}, headers=housing)).is_success
    r = await client.post(
        f"/v1/whistles/{wid}/feedback", json={"result": "main pipe relaid", "resolved": True}, headers=housing
    )
    assert r.status_code == 200, r.text
    await runtime.wait_idle()
    whistle = (await client.get(f"/v1/whistles/{wid}", headers=auth(*COMMUNITY))).json()
    assert whistle["source"] == "resident" and whistle["reporter"]["name"] == "李阿姨"

    await asyncio.to_thread(runtime.watcher.tick)  # the report catches up with its whistle
    await runtime.wait_idle()
    tracked = (await client.get(f"/v1/track/{code}")).json()
    assert tracked["status"] == "resolved" and tracked["result"] == "main pipe relaid", tracked
    assert tracked["whistle_status"] == "fed_back"
    r = await client.post(f"/v1/track/{code}/rating", json={"rating": "satisfied"})
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    await runtime.wait_idle()
    whistle = (await client.get(f"/v1/whistles/{wid}", headers=auth(*COMMUNITY))).json()
    evaluated = whistle["timeline"][-1]
    assert whistle["status"] == "closed" and evaluated["type"] == "evaluated"
    assert evaluated["actor"]["role"] == "resident" and evaluated["data"]["rating"] == "satisfied"
    detail = (await client.get(f"/v1/reports/{rid}", headers=auth(*COMMUNITY))).json()
    assert [t["type"] for t in detail["whistle_timeline"]][:2] == ["blown", "reported_in"]
    assert detail["rated_by"] == "resident" and detail["whistle_status"] == "closed"
    card = (await client.get("/v1/scorecards/HOUSING", headers=auth("admin"))).json()
    assert card["resident_ratings"] == {"satisfied": 1, "basically_satisfied": 0, "dissatisfied": 0}
    assert card["resident_satisfaction_pct"] == "100.0" and card["ratings"]["satisfied"] == 1


async def test_duplicates_merge_and_unreasonable_complaints_are_counted_apart(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    first = await raise_report(client, auth)
    second = await raise_report(client, auth, lat=31.5503, long=118.4905, description="Same sewage again")
    third = await raise_report(client, auth, category="neighbourhood", description="The neighbour's cat looks at me")
    await runtime.wait_idle()
    similar = (await client.get(f"/v1/reports/{second['report_id']}/similar", headers=auth(*COMMUNITY))).json()
    assert [r["report_id"] for r in similar["reports"]] == [first["report_id"]]
    merged = await step(client, auth, second["report_id"], "merge", {"into_report": first["report_id"]})
    assert merged["status"] == "merged"
    r = await client.post(
        f"/v1/reports/{first['report_id']}/merge", json={"into_report": first["report_id"]}, headers=auth(*COMMUNITY)
    )
    assert r.status_code == 422 and "itself" in r.json()["error"]["message"]
    closed = await step(client, auth, third["report_id"], "close-unreasonable", {"reason": "not a public matter"})
    assert closed["status"] == "unreasonable"
    r = await client.post(f"/v1/track/{third['tracking_code']}/rating", json={"rating": "dissatisfied"})
    assert r.status_code == 409 and "unreasonable" in r.json()["error"]["message"]
    await runtime.wait_idle()
    (rates,) = (await client.get("/v1/reports/rates", headers=auth("street", "gushu"))).json()
    assert (rates["raised"], rates["merged"], rates["unreasonable"], rates["counted"]) == (3, 1, 1, 1)
    assert rates["resolution_rate"] == "0.0000" and rates["satisfaction_rate"] is None


async def test_a_report_left_untriaged_past_its_deadline_is_overdue(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, clock: ManualClock
) -> None:
    await seed_county(client, auth)
    created = await raise_report(client, auth)
    clock.advance(timedelta(hours=25))
    await runtime.wait_idle()
    await asyncio.to_thread(runtime.watcher.tick)
    await asyncio.to_thread(runtime.watcher.tick)  # recorded once
    await runtime.wait_idle()
    detail = (await client.get(f"/v1/reports/{created['report_id']}", headers=auth(*COMMUNITY))).json()
    assert detail["overdue"] is True and [t["type"] for t in detail["timeline"]] == ["raised", "deadline_missed"]
    await step(client, auth, created["report_id"], "accept", {})
    await runtime.wait_idle()
    detail = (await client.get(f"/v1/reports/{created['report_id']}", headers=auth(*COMMUNITY))).json()
    assert detail["overdue"] is False and detail["responded_on_time"] is False


async def test_bad_input_is_refused_with_what_to_fix(client: httpx.AsyncClient, auth: Auth) -> None:
    await seed_county(client, auth)
    headers = auth(*COMMUNITY)
    base = {"channel": "walk_in", "category": "drainage", "description": "x", "community_id": "tishu"}
    r = await client.post("/v1/reports", json={**base, "lat": 91, "long": 118}, headers=headers)
    assert r.status_code == 422 and "lat" in r.text
    r = await client.post("/v1/reports", json={**base, "lat": 31.5}, headers=headers)
    assert r.status_code == 422 and "both lat and long" in r.json()["error"]["message"]
    r = await client.post("/v1/reports", json=base, headers=headers)
    assert r.status_code == 422 and "say where" in r.json()["error"]["message"]
    r = await client.post("/v1/reports", json={**base, "address": "x", "media": [{"url": "ftp://x"}]}, headers=headers)
    assert r.status_code == 422
    many = [{"url": f"https://example.org/{i}.jpg"} for i in range(10)]
    r = await client.post("/v1/reports", json={**base, "address": "x", "media": many}, headers=headers)
    assert r.status_code == 422
    r = await client.post("/v1/reports", json={**base, "address": "x", "community_id": "taibai"}, headers=headers)
    assert r.status_code == 403
    r = await client.get("/v1/track/R7KQ-42MX-9PTW")
    assert r.status_code == 404 and "tracking code" in r.json()["error"]["message"], r.text
    r = await client.get("/v1/track/0000-0000-0000")
    assert r.status_code == 404 and "12 letters and digits" in r.json()["error"]["message"]
    r = await client.post("/v1/track/R7KQ-42MX-9PTW/rating", json={"rating": "satisfied"})
    assert r.status_code == 404
    created = (await client.post("/v1/reports", json={**base, "address": "x"}, headers=headers)).json()
    r = await client.post(f"/v1/track/{created['tracking_code']}/rating", json={"rating": "satisfied"})
    assert r.status_code == 409 and "resolved" in r.json()["error"]["message"]
    r = await client.post(
        f"/v1/reports/{created['report_id']}/rating",
        json={"rating": "satisfied", "rated_by": "resident"},
        headers=headers,
    )
    assert r.status_code == 422


async def test_coordinates_inside_a_drawn_grid_place_the_report(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    grid = {
        "type": "Polygon",
        "coordinates": [[[118.48, 31.54], [118.50, 31.54], [118.50, 31.56], [118.48, 31.56], [118.48, 31.54]]],
    }
    r = await client.put("/v1/org/units/tishu-g1/boundary", json=grid, headers=auth("admin"))
    assert r.status_code == 200, r.text
    r = await client.put("/v1/org/units/gushu/boundary", json=grid, headers=auth("admin"))
    assert r.status_code == 422 and "communities and grids" in r.json()["error"]["message"]
    placed = await raise_report(client, auth, community_id=None, grid_id=None, address=None)
    assert placed["community_id"] == "tishu"
    await runtime.wait_idle()
    detail = (await client.get(f"/v1/reports/{placed['report_id']}", headers=auth(*COMMUNITY))).json()
    assert detail["grid_id"] == "tishu-g1"
    r = await client.post(
        "/v1/reports",
        json={"channel": "walk_in", "category": "drainage", "description": "x", "lat": 30.0, "long": 118.0},
        headers=auth("admin"),
    )
    assert r.status_code == 422 and "say which community" in r.json()["error"]["message"]
    features = (await client.get("/v1/org/boundaries", headers=auth("volunteer", "tishu"))).json()["features"]
    assert [f["id"] for f in features] == ["tishu-g1"] and features[0]["properties"]["kind"] == "grid"


JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 64  # NUL bytes and all, as photos have


async def test_a_photo_is_kept_outside_the_log_and_named_by_its_hash(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    staff = {**auth(*COMMUNITY), "Content-Type": "image/jpeg"}
    r = await client.post("/v1/media", content=JPEG, headers=staff)
    assert r.status_code == 201, r.text
    kept = r.json()
    assert kept["content_type"] == "image/jpeg" and kept["bytes"] == len(JPEG) and len(kept["sha256"]) == 64
    again = await client.post("/v1/media", content=JPEG, headers=staff)
    assert again.status_code == 201 and again.json() == kept  # content-addressed: the same photo is one photo
    created = await raise_report(client, auth, media=[{"sha256": kept["sha256"]}, {"url": "https://example.org/x.jpg"}])
    await runtime.wait_idle()
    detail = (await client.get(f"/v1/reports/{created['report_id']}", headers=auth(*COMMUNITY))).json()
    assert detail["media"][0] == {"sha256": kept["sha256"], "content_type": "image/jpeg", "bytes": len(JPEG)}
    photo = await client.get(f"/v1/media/{kept['sha256']}", headers=auth("department", "HOUSING"))
    assert photo.status_code == 200 and photo.content == JPEG and photo.headers["content-type"] == "image/jpeg"
    for event in runtime.baton.store.select(0, 10_000):
        assert JPEG[:64] not in event.state

    r = await client.post("/v1/media", content=b"%PDF-1.7 not a photo", headers=staff)
    assert r.status_code == 422 and "JPEG, PNG, WebP or GIF" in r.json()["error"]["message"]
    r = await client.post("/v1/media", content=b"", headers=staff)
    assert r.status_code == 422 and "empty" in r.json()["error"]["message"]
    r = await client.post("/v1/media", content=b"\xff\xd8\xff" + b"\0" * (5 * 1024 * 1024 + 2048), headers=staff)
    assert r.status_code == 413, r.text
    r = await client.post(
        "/v1/media", content=JPEG, headers={**auth("volunteer", "tishu"), "Content-Type": "image/jpeg"}
    )
    assert r.status_code == 403
    r = await raise_report_raw(client, auth, media=[{"sha256": "ab" * 32}])
    assert r.status_code == 422 and "POST its bytes to /v1/media" in r.json()["error"]["message"]
    r = await client.get(f"/v1/media/{'cd' * 32}", headers=auth("admin"))
    assert r.status_code == 404


async def raise_report_raw(client: httpx.AsyncClient, auth: Auth, **fields: Any) -> httpx.Response:
    body = {"channel": "walk_in", "category": "drainage", "description": "x", "community_id": "tishu", "address": "x"}
    return await client.post("/v1/reports", json={**body, **fields}, headers=auth(*COMMUNITY))


async def test_the_months_ranking_agrees_with_the_reports_rates_and_the_cli(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, clock: ManualClock, settings: Any, monkeypatch: Any
) -> None:
    from typer.testing import CliRunner

    from infra.cli import app as cli

    await seed_county(client, auth)
    good = await raise_report(client, auth)
    await raise_report(client, auth, description="Another drain")  # left unanswered
    await step(client, auth, good["report_id"], "accept", {})
    await step(client, auth, good["report_id"], "resolve", {"result": "cleared"})
    r = await client.post(f"/v1/track/{good['tracking_code']}/rating", json={"rating": "satisfied"})
    assert r.status_code == 200, r.text
    taibai = {**auth("community", "taibai", "zhao")}
    r = await client.post(
        "/v1/reports",
        json={
            "channel": "walk_in",
            "category": "drainage",
            "description": "x",
            "community_id": "taibai",
            "address": "x",
        },
        headers=taibai,
    )
    await client.post(f"/v1/reports/{r.json()['report_id']}/close-unreasonable", json={"reason": "x"}, headers=taibai)
    await runtime.wait_idle()
    month = clock.now().astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    ranking = (await client.get(f"/v1/rankings/{month}", headers=auth("street", "gushu"))).json()
    rates = {r["community_id"]: r for r in (await client.get("/v1/reports/rates", headers=auth("admin"))).json()}
    (tishu,) = [u for u in ranking["units"] if u["unit"] == "tishu"]
    assert (
        (tishu["response_rate"], tishu["resolution_rate"], tishu["satisfaction_rate"])
        == (
            rates["tishu"]["response_rate"],
            rates["tishu"]["resolution_rate"],
            rates["tishu"]["satisfaction_rate"],
        )
        == ("0.5000", "0.5000", "1.0000")
    )
    assert tishu["rank"] == 1 and tishu["class"] == "advanced" and tishu["cases"] == 2
    assert "taibai" not in {u["unit"] for u in ranking["units"]}  # its only report was an unreasonable complaint
    r = await client.get("/v1/rankings/2026-13", headers=auth("admin"))
    assert r.status_code == 404 and "YYYY-MM" in r.json()["error"]["message"]
    r = await client.get(f"/v1/rankings/{month}", headers=auth("volunteer", "tishu"))
    assert r.status_code == 403

    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    printed = await asyncio.to_thread(CliRunner().invoke, cli, ["ranking", "--month", month], env={"COLUMNS": "200"})
    assert printed.exit_code == 0, printed.output
    assert "tishu" in printed.output and "advanced" in printed.output and "50.0%" in printed.output
