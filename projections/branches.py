"""Branch read models: the status board, each branch's log and audit history, the county overview by grade."""

from __future__ import annotations

from datetime import date
from typing import Any

from domain.branches import Branch, BranchStandard, Standard, month_key, quarter_key
from domain.events import handles
from infra.envelope import Envelope
from infra.sql import Tx, View
from projections.base import BatonProjection, dumps, loads


class BranchView(View):
    """Tables of the branch read models."""

    tables = (
        "baton_branches",
        "baton_branch_meetings",
        "baton_branch_dues",
        "baton_branch_audits",
        "baton_rectifications",
        "baton_standards",
    )
    ddl = (
        "CREATE TABLE IF NOT EXISTS {baton_branches} (branch_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "parent_kind TEXT NOT NULL, parent_id TEXT NOT NULL, community_id TEXT, street_id TEXT, district_id TEXT, "
        "members INTEGER NOT NULL, established_on TEXT NOT NULL, grade TEXT, total TEXT, standard_version TEXT, "
        "last_audit_on TEXT, audits INTEGER NOT NULL, open_rectifications INTEGER NOT NULL, "
        "overdue_rectifications INTEGER NOT NULL, escalation_level INTEGER NOT NULL, escalated_to TEXT)",
        "CREATE TABLE IF NOT EXISTS {baton_branch_meetings} (branch_id TEXT NOT NULL, meeting_id TEXT NOT NULL, "
        "kind TEXT NOT NULL, held_on TEXT NOT NULL, attendance INTEGER NOT NULL, topic TEXT NOT NULL, "
        "PRIMARY KEY (branch_id, meeting_id))",
        "CREATE INDEX IF NOT EXISTS baton_branch_meetings_day ON {baton_branch_meetings} (branch_id, held_on)",
        "CREATE TABLE IF NOT EXISTS {baton_branch_dues} (branch_id TEXT NOT NULL, period TEXT NOT NULL, "
        "amount_yuan TEXT NOT NULL, members_paid INTEGER NOT NULL, collected_on TEXT NOT NULL, "
        "PRIMARY KEY (branch_id, period))",
        "CREATE TABLE IF NOT EXISTS {baton_branch_audits} (branch_id TEXT NOT NULL, audit_id TEXT NOT NULL, "
        "position BIGINT NOT NULL, standard_version TEXT NOT NULL, audited_on TEXT NOT NULL, total TEXT NOT NULL, "
        "grade TEXT NOT NULL, previous_grade TEXT, aspects TEXT NOT NULL, auditor TEXT, "
        "PRIMARY KEY (branch_id, audit_id))",
        "CREATE TABLE IF NOT EXISTS {baton_rectifications} (branch_id TEXT NOT NULL, rectification_id TEXT NOT NULL, "
        "audit_id TEXT NOT NULL, criterion TEXT, text TEXT NOT NULL, due_on TEXT NOT NULL, status TEXT NOT NULL, "
        "evidence TEXT, completed_on TEXT, on_time INTEGER, escalated_to TEXT, "
        "PRIMARY KEY (branch_id, rectification_id))",
        "CREATE INDEX IF NOT EXISTS baton_rectifications_due ON {baton_rectifications} (status, due_on)",
        "CREATE TABLE IF NOT EXISTS {baton_standards} (version TEXT PRIMARY KEY, digest TEXT NOT NULL, "
        "document TEXT NOT NULL, published_at TEXT NOT NULL, position BIGINT NOT NULL)",
    )

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q(sql), params)
            return tx.fetchall()

    def latest_standard(self) -> dict[str, Any] | None:
        rows = self.fetch("SELECT * FROM {baton_standards} ORDER BY position DESC LIMIT 1")
        return {**rows[0], "document": loads(rows[0]["document"])} if rows else None

    def standards(self) -> list[dict[str, Any]]:
        rows = self.fetch("SELECT version, digest, published_at, position FROM {baton_standards} ORDER BY position")
        return rows

    def standard_document(self, version: str) -> dict[str, Any] | None:
        rows = self.fetch("SELECT document FROM {baton_standards} WHERE version = %s", (version,))
        return loads(rows[0]["document"]) if rows else None

    def board_with_cadence(
        self, filters: dict[str, str | None], today: date, limit: int = 1000, after: tuple[Any, ...] | None = None
    ) -> list[dict[str, Any]]:
        """Board rows by name (at most LIMIT, after the (name, branch_id) AFTER), each with this quarter's cadence per
        meeting kind: met, missed or pending."""
        rows = self.board(filters, limit, after)
        cadences = self.cadences([r["branch_id"] for r in rows], today)
        for row in rows:
            row["cadence_this_quarter"] = {
                c["meeting"]: "missed"
                if not c["met_so_far"]
                else ("met" if all(p["status"] == "met" for p in c["periods"]) else "pending")
                for c in cadences.get(row["branch_id"], [])
            }
        return rows

    def board(
        self, filters: dict[str, str | None], limit: int = 1000, after: tuple[Any, ...] | None = None
    ) -> list[dict[str, Any]]:
        where, params = _where(filters)
        sql = "SELECT * FROM {baton_branches}" + where
        if after is not None:
            sql += " AND (name, branch_id) > (%s, %s)"
            params.extend(after)
        return self.fetch(sql + " ORDER BY name, branch_id LIMIT %s", (*params, limit))

    def detail(self, branch_id: str, today: date) -> dict[str, Any] | None:
        rows = self.board({"branch_id": branch_id})
        if not rows:
            return None
        audits = self.fetch(
            "SELECT audit_id, standard_version, audited_on, total, grade, previous_grade, aspects, auditor, position "
            "FROM {baton_branch_audits} WHERE branch_id = %s ORDER BY position",
            (branch_id,),
        )
        rectifications = self.fetch(
            "SELECT rectification_id, audit_id, criterion, text, due_on, status, evidence, completed_on, on_time, "
            "escalated_to FROM {baton_rectifications} WHERE branch_id = %s ORDER BY due_on, rectification_id",
            (branch_id,),
        )
        meetings = self.fetch(
            "SELECT meeting_id, kind, held_on, attendance, topic FROM {baton_branch_meetings} "
            "WHERE branch_id = %s ORDER BY held_on DESC, meeting_id LIMIT 100",
            (branch_id,),
        )
        dues = self.fetch(
            "SELECT period, amount_yuan, members_paid, collected_on FROM {baton_branch_dues} "
            "WHERE branch_id = %s ORDER BY period DESC LIMIT 24",
            (branch_id,),
        )
        return {
            **rows[0],
            "cadence_this_quarter": self.cadence(branch_id, today),
            "audit_history": [{**a, "aspects": loads(a["aspects"])} for a in audits],
            "rectifications": [
                {**r, "on_time": None if r["on_time"] is None else bool(r["on_time"])} for r in rectifications
            ],
            "recent_meetings": meetings,
            "dues": dues,
        }

    def cadence(self, branch_id: str, today: date) -> list[dict[str, Any]]:
        """For each meeting kind of the latest standard: this quarter's periods, held counts, met/missed/pending."""
        return self.cadences([branch_id], today).get(branch_id, [])

    def cadences(self, branch_ids: list[str], today: date) -> dict[str, list[dict[str, Any]]]:
        """cadence() for many branches, from one query."""
        latest = self.latest_standard()
        if latest is None or not branch_ids:
            return {}
        standard = Standard.parse(latest["document"])
        first_month = today.month - (today.month - 1) % 3
        start = date(today.year, first_month, 1)
        held: dict[str, dict[tuple[str, str], int]] = {b: {} for b in branch_ids}
        marks = ", ".join(["%s"] * len(branch_ids))
        for row in self.fetch(
            f"SELECT branch_id, kind, held_on FROM {{baton_branch_meetings}} WHERE held_on >= %s "
            f"AND branch_id IN ({marks})",
            (start.isoformat(), *branch_ids),
        ):
            day = date.fromisoformat(row["held_on"])
            counts = held[row["branch_id"]]
            for key in (month_key(day), quarter_key(day)):
                counts[(row["kind"], key)] = counts.get((row["kind"], key), 0) + 1
        return {b: self._cadence(standard, counts, today, first_month) for b, counts in held.items()}

    @staticmethod
    def _cadence(
        standard: Standard, held: dict[tuple[str, str], int], today: date, first_month: int
    ) -> list[dict[str, Any]]:
        out = []
        for kind, c in standard.cadence.items():
            if c.period == "quarter":
                periods = [quarter_key(today)]
            else:
                periods = [month_key(date(today.year, m, 1)) for m in range(first_month, today.month + 1)]
            rows = []
            for p in periods:
                n = held.get((kind.value, p), 0)
                current = p in (month_key(today), quarter_key(today))
                rows.append(
                    {
                        "period": p,
                        "held": n,
                        "status": "met" if n >= c.at_least else ("pending" if current else "missed"),
                    }
                )
            out.append(
                {
                    "meeting": kind.value,
                    "name": c.name,
                    "every": c.period,
                    "at_least": c.at_least,
                    "periods": rows,
                    "met_so_far": all(r["status"] != "missed" for r in rows),
                }
            )
        return out

    def overview(self, filters: dict[str, str | None]) -> dict[str, Any]:
        """Every branch in FILTERS counted (by SQL, not over a page of the board)."""
        where, params = _where(filters)
        rows = self.fetch(
            "SELECT grade, COUNT(*) AS n, SUM(open_rectifications) AS open, SUM(overdue_rectifications) AS overdue "
            "FROM {baton_branches}" + where + " GROUP BY grade ORDER BY grade",
            tuple(params),
        )
        by_grade: dict[str, int] = {}
        for r in rows:
            by_grade[r["grade"] or "not_audited"] = by_grade.get(r["grade"] or "not_audited", 0) + int(r["n"])
        return {
            "branches": sum(by_grade.values()),
            "by_grade": by_grade,
            "open_rectifications": sum(int(r["open"]) for r in rows),
            "overdue_rectifications": sum(int(r["overdue"]) for r in rows),
        }

    def due_rectifications(self, today_iso: str, limit: int = 500) -> list[str]:
        rows = self.fetch(
            "SELECT DISTINCT branch_id FROM {baton_rectifications} WHERE status = 'open' AND due_on < %s LIMIT %s",
            (today_iso, limit),
        )
        return [r["branch_id"] for r in rows]


