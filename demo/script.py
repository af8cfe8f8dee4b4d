"""`baton demo`: build the county and play four weeks of whistles through the real command path.

Communities act over HTTP (through the ASGI app, with bearer tokens and idempotency keys); departments
act as department systems would, over NATS (baton.dept.CODE.cmd.*, answered on .outcome). The clock is
a ManualClock that the script moves forward, so weeks pass in seconds and the deadline watcher sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import nats
from nats.aio.client import Client
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.app import create_app
from api.dashboard import DEMO_ACTORS
from api.tokens import Keyring, Tokens
from demo.assessment import AssessmentDemo
from demo.branches import BranchesDemo
from demo.county import GIVEN, SURNAMES, County, build_county
from demo.residents import ResidentsDemo
from demo.stories import run_stories
from demo.volunteering import VolunteeringDemo
from domain.common import year_end
from infra.bootstrap import Container, Runtime, bootstrap
from infra.clock import ManualClock
from infra.jetstream import DEPT_STREAM, department_durable
from infra.keys import write_private
from infra.nats_auth import JS_API_PREFIX
from infra.settings import Settings

DAYS = 28
PRELUDE_DAYS = 10
"""Days of last December on which whistles are blown, so that last year has an assessment to finalise."""
WHISTLES_PER_DAY = (4, 9)
FATES = [
    ("smooth", 50),
    ("late_report_in", 10),
    ("never_reports_in", 5),
    ("declined", 10),
    ("reopened", 8),
    ("reopened_twice", 3),
    ("admission_list", 7),
    ("late_feedback", 7),
]
TITLES = {
    "drainage": ["3号楼下水道堵塞", "小区化粪池外溢", "雨水井盖缺失"],
    "water_outage": ["整栋楼停水两天", "水压不足", "管道爆裂"],
    "public_security": ["楼道可疑人员", "电动车夜间被盗", "路灯损坏治安隐患"],
    "street_vending": ["菜市场门口占道经营", "夜市噪音扰民"],
    "school_safety": ["校门口交通拥堵", "学校周边无证摊点"],
    "old_housing": ["外墙脱落", "老旧小区加装电梯协调", "屋顶漏水"],
    "elderly_care": ["独居老人无人照料", "困难家庭冬季救助"],
    "wage_arrears": ["装修工人讨薪", "物业公司拖欠工资"],
    "health_service": ["慢病随访不到位", "疫苗接种点拥挤"],
    "neighbour_dispute": ["楼上漏水邻里纠纷", "宠物扰民"],
    "greening": ["绿化带被占种菜", "枯树存在安全隐患"],
}


@dataclass
class Tally:
    """What the demo did."""

    commands_http: int = 0
    commands_nats: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    fates: Counter[str] = field(default_factory=Counter)
    reporters: list[tuple[str, str]] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)


def whistle_case(
    rng: random.Random,
    community: str,
    category: str,
    summoned: list[str],
    grid: str,
    *,
    via_grid: bool,
    urgent: bool,
    address: bool = True,
) -> dict[str, Any]:
    """The body of a blown whistle; a resident's report carries their contact details (sealed on arrival)."""
    case: dict[str, Any] = {
        "community_id": community,
        "category": category,
        "title": rng.choice(TITLES[category]),
        "description": "居民通过民情e站反映，社区无法单独解决，吹哨报到。",
        "urgency": "urgent" if urgent else "normal",
        "summoned_departments": summoned,
        "grid_id": grid,
        "source": "grid_patrol" if via_grid else "resident",
    }
    if not via_grid:
        case["reporter"] = {
            "name": rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN),
            "phone": f"139{rng.randrange(10**8):08d}",
        }
        if address:
            case["reporter"]["address"] = (
                f"{rng.randint(1, 30)}栋{rng.randint(1, 6)}单元{rng.randint(1, 18)}0{rng.randint(1, 4)}"
            )
    return case


