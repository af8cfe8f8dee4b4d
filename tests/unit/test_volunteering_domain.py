"""Volunteer points on the aggregates alone: awards, voids, redemptions, expiry, activities, pledges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import pytest

from domain.errors import Conflict, DuplicateEntry, InvalidCommand, OutOfScope
from domain.privacy import Sealed
from domain.volunteering import (
    Activity,
    AlreadyCredited,
    ExpiryKind,
    PointsPolicy,
    RedemptionRefused,
    Reward,
    Volunteer,
    expiry_for,
    redeem,
)
from tests.scenarios import VOLUNTEERING_META as META
from tests.scenarios import VOLUNTEERING_T0 as T0

D = Decimal


def volunteer(party_member: bool = False, branch: str | None = None) -> Volunteer:
    volunteer_id = uuid4()
    return Volunteer.register(
        volunteer_id=volunteer_id,
        community_id="tishu",
        name=Sealed(f"pii1.{volunteer_id.hex}.c2VhbGVk"),
        phone=None,
        party_member=party_member,
        branch=branch,
        work_unit=None,
        timestamp=T0,
        meta=META,
    )


def award(v: Volunteer, activity: str, points: str, expires_at: datetime | None = None, at: datetime = T0) -> None:
    v.award(activity, D("2"), D(points), "2026-12-05", expires_at, timestamp=at, meta=META)


def ledger(v: Volunteer) -> list[tuple[str, Decimal]]:
    return [(type(e).__name__, e.points) for e in v.collect_events() if hasattr(e, "points")]


def reward(stock: int = 3, cost: str = "50") -> Reward:
    return Reward.offer(community_id="tishu", name="大米 5kg", cost=cost, stock=stock, timestamp=T0, meta=META)


def test_awards_and_redemptions_are_signed_entries_that_sum_to_the_balance() -> None:
    v, r = volunteer(), reward()
    award(v, "a1", "30")
    award(v, "a2", "25.50")
    redeem(v, r, "red-1", timestamp=T0, meta=META)
    assert v.balance == D("5.50") and r.stock == 2
    entries = ledger(v)
    assert entries == [("PointsAwarded", D("30.00")), ("PointsAwarded", D("25.50")), ("PointsRedeemed", D("-50.00"))]
    assert sum(p for _, p in entries) == v.balance


@pytest.mark.parametrize(
    "balance, stock, message",
    [
        ("10", 3, "the balance of 10.00 points is 40.00 short of the cost of 50.00"),
        ("60", 0, "reward '大米 5kg' is out of stock"),
        ("10", 0, "short of the cost of 50.00; reward '大米 5kg' is out of stock"),
    ],
)
def test_a_refused_redemption_says_what_is_short_and_changes_nothing(balance: str, stock: int, message: str) -> None:
    v, r = volunteer(), reward(stock=stock)
    award(v, "a1", balance)
    v.collect_events()
    with pytest.raises(RedemptionRefused, match=message):
        redeem(v, r, "red-1", timestamp=T0, meta=META)
    assert v.balance == D(balance) and not v.pending_events and r.stock == stock


def test_a_reward_of_another_communitys_catalogue_is_refused() -> None:
    v = volunteer()
    award(v, "a1", "100")
    other = Reward.offer(community_id="qingshan", name="毛巾", cost="5", stock=9, timestamp=T0, meta=META)
    with pytest.raises(OutOfScope, match="qingshan"):
        redeem(v, other, "red-1", timestamp=T0, meta=META)


def test_one_credit_per_activity() -> None:
    v = volunteer()
    award(v, "a1", "10")
    with pytest.raises(AlreadyCredited):
        award(v, "a1", "10")


def test_a_void_reverses_what_is_left_and_never_goes_below_zero() -> None:
    v, r = volunteer(), reward(cost="50")
    award(v, "a1", "40")
    award(v, "a2", "20")
    redeem(v, r, "red-1", timestamp=T0, meta=META)  # 10 left
    v.collect_events()
    v.void_award("a1", "complaint: nobody turned up", timestamp=T0, meta=META)
    (voided,) = v.collect_events()
    assert voided.points == D("-10.00") and voided.shortfall == D("30.00") and v.balance == 0
    with pytest.raises(Conflict, match="already voided"):
        v.void_award("a1", "again", timestamp=T0, meta=META)


def test_spending_takes_the_points_that_lapse_soonest() -> None:
    v, r = volunteer(), reward(cost="50")
    award(v, "never", "50", None)
    award(v, "soon", "50", T0 + timedelta(days=10))
    redeem(v, r, "red-1", timestamp=T0, meta=META)
    assert v.expire(timestamp=T0 + timedelta(days=11), meta=META) == 0
    assert v.balance == D("50.00")


def test_expiry_lapses_due_lots_as_a_ledger_entry() -> None:
    v = volunteer()
    award(v, "old", "30", T0 + timedelta(days=1))
    award(v, "new", "20", T0 + timedelta(days=100))
    v.collect_events()
    assert v.expire(timestamp=T0 + timedelta(hours=23), meta=META) == 0
    assert v.expire(timestamp=T0 + timedelta(days=2), meta=META) == D("30.00")
    (expired,) = v.collect_events()
    assert expired.points == D("-30.00") and expired.balance == D("20.00")
    assert expired.next_expiry_at == T0 + timedelta(days=100)


def test_expiry_policies() -> None:
    shanghai_new_year = datetime(2026, 12, 31, 16, 0, tzinfo=UTC)  # 2027-01-01 00:00 in Asia/Shanghai
    assert expiry_for(ExpiryKind.YEAR_END, 1, None, "Asia/Shanghai", T0) == shanghai_new_year
    assert expiry_for(ExpiryKind.YEAR_END, 2, None, "Asia/Shanghai", T0) == datetime(2027, 12, 31, 16, tzinfo=UTC)
    leap = datetime(2028, 2, 29, 4, tzinfo=UTC)
    assert expiry_for(ExpiryKind.AFTER_YEARS, 1, None, "Asia/Shanghai", leap) == datetime(2029, 2, 28, 4, tzinfo=UTC)
    assert expiry_for(ExpiryKind.AFTER_DAYS, None, 30, "UTC", T0) == T0 + timedelta(days=30)
    assert expiry_for(ExpiryKind.NEVER, None, None, "UTC", T0) is None
    policy = PointsPolicy.define("tishu", "year_end", 1, None, "Asia/Shanghai", timestamp=T0, meta=META)
    assert policy.expiry_for(T0) == shanghai_new_year
    with pytest.raises(InvalidCommand, match="needs years"):
        policy.set("after_years", None, None, "Asia/Shanghai", timestamp=T0, meta=META)
    with pytest.raises(InvalidCommand, match="timezone"):
        policy.set("never", None, None, "Mars/Olympus", timestamp=T0, meta=META)


def activity(capacity: int = 2, max_hours: str = "3") -> Activity:
    return Activity.publish(
        community_id="tishu",
        title="敬老院义务理发",
        starts_at=T0,
        ends_at=T0 + timedelta(hours=4),
        place="提署社区敬老院",
        capacity=capacity,
        points_per_hour="10",
        max_hours=max_hours,
        timestamp=T0 - timedelta(days=3),
        meta=META,
    )


def test_activity_capacity_signups_and_capped_confirmed_hours() -> None:
    a = activity(capacity=2)
    a.sign_up("v1", timestamp=T0 - timedelta(days=1), meta=META)
    with pytest.raises(DuplicateEntry):
        a.sign_up("v1", timestamp=T0 - timedelta(days=1), meta=META)
    a.sign_up("v2", timestamp=T0 - timedelta(days=1), meta=META)
    with pytest.raises(Conflict, match="full"):
        a.sign_up("v3", timestamp=T0 - timedelta(days=1), meta=META)
    with pytest.raises(Conflict, match="confirm attendance after it"):
        a.confirm_attendance("v1", "2", timestamp=T0 - timedelta(hours=1), meta=META)
    with pytest.raises(Conflict, match="signed up"):
        a.confirm_attendance("v3", "2", timestamp=T0 + timedelta(hours=5), meta=META)
    assert a.confirm_attendance("v1", "4", timestamp=T0 + timedelta(hours=5), meta=META) == (D("3.00"), D("30.00"))
    with pytest.raises(AlreadyCredited):
        a.confirm_attendance("v1", "1", timestamp=T0 + timedelta(hours=5), meta=META)
    assert a.void_credit("complaint", timestamp=T0 + timedelta(days=1), meta=META) == ["v1"]
    with pytest.raises(Conflict, match="voided"):
        a.confirm_attendance("v2", "1", timestamp=T0 + timedelta(days=1), meta=META)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"capacity": 0}, "capacity"),
        ({"ends_at": T0 - timedelta(hours=1)}, "ends_at must be later"),
        ({"points_per_hour": "-1"}, "points_per_hour must be above zero"),
        ({"starts_at": datetime(2026, 12, 5, 9)}, "need a timezone"),
    ],
)
def test_activity_input_is_checked(kwargs: dict, message: str) -> None:
    base = dict(
        community_id="tishu",
        title="t",
        starts_at=T0,
        ends_at=T0 + timedelta(hours=2),
        place="p",
        capacity=5,
        points_per_hour="10",
        max_hours="2",
        timestamp=T0,
        meta=META,
    )
    with pytest.raises(InvalidCommand, match=message):
        Activity.publish(**{**base, **kwargs})


def test_only_party_members_pledge_once_a_year_and_name_their_branch() -> None:
    with pytest.raises(InvalidCommand, match="branch"):
        volunteer(party_member=True)
    member = volunteer(party_member=True, branch="县住建局第一党支部")
    member.pledge(2026, D("24"), "每月一次楼道清洁", timestamp=T0, meta=META)
    with pytest.raises(DuplicateEntry, match="2026"):
        member.pledge(2026, D("10"), None, timestamp=T0, meta=META)
    with pytest.raises(Conflict, match="party member"):
        volunteer().pledge(2026, D("10"), None, timestamp=T0, meta=META)
    member.pledge(2027, D("30"), None, timestamp=T0, meta=META)  # in December, for the year ahead
    for year in (2025, 2028):
        with pytest.raises(InvalidCommand, match=rf"this year or the next \(2026 or 2027\), got {year}"):
            member.pledge(year, D("10"), None, timestamp=T0, meta=META)


def test_restock_adds_to_stock() -> None:
    r = reward(stock=0)
    r.restock(5, timestamp=T0, meta=META)
    assert r.stock == 5
    with pytest.raises(InvalidCommand):
        r.restock(0, timestamp=T0, meta=META)
