"""Branch standardisation on the real store (SQLite and PostgreSQL), through HTTP, the watcher and the read models."""

from __future__ import annotations

import asyncio
import copy
from datetime import timedelta

import httpx

from infra.bootstrap import Runtime
from infra.clock import ManualClock
from tests.conftest import Auth, seed_county
from tests.scenarios import AUDITOR_FULL, DOCUMENT, Branches


async def test_audits_grades_versions_and_rectifications(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    b = Branches(client, auth)
    await b.publish(DOCUMENT)
    branch, secretary = await b.register()
    await b.log_year(branch, secretary, skip={("committee_meeting", "2025-07")})  # one missed month

    first = await b.audit(branch)
    assert (first["standard_version"], first["grade"]) == ("2026.1", "red_flag")
    assert len(first["rectifications"]) == 1  # the committee cadence finding, due in 30 days

    stricter = copy.deepcopy(DOCUMENT)
    stricter["version"] = "2026.2"
    stricter["grades"][0]["at_least"] = "96"
    await b.publish(stricter)
    clock.advance(timedelta(days=2))
    second = await b.audit(
        branch,
        findings=[
            {
                "text": "党员活动室标识不规范",
                "criterion": "activity_venue",
                "due_on": (clock.now() + timedelta(days=5)).date().isoformat(),
            }
        ],
    )
    assert (second["standard_version"], second["grade"]) == ("2026.2", "exemplary")
    assert len(second["rectifications"]) == 2

    await b.post(
        f"/v1/branches/{branch}/rectifications/{first['rectifications'][0]}/complete",
        {"evidence": "补开7月支委会并补录记录"},
        secretary,
        200,
    )
    clock.advance(timedelta(days=6))
    await runtime.wait_idle()
    tick = await asyncio.to_thread(runtime.watcher.tick)
    assert tick.overdue == 1
    await runtime.wait_idle()
    assert (await asyncio.to_thread(runtime.watcher.tick)).overdue == 0

    detail = (await client.get(f"/v1/branches/{branch}", headers=secretary)).json()
    assert [(a["standard_version"], a["grade"], a["total"]) for a in detail["audit_history"]] == [
        ("2026.1", "red_flag", "95.00"),
        ("2026.2", "exemplary", "95.00"),
    ]
    assert detail["audit_history"][1]["previous_grade"] == "red_flag"
    statuses = {r["rectification_id"]: (r["status"], r["on_time"], r["escalated_to"]) for r in detail["rectifications"]}
    assert statuses[first["rectifications"][0]] == ("completed", True, None)
    venue = next(r for r in detail["rectifications"] if r["criterion"] == "activity_venue")
    assert (venue["status"], venue["escalated_to"]) == ("overdue", "gushu")
    assert (detail["grade"], detail["overdue_rectifications"], detail["escalated_to"]) == ("exemplary", 1, "gushu")

    late = await b.post(
        f"/v1/branches/{branch}/rectifications/{venue['rectification_id']}/complete",
        {"evidence": "标识已更换"},
        secretary,
        200,
    )
    assert late["branch_id"] == branch
    await runtime.wait_idle()
    detail = (await client.get(f"/v1/branches/{branch}", headers=auth("street", "gushu"))).json()
    venue = next(r for r in detail["rectifications"] if r["criterion"] == "activity_venue")
    assert (venue["status"], venue["on_time"]) == ("completed", False)

    first_audit = (await client.get("/v1/standards/2026.1", headers=b.inspector)).json()
    assert first_audit == DOCUMENT  # the earlier version stays as published


async def test_grades_on_the_board_and_the_county_overview(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    b = Branches(client, auth)
    await b.publish(DOCUMENT)
    perfect, s1 = await b.register("提署第一支部")
    weak, _ = await b.register("提署第二支部")
    other, _ = await b.register("太白社区支部", community="taibai")
    await b.log_year(perfect, s1)
    assert (await b.audit(perfect))["grade"] == "red_flag"
    assert (await b.audit(weak, setup_compliant="2", service_projects="2"))["grade"] == "below_standard"
    await runtime.wait_idle()

    overview = (await client.get("/v1/branches/overview", headers=auth("district", "dangtu"))).json()
    assert overview["by_grade"] == {"red_flag": 1, "below_standard": 1, "not_audited": 1}
    street = (await client.get("/v1/branches/overview", headers=auth("street", "gushu"))).json()
    assert street["branches"] == 2
    board = (await client.get("/v1/branches?grade=below_standard", headers=auth("community", "tishu"))).json()
    assert [r["branch_id"] for r in board] == [weak] and board[0]["open_rectifications"] > 5
    assert board[0]["cadence_this_quarter"]["committee_meeting"] == "missed"  # nothing logged this quarter
    rows = (await client.get("/v1/branches", headers=auth("community", "tishu"))).json()
    perfect_row = next(r for r in rows if r["branch_id"] == perfect)
    assert perfect_row["cadence_this_quarter"] == {
        "general_meeting": "met",
        "committee_meeting": "pending",
        "group_meeting": "pending",
        "party_lecture": "met",
        "themed_party_day": "pending",
    }
    assert (await client.get("/v1/branches?community=taibai", headers=auth("community", "tishu"))).status_code == 403
    assert (await client.get(f"/v1/branches/{other}", headers=s1)).status_code == 403

    cadence = (await client.get(f"/v1/branches/{perfect}", headers=s1)).json()["cadence_this_quarter"]
    committee = next(c for c in cadence if c["meeting"] == "committee_meeting")
    assert committee["periods"] == [
        {"period": "2026-01", "held": 1, "status": "met"},
        {"period": "2026-02", "held": 1, "status": "met"},
        {"period": "2026-03", "held": 0, "status": "pending"},
    ]
    general = next(c for c in cadence if c["meeting"] == "general_meeting")
    assert general["periods"] == [{"period": "2026-Q1", "held": 1, "status": "met"}]


async def test_only_inspectors_audit_and_secretaries_log_only_their_branch(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    b = Branches(client, auth)
    r = await client.post("/v1/branches/x/audits", json={"scores": {}}, headers=b.inspector)
    assert r.status_code in (404, 409)
    await b.publish(DOCUMENT)
    one, s1 = await b.register("一支部")
    two, _ = await b.register("二支部")
    meeting = {"kind": "committee_meeting", "held_on": "2026-02-10", "attendance": 9, "topic": "t"}
    assert (await client.post(f"/v1/branches/{two}/meetings", json=meeting, headers=s1)).status_code == 403
    assert (await client.post(f"/v1/branches/{one}/meetings", json=meeting, headers=s1)).status_code == 201
    scores = {"scores": {k: str(v) for k, v in AUDITOR_FULL.items()}}
    for token in (auth("admin"), auth("community", "tishu"), s1, auth("auditor")):
        r = await client.post(f"/v1/branches/{one}/audits", json=scores, headers=token)
        assert r.status_code == 403 and "inspector" in r.json()["error"]["message"]
    r = await client.post(f"/v1/branches/{one}/audits", json={"scores": {"setup_compliant": "10"}}, headers=b.inspector)
    assert r.status_code == 422 and "missing" in r.json()["error"]["message"]
    r = await client.post(
        "/v1/branches",
        json={
            "name": "x",
            "parent_kind": "community",
            "parent_id": "taibai",
            "members": 5,
            "established_on": "2020-01-01",
        },
        headers=auth("community", "tishu"),
    )
    assert r.status_code == 403


async def test_a_standard_must_be_published_before_audits(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    b = Branches(client, auth)
    branch, _ = await b.register()
    r = await client.post(f"/v1/branches/{branch}/audits", json={"scores": {}}, headers=b.inspector)
    assert r.status_code == 409 and "baton standard publish" in r.json()["error"]["message"]
    bad = copy.deepcopy(DOCUMENT)
    bad["aspects"][0]["weight"] = "20"
    r = await client.post("/v1/standards", json=bad, headers=auth("admin"))
    assert r.status_code == 422 and "add up to 100" in r.json()["error"]["message"]


async def test_grade_thresholds_at_their_edges_on_the_store(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    b = Branches(client, auth)
    edge = copy.deepcopy(DOCUMENT)
    edge["version"] = "edge"
    edge["aspects"] = [
        {
            "code": "all",
            "name": "all",
            "weight": "100",
            "criteria": [{"code": "overall", "name": "overall", "max": "100", "source": "auditor"}],
        }
    ]
    await b.publish(edge)
    branch, _ = await b.register()
    grades = []
    for score in ("59.99", "60", "79.99", "80", "89.99", "90"):
        audited = await b.post(f"/v1/branches/{branch}/audits", {"scores": {"overall": score}}, b.inspector)
        grades.append(audited["grade"])
    assert grades == ["below_standard", "standard", "standard", "exemplary", "exemplary", "red_flag"]
    await runtime.wait_idle()
    history = (await client.get(f"/v1/branches/{branch}", headers=b.inspector)).json()["audit_history"]
    assert [(a["total"], a["grade"]) for a in history] == [
        ("59.99", "below_standard"),
        ("60.00", "standard"),
        ("79.99", "standard"),
        ("80.00", "exemplary"),
        ("89.99", "exemplary"),
        ("90.00", "red_flag"),
    ]
