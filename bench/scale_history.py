"""County x 10: ten Dangtu-sized counties' governance, written into the store through the real services.

The organisation (10 districts, 20 streets, 130 communities, their grids, 100 departments, 450 cadres), the
assessment scheme and the branch standard go through the application services one command per
transaction, as an admin would send them. Whistles (95% of the history) go through WhistleApp's own
commands (blow, report_in, dispatch, decline, record_progress, complete, feed_back, evaluate, and the
deadline watcher's check_deadlines) with every role and scope check, decided into a CommandBatch, the
group commit the NATS intake uses, and saved about 5,000 events to a transaction. Volunteers' activities
and points, branches' 三会一课 and the yearly two-way evaluation (5%) are made by the aggregate methods
their services call, with the same actors in the metadata, and saved in the same transactions in time
order (their services load aggregates outside the batch, so they cannot be group-committed). A
ManualClock moves the days along. One command per transaction (the services without a batch) writes
about 300 events/s here; batched, about 10,000.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.domain import Aggregate

from demo.branches import KINDS_MONTHLY as MONTHLY
from demo.branches import KINDS_QUARTERLY as QUARTERLY
from demo.branches import TOPICS
from demo.county import CATEGORIES, COMMUNITIES, DEPARTMENTS, GIVEN, STREETS, SURNAMES
from demo.script import FATES, whistle_case
from domain.assessment import MutualEvaluation
from domain.branches import Branch
from domain.volunteering import Activity, Volunteer
from domain.whistle import Status, Whistle
from infra.bootstrap import Container
from infra.clock import ManualClock
from services.access import SYSTEM_ACTOR, Actor, Context, Role
from services.base import CommandBatch, Receipt
from services.whistles import WhistleApp

log = structlog.get_logger("baton.bench.scale")

STANDARDS = Path(__file__).resolve().parent.parent / "standards"
COUNTIES = 10
START = datetime(2024, 1, 1, tzinfo=UTC)
WHISTLES_PER_DAY = (100, 140)  # all 130 communities together: about 0.9 a community a day
BATCH_EVENTS = 5000  # events per transaction
ACTIVITIES = ["敬老院义务理发", "小区环境整治", "文明交通劝导", "垃圾分类宣传", "关爱留守儿童", "为老人读报"]
VOLUNTEERS_PER_COMMUNITY = 30
RATINGS = ["excellent", "good", "good", "fair", "poor"]


@dataclass
class County:
    """One of the ten counties: its district, streets, communities, grids and departments."""

    number: int
    district: dict[str, Any]
    streets: list[dict[str, Any]]
    communities: list[dict[str, Any]]
    grids: dict[str, list[str]]
    departments: dict[str, str]  # Dangtu's code -> this county's code

    def code(self, dangtu_code: str) -> str:
        return self.departments[dangtu_code]


def counties(seed: int, count: int = COUNTIES) -> list[County]:
    """Ten copies of Dangtu's shape (demo/county.py): 2 streets, 13 communities, 5-8 grids each, 10 departments."""
    rng = random.Random(seed)
    out = []
    for n in range(1, count + 1):
        suffix = "" if n == 1 else f"-{n}"
        district = {"id": f"dangtu{suffix}", "kind": "district", "parent": "maanshan", "name": f"当涂县{suffix}"}
        streets = [
            {**s, "id": f"{s['id']}{suffix}", "parent": district["id"], "name": f"{s['name']}{suffix}"} for s in STREETS
        ]
        communities, grids = [], {}
        for slug, name, street in COMMUNITIES:
            community = f"{slug}{suffix}"
            communities.append(
                {
                    "id": community,
                    "kind": "community",
                    "parent": f"{street}{suffix}",
                    "name": f"{name}{suffix}",
                    "residents": rng.randrange(14_000, 24_000, 100),
                }
            )
            grids[community] = [f"{community}-g{g}" for g in range(1, rng.randint(5, 9))]
        departments = {code: code if n == 1 else f"{code}_{n}" for code, _ in DEPARTMENTS}
        out.append(County(n, district, streets, communities, grids, departments))
    return out


