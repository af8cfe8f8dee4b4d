"""For any sequence of awards, voids, redemptions, restocks and expiries: each balance equals the sum of its
ledger entries and never goes below zero; stock likewise."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domain.errors import DomainError
from domain.privacy import Sealed
from domain.volunteering import Reward, Volunteer, redeem
from tests.scenarios import VOLUNTEERING_META as META
from tests.scenarios import VOLUNTEERING_T0 as T0

points = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500"), places=2)


class LedgerMachine(RuleBasedStateMachine):
    """Two volunteers and two rewards of one community, driven at random."""

    @initialize(stocks=st.lists(st.integers(0, 5), min_size=2, max_size=2))
    def open(self, stocks: list[int]) -> None:
        self.now = T0
        self.volunteers = [
            Volunteer.register(
                volunteer_id=(vid := uuid4()),
                community_id="tishu",
                name=Sealed(f"pii1.{vid.hex}.c2VhbGVk"),
                phone=None,
                party_member=False,
                branch=None,
                work_unit=None,
                timestamp=T0,
                meta=META,
            )
            for i in range(2)
        ]
        self.rewards = [
            Reward.offer(community_id="tishu", name=f"r{i}", cost=str(10 * (i + 1)), stock=s, timestamp=T0, meta=META)
            for i, s in enumerate(stocks)
        ]
        self.ledgers: list[list[Decimal]] = [[], []]
        self.stock_moves = [[s] for s in stocks]
        self.activities = 0
        self.history: list[list] = [[], []]
        self._collect()

    def _collect(self) -> None:
        for i, v in enumerate(self.volunteers):
            for e in v.collect_events():
                self.history[i].append(e)
                if hasattr(e, "points"):
                    self.ledgers[i].append(e.points)
                    assert e.balance == sum(self.ledgers[i]), "an event's balance is not the sum of the ledger"
        for i, r in enumerate(self.rewards):
            for e in r.collect_events():
                name = type(e).__name__
                if name == "Restocked":
                    self.stock_moves[i].append(e.quantity)
                elif name == "HandedOut":
                    self.stock_moves[i].append(-1)

    def _try(self, command) -> None:
        try:
            command()
        except DomainError:
            assert all(not v.pending_events for v in self.volunteers)
            assert all(not r.pending_events for r in self.rewards)
        self._collect()

    @rule(who=st.integers(0, 1), amount=points, lapses_in_days=st.one_of(st.none(), st.integers(1, 400)))
    def award(self, who: int, amount: Decimal, lapses_in_days: int | None) -> None:
        self.activities += 1
        expires = None if lapses_in_days is None else self.now + timedelta(days=lapses_in_days)
        v = self.volunteers[who]
        self._try(
            lambda: v.award(
                f"a{self.activities}", Decimal(1), amount, "2026-12-05", expires, timestamp=self.now, meta=META
            )
        )

    @rule(who=st.integers(0, 1), data=st.data())
    def void(self, who: int, data: st.DataObject) -> None:
        v = self.volunteers[who]
        if not v.credited:
            return
        activity = data.draw(st.sampled_from(sorted(v.credited)))
        self._try(lambda: v.void_award(activity, "complaint", timestamp=self.now, meta=META))

    @rule(who=st.integers(0, 1), which=st.integers(0, 1))
    def redeem(self, who: int, which: int) -> None:
        self._try(
            lambda: redeem(self.volunteers[who], self.rewards[which], f"r{self.now}", timestamp=self.now, meta=META)
        )

    @rule(which=st.integers(0, 1), quantity=st.integers(1, 3))
    def restock(self, which: int, quantity: int) -> None:
        self._try(lambda: self.rewards[which].restock(quantity, timestamp=self.now, meta=META))

    @rule(days=st.integers(1, 200))
    def time_passes_and_points_lapse(self, days: int) -> None:
        self.now += timedelta(days=days)
        for v in self.volunteers:
            self._try(lambda v=v: v.expire(timestamp=self.now, meta=META))

    @precondition(lambda self: hasattr(self, "volunteers"))
    @invariant()
    def balances_are_the_sum_of_their_ledgers_and_never_negative(self) -> None:
        for v, entries in zip(self.volunteers, self.ledgers, strict=True):
            assert v.balance == sum(entries, Decimal(0)) >= 0
            assert all(lot.remaining > 0 for lot in v.lots)

    @precondition(lambda self: hasattr(self, "rewards"))
    @invariant()
    def stock_is_the_sum_of_its_moves_and_never_negative(self) -> None:
        for r, moves in zip(self.rewards, self.stock_moves, strict=True):
            assert r.stock == sum(moves) >= 0

    @precondition(lambda self: hasattr(self, "volunteers"))
    @invariant()
    def the_history_rebuilds_the_same_volunteers(self) -> None:
        for v, history in zip(self.volunteers, self.history, strict=True):
            rebuilt = None
            for event in history:
                rebuilt = event.mutate(rebuilt)
            assert rebuilt.__dict__ == {**v.__dict__, "_pending_events": []}


LedgerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedger = LedgerMachine.TestCase
