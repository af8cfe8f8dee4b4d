"""The whistle context: the six steps, their scoping, and the deadline watcher's checks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError

from domain.errors import InvalidCommand, NotFound, OutOfScope, Thing, UnknownReference
from domain.organisation import Organisation, UnitKind
from domain.privacy import PersonErased
from domain.whistle import Reporter, Source, Whistle
from infra.clock import Clock
from infra.privacy import Vault
from infra.store import Store
from services.access import (
    Actor,
    Context,
    Role,
    acting_handler,
    check_community_scope,
    require_role,
)
from services.base import BatonApplication, Decision, Receipt
from services.organisation import OrganisationApp

REPORTER_FIELDS = ("name", "phone", "address")


def seal_reporter(vault: Vault, person_id: UUID, community_id: str, reporter: dict[str, Any]) -> Reporter:
    """The resident's contact details, each sealed under their own key (a whistle's or a report's reporter)."""
    return Reporter(
        person_id=person_id,
        **{f: vault.seal_optional(person_id, community_id, reporter.get(f)) for f in REPORTER_FIELDS},
    )


class WhistleApp(BatonApplication):
    """Takes whistles through the six steps."""

    def __init__(self, store: Store, clock: Clock, org: OrganisationApp) -> None:
        super().__init__(store, clock)
        self.org = org

    def get(self, whistle_id: UUID | str) -> Whistle:
        """The whistle as of now (in a command batch, the batch's copy), or NotFound."""
        try:
            return self.load(UUID(str(whistle_id)))
        except (AggregateNotFoundError, ValueError):
            raise NotFound(f"whistle {whistle_id} does not exist", Thing.WHISTLE, whistle_id) from None

    # 吹哨 ---------------------------------------------------------------------

    def blow(
        self,
        ctx: Context,
        *,
        community_id: str,
        category: str,
        title: str,
        description: str,
        urgency: str = "normal",
        summoned_departments: list[str] | None = None,
        grid_id: str | None = None,
        location: str | None = None,
        source: str | None = None,
        reporter: dict[str, Any] | None = None,
    ) -> Receipt:
        """Blow a whistle for a community and summon departments; a resident reporter's details are sealed."""
        make, body = self.whistle_maker(
            ctx,
            community_id=community_id,
            category=category,
            title=title,
            description=description,
            urgency=urgency,
            summoned_departments=summoned_departments,
            grid_id=grid_id,
            location=location,
            source=source,
            reporter=reporter,
        )

        def decide(now: datetime) -> Decision:
            whistle = make(now)
            return [whistle], {"whistle_id": str(whistle.id), **body}

        return self.execute(ctx, decide)

    def whistle_maker(
        self,
        ctx: Context,
        *,
        community_id: str,
        category: str,
        title: str,
        description: str,
        urgency: str = "normal",
        summoned_departments: list[str] | None = None,
        grid_id: str | None = None,
        location: str | None = None,
        source: str | None = None,
        reporter: dict[str, Any] | None = None,
        sealed_reporter: Reporter | None = None,
    ) -> tuple[Callable[[datetime], Whistle], dict[str, str]]:
        """Check who blows what; return what blows the whistle at a moment, and the answer's extra fields."""
        actor = ctx.actor
        require_role(
            actor,
            Role.ADMIN,
            Role.COMMUNITY,
            Role.GRID,
            Role.STREET,
            Role.DISTRICT,
            action="blow a whistle",
        )
        org = self.org.current()
        org.community(community_id)
        check_community_scope(org, actor, community_id, "blow a whistle")
        if actor.role is Role.GRID:
            grid_id = grid_id or actor.unit
            if grid_id != actor.unit:
                raise OutOfScope(f"a grid worker files only for their own grid {actor.unit!r}")
        if grid_id is not None:
            grid = org.units.get(grid_id)
            if grid is None or grid["kind"] != UnitKind.GRID or grid["parent"] != community_id:
                raise UnknownReference(f"{grid_id!r} is not a grid of community {community_id!r}", Thing.UNIT, grid_id)
        cat = org.category(category)
        summoned = list(summoned_departments or [])
        org.check_departments_exist(summoned)
        default_source = Source.GRID_PATROL if actor.role is Role.GRID else Source.COMMUNITY
        reporter_id = sealed_reporter.person_id if sealed_reporter else self._reporter_id(reporter)
        if reporter_id is not None:
            default_source = Source.RESIDENT

        def make(now: datetime) -> Whistle:
            sealed = sealed_reporter
            if reporter is not None and reporter_id is not None:
                sealed = seal_reporter(self.store.vault, reporter_id, community_id, reporter)
            whistle = Whistle.blow(
                community_id=community_id,
                escalation_chain=org.ancestors(community_id),
                category=cat,
                title=title,
                description=description,
                urgency=urgency,
                summoned_departments=summoned,
                grid_id=grid_id,
                location=location,
                source=source or default_source.value,
                reporter=sealed,
                timestamp=now,
                meta=ctx.meta(),
            )
            return whistle

        return make, {"reporter_id": str(reporter_id)} if reporter_id is not None else {}

    def _reporter_id(self, reporter: dict[str, Any] | None) -> UUID | None:
        """The reporter's person id: the one given (a person Baton knows), else a new one."""
        if reporter is None:
            return None
        given = reporter.get("person_id")
        if given is None:
            return uuid4()
        person_id = UUID(str(given))
        row = self.store.vault.person(person_id)
        if row is None:
            raise UnknownReference(
                f"reporter.person_id {person_id} is not a person Baton holds data of; omit it for a new reporter",
                Thing.PERSON,
                person_id,
            )
        if row.erased:
            raise PersonErased(
                f"person {person_id}'s personal data was erased; record the reporter afresh without person_id"
            )
        return person_id

    # Steps on an existing whistle --------------------------------------------

    def _step(
        self,
        ctx: Context,
        whistle_id: UUID | str,
        act: Callable[[Whistle, datetime], None],
    ) -> Receipt:
        def decide(now: datetime) -> Decision:
            whistle = self.get(whistle_id)
            act(whistle, now)
            return [whistle], {"whistle_id": str(whistle.id), "status": whistle.status.value}

        return self.execute(ctx, decide)

    def report_in(self, ctx: Context, whistle_id: UUID | str) -> Receipt:
        """应哨: the actor's department reports in."""
        department = self._department(ctx.actor, "report in")

        def act(w: Whistle, now: datetime) -> None:
            w.report_in(department, timestamp=now, meta=ctx.meta())

        return self._step(ctx, whistle_id, act)

    def dispatch(
        self,
        ctx: Context,
        whistle_id: UUID | str,
        *,
        lead_department: str,
        co_departments: list[str] | None = None,
        due_at: datetime | None = None,
        funding: dict[str, Any] | None = None,
    ) -> Receipt:
        """派单: the community (or a level above it) dispatches a work order."""
        require_role(
            ctx.actor,
            Role.ADMIN,
            Role.COMMUNITY,
            Role.STREET,
            Role.DISTRICT,
            action="dispatch a work order",
        )
        co = list(co_departments or [])

        def act(w: Whistle, now: datetime) -> None:
            org = self.org.current()
            check_community_scope(org, ctx.actor, w.community_id, "dispatch this whistle")
            self._check_handlers(org, w, [lead_department, *co])
            if funding is not None:
                org.check_departments_exist([str(funding.get("from_department"))])
            w.dispatch(lead_department, co, due_at, funding, timestamp=now, meta=ctx.meta())

        return self._step(ctx, whistle_id, act)

    def decline(self, ctx: Context, whistle_id: UUID | str, *, reason: str) -> Receipt:
        """A dispatched department declines the work order, with a reason."""

        def act(w: Whistle, now: datetime) -> None:
            w.decline(acting_handler(ctx.actor, w), reason, timestamp=now, meta=ctx.meta())

        return self._step(ctx, whistle_id, act)

    def record_progress(self, ctx: Context, whistle_id: UUID | str, *, note: str) -> Receipt:
        """办理: the lead or a co-handler records progress."""

        def act(w: Whistle, now: datetime) -> None:
            w.record_progress(acting_handler(ctx.actor, w), note, timestamp=now, meta=ctx.meta())

        return self._step(ctx, whistle_id, act)

    def complete(self, ctx: Context, whistle_id: UUID | str, *, summary: str) -> Receipt:
        """办理: the lead completes the handling."""

        def act(w: Whistle, now: datetime) -> None:
            w.complete(acting_handler(ctx.actor, w), summary, timestamp=now, meta=ctx.meta())

        return self._step(ctx, whistle_id, act)

    def feed_back(self, ctx: Context, whistle_id: UUID | str, *, result: str, resolved: bool) -> Receipt:
        """反馈: the lead reports the result back."""

        def act(w: Whistle, now: datetime) -> None:
            w.feed_back(acting_handler(ctx.actor, w), result, resolved, timestamp=now, meta=ctx.meta())

        return self._step(ctx, whistle_id, act)

    def evaluate(self, ctx: Context, whistle_id: UUID | str, *, rating: str, comment: str | None = None) -> Receipt:
        """评价: the community rates the handling on the resident's behalf."""
        require_role(ctx.actor, Role.ADMIN, Role.COMMUNITY, action="evaluate a whistle")

        def act(w: Whistle, now: datetime) -> None:
            check_community_scope(self.org.current(), ctx.actor, w.community_id, "evaluate this whistle")
            w.evaluate(rating, comment, timestamp=now, meta=ctx.meta())

        return self._step(ctx, whistle_id, act)

    def check_deadlines(self, ctx: Context, whistle_id: UUID | str) -> Receipt | None:
        """Record missed deadlines and escalations as of now; None when nothing was missed."""
        missed = 0

        def decide(now: datetime) -> Decision:
            nonlocal missed
            whistle = self.get(whistle_id)
            missed = whistle.check_deadlines(timestamp=now, meta=ctx.meta())
            return [whistle], {"whistle_id": str(whistle.id), "missed": missed}

        receipt = self.execute(ctx, decide)
        return receipt if missed else None

    # Checks ------------------------------------------------------------------

    @staticmethod
    def _department(actor: Actor, action: str) -> str:
        require_role(actor, Role.DEPARTMENT, action=action)
        assert actor.unit is not None
        return actor.unit

    @staticmethod
    def _check_handlers(org: Organisation, whistle: Whistle, handlers: list[str]) -> None:
        unknown = [h for h in handlers if h not in org.departments and h != whistle.community_id]
        if unknown:
            raise InvalidCommand(
                f"cannot dispatch to {', '.join(map(repr, unknown))}: a work order goes to a "
                f"department code or to the whistle's own community {whistle.community_id!r}"
            )