class Demo:
    """Drives the county through the HTTP API and the NATS intake."""

    def __init__(
        self, baton: Container, runtime: Runtime, http: httpx.AsyncClient, tokens: Tokens, clock: ManualClock, days: int
    ) -> None:
        self.days = days
        self.baton = baton
        self.runtime = runtime
        self.http = http
        self.tokens = tokens
        self.clock = clock
        self.rng = random.Random(2019)
        self.tally = Tally()
        self.county: County = build_county()
        self.categories = {c["code"]: c for c in self.county.categories}
        self._outcomes: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._links: dict[str, Client] = {}
        self._followers: list[asyncio.Task[None]] = []
        self._headers: dict[tuple[str, str | None, str | None], dict[str, str]] = {}
        self.volunteering = VolunteeringDemo(self.county, clock, runtime, self.post, self.auth, self.rng)
        self.branches = BranchesDemo(self.county, self.post, self.auth, self.rng)
        self.assessment = AssessmentDemo(self.county, self.post, self.auth, self.rng)
        self.residents = ResidentsDemo(
            self.county, baton, runtime, clock, http, self.post, self.auth, self.tally, self.whistle_life, FATES
        )

    def auth(self, role: str, unit: str | None = None, actor: str | None = None) -> dict[str, str]:
        key = (role, unit, actor)
        if key not in self._headers:
            actor_id = actor or f"{role}-{unit or 'county'}"
            self._headers[key] = {"Authorization": f"Bearer {self.tokens.issue(role, unit, actor_id)}"}
        return self._headers[key]

    async def post(
        self, path: str, body: dict[str, Any] | None, headers: dict[str, str], method: str = "POST"
    ) -> httpx.Response:
        self.tally.commands_http += 1
        headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        r = await self.http.request(method, path, json=body, headers=headers)
        if r.status_code >= 400:
            self.tally.refused[r.json()["error"]["code"]] += 1
        return r

    async def build_county(self) -> None:
        admin = self.auth("admin")
        steps = [("/v1/org/units", u) for u in self.county.units]
        steps += [("/v1/org/departments", d) for d in self.county.departments]
        steps += [("/v1/org/categories", c) for c in self.county.categories]
        steps += [("/v1/org/cadres", c) for c in self.county.cadres]
        steps += [(f"/v1/org/cadres/{c}/secondment", {"community_id": m}) for c, m in self.county.secondments]
        for path, body in steps:
            r = await self.post(path, body, admin)
            if r.status_code != 201:
                raise RuntimeError(f"{path}: {r.status_code} {r.text}")

    # Department systems over NATS ----------------------------------------------------------

    def _resolve(self, outcome: dict[str, Any]) -> None:
        future = self._outcomes.pop(outcome.get("command_id"), None)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def listen_for_outcomes(self) -> None:
        """Baton's own view of every outcome, as they are published (the departments read theirs below)."""
        assert self.runtime.nc is not None

        async def on_outcome(msg: Any) -> None:
            self._resolve(json.loads(msg.data))

        await self.runtime.nc.subscribe("baton.dept.*.outcome", cb=on_outcome)

    async def follow_departments(self) -> None:
        """Each department system reads and acks its durable consumer (outcomes and inbox), as a real one would."""
        embedded = self.runtime.embedded
        if embedded is None or embedded.auth is None:
            return
        for department in self.county.departments:
            link = await self.link(department["code"])
            js = link.jetstream(prefix=JS_API_PREFIX)
            sub = await js.pull_subscribe_bind(durable=department_durable(department["code"]), stream=DEPT_STREAM)
            self._followers.append(asyncio.create_task(self._follow(sub)))

    async def _follow(self, sub: Any) -> None:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                if msg.subject.endswith(".outcome"):
                    self._resolve(json.loads(msg.data))

    async def link(self, code: str) -> Client:
        """Department CODE's own NATS login on the embedded server (on an external NATS: Baton's connection)."""
        embedded = self.runtime.embedded
        if embedded is None or embedded.auth is None:
            assert self.runtime.nc is not None
            return self.runtime.nc
        if code not in self._links:
            creds = embedded.auth.department(code)
            self._links[code] = await nats.connect(
                self.runtime.url,
                user=creds.user,
                password=creds.password,
                inbox_prefix=creds.inbox_prefix,
                name=f"demo-{code}",
                max_reconnect_attempts=-1,
            )
        return self._links[code]

    async def close(self) -> None:
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        for link in self._links.values():
            await link.close()

    async def department(self, code: str, action: str, whistle_id: str, **fields: Any) -> dict[str, Any]:
        """Send a command as department CODE's system would, on its own login, and wait for its one outcome."""
        command_id = uuid.uuid4().hex
        future = self._outcomes[command_id] = asyncio.get_running_loop().create_future()
        payload = {"command_id": command_id, "whistle_id": whistle_id, **fields}
        link = await self.link(code)
        await link.jetstream().publish(f"baton.dept.{code}.cmd.{action}", json.dumps(payload).encode())
        self.tally.commands_nats += 1
        async with asyncio.timeout(30):
            outcome = await future
        if outcome["status"] == "rejected":
            self.tally.refused[outcome["error"]["code"]] += 1
        return outcome

    async def erase_on_request(self) -> None:
        """A resident asks the community to delete their personal data (PIPL art. 47)."""
        if not self.tally.reporters:
            return
        person, community = self.rng.choice(self.tally.reporters)
        await self.post(
            f"/v1/people/{person}/erase",
            {"reason": "居民申请删除个人信息 (ticket 2026-117)"},
            self.auth("community", community),
        )
        self.tally.erased.append(person)

    # Stories ----------------------------------------------------------------------------------

    async def story(self, start: datetime) -> AsyncIterator[datetime]:
        """One whistle from blow to evaluation, along a fate drawn at random."""
        rng = self.rng
        fate = rng.choices([f for f, _ in FATES], weights=[w for _, w in FATES])[0]
        community = rng.choice(self.county.communities)
        category = self.categories[rng.choice(list(self.categories))]
        if fate == "admission_list" and category["duty"] != "department":
            category = self.categories["drainage"]
        urgent = rng.random() < 0.15
        summoned = list(category["departments"])
        if fate == "never_reports_in" or rng.random() < 0.3:
            summoned.append(rng.choice([d["code"] for d in self.county.departments if d["code"] not in summoned]))
        yield start
        grid = rng.choice(self.county.grids[community])
        via_grid = rng.random() < 0.4
        case = whistle_case(rng, community, category["code"], summoned, grid, via_grid=via_grid, urgent=urgent)
        r = await self.post(
            "/v1/whistles", case, self.auth("grid", grid) if via_grid else self.auth("community", community)
        )
        whistle = r.json()["whistle_id"]
        if r.json().get("reporter_id"):
            self.tally.reporters.append((r.json()["reporter_id"], community))
        async for moment in self.whistle_life(whistle, start, fate, community, category, urgent, summoned, rng):
            yield moment

    async def whistle_life(
        self,
        whistle: str,
        start: datetime,
        fate: str,
        community: str,
        category: dict[str, Any],
        urgent: bool,
        summoned: list[str],
        rng: random.Random,
        evaluate: Callable[[str], AsyncIterator[datetime]] | None = None,
    ) -> AsyncIterator[datetime]:
        """A whistle blown at start, along its fate: report-in, dispatch, handling, feedback and evaluation (by the
        community, or by `evaluate`: for a whistle escalated from a resident's report, the resident's rating)."""
        self.tally.fates[fate] += 1
        community_auth = self.auth("community", community)
        report_in_limit = timedelta(
            minutes=30 if urgent else 120 if category["deadline_class"] == "utilities" else 24 * 60
        )

        # 应哨: each summoned department reports in, on time unless the fate says otherwise.
        laggard = summoned[-1]
        for code in summoned:
            if fate == "never_reports_in" and code == laggard:
                continue
            late = fate == "late_report_in" and code == laggard
            delay = report_in_limit * (rng.uniform(1.3, 2.5) if late else rng.uniform(0.1, 0.8))
            yield start + delay
            await self.department(code, "report_in", whistle)
        lead = category["departments"][0]
        # 派单: the community dispatches; the admission list refuses an unfunded department duty.
        yield self.clock.now() + timedelta(minutes=rng.randint(20, 90))
        if fate == "admission_list":
            await self.post(f"/v1/whistles/{whistle}/dispatch", {"lead_department": community}, community_auth)
            yield self.clock.now() + timedelta(hours=rng.randint(2, 6))
            funding = {"amount_yuan": str(rng.choice([3000, 5000, 8000, 12000])), "from_department": lead}
            await self.post(
                f"/v1/whistles/{whistle}/dispatch", {"lead_department": community, "funding": funding}, community_auth
            )
            yield from_now(self.clock, hours=rng.randint(12, 30))
            await self.post(f"/v1/whistles/{whistle}/progress", {"note": "社区网格员协助施工"}, community_auth)
            yield from_now(self.clock, hours=rng.randint(12, 30))
            await self.post(f"/v1/whistles/{whistle}/complete", {"summary": "已疏通"}, community_auth)
            await self.post(
                f"/v1/whistles/{whistle}/feedback", {"result": "已处理并回访居民", "resolved": True}, community_auth
            )
            yield from_now(self.clock, hours=rng.randint(2, 20))
            async for moment in self.evaluated(whistle, community_auth, "satisfied", evaluate):
                yield moment
            return
        co = [d for d in summoned if d != lead][:1]
        await self.post(
            f"/v1/whistles/{whistle}/dispatch", {"lead_department": lead, "co_departments": co}, community_auth
        )
        if fate == "declined":
            yield from_now(self.clock, hours=rng.randint(1, 8))
            await self.department(lead, "decline", whistle, reason="该事项不属于本部门职责，建议由其他部门牵头")
            others = [d["code"] for d in self.county.departments if d["code"] not in (lead, *co)]
            lead = co[0] if co else rng.choice(others)
            yield from_now(self.clock, hours=rng.randint(1, 6))
            await self.post(f"/v1/whistles/{whistle}/dispatch", {"lead_department": lead}, community_auth)
        feedback_hours = 2 if urgent else {"utilities": 24, "normal": 168, "complex": 360}[category["deadline_class"]]
        rounds = {"reopened": 2, "reopened_twice": 3}.get(fate, 1)
        for round_ in range(1, rounds + 1):
            if round_ > 1:
                yield from_now(self.clock, hours=rng.randint(2, 24))
                await self.post(f"/v1/whistles/{whistle}/dispatch", {"lead_department": lead}, community_auth)
            share = rng.uniform(1.2, 1.6) if fate == "late_feedback" else rng.uniform(0.2, 0.8)
            yield from_now(self.clock, hours=feedback_hours * share / 2)
            await self.department(lead, "progress", whistle, note="已到现场勘查，正在处理")
            yield from_now(self.clock, hours=feedback_hours * share / 2)
            await self.department(lead, "complete", whistle, summary="处理完毕")
            await self.department(lead, "feedback", whistle, result="已处理并向社区和居民反馈", resolved=True)
            yield from_now(self.clock, hours=rng.randint(4, 48))
            unhappy = round_ < rounds
            rating = "dissatisfied" if unhappy else rng.choice(["satisfied", "satisfied", "basically_satisfied"])
            async for moment in self.evaluated(whistle, community_auth, rating, evaluate):
                yield moment

    async def evaluated(
        self,
        whistle: str,
        community_auth: dict[str, str],
        rating: str,
        evaluate: Callable[[str], AsyncIterator[datetime]] | None,
    ) -> AsyncIterator[datetime]:
        """评价: the community evaluates the whistle, or `evaluate` has it rated (yielding while it waits)."""
        if evaluate is None:
            await self.post(f"/v1/whistles/{whistle}/evaluate", {"rating": rating}, community_auth)
            return
        async for moment in evaluate(rating):
            yield moment

    async def watcher(
        self, start: datetime, end: datetime, every: timedelta = timedelta(hours=1)
    ) -> AsyncIterator[datetime]:
        """The deadline watcher, every simulated hour (or as often as asked), until end."""
        moment = start
        while moment + every <= end:
            moment += every
            yield moment
            await self.runtime.wait_idle(timeout=60)
            await asyncio.to_thread(self.runtime.watcher.tick)

    def whistles(self, start: datetime, days: int) -> list[AsyncIterator[datetime]]:
        """A story for each whistle blown over these days, 4 to 9 a day in working hours."""
        stories = []
        for day in range(days):
            for _ in range(self.rng.randint(*WHISTLES_PER_DAY)):
                moment = start + timedelta(days=day, hours=self.rng.uniform(7, 19))
                stories.append(self.story(moment))
        return stories

    async def play(self, start: datetime) -> None:
        end = start + timedelta(days=self.days)
        stories: list[AsyncIterator[datetime]] = [self.watcher(start, end)]
        stories += self.volunteering.stories(start, self.days)
        stories += self.branches.stories(start, self.days, self.clock.now)
        stories += self.whistles(start, self.days)
        stories += self.residents.stories(start, self.days)
        await run_stories(self.clock, stories, end)
        await self.runtime.wait_idle(timeout=60)
        await asyncio.to_thread(self.runtime.watcher.tick)
        await self.runtime.wait_idle(timeout=60)


