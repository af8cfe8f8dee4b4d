"""Volunteer points (志愿者积分制) and in-service party members' service (在职党员到社区报到, 承诺践诺).

Points are money-like: a ledger of signed entries whose sum is the balance, never below zero. Each award
is a lot with its own expiry (fixed by the community's policy when it was earned); redemptions and
reversals take from the lots that expire soonest, and expiry lapses what is left of due lots.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventsourcing.domain import Aggregate, event

from domain.common import LOCAL_TIMEZONE, Meta, check_text, local_year, year_end
from domain.errors import Conflict, DuplicateEntry, InvalidCommand, OutOfScope
from domain.privacy import Sealed

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


def amount(value: Any, field: str) -> Decimal:
    """A positive amount with two decimals, or InvalidCommand."""
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidCommand(f"{field} must be a number, got {value!r}") from None
    if not number.is_finite() or number <= 0:
        raise InvalidCommand(f"{field} must be above zero, got {value!r}")
    return number.quantize(CENT, rounding=ROUND_HALF_UP)


class InsufficientPoints(Conflict):
    """A volunteer's balance does not cover a redemption."""

    code = "insufficient_points"


class OutOfStock(Conflict):
    """A reward has no stock left."""

    code = "out_of_stock"


class RedemptionRefused(Conflict):
    """A redemption was refused; the message names what is short (points, stock or both)."""

    code = "redemption_refused"


class AlreadyCredited(Conflict):
    """A volunteer is credited once per activity."""

    code = "already_credited"


# Lots ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lot:
    """What is left of one award, and when it lapses."""

    activity_id: str
    earned_at: datetime
    expires_at: datetime | None
    remaining: Decimal


Lots = tuple[Lot, ...]


def _spend_order(lot: Lot) -> tuple[int, datetime, datetime]:
    far = datetime.max.replace(tzinfo=UTC)
    return (lot.expires_at is None, lot.expires_at or far, lot.earned_at)


def take(lots: Lots, points: Decimal, first: str | None = None) -> Lots:
    """Remove points from the lots, from `first`'s lot, then the soonest to lapse (favours the volunteer)."""
    order = sorted(range(len(lots)), key=lambda i: (lots[i].activity_id != first, _spend_order(lots[i])))
    out = list(lots)
    left = points
    for i in order:
        if left <= 0:
            break
        used = min(out[i].remaining, left)
        out[i] = replace(out[i], remaining=out[i].remaining - used)
        left -= used
    if left > 0:
        raise AssertionError("took more points than the lots hold")
    return tuple(lot for lot in out if lot.remaining > 0)


def due(lots: Lots, now: datetime) -> Decimal:
    """Points in lots that have lapsed by now."""
    return sum((lot.remaining for lot in lots if lot.expires_at and lot.expires_at <= now), ZERO)


def lapse(lots: Lots, now: datetime) -> Lots:
    return tuple(lot for lot in lots if not (lot.expires_at and lot.expires_at <= now))


def balance(lots: Lots) -> Decimal:
    return sum((lot.remaining for lot in lots), ZERO)


def next_expiry(lots: Lots) -> datetime | None:
    dates = [lot.expires_at for lot in lots if lot.expires_at and lot.remaining > 0]
    return min(dates) if dates else None


# The expiry policy ---------------------------------------------------------------------------


class ExpiryKind(StrEnum):
    """How a community's points lapse."""

    NEVER = "never"
    YEAR_END = "year_end"  # points lapse at the end of the year they were earned in (+ years - 1)
    AFTER_YEARS = "after_years"  # each award lapses N years after it was earned
    AFTER_DAYS = "after_days"  # each award lapses N days after it was earned


def policy_id(community_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"baton:points-policy:{community_id}")


