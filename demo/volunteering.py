"""The demo's volunteering: a December of last year whose points lapse at New Year, then weekly activities."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from demo.county import GIVEN, SURNAMES, County
from demo.stories import run_stories
from infra.bootstrap import Runtime
from infra.clock import ManualClock

Post = Callable[..., Awaitable[httpx.Response]]
Auth = Callable[..., dict[str, str]]

VOLUNTEERS_PER_COMMUNITY = 25
BRANCHES = ["县住建局第一党支部", "县教育局机关党支部", "城关派出所党支部", "县民政局党支部", "当涂农商银行党支部"]
WORK_UNITS = {b: b.removesuffix("党支部").removesuffix("第一").removesuffix("机关") for b in BRANCHES}
REWARDS = [("大米 5kg", "50", 20), ("食用油 5L", "40", 20), ("毛巾", "10", 50), ("理发券", "15", 30)]
ACTIVITIES = ["敬老院义务理发", "小区环境整治", "文明交通劝导", "垃圾分类宣传", "关爱留守儿童", "为老人读报"]


class VolunteeringDemo:
    """Policies, volunteers, catalogue, activities, redemptions, a complaint and a New Year lapse."""

    def __init__(
        self, county: County, clock: ManualClock, runtime: Runtime, post: Post, auth: Auth, rng: random.Random
    ) -> None:
        self.county, self.clock, self.runtime, self.post, self.auth, self.rng = county, clock, runtime, post, auth, rng
        self.volunteers: dict[str, list[str]] = {}
        self.balances: Counter[str] = Counter()
        self.rewards: dict[str, list[tuple[str, Decimal]]] = {}
        self.counts: Counter[str] = Counter()

    def as_volunteer(self, community: str, volunteer_id: str) -> dict[str, str]:
        return self.auth("volunteer", community, volunteer_id)

    async def prelude(self, december: datetime, others: list[AsyncIterator[datetime]]) -> None:
        """December of last year: register, serve (beside the other stories), let New Year lapse year_end points."""
        self.clock.set(december)
        for i, community in enumerate(self.county.communities):
            staff = self.auth("community", community)
            policy = {"kind": "after_years", "years": 2} if i % 3 == 2 else {"kind": "year_end", "years": 1}
            r = await self.post(f"/v1/communities/{community}/points-policy", policy, staff, "PUT")
            self.counts[f"policy_{policy['kind']}"] += 1 if r.status_code < 400 else 0
            await self._register(community)
            await self._catalogue(community)
        weeks = [
            self.activity_story(community, december + timedelta(days=7 * week + 5))
            for week in range(2)
            for community in self.county.communities
        ]
        new_year = datetime(december.year + 1, 1, 1, 2, tzinfo=UTC)
        await run_stories(self.clock, [*weeks, *others], new_year)
        await self.runtime.wait_idle(timeout=60)
        self.counts["lapsed_at_new_year"] = (await asyncio.to_thread(self.runtime.watcher.tick)).expired

    async def _register(self, community: str) -> None:
        organiser = self.auth("organiser", community)
        ids = []
        for _ in range(VOLUNTEERS_PER_COMMUNITY):
            member = self.rng.random() < 0.2
            branch = self.rng.choice(BRANCHES) if member else None
            body = {
                "community_id": community,
                "name": self.rng.choice(SURNAMES) + self.rng.choice(GIVEN) + self.rng.choice(GIVEN),
                "party_member": member,
                "branch": branch,
                "work_unit": WORK_UNITS[branch] if branch else None,
            }
            r = await self.post("/v1/volunteers", body, organiser)
            volunteer_id = r.json()["volunteer_id"]
            ids.append(volunteer_id)
            if member:
                self.counts["party_members"] += 1
                pledge = {
                    "year": self.clock.now().year + 1,
                    "hours": str(self.rng.choice([6, 9, 12, 24])),
                    "service": "每月参加一次社区志愿服务",
                }
                await self.post(
                    f"/v1/volunteers/{volunteer_id}/pledges", pledge, self.as_volunteer(community, volunteer_id)
                )
        self.volunteers[community] = ids
        self.counts["volunteers"] += len(ids)

    async def _catalogue(self, community: str) -> None:
        organiser = self.auth("organiser", community)
        self.rewards[community] = []
        for name, cost, stock in REWARDS:
            r = await self.post(
                "/v1/rewards", {"community_id": community, "name": name, "cost": cost, "stock": stock}, organiser
            )
            self.rewards[community].append((r.json()["reward_id"], Decimal(cost)))

    async def activity_story(self, community: str, day: datetime) -> AsyncIterator[datetime]:
        """One activity: published three days ahead, volunteers sign up, the organiser confirms their hours."""
        rng = self.rng
        organiser = self.auth("organiser", community)
        yield day - timedelta(days=3)
        start = day.replace(hour=1, minute=0, second=0, microsecond=0)  # 09:00 in Shanghai
        body = {
            "community_id": community,
            "title": rng.choice(ACTIVITIES),
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=3)).isoformat(),
            "place": "社区党群服务中心",
            "capacity": 12,
            "points_per_hour": "10",
            "max_hours_per_person": "3",
        }
        activity_id = (await self.post("/v1/activities", body, organiser)).json()["activity_id"]
        self.counts["activities"] += 1
        crew = rng.sample(self.volunteers[community], rng.randint(5, 10))
        for volunteer_id in crew:
            yield self.clock.now() + timedelta(hours=rng.uniform(1, 6))
            await self.post(
                f"/v1/activities/{activity_id}/signups",
                {"volunteer_id": volunteer_id},
                self.as_volunteer(community, volunteer_id),
            )
        yield start + timedelta(hours=4)
        for volunteer_id in crew:
            if rng.random() < 0.1:
                continue  # signed up, never came: no points
            hours = rng.choice(["2", "2.5", "3", "4"])
            r = await self.post(
                f"/v1/activities/{activity_id}/attendance", {"volunteer_id": volunteer_id, "hours": hours}, organiser
            )
            if r.status_code == 201:
                self.counts["confirmations"] += 1
                self.balances[volunteer_id] = Decimal(r.json()["balance"])

    async def shopping_story(self, community: str, day: datetime) -> AsyncIterator[datetime]:
        """A market day: volunteers with points redeem gifts (points and stock together, or a refusal)."""
        yield day + timedelta(hours=self.rng.uniform(1, 9))
        for volunteer_id in self.rng.sample(self.volunteers[community], 6):
            reward_id, cost = self.rng.choice(self.rewards[community])
            if self.balances[volunteer_id] < cost and self.rng.random() < 0.8:
                continue
            r = await self.post(
                f"/v1/volunteers/{volunteer_id}/redemptions",
                {"reward_id": reward_id},
                self.as_volunteer(community, volunteer_id),
            )
            if r.status_code == 201:
                self.counts["redemptions"] += 1
                self.balances[volunteer_id] = Decimal(r.json()["balance"])
            else:
                self.counts["redemptions_refused"] += 1

    async def complaint_story(self, community: str, day: datetime) -> AsyncIterator[datetime]:
        """A resident complains an activity never happened: its credit is voided with reversing entries."""
        activity_id = None
        async for moment in self.activity_story(community, day):
            yield moment
        yield self.clock.now() + timedelta(days=1)
        board = await self.runtime_activities(community)
        if board:
            activity_id = board[0]["activity_id"]
            r = await self.post(
                f"/v1/activities/{activity_id}/void",
                {"reason": "居民投诉：活动未实际开展"},
                self.auth("organiser", community),
            )
            if r.status_code == 200:
                self.counts["voided_activities"] += 1

    async def runtime_activities(self, community: str) -> list[dict[str, Any]]:
        await self.runtime.wait_idle(timeout=60)
        return self.runtime.baton.volunteers.view.activities(community)

    def stories(self, start: datetime, days: int) -> list[AsyncIterator[datetime]]:
        out: list[AsyncIterator[datetime]] = []
        for week in range(max(days // 7, 1)):
            for community in self.county.communities:
                day = start + timedelta(days=7 * week + self.rng.randint(3, 6))
                out.append(self.activity_story(community, day))
                out.append(self.shopping_story(community, day + timedelta(days=1)))
        out.append(self.complaint_story(self.county.communities[0], start + timedelta(days=min(days - 1, 5))))
        return out