class Stages:
    """One progress bar per stage of the demo: simulated days played where a stage spans days, else a spinner."""

    def __init__(self, console: Console, clock: ManualClock) -> None:
        self.clock = clock
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/green]"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done]}"),
            TimeElapsedColumn(),
            console=console,
        )

    def __enter__(self) -> Stages:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    @contextlib.asynccontextmanager
    async def stage(self, description: str, until: datetime | None = None) -> AsyncIterator[None]:
        """A stage; with until, its bar follows the simulated clock from now to until, in days."""
        start = self.clock.now()
        days = max((until - start) / timedelta(days=1), 1 / 24) if until else None
        task = self.progress.add_task(description, total=days, done="")

        async def follow() -> None:
            while days is not None:
                played = min(max((self.clock.now() - start) / timedelta(days=1), 0), days)
                self.progress.update(task, completed=played, done=f"day {int(played)}/{round(days)}")
                await asyncio.sleep(0.2)

        following = asyncio.create_task(follow())
        try:
            yield
        finally:
            following.cancel()
            self.progress.update(task, total=days or 1, completed=days or 1, done="")


def from_now(clock: ManualClock, hours: float) -> datetime:
    return clock.now() + timedelta(hours=hours)


def run_demo(settings: Settings, days: int = DAYS) -> int:
    """Fill an empty data dir; print what was done and how to look at it. Returns the exit code."""
    console = Console(soft_wrap=True)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(days=days)
    clock = ManualClock(datetime(start.year - 1, 12, 1, 1, tzinfo=UTC))
    baton = bootstrap(settings, clock)
    try:
        if baton.store.max_position():
            console.print(
                f"[red]The store already holds {baton.store.max_position()} events; "
                "the demo fills an empty one.[/red]\n"
                "Use a fresh data dir, e.g. BATON_DATA_DIR=./var-demo baton demo"
            )
            return 1
        return asyncio.run(_play(baton, clock, settings, console, days, start))
    finally:
        baton.close()


