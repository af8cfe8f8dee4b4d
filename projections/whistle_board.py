"""The whistle board, each whistle's detail and timeline, and the deadlines the watcher must check."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from domain.events import handles
from domain.whistle import Whistle
from infra.envelope import Envelope
from infra.sql import Tx, View, in_chunks
from projections.base import BatonProjection, dumps, loads

BOARD_COLUMNS = (
    "whistle_id",
    "community_id",
    "street_id",
    "district_id",
    "city_id",
    "grid_id",
    "category",
    "duty",
    "title",
    "description",
    "urgency",
    "source",
    "location",
    "reporter",
    "status",
    "summoned",
    "reported",
    "missed_report_in",
    "lead_department",
    "co_departments",
    "dispatch_round",
    "feedback_due",
    "feedback_missed",
    "overdue",
    "escalation_level",
    "escalated_to",
    "declines",
    "reopens",
    "rating",
    "resolved",
    "blown_at",
    "report_in_due",
    "updated_at",
    "blown_position",
    "last_position",
    "version",
)
JSON_COLUMNS = {"summoned", "reported", "missed_report_in", "co_departments"}
BOOL_COLUMNS = {"feedback_missed", "overdue", "resolved"}


@dataclass(frozen=True)
class BoardQuery:
    """Filters and paging for the whistle board; scope_* narrow it to what the reader may see."""

    community: str | None = None
    department: str | None = None
    status: str | None = None
    overdue: bool | None = None
    limit: int = 50
    before_position: int | None = None
    scope_column: str | None = None
    scope_value: str | None = None


class WhistleBoardView(View):
    """Tables of the whistle board."""

    tables = ("baton_whistles", "baton_whistle_departments", "baton_whistle_timeline", "baton_deadlines")
    ddl = (
        "CREATE TABLE IF NOT EXISTS {baton_whistles} ("
        "whistle_id TEXT PRIMARY KEY, community_id TEXT NOT NULL, street_id TEXT, district_id TEXT, "
        "city_id TEXT, grid_id TEXT, category TEXT NOT NULL, duty TEXT NOT NULL, title TEXT NOT NULL, "
        "description TEXT NOT NULL, urgency TEXT NOT NULL, source TEXT NOT NULL, location TEXT, reporter TEXT, "
        "status TEXT NOT NULL, summoned TEXT NOT NULL, reported TEXT NOT NULL, "
        "missed_report_in TEXT NOT NULL, lead_department TEXT, co_departments TEXT NOT NULL, "
        "dispatch_round INTEGER NOT NULL, feedback_due TEXT, feedback_missed INTEGER NOT NULL, "
        "overdue INTEGER NOT NULL, escalation_level INTEGER NOT NULL, escalated_to TEXT, "
        "declines INTEGER NOT NULL, reopens INTEGER NOT NULL, rating TEXT, resolved INTEGER, "
        "blown_at TEXT NOT NULL, report_in_due TEXT NOT NULL, updated_at TEXT NOT NULL, "
        "blown_position BIGINT NOT NULL, last_position BIGINT NOT NULL, version INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS baton_whistles_position ON {baton_whistles} (blown_position)",
        "CREATE INDEX IF NOT EXISTS baton_whistles_community ON {baton_whistles} (community_id, blown_position)",
        "CREATE TABLE IF NOT EXISTS {baton_whistle_departments} ("
        "whistle_id TEXT NOT NULL, department TEXT NOT NULL, PRIMARY KEY (whistle_id, department))",
        "CREATE INDEX IF NOT EXISTS baton_whistle_departments_dept ON {baton_whistle_departments} (department)",
        "CREATE TABLE IF NOT EXISTS {baton_whistle_timeline} ("
        "whistle_id TEXT NOT NULL, version INTEGER NOT NULL, position BIGINT NOT NULL, type TEXT NOT NULL, "
        "occurred_at TEXT NOT NULL, actor TEXT, data TEXT NOT NULL, PRIMARY KEY (whistle_id, version))",
        "CREATE TABLE IF NOT EXISTS {baton_deadlines} ("
        "whistle_id TEXT NOT NULL, kind TEXT NOT NULL, due_at TEXT NOT NULL, PRIMARY KEY (whistle_id, kind))",
        "CREATE INDEX IF NOT EXISTS baton_deadlines_due ON {baton_deadlines} (due_at)",
    )

    # Writes (inside a projection's transaction) --------------------------------

    def row(self, tx: Tx, whistle_id: str) -> dict[str, Any]:
        tx.execute(self.q("SELECT * FROM {baton_whistles} WHERE whistle_id = %s"), (whistle_id,))
        row = tx.fetchone()
        if row is None:
            raise LookupError(f"whistle {whistle_id} is not on the board")
        return _decode(row)

    def rows(self, tx: Tx, whistle_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The board rows of WHISTLE_IDS that exist, by whistle, in a query for every 500."""
        found: dict[str, dict[str, Any]] = {}
        for chunk, marks in in_chunks(whistle_ids):
            tx.execute(self.q(f"SELECT * FROM {{baton_whistles}} WHERE whistle_id IN ({marks})"), chunk)
            found.update((r["whistle_id"], _decode(r)) for r in tx.fetchall())
        return found

    def save_rows(self, tx: Tx, rows: Iterable[dict[str, Any]]) -> None:
        cols = ", ".join(BOARD_COLUMNS)
        marks = ", ".join(["%s"] * len(BOARD_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in BOARD_COLUMNS if c != "whistle_id")
        tx.executemany(
            self.q(
                f"INSERT INTO {{baton_whistles}} ({cols}) VALUES ({marks}) "
                f"ON CONFLICT (whistle_id) DO UPDATE SET {updates}"
            ),
            [[encoded[c] for c in BOARD_COLUMNS] for encoded in map(_encode, rows)],
        )

    def link_departments(self, tx: Tx, whistle_id: str, departments: list[str]) -> None:
        """Kept until flush_writes (nothing reads the links within a batch)."""
        links: dict[tuple[str, str], None] = tx.memo.setdefault("whistle_board.links", {})
        for d in departments:
            links[(whistle_id, d)] = None

    def add_to_timeline(self, tx: Tx, e: Envelope) -> None:
        """Kept until flush_writes, one row per event."""
        timeline: list[tuple[Any, ...]] = tx.memo.setdefault("whistle_board.timeline", [])
        timeline.append((e.aggregate_id, e.version, e.position, e.type, e.occurred_at, dumps(e.actor), dumps(e.data)))

    def set_deadline(self, tx: Tx, whistle_id: str, kind: str, due_at: str | None) -> None:
        """Kept until flush_writes: the last setting of each whistle's deadline in a batch is the one that counts."""
        deadlines: dict[tuple[str, str], str | None] = tx.memo.setdefault("whistle_board.deadlines", {})
        deadlines.pop((whistle_id, kind), None)  # re-insert: the writes go out in the order they were last set
        deadlines[(whistle_id, kind)] = due_at

    def flush_writes(self, tx: Tx) -> None:
        """The batch's links, timeline rows and deadlines: one executemany each."""
        for key, sql in (
            ("links", "INSERT INTO {baton_whistle_departments} (whistle_id, department) VALUES (%s, %s)"),
            (
                "timeline",
                "INSERT INTO {baton_whistle_timeline} (whistle_id, version, position, type, occurred_at, actor, data) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            ),
        ):
            rows = tx.memo.pop(f"whistle_board.{key}", None)
            if rows:
                tx.executemany(self.q(f"{sql} ON CONFLICT DO NOTHING"), list(rows))
        deadlines: dict[tuple[str, str], str | None] | None = tx.memo.pop("whistle_board.deadlines", None)
        if deadlines:
            gone = [key for key, due in deadlines.items() if due is None]
            due = [(w, kind, at) for (w, kind), at in deadlines.items() if at is not None]
            if gone:
                tx.executemany(self.q("DELETE FROM {baton_deadlines} WHERE whistle_id = %s AND kind = %s"), gone)
            if due:
                tx.executemany(
                    self.q(
                        "INSERT INTO {baton_deadlines} (whistle_id, kind, due_at) VALUES (%s, %s, %s) "
                        "ON CONFLICT (whistle_id, kind) DO UPDATE SET due_at = excluded.due_at"
                    ),
                    due,
                )

    # Reads ----------------------------------------------------------------------

    def get(self, whistle_id: str) -> dict[str, Any] | None:
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q("SELECT * FROM {baton_whistles} WHERE whistle_id = %s"), (whistle_id,))
            row = tx.fetchone()
            if row is None:
                return None
            tx.execute(
                self.q(
                    "SELECT position, version, type, occurred_at, actor, data "
                    "FROM {baton_whistle_timeline} WHERE whistle_id = %s ORDER BY version"
                ),
                (whistle_id,),
            )
            timeline = [{**t, "actor": loads(t["actor"]), "data": loads(t["data"])} for t in tx.fetchall()]
        return {**_decode(row), "timeline": timeline}

    def departments_of(self, whistle_id: str) -> list[str]:
        with self.db.transaction(commit=False) as tx:
            tx.execute(
                self.q("SELECT department FROM {baton_whistle_departments} WHERE whistle_id = %s"),
                (whistle_id,),
            )
            return [r["department"] for r in tx.fetchall()]

    def query(self, query: BoardQuery) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("community_id", query.community),
            ("status", query.status),
            (query.scope_column, query.scope_value),
        ):
            if column and value is not None:
                where.append(f"b.{column} = %s")
                params.append(value)
        if query.overdue is not None:
            where.append("b.overdue = %s")
            params.append(int(query.overdue))
        if query.department:
            where.append(
                "EXISTS (SELECT 1 FROM {baton_whistle_departments} d "
                "WHERE d.whistle_id = b.whistle_id AND d.department = %s)"
            )
            params.append(query.department)
        if query.before_position is not None:
            where.append("b.blown_position < %s")
            params.append(query.before_position)
        sql = "SELECT b.* FROM {baton_whistles} b"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY b.blown_position DESC LIMIT %s"
        params.append(query.limit)
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q(sql), params)
            return [_decode(r) for r in tx.fetchall()]

    def due_deadlines(self, now_iso: str, limit: int = 500) -> list[str]:
        """Whistles with a deadline at or before now (the watcher checks each)."""
        with self.db.transaction(commit=False) as tx:
            tx.execute(
                self.q(
                    "SELECT DISTINCT whistle_id, MIN(due_at) AS due FROM {baton_deadlines} "
                    "WHERE due_at <= %s GROUP BY whistle_id ORDER BY due LIMIT %s"
                ),
                (now_iso, limit),
            )
            return [r["whistle_id"] for r in tx.fetchall()]


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["reporter"] = None if row.get("reporter") is None else dumps(row["reporter"])
    for c in JSON_COLUMNS:
        out[c] = dumps(row[c])
    for c in BOOL_COLUMNS:
        out[c] = None if row[c] is None else int(row[c])
    return out


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["reporter"] = loads(row["reporter"]) if row.get("reporter") else None
    for c in JSON_COLUMNS:
        out[c] = loads(row[c]) or []
    for c in BOOL_COLUMNS:
        out[c] = None if row[c] is None else bool(row[c])
    return out


