"""The demo's residents' reports (民情诉求: 居民提、社区管、部门办).

Residents raise reports through the 民情e站 mini-program and a civic app (both over Open311, placed by lat/long in
the grid whose boundary holds it), the 12345 hotline and walk-ins (taken down by the community). The community
accepts and resolves most itself, merges duplicates into the open report nearby, closes a few as unreasonable and
escalates the rest into whistles, which the departments then handle as the whistle stories have them. Residents rate
the result with their tracking code, or staff record the rating they gave on the callback (回访).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import httpx

from demo.county import GIVEN, SURNAMES, County
from infra.bootstrap import Container, Runtime
from infra.clock import ManualClock
from services.access import Actor, Context, Role

Post = Callable[..., Awaitable[httpx.Response]]
Auth = Callable[..., dict[str, str]]
Evaluate = Callable[[str], AsyncIterator[datetime]]
WhistleLife = Callable[..., AsyncIterator[datetime]]

REPORTS_PER_DAY = (2, 5)
"""Reports raised a day across the county, in waking hours (07:00-22:00 in Dangtu)."""
PRELUDE_PER_DAY = (1, 2)
"""Reports raised a day last December (the prelude plays fewer, to keep the demo's run time)."""
LOCAL = timedelta(hours=8)
"""Asia/Shanghai's offset from UTC."""
APPS = [("civic-app", "open311"), ("wechat-estation", "e_station")]
"""The Open311 clients: a civic app, and the 民情e站 mini-program's backend."""
CHANNELS = [("e_station", 36), ("open311", 18), ("hotline_12345", 28), ("walk_in", 18)]
PATHS = [
    ("resolved", 58),  # accepted, progress recorded, resolved by the community, rated
    ("reopened", 9),  # rated dissatisfied: reopened, resolved again, rated
    ("merged", 8),  # a duplicate of an open report nearby
    ("unreasonable", 5),  # 不合理诉求, closed with the reason the resident is told
    ("escalated", 16),  # 吹哨: a whistle handles it
    ("late_triage", 5),  # triaged past its 24 hours; in the last days, not triaged at all
    ("unrated", 2),  # resolved, and the resident never rates nor answers the callback
]
CATEGORIES = [
    ("drainage", 14),
    ("greening", 12),
    ("street_vending", 11),
    ("neighbour_dispute", 11),
    ("public_security", 10),
    ("old_housing", 10),
    ("water_outage", 8),
    ("elderly_care", 7),
    ("wage_arrears", 6),
    ("health_service", 6),
    ("school_safety", 5),
]
COMPLAINTS = {
    "drainage": ["下水道堵塞，污水漫到楼道口", "雨水井盖缺失，夜里有人差点踩空", "化粪池外溢，气味很大"],
    "water_outage": ["整栋楼停水一天了，没有接到通知", "水压太低，五楼以上用不上水"],
    "public_security": ["楼道里常有陌生人逗留", "小区电动车棚夜里被盗", "路灯坏了一个月，晚上不敢出门"],
    "street_vending": ["菜市场门口占道经营，车辆过不去", "夜市烧烤油烟和噪音扰民"],
    "school_safety": ["放学时校门口车辆乱停", "学校周边有无证流动摊点"],
    "old_housing": ["外墙瓷砖脱落，砸到楼下车辆", "屋顶漏水，下雨天家里要接水", "老旧小区加装电梯，邻居意见不一"],
    "elderly_care": ["隔壁独居老人好几天没出门了", "困难老人冬季取暖有困难"],
    "wage_arrears": ["装修队拖欠工人工资", "物业公司拖欠保洁员工资"],
    "health_service": ["社区卫生站慢病配药不方便", "签约家庭医生后一直没人随访"],
    "neighbour_dispute": ["楼上漏水到我家，协商不成", "邻居家的狗夜里叫个不停"],
    "greening": ["绿化带被人占了种菜", "小区枯树有倒伏危险", "绿地里堆放建筑垃圾"],
}
ROADS = ["姑孰路", "太白路", "青山路", "湖东路", "护河路", "黄池路", "大公圩路", "江东大道"]
NOTES = ["网格员已到现场核实", "已联系物业公司上门查看", "已约相关方当面协调", "已安排施工队，材料到位后处理"]
RESULTS = ["已协调物业处理完毕，现场恢复正常", "已组织调解，双方达成一致", "已清理完毕并安排网格员定期巡查"]
REASONS = [
    "属个人合同纠纷，不属社区受理范围，已告知可申请人民调解或诉讼",
    "要求社区承担个人房屋装修费用，无政策依据",
    "同一事项已办结并回访满意，本次反映无新情况",
    "要求拆除邻居依规安装的空调外机，经核实符合规定",
]
UNHAPPY = ["问题还没有彻底解决", "处理后没几天又出现了", "只是临时处理，没有根治"]
# The town's map: communities in rows of three, each a block of grids in rows of four.
ORIGIN = (31.528, 118.455)
"""The map's south-west corner (lat, long); its middle is near 31.55 / 118.49."""
CELL = (0.004, 0.005)
"""A grid's cell, degrees of (lat, long): about 445 m by 475 m."""
GAP = 0.0002
"""Degrees left between neighbouring grids, so that no two boundaries touch."""


class Counts(Protocol):
    """The demo's tally of commands sent."""

    commands_http: int
    refused: Counter[str]


@dataclass
class Filed:
    """A report this demo raised, as its resident and its community know it."""

    report_id: str
    code: str
    community: str
    category: str
    grid: str
    channel: str
    lat: float | None
    long: float | None


def grid_boxes(county: County) -> dict[str, tuple[float, float, float, float]]:
    """Each grid's rectangle (south, west, north, east) in WGS-84 degrees; none overlaps or touches another."""
    boxes = {}
    for c, community in enumerate(county.communities):
        row, column = divmod(c, 3)
        base_lat = ORIGIN[0] + row * (2 * CELL[0] + GAP)
        base_long = ORIGIN[1] + column * (4 * CELL[1] + GAP)
        for g, grid in enumerate(county.grids[community]):
            r, k = divmod(g, 4)
            south, west = base_lat + r * CELL[0], base_long + k * CELL[1]
            boxes[grid] = (
                round(south + GAP / 2, 6),
                round(west + GAP / 2, 6),
                round(south + CELL[0] - GAP / 2, 6),
                round(west + CELL[1] - GAP / 2, 6),
            )
    return boxes


class ResidentsDemo:
    """Boundaries and Open311 keys at set-up, then residents' reports along the paths they take."""

    def __init__(
        self,
        county: County,
        baton: Container,
        runtime: Runtime,
        clock: ManualClock,
        http: httpx.AsyncClient,
        post: Post,
        auth: Auth,
        tally: Counts,
        whistle_life: WhistleLife,
        fates: list[tuple[str, int]],
    ) -> None:
        self.county, self.baton, self.runtime, self.clock = county, baton, runtime, clock
        self.http, self.post, self.auth, self.tally = http, post, auth, tally
        self.whistle_life, self.fates = whistle_life, fates
        self.rng = random.Random(12345)
        self.boxes = grid_boxes(county)
        self.categories = {c["code"]: c for c in county.categories}
        self.names = {u["id"]: u["name"] for u in county.units}
        self.keys: dict[str, str] = {}
        self.open: dict[str, Filed] = {}
        self.paths: Counter[str] = Counter()
        self.ratings: Counter[str] = Counter()
        self.example: str | None = None

    async def setup(self) -> None:
        """Draw every grid's boundary, so coordinates place a report; issue the two apps' Open311 keys."""
        admin = self.auth("admin")
        for grid, (south, west, north, east) in self.boxes.items():
            ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
            r = await self.post(
                f"/v1/org/units/{grid}/boundary", {"type": "Polygon", "coordinates": [ring]}, admin, "PUT"
            )
            if r.status_code != 200:
                raise RuntimeError(f"boundary of {grid}: {r.status_code} {r.text}")
        ctx = Context(actor=Actor(Role.ADMIN, None, "demo"), correlation_id="demo-open311-keys")
        for name, channel in APPS:
            _, self.keys[channel] = await asyncio.to_thread(
                self.baton.credentials.issue_open311_key, ctx, name, channel
            )

    def stories(self, start: datetime, days: int, *, prelude: bool = False) -> list[AsyncIterator[datetime]]:
        """A story for each report raised over these days (fewer a day in the prelude); after the last days played,
        three more that their communities have not triaged by the end, one of them a walk-in at 提署."""
        rng, end = self.rng, start + timedelta(days=days)
        first = (start + LOCAL).replace(hour=0, minute=0, second=0, microsecond=0) - LOCAL
        out = []
        for day in range(days + 1):
            for _ in range(rng.randint(*(PRELUDE_PER_DAY if prelude else REPORTS_PER_DAY))):
                moment = first + timedelta(days=day, hours=rng.uniform(7, 22))
                if start < moment < end:
                    out.append(self.story(moment, None if prelude else end))
        if not prelude:
            out.append(self.story(end - timedelta(hours=30), end, "untriaged", channel="walk_in", community="tishu"))
            out.append(self.story(end - timedelta(hours=41), end, "untriaged", channel="e_station"))
            out.append(self.story(end - timedelta(hours=53), end, "untriaged", channel="hotline_12345"))
        return out

    # A report's story ----------------------------------------------------------------------

    async def story(
        self,
        start: datetime,
        end: datetime | None,
        path: str | None = None,
        *,
        channel: str | None = None,
        community: str | None = None,
    ) -> AsyncIterator[datetime]:
        """One report from raising to the resident's rating, along a path drawn at random; one raised in the last
        days before end is left untriaged instead of triaged late."""
        rng = self.rng
        path = path or rng.choices([p for p, _ in PATHS], weights=[w for _, w in PATHS])[0]
        if path == "late_triage" and end is not None and start > end - timedelta(days=4):
            path = "untriaged"  # raised in the last days: still waiting for triage at the end
        channel = channel or rng.choices([c for c, _ in CHANNELS], weights=[w for _, w in CHANNELS])[0]
        community = community or rng.choice(self.county.communities)
        category = rng.choices([c for c, _ in CATEGORIES], weights=[w for _, w in CATEGORIES])[0]
        grid = rng.choice(self.county.grids[community])
        yield start
        near = None
        if path == "merged":
            near = self.duplicated()
            if near is None:
                path = "resolved"
            else:
                community, category, grid = near.community, near.category, near.grid
        filed = await self.raise_report(channel, community, grid, category, near)
        if filed is None:
            return
        self.open[filed.report_id] = filed
        self.paths[path] += 1
        if path == "untriaged":
            return  # the watcher records its missed triage deadline
        staff = self.auth("community", community)
        triage = rng.uniform(26, 44) if path == "late_triage" else rng.uniform(0.3, 16)
        yield start + timedelta(hours=triage)
        if path == "merged" and await self.merge(filed, staff):
            return
        if path == "unreasonable":
            r = await self.post(
                f"/v1/reports/{filed.report_id}/close-unreasonable", {"reason": rng.choice(REASONS)}, staff
            )
            if r.status_code == 200:
                self.open.pop(filed.report_id, None)
            return
        if path == "escalated":
            async for moment in self.escalate(filed, staff):
                yield moment
            return
        await self.post(f"/v1/reports/{filed.report_id}/accept", {}, staff)
        if rng.random() < 0.6:
            yield self.clock.now() + timedelta(hours=rng.uniform(4, 30))
            await self.post(f"/v1/reports/{filed.report_id}/progress", {"note": rng.choice(NOTES)}, staff)
        rounds = 2 if path == "reopened" else 1
        for round_ in range(1, rounds + 1):
            yield self.clock.now() + timedelta(hours=rng.uniform(6, 60) if round_ == 1 else rng.uniform(30, 150))
            await self.post(f"/v1/reports/{filed.report_id}/resolve", {"result": rng.choice(RESULTS)}, staff)
            if path == "unrated":
                return
            yield self.clock.now() + timedelta(hours=rng.uniform(2, 48))
            unhappy = round_ < rounds
            rating = "dissatisfied" if unhappy else rng.choice(["satisfied", "satisfied", "basically_satisfied"])
            await self.rate(filed, rating)
        if path == "reopened" or self.example is None:
            self.example = filed.code  # a tracking code to follow in the closing summary

    async def raise_report(
        self, channel: str, community: str, grid: str, category: str, near: Filed | None
    ) -> Filed | None:
        """居民提: through an app over Open311 (placed by lat/long), or taken down by the community's staff."""
        rng = self.rng
        complaint = rng.choice(COMPLAINTS[category])
        surname, given = rng.choice(SURNAMES), rng.choice(GIVEN) + rng.choice(GIVEN)
        phone = f"1{rng.choice([35, 37, 38, 39, 58, 86])}{rng.randrange(10**8):08d}"
        if channel in ("e_station", "open311"):
            lat, long = self.place(grid, near)
            form = {
                "api_key": self.keys[channel],
                "service_code": category,
                "lat": f"{lat:.6f}",
                "long": f"{long:.6f}",
                "description": complaint,
                "first_name": given,
                "last_name": surname,
                "phone": phone,
            }
            if rng.random() < 0.4:
                form["media_url"] = f"https://img.example.org/dangtu/{rng.getrandbits(48):012x}.jpg"
            self.tally.commands_http += 1
            r = await self.http.post(
                "/open311/v2/requests.json", data=form, headers={"Idempotency-Key": uuid.uuid4().hex}
            )
            if r.status_code != 201:
                self.tally.refused[f"open311_{r.status_code}"] += 1
                return None
            answer = r.json()[0]
            return Filed(answer["service_request_id"], answer["token"], community, category, grid, channel, lat, long)
        body = {
            "channel": channel,
            "category": category,
            "description": ("12345热线转办：" if channel == "hotline_12345" else "居民来访反映：") + complaint,
            "community_id": community,
            "grid_id": grid,
            "address": f"{rng.choice(ROADS)}{rng.randint(1, 300)}号{self.names[community]}{rng.randint(1, 30)}栋",
            "reporter": {"name": surname + given, "phone": phone},
        }
        r = await self.post("/v1/reports", body, self.auth("community", community))
        if r.status_code != 201:
            return None
        created = r.json()
        return Filed(created["report_id"], created["tracking_code"], community, category, grid, channel, None, None)

    def place(self, grid: str, near: Filed | None) -> tuple[float, float]:
        """A point in the grid: a resident's phone's position, or about a hundred metres from the report it repeats."""
        south, west, north, east = self.boxes[grid]
        margin = 0.0003
        if near is not None and near.lat is not None and near.long is not None:
            lat = near.lat + self.rng.uniform(-0.0008, 0.0008)
            long = near.long + self.rng.uniform(-0.0008, 0.0008)
        else:
            lat, long = self.rng.uniform(south, north), self.rng.uniform(west, east)
        lat = min(max(lat, south + margin), north - margin)
        long = min(max(long, west + margin), east - margin)
        return round(lat, 6), round(long, 6)

    def duplicated(self) -> Filed | None:
        """The open report a resident repeats: one of the last raised and still open."""
        recent = list(self.open.values())[-12:]
        return self.rng.choice(recent) if recent else None

    # 社区管 ----------------------------------------------------------------------------------

    async def merge(self, filed: Filed, staff: dict[str, str]) -> bool:
        """Merge a duplicate into the open case GET /v1/reports/{id}/similar suggests first; False when none is."""
        await self.runtime.wait_idle(timeout=60)  # the inbox shows the report just raised
        similar = (await self.http.get(f"/v1/reports/{filed.report_id}/similar", headers=staff)).json()
        if similar.get("reports"):
            body = {"into_report": similar["reports"][0]["report_id"]}
        elif similar.get("whistles"):
            body = {"into_whistle": similar["whistles"][0]["whistle_id"]}
        else:
            self.paths["merged"] -= 1
            self.paths["resolved"] += 1
            return False
        r = await self.post(f"/v1/reports/{filed.report_id}/merge", body, staff)
        if r.status_code == 200:
            self.open.pop(filed.report_id, None)
        return r.status_code == 200

    async def escalate(self, filed: Filed, staff: dict[str, str]) -> AsyncIterator[datetime]:
        """吹哨: some the community first takes on and finds beyond it; the whistle's life follows its own fate."""
        rng = self.rng
        category = self.categories[filed.category]
        fates = [(f, w) for f, w in self.fates if f != "admission_list" or category["duty"] == "department"]
        fate = rng.choices([f for f, _ in fates], weights=[w for _, w in fates])[0]
        urgent = rng.random() < (0.4 if filed.category == "water_outage" else 0.05)
        summoned = list(category["departments"])
        if fate == "never_reports_in" or rng.random() < 0.2:
            summoned.append(rng.choice([d["code"] for d in self.county.departments if d["code"] not in summoned]))
        if rng.random() < 0.3:
            await self.post(f"/v1/reports/{filed.report_id}/accept", {}, staff)
            yield self.clock.now() + timedelta(hours=rng.uniform(4, 24))
            await self.post(f"/v1/reports/{filed.report_id}/progress", {"note": "社区协调未果，需职能部门处理"}, staff)
        body = {
            "title": rng.choice(COMPLAINTS[filed.category]),
            "urgency": "urgent" if urgent else "normal",
            "summoned_departments": summoned,
        }
        r = await self.post(f"/v1/reports/{filed.report_id}/escalate", body, staff)
        if r.status_code != 200:
            return
        whistle = r.json()["whistle_id"]
        evaluate = self.rated(filed, whistle, staff)
        life = self.whistle_life(
            whistle, self.clock.now(), fate, filed.community, category, urgent, summoned, rng, evaluate
        )
        async for moment in life:
            yield moment

    def rated(self, filed: Filed, whistle: str, staff: dict[str, str]) -> Evaluate:
        """评价 of an escalated report's whistle: the resident's rating of the report (it evaluates the whistle); or,
        when nobody rates, the community evaluates the whistle and the report closes with it."""

        async def evaluate(rating: str) -> AsyncIterator[datetime]:
            if self.rng.random() < 0.15:
                await self.post(f"/v1/whistles/{whistle}/evaluate", {"rating": rating}, staff)
                self.ratings["whistle_evaluated"] += 1
                if rating != "dissatisfied":
                    self.open.pop(filed.report_id, None)
                return
            for _ in range(12):  # the report takes the whistle's result on the watcher's next tick
                if (await self.http.get(f"/v1/track/{filed.code}")).json().get("status") == "resolved":
                    await self.rate(filed, rating)
                    return
                yield self.clock.now() + timedelta(hours=1)
            await self.post(f"/v1/whistles/{whistle}/evaluate", {"rating": rating}, staff)

        return evaluate

    # 回访 ------------------------------------------------------------------------------------

    async def rate(self, filed: Filed, rating: str) -> None:
        """The resident rates with the tracking code; or staff record the rating they gave on the callback."""
        comment = self.rng.choice(UNHAPPY) if rating == "dissatisfied" else None
        if self.rng.random() < 0.3:
            body = {"rating": rating, "rated_by": "callback", "comment": comment}
            r = await self.post(f"/v1/reports/{filed.report_id}/rating", body, self.auth("community", filed.community))
            self.ratings["callback"] += 1
        else:
            r = await self.post(f"/v1/track/{filed.code}/rating", {"rating": rating, "comment": comment}, {})
            self.ratings["resident"] += 1
        if r.status_code == 200 and r.json()["status"] == "closed":
            self.open.pop(filed.report_id, None)

    # The summary -----------------------------------------------------------------------------

    async def summary(self, http: httpx.AsyncClient) -> str:
        """Counts by channel and status from the inbox, and GET /v1/reports/rates for the busiest communities."""
        admin = self.auth("admin")
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/v1/reports", params=params, headers=admin)).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        channels = Counter(i["channel"] for i in items)
        statuses = Counter(i["status"] for i in items)
        rates = sorted(
            (await http.get("/v1/reports/rates", headers=admin)).json(), key=lambda r: (-r["raised"], r["community_id"])
        )

        def pct(value: str | None) -> str:
            return f"{Decimal(value) * 100:.1f}%" if value is not None else "-"

        paths = {p: n for p, n in self.paths.most_common() if n}
        return (
            f"Residents' reports (民情诉求): {len(items)}, each resident's name and phone sealed under their own key; "
            f"by channel {dict(channels.most_common())}; by status {dict(statuses.most_common())}; "
            f"overdue now {sum(1 for i in items if i['overdue'])}.\n"
            f"Report paths: {paths}; rated by the resident with the tracking code {self.ratings['resident']} times, "
            f"on the callback {self.ratings['callback']}; escalated ones whose whistle the community evaluated "
            f"instead: {self.ratings['whistle_evaluated']}.\n"
            + "Rates (GET /v1/reports/rates): "
            + "; ".join(
                f"{self.names[r['community_id']]} {r['raised']} raised, response {pct(r['response_rate'])}, "
                f"resolution {pct(r['resolution_rate'])}, satisfaction {pct(r['satisfaction_rate'])}"
                for r in rates[:3]
            )
        )