async def _play(
    baton: Container, clock: ManualClock, settings: Settings, console: Console, days: int, start: datetime
) -> int:
    runtime = Runtime(baton, watch=False)
    keyring = Keyring.load(settings.data_dir, settings.token_secret, baton.store.secrets)
    tokens = Tokens(keyring, timedelta(days=settings.token_ttl_days))
    await runtime.start()
    try:
        app = create_app(baton, tokens, rate_limit=0)  # weeks played in a minute: no per-token rate limit
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.demo") as http:
            demo = Demo(baton, runtime, http, tokens, clock, days)
            await demo.listen_for_outcomes()
            with Stages(console, clock) as stages:
                async with stages.stage("building the county"):
                    await demo.build_county()
                    await demo.residents.setup()
                    await runtime.wait_idle(timeout=60)  # and the departments' NATS logins
                    await demo.follow_departments()
                december = clock.now()
                # Ticks stop before local midnight: the prelude's own last tick lapses the year_end points.
                last_tick = year_end(december.year) - timedelta(hours=1)
                async with stages.stage("last December's whistles and volunteering, and New Year", until=last_tick):
                    await demo.assessment.publish()
                    whistles = [demo.watcher(december, last_tick, every=timedelta(hours=6))]
                    whistles += demo.whistles(december, min(days, PRELUDE_DAYS))
                    whistles += demo.residents.stories(december, min(days, PRELUDE_DAYS), prelude=True)
                    await demo.volunteering.prelude(december, whistles)
                async with stages.stage(f"two-way evaluation and the {december.year} assessment, finalised"):
                    await demo.assessment.rate(december.year)
                    await demo.assessment.finalise(december.year)
                clock.set(start)
                async with stages.stage("a year of branches' organisational life"):
                    await demo.branches.setup(baton.branches.today(start))
                async with stages.stage(f"{days} days of governance", until=start + timedelta(days=days)):
                    await demo.play(start)
                async with stages.stage("this year's two-way evaluation, an erasure, the signed checkpoint"):
                    await demo.assessment.rate(clock.now().year)
                    await demo.assessment.try_to_finalise(clock.now().year)
                    await demo.erase_on_request()
                    await runtime.wait_idle(timeout=60)
                    await asyncio.to_thread(baton.notary.catch_up)
                    await asyncio.to_thread(baton.notary.sign)
            await demo.close()
            await summarise(demo, http, console, settings)
    finally:
        await runtime.stop()
    return 0


