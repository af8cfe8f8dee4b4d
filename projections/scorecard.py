"""Department scorecard: report-in and handling on time, satisfaction, declines, reopens, mean times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from domain.events import handles
from domain.whistle import Whistle
from infra.envelope import Envelope
from infra.sql import Tx, View, in_chunks
from projections.base import BatonProjection

_NO_TALLY = "NOT EXISTS (SELECT 1 FROM {baton_score_tally})"
"""In each part of the tally's backfill: a condition on no row, so both databases test it once and, once there is a
tally, skip the scans (tested once on the whole union, SQLite counted every row at every start: 0.7 s at 1M events)."""
ROWS = "score_rows"
RATINGS, RESIDENT = "baton_score_ratings", "baton_score_resident_ratings"
COUNTED = ("declines", "reopens", "escalations")


@dataclass
class Rows:
    """A batch's summonses ((whistle, department) -> [state, minutes]) and work orders (whistle -> round ->
    [department, state, minutes]), changed in memory and written when the batch ends."""

    summons: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    orders: dict[str, dict[int, list[Any]]] = field(default_factory=dict)
    summons_changed: set[tuple[str, str]] = field(default_factory=set)
    orders_changed: set[tuple[str, int]] = field(default_factory=set)
    ratings: dict[str, set[tuple[str, int, str]]] = field(default_factory=lambda: {RATINGS: set(), RESIDENT: set()})
    """Each ratings table's (whistle, version, department) keys of the batch's whistles, new ones included."""
    new_ratings: dict[str, list[tuple[str, int, str, str]]] = field(default_factory=lambda: {RATINGS: [], RESIDENT: []})
    counts: dict[str, list[int]] = field(default_factory=dict)
    """Per department, what the batch adds to its declines, reopens and escalations."""


class ScorecardView(View):
    """One row per summons, per work order and per rating; per department, a tally of each, kept as they change."""

    tables = (
        "baton_score_summons",
        "baton_score_orders",
        "baton_score_ratings",
        "baton_score_counts",
        "baton_score_resident_ratings",
        "baton_score_tally",
    )
    ddl = (
        "CREATE TABLE IF NOT EXISTS {baton_score_summons} ("
        "whistle_id TEXT NOT NULL, department TEXT NOT NULL, state TEXT NOT NULL, minutes INTEGER, "
        "PRIMARY KEY (whistle_id, department))",
        "CREATE TABLE IF NOT EXISTS {baton_score_orders} ("
        "whistle_id TEXT NOT NULL, round INTEGER NOT NULL, department TEXT NOT NULL, state TEXT NOT NULL, "
        "minutes INTEGER, PRIMARY KEY (whistle_id, round))",
        "CREATE TABLE IF NOT EXISTS {baton_score_ratings} ("
        "whistle_id TEXT NOT NULL, version INTEGER NOT NULL, department TEXT NOT NULL, rating TEXT NOT NULL, "
        "PRIMARY KEY (whistle_id, version, department))",
        "CREATE TABLE IF NOT EXISTS {baton_score_counts} ("
        "department TEXT PRIMARY KEY, declines INTEGER NOT NULL DEFAULT 0, "
        "reopens INTEGER NOT NULL DEFAULT 0, escalations INTEGER NOT NULL DEFAULT 0)",
        # Its own table, so that an installation from before residents rated gains it without a rebuild.
        "CREATE TABLE IF NOT EXISTS {baton_score_resident_ratings} ("
        "whistle_id TEXT NOT NULL, version INTEGER NOT NULL, department TEXT NOT NULL, rating TEXT NOT NULL, "
        "PRIMARY KEY (whistle_id, version, department))",
        # What a scorecard reads: counting the rows per request cost a scan of every summons (seconds at a city's
        # size). An installation from before the tally gains it from its rows, once, in the same DDL transaction.
        "CREATE TABLE IF NOT EXISTS {baton_score_tally} ("
        "department TEXT NOT NULL, measure TEXT NOT NULL, n BIGINT NOT NULL, minutes BIGINT NOT NULL, "
        "PRIMARY KEY (department, measure))",
        "INSERT INTO {baton_score_tally} (department, measure, n, minutes) "
        "SELECT department, measure, SUM(n), SUM(minutes) FROM ("
        "SELECT department, 'report_in.' || state AS measure, COUNT(*) AS n, COALESCE(SUM(minutes), 0) AS minutes "
        f"FROM {{baton_score_summons}} WHERE {_NO_TALLY} GROUP BY department, state UNION ALL "
        "SELECT department, 'handling.' || state, COUNT(*), COALESCE(SUM(minutes), 0) "
        f"FROM {{baton_score_orders}} WHERE {_NO_TALLY} GROUP BY department, state UNION ALL "
        "SELECT department, 'rating.' || rating, COUNT(*), 0 "
        f"FROM {{baton_score_ratings}} WHERE {_NO_TALLY} GROUP BY department, rating UNION ALL "
        "SELECT department, 'resident.' || rating, COUNT(*), 0 "
        f"FROM {{baton_score_resident_ratings}} WHERE {_NO_TALLY} GROUP BY department, rating"
        ") AS old GROUP BY department, measure",
    )

    def bump(self, tx: Tx, department: str, column: str) -> None:
        """Add one to a department's declines, reopens or escalations in this batch (written by save_rows)."""
        counts: dict[str, list[int]] = tx.memo[ROWS].counts
        counts.setdefault(department, [0, 0, 0])[COUNTED.index(column)] += 1

    def count(self, tx: Tx, department: str, measure: str, n: int = 1, minutes: int | None = None) -> None:
        """Add to a department's tally in this batch (written by flush_tally)."""
        tally: dict[tuple[str, str], list[int]] = tx.memo.setdefault(TALLY, {})
        entry = tally.setdefault((department, measure), [0, 0])
        entry[0] += n
        entry[1] += n * (minutes or 0)

    def move(self, tx: Tx, department: str, before: tuple[str, int | None], after: tuple[str, int | None]) -> None:
        """A summons or work order went from one (measure, minutes) to another."""
        self.count(tx, department, before[0], -1, before[1])
        self.count(tx, department, after[0], 1, after[1])

    def flush_tally(self, tx: Tx) -> None:
        tally: dict[tuple[str, str], list[int]] | None = tx.memo.pop(TALLY, None)
        if tally:  # every key touched, a zero change too: the rows are the same however events were batched
            tx.executemany(
                self.q(
                    "INSERT INTO {baton_score_tally} (department, measure, n, minutes) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (department, measure) DO UPDATE SET n = {baton_score_tally}.n + excluded.n, "
                    "minutes = {baton_score_tally}.minutes + excluded.minutes"
                ),
                [(department, measure, n, minutes) for (department, measure), (n, minutes) in tally.items()],
            )

    def load_rows(self, tx: Tx, whistle_ids: set[str]) -> Rows:
        """The summonses and work orders of WHISTLE_IDS, read in a few queries for a batch to change in memory."""
        rows = Rows(orders={w: {} for w in whistle_ids})
        for chunk, marks in in_chunks(whistle_ids):
            tx.execute(
                self.q(
                    f"SELECT whistle_id, department, state, minutes FROM {{baton_score_summons}} "
                    f"WHERE whistle_id IN ({marks})"
                ),
                chunk,
            )
            for r in tx.fetchall():
                rows.summons[(r["whistle_id"], r["department"])] = [r["state"], r["minutes"]]
            tx.execute(
                self.q(
                    f"SELECT whistle_id, round, department, state, minutes FROM {{baton_score_orders}} "
                    f"WHERE whistle_id IN ({marks})"
                ),
                chunk,
            )
            for r in tx.fetchall():
                rows.orders[r["whistle_id"]][int(r["round"])] = [r["department"], r["state"], r["minutes"]]
            for table in (RATINGS, RESIDENT):
                tx.execute(
                    self.q(f"SELECT whistle_id, version, department FROM {{{table}}} WHERE whistle_id IN ({marks})"),
                    chunk,
                )
                rows.ratings[table].update((r["whistle_id"], int(r["version"]), r["department"]) for r in tx.fetchall())
        return rows

    def save_rows(self, tx: Tx, rows: Rows) -> None:
        """Write the summonses, work orders, ratings and counts a batch changed, one statement each."""
        for table, new in rows.new_ratings.items():
            if new:
                tx.executemany(
                    self.q(
                        f"INSERT INTO {{{table}}} (whistle_id, version, department, rating) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    new,
                )
        if rows.counts:
            tx.executemany(
                self.q(
                    "INSERT INTO {baton_score_counts} (department, declines, reopens, escalations) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (department) DO UPDATE SET "
                    + ", ".join(f"{c} = {{baton_score_counts}}.{c} + excluded.{c}" for c in COUNTED)
                ),
                [(department, *counts) for department, counts in sorted(rows.counts.items())],
            )
        if rows.summons_changed:
            tx.executemany(
                self.q(
                    "INSERT INTO {baton_score_summons} (whistle_id, department, state, minutes) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (whistle_id, department) DO UPDATE SET "
                    "state = excluded.state, minutes = excluded.minutes"
                ),
                [(w, d, *rows.summons[(w, d)]) for w, d in sorted(rows.summons_changed)],
            )
        if rows.orders_changed:
            tx.executemany(
                self.q(
                    "INSERT INTO {baton_score_orders} (whistle_id, round, department, state, minutes) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (whistle_id, round) DO UPDATE SET "
                    "department = excluded.department, state = excluded.state, minutes = excluded.minutes"
                ),
                [(w, n, *rows.orders[w][n]) for w, n in sorted(rows.orders_changed)],
            )

    def scorecards(self, department: str | None = None) -> list[dict[str, Any]]:
        """Every department's scorecard (or one), from the tally."""
        cards: dict[str, dict[str, Any]] = {}

        def card(code: str) -> dict[str, Any]:
            found = cards.get(code)
            if found is None:
                found = cards[code] = _empty_card(code)
            return found

        only, params = (" WHERE department = %s", (department,)) if department is not None else ("", ())
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q("SELECT department, measure, n, minutes FROM {baton_score_tally}" + only), params)
            for r in tx.fetchall():
                c, n = card(r["department"]), int(r["n"])
                kind, _, state = r["measure"].partition(".")
                if kind == "report_in":
                    c["summoned"] += n
                    c["report_in"][state] += n
                    if state in ("on_time", "late"):
                        c["_report_minutes"] += int(r["minutes"])
                elif kind == "handling":
                    c["work_orders"] += n
                    c["handling"][state] += n
                    if state in ("on_time", "late"):
                        c["_handling_minutes"] += int(r["minutes"])
                else:
                    c["ratings" if kind == "rating" else "resident_ratings"][state] += n
            tx.execute(self.q("SELECT * FROM {baton_score_counts}" + only), params)
            for r in tx.fetchall():
                c = card(r["department"])
                c.update(declines=r["declines"], reopens=r["reopens"], escalations=r["escalations"])
        return [_finish(c) for _, c in sorted(cards.items())]