@dataclass
class Tally:
    """What the generator wrote."""

    events: int = 0
    transactions: int = 0
    service_commands: int = 0
    service_seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    fates: Counter[str] = field(default_factory=Counter)


class History:
    """Plays the ten counties forward in simulated time and writes their events in batched transactions."""

    def __init__(self, baton: Container, clock: ManualClock, seed: int = 2019) -> None:
        self.baton, self.clock = baton, clock
        self.rng = random.Random(seed)
        self.counties = counties(seed)
        self.tally = Tally()
        self._pending: list[Any] = []
        self._seq = itertools.count()
        self._queue: list[tuple[datetime, int, Iterator[datetime]]] = []
        self._meta: dict[tuple[str, str | None], Actor] = {}
        self.org: Any = None
        self._batch: CommandBatch[WhistleApp]
        self.categories: dict[str, dict[str, Any]] = {}
        self.volunteers: dict[str, list[Volunteer]] = {}
        self.branches: list[tuple[Branch, int]] = []
        self.branch_standard = json.loads(sorted(STANDARDS.glob("branch-standard-*.json"))[-1].read_text())

    # Acting ---------------------------------------------------------------------------------

    def ctx(self, role: Role, unit: str | None = None) -> Context:
        """Who acts: the unit's own actor (as `baton token issue` names it), or the deadline watcher."""
        if role is Role.SYSTEM:
            return Context(actor=SYSTEM_ACTOR, correlation_id=f"watch-{next(self._seq)}")
        key = (role.value, unit)
        actor = self._meta.get(key)
        if actor is None:
            actor = self._meta[key] = Actor(role, unit, f"{role.value}-{unit or 'county'}")
        return Context(actor=actor, correlation_id=f"scale-{next(self._seq)}")

    def meta(self, role: Role, unit: str | None = None) -> dict[str, Any]:
        return self.ctx(role, unit).meta()

    def collect(self, *aggregates: Aggregate) -> None:
        """Take the aggregates' new events, in the order they happened; save them when a batch is full."""
        for aggregate in aggregates:
            self._pending.extend(aggregate.collect_events())
        if len(self._pending) >= BATCH_EVENTS:
            self.flush()

    def flush(self) -> None:
        """Save what is pending in one transaction."""
        if not self._pending:
            return
        self.baton.whistles.save(*self._pending)
        self.tally.events += len(self._pending)
        self.tally.transactions += 1
        for e in self._pending:
            self.tally.kinds[type(e).__qualname__] += 1
        self._pending = []

    # The organisation, through the services ----------------------------------------------------

    def setup(self) -> None:
        """Units, departments, categories, cadres, the assessment scheme and the branch standard, one command each."""
        import time

        started = time.perf_counter()
        admin = self.ctx(Role.ADMIN)
        org = self.baton.org
        commands = 0
        self.clock.set(START - timedelta(days=30))

        def run(fn: Any, **kwargs: Any) -> None:
            nonlocal commands
            fn(Context(actor=admin.actor, correlation_id=f"setup-{commands}"), **kwargs)
            commands += 1

        run(org.add_unit, unit_id="maanshan", kind="city", parent_id=None, name="马鞍山市", residents=None)
        for county in self.counties:
            d = county.district
            run(org.add_unit, unit_id=d["id"], kind="district", parent_id=d["parent"], name=d["name"], residents=None)
            for s in county.streets:
                run(org.add_unit, unit_id=s["id"], kind="street", parent_id=s["parent"], name=s["name"], residents=None)
            for c in county.communities:
                run(
                    org.add_unit,
                    unit_id=c["id"],
                    kind="community",
                    parent_id=c["parent"],
                    name=c["name"],
                    residents=c["residents"],
                )
                for i, grid in enumerate(county.grids[c["id"]]):
                    run(
                        org.add_unit,
                        unit_id=grid,
                        kind="grid",
                        parent_id=c["id"],
                        name=f"{c['name']}第{i + 1}网格",
                        residents=None,
                    )
            for code, name in DEPARTMENTS:
                suffix = "" if county.number == 1 else f"-{county.number}"
                run(org.add_department, code=county.code(code), name=f"{name}{suffix}")
        for c in CATEGORIES:
            run(
                org.define_category,
                code=c["code"],
                name=c["name"],
                duty=c["duty"],
                departments=c["departments"],
                deadline_class=c["deadline_class"],
                deadline_overrides={},
            )
        for county in self.counties:
            for i in range(45):
                code = county.code(DEPARTMENTS[i % len(DEPARTMENTS)][0])
                cadre = f"cadre-{county.number:02d}-{i + 1:03d}"
                name = self.rng.choice(SURNAMES) + self.rng.choice(GIVEN) + self.rng.choice(GIVEN)
                run(org.register_cadre, cadre_id=cadre, name=name, department=code, unit_id=None, title="兼职干部")
                community = county.communities[i % len(county.communities)]["id"]
                run(org.second_cadre, cadre_id=cadre, community_id=community)
        scheme = json.loads(sorted(STANDARDS.glob("assessment-scheme-*.json"))[-1].read_text())
        run(self.baton.assessment.publish_scheme, document=scheme)
        run(self.baton.branches.publish_standard, document=self.branch_standard)
        self.tally.service_commands = commands
        self.tally.service_seconds = time.perf_counter() - started
        self.tally.events = self.baton.store.max_position()
        self.org = org.current()
        self.categories = {c: self.org.category(c) for c in self.org.categories}
        self._register_people()
        self.clock.set(START)
        self.schedule(self.days(START))
        self.schedule(self.months(START))
        self.schedule(self.years(START))

    def _register_people(self) -> None:
        """Volunteers (names sealed under their own keys) and party branches, created as the services would."""
        vault = self.baton.store.vault
        for county in self.counties:
            for c in county.communities:
                community = c["id"]
                staff = self.meta(Role.COMMUNITY, community)
                people = []
                for _ in range(VOLUNTEERS_PER_COMMUNITY):
                    vid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
                    name = self.rng.choice(SURNAMES) + self.rng.choice(GIVEN) + self.rng.choice(GIVEN)
                    people.append(
                        Volunteer.register(
                            volunteer_id=vid,
                            community_id=community,
                            name=vault.seal(vid, community, name),
                            phone=vault.seal(vid, community, f"139{self.rng.randrange(10**8):08d}"),
                            party_member=False,
                            branch=None,
                            work_unit=None,
                            timestamp=self.clock.now(),
                            meta=staff,
                        )
                    )
                self.volunteers[community] = people
                self.collect(*people)
                branch = Branch.register(
                    name=f"{c['name']}党支部",
                    parent_kind="community",
                    parent_id=community,
                    community_id=community,
                    members=self.rng.randint(9, 40),
                    established_on="2019-06-01",
                    escalation_chain=self.org.ancestors(community),
                    today=self.clock.now().date(),
                    timestamp=self.clock.now(),
                    meta=staff,
                )
                self.branches.append((branch, branch.members))
                self.collect(branch)
            for dangtu_code in ("PSB", "HOUSING", "EDU"):
                code = county.code(dangtu_code)
                branch = Branch.register(
                    name=f"{self.org.departments[code]['name']}机关党支部",
                    parent_kind="department",
                    parent_id=code,
                    community_id=None,
                    members=self.rng.randint(9, 40),
                    established_on="2019-06-01",
                    escalation_chain=[county.district["id"]],
                    today=self.clock.now().date(),
                    timestamp=self.clock.now(),
                    meta=self.meta(Role.ADMIN),
                )
                self.branches.append((branch, branch.members))
                self.collect(branch)
        self.flush()

    # Time -----------------------------------------------------------------------------------

    def schedule(self, story: Iterator[datetime]) -> None:
        try:
            heapq.heappush(self._queue, (next(story), next(self._seq), story))
        except StopIteration:
            pass

    def run(self, events: int) -> int:
        """Play on until the store holds at least `events` events; return how many it holds."""
        with self.baton.whistles.batch() as batch:
            self._batch = batch
            while self.tally.events + len(self._pending) < events and self._queue:
                moment, _, story = heapq.heappop(self._queue)
                if moment > self.clock.now():
                    self.clock.set(moment)
                self.schedule(story)
            self.flush()
        return self.tally.events

    def days(self, start: datetime) -> Iterator[datetime]:
        """Each day, 100-140 whistles across the counties, blown between 08:00 and 20:00 Beijing time."""
        day = start
        while True:
            yield day
            for _ in range(self.rng.randint(*WHISTLES_PER_DAY)):
                self.schedule(self.whistle(day + timedelta(hours=self.rng.uniform(0, 12))))
            day += timedelta(days=1)

    def months(self, start: datetime) -> Iterator[datetime]:
        """Each month: every branch's organisational life, and an activity in every community."""
        year, month = start.year, start.month
        while True:
            yield datetime(year, month, 1, 2, tzinfo=UTC)
            for branch, members in self.branches:
                self.schedule(self.branch_month(branch, members, year, month))
            for county in self.counties:
                for c in county.communities:
                    self.schedule(self.activity(c["id"], datetime(year, month, self.rng.randint(3, 25), 1, tzinfo=UTC)))
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    def years(self, start: datetime) -> Iterator[datetime]:
        """Each December: the two-way evaluation (双向评价) within every county."""
        year = start.year
        while True:
            yield datetime(year, 12, 20, 2, tzinfo=UTC)
            for county in self.counties:
                for c in county.communities:
                    for dangtu_code, _ in DEPARTMENTS:
                        code = county.code(dangtu_code)
                        self._rate(year, "community", c["id"], "department", code)
                        self._rate(year, "department", code, "community", c["id"])
            year += 1

    def _rate(self, year: int, rater_type: str, rater: str, ratee_type: str, ratee: str) -> None:
        evaluation = MutualEvaluation.rate(
            year=year,
            rater_type=rater_type,
            rater=rater,
            ratee_type=ratee_type,
            ratee=ratee,
            rating=self.rng.choice(RATINGS),
            comment=None,
            timestamp=self.clock.now(),
            meta=self.meta(Role(rater_type), rater),
        )
        self.collect(evaluation)

    # Stories --------------------------------------------------------------------------------

    @property
    def whistles(self) -> WhistleApp:
        """The whistles' application bound to the open batch (each run() opens one): its commands wait in it."""
        return self._batch.app

    def command(self, step: Callable[..., Receipt], role: Role, unit: str | None, *args: Any, **kwargs: Any) -> Receipt:
        """One whistle command through WhistleApp, decided into the open batch; its events join the pending ones."""
        receipt = step(self.ctx(role, unit), *args, **kwargs)
        self._pending.extend(self._batch.events)
        self._batch.events.clear()
        self._batch.taken.clear()
        if len(self._pending) >= BATCH_EVENTS:
            self.flush()
        return receipt

    def whistle(self, start: datetime) -> Iterator[datetime]:
        """One whistle from blow to evaluation along a fate drawn at random, as demo/script.py plays it."""
        rng = self.rng
        fate = rng.choices([f for f, _ in FATES], weights=[w for _, w in FATES])[0]
        county = rng.choice(self.counties)
        community = rng.choice(county.communities)["id"]
        category = self.categories[rng.choice(list(self.categories))]
        if fate == "admission_list" and category["duty"] != "department":
            category = self.categories["drainage"]
        urgent = rng.random() < 0.15
        summoned = [county.code(d) for d in category["departments"]]
        if fate == "never_reports_in" or rng.random() < 0.3:
            summoned.append(rng.choice([c for c in county.departments.values() if c not in summoned]))
        yield start
        self.tally.fates[fate] += 1
        grid = rng.choice(county.grids[community])
        via_grid = rng.random() < 0.4
        case = whistle_case(
            rng, community, category["code"], summoned, grid, via_grid=via_grid, urgent=urgent, address=False
        )
        blower = (Role.GRID, grid) if via_grid else (Role.COMMUNITY, community)
        w = self.command(self.whistles.blow, *blower, **case).body["whistle_id"]
        staff = Role.COMMUNITY, community
        limit = self.whistles.get(w).report_in_due - start
        try:
            # 应哨: each summoned department reports in; the watcher records what is missed within the hour.
            laggard = summoned[-1]
            for code in summoned:
                if fate == "never_reports_in" and code == laggard:
                    continue
                late = fate == "late_report_in" and code == laggard
                yield from self._until(w, start + limit * (rng.uniform(1.3, 2.5) if late else rng.uniform(0.1, 0.8)))
                self.command(self.whistles.report_in, Role.DEPARTMENT, code, w)
            lead = county.code(category["departments"][0])
            yield from self._until(w, self.clock.now() + timedelta(minutes=rng.randint(20, 90)))
            if fate == "admission_list":
                funding = {"amount_yuan": str(rng.choice([3000, 5000, 8000, 12000])), "from_department": lead}
                self.command(self.whistles.dispatch, *staff, w, lead_department=community, funding=funding)
                yield self.clock.now() + timedelta(hours=rng.randint(12, 30))
                self.command(self.whistles.record_progress, *staff, w, note="社区网格员协助施工")
                yield from self._until(w, self.clock.now() + timedelta(hours=rng.randint(12, 30)))
                self.command(self.whistles.complete, *staff, w, summary="已疏通")
                self.command(self.whistles.feed_back, *staff, w, result="已处理并回访居民", resolved=True)
                yield self.clock.now() + timedelta(hours=rng.randint(2, 20))
                self.command(self.whistles.evaluate, *staff, w, rating="satisfied")
                return
            co = [d for d in summoned if d != lead][:1]
            self.command(self.whistles.dispatch, *staff, w, lead_department=lead, co_departments=co)
            if fate == "declined":
                yield self.clock.now() + timedelta(hours=rng.randint(1, 8))
                reason = "该事项不属于本部门职责，建议由其他部门牵头"
                self.command(self.whistles.decline, Role.DEPARTMENT, lead, w, reason=reason)
                others = [c for c in county.departments.values() if c not in (lead, *co)]
                lead = co[0] if co else rng.choice(others)
                yield from self._until(w, self.clock.now() + timedelta(hours=rng.randint(1, 6)))
                self.command(self.whistles.dispatch, *staff, w, lead_department=lead)
            rounds = {"reopened": 2, "reopened_twice": 3}.get(fate, 1)
            for round_ in range(1, rounds + 1):
                if round_ > 1:
                    yield from self._until(w, self.clock.now() + timedelta(hours=rng.randint(2, 24)))
                    self.command(self.whistles.dispatch, *staff, w, lead_department=lead)
                share = rng.uniform(1.2, 1.6) if fate == "late_feedback" else rng.uniform(0.2, 0.8)
                whistle = self.whistles.get(w)
                assert whistle.dispatched_at is not None and whistle.feedback_due is not None
                half = (whistle.feedback_due - whistle.dispatched_at) * share / 2
                yield from self._until(w, self.clock.now() + half)
                self.command(self.whistles.record_progress, Role.DEPARTMENT, lead, w, note="已到现场勘查，正在处理")
                yield from self._until(w, self.clock.now() + half)
                self.command(self.whistles.complete, Role.DEPARTMENT, lead, w, summary="处理完毕")
                self.command(
                    self.whistles.feed_back, Role.DEPARTMENT, lead, w, result="已处理并向社区和居民反馈", resolved=True
                )
                yield self.clock.now() + timedelta(hours=rng.randint(4, 48))
                happy = rng.choice(["satisfied", "satisfied", "basically_satisfied"])
                self.command(self.whistles.evaluate, *staff, w, rating="dissatisfied" if round_ < rounds else happy)
        finally:
            self._batch.aggregates.pop(UUID(w), None)  # done with: the batch need not keep its copy

    def _until(self, w: str, moment: datetime) -> Iterator[datetime]:
        """Wait until moment; if a deadline passes first, the hourly watcher records it and escalates."""
        due = self._next_due(self.whistles.get(w))
        if due is not None:
            watch = due + timedelta(minutes=self.rng.randint(1, 59))
            if watch < moment:
                yield watch
                self.command(self.whistles.check_deadlines, Role.SYSTEM, None, w)
        yield moment

    @staticmethod
    def _next_due(w: Whistle) -> datetime | None:
        """The earliest deadline of the whistle not yet recorded as missed (the index services/watcher.py reads)."""
        due = []
        if w.pending_departments and "report_in" not in w.missed:
            due.append(w.report_in_due)
        if (
            w.status in (Status.DISPATCHED, Status.IN_PROGRESS, Status.COMPLETED)
            and w.feedback_due is not None
            and f"feedback:{w.dispatch_round}" not in w.missed
        ):
            due.append(w.feedback_due)
        return min(due) if due else None

    def activity(self, community: str, starts: datetime) -> Iterator[datetime]:
        """An activity: published a week ahead, 6-12 volunteers sign up, attendance confirmed, points awarded."""
        rng = self.rng
        yield starts - timedelta(days=7)
        organiser = self.meta(Role.COMMUNITY, community)
        activity = Activity.publish(
            community_id=community,
            title=rng.choice(ACTIVITIES),
            starts_at=starts,
            ends_at=starts + timedelta(hours=3),
            place="社区党群服务中心",
            capacity=15,
            points_per_hour=Decimal(5),
            max_hours=Decimal(3),
            timestamp=self.clock.now(),
            meta=organiser,
        )
        self.collect(activity)
        chosen = rng.sample(self.volunteers[community], rng.randint(6, 12))
        gap = (starts - self.clock.now()) / (len(chosen) + 1)
        for volunteer in chosen:
            yield self.clock.now() + gap * rng.uniform(0.5, 1)
            activity.sign_up(str(volunteer.id), timestamp=self.clock.now(), meta=organiser)
            self.collect(activity)
        yield starts + timedelta(hours=4)
        for volunteer in chosen:
            hours = Decimal(rng.choice([2, 3, 3, 4]))
            now = self.clock.now()
            credited, points = activity.confirm_attendance(str(volunteer.id), hours, timestamp=now, meta=organiser)
            volunteer.award(
                str(activity.id), credited, points, starts.date().isoformat(), None, timestamp=now, meta=organiser
            )
            self.collect(activity, volunteer)

    def branch_month(self, branch: Branch, members: int, year: int, month: int) -> Iterator[datetime]:
        """A month of 三会一课 and a themed party day, logged by the branch's secretary the day after."""
        rng = self.rng
        secretary = Role.SECRETARY, str(branch.id)
        kinds = [k for k in MONTHLY if rng.random() > 0.08]
        if month in (1, 4, 7, 10):
            kinds += [k for k in QUARTERLY if rng.random() > 0.1]
        days = sorted(rng.randint(3, 26) for _ in kinds)
        for kind, day in zip(kinds, days, strict=True):
            held = date(year, month, day)
            yield datetime(year, month, day, 12, tzinfo=UTC) + timedelta(days=1)
            branch.hold_meeting(
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                kind,
                held.isoformat(),
                rng.randint(max(1, members // 2), members),
                rng.choice(TOPICS),
                self.clock.now().date(),
                timestamp=self.clock.now(),
                meta=self.meta(*secretary),
            )
            self.collect(branch)
