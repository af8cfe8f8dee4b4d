"""`baton rebuild` replays the history into the same read models that live processing built."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from infra.bootstrap import Baton, Runtime
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.settings import Settings
from services.access import Actor, Context, Role
from tests.conftest import Auth, blow, blow_direct, seed_county, seed_county_direct
from tests.test_branches import Branches
from tests.test_branches_domain import DOCUMENT
from tests.test_volunteering import Volunteering


async def play(client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime) -> None:
    """Whistles through every path: on time, late, declined, reopened, escalated, refused by the admission list."""
    community = auth("community", "tishu", "wang")

    async def step(whistle_id: str, action: str, headers: dict, payload: dict | None = None) -> int:
        r = await client.post(f"/v1/whistles/{whistle_id}/{action}", json=payload, headers=headers)
        return r.status_code

    housing, psb, urban = auth("department", "HOUSING"), auth("department", "PSB"), auth("department", "URBAN")
    on_time = await blow(client, auth)
    late = await blow(client, auth, category="security", summoned_departments=["PSB"])
    declined = await blow(client, auth, summoned_departments=["HOUSING", "URBAN"])
    reopened = await blow(client, auth)
    await blow(client, auth, community_id="taibai", summoned_departments=["EDU"], urgency="urgent")

    assert await step(on_time, "report-in", housing) == 200
    assert await step(on_time, "dispatch", community, {"lead_department": "HOUSING", "co_departments": ["PSB"]}) == 200
    assert await step(on_time, "dispatch", community, {"lead_department": "tishu"}) == 409
    assert await step(on_time, "progress", psb, {"note": "patrol"}) == 200
    assert await step(on_time, "complete", housing, {"summary": "cleared"}) == 200
    assert await step(on_time, "feedback", housing, {"result": "done", "resolved": True}) == 200
    assert await step(on_time, "evaluate", community, {"rating": "satisfied"}) == 200

    assert await step(declined, "report-in", urban) == 200
    assert await step(declined, "dispatch", community, {"lead_department": "tishu"}) == 422
    assert await step(declined, "dispatch", community, {"lead_department": "URBAN"}) == 200
    assert await step(declined, "decline", urban, {"reason": "drains are the housing bureau's"}) == 200
    funded = {"lead_department": "tishu", "funding": {"amount_yuan": "8000", "from_department": "HOUSING"}}
    assert await step(declined, "dispatch", community, funded) == 200

    assert await step(reopened, "report-in", housing) == 200
    for _ in range(2):
        assert await step(reopened, "dispatch", community, {"lead_department": "HOUSING"}) == 200
        assert await step(reopened, "complete", housing, {"summary": "done"}) == 200
        assert await step(reopened, "feedback", housing, {"result": "done", "resolved": False}) == 200
        assert await step(reopened, "evaluate", community, {"rating": "dissatisfied"}) == 200

    await volunteer(client, auth, clock)
    await standardise(client, auth, clock)
    clock.advance(timedelta(days=2))
    await runtime.wait_idle()
    assert (await asyncio.to_thread(runtime.watcher.tick)).escalated >= 3
    assert await step(late, "report-in", psb) == 200
    await runtime.wait_idle()


async def volunteer(client: httpx.AsyncClient, auth: Auth, clock: ManualClock) -> None:
    """Points through every path: awards, a capped award, a redemption, a refusal, a void, a pledge, a lapse."""
    r = await client.put(
        "/v1/communities/tishu/points-policy",
        json={"kind": "after_days", "days": 1},
        headers=auth("community", "tishu"),
    )
    assert r.status_code == 200
    v = Volunteering(client, auth, clock)
    li = await v.volunteer()
    wang = await v.volunteer("王芳", party_member=True, branch="城关派出所党支部")
    first, second = await v.activity(), await v.activity(max_hours="1")
    for activity in (first, second):
        await v.serve(activity, li)
        await v.serve(activity, wang)
    towel = await v.reward(stock=1, cost="15", name="毛巾")
    await v.post(f"/v1/volunteers/{li}/redemptions", {"reward_id": towel}, v.as_volunteer(li))
    await v.post(f"/v1/volunteers/{wang}/redemptions", {"reward_id": towel}, v.as_volunteer(wang), 409)
    await v.post(f"/v1/activities/{second}/void", {"reason": "complaint"}, v.organiser, 200)
    await v.post(f"/v1/volunteers/{wang}/pledges", {"year": clock.now().year, "hours": "6"}, v.as_volunteer(wang))


async def standardise(client: httpx.AsyncClient, auth: Auth, clock: ManualClock) -> None:
    """A branch with a logged year, two audits under two standard versions, a rectification done, one overdue."""
    b = Branches(client, auth)
    await b.publish(DOCUMENT)
    branch, secretary = await b.register()
    await b.log_year(branch, secretary, skip={("group_meeting", "2025-11")})
    first = await b.audit(branch)
    await b.post(
        f"/v1/branches/{branch}/rectifications/{first['rectifications'][0]}/complete",
        {"evidence": "done"},
        secretary,
        200,
    )
    await b.publish({**DOCUMENT, "version": "2026.2"})
    due = (clock.now() + timedelta(days=1)).date().isoformat()
    await b.audit(branch, findings=[{"text": "台账不全", "due_on": due}])


@pytest.mark.parametrize("how", ["catch_up", "cli"])
async def test_rebuild_equals_live(
    client: httpx.AsyncClient,
    auth: Auth,
    clock: ManualClock,
    runtime: Runtime,
    baton: Baton,
    settings: Settings,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_county(client, auth)
    await play(client, auth, clock, runtime)
    live = {name: p.view.dump() for name, p in baton.projections.items()}
    assert live["whistle_board"]["baton_whistles"], "the live board is empty"
    kinds = {row["kind"] for row in live["volunteering"]["baton_ledger"]}
    assert kinds == {"award", "redeem", "void", "expire"}, kinds
    statuses = {row["status"] for row in live["branches"]["baton_rectifications"]}
    assert statuses == {"completed", "overdue", "open"}, statuses
    await runtime.stop()

    if how == "cli":
        monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("BATON_STORE", settings.store)
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["rebuild"])
        assert result.exit_code == 0, result.output
        assert "rebuilt up to position" in result.output
    else:
        for projection in baton.projections.values():
            projection.reset()
            assert projection.view.dump() != live[projection.name]
            projection.catch_up(batch_size=7)

    rebuilt = {name: p.view.dump() for name, p in baton.projections.items()}
    assert rebuilt == live


def test_a_batch_reads_and_writes_each_board_row_once(baton: Baton, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_county_direct(baton)
    whistles = blow_direct(baton, 3)
    housing = Context(Actor(Role.DEPARTMENT, "HOUSING", "desk"), "test")
    for whistle_id in whistles:
        baton.whistles.report_in(housing, whistle_id)
    board = baton.board
    board.catch_up(batch_size=1)  # one event per transaction: every row read and written each time
    one_by_one = board.view.dump()
    board.reset()
    reads: list[str] = []
    writes: list[list[str]] = []
    row, save_rows = board.view.row, board.view.save_rows

    def counted_row(tx: Any, whistle_id: str) -> dict[str, Any]:
        reads.append(whistle_id)
        return row(tx, whistle_id)

    def counted_save_rows(tx: Any, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        writes.append([r["whistle_id"] for r in rows])
        save_rows(tx, rows)

    monkeypatch.setattr(board.view, "row", counted_row)
    monkeypatch.setattr(board.view, "save_rows", counted_save_rows)

    board.catch_up(batch_size=1000)

    assert reads == [], "every row was made in this batch, so none is read back"
    assert len(writes) == 1 and sorted(writes[0]) == sorted(whistles)
    assert board.view.dump() == one_by_one
