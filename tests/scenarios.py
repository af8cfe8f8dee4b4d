"""Scenarios and fixtures' data the test modules share (no test imports another test module)."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.branches import Standard
from infra.backup import backup, restore
from infra.bootstrap import Container, Runtime, bootstrap
from infra.clock import ManualClock
from infra.settings import Settings
from tests.conftest import Auth, blow, body, seed_county, stream_messages
from tests.corpus.record import decompress

ROOT = Path(__file__).resolve().parent.parent

SCHEME = json.loads((ROOT / "standards" / "assessment-scheme-2026.1.json").read_text())
DOCUMENT = json.loads((ROOT / "standards" / "branch-standard-2026.1.json").read_text())
STANDARD = Standard.parse(DOCUMENT)
AUDITOR_FULL = {c.code: c.max for a in STANDARD.aspects for c in a.criteria if c.source == "auditor"}
CORPUS = ROOT / "tests" / "corpus"
CORPORA = sorted(p for p in CORPUS.iterdir() if (p / "corpus.json").is_file())
VOLUNTEERING_META = {"actor": {"role": "organiser", "unit": "tishu", "id": "zhao"}, "correlation_id": "c"}
VOLUNTEERING_T0 = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)
WHISTLE_META = {"actor": {"role": "community", "unit": "tishu", "id": "wang"}, "correlation_id": "c"}
WHISTLE_T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


async def governed_year(client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime) -> None:
    """Whistles, volunteering, branches, two-way ratings and a published scheme."""
    await seed_county(client, auth)
    await play(client, auth, clock, runtime)  # whistles, volunteering and branches
    year = clock.now().year
    for rater, ratee, rating in [
        ("tishu", "PSB", "excellent"),
        ("tishu", "HOUSING", "fair"),
        ("qingshan", "HOUSING", "poor"),
    ]:
        r = await client.post(
            "/v1/evaluations", json={"year": year, "ratee": ratee, "rating": rating}, headers=auth("community", rater)
        )
        assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/evaluations", json={"year": year, "ratee": "tishu", "rating": "good"}, headers=auth("department", "PSB")
    )
    assert r.status_code == 201, r.text
    again = await client.post(
        "/v1/evaluations", json={"year": year, "ratee": "PSB", "rating": "bad"}, headers=auth("community", "tishu")
    )
    assert again.status_code == 409
    r = await client.post("/v1/assessment-schemes", json=SCHEME, headers=auth("admin"))
    assert r.status_code == 201, r.text
    await runtime.wait_idle()


def full_year_log(skip: set[tuple[str, str]] = frozenset()) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Every meeting the cadence asks for, March 2025 to February 2026, and dues on time; minus `skip`."""
    meetings = []
    for month in [f"2025-{m:02d}" for m in range(1, 13)] + ["2026-01", "2026-02"]:
        for kind in ("committee_meeting", "group_meeting", "themed_party_day"):
            if (kind, month) not in skip:
                meetings.append((kind, f"{month}-10"))
        if month[5:] in ("01", "04", "07", "10"):
            for kind in ("general_meeting", "party_lecture"):
                if (kind, month) not in skip:
                    meetings.append((kind, f"{month}-20"))
    dues = {f"2025-{m:02d}": f"2025-{m:02d}-25" for m in range(1, 13)} | {
        "2026-01": "2026-01-25",
        "2026-02": "2026-02-25",
    }
    return meetings, dues


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
    await residents(client, auth)
    clock.advance(timedelta(days=2))
    await runtime.wait_idle()
    assert (await asyncio.to_thread(runtime.watcher.tick)).escalated >= 3
    assert await step(late, "report-in", psb) == 200
    await runtime.wait_idle()


