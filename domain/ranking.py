"""A month's ranking (接诉即办), finalised: each unit type's figures fixed by their digest and tied to the Merkle tree
of the history they were counted from, as a finalised assessment is. The counting itself is `audit/ranking.py`."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo

from eventsourcing.domain import Aggregate, event

from domain.common import LOCAL_TIMEZONE, Meta
from domain.errors import Conflict, InvalidCommand, MonthNotOver

UNIT_TYPES = ("community", "street", "department")


def check_month(month: str) -> tuple[int, int]:
    """(year, month) of 'YYYY-MM', or InvalidCommand."""
    try:
        moment = datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise InvalidCommand(f"month {month!r} is not YYYY-MM, e.g. 2026-03") from None
    return moment.year, moment.month


def month_end(month: str, timezone: str = LOCAL_TIMEZONE) -> datetime:
    """The moment a month ends where governance counts it: local midnight on the 1st of the next month."""
    year, m = check_month(month)
    year, m = (year + 1, 1) if m == 12 else (year, m + 1)
    return datetime(year, m, 1, tzinfo=ZoneInfo(timezone))


def ranking_id(month: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"baton:ranking:{month}")


class MonthlyRanking(Aggregate):
    """A month's finalised rankings, one per unit type, each with its figures' digest, cut-off, tree size and root."""

    @staticmethod
    def create_id(month: str) -> UUID:
        return ranking_id(month)

    @event("Opened")
    def __init__(self, month: str, *, timestamp: datetime, meta: Meta) -> None:
        self.month = month
        self.finalised: dict[str, dict[str, Any]] = {}

    @staticmethod
    def check_month_over(month: str, now: datetime) -> None:
        """A month's ranking is finalised once the month has ended (in its time zone)."""
        ends = month_end(month)
        if now < ends:
            raise MonthNotOver(
                f"the {month} ranking cannot be finalised before {ends.isoformat(sep=' ')} ({ends.tzinfo}): "
                f"until then its cases are still arriving (GET /v1/rankings/{month} shows them as of now)"
            )

    def check_figures(self, result: dict[str, Any], tree_size: int) -> None:
        """The figures are this month's, of a unit type not yet final, counted from the tree size given."""
        unit_type = result["unit_type"]
        if unit_type not in UNIT_TYPES:
            raise InvalidCommand(f"unit_type must be one of: {', '.join(UNIT_TYPES)}")
        if result["month"] != self.month:
            raise Conflict(f"the figures are {result['month']}'s, not {self.month}'s")
        if unit_type in self.finalised:
            raise Conflict(f"the {self.month} ranking of {unit_type} units is already final")
        if result["events"] != tree_size:
            raise Conflict("the figures were counted from another tree size than the one given")

    def finalise(
        self,
        result: dict[str, Any],
        digest: str,
        tree_size: int,
        root: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        """Fix a unit type's figures for the month, once the month is over, as counted up to a cut-off."""
        self.check_month_over(self.month, timestamp)
        self.check_figures(result, tree_size)
        unit_type = result["unit_type"]
        self._finalised(
            month=self.month,
            unit_type=unit_type,
            digest=digest,
            units=len(result["units"]),
            ranked=sum(1 for u in result["units"] if u["rank"] is not None),
            cutoff_position=result["cutoff_position"],
            tree_size=tree_size,
            root=root,
            timestamp=timestamp,
            meta=meta,
        )

    @event("Finalised")
    def _finalised(
        self,
        month: str,
        unit_type: str,
        digest: str,
        units: int,
        ranked: int,
        cutoff_position: int,
        tree_size: int,
        root: str,
        *,
        timestamp: datetime,
        meta: Meta,
    ) -> None:
        self.finalised[unit_type] = {
            "month": month,
            "unit_type": unit_type,
            "digest": digest,
            "units": units,
            "ranked": ranked,
            "cutoff_position": cutoff_position,
            "tree_size": tree_size,
            "root": root,
            "finalised_at": timestamp,
            "finalised_by": meta.get("actor"),
        }