async def summarise(demo: Demo, http: httpx.AsyncClient, console: Console, settings: Settings) -> None:
    """Print what happened, from the read models, and how to look at it."""
    admin = demo.auth("admin")
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = (
            await http.get(
                "/v1/whistles", params={"limit": 200, **({"cursor": cursor} if cursor else {})}, headers=admin
            )
        ).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    county = demo.county
    console.print(
        f"\n[bold]County[/bold]: 当涂县, {len(county.communities)} communities ({county.residents:,} residents), "
        f"{sum(len(g) for g in county.grids.values())} grids, {len(county.departments)} departments, "
        f"{len(county.cadres)} part-time cadres seconded to communities."
    )
    statuses = Counter(i["status"] for i in items)
    table = Table(title=f"{len(items)} whistles: last December's and the last {demo.days} days'")
    table.add_column("status")
    table.add_column("whistles", justify="right")
    for status, n in statuses.most_common():
        table.add_row(status, str(n))
    console.print(table)
    escalated = sum(1 for i in items if i["escalation_level"] > 0)
    console.print(
        f"Paths: {dict(demo.tally.fates)}\n"
        f"Overdue now: {sum(1 for i in items if i['overdue'])}; escalated: {escalated}; "
        f"declines: {sum(i['declines'] for i in items)}; reopens: {sum(i['reopens'] for i in items)}\n"
        f"Commands: {demo.tally.commands_http} over HTTP, {demo.tally.commands_nats} over NATS; "
        f"refused as expected: {dict(demo.tally.refused)}\n"
        f"Events in the store: {demo.baton.store.max_position()}, all published to BATON_EVENTS.\n"
        f"Personal data: {len(demo.tally.reporters)} residents' contact details sealed, each under its own key; "
        f"erased on request: {', '.join(demo.tally.erased) or 'none'}."
    )
    console.print(await demo.residents.summary(http))
    cards = (await http.get("/v1/scorecards", headers=admin)).json()
    table = Table(title="Department scorecards")
    for column in ("department", "summoned", "report-in on time %", "handled on time %", "satisfaction %", "declines"):
        table.add_column(column, justify="right")
    for c in cards:
        table.add_row(
            c["department"],
            str(c["summoned"]),
            str(c["report_in_on_time_pct"]),
            str(c["handled_on_time_pct"]),
            str(c["satisfaction_pct"]),
            str(c["declines"]),
        )
    console.print(table)
    await summarise_volunteering(demo, http, console)
    await summarise_assessment(demo, http, console)
    overview = (await http.get("/v1/branches/overview", headers=admin)).json()
    counts = demo.branches.counts
    console.print(
        f"Branches: {counts['branches']} (community, department, enterprise), {counts['meetings']} meetings of "
        f"三会一课 and themed party days logged; grades now {overview['by_grade']}; rectifications completed "
        f"{counts['rectified']}, open {overview['open_rectifications']} of which overdue and escalated "
        f"{overview['overdue_rectifications']}."
    )
    base = f"http://{settings.http_host}:{settings.http_port}"

    def token(role: str, unit: str | None = None) -> str:
        return demo.auth(role, unit)["Authorization"].split(" ", 1)[1]

    actors = [
        ("县管理员 county admin", "admin", None),
        ("当涂县 district", "district", "dangtu"),
        ("姑孰镇 street", "street", "gushu"),
        ("提署社区 community", "community", "tishu"),
        ("县公安局城关派出所 department PSB", "department", "PSB"),
        ("考核组 auditor", "auditor", None),
    ]
    # The dashboard's sign-in offers these, and only for a data dir `baton demo` filled (the file says so).
    write_private(
        settings.data_dir / DEMO_ACTORS,
        json.dumps(
            [{"label": label, "role": role, "unit": unit, "token": token(role, unit)} for label, role, unit in actors],
            ensure_ascii=False,
            indent=2,
        ),
    )
    print(
        f"\nLook at it (tokens are valid for {settings.token_ttl_days} days; the dashboard at {base}/ signs in "
        "as any of the demo's actors):\n"
        "  baton serve &\n"
        f"  curl -s {base}/health\n"
        f"  ADMIN={token('admin')}\n"
        f"  TISHU={token('community', 'tishu')}\n"
        f"  PSB={token('department', 'PSB')}\n"
        f'  curl -s -H "Authorization: Bearer $ADMIN" "{base}/v1/whistles?overdue=true&limit=5"\n'
        f'  curl -s -H "Authorization: Bearer $TISHU" "{base}/v1/whistles?status=in_progress"\n'
        f'  curl -s -H "Authorization: Bearer $PSB" {base}/v1/scorecards/PSB\n'
        f'  curl -s -H "Authorization: Bearer $TISHU" {base}/v1/communities/tishu/leaderboard\n'
        f'  curl -s -H "Authorization: Bearer $TISHU" "{base}/v1/rewards?community=tishu"\n'
        f'  curl -s -H "Authorization: Bearer $TISHU" "{base}/v1/reports?status=received"\n'
        f"  curl -s {base}/v1/track/{demo.residents.example}    # a resident's own view, by tracking code\n"
        f'  curl -s "{base}/open311/v2/requests.json"\n'
        "  More tokens: baton token issue --role department --unit HOUSING\n"
        "  NATS: /health shows nats.url; events are on stream BATON_EVENTS (baton.evt.>), each department's\n"
        "  inbox and outcomes on BATON_DEPT (durable consumer dept_CODE). A department system's login:\n"
        "  baton nats-creds issue --department PSB    (the auditor's: baton nats-creds issue --auditor)"
    )