async def residents(client: httpx.AsyncClient, auth: Auth) -> None:
    """Residents' reports through every path: resolved and rated (reopened once), escalated, merged, unreasonable,
    and one left untriaged until its deadline passes."""
    community = auth("community", "tishu", "wang")

    async def post(path: str, payload: dict, status: int = 200) -> dict:
        r = await client.post(path, json=payload, headers=community)
        assert r.status_code == status, r.text
        return dict(r.json())

    report = {"channel": "hotline_12345", "category": "drainage", "community_id": "tishu", "address": "提署路 3 号"}
    reporter = {"name": "李阿姨", "phone": "13900001111"}
    made = [
        await post("/v1/reports", {**report, "description": d, "reporter": reporter}, 201)
        for d in ("积水", "又积水", "井盖松动", "邻居的猫", "路灯不亮")
    ]
    rated, repeat, escalated, unreasonable, _untriaged = made
    await post(f"/v1/reports/{repeat['report_id']}/merge", {"into_report": rated["report_id"]})
    await post(f"/v1/reports/{rated['report_id']}/accept", {})
    await post(f"/v1/reports/{rated['report_id']}/resolve", {"result": "已疏通"})
    r = await client.post(f"/v1/track/{rated['tracking_code']}/rating", json={"rating": "dissatisfied"})
    assert r.status_code == 200, r.text
    await post(f"/v1/reports/{rated['report_id']}/resolve", {"result": "已换管"})
    await post(f"/v1/reports/{rated['report_id']}/rating", {"rating": "satisfied", "rated_by": "callback"})
    whistle = await post(
        f"/v1/reports/{escalated['report_id']}/escalate", {"title": "井盖松动", "summoned_departments": ["URBAN"]}
    )
    # its whistle moves on: the report follows (a rebuild meets both in one batch)
    r = await client.post(f"/v1/whistles/{whistle['whistle_id']}/report-in", headers=auth("department", "URBAN"))
    assert r.status_code == 200, r.text
    await post(f"/v1/reports/{unreasonable['report_id']}/close-unreasonable", {"reason": "不属公共事务"})


class Branches:
    def __init__(self, client: httpx.AsyncClient, auth: Auth) -> None:
        self.client, self.auth = client, auth
        self.inspector = auth("inspector", None, "zhou")

    async def post(self, path: str, payload: dict, headers: dict, status: int = 201) -> dict:
        r = await self.client.post(path, json=payload, headers=headers)
        assert r.status_code == status, r.text
        return dict(r.json())

    async def publish(self, document: dict) -> None:
        await self.post("/v1/standards", document, self.auth("admin"))

    async def register(self, name: str = "提署社区第一党支部", community: str = "tishu") -> tuple[str, dict]:
        body = {
            "name": name,
            "parent_kind": "community",
            "parent_id": community,
            "members": 23,
            "established_on": "2024-06-01",
        }
        branch_id = (await self.post("/v1/branches", body, self.auth("community", community)))["branch_id"]
        return branch_id, self.auth("secretary", branch_id, "secretary-li")

    async def log_year(self, branch_id: str, secretary: dict, skip: set = frozenset()) -> None:
        meetings, dues = full_year_log(skip)
        for kind, day in meetings:
            await self.post(
                f"/v1/branches/{branch_id}/meetings",
                {"kind": kind, "held_on": day, "attendance": 20, "topic": "学习党章"},
                secretary,
            )
        for period, collected_on in dues.items():
            await self.post(
                f"/v1/branches/{branch_id}/dues",
                {"period": period, "amount_yuan": "460", "members_paid": 23, "collected_on": collected_on},
                secretary,
            )

    async def audit(self, branch_id: str, findings: list | None = None, **scores) -> dict:
        body = {"scores": {**{k: str(v) for k, v in AUDITOR_FULL.items()}, **scores}, "findings": findings or []}
        return await self.post(f"/v1/branches/{branch_id}/audits", body, self.inspector)


class Volunteering:
    """Helpers for one community's organiser, volunteers and catalogue."""

    def __init__(self, client: httpx.AsyncClient, auth: Auth, clock: ManualClock, community: str = "tishu"):
        self.client, self.auth, self.clock, self.community = client, auth, clock, community
        self.organiser = auth("organiser", community, "zhao")
        self.starts: dict[str, datetime] = {}

    async def post(self, path: str, payload: dict | None, headers: dict, status: int = 201) -> dict:
        r = await self.client.post(path, json=payload, headers=headers)
        assert r.status_code == status, r.text
        return dict(r.json())

    async def volunteer(self, name: str = "李敏", **extra) -> str:
        result = await self.post(
            "/v1/volunteers", {"community_id": self.community, "name": name, **extra}, self.organiser
        )
        return str(result["volunteer_id"])

    def as_volunteer(self, volunteer_id: str) -> dict:
        return self.auth("volunteer", self.community, volunteer_id)

    async def activity(self, capacity: int = 30, max_hours: str = "4") -> str:
        start = self.clock.now() + timedelta(hours=1)
        payload = {
            "community_id": self.community,
            "title": "敬老院义务理发",
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=3)).isoformat(),
            "place": "敬老院",
            "capacity": capacity,
            "points_per_hour": "10",
            "max_hours_per_person": max_hours,
        }
        activity_id = str((await self.post("/v1/activities", payload, self.organiser))["activity_id"])
        self.starts[activity_id] = start
        return activity_id

    async def serve(self, activity_id: str, volunteer_id: str, hours: str = "3", headers: dict | None = None) -> dict:
        await self.post(
            f"/v1/activities/{activity_id}/signups", {"volunteer_id": volunteer_id}, self.as_volunteer(volunteer_id)
        )
        if self.clock.now() < self.starts[activity_id]:
            self.clock.set(self.starts[activity_id] + timedelta(minutes=30))  # the service happens
        return await self.post(
            f"/v1/activities/{activity_id}/attendance",
            {"volunteer_id": volunteer_id, "hours": hours},
            {**self.organiser, **(headers or {})},
        )

    async def reward(self, stock: int, cost: str = "20", name: str = "大米 5kg") -> str:
        payload = {"community_id": self.community, "name": name, "cost": cost, "stock": stock}
        return str((await self.post("/v1/rewards", payload, self.organiser))["reward_id"])


