"""The branch context: the published standard, branches, their organisational life, audits and rectifications."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from domain.branches import STANDARD_ID, Branch, BranchStandard, ParentKind, Standard
from domain.errors import Conflict, InvalidCommand, NotFound, OutOfScope, Thing
from domain.organisation import Organisation
from infra.clock import Clock
from infra.store import Store
from services.access import Actor, Context, Role, check_community_scope, require_role
from services.base import BatonApplication, Decision, Receipt
from services.organisation import OrganisationApp


class BranchApp(BatonApplication):
    """Keeps branches' organisational life and audits them against the standard in force."""

    def __init__(self, store: Store, clock: Clock, org: OrganisationApp) -> None:
        super().__init__(store, clock)
        self.org = org

    def branch(self, branch_id: UUID | str) -> Branch:
        try:
            found = self.repository.get(UUID(str(branch_id)))
        except (AggregateNotFoundError, ValueError):
            raise NotFound(f"branch {branch_id} does not exist", Thing.BRANCH, branch_id) from None
        if not isinstance(found, Branch):
            raise NotFound(f"branch {branch_id} does not exist", Thing.BRANCH, branch_id)
        return found

    def standards(self) -> BranchStandard | None:
        try:
            return self.repository.get(STANDARD_ID)
        except AggregateNotFoundError:
            return None

    def standard(self) -> Standard:
        published = self.standards()
        if published is None:
            raise Conflict("no branch standard is published yet; publish one with `baton standard publish`")
        return published.standard()

    # The standard ----------------------------------------------------------------------------

    def publish_standard(self, ctx: Context, document: dict[str, Any]) -> Receipt:
        """Publish a version of the standard into the history; it applies to audits from now on."""
        require_role(ctx.actor, Role.ADMIN, action="publish the branch standard")

        def decide(now: datetime) -> Decision:
            published = self.standards() or BranchStandard(timestamp=now, meta=ctx.meta())
            version = published.publish(document, timestamp=now, meta=ctx.meta())
            return [published], {"version": version}

        return self.execute(ctx, decide)

    # Branches --------------------------------------------------------------------------------

    def register_branch(
        self,
        ctx: Context,
        *,
        name: str,
        parent_kind: str,
        parent_id: str,
        community_id: str | None,
        members: int,
        established_on: str,
    ) -> Receipt:
        """Register a branch under a community, a department or an enterprise."""
        org = self.org.current()
        community_id = self._place(org, ctx.actor, parent_kind, parent_id, community_id)
        chain = org.ancestors(community_id) if community_id else self._county(org)

        def decide(now: datetime) -> Decision:
            branch = Branch.register(
                name=name,
                parent_kind=parent_kind,
                parent_id=parent_id,
                community_id=community_id,
                members=members,
                established_on=established_on,
                escalation_chain=chain,
                today=self.today(now),
                timestamp=now,
                meta=ctx.meta(),
            )
            return [branch], {"branch_id": str(branch.id)}

        return self.execute(ctx, decide)

    @staticmethod
    def _place(
        org: Organisation, actor: Actor, parent_kind: str, parent_id: str, community_id: str | None
    ) -> str | None:
        """Check the parent exists and the actor may register there; return the community the branch sits in."""
        if parent_kind == ParentKind.COMMUNITY:
            org.community(parent_id)
            if community_id not in (None, parent_id):
                raise InvalidCommand("a community branch sits in its own community; drop community_id")
            community_id = parent_id
        elif parent_kind == ParentKind.DEPARTMENT:
            org.check_departments_exist([parent_id])
        if community_id is not None:
            org.community(community_id)
            require_role(actor, Role.ADMIN, Role.COMMUNITY, Role.STREET, Role.DISTRICT, action="register branches")
            check_community_scope(org, actor, community_id, "register a branch")
        else:
            require_role(actor, Role.ADMIN, action="register a branch outside a community")
        return community_id

    @staticmethod
    def _county(org: Organisation) -> list[str]:
        districts = [u["id"] for u in org.units.values() if u["kind"] == "district"]
        return districts[:1]

    def _as_secretary(self, actor: Actor, branch: Branch, action: str) -> None:
        if actor.role is Role.ADMIN:
            return
        if actor.role is Role.SECRETARY and actor.unit == str(branch.id):
            return
        raise OutOfScope(f"only the branch's own secretary may {action}")

    def _step(self, ctx: Context, branch_id: str, action: str, act: Any) -> Receipt:
        def decide(now: datetime) -> Decision:
            branch = self.branch(branch_id)
            self._as_secretary(ctx.actor, branch, action)
            extra = act(branch, now) or {}
            return [branch], {"branch_id": str(branch.id), **extra}

        return self.execute(ctx, decide)

    def today(self, now: datetime) -> date:
        """The local date (in the standard's timezone) of a moment."""
        published = self.standards()
        zone_of = published.standard() if published and published.current else None
        return zone_of.local_date(now) if zone_of else now.date()

    def count_members(self, ctx: Context, branch_id: str, *, members: int) -> Receipt:
        return self._step(
            ctx,
            branch_id,
            "update its members",
            lambda b, now: b.count_members(members, timestamp=now, meta=ctx.meta()),
        )

    def log_meeting(
        self, ctx: Context, branch_id: str, *, kind: str, held_on: str, attendance: int, topic: str
    ) -> Receipt:
        """Log one of 三会一课 or a themed party day."""

        def act(branch: Branch, now: datetime) -> dict[str, Any]:
            meeting_id = str(uuid.uuid4())
            branch.hold_meeting(
                meeting_id, kind, held_on, attendance, topic, self.today(now), timestamp=now, meta=ctx.meta()
            )
            return {"meeting_id": meeting_id}

        return self._step(ctx, branch_id, "log its meetings", act)

    def collect_dues(
        self, ctx: Context, branch_id: str, *, period: str, amount_yuan: Any, members_paid: int, collected_on: str
    ) -> Receipt:
        return self._step(
            ctx,
            branch_id,
            "record its dues",
            lambda b, now: b.collect_dues(
                period, amount_yuan, members_paid, collected_on, self.today(now), timestamp=now, meta=ctx.meta()
            ),
        )

    def audit(self, ctx: Context, branch_id: str, *, scores: dict[str, Any], findings: list[dict[str, Any]]) -> Receipt:
        """An inspector audits a branch against the standard now in force."""
        require_role(ctx.actor, Role.INSPECTOR, action="audit branches")
        standard = self.standard()

        def decide(now: datetime) -> Decision:
            branch = self.branch(branch_id)
            audit_id = str(uuid.uuid4())
            branch.audit(audit_id, standard, scores, findings, timestamp=now, meta=ctx.meta())
            body = {
                "branch_id": str(branch.id),
                "audit_id": audit_id,
                "standard_version": standard.version,
                "grade": branch.grade,
                "rectifications": [
                    r["rectification_id"] for r in branch.rectifications.values() if r["audit_id"] == audit_id
                ],
            }
            return [branch], body

        return self.execute(ctx, decide)

    def complete_rectification(self, ctx: Context, branch_id: str, rectification_id: str, *, evidence: str) -> Receipt:
        return self._step(
            ctx,
            branch_id,
            "report its rectifications",
            lambda b, now: b.complete_rectification(
                rectification_id, evidence, timestamp=now, meta=ctx.meta(), today=self.today(now)
            ),
        )

    def check_rectifications(self, ctx: Context, branch_id: str) -> Receipt | None:
        """Record rectifications overdue as of now; None when none were."""
        overdue = 0

        def decide(now: datetime) -> Decision:
            nonlocal overdue
            branch = self.branch(branch_id)
            overdue = branch.check_rectifications(self.today(now), timestamp=now, meta=ctx.meta())
            return [branch], {"branch_id": str(branch.id), "overdue": overdue}

        receipt = self.execute(ctx, decide)
        return receipt if overdue else None