TALLY = "scorecard.tally"


def _empty_card(code: str) -> dict[str, Any]:
    return {
        "department": code,
        "summoned": 0,
        "report_in": {"on_time": 0, "late": 0, "missed": 0, "pending": 0},
        "work_orders": 0,
        "handling": {"on_time": 0, "late": 0, "missed": 0, "open": 0, "declined": 0},
        "ratings": {"satisfied": 0, "basically_satisfied": 0, "dissatisfied": 0},
        "resident_ratings": {"satisfied": 0, "basically_satisfied": 0, "dissatisfied": 0},
        "declines": 0,
        "reopens": 0,
        "escalations": 0,
        "_report_minutes": 0,
        "_handling_minutes": 0,
    }


def _pct(part: int, whole: int) -> str | None:
    if whole == 0:
        return None
    return str((Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _finish(c: dict[str, Any]) -> dict[str, Any]:
    ri, h, r = c["report_in"], c["handling"], c["ratings"]
    reported = ri["on_time"] + ri["late"]
    fed_back = h["on_time"] + h["late"]
    rated = sum(r.values())
    c["report_in_on_time_pct"] = _pct(ri["on_time"], reported + ri["missed"])
    c["handled_on_time_pct"] = _pct(h["on_time"], fed_back + h["missed"])
    c["satisfaction_pct"] = _pct(r["satisfied"] + r["basically_satisfied"], rated)
    own = c["resident_ratings"]
    c["resident_satisfaction_pct"] = _pct(own["satisfied"] + own["basically_satisfied"], sum(own.values()))
    c["mean_report_in_minutes"] = round(c.pop("_report_minutes") / reported, 1) if reported else None
    minutes = c.pop("_handling_minutes")
    c["mean_handling_hours"] = round(minutes / 60 / fed_back, 1) if fed_back else None
    return c


def empty_scorecard(code: str) -> dict[str, Any]:
    """The scorecard of a department nothing has happened to yet."""
    return _finish(_empty_card(code))


class ScorecardProjection(BatonProjection[ScorecardView]):
    """Counts what each department did with its whistles."""

    name = "department_scorecard"

    def prepare(self, tx: Tx, envelopes: Sequence[Envelope]) -> None:
        """The batch's whistles' summonses and work orders, read at once: a read and a write for each event was a
        fifth of a rebuild on PostgreSQL (a round trip each)."""
        tx.memo[ROWS] = self.view.load_rows(tx, {e.aggregate_id for e in envelopes if e.name in self.handlers})

    @handles(Whistle.Blown)
    def _blown(self, tx: Tx, e: Envelope) -> None:
        rows: Rows = tx.memo[ROWS]
        for department in e.data["summoned_departments"]:
            key = (e.aggregate_id, department)
            if key not in rows.summons:
                rows.summons[key] = ["pending", None]
                rows.summons_changed.add(key)
                self.view.count(tx, department, "report_in.pending")

    @handles(Whistle.ReportedIn)
    def _reported_in(self, tx: Tx, e: Envelope) -> None:
        rows: Rows = tx.memo[ROWS]
        department = e.data["department"]
        key = (e.aggregate_id, department)
        before = rows.summons.get(key)
        if before is not None:
            state = "late" if e.data["late"] else "on_time"
            was = ("report_in." + before[0], before[1])
            rows.summons[key] = [state, e.data["minutes"]]
            rows.summons_changed.add(key)
            self.view.move(tx, department, was, ("report_in." + state, e.data["minutes"]))

    @handles(Whistle.Dispatched)
    def _dispatched(self, tx: Tx, e: Envelope) -> None:
        rows: Rows = tx.memo[ROWS]
        orders = rows.orders.setdefault(e.aggregate_id, {})
        round_, lead = int(e.data["round"]), e.data["lead_department"]
        if round_ not in orders:
            orders[round_] = [lead, "open", None]
            rows.orders_changed.add((e.aggregate_id, round_))
            self.view.count(tx, lead, "handling.open")

    @handles(Whistle.Declined)
    def _declined(self, tx: Tx, e: Envelope) -> None:
        self.view.bump(tx, e.data["department"], "declines")
        if e.data["role"] == "lead":
            self._set_order(tx, e.aggregate_id, e.data["round"], "declined", None)

    @handles(Whistle.FedBack)
    def _fed_back(self, tx: Tx, e: Envelope) -> None:
        orders = tx.memo[ROWS].orders.get(e.aggregate_id)
        if orders:
            state = "on_time" if e.data["on_time"] else "late"
            self._set_order(tx, e.aggregate_id, max(orders), state, e.data["minutes"])

    @handles(Whistle.DeadlineMissed)
    def _deadline_missed(self, tx: Tx, e: Envelope) -> None:
        if e.data["step"] == "report_in":
            rows: Rows = tx.memo[ROWS]
            for department in e.data["departments"]:
                key = (e.aggregate_id, department)
                row = rows.summons.get(key)
                if row is not None and row[0] == "pending":
                    row[0] = "missed"
                    rows.summons_changed.add(key)
                    self.view.move(tx, department, ("report_in.pending", None), ("report_in.missed", None))
        else:
            round_ = int(e.data["key"].split(":")[1])
            self._set_order(tx, e.aggregate_id, round_, "missed", None)

    def _set_order(self, tx: Tx, whistle_id: str, round_: int, state: str, minutes: int | None) -> None:
        rows: Rows = tx.memo[ROWS]
        row = rows.orders.get(whistle_id, {}).get(int(round_))
        if row is None:
            return
        was = ("handling." + row[1], row[2])
        row[1], row[2] = state, minutes
        rows.orders_changed.add((whistle_id, int(round_)))
        self.view.move(tx, row[0], was, ("handling." + state, minutes))

    @handles(Whistle.Evaluated)
    def _evaluated(self, tx: Tx, e: Envelope) -> None:
        department, rating = e.data.get("department"), e.data.get("rating")
        if department:
            rows: Rows = tx.memo[ROWS]
            key = (e.aggregate_id, e.version, department)
            tables = [(RATINGS, "rating")]
            if (e.actor or {}).get("role") == "resident":  # the resident's own rating, with their tracking code
                tables.append((RESIDENT, "resident"))
            for table, measure in tables:
                if key not in rows.ratings[table]:
                    rows.ratings[table].add(key)
                    rows.new_ratings[table].append((*key, rating))
                    self.view.count(tx, department, f"{measure}.{rating}")
            if e.data["status"] == "reopened":
                self.view.bump(tx, department, "reopens")

    @handles(Whistle.Escalated)
    def _escalated(self, tx: Tx, e: Envelope) -> None:
        for department in e.data["departments"]:
            self.view.bump(tx, department, "escalations")

    def flush(self, tx: Tx) -> None:
        self.view.save_rows(tx, tx.memo.pop(ROWS))
        self.view.flush_tally(tx)
