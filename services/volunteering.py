"""The volunteering context: volunteers, activities, points, rewards, expiry and party members' pledges."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from domain.common import check_text
from domain.errors import NotFound, OutOfScope, Thing
from domain.volunteering import Activity, PointsPolicy, Reward, Volunteer, policy_id, redeem
from infra.clock import Clock
from infra.store import Store
from services.access import Actor, Context, Role, check_acts_for_community
from services.base import BatonApplication, Decision, Receipt
from services.organisation import OrganisationApp

T = TypeVar("T", bound=Aggregate)

COMMUNITY_STAFF = (Role.ADMIN, Role.COMMUNITY, Role.ORGANISER, Role.STREET, Role.DISTRICT)
ORGANISERS = (Role.ADMIN, Role.COMMUNITY, Role.ORGANISER)


class VolunteeringApp(BatonApplication):
    """Keeps volunteers' points with a bank's care: one ledger, never below zero, stock and points together."""

    def __init__(self, store: Store, clock: Clock, org: OrganisationApp) -> None:
        super().__init__(store, clock)
        self.org = org

    def _get(self, kind: type[T], thing: Thing, aggregate_id: UUID | str) -> T:
        try:
            found = self.repository.get(UUID(str(aggregate_id)))
        except (AggregateNotFoundError, ValueError):
            found = None
        if not isinstance(found, kind):
            raise NotFound(f"{thing} {aggregate_id} does not exist", thing, aggregate_id)
        return found

    def volunteer(self, volunteer_id: UUID | str) -> Volunteer:
        return self._get(Volunteer, Thing.VOLUNTEER, volunteer_id)

    def activity(self, activity_id: UUID | str) -> Activity:
        return self._get(Activity, Thing.ACTIVITY, activity_id)

    def reward(self, reward_id: UUID | str) -> Reward:
        return self._get(Reward, Thing.REWARD, reward_id)

    def policy(self, community_id: str) -> PointsPolicy | None:
        try:
            return self.repository.get(policy_id(community_id))
        except AggregateNotFoundError:
            return None

    def _scope(self, actor: Actor, community_id: str, action: str, *roles: Role) -> None:
        org = self.org.current()
        org.community(community_id)
        check_acts_for_community(org, actor, community_id, action, *roles)

    @staticmethod
    def _check_self(actor: Actor, volunteer_id: str, action: str) -> None:
        if actor.role is not Role.VOLUNTEER or actor.id != str(volunteer_id):
            raise OutOfScope(f"a volunteer {action} only for themself, with their own volunteer token")

    # Volunteers ------------------------------------------------------------------------------

    def register_volunteer(
        self,
        ctx: Context,
        *,
        community_id: str,
        name: str,
        phone: str | None = None,
        party_member: bool = False,
        branch: str | None = None,
        work_unit: str | None = None,
    ) -> Receipt:
        """Register a volunteer with the community where they live."""
        self._scope(ctx.actor, community_id, "register volunteers", *COMMUNITY_STAFF)

        volunteer_id = uuid.uuid4()  # the volunteer is the person whose key seals their name and phone
        name = check_text("name", name, 100)

        def decide(now: datetime) -> Decision:
            vault = self.store.vault
            volunteer = Volunteer.register(
                volunteer_id=volunteer_id,
                community_id=community_id,
                name=vault.seal(volunteer_id, community_id, name),
                phone=vault.seal_optional(volunteer_id, community_id, phone),
                party_member=party_member,
                branch=branch,
                work_unit=work_unit,
                timestamp=now,
                meta=ctx.meta(),
            )
            return [volunteer], {"volunteer_id": str(volunteer.id)}

        return self.execute(ctx, decide)

    def pledge(
        self, ctx: Context, volunteer_id: str, *, year: int, hours: Decimal | None, service: str | None
    ) -> Receipt:
        """An in-service party member pledges service for a year (承诺践诺)."""

        def decide(now: datetime) -> Decision:
            volunteer = self.volunteer(volunteer_id)
            if ctx.actor.role is Role.VOLUNTEER:
                self._check_self(ctx.actor, volunteer_id, "pledges")
            else:
                self._scope(ctx.actor, volunteer.community_id, "record pledges", Role.ADMIN, Role.COMMUNITY)
            volunteer.pledge(year, hours, service, timestamp=now, meta=ctx.meta())
            return [volunteer], {"volunteer_id": str(volunteer.id), "year": year}

        return self.execute(ctx, decide)

    def set_points_policy(
        self, ctx: Context, *, community_id: str, kind: str, years: int | None, days: int | None, timezone: str
    ) -> Receipt:
        """Set how the community's points lapse from now on."""
        self._scope(ctx.actor, community_id, "set the points policy", Role.ADMIN, Role.COMMUNITY)

        def decide(now: datetime) -> Decision:
            policy = self.policy(community_id)
            if policy is None:
                policy = PointsPolicy.define(community_id, kind, years, days, timezone, timestamp=now, meta=ctx.meta())
            else:
                policy.set(kind, years, days, timezone, timestamp=now, meta=ctx.meta())
            return [policy], {"community_id": community_id, "kind": policy.kind.value}

        return self.execute(ctx, decide)

    # Activities ------------------------------------------------------------------------------

    def publish_activity(
        self,
        ctx: Context,
        *,
        community_id: str,
        title: str,
        starts_at: datetime,
        ends_at: datetime,
        place: str,
        capacity: int,
        points_per_hour: Any,
        max_hours_per_person: Any,
    ) -> Receipt:
        self._scope(ctx.actor, community_id, "publish activities", *ORGANISERS)

        def decide(now: datetime) -> Decision:
            activity = Activity.publish(
                community_id=community_id,
                title=title,
                starts_at=starts_at,
                ends_at=ends_at,
                place=place,
                capacity=capacity,
                points_per_hour=points_per_hour,
                max_hours=max_hours_per_person,
                timestamp=now,
                meta=ctx.meta(),
            )
            return [activity], {"activity_id": str(activity.id)}

        return self.execute(ctx, decide)

    def sign_up(self, ctx: Context, activity_id: str, *, volunteer_id: str) -> Receipt:
        """A volunteer signs up (themself, or through an organiser)."""

        def decide(now: datetime) -> Decision:
            activity = self.activity(activity_id)
            volunteer = self.volunteer(volunteer_id)
            if ctx.actor.role is Role.VOLUNTEER:
                self._check_self(ctx.actor, volunteer_id, "signs up")
            else:
                self._scope(ctx.actor, activity.community_id, "sign volunteers up", *ORGANISERS)
            activity.sign_up(str(volunteer.id), timestamp=now, meta=ctx.meta())
            return [activity], {"activity_id": str(activity.id), "volunteer_id": str(volunteer.id)}

        return self.execute(ctx, decide)

    def confirm_attendance(self, ctx: Context, activity_id: str, *, volunteer_id: str, hours: Any) -> Receipt:
        """The organiser confirms hours; the volunteer is credited in the same transaction, once."""

        def decide(now: datetime) -> Decision:
            activity = self.activity(activity_id)
            self._scope(ctx.actor, activity.community_id, "confirm attendance", *ORGANISERS)
            volunteer = self.volunteer(volunteer_id)
            credited, points = activity.confirm_attendance(str(volunteer.id), hours, timestamp=now, meta=ctx.meta())
            policy = self.policy(volunteer.community_id)
            volunteer.award(
                str(activity.id),
                credited,
                points,
                activity.starts_at.date().isoformat(),
                policy.expiry_for(now) if policy else None,
                timestamp=now,
                meta=ctx.meta(),
            )
            body = {
                "activity_id": str(activity.id),
                "volunteer_id": str(volunteer.id),
                "points": str(points),
                "balance": str(volunteer.balance),
            }
            return [activity, volunteer], body

        return self.execute(ctx, decide)

    def void_credit(self, ctx: Context, activity_id: str, *, reason: str) -> Receipt:
        """A complaint voids an activity's credit: a reversing entry for every volunteer credited."""

        def decide(now: datetime) -> Decision:
            activity = self.activity(activity_id)
            self._scope(ctx.actor, activity.community_id, "void an activity's credit", *ORGANISERS)
            changed: list[Aggregate] = [activity]
            for volunteer_id in activity.void_credit(reason, timestamp=now, meta=ctx.meta()):
                volunteer = self.volunteer(volunteer_id)
                volunteer.void_award(str(activity.id), reason, timestamp=now, meta=ctx.meta())
                changed.append(volunteer)
            return changed, {"activity_id": str(activity.id), "reversed": len(changed) - 1}

        return self.execute(ctx, decide)

    # Rewards ---------------------------------------------------------------------------------

    def offer_reward(self, ctx: Context, *, community_id: str, name: str, cost: Any, stock: int) -> Receipt:
        self._scope(ctx.actor, community_id, "manage the reward catalogue", *ORGANISERS)

        def decide(now: datetime) -> Decision:
            reward = Reward.offer(
                community_id=community_id, name=name, cost=cost, stock=stock, timestamp=now, meta=ctx.meta()
            )
            return [reward], {"reward_id": str(reward.id)}

        return self.execute(ctx, decide)

    def restock(self, ctx: Context, reward_id: str, *, quantity: int) -> Receipt:
        def decide(now: datetime) -> Decision:
            reward = self.reward(reward_id)
            self._scope(ctx.actor, reward.community_id, "restock rewards", *ORGANISERS)
            reward.restock(quantity, timestamp=now, meta=ctx.meta())
            return [reward], {"reward_id": str(reward.id), "stock": reward.stock}

        return self.execute(ctx, decide)

    def redeem(self, ctx: Context, volunteer_id: str, *, reward_id: str) -> Receipt:
        """Spend points on a gift: points and stock in one transaction, or a refusal naming what is short."""
        self._check_self(ctx.actor, volunteer_id, "redeems")

        def decide(now: datetime) -> Decision:
            volunteer = self.volunteer(volunteer_id)
            reward = self.reward(reward_id)
            redemption_id = str(uuid.uuid4())
            redeem(volunteer, reward, redemption_id, timestamp=now, meta=ctx.meta())
            body = {
                "redemption_id": redemption_id,
                "volunteer_id": str(volunteer.id),
                "reward_id": str(reward.id),
                "points": str(reward.cost),
                "balance": str(volunteer.balance),
                "stock": reward.stock,
            }
            return [volunteer, reward], body

        return self.execute(ctx, decide)

    # Expiry ----------------------------------------------------------------------------------

    def expire_points(self, ctx: Context, volunteer_id: str) -> Receipt | None:
        """Lapse what is due as of now; None when nothing was."""
        lapsed = Decimal(0)

        def decide(now: datetime) -> Decision:
            nonlocal lapsed
            volunteer = self.volunteer(volunteer_id)
            lapsed = volunteer.expire(timestamp=now, meta=ctx.meta())
            return [volunteer], {"volunteer_id": str(volunteer.id), "expired": str(lapsed)}

        receipt = self.execute(ctx, decide)
        return receipt if lapsed > 0 else None
