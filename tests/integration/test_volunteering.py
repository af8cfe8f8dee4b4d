"""Volunteer points through HTTP, the real store (SQLite and PostgreSQL), NATS and the read models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from infra.bootstrap import Runtime
from infra.clock import ManualClock
from tests.conftest import Auth, body, seed_county, stream_messages
from tests.scenarios import Volunteering


async def test_points_flow_from_service_to_a_gift(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime, nc
) -> None:
    await seed_county(client, auth)
    v = Volunteering(client, auth, clock)
    li = await v.volunteer("李敏")
    wang = await v.volunteer("王芳", party_member=True, branch="县住建局第一党支部", work_unit="县住建局")
    hair = await v.activity(max_hours="2")
    assert (await v.serve(hair, li, hours="3"))["points"] == "20.00"  # 3 h worked, 2 h credited
    assert (await v.serve(hair, wang, hours="1.5"))["points"] == "15.00"
    rice = await v.reward(stock=1, cost="18")
    bought = await v.post(f"/v1/volunteers/{li}/redemptions", {"reward_id": rice}, v.as_volunteer(li))
    assert (bought["balance"], bought["stock"]) == ("2.00", 0)
    refused = await v.post(f"/v1/volunteers/{wang}/redemptions", {"reward_id": rice}, v.as_volunteer(wang), 409)
    assert refused["error"] == {
        "code": "redemption_refused",
        "message": "cannot redeem: the balance of 15.00 points is 3.00 short of the cost of 18.00; "
        "reward '大米 5kg' is out of stock",
    }
    await v.post(f"/v1/volunteers/{wang}/pledges", {"year": clock.now().year, "hours": "12"}, v.as_volunteer(wang))
    await runtime.wait_idle()

    mine = (await client.get(f"/v1/volunteers/{li}", headers=v.as_volunteer(li))).json()
    assert mine["balance"] == "2.00" and [(e["kind"], e["points"]) for e in mine["entries"]] == [
        ("award", "20.00"),
        ("redeem", "-18.00"),
    ]
    board = (await client.get("/v1/communities/tishu/leaderboard", headers=v.organiser)).json()
    assert [(row["rank"], row["volunteer_id"]) for row in board] == [(1, li), (2, wang)]
    catalogue = (await client.get("/v1/rewards?community=tishu", headers=v.as_volunteer(li))).json()
    assert [(r["name"], r["stock"], r["handed_out"]) for r in catalogue] == [("大米 5kg", 0, 1)]
    roster = (await client.get(f"/v1/activities/{hair}", headers=v.organiser)).json()
    assert [(r["volunteer_id"], r["credited_hours"], r["points"]) for r in roster["roster"]] == [
        (li, "2.00", "20.00"),
        (wang, "1.50", "15.00"),
    ]
    service = (await client.get("/v1/party-service?community=tishu", headers=auth("community", "tishu"))).json()
    assert service == [
        {
            "volunteer_id": wang,
            "name": "王芳",
            "community_id": "tishu",
            "branch": "县住建局第一党支部",
            "pledged_hours": "12.00",
            "pledged_service": None,
            "served_hours": "1.50",
            "fulfilled": False,
        }
    ]
    branches = (await client.get("/v1/party-service/branches", headers=auth("district", "dangtu"))).json()
    assert branches == [
        {
            "branch": "县住建局第一党支部",
            "year": clock.now().year,
            "members": 1,
            "pledged": 1,
            "fulfilled": 0,
            "pledged_hours": "12.00",
            "served_hours": "1.50",
        }
    ]
    rate = (await client.get("/v1/communities/tishu/participation", headers=auth("street", "gushu"))).json()
    assert rate == {
        "community_id": "tishu",
        "year": clock.now().year,
        "residents": 12000,
        "volunteers_served": 2,
        "per_1000_residents": "0.17",
    }
    redemptions = (await client.get(f"/v1/redemptions?volunteer={li}", headers=v.as_volunteer(li))).json()
    assert [(r["reward_name"], r["points"]) for r in redemptions] == [("大米 5kg", "18.00")]

    subjects = [m.subject for m in await stream_messages(nc, "BATON_EVENTS", "baton.evt.volunteer.>")]
    assert subjects.count("baton.evt.volunteer.points_awarded") == 2
    assert "baton.evt.volunteer.points_redeemed" in subjects and "baton.evt.volunteer.pledged" in subjects


async def test_the_same_award_twice_credits_once(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime, baton
) -> None:
    await seed_county(client, auth)
    v = Volunteering(client, auth, clock)
    li = await v.volunteer()
    act = await v.activity()
    first = await v.serve(act, li, headers={"Idempotency-Key": "confirm-li"})
    before = baton.store.max_position()
    retry = await v.post(
        f"/v1/activities/{act}/attendance",
        {"volunteer_id": li, "hours": "3"},
        {**v.organiser, "Idempotency-Key": "confirm-li"},
    )
    assert retry == first and baton.store.max_position() == before
    again = await v.post(f"/v1/activities/{act}/attendance", {"volunteer_id": li, "hours": "3"}, v.organiser, 409)
    assert again["error"]["code"] == "already_credited"
    await runtime.wait_idle()
    ledger = (await client.get(f"/v1/volunteers/{li}", headers=v.as_volunteer(li))).json()
    assert [e["kind"] for e in ledger["entries"]] == ["award"] and ledger["balance"] == "30.00"


async def test_a_complaint_voids_credit_with_reversing_entries(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    v = Volunteering(client, auth, clock)
    li, wang = await v.volunteer(), await v.volunteer("王芳")
    act = await v.activity()
    await v.serve(act, li)
    await v.serve(act, wang)
    voided = await v.post(f"/v1/activities/{act}/void", {"reason": "居民投诉：活动未实际开展"}, v.organiser, 200)
    assert voided["reversed"] == 2
    await v.post(f"/v1/activities/{act}/void", {"reason": "again"}, v.organiser, 409)
    await runtime.wait_idle()
    ledger = (await client.get(f"/v1/volunteers/{li}", headers=v.organiser)).json()
    assert [(e["kind"], e["points"], e["balance"]) for e in ledger["entries"]] == [
        ("award", "30.00", "30.00"),
        ("void", "-30.00", "0.00"),
    ]
    assert ledger["hours"] == "0.00" and ledger["voided"] == "-30.00"
    roster = (await client.get(f"/v1/activities/{act}", headers=v.organiser)).json()
    assert roster["status"] == "voided" and all(r["voided"] for r in roster["roster"])


async def test_points_lapse_at_year_end_through_the_watcher(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    clock.set(datetime(2026, 12, 20, 4, tzinfo=UTC))
    v = Volunteering(client, auth, clock)
    r = await client.put(
        "/v1/communities/tishu/points-policy",
        json={"kind": "year_end", "years": 1},
        headers=auth("community", "tishu"),
    )
    assert r.status_code == 200, r.text
    li = await v.volunteer()
    await v.serve(await v.activity(), li)
    await runtime.wait_idle()
    assert (await client.get(f"/v1/volunteers/{li}", headers=v.organiser)).json()["next_expiry_at"] == (
        "2026-12-31T16:00:00+00:00"
    )
    clock.set(datetime(2026, 12, 31, 15, 59, tzinfo=UTC))
    assert (await asyncio.to_thread(runtime.watcher.tick)).expired == 0
    clock.set(datetime(2026, 12, 31, 16, 1, tzinfo=UTC))  # past midnight in Asia/Shanghai
    assert (await asyncio.to_thread(runtime.watcher.tick)).expired == 1
    await runtime.wait_idle()
    assert (await asyncio.to_thread(runtime.watcher.tick)).expired == 0
    ledger = (await client.get(f"/v1/volunteers/{li}", headers=v.organiser)).json()
    assert [(e["kind"], e["points"]) for e in ledger["entries"]] == [("award", "30.00"), ("expire", "-30.00")]
    assert ledger["balance"] == "0.00" and ledger["next_expiry_at"] is None


async def test_twenty_concurrent_redemptions_of_the_last_five_items(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime, backend: str
) -> None:
    await seed_county(client, auth)
    v = Volunteering(client, auth, clock)
    act = await v.activity(capacity=20)
    people = [await v.volunteer(f"志愿者{i}") for i in range(20)]
    for person in people:
        await v.serve(act, person, hours="2")  # 20 points each
    towel = await v.reward(stock=5, cost="15", name="毛巾")
    answers = await asyncio.gather(
        *(
            client.post(f"/v1/volunteers/{p}/redemptions", json={"reward_id": towel}, headers=v.as_volunteer(p))
            for p in people
        )
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * 5 + [409] * 15, [a.text for a in answers if a.status_code not in (201, 409)]
    for refused in (a for a in answers if a.status_code == 409):
        assert refused.json()["error"] == {
            "code": "redemption_refused",
            "message": "cannot redeem: reward '毛巾' is out of stock",
        }
    await runtime.wait_idle()
    catalogue = (await client.get("/v1/rewards?community=tishu", headers=v.organiser)).json()
    assert [(r["stock"], r["handed_out"]) for r in catalogue] == [(0, 5)]
    balances = [(await client.get(f"/v1/volunteers/{p}", headers=v.organiser)).json()["balance"] for p in people]
    assert sorted(balances) == ["20.00"] * 15 + ["5.00"] * 5


async def test_scopes(client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime) -> None:
    await seed_county(client, auth)
    v = Volunteering(client, auth, clock)
    li, wang = await v.volunteer(), await v.volunteer("王芳")
    act = await v.activity()
    await v.serve(act, li)
    rice = await v.reward(stock=3)
    other_organiser = auth("organiser", "qingshan", "sun")
    r = await client.post(
        f"/v1/activities/{act}/attendance", json={"volunteer_id": wang, "hours": "1"}, headers=other_organiser
    )
    assert r.status_code == 403 and "own community" in r.json()["error"]["message"]
    r = await client.post(f"/v1/volunteers/{li}/redemptions", json={"reward_id": rice}, headers=v.as_volunteer(wang))
    assert r.status_code == 403 and "themself" in r.json()["error"]["message"]
    r = await client.post(f"/v1/volunteers/{li}/redemptions", json={"reward_id": rice}, headers=v.organiser)
    assert r.status_code == 403
    r = await client.post(
        "/v1/activities",
        json={
            "community_id": "tishu",
            "title": "t",
            "starts_at": "2026-03-03T09:00:00+08:00",
            "ends_at": "2026-03-03T11:00:00+08:00",
            "place": "p",
            "capacity": 5,
            "points_per_hour": "10",
            "max_hours_per_person": "2",
        },
        headers=v.as_volunteer(li),
    )
    assert r.status_code == 403
    await runtime.wait_idle()
    assert (await client.get(f"/v1/volunteers/{li}", headers=v.as_volunteer(wang))).status_code == 403
    assert (await client.get(f"/v1/volunteers/{li}", headers=other_organiser)).status_code == 403
    assert (await client.get(f"/v1/volunteers/{li}", headers=auth("street", "gushu"))).status_code == 200
    assert (await client.get("/v1/communities/tishu/leaderboard", headers=other_organiser)).status_code == 403


async def test_volunteering_events_reach_nats_like_the_rest(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime, nc
) -> None:
    await seed_county(client, auth)
    v = Volunteering(client, auth, clock)
    li = await v.volunteer()
    await v.serve(await v.activity(), li)
    await runtime.wait_idle()
    messages = await stream_messages(nc, "BATON_EVENTS", "baton.evt.activity.>")
    assert [m.subject for m in messages] == [
        "baton.evt.activity.published",
        "baton.evt.activity.signed_up",
        "baton.evt.activity.attendance_confirmed",
    ]
    confirmed = body(messages[-1])
    assert confirmed["data"]["points"] == "30.00" and confirmed["actor"]["role"] == "organiser"
