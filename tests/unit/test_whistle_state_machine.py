"""Random command sequences never break the step order, never lose a summoned department,
and never dispatch a department duty to a community unfunded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domain.errors import DomainError, StepOutOfOrder
from domain.organisation import resolve_deadlines
from domain.whistle import STEPS_BY_STATUS, TRANSITIONS, Status, Whistle
from tests.scenarios import WHISTLE_META as META
from tests.scenarios import WHISTLE_T0 as T0

DEPARTMENTS = ["HOUSING", "PSB", "EDU"]
HANDLERS = [*DEPARTMENTS, "tishu"]
CHAIN = ["gushu", "dangtu", "maanshan"]

handler = st.sampled_from(HANDLERS)
funding = st.one_of(st.none(), st.just({"amount_yuan": "3000", "from_department": "HOUSING"}))


class WhistleMachine(RuleBasedStateMachine):
    """Drives one whistle with random commands and checks every event it records."""

    @initialize(
        duty=st.sampled_from(["department", "community"]),
        summoned=st.lists(st.sampled_from(DEPARTMENTS), min_size=1, max_size=3, unique=True),
        urgency=st.sampled_from(["normal", "urgent"]),
    )
    def blow(self, duty: str, summoned: list[str], urgency: str) -> None:
        self.now = T0
        category = {"code": "c", "duty": duty, "departments": ["HOUSING"], "deadlines": resolve_deadlines("normal")}
        self.whistle = Whistle.blow(
            community_id="tishu",
            escalation_chain=CHAIN,
            category=category,
            title="t",
            description="d",
            urgency=urgency,
            summoned_departments=summoned,
            grid_id=None,
            location=None,
            source="community",
            timestamp=self.now,
            meta=META,
        )
        self.summoned = list(summoned)
        self.duty = duty
        self.status = Status.BLOWN
        self.level = 0
        self.history: list[Any] = []
        self._absorb()

    def _tick(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    def _try(self, step: str | None, command: Any) -> None:
        before = self.whistle.status
        try:
            command()
        except StepOutOfOrder as exc:
            assert step is not None and step not in STEPS_BY_STATUS[before]
            assert exc.status == before.value
            assert not self.whistle.pending_events
        except DomainError:
            assert not self.whistle.pending_events
        else:
            if step is not None:
                assert step in STEPS_BY_STATUS[before], f"{step} was accepted in {before}"
        self._absorb()

    def _absorb(self) -> None:
        for event in self.whistle.collect_events():
            self.history.append(event)
            status = getattr(event, "status", None)
            if status is not None:
                new = Status(status)
                assert new == self.status or new in TRANSITIONS[self.status], f"{self.status} -> {new}"
                self.status = new
            name = type(event).__name__
            if name == "Dispatched":
                handlers = [event.lead_department, *event.co_departments]
                if self.duty == "department" and "tishu" in handlers:
                    assert event.funding is not None, "department duty dispatched to the community unfunded"
            if name == "ReportedIn":
                assert event.department in self.summoned
            if name == "Escalated":
                assert event.level == self.level + 1 and event.to_unit == CHAIN[self.level]
                self.level = event.level

    @rule(department=st.sampled_from(DEPARTMENTS), minutes=st.integers(0, 200))
    def report_in(self, department: str, minutes: int) -> None:
        self._tick(minutes)
        self._try("report_in", lambda: self.whistle.report_in(department, timestamp=self.now, meta=META))

    @rule(lead=handler, co=st.lists(handler, max_size=2, unique=True), money=funding, minutes=st.integers(0, 60))
    def dispatch(self, lead: str, co: list[str], money: dict | None, minutes: int) -> None:
        self._tick(minutes)
        self._try("dispatch", lambda: self.whistle.dispatch(lead, co, None, money, timestamp=self.now, meta=META))

    @rule(department=handler)
    def decline(self, department: str) -> None:
        self._tick(5)
        self._try("decline", lambda: self.whistle.decline(department, "not ours", timestamp=self.now, meta=META))

    @rule(department=handler)
    def progress(self, department: str) -> None:
        self._tick(30)
        self._try("progress", lambda: self.whistle.record_progress(department, "on it", timestamp=self.now, meta=META))

    @rule(department=handler)
    def complete(self, department: str) -> None:
        self._tick(60)
        self._try("complete", lambda: self.whistle.complete(department, "done", timestamp=self.now, meta=META))

    @rule(department=handler, resolved=st.booleans())
    def feedback(self, department: str, resolved: bool) -> None:
        self._tick(10)
        self._try(
            "feedback",
            lambda: self.whistle.feed_back(department, "result", resolved, timestamp=self.now, meta=META),
        )

    @rule(rating=st.sampled_from(["satisfied", "basically_satisfied", "dissatisfied"]))
    def evaluate(self, rating: str) -> None:
        self._tick(60)
        self._try("evaluate", lambda: self.whistle.evaluate(rating, None, timestamp=self.now, meta=META))

    @rule(hours=st.integers(1, 24 * 20))
    def time_passes(self, hours: int) -> None:
        self._tick(hours * 60)
        self._try(None, lambda: self.whistle.check_deadlines(timestamp=self.now, meta=META))

    @invariant()
    def summoned_departments_are_never_lost(self) -> None:
        assert list(self.whistle.summoned) == self.summoned

    @invariant()
    def the_history_rebuilds_the_same_whistle(self) -> None:
        rebuilt = None
        for event in self.history:
            rebuilt = event.mutate(rebuilt)
        assert rebuilt is not None
        assert rebuilt.__dict__ == {**self.whistle.__dict__, "_pending_events": []}


WhistleMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestWhistleStateMachine = WhistleMachine.TestCase
