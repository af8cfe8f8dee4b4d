"""The demo's branches: a year of 三会一课 with gaps, dues, audits of every grade, rectifications on time and late."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx

from demo.county import County
from domain.branches import Standard

Post = Callable[..., Awaitable[httpx.Response]]
Auth = Callable[..., dict[str, str]]

STANDARD_FILE = Path(__file__).resolve().parent.parent / "standards" / "branch-standard-2026.1.json"
# (profile, share of auditor points, months with a missed committee meeting, months with late dues)
PROFILES = [
    ("red_flag", "1.0", 0, 0),
    ("exemplary", "0.85", 1, 0),
    ("standard", "0.7", 3, 2),
    ("below_standard", "0.45", 7, 6),
]
TOPICS = [
    "学习党的二十届三中全会精神",
    "讨论社区为民服务项目",
    "发展党员工作",
    "学习党章党规",
    "主题党日：走访困难党员",
]
KINDS_MONTHLY = ("committee_meeting", "group_meeting", "themed_party_day")
KINDS_QUARTERLY = ("general_meeting", "party_lecture")


class BranchesDemo:
    """Branches under communities, departments and enterprises, audited by the county's inspectors."""

    def __init__(self, county: County, post: Post, auth: Auth, rng: random.Random) -> None:
        self.county, self.post, self.auth, self.rng = county, post, auth, rng
        self.document = json.loads(STANDARD_FILE.read_text())
        self.standard = Standard.parse(self.document)
        self.branches: list[tuple[str, dict[str, str], tuple[str, str, int, int]]] = []
        self.members: dict[str, int] = {}
        self.counts: Counter[str] = Counter()

    async def setup(self, today: date) -> None:
        """Publish the standard, register the branches and log the past year of organisational life."""
        await self.post("/v1/standards", self.document, self.auth("admin"))
        places = [("community", c, c) for c in self.county.communities]
        places += [("department", code, None) for code in ("PSB", "HOUSING", "EDU")]
        places += [("enterprise", "当涂农商银行", self.county.communities[0]), ("enterprise", "县自来水公司", None)]
        names = {u["id"]: u["name"] for u in self.county.units}
        names |= {d["code"]: d["name"] for d in self.county.departments}
        for i, (kind, parent, community) in enumerate(places):
            name = f"{names.get(parent, parent)}{'机关' if kind == 'department' else ''}党支部"
            body = {
                "name": name,
                "parent_kind": kind,
                "parent_id": parent,
                "members": self.rng.randint(9, 40),
                "established_on": "2019-06-01",
            }
            if kind == "enterprise" and community:
                body["community_id"] = community
            staff = self.auth("community", community) if kind == "community" else self.auth("admin")
            r = await self.post("/v1/branches", body, staff)
            branch_id = r.json()["branch_id"]
            secretary = self.auth("secretary", branch_id, f"secretary-{i}")
            profile = PROFILES[i % len(PROFILES)]
            self.branches.append((branch_id, secretary, profile))
            self.members[branch_id] = body["members"]
            await self._log_year(branch_id, secretary, body["members"], profile, today)
        self.counts["branches"] = len(self.branches)

    async def _log_year(
        self, branch_id: str, secretary: dict[str, str], members: int, profile: tuple[str, str, int, int], today: date
    ) -> None:
        """Twelve whole months before this one (with the profile's gaps and late dues), and this month so far."""
        _, _, missed_months, late_months = profile
        months = []
        year, month = today.year, today.month
        for _ in range(12):
            month -= 1
            if month == 0:
                year, month = year - 1, 12
            months.append((year, month))
        gaps = set(self.rng.sample(months, missed_months))
        late = set(self.rng.sample(months, late_months))
        for year, month in reversed(months):
            await self.log_month(
                branch_id,
                secretary,
                members,
                year,
                month,
                gaps=(year, month) in gaps,
                late=(year, month) in late,
                by=today,
            )
        await self.log_month(branch_id, secretary, members, today.year, today.month, day=today)

    async def log_month(
        self,
        branch_id: str,
        secretary: dict[str, str],
        members: int,
        year: int,
        month: int,
        *,
        gaps: bool = False,
        late: bool = False,
        day: date | None = None,
        by: date | None = None,
    ) -> None:
        """A month of organisational life: monthly meetings, quarterly ones in a quarter's first month, dues.

        Late dues come on the 8th of the next month, or on `by` (today) if that is sooner: never in the future.
        """

        def on(low: int, high: int) -> date:
            return day or date(year, month, self.rng.randint(low, high))

        for kind in KINDS_MONTHLY:
            if gaps and (kind == "committee_meeting" or self.rng.random() < 0.5):
                continue
            await self._meeting(branch_id, secretary, kind, on(3, 26), members)
        if month in (1, 4, 7, 10):
            for kind in KINDS_QUARTERLY:
                if not (gaps and self.rng.random() < 0.5):
                    await self._meeting(branch_id, secretary, kind, on(10, 28), members)
        collected = date(year + month // 12, month % 12 + 1, 8) if late else on(15, 20)
        if by is not None:
            collected = min(collected, by)
        await self.post(
            f"/v1/branches/{branch_id}/dues",
            {
                "period": f"{year:04d}-{month:02d}",
                "amount_yuan": str(members * 20),
                "members_paid": members,
                "collected_on": collected.isoformat(),
            },
            secretary,
        )

    async def _meeting(self, branch_id: str, secretary: dict[str, str], kind: str, day: date, members: int) -> None:
        attendance = self.rng.randint(max(1, members * 7 // 10), members)
        r = await self.post(
            f"/v1/branches/{branch_id}/meetings",
            {"kind": kind, "held_on": day.isoformat(), "attendance": attendance, "topic": self.rng.choice(TOPICS)},
            secretary,
        )
        if r.status_code == 201:
            self.counts["meetings"] += 1

    def stories(self, start: datetime, days: int, now: Callable[[], datetime]) -> list[AsyncIterator[datetime]]:
        audits = [
            self._audit_story(b, start + timedelta(days=1 + i % max(days // 2, 1), hours=2), now)
            for i, b in enumerate(self.branches)
        ]
        return audits + [self._life_story(b, start, days) for b in self.branches]

    async def _life_story(
        self, branch: tuple[str, dict[str, str], tuple[str, str, int, int]], start: datetime, days: int
    ) -> AsyncIterator[datetime]:
        """Organisational life goes on: each new month in the stretch is logged on its 27th."""
        branch_id, secretary, _ = branch
        end = start + timedelta(days=days)
        year, month = start.year, start.month
        while True:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            moment = datetime(year, month, 27, 2, tzinfo=start.tzinfo)
            if moment > end:
                return
            yield moment
            await self.log_month(branch_id, secretary, self.members[branch_id], year, month)

    async def _audit_story(
        self,
        branch: tuple[str, dict[str, str], tuple[str, str, int, int]],
        when: datetime,
        now: Callable[[], datetime],
    ) -> AsyncIterator[datetime]:
        """The inspector audits; the secretary rectifies some findings on time, lets others go overdue."""
        branch_id, secretary, (_, share, _, _) = branch
        yield when
        scores = {
            c.code: str((c.max * Decimal(share)).quantize(Decimal("0.5")))
            for a in self.standard.aspects
            for c in a.criteria
            if c.source == "auditor"
        }
        findings = []
        if Decimal(share) < 1:
            due = (now() + timedelta(days=self.rng.randint(4, 10))).date().isoformat()
            findings.append({"text": "党员教育管理台账不完整", "criterion": "member_records", "due_on": due})
        r = await self.post(
            f"/v1/branches/{branch_id}/audits",
            {"scores": scores, "findings": findings},
            self.auth("inspector", None, "inspector-zhou"),
        )
        if r.status_code != 201:
            return
        audit = r.json()
        self.counts[f"grade_{audit['grade']}"] += 1
        for rectification_id in audit["rectifications"]:
            if self.rng.random() < 0.4:
                continue  # left open: the watcher marks it overdue and escalates
            yield now() + timedelta(days=self.rng.uniform(1, 3))
            r = await self.post(
                f"/v1/branches/{branch_id}/rectifications/{rectification_id}/complete",
                {"evidence": "已整改，补充完善会议记录和台账"},
                secretary,
            )
            if r.status_code == 200:
                self.counts["rectified"] += 1