class PointsPolicy(Aggregate):
    """A community's points expiry policy; each award keeps the terms in force when it was earned."""

    @staticmethod
    def create_id(community_id: str) -> UUID:
        return policy_id(community_id)

    @classmethod
    def define(
        cls,
        community_id: str,
        kind: str,
        years: int | None,
        days: int | None,
        timezone: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> PointsPolicy:
        policy = cls(community_id=community_id, timestamp=timestamp, meta=meta)
        policy.set(kind, years, days, timezone, timestamp=timestamp, meta=meta)
        return policy

    @event("Established")
    def __init__(self, community_id: str, *, timestamp: datetime, meta: Meta) -> None:
        self.community_id = community_id
        self.kind = ExpiryKind.NEVER
        self.years: int | None = None
        self.days: int | None = None
        self.timezone = LOCAL_TIMEZONE

    def set(
        self, kind: str, years: int | None, days: int | None, timezone: str, *, timestamp: datetime, meta: Meta
    ) -> None:
        """Set how points earned from now on lapse."""
        try:
            kind_value = ExpiryKind(kind)
        except ValueError:
            allowed = ", ".join(k.value for k in ExpiryKind)
            raise InvalidCommand(f"expiry kind {kind!r} is unknown; use one of: {allowed}") from None
        if kind_value in (ExpiryKind.YEAR_END, ExpiryKind.AFTER_YEARS) and not (isinstance(years, int) and years > 0):
            raise InvalidCommand(f"a {kind_value.value} policy needs years, a whole number above zero")
        if kind_value is ExpiryKind.AFTER_DAYS and not (isinstance(days, int) and days > 0):
            raise InvalidCommand("an after_days policy needs days, a whole number above zero")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidCommand(f"timezone {timezone!r} is unknown; use an IANA name such as Asia/Shanghai") from None
        self._policy_set(
            kind=kind_value.value,
            years=years if kind_value in (ExpiryKind.YEAR_END, ExpiryKind.AFTER_YEARS) else None,
            days=days if kind_value is ExpiryKind.AFTER_DAYS else None,
            timezone=timezone,
            timestamp=timestamp,
            meta=meta,
        )

    @event("PolicySet")
    def _policy_set(
        self, kind: str, years: int | None, days: int | None, timezone: str, *, timestamp: datetime, meta: Meta
    ) -> None:
        self.kind = ExpiryKind(kind)
        self.years, self.days, self.timezone = years, days, timezone

    def expiry_for(self, earned_at: datetime) -> datetime | None:
        """When points earned at earned_at lapse under this policy."""
        return expiry_for(self.kind, self.years, self.days, self.timezone, earned_at)


def expiry_for(
    kind: ExpiryKind, years: int | None, days: int | None, timezone: str, earned_at: datetime
) -> datetime | None:
    if kind is ExpiryKind.NEVER:
        return None
    if kind is ExpiryKind.AFTER_DAYS:
        assert days is not None
        return earned_at + timedelta(days=days)
    assert years is not None
    zone = ZoneInfo(timezone)
    local = earned_at.astimezone(zone)
    if kind is ExpiryKind.YEAR_END:
        return year_end(local.year + years - 1, timezone).astimezone(UTC)
    try:
        lapses = local.replace(year=local.year + years)
    except ValueError:  # 29 February
        lapses = local.replace(year=local.year + years, day=28)
    return lapses.astimezone(UTC)


# Volunteers ----------------------------------------------------------------------------------


class Volunteer(Aggregate):
    """A resident who serves; in-service party members also name their branch (在职党员到社区报到)."""

    id: UUID  # chosen by the application: it is also the person id that seals the volunteer's personal data

    @classmethod
    def register(
        cls,
        *,
        volunteer_id: UUID,
        community_id: str,
        name: Sealed,
        phone: Sealed | None,
        party_member: bool,
        branch: str | None,
        work_unit: str | None,
        timestamp: datetime,
        meta: Meta,
    ) -> Volunteer:
        """Register with the community where the volunteer lives; name and phone arrive sealed."""
        branch = (branch or "").strip() or None
        if party_member and not branch:
            raise InvalidCommand("an in-service party member names their party branch (branch)")
        if branch and not party_member:
            raise InvalidCommand("only party members name a branch; set party_member to true or drop branch")
        return cls(  # type: ignore[call-arg]  # eventsourcing's metaclass takes `id` for an aggregate that declares it
            id=volunteer_id,
            community_id=community_id,
            name=name,
            phone=phone,
            party_member=bool(party_member),
            branch=branch,
            work_unit=(work_unit or "").strip() or None,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Registered")
    def __init__(
        self,
        community_id: str,
        name: Sealed,
        phone: Sealed | None,
        party_member: bool,
        branch: str | None,
        work_unit: str | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.community_id = community_id
        self.name = name
        self.party_member = party_member
        self.branch = branch
        self.lots: Lots = ()
        self.credited: dict[str, Decimal] = {}
        self.voided: set[str] = set()
        self.pledges: dict[int, dict[str, Any]] = {}

    @property
    def balance(self) -> Decimal:
        return balance(self.lots)

    def award(
        self,
        activity_id: str,
        hours: Decimal,
        points: Decimal,
        served_on: str,
        expires_at: datetime | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Credit confirmed service: one award per activity."""
        if activity_id in self.credited:
            raise AlreadyCredited(f"this volunteer was already credited for activity {activity_id}")
        points = amount(points, "points")
        lots = (*self.lots, Lot(activity_id, timestamp, expires_at, points))
        self._awarded(
            activity_id=activity_id,
            hours=hours,
            points=points,
            served_on=served_on,
            expires_at=expires_at,
            balance=balance(lots),
            next_expiry_at=next_expiry(lots),
            timestamp=timestamp,
            meta=meta,
        )

    @event("PointsAwarded")
    def _awarded(
        self,
        activity_id: str,
        hours: Decimal,
        points: Decimal,
        served_on: str,
        expires_at: datetime | None,
        balance: Decimal,
        next_expiry_at: datetime | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.lots = (*self.lots, Lot(activity_id, timestamp, expires_at, points))
        self.credited[activity_id] = points

    def void_award(self, activity_id: str, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        """Reverse an activity's credit after a complaint: what is left of the balance, never below zero."""
        if activity_id not in self.credited:
            raise Conflict(f"this volunteer has no credit for activity {activity_id} to void")
        if activity_id in self.voided:
            raise Conflict(f"the credit for activity {activity_id} is already voided")
        awarded = self.credited[activity_id]
        reversed_points = min(awarded, self.balance)
        lots = take(self.lots, reversed_points, first=activity_id)
        self._award_voided(
            activity_id=activity_id,
            points=-reversed_points,
            shortfall=awarded - reversed_points,
            reason=check_text("reason", reason, 2000),
            balance=balance(lots),
            next_expiry_at=next_expiry(lots),
            timestamp=timestamp,
            meta=meta,
        )

    @event("AwardVoided")
    def _award_voided(
        self,
        activity_id: str,
        points: Decimal,
        shortfall: Decimal,
        reason: str,
        balance: Decimal,
        next_expiry_at: datetime | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.lots = take(self.lots, -points, first=activity_id)
        self.voided.add(activity_id)

    def check_can_spend(self, cost: Decimal) -> str | None:
        """What is short for spending cost, or None."""
        if self.balance < cost:
            return f"the balance of {self.balance} points is {cost - self.balance} short of the cost of {cost}"
        return None

    def redeem(self, redemption_id: str, reward_id: str, cost: Decimal, *, timestamp: datetime, meta: Meta) -> None:
        """Spend points on a reward (the reward's stock is taken in the same transaction)."""
        short = self.check_can_spend(cost)
        if short:
            raise InsufficientPoints(short)
        lots = take(self.lots, cost)
        self._redeemed(
            redemption_id=redemption_id,
            reward_id=reward_id,
            points=-cost,
            balance=balance(lots),
            next_expiry_at=next_expiry(lots),
            timestamp=timestamp,
            meta=meta,
        )

    @event("PointsRedeemed")
    def _redeemed(
        self,
        redemption_id: str,
        reward_id: str,
        points: Decimal,
        balance: Decimal,
        next_expiry_at: datetime | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.lots = take(self.lots, -points)

    def expire(self, *, timestamp: datetime, meta: Meta) -> Decimal:
        """Lapse the points of every lot due by timestamp; return how many lapsed."""
        lapsed = due(self.lots, timestamp)
        if lapsed <= 0:
            return ZERO
        lots = lapse(self.lots, timestamp)
        self._expired(
            points=-lapsed,
            as_of=timestamp,
            balance=balance(lots),
            next_expiry_at=next_expiry(lots),
            timestamp=timestamp,
            meta=meta,
        )
        return lapsed

    @event("PointsExpired")
    def _expired(
        self,
        points: Decimal,
        as_of: datetime,
        balance: Decimal,
        next_expiry_at: datetime | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.lots = lapse(self.lots, as_of)

    def pledge(self, year: int, hours: Decimal | None, service: str | None, *, timestamp: datetime, meta: Meta) -> None:
        """An in-service party member pledges hours or a service for a year (承诺)."""
        if not self.party_member:
            raise Conflict("only in-service party members pledge service; register the volunteer as a party member")
        this_year = local_year(timestamp)
        if not isinstance(year, int) or year not in (this_year, this_year + 1):
            # A pledge for a year gone by would be fulfilled on paper only; one for years ahead, never checked.
            raise InvalidCommand(
                f"a pledge is for this year or the next ({this_year} or {this_year + 1}), got {year!r}"
            )
        if year in self.pledges:
            raise DuplicateEntry(f"this member already pledged for {year}")
        if hours is None and not (service or "").strip():
            raise InvalidCommand("pledge hours, a service, or both")
        self._pledged(
            year=year,
            hours=amount(hours, "hours") if hours is not None else None,
            service=(service or "").strip() or None,
            branch=self.branch,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Pledged")
    def _pledged(
        self,
        year: int,
        hours: Decimal | None,
        service: str | None,
        branch: str | None,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.pledges[year] = {"hours": hours, "service": service}


# Activities ----------------------------------------------------------------------------------


class Activity(Aggregate):
    """A service activity an organiser publishes; only confirmed hours earn points."""

    @classmethod
    def publish(
        cls,
        *,
        community_id: str,
        title: str,
        starts_at: datetime,
        ends_at: datetime,
        place: str,
        capacity: int,
        points_per_hour: Any,
        max_hours: Any,
        timestamp: datetime,
        meta: Meta,
    ) -> Activity:
        """Publish an activity volunteers can sign up for."""
        if starts_at.tzinfo is None or ends_at.tzinfo is None:
            raise InvalidCommand("starts_at and ends_at need a timezone, e.g. 2026-12-05T09:00:00+08:00")
        if ends_at <= starts_at:
            raise InvalidCommand("ends_at must be later than starts_at")
        if not isinstance(capacity, int) or capacity <= 0:
            raise InvalidCommand(f"capacity must be a whole number above zero, got {capacity!r}")
        return cls(
            community_id=community_id,
            title=check_text("title", title, 200),
            starts_at=starts_at.astimezone(UTC),
            ends_at=ends_at.astimezone(UTC),
            place=check_text("place", place, 300),
            capacity=capacity,
            points_per_hour=amount(points_per_hour, "points_per_hour"),
            max_hours=amount(max_hours, "max_hours_per_person"),
            timestamp=timestamp,
            meta=meta,
        )

    @event("Published")
    def __init__(
        self,
        community_id: str,
        title: str,
        starts_at: datetime,
        ends_at: datetime,
        place: str,
        capacity: int,
        points_per_hour: Decimal,
        max_hours: Decimal,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.community_id = community_id
        self.title = title
        self.starts_at = starts_at
        self.ends_at = ends_at
        self.capacity = capacity
        self.points_per_hour = points_per_hour
        self.max_hours = max_hours
        self.signups: list[str] = []
        self.confirmed: dict[str, Decimal] = {}
        self.voided = False

    def check_not_voided(self) -> None:
        if self.voided:
            raise Conflict("this activity's credit was voided after a complaint")

    def sign_up(self, volunteer_id: str, *, timestamp: datetime, meta: Meta) -> None:
        """A volunteer signs up, while there is room and before the activity ends."""
        self.check_not_voided()
        if volunteer_id in self.signups:
            raise DuplicateEntry("this volunteer already signed up")
        if len(self.signups) >= self.capacity:
            raise Conflict(f"the activity is full: {self.capacity} of {self.capacity} places taken")
        if timestamp >= self.ends_at:
            raise Conflict("the activity is over; sign-ups are closed")
        self._signed_up(volunteer_id=volunteer_id, signups=len(self.signups) + 1, timestamp=timestamp, meta=meta)

    @event("SignedUp")
    def _signed_up(self, volunteer_id: str, signups: int, *, timestamp: datetime, meta: Meta) -> None:
        self.signups.append(volunteer_id)

    def confirm_attendance(
        self, volunteer_id: str, hours: Any, *, timestamp: datetime, meta: Meta
    ) -> tuple[Decimal, Decimal]:
        """The organiser confirms a volunteer's hours; returns (credited hours, points): hours are capped per person."""
        self.check_not_voided()
        if volunteer_id not in self.signups:
            raise Conflict("only volunteers who signed up can be confirmed; sign them up first")
        if volunteer_id in self.confirmed:
            raise AlreadyCredited("this volunteer's attendance is already confirmed; one credit per activity")
        if timestamp < self.starts_at:
            raise Conflict(f"the activity starts at {self.starts_at.isoformat()}; confirm attendance after it")
        worked = amount(hours, "hours")
        credited = min(worked, self.max_hours)
        points = (credited * self.points_per_hour).quantize(CENT, rounding=ROUND_HALF_UP)
        self._attendance_confirmed(
            volunteer_id=volunteer_id,
            hours=worked,
            credited_hours=credited,
            points=points,
            served_on=self.starts_at.date().isoformat(),
            timestamp=timestamp,
            meta=meta,
        )
        return credited, points

    @event("AttendanceConfirmed")
    def _attendance_confirmed(
        self,
        volunteer_id: str,
        hours: Decimal,
        credited_hours: Decimal,
        points: Decimal,
        served_on: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.confirmed[volunteer_id] = points

    def void_credit(self, reason: str, *, timestamp: datetime, meta: Meta) -> list[str]:
        """A complaint voids the activity's credit; returns the volunteers whose awards must be reversed."""
        self.check_not_voided()
        volunteers = list(self.confirmed)
        self._credit_voided(
            reason=check_text("reason", reason, 2000), volunteers=volunteers, timestamp=timestamp, meta=meta
        )
        return volunteers

    @event("CreditVoided")
    def _credit_voided(self, reason: str, volunteers: list[str], *, timestamp: datetime, meta: Meta) -> None:
        self.voided = True


# Rewards -------------------------------------------------------------------------------------


class Reward(Aggregate):
    """A gift in a community's catalogue, with a point cost and stock."""

    @classmethod
    def offer(cls, *, community_id: str, name: str, cost: Any, stock: int, timestamp: datetime, meta: Meta) -> Reward:
        """Add a gift to the community's catalogue."""
        if not isinstance(stock, int) or stock < 0:
            raise InvalidCommand(f"stock must be a whole number of zero or more, got {stock!r}")
        return cls(
            community_id=community_id,
            name=check_text("name", name, 200),
            cost=amount(cost, "cost"),
            stock=stock,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Listed")
    def __init__(
        self, community_id: str, name: str, cost: Decimal, stock: int, *, timestamp: datetime, meta: Meta
    ) -> None:
        self.community_id = community_id
        self.name = name
        self.cost = cost
        self.stock = stock

    def restock(self, quantity: int, *, timestamp: datetime, meta: Meta) -> None:
        if not isinstance(quantity, int) or quantity <= 0:
            raise InvalidCommand(f"quantity must be a whole number above zero, got {quantity!r}")
        self._restocked(quantity=quantity, stock=self.stock + quantity, timestamp=timestamp, meta=meta)

    @event("Restocked")
    def _restocked(self, quantity: int, stock: int, *, timestamp: datetime, meta: Meta) -> None:
        self.stock = stock

    def check_in_stock(self) -> str | None:
        """What is short for handing one out, or None."""
        return None if self.stock > 0 else f"reward '{self.name}' is out of stock"

    def hand_out(self, redemption_id: str, volunteer_id: str, *, timestamp: datetime, meta: Meta) -> None:
        """Take one from stock for a redemption (the points are spent in the same transaction)."""
        short = self.check_in_stock()
        if short:
            raise OutOfStock(short)
        self._handed_out(
            redemption_id=redemption_id,
            volunteer_id=volunteer_id,
            stock=self.stock - 1,
            timestamp=timestamp,
            meta=meta,
        )

    @event("HandedOut")
    def _handed_out(
        self, redemption_id: str, volunteer_id: str, stock: int, *, timestamp: datetime, meta: Meta
    ) -> None:
        self.stock = stock


def redeem(volunteer: Volunteer, reward: Reward, redemption_id: str, *, timestamp: datetime, meta: Meta) -> None:
    """Points and stock together or not at all; a refusal names everything that is short."""
    if reward.community_id != volunteer.community_id:
        raise OutOfScope(
            f"reward '{reward.name}' is in community {reward.community_id}'s catalogue; "
            f"this volunteer redeems in {volunteer.community_id}"
        )
    shortages = [s for s in (volunteer.check_can_spend(reward.cost), reward.check_in_stock()) if s]
    if shortages:
        raise RedemptionRefused("cannot redeem: " + "; ".join(shortages))
    volunteer.redeem(redemption_id, str(reward.id), reward.cost, timestamp=timestamp, meta=meta)
    reward.hand_out(redemption_id, str(volunteer.id), timestamp=timestamp, meta=meta)
