"""Department scorecard: report-in and handling on time, satisfaction, declines, reopens, mean times."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from domain.events import handles
from domain.whistle import Whistle
from infra.envelope import Envelope
from infra.sql import Tx, View
from projections.base import BatonProjection


class ScorecardView(View):
    """One row per summons, per work order and per rating; counts per department."""

    tables = (
        "baton_score_summons",
        "baton_score_orders",
        "baton_score_ratings",
        "baton_score_counts",
        "baton_score_resident_ratings",
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
    )

    def bump(self, tx: Tx, department: str, column: str) -> None:
        assert column in ("declines", "reopens", "escalations")
        tx.execute(
            self.q(
                f"INSERT INTO {{baton_score_counts}} (department, {column}) VALUES (%s, 1) "
                f"ON CONFLICT (department) DO UPDATE SET {column} = {{baton_score_counts}}.{column} + 1"
            ),
            (department,),
        )

    def scorecards(self, department: str | None = None) -> list[dict[str, Any]]:
        """Every department's scorecard (or one), computed from the rows."""
        cards: dict[str, dict[str, Any]] = {}

        def card(code: str) -> dict[str, Any]:
            return cards.setdefault(code, _empty_card(code))

        with self.db.transaction(commit=False) as tx:
            tx.execute(
                self.q(
                    "SELECT department, state, COUNT(*) AS n, SUM(minutes) AS minutes "
                    "FROM {baton_score_summons} GROUP BY department, state"
                )
            )
            for r in tx.fetchall():
                c = card(r["department"])
                c["summoned"] += r["n"]
                c["report_in"][r["state"]] += r["n"]
                if r["state"] in ("on_time", "late"):
                    c["_report_minutes"] += int(r["minutes"] or 0)
            tx.execute(
                self.q(
                    "SELECT department, state, COUNT(*) AS n, SUM(minutes) AS minutes "
                    "FROM {baton_score_orders} GROUP BY department, state"
                )
            )
            for r in tx.fetchall():
                c = card(r["department"])
                c["work_orders"] += r["n"]
                c["handling"][r["state"]] += r["n"]
                if r["state"] in ("on_time", "late"):
                    c["_handling_minutes"] += int(r["minutes"] or 0)
            tx.execute(
                self.q(
                    "SELECT department, rating, COUNT(*) AS n FROM {baton_score_ratings} GROUP BY department, rating"
                )
            )
            for r in tx.fetchall():
                card(r["department"])["ratings"][r["rating"]] += r["n"]
            tx.execute(
                self.q(
                    "SELECT department, rating, COUNT(*) AS n FROM {baton_score_resident_ratings} "
                    "GROUP BY department, rating"
                )
            )
            for r in tx.fetchall():
                card(r["department"])["resident_ratings"][r["rating"]] += r["n"]
            tx.execute(self.q("SELECT * FROM {baton_score_counts}"))
            for r in tx.fetchall():
                c = card(r["department"])
                c.update(declines=r["declines"], reopens=r["reopens"], escalations=r["escalations"])
        result = [_finish(c) for code, c in sorted(cards.items()) if department in (None, code)]
        return result


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

    @handles(Whistle.Blown)
    def _blown(self, tx: Tx, e: Envelope) -> None:
        tx.executemany(
            self.view.q(
                "INSERT INTO {baton_score_summons} (whistle_id, department, state) VALUES (%s, %s, 'pending') "
                "ON CONFLICT DO NOTHING"
            ),
            [(e.aggregate_id, d) for d in e.data["summoned_departments"]],
        )

    @handles(Whistle.ReportedIn)
    def _reported_in(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q(
                "UPDATE {baton_score_summons} SET state = %s, minutes = %s WHERE whistle_id = %s AND department = %s"
            ),
            ("late" if e.data["late"] else "on_time", e.data["minutes"], e.aggregate_id, e.data["department"]),
        )

    @handles(Whistle.Dispatched)
    def _dispatched(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_score_orders} (whistle_id, round, department, state) "
                "VALUES (%s, %s, %s, 'open') ON CONFLICT DO NOTHING"
            ),
            (e.aggregate_id, e.data["round"], e.data["lead_department"]),
        )

    @handles(Whistle.Declined)
    def _declined(self, tx: Tx, e: Envelope) -> None:
        self.view.bump(tx, e.data["department"], "declines")
        if e.data["role"] == "lead":
            self._set_order(tx, e.aggregate_id, e.data["round"], "declined", None)

    @handles(Whistle.FedBack)
    def _fed_back(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q(
                "UPDATE {baton_score_orders} SET state = %s, minutes = %s "
                "WHERE whistle_id = %s AND round = (SELECT MAX(round) FROM {baton_score_orders} WHERE whistle_id = %s)"
            ),
            ("on_time" if e.data["on_time"] else "late", e.data["minutes"], e.aggregate_id, e.aggregate_id),
        )

    @handles(Whistle.DeadlineMissed)
    def _deadline_missed(self, tx: Tx, e: Envelope) -> None:
        if e.data["step"] == "report_in":
            tx.executemany(
                self.view.q(
                    "UPDATE {baton_score_summons} SET state = 'missed' "
                    "WHERE whistle_id = %s AND department = %s AND state = 'pending'"
                ),
                [(e.aggregate_id, d) for d in e.data["departments"]],
            )
        else:
            round_ = int(e.data["key"].split(":")[1])
            self._set_order(tx, e.aggregate_id, round_, "missed", None)

    def _set_order(self, tx: Tx, whistle_id: str, round_: int, state: str, minutes: int | None) -> None:
        tx.execute(
            self.view.q(
                "UPDATE {baton_score_orders} SET state = %s, minutes = %s WHERE whistle_id = %s AND round = %s"
            ),
            (state, minutes, whistle_id, round_),
        )

    @handles(Whistle.Evaluated)
    def _evaluated(self, tx: Tx, e: Envelope) -> None:
        if e.data.get("department"):
            tx.execute(
                self.view.q(
                    "INSERT INTO {baton_score_ratings} (whistle_id, version, department, rating) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ),
                (e.aggregate_id, e.version, e.data["department"], e.data["rating"]),
            )
            if (e.actor or {}).get("role") == "resident":  # the resident's own rating, with their tracking code
                tx.execute(
                    self.view.q(
                        "INSERT INTO {baton_score_resident_ratings} (whistle_id, version, department, rating) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                    ),
                    (e.aggregate_id, e.version, e.data["department"], e.data["rating"]),
                )
            if e.data["status"] == "reopened":
                self.view.bump(tx, e.data["department"], "reopens")

    @handles(Whistle.Escalated)
    def _escalated(self, tx: Tx, e: Envelope) -> None:
        for department in e.data["departments"]:
            self.view.bump(tx, department, "escalations")