def _overdue(row: dict[str, Any]) -> bool:
    """An open whistle with a missed deadline whose step is still not done."""
    if row["status"] == "closed":
        return False
    unreported = set(row["missed_report_in"]) - set(row["reported"])
    return bool(unreported) or bool(row["feedback_missed"])


class WhistleBoardProjection(BatonProjection[WhistleBoardView]):
    """Keeps the board, detail and timeline of every whistle."""

    name = "whistle_board"

    def apply(self, tx: Tx, envelope: Envelope) -> None:
        handler = self.handlers.get(envelope.name)
        if handler is None:
            return
        if envelope.type != "blown":
            rows = self._rows(tx)
            row = rows.get(envelope.aggregate_id) or self.view.row(tx, envelope.aggregate_id)
            rows[envelope.aggregate_id] = row
            handler(self, tx, envelope, row)
            row.update(
                status=envelope.data.get("status", row["status"]),
                updated_at=envelope.occurred_at,
                last_position=envelope.position,
                version=envelope.version,
            )
            row["overdue"] = _overdue(row)
        else:
            handler(self, tx, envelope)
        self.view.add_to_timeline(tx, envelope)

    def prepare(self, tx: Tx, envelopes: Sequence[Envelope]) -> None:
        """The rows of the whistles this batch moves, read at once (a query a whistle was ~6 % of a PostgreSQL
        rebuild); a whistle blown in the batch has none yet, and its later events find the row _blown made."""
        moved = {e.aggregate_id for e in envelopes if e.type != "blown" and e.name in self.handlers}
        tx.memo[self.name] = self.view.rows(tx, moved) if moved else {}

    def _rows(self, tx: Tx) -> dict[str, dict[str, Any]]:
        """The board rows this batch changed, by whistle: read once, written once by flush()."""
        rows: dict[str, dict[str, Any]] = tx.memo.setdefault(self.name, {})
        return rows

    def flush(self, tx: Tx) -> None:
        rows = tx.memo.pop(self.name, None)
        if rows:
            self.view.save_rows(tx, rows.values())
        self.view.flush_writes(tx)

    @handles(Whistle.Blown)
    def _blown(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        chain = [*d["escalation_chain"], None, None, None]
        self._rows(tx)[e.aggregate_id] = {
            "whistle_id": e.aggregate_id,
            "community_id": d["community_id"],
            "street_id": chain[0],
            "district_id": chain[1],
            "city_id": chain[2],
            "grid_id": d.get("grid_id"),
            "category": d["category"],
            "duty": d["duty"],
            "title": d["title"],
            "description": d["description"],
            "urgency": d["urgency"],
            "source": d["source"],
            "location": d.get("location"),
            "reporter": d.get("reporter"),
            "status": d["status"],
            "summoned": d["summoned_departments"],
            "reported": [],
            "missed_report_in": [],
            "lead_department": None,
            "co_departments": [],
            "dispatch_round": 0,
            "feedback_due": None,
            "feedback_missed": False,
            "overdue": False,
            "escalation_level": 0,
            "escalated_to": None,
            "declines": 0,
            "reopens": 0,
            "rating": None,
            "resolved": None,
            "blown_at": e.occurred_at,
            "report_in_due": d["report_in_due"],
            "updated_at": e.occurred_at,
            "blown_position": e.position,
            "last_position": e.position,
            "version": e.version,
        }
        self.view.link_departments(tx, e.aggregate_id, d["summoned_departments"])
        self.view.set_deadline(tx, e.aggregate_id, "report_in", d["report_in_due"])

    @handles(Whistle.ReportedIn)
    def _reported_in(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        row["reported"] = [*row["reported"], e.data["department"]]
        if set(row["summoned"]) <= set(row["reported"]):
            self.view.set_deadline(tx, e.aggregate_id, "report_in", None)

    @handles(Whistle.Dispatched)
    def _dispatched(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        d = e.data
        row.update(
            lead_department=d["lead_department"],
            co_departments=d["co_departments"],
            dispatch_round=d["round"],
            feedback_due=d["due_at"],
            feedback_missed=False,
        )
        self.view.link_departments(tx, e.aggregate_id, [d["lead_department"], *d["co_departments"]])
        self.view.set_deadline(tx, e.aggregate_id, "feedback", d["due_at"])

    @handles(Whistle.Declined)
    def _declined(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        row["declines"] += 1
        if e.data["role"] == "lead":
            row.update(lead_department=None, feedback_due=None, feedback_missed=False)
            self.view.set_deadline(tx, e.aggregate_id, "feedback", None)
        else:
            row["co_departments"] = [c for c in row["co_departments"] if c != e.data["department"]]

    @handles(Whistle.ProgressRecorded, Whistle.Completed)
    def _handled(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        """Only the status changes (kept in apply)."""

    @handles(Whistle.FedBack)
    def _fed_back(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        row.update(resolved=e.data["resolved"], feedback_missed=False)
        self.view.set_deadline(tx, e.aggregate_id, "feedback", None)

    @handles(Whistle.Evaluated)
    def _evaluated(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        row.update(rating=e.data["rating"], reopens=e.data["reopens"])
        if e.data["status"] == "reopened":
            row.update(lead_department=None, co_departments=[], feedback_due=None)

    @handles(Whistle.DeadlineMissed)
    def _deadline_missed(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        if e.data["step"] == "report_in":
            row["missed_report_in"] = sorted(set(row["missed_report_in"]) | set(e.data["departments"]))
            self.view.set_deadline(tx, e.aggregate_id, "report_in", None)
        else:
            row["feedback_missed"] = True
            self.view.set_deadline(tx, e.aggregate_id, "feedback", None)

    @handles(Whistle.Escalated)
    def _escalated(self, tx: Tx, e: Envelope, row: dict[str, Any]) -> None:
        row.update(escalation_level=e.data["level"], escalated_to=e.data["to_unit"])
