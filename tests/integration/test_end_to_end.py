"""HTTP and NATS commands through the real store, relay, nats-server and projections, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from infra.bootstrap import Runtime
from infra.jetstream import department_durable
from tests.conftest import Auth, DepartmentFeed, blow, body, seed_county, stream_messages


async def test_an_http_command_becomes_one_event_on_nats_and_a_read_model_row(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, nc
) -> None:
    await seed_county(client, auth)
    whistle_id = await blow(client, auth)
    await runtime.wait_idle()

    messages = await stream_messages(nc, "BATON_EVENTS", "baton.evt.whistle.>")
    assert [m.subject for m in messages] == ["baton.evt.whistle.blown"]
    (msg,) = messages
    event = body(msg)
    assert event["aggregate_id"] == whistle_id and event["type"] == "blown" and event["version"] == 1
    assert msg.headers["Nats-Msg-Id"] == f"{whistle_id}:1"
    assert msg.headers["Baton-Position"] == str(event["position"])
    assert event["actor"] == {"role": "community", "unit": "tishu", "id": "wang"}
    assert set(event) == {"position", "aggregate", "aggregate_id", "version", "type", "occurred_at", "actor", "data"}

    r = await client.get(f"/v1/whistles/{whistle_id}", headers=auth("community", "tishu"))
    assert r.status_code == 200
    detail = r.json()
    assert detail["status"] == "blown" and detail["summoned"] == ["HOUSING", "PSB"]
    assert detail["street_id"] == "gushu" and detail["district_id"] == "dangtu"
    assert [t["type"] for t in detail["timeline"]] == ["blown"]

    all_events = await stream_messages(nc, "BATON_EVENTS")
    assert [body(m)["position"] for m in all_events] == list(range(1, runtime.baton.store.max_position() + 1))


async def test_all_six_steps_over_http_and_nats(client: httpx.AsyncClient, auth: Auth, runtime: Runtime, nc) -> None:
    await seed_county(client, auth)
    whistle_id = await blow(client, auth, summoned_departments=["HOUSING", "PSB"])
    community = auth("community", "tishu", "wang")
    js = nc.jetstream()
    await runtime.wait_idle()  # the departments' durable consumers exist
    feed = await DepartmentFeed.bind(js, "HOUSING")

    async def command(action: str, **fields) -> dict:
        payload = {"command_id": uuid.uuid4().hex, "whistle_id": whistle_id, **fields}
        await js.publish(f"baton.dept.HOUSING.cmd.{action}", json.dumps(payload).encode())
        (msg,) = await feed.outcomes(1)
        outcome = json.loads(msg.data)
        assert outcome["command_id"] == payload["command_id"]
        return outcome

    assert (await command("report_in"))["status"] == "accepted"
    r = await client.post(f"/v1/whistles/{whistle_id}/dispatch", json={"lead_department": "HOUSING"}, headers=community)
    assert r.status_code == 200 and r.json()["status"] == "dispatched"
    assert (await command("progress", note="crew on site"))["status"] == "accepted"
    assert (await command("complete", summary="drain cleared"))["status"] == "accepted"
    fed_back = await command("feedback", result="cleared and disinfected", resolved=True)
    assert fed_back["status"] == "accepted" and isinstance(fed_back["position"], int)
    r = await client.post(
        f"/v1/whistles/{whistle_id}/evaluate", json={"rating": "satisfied", "comment": "fast"}, headers=community
    )
    assert r.status_code == 200 and r.json()["status"] == "closed"

    await runtime.wait_idle()
    r = await client.get(f"/v1/whistles/{whistle_id}", headers=community)
    assert [t["type"] for t in r.json()["timeline"]] == [
        "blown",
        "reported_in",
        "dispatched",
        "progress_recorded",
        "completed",
        "fed_back",
        "evaluated",
    ]
    card = (await client.get("/v1/scorecards/HOUSING", headers=auth("department", "HOUSING"))).json()
    assert card["report_in"]["on_time"] == 1 and card["handling"]["on_time"] == 1
    assert card["satisfaction_pct"] == "100.0"


async def test_each_department_command_gets_exactly_one_outcome(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, nc
) -> None:
    await seed_county(client, auth)
    whistle_id = await blow(client, auth)
    other = await blow(client, auth, community_id="taibai", summoned_departments=["EDU"])
    js = nc.jetstream()
    sent = [
        ("report_in", {"command_id": "ok-1", "whistle_id": whistle_id}),
        ("report_in", {"command_id": "ok-1", "whistle_id": whistle_id}),  # a retry: same answer, applied once
        ("report_in", {"command_id": "again", "whistle_id": whistle_id}),  # already reported in: 409-like
        ("report_in", {"command_id": "scope", "whistle_id": other}),  # not summoned
        ("complete", {"command_id": "early", "whistle_id": whistle_id, "summary": "x"}),  # no work order
        ("report_in", {"command_id": "typo", "whistle_id": whistle_id, "colour": "red"}),  # unknown field
        ("launch_rocket", {"command_id": "what", "whistle_id": whistle_id}),
        ("report_in", {"whistle_id": whistle_id}),  # no command_id
    ]
    for action, payload in sent:
        await js.publish(f"baton.dept.HOUSING.cmd.{action}", json.dumps(payload).encode())
    await js.publish("baton.dept.HOUSING.cmd.report_in", b"\xff\xfe not json")

    await runtime.wait_idle()  # the departments' durable consumers exist
    feed = await DepartmentFeed.bind(js, "HOUSING")
    received = [json.loads(msg.data) for msg in await feed.outcomes(len(sent))]
    with pytest.raises(TimeoutError):
        await feed.outcomes(1, timeout=1.0)

    # 9 messages, 8 outcomes: the retry of ok-1 is answered with the same outcome, which JetStream dedupes.
    by_id: dict = {}
    for outcome in received:
        by_id.setdefault(outcome.get("command_id"), []).append(outcome)
    assert [o["status"] for o in by_id["ok-1"]] == ["accepted"]
    assert by_id["again"][0]["error"]["code"] == "already_reported_in"
    assert by_id["scope"][0]["error"]["code"] == "not_summoned"
    assert by_id["early"][0]["error"]["code"] == "step_out_of_order"
    assert "colour" in by_id["typo"][0]["error"]["message"]
    assert by_id["what"][0]["error"]["code"] == "unknown_action"
    assert {o["error"]["code"] for o in by_id[None]} == {"invalid_command", "malformed"}
    assert len(received) == len(sent)

    intake = await stream_messages(nc, "BATON_INTAKE")
    assert len(intake) == len(sent) + 1

    await runtime.wait_idle()
    r = await client.get(f"/v1/whistles/{whistle_id}", headers=auth("community", "tishu"))
    assert [t["type"] for t in r.json()["timeline"]] == ["blown", "reported_in"]


async def test_departments_see_what_concerns_them_in_their_inbox(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, nc
) -> None:
    await seed_county(client, auth)
    whistle_id = await blow(client, auth, summoned_departments=["HOUSING", "PSB"])
    await client.post(f"/v1/whistles/{whistle_id}/report-in", headers=auth("department", "HOUSING"))
    await client.post(
        f"/v1/whistles/{whistle_id}/dispatch",
        json={"lead_department": "HOUSING", "co_departments": ["URBAN"]},
        headers=auth("community", "tishu"),
    )
    await blow(client, auth, summoned_departments=["EDU"])
    await runtime.wait_idle()
    js = nc.jetstream()

    async def inbox(code: str) -> list[str]:
        sub = await js.pull_subscribe_bind(durable=department_durable(code), stream="BATON_DEPT")
        subjects = []
        try:
            while True:
                for msg in await sub.fetch(10, timeout=2):
                    subjects.append(msg.subject)
                    await msg.ack()
        except TimeoutError:
            return subjects

    assert await inbox("HOUSING") == [
        "baton.dept.HOUSING.inbox.whistle.blown",
        "baton.dept.HOUSING.inbox.whistle.dispatched",
    ]
    assert await inbox("URBAN") == ["baton.dept.URBAN.inbox.whistle.dispatched"]
    assert await inbox("EDU") == ["baton.dept.EDU.inbox.whistle.blown"]


async def test_a_department_token_gets_403_on_another_departments_whistle(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    housing_case = await blow(client, auth, summoned_departments=["HOUSING"])
    edu = auth("department", "EDU")
    r = await client.post(f"/v1/whistles/{housing_case}/report-in", headers=edu)
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_summoned"
    await runtime.wait_idle()
    r = await client.get(f"/v1/whistles/{housing_case}", headers=edu)
    assert r.status_code == 403
    r = await client.get("/v1/whistles", headers=edu)
    assert r.status_code == 200 and r.json()["items"] == []
    r = await client.get("/v1/whistles?department=HOUSING", headers=edu)
    assert r.status_code == 403
    r = await client.get("/v1/whistles", headers=auth("department", "HOUSING"))
    assert [i["whistle_id"] for i in r.json()["items"]] == [housing_case]


async def test_concurrent_commands_on_one_whistle_all_apply_once(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    whistle_id = await blow(client, auth, summoned_departments=["HOUSING", "PSB", "URBAN", "EDU", "WATER"])
    codes = ["HOUSING", "PSB", "URBAN", "EDU", "WATER"]
    results = await asyncio.gather(
        *(client.post(f"/v1/whistles/{whistle_id}/report-in", headers=auth("department", c)) for c in codes)
    )
    assert [r.status_code for r in results] == [200] * 5
    await runtime.wait_idle()
    detail = (await client.get(f"/v1/whistles/{whistle_id}", headers=auth("admin"))).json()
    assert sorted(detail["reported"]) == sorted(codes)
    assert [t["version"] for t in detail["timeline"]] == [1, 2, 3, 4, 5, 6]