def history(baton: Container, whistle_id: str) -> list[tuple[str, str | None]]:
    """(event type, department) of each of the whistle's events, oldest first."""
    events = baton.whistles.repository.event_store.get(uuid.UUID(whistle_id))
    return [(type(e).__name__, getattr(e, "department", None)) for e in events]


class Transactions:
    """Counts the store's write transactions by wrapping the recorder."""

    def __init__(self, baton: Container, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        recorder = baton.store.recorder
        for name in ("insert_events", "put", "put_all"):
            monkeypatch.setattr(recorder, name, self._counted(getattr(recorder, name)))

    def _counted(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return method(*args, **kwargs)

        return counted


async def assert_stream_matches_store(nc, baton: Container) -> int:
    """BATON_EVENTS holds each stored event exactly once, in store order, with its dedupe id."""
    messages = await stream_messages(nc, "BATON_EVENTS")
    stored = await asyncio.to_thread(baton.source.envelopes, 0, 1_000_000)
    assert [int(m.headers["Baton-Position"]) for m in messages] == [e.position for e in stored]
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [e.msg_id for e in stored]
    assert [body(m) for m in messages] == [e.body() for e in stored]
    return len(messages)


def differences(then: Any, now: Any, where: str = "") -> list[str]:
    """Where NOW disagrees with THEN; keys NOW has beyond THEN's are additions, not differences."""
    if isinstance(then, dict) and isinstance(now, dict):
        out = []
        for key, value in then.items():
            if key not in now:
                out.append(f"{where}.{key}: gone (was {value!r})")
            else:
                out.extend(differences(value, now[key], f"{where}.{key}"))
        return out
    if isinstance(then, list) and isinstance(now, list):
        if len(then) != len(now):
            return [f"{where}: {len(now)} items, recorded {len(then)}"]
        return [d for i, (a, b) in enumerate(zip(then, now, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if then == now else [f"{where}: {now!r}, recorded {then!r}"]


def load(corpus: Path, data_dir: Path, store: str = "sqlite") -> Container:
    """The corpus opened by today's code at the clock it was recorded at; on PostgreSQL, moved there first with
    `baton backup` and `baton restore` (every event at its position)."""
    unpack(corpus, data_dir)
    if store != "sqlite":
        backup(Settings(data_dir=data_dir, store="sqlite"), data_dir.parent / "corpus.backup")
        (data_dir / "events.sqlite").unlink()
        restore(Settings(data_dir=data_dir, store=store), data_dir.parent / "corpus.backup")
    clock = ManualClock(datetime.fromisoformat(recorded(corpus)["recorded_at"]))
    return bootstrap(Settings(data_dir=data_dir, store=store), clock)


def old_bundle(corpus: Path, out: Path) -> Path:
    """The export bundle as the corpus's release wrote it."""
    shutil.copytree(corpus / "export", out)
    decompress(out / "events.jsonl.xz", out / "events.jsonl")
    (out / "events.jsonl.xz").unlink()
    return out


def unpack(corpus: Path, data_dir: Path) -> None:
    """The corpus's store and keys as a data dir (the read models are not kept: they rebuild)."""
    data_dir.mkdir(parents=True)
    decompress(corpus / "events.sqlite.xz", data_dir / "events.sqlite")
    shutil.copytree(corpus / "keys", data_dir / "keys")


def recorded(corpus: Path) -> dict[str, Any]:
    return dict(json.loads((corpus / "corpus.json").read_text()))
