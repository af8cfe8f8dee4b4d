"""Residents' reports: the community's inbox, each report's public status and timeline, the rates per community,
and what the watcher must check (deadlines, reports whose whistle moved on)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from domain.events import handles
from domain.report import Report
from domain.whistle import Whistle
from infra.envelope import Envelope
from infra.sql import Tx, View, in_chunks
from projections.base import BatonProjection, dumps, loads

COLUMNS = (
    "report_id",
    "community_id",
    "grid_id",
    "channel",
    "category",
    "description",
    "address",
    "lat",
    "long",
    "media",
    "attributes",
    "reporter",
    "status",
    "triage_due",
    "due_at",
    "missed_due",
    "overdue",
    "responded_at",
    "responded_on_time",
    "whistle_id",
    "whistle_status",
    "merged_into",
    "result",
    "reason",
    "rating",
    "rated_by",
    "ratings",
    "raised_at",
    "updated_at",
    "raised_position",
    "last_position",
)
JSON_COLUMNS = ("media", "attributes", "reporter", "merged_into")
BOOL_COLUMNS = ("overdue", "responded_on_time")
TRIAGED = {"accepted", "escalated", "merged", "closed_unreasonable"}
"""Event types that answer a new report (the community's response)."""


@dataclass(frozen=True)
class ReportQuery:
    """Filters and paging for the community's inbox; communities narrows it to what the reader may see."""

    communities: tuple[str, ...] | None = None
    status: str | None = None
    channel: str | None = None
    channels: tuple[str, ...] | None = None
    category: str | None = None
    overdue: bool | None = None
    ids: tuple[str, ...] | None = None
    raised_from: str | None = None
    raised_until: str | None = None
    limit: int = 50
    before_position: int | None = None


class ReportView(View):
    """Tables of residents' reports."""

    tables = ("baton_reports", "baton_report_timeline")
    ddl = (
        "CREATE TABLE IF NOT EXISTS {baton_reports} ("
        "report_id TEXT PRIMARY KEY, community_id TEXT NOT NULL, grid_id TEXT, channel TEXT NOT NULL, "
        "category TEXT NOT NULL, description TEXT NOT NULL, address TEXT, lat DOUBLE PRECISION, "
        "long DOUBLE PRECISION, media TEXT NOT NULL, attributes TEXT NOT NULL, reporter TEXT, status TEXT NOT NULL, "
        "triage_due TEXT NOT NULL, due_at TEXT, missed_due TEXT, overdue INTEGER NOT NULL, responded_at TEXT, "
        "responded_on_time INTEGER, whistle_id TEXT, whistle_status TEXT, merged_into TEXT, result TEXT, "
        "reason TEXT, rating TEXT, rated_by TEXT, ratings INTEGER NOT NULL, raised_at TEXT NOT NULL, "
        "updated_at TEXT NOT NULL, raised_position BIGINT NOT NULL, last_position BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS baton_reports_position ON {baton_reports} (raised_position)",
        "CREATE INDEX IF NOT EXISTS baton_reports_community ON {baton_reports} (community_id, raised_position)",
        "CREATE INDEX IF NOT EXISTS baton_reports_whistle ON {baton_reports} (whistle_id)",
        "CREATE INDEX IF NOT EXISTS baton_reports_due ON {baton_reports} (due_at)",
        "CREATE TABLE IF NOT EXISTS {baton_report_timeline} ("
        "report_id TEXT NOT NULL, version INTEGER NOT NULL, position BIGINT NOT NULL, type TEXT NOT NULL, "
        "occurred_at TEXT NOT NULL, role TEXT, data TEXT NOT NULL, PRIMARY KEY (report_id, version))",
    )

    # Writes ----------------------------------------------------------------------------------

    def row(self, tx: Tx, report_id: str) -> dict[str, Any]:
        tx.execute(self.q("SELECT * FROM {baton_reports} WHERE report_id = %s"), (report_id,))
        row = tx.fetchone()
        if row is None:
            raise LookupError(f"report {report_id} is not in the read model")
        return _decode(row)

    def save(self, tx: Tx, row: dict[str, Any]) -> None:
        cols = ", ".join(COLUMNS)
        marks = ", ".join(["%s"] * len(COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "report_id")
        encoded = _encode(row)
        tx.execute(
            self.q(
                f"INSERT INTO {{baton_reports}} ({cols}) VALUES ({marks}) "
                f"ON CONFLICT (report_id) DO UPDATE SET {updates}"
            ),
            [encoded[c] for c in COLUMNS],
        )

    def add_to_timeline(self, tx: Tx, e: Envelope, data: dict[str, Any]) -> None:
        tx.execute(
            self.q(
                "INSERT INTO {baton_report_timeline} (report_id, version, position, type, occurred_at, role, data) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ),
            (e.aggregate_id, e.version, e.position, e.type, e.occurred_at, (e.actor or {}).get("role"), dumps(data)),
        )

    def followed(self, tx: Tx, whistle_ids: Iterable[str]) -> set[str]:
        """Those of WHISTLE_IDS an escalated report follows."""
        found: set[str] = set()
        for chunk, marks in in_chunks(whistle_ids):
            sql = f"SELECT DISTINCT whistle_id FROM {{baton_reports}} WHERE whistle_id IN ({marks})"
            tx.execute(self.q(sql), chunk)
            found.update(r["whistle_id"] for r in tx.fetchall())
        return found

    def set_whistle_status(self, tx: Tx, whistle_id: str, status: str, at: str, position: int) -> None:
        tx.execute(
            self.q(
                "UPDATE {baton_reports} SET whistle_status = %s, updated_at = %s, last_position = %s "
                "WHERE whistle_id = %s"
            ),
            (status, at, position, whistle_id),
        )

    # Reads -----------------------------------------------------------------------------------

    def get(self, report_id: str) -> dict[str, Any] | None:
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q("SELECT * FROM {baton_reports} WHERE report_id = %s"), (report_id,))
            row = tx.fetchone()
            if row is None:
                return None
            tx.execute(
                self.q(
                    "SELECT position, version, type, occurred_at, role, data FROM {baton_report_timeline} "
                    "WHERE report_id = %s ORDER BY version"
                ),
                (report_id,),
            )
            timeline = [{**t, "data": loads(t["data"])} for t in tx.fetchall()]
        return {**_decode(row), "timeline": timeline}

    def query(self, query: ReportQuery) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("status", query.status), ("channel", query.channel), ("category", query.category)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        for column, values in (
            ("community_id", query.communities),
            ("report_id", query.ids),
            ("channel", query.channels),
        ):
            if values is not None:
                if not values:
                    return []
                where.append(f"{column} IN ({', '.join(['%s'] * len(values))})")
                params.extend(values)
        if query.overdue is not None:
            where.append("overdue = %s")
            params.append(int(query.overdue))
        if query.raised_from is not None:
            where.append("raised_at >= %s")
            params.append(query.raised_from)
        if query.raised_until is not None:
            where.append("raised_at <= %s")
            params.append(query.raised_until)
        if query.before_position is not None:
            where.append("raised_position < %s")
            params.append(query.before_position)
        sql = "SELECT * FROM {baton_reports}" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY raised_position DESC LIMIT %s"
        params.append(query.limit)
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q(sql), params)
            return [_decode(r) for r in tx.fetchall()]

    def rates(
        self, communities: tuple[str, ...] | None, raised_from: str | None, raised_until: str | None
    ) -> list[dict[str, Any]]:
        """Per community: reports raised, unreasonable and merged (counted apart), responded on time, resolved, and
        the latest ratings by who gave them; the rates leave unreasonable complaints and duplicates out."""
        where, params = ["1 = 1"], []
        if communities is not None:
            if not communities:
                return []
            where.append(f"community_id IN ({', '.join(['%s'] * len(communities))})")
            params.extend(communities)
        if raised_from is not None:
            where.append("raised_at >= %s")
            params.append(raised_from)
        if raised_until is not None:
            where.append("raised_at <= %s")
            params.append(raised_until)
        sql = (
            "SELECT community_id, COUNT(*) AS raised, "
            "SUM(CASE WHEN status = 'unreasonable' THEN 1 ELSE 0 END) AS unreasonable, "
            "SUM(CASE WHEN status = 'merged' THEN 1 ELSE 0 END) AS merged, "
            "SUM(CASE WHEN status NOT IN ('unreasonable', 'merged') AND responded_on_time = 1 THEN 1 ELSE 0 END) "
            "AS responded_on_time, "
            "SUM(CASE WHEN status IN ('resolved', 'closed') THEN 1 ELSE 0 END) AS resolved, "
            "SUM(CASE WHEN rated_by IN ('resident', 'callback') THEN 1 ELSE 0 END) AS rated_by_resident, "
            "SUM(CASE WHEN rated_by IN ('resident', 'callback') AND rating <> 'dissatisfied' THEN 1 ELSE 0 END) "
            "AS satisfied_by_resident, "
            "SUM(CASE WHEN rated_by = 'on_behalf' THEN 1 ELSE 0 END) AS rated_on_behalf, "
            "SUM(CASE WHEN rated_by = 'on_behalf' AND rating <> 'dissatisfied' THEN 1 ELSE 0 END) "
            "AS satisfied_on_behalf "
            "FROM {baton_reports} WHERE " + " AND ".join(where) + " GROUP BY community_id ORDER BY community_id"
        )
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q(sql), params)
            rows = [{k: (int(v) if k != "community_id" else v) for k, v in r.items()} for r in tx.fetchall()]
        for r in rows:
            counted = r["raised"] - r["unreasonable"] - r["merged"]
            r["counted"] = counted
            r["response_rate"] = _rate(r["responded_on_time"], counted)
            r["resolution_rate"] = _rate(r["resolved"], counted)
            r["satisfaction_rate"] = _rate(r["satisfied_by_resident"], r["rated_by_resident"])
        return rows

    def due(self, now_iso: str, limit: int = 500) -> list[str]:
        """Open reports past a triage or handling deadline not yet recorded as missed."""
        with self.db.transaction(commit=False) as tx:
            tx.execute(
                self.q(
                    "SELECT report_id FROM {baton_reports} WHERE status IN ('received', 'accepted') "
                    "AND due_at IS NOT NULL AND due_at <= %s AND (missed_due IS NULL OR missed_due <> due_at) "
                    "ORDER BY due_at LIMIT %s"
                ),
                (now_iso, limit),
            )
            return [r["report_id"] for r in tx.fetchall()]

    def due_between(self, start_iso: str, end_iso: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Open reports whose triage or handling deadline falls after start and at or before end."""
        with self.db.transaction(commit=False) as tx:
            tx.execute(
                self.q(
                    "SELECT report_id, community_id, status, due_at FROM {baton_reports} "
                    "WHERE status IN ('received', 'accepted') AND due_at > %s AND due_at <= %s ORDER BY due_at LIMIT %s"
                ),
                (start_iso, end_iso, limit),
            )
            return tx.fetchall()

    def following(self, limit: int = 500) -> list[str]:
        """Escalated reports whose whistle fed back or closed, which the report has not caught up with."""
        with self.db.transaction(commit=False) as tx:
            tx.execute(
                self.q(
                    "SELECT report_id FROM {baton_reports} WHERE whistle_id IS NOT NULL AND ("
                    "(status = 'escalated' AND whistle_status IN ('fed_back', 'closed')) "
                    "OR (status = 'resolved' AND whistle_status = 'closed')) ORDER BY last_position LIMIT %s"
                ),
                (limit,),
            )
            return [r["report_id"] for r in tx.fetchall()]


def _rate(part: int, whole: int) -> str | None:
    return f"{part / whole:.4f}" if whole else None


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for c in JSON_COLUMNS:
        out[c] = None if row.get(c) is None else dumps(row[c])
    for c in BOOL_COLUMNS:
        out[c] = None if row.get(c) is None else int(row[c])
    return out


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for c in JSON_COLUMNS:
        out[c] = loads(row[c]) if row.get(c) else None
    for c in BOOL_COLUMNS:
        out[c] = None if row.get(c) is None else bool(row[c])
    return out


class ReportProjection(BatonProjection[ReportView]):
    """Keeps every report's row and timeline, and the status of the whistle an escalated report follows."""

    name = "reports"

    def prepare(self, tx: Tx, envelopes: Sequence[Envelope]) -> None:
        """Which of the whistles this batch moves a report follows, in one query: most whistles come from no
        report, and an UPDATE for each of their events was ~10 % of a rebuild on PostgreSQL (a round trip each)."""
        moved = {e.aggregate_id for e in envelopes if e.name in self._whistle_moved.handles}
        tx.memo["followed"] = self.view.followed(tx, moved) if moved else set()

    def _update(self, tx: Tx, e: Envelope, public: dict[str, Any], rated: bool = False, **changes: Any) -> None:
        row = self.view.row(tx, e.aggregate_id)
        if rated:
            changes["ratings"] = row["ratings"] + 1
        if e.type in TRIAGED and row["responded_at"] is None:
            changes.update(responded_at=e.occurred_at, responded_on_time=e.occurred_at <= row["triage_due"])
        row.update(changes, updated_at=e.occurred_at, last_position=e.position)
        row["overdue"] = bool(row["missed_due"]) and row["missed_due"] == row["due_at"]
        self.view.save(tx, row)
        self.view.add_to_timeline(tx, e, public)

    @handles(Report.Raised)
    def _raised(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        row = {
            "report_id": e.aggregate_id,
            "community_id": d["community_id"],
            "grid_id": d.get("grid_id"),
            "channel": d["channel"],
            "category": d["category"],
            "description": d["description"],
            "address": d.get("address"),
            "lat": d.get("lat"),
            "long": d.get("long"),
            "media": d.get("media") or [],
            "attributes": d.get("attributes") or {},
            "reporter": d.get("reporter"),
            "status": "received",
            "triage_due": d["triage_due"],
            "due_at": d["triage_due"],
            "missed_due": None,
            "overdue": False,
            "responded_at": None,
            "responded_on_time": None,
            "whistle_id": None,
            "whistle_status": None,
            "merged_into": None,
            "result": None,
            "reason": None,
            "rating": None,
            "rated_by": None,
            "ratings": 0,
            "raised_at": e.occurred_at,
            "updated_at": e.occurred_at,
            "raised_position": e.position,
            "last_position": e.position,
        }
        self.view.save(tx, row)
        self.view.add_to_timeline(tx, e, {"channel": d["channel"], "category": d["category"]})

    @handles(Report.Accepted)
    def _accepted(self, tx: Tx, e: Envelope) -> None:
        self._update(tx, e, {"due_at": e.data["due_at"]}, status="accepted", due_at=e.data["due_at"])

    @handles(Report.ProgressRecorded)
    def _progress(self, tx: Tx, e: Envelope) -> None:
        self._update(tx, e, {"note": e.data["note"]})

    @handles(Report.Resolved)
    def _resolved(self, tx: Tx, e: Envelope) -> None:
        self._update(tx, e, {"result": e.data["result"]}, status="resolved", result=e.data["result"], due_at=None)

    @handles(Report.Merged)
    def _merged(self, tx: Tx, e: Envelope) -> None:
        into = {"kind": e.data["into_kind"], "id": e.data["into_id"]}
        self._update(tx, e, {"into": into}, status="merged", merged_into=into, due_at=None)

    @handles(Report.ClosedUnreasonable)
    def _unreasonable(self, tx: Tx, e: Envelope) -> None:
        reason = e.data["reason"]
        self._update(tx, e, {"reason": reason}, status="unreasonable", reason=reason, due_at=None)

    @handles(Report.Escalated)
    def _escalated(self, tx: Tx, e: Envelope) -> None:
        whistle = e.data["whistle_id"]
        self._update(
            tx, e, {"whistle_id": whistle}, status="escalated", whistle_id=whistle, whistle_status="blown", due_at=None
        )
        tx.memo.setdefault("followed", set()).add(whistle)  # its whistle's later events in this batch reach it

    @handles(Report.ClosedWithWhistle)
    def _closed_with_whistle(self, tx: Tx, e: Envelope) -> None:
        self._update(tx, e, {"whistle_id": e.data["whistle_id"]}, status="closed")

    @handles(Report.Rated)
    def _rated(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        self._update(
            tx,
            e,
            {"rating": d["rating"], "rated_by": d["rated_by"], "status": d["status"]},
            rated=True,
            status=d["status"],
            rating=d["rating"],
            rated_by=d["rated_by"],
            due_at=d.get("due_at"),
        )

    @handles(Report.DeadlineMissed)
    def _deadline_missed(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        self._update(tx, e, {"step": d["step"], "due_at": d["due_at"]}, missed_due=d["due_at"])

    @handles(
        Whistle.ReportedIn,
        Whistle.Dispatched,
        Whistle.Declined,
        Whistle.ProgressRecorded,
        Whistle.Completed,
        Whistle.FedBack,
        Whistle.Evaluated,
        Whistle.Escalated,
    )
    def _whistle_moved(self, tx: Tx, e: Envelope) -> None:
        status = e.data.get("status")
        if status and e.aggregate_id in tx.memo["followed"]:
            self.view.set_whistle_status(tx, e.aggregate_id, status, e.occurred_at, e.position)