async def summarise_volunteering(demo: Demo, http: httpx.AsyncClient, console: Console) -> None:
    """Points, gifts, pledges and participation, from the volunteering read models."""
    admin = demo.auth("admin")
    counts = demo.volunteering.counts
    year = demo.clock.now().year
    rates = (await http.get("/v1/participation", params={"year": year}, headers=admin)).json()
    served = sum(r["volunteers_served"] for r in rates)
    residents = sum(r["residents"] or 0 for r in rates)
    service = (await http.get("/v1/party-service", params={"year": year}, headers=admin)).json()
    fulfilled = sum(1 for s in service if s["fulfilled"])
    board = (await http.get("/v1/communities/tishu/leaderboard", params={"limit": 3}, headers=admin)).json()
    console.print(
        f"Volunteering: {counts['volunteers']} volunteers ({counts['party_members']} in-service party members), "
        f"{counts['activities']} activities, {counts['confirmations']} confirmed attendances, "
        f"{counts['redemptions']} gifts redeemed ({counts['redemptions_refused']} refused: points or stock short), "
        f"{counts['voided_activities']} activity voided after a complaint; points of "
        f"{counts['lapsed_at_new_year']} volunteers lapsed at New Year (year_end policy).\n"
        f"Participation {year}: {served} volunteers served, "
        f"{(Decimal(served) * 1000 / residents).quantize(Decimal('0.01')) if residents else '-'} per 1,000 residents; "
        f"party members' pledges fulfilled: {fulfilled} of {len(service)}.\n"
        "Tishu leaderboard: "
        + ", ".join(f"{r['rank']}. {r['name']} {Decimal(r['earned']) + Decimal(r['voided'])} points" for r in board)
    )


