"""Every name a reader dispatches on is an event Baton records, and every event is read somewhere on purpose."""

from __future__ import annotations

from audit.scoring import Facts
from consumers.inbox import ROUTES
from domain.events import catalogue, name_of
from projections import NOT_PROJECTED
from projections.branches import BranchProjection
from projections.reports import ReportProjection
from projections.scorecard import ScorecardProjection
from projections.volunteering import VolunteeringProjection
from projections.whistle_board import WhistleBoardProjection

PROJECTIONS = (WhistleBoardProjection, ScorecardProjection, VolunteeringProjection, BranchProjection, ReportProjection)


def handled() -> dict[str, set[str]]:
    """Event name -> the projections whose @handles name it."""
    found: dict[str, set[str]] = {}
    for projection in PROJECTIONS:
        for attribute in dir(projection):
            for name in getattr(getattr(projection, attribute), "handles", ()):
                found.setdefault(name, set()).add(projection.__name__)
    return found


def test_every_handled_name_is_an_event_that_exists() -> None:
    events = set(catalogue())
    assert set(handled()) - events == set(), "a projection handles an event that does not exist (renamed?)"
    assert Facts.reads() - events == set(), "the assessment's fold reads an event that does not exist (renamed?)"
    assert {name_of(e) for e in ROUTES} - events == set(), "the inbox routes an event that does not exist"


def test_every_event_is_projected_or_says_where_it_is_read() -> None:
    events = set(catalogue())
    NOT_PROJECTED_NAMES = {name_of(e) for e in NOT_PROJECTED}
    undecided = events - set(handled()) - Facts.reads() - NOT_PROJECTED_NAMES
    assert undecided == set(), f"handle these in a projection or list them in projections.NOT_PROJECTED: {undecided}"
    assert events >= NOT_PROJECTED_NAMES, f"NOT_PROJECTED names unknown events: {NOT_PROJECTED_NAMES - events}"