def _where(filters: dict[str, str | None]) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of the board's filters that are set."""
    columns = ("community_id", "street_id", "district_id", "grade", "parent_kind", "parent_id", "branch_id")
    named = [c for c in columns if filters.get(c) is not None]
    return " WHERE 1 = 1" + "".join(f" AND {c} = %s" for c in named), [filters[c] for c in named]


class BranchProjection(BatonProjection[BranchView]):
    """Keeps the branch read models."""

    name = "branches"

    def _recount(self, tx: Tx, branch_id: str) -> None:
        tx.execute(
            self.view.q(
                "UPDATE {baton_branches} SET "
                "open_rectifications = (SELECT COUNT(*) FROM {baton_rectifications} r "
                "WHERE r.branch_id = %s AND r.status IN ('open', 'overdue')), "
                "overdue_rectifications = (SELECT COUNT(*) FROM {baton_rectifications} r "
                "WHERE r.branch_id = %s AND r.status = 'overdue') WHERE branch_id = %s"
            ),
            (branch_id, branch_id, branch_id),
        )

    @handles(BranchStandard.Published)
    def _published(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_standards} (version, digest, document, published_at, position) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ),
            (e.data["version"], e.data["digest"], dumps(e.data["document"]), e.occurred_at, e.position),
        )

    @handles(Branch.Registered)
    def _registered(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        chain = [*d["escalation_chain"], None, None]
        is_community = d["community_id"] is not None
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_branches} (branch_id, name, parent_kind, parent_id, community_id, street_id, "
                "district_id, members, established_on, grade, total, standard_version, last_audit_on, audits, "
                "open_rectifications, overdue_rectifications, escalation_level, escalated_to) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL, NULL, NULL, 0, 0, 0, 0, NULL) "
                "ON CONFLICT DO NOTHING"
            ),
            (
                e.aggregate_id,
                d["name"],
                d["parent_kind"],
                d["parent_id"],
                d["community_id"],
                chain[0] if is_community else None,
                chain[1] if is_community else chain[0],
                d["members"],
                d["established_on"],
            ),
        )

    @handles(Branch.MembersCounted)
    def _members(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q("UPDATE {baton_branches} SET members = %s WHERE branch_id = %s"),
            (e.data["members"], e.aggregate_id),
        )

    @handles(Branch.MeetingHeld)
    def _meeting(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_branch_meetings} (branch_id, meeting_id, kind, held_on, attendance, topic) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ),
            (e.aggregate_id, d["meeting_id"], d["kind"], d["held_on"], d["attendance"], d["topic"]),
        )

    @handles(Branch.DuesCollected)
    def _dues(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_branch_dues} (branch_id, period, amount_yuan, members_paid, collected_on) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ),
            (e.aggregate_id, d["period"], d["amount_yuan"], d["members_paid"], d["collected_on"]),
        )

    @handles(Branch.Audited)
    def _audited(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        auditor = (e.actor or {}).get("id")
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_branch_audits} (branch_id, audit_id, position, standard_version, audited_on, "
                "total, grade, previous_grade, aspects, auditor) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING"
            ),
            (
                e.aggregate_id,
                d["audit_id"],
                e.position,
                d["standard_version"],
                d["audited_on"],
                d["total"],
                d["grade"],
                d["previous_grade"],
                dumps(d["aspects"]),
                auditor,
            ),
        )
        tx.executemany(
            self.view.q(
                "INSERT INTO {baton_rectifications} (branch_id, rectification_id, audit_id, criterion, text, due_on, "
                "status) VALUES (%s, %s, %s, %s, %s, %s, 'open') ON CONFLICT DO NOTHING"
            ),
            [
                (e.aggregate_id, r["rectification_id"], d["audit_id"], r["criterion"], r["text"], r["due_on"])
                for r in d["rectifications"]
            ],
        )
        tx.execute(
            self.view.q(
                "UPDATE {baton_branches} SET grade = %s, total = %s, standard_version = %s, last_audit_on = %s, "
                "audits = audits + 1 WHERE branch_id = %s"
            ),
            (d["grade"], d["total"], d["standard_version"], d["audited_on"], e.aggregate_id),
        )
        self._recount(tx, e.aggregate_id)

    @handles(Branch.RectificationCompleted)
    def _completed(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "UPDATE {baton_rectifications} SET status = 'completed', evidence = %s, completed_on = %s, "
                "on_time = %s WHERE branch_id = %s AND rectification_id = %s"
            ),
            (d["evidence"], e.occurred_at[:10], int(d["on_time"]), e.aggregate_id, d["rectification_id"]),
        )
        self._recount(tx, e.aggregate_id)

    @handles(Branch.RectificationOverdue)
    def _overdue(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "UPDATE {baton_rectifications} SET status = 'overdue', escalated_to = %s "
                "WHERE branch_id = %s AND rectification_id = %s"
            ),
            (d["escalated_to"], e.aggregate_id, d["rectification_id"]),
        )
        tx.execute(
            self.view.q("UPDATE {baton_branches} SET escalation_level = %s, escalated_to = %s WHERE branch_id = %s"),
            (d["level"], d["escalated_to"], e.aggregate_id),
        )
        self._recount(tx, e.aggregate_id)