async def summarise_assessment(demo: Demo, http: httpx.AsyncClient, console: Console) -> None:
    """Last year's baton, finalised at New Year and tied to the tree; this year's so far, provisional."""
    auditor = demo.auth("auditor")
    final = demo.assessment.final
    year = demo.clock.now().year

    async def leaders(year: int, position: int | None = None) -> list[str]:
        lines = []
        for unit_type in ("department", "community", "street"):
            params = {"unit_type": unit_type, **({"position": position} if position else {})}
            result = (await http.get(f"/v1/assessments/{year}", params=params, headers=auditor)).json()
            ranked = sorted((u for u in result["units"] if u["rank"]), key=lambda u: u["rank"])[:3]
            lines.append(
                f"  {unit_type}: "
                + (", ".join(f"{u['rank']}. {u['name']} {u['total']} ({u['grade']})" for u in ranked) or "none scored")
            )
        return lines

    checkpoint = (await http.get("/v1/audit/checkpoint", headers=auditor)).text.split("\n")
    console.print(
        f"Assessment {final['year']}: {final['units']} units finalised at New Year, at "
        f"position {final['cutoff_position']}, tree size {final['tree_size']}, root {final['root']}\n"
        + "\n".join(await leaders(final["year"], final["cutoff_position"]))
        + f"\nAssessment {year} so far (provisional; finalising it now is refused: {demo.assessment.refusal})\n"
        + "\n".join(await leaders(year))
        + f"\nLatest signed checkpoint: tree size {checkpoint[1]}, origin {checkpoint[0]}."
    )
