"""Volunteering read models: balances and ledgers, leaderboards, catalogue, rosters, party members' service.

Points and hours are stored as integer hundredths so SQL sums stay exact on SQLite and PostgreSQL.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from domain.events import handles
from domain.organisation import Organisation
from domain.volunteering import Activity, Reward, Volunteer
from infra.envelope import Envelope
from infra.sql import Tx, View
from projections.base import BatonProjection

HUNDRED = Decimal(100)


def cents(value: Any) -> int:
    return int((Decimal(str(value)) * HUNDRED).to_integral_value())


def units(value: int | None) -> str:
    return str((Decimal(value or 0) / HUNDRED).quantize(Decimal("0.01")))


class VolunteeringView(View):
    """Tables of the volunteering read models."""

    tables = (
        "baton_volunteers",
        "baton_ledger",
        "baton_activities",
        "baton_roster",
        "baton_rewards",
        "baton_redemptions",
        "baton_point_expiries",
        "baton_pledges",
        "baton_service_hours",
        "baton_residents",
    )
    ddl = (
        "CREATE TABLE IF NOT EXISTS {baton_volunteers} (volunteer_id TEXT PRIMARY KEY, community_id TEXT NOT NULL, "
        "name TEXT NOT NULL, party_member INTEGER NOT NULL, branch TEXT, work_unit TEXT, balance BIGINT NOT NULL, "
        "earned BIGINT NOT NULL, voided BIGINT NOT NULL, redeemed BIGINT NOT NULL, expired BIGINT NOT NULL, "
        "hours BIGINT NOT NULL, activities INTEGER NOT NULL, next_expiry_at TEXT, registered_at TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS baton_volunteers_community ON {baton_volunteers} (community_id)",
        "CREATE TABLE IF NOT EXISTS {baton_ledger} (volunteer_id TEXT NOT NULL, version INTEGER NOT NULL, "
        "position BIGINT NOT NULL, kind TEXT NOT NULL, points BIGINT NOT NULL, balance BIGINT NOT NULL, "
        "ref TEXT, hours BIGINT, served_on TEXT, note TEXT, occurred_at TEXT NOT NULL, "
        "PRIMARY KEY (volunteer_id, version))",
        "CREATE TABLE IF NOT EXISTS {baton_activities} (activity_id TEXT PRIMARY KEY, community_id TEXT NOT NULL, "
        "title TEXT NOT NULL, starts_at TEXT NOT NULL, ends_at TEXT NOT NULL, place TEXT NOT NULL, "
        "capacity INTEGER NOT NULL, points_per_hour BIGINT NOT NULL, max_hours BIGINT NOT NULL, "
        "signups INTEGER NOT NULL, confirmed INTEGER NOT NULL, status TEXT NOT NULL, voided_reason TEXT)",
        "CREATE TABLE IF NOT EXISTS {baton_roster} (activity_id TEXT NOT NULL, volunteer_id TEXT NOT NULL, "
        "signed_up_at TEXT NOT NULL, hours BIGINT, credited_hours BIGINT, points BIGINT, confirmed_at TEXT, "
        "voided INTEGER NOT NULL, PRIMARY KEY (activity_id, volunteer_id))",
        "CREATE TABLE IF NOT EXISTS {baton_rewards} (reward_id TEXT PRIMARY KEY, community_id TEXT NOT NULL, "
        "name TEXT NOT NULL, cost BIGINT NOT NULL, stock INTEGER NOT NULL, handed_out INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {baton_redemptions} (redemption_id TEXT PRIMARY KEY, "
        "volunteer_id TEXT NOT NULL, reward_id TEXT NOT NULL, community_id TEXT NOT NULL, points BIGINT NOT NULL, "
        "occurred_at TEXT NOT NULL, position BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {baton_point_expiries} (volunteer_id TEXT PRIMARY KEY, "
        "next_expiry_at TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS baton_point_expiries_due ON {baton_point_expiries} (next_expiry_at)",
        "CREATE TABLE IF NOT EXISTS {baton_pledges} (volunteer_id TEXT NOT NULL, year INTEGER NOT NULL, "
        "hours BIGINT, service TEXT, branch TEXT, PRIMARY KEY (volunteer_id, year))",
        "CREATE TABLE IF NOT EXISTS {baton_service_hours} (volunteer_id TEXT NOT NULL, year INTEGER NOT NULL, "
        "hours BIGINT NOT NULL, PRIMARY KEY (volunteer_id, year))",
        "CREATE TABLE IF NOT EXISTS {baton_residents} (community_id TEXT PRIMARY KEY, residents INTEGER)",
    )

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q(sql), params)
            return tx.fetchall()

    def volunteer(self, volunteer_id: str) -> dict[str, Any] | None:
        rows = self.fetch("SELECT * FROM {baton_volunteers} WHERE volunteer_id = %s", (volunteer_id,))
        if not rows:
            return None
        ledger = self.fetch(
            "SELECT position, version, kind, points, balance, ref, note, occurred_at FROM {baton_ledger} "
            "WHERE volunteer_id = %s ORDER BY version",
            (volunteer_id,),
        )
        entries = [{**e, "points": units(e["points"]), "balance": units(e["balance"])} for e in ledger]
        return {**_volunteer(rows[0]), "entries": entries}

    def leaderboard(self, community_id: str, limit: int) -> list[dict[str, Any]]:
        rows = self.fetch(
            "SELECT * FROM {baton_volunteers} WHERE community_id = %s "
            "ORDER BY earned + voided DESC, hours DESC, volunteer_id LIMIT %s",
            (community_id, limit),
        )
        return [{"rank": i + 1, **_volunteer(r)} for i, r in enumerate(rows)]

    def catalogue(self, community_id: str) -> list[dict[str, Any]]:
        rows = self.fetch("SELECT * FROM {baton_rewards} WHERE community_id = %s ORDER BY cost, name", (community_id,))
        return [{**r, "cost": units(r["cost"])} for r in rows]

    def redemptions(
        self,
        community_id: str | None,
        volunteer_id: str | None,
        limit: int = 500,
        before: tuple[Any, ...] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first: at most LIMIT, stored before the (position,) BEFORE."""
        sql = (
            "SELECT d.*, r.name AS reward_name FROM {baton_redemptions} d "
            "JOIN {baton_rewards} r ON r.reward_id = d.reward_id WHERE 1 = 1"
        )
        params: list[Any] = []
        if community_id:
            sql += " AND d.community_id = %s"
            params.append(community_id)
        if volunteer_id:
            sql += " AND d.volunteer_id = %s"
            params.append(volunteer_id)
        if before is not None:
            sql += " AND d.position < %s"
            params.extend(before)
        rows = self.fetch(sql + " ORDER BY d.position DESC LIMIT %s", (*params, limit))
        return [{**r, "points": units(r["points"])} for r in rows]

    def activity(self, activity_id: str) -> dict[str, Any] | None:
        rows = self.fetch("SELECT * FROM {baton_activities} WHERE activity_id = %s", (activity_id,))
        if not rows:
            return None
        roster = self.fetch(
            "SELECT r.*, v.name FROM {baton_roster} r JOIN {baton_volunteers} v ON v.volunteer_id = r.volunteer_id "
            "WHERE r.activity_id = %s ORDER BY r.signed_up_at, r.volunteer_id",
            (activity_id,),
        )
        return {**_activity(rows[0]), "roster": [_roster(r) for r in roster]}

    def activities(
        self, community_id: str, limit: int = 200, before: tuple[Any, ...] | None = None
    ) -> list[dict[str, Any]]:
        """Latest start first: at most LIMIT, before the (starts_at, activity_id) BEFORE."""
        sql = "SELECT * FROM {baton_activities} WHERE community_id = %s"
        params: list[Any] = [community_id]
        if before is not None:
            sql += " AND (starts_at, activity_id) < (%s, %s)"
            params.extend(before)
        rows = self.fetch(sql + " ORDER BY starts_at DESC, activity_id DESC LIMIT %s", (*params, limit))
        return [_activity(r) for r in rows]

    def party_service(
        self, year: int, community_id: str | None, branch: str | None, within: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """In-service party members' pledges and served hours (only in communities `within`, when given)."""
        sql = (
            "SELECT v.volunteer_id, v.name, v.community_id, v.branch, p.hours AS pledged_hours, p.service, "
            "COALESCE(s.hours, 0) AS served_hours FROM {baton_volunteers} v "
            "LEFT JOIN {baton_pledges} p ON p.volunteer_id = v.volunteer_id AND p.year = %s "
            "LEFT JOIN {baton_service_hours} s ON s.volunteer_id = v.volunteer_id AND s.year = %s "
            "WHERE v.party_member = 1"
        )
        params: list[Any] = [year, year]
        if community_id:
            sql += " AND v.community_id = %s"
            params.append(community_id)
        if branch:
            sql += " AND v.branch = %s"
            params.append(branch)
        rows = self.fetch(sql + " ORDER BY v.branch, v.volunteer_id", tuple(params))
        out = []
        for r in rows:
            if within is not None and r["community_id"] not in within:
                continue
            pledged = r["pledged_hours"]
            fulfilled = None if pledged is None else r["served_hours"] >= pledged
            out.append(
                {
                    "volunteer_id": r["volunteer_id"],
                    "name": r["name"],
                    "community_id": r["community_id"],
                    "branch": r["branch"],
                    "pledged_hours": None if pledged is None else units(pledged),
                    "pledged_service": r["service"],
                    "served_hours": units(r["served_hours"]),
                    "fulfilled": fulfilled,
                }
            )
        return out

    def branch_service(
        self, year: int, community_id: str | None, within: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """Party members' service summed per branch: members, pledges, hours pledged and served, fulfilled."""
        branches: dict[str, dict[str, Any]] = {}
        for m in self.party_service(year, community_id, None, within):
            b = branches.setdefault(
                m["branch"],
                {
                    "branch": m["branch"],
                    "year": year,
                    "members": 0,
                    "pledged": 0,
                    "fulfilled": 0,
                    "pledged_hours": Decimal(0),
                    "served_hours": Decimal(0),
                },
            )
            b["members"] += 1
            b["served_hours"] += Decimal(m["served_hours"])
            if m["pledged_hours"] is not None or m["pledged_service"]:
                b["pledged"] += 1
                b["pledged_hours"] += Decimal(m["pledged_hours"] or 0)
            b["fulfilled"] += 1 if m["fulfilled"] else 0
        return [
            {**b, "pledged_hours": str(b["pledged_hours"]), "served_hours": str(b["served_hours"])}
            for _, b in sorted(branches.items())
        ]

    def participation(self, year: int, community_id: str | None) -> list[dict[str, Any]]:
        """Volunteers with confirmed service in the year per 1,000 residents (an assessment indicator)."""
        sql = (
            "SELECT c.community_id, c.residents, COUNT(DISTINCT s.volunteer_id) AS volunteers "
            "FROM {baton_residents} c "
            "LEFT JOIN {baton_volunteers} v ON v.community_id = c.community_id "
            "LEFT JOIN {baton_service_hours} s ON s.volunteer_id = v.volunteer_id AND s.year = %s AND s.hours > 0"
        )
        params: list[Any] = [year]
        if community_id:
            sql += " WHERE c.community_id = %s"
            params.append(community_id)
        rows = self.fetch(sql + " GROUP BY c.community_id, c.residents ORDER BY c.community_id", tuple(params))
        out = []
        for r in rows:
            residents = r["residents"]
            rate = (
                str((Decimal(r["volunteers"]) * 1000 / Decimal(residents)).quantize(Decimal("0.01")))
                if residents
                else None
            )
            out.append(
                {
                    "community_id": r["community_id"],
                    "year": year,
                    "residents": residents,
                    "volunteers_served": r["volunteers"],
                    "per_1000_residents": rate,
                }
            )
        return out

    def due_expiries(self, now_iso: str, limit: int = 500) -> list[str]:
        rows = self.fetch(
            "SELECT volunteer_id FROM {baton_point_expiries} WHERE next_expiry_at <= %s "
            "ORDER BY next_expiry_at LIMIT %s",
            (now_iso, limit),
        )
        return [r["volunteer_id"] for r in rows]


def _volunteer(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "volunteer_id": r["volunteer_id"],
        "community_id": r["community_id"],
        "name": r["name"],
        "party_member": bool(r["party_member"]),
        "branch": r["branch"],
        "work_unit": r["work_unit"],
        "balance": units(r["balance"]),
        "earned": units(r["earned"]),
        "voided": units(r["voided"]),
        "redeemed": units(r["redeemed"]),
        "expired": units(r["expired"]),
        "hours": units(r["hours"]),
        "activities": r["activities"],
        "next_expiry_at": r["next_expiry_at"],
        "registered_at": r["registered_at"],
    }


def _activity(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "points_per_hour": units(r["points_per_hour"]), "max_hours_per_person": units(r.pop("max_hours"))}


def _roster(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "volunteer_id": r["volunteer_id"],
        "name": r["name"],
        "signed_up_at": r["signed_up_at"],
        "hours": None if r["hours"] is None else units(r["hours"]),
        "credited_hours": None if r["credited_hours"] is None else units(r["credited_hours"]),
        "points": None if r["points"] is None else units(r["points"]),
        "confirmed_at": r["confirmed_at"],
        "voided": bool(r["voided"]),
    }


class VolunteeringProjection(BatonProjection[VolunteeringView]):
    """Keeps the volunteering read models."""

    name = "volunteering"

    def _ledger(self, tx: Tx, e: Envelope, kind: str, ref: str | None, note: str | None = None) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_ledger} (volunteer_id, version, position, kind, points, balance, ref, hours, "
                "served_on, note, occurred_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING"
            ),
            (
                e.aggregate_id,
                e.version,
                e.position,
                kind,
                cents(d["points"]),
                cents(d["balance"]),
                ref,
                cents(d["hours"]) if "hours" in d else None,
                d.get("served_on"),
                note,
                e.occurred_at,
            ),
        )
        column = {"award": "earned", "void": "voided", "redeem": "redeemed", "expire": "expired"}[kind]
        tx.execute(
            self.view.q(
                f"UPDATE {{baton_volunteers}} SET balance = %s, {column} = {column} + %s, next_expiry_at = %s "
                "WHERE volunteer_id = %s"
            ),
            (cents(d["balance"]), cents(d["points"]), d.get("next_expiry_at"), e.aggregate_id),
        )
        if d.get("next_expiry_at"):
            tx.execute(
                self.view.q(
                    "INSERT INTO {baton_point_expiries} (volunteer_id, next_expiry_at) VALUES (%s, %s) "
                    "ON CONFLICT (volunteer_id) DO UPDATE SET next_expiry_at = excluded.next_expiry_at"
                ),
                (e.aggregate_id, d["next_expiry_at"]),
            )
        else:
            tx.execute(self.view.q("DELETE FROM {baton_point_expiries} WHERE volunteer_id = %s"), (e.aggregate_id,))

    def _service_hours(self, tx: Tx, volunteer_id: str, served_on: str, hours: int) -> None:
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_service_hours} (volunteer_id, year, hours) VALUES (%s, %s, %s) "
                "ON CONFLICT (volunteer_id, year) DO UPDATE SET hours = {baton_service_hours}.hours + excluded.hours"
            ),
            (volunteer_id, int(served_on[:4]), hours),
        )

    @handles(Organisation.UnitAdded)
    def _unit_added(self, tx: Tx, e: Envelope) -> None:
        if e.data["kind"] == "community":
            tx.execute(
                self.view.q(
                    "INSERT INTO {baton_residents} (community_id, residents) VALUES (%s, %s) "
                    "ON CONFLICT (community_id) DO UPDATE SET residents = excluded.residents"
                ),
                (e.data["unit_id"], e.data.get("residents")),
            )

    @handles(Volunteer.Registered)
    def _registered(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_volunteers} (volunteer_id, community_id, name, party_member, branch, work_unit, "
                "balance, earned, voided, redeemed, expired, hours, activities, next_expiry_at, registered_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, 0, 0, 0, 0, 0, 0, 0, NULL, %s) ON CONFLICT DO NOTHING"
            ),
            (
                e.aggregate_id,
                d["community_id"],
                d["name"],
                int(d["party_member"]),
                d.get("branch"),
                d.get("work_unit"),
                e.occurred_at,
            ),
        )

    @handles(Volunteer.PointsAwarded)
    def _awarded(self, tx: Tx, e: Envelope) -> None:
        self._ledger(tx, e, "award", e.data["activity_id"])
        hours = cents(e.data["hours"])
        tx.execute(
            self.view.q(
                "UPDATE {baton_volunteers} SET hours = hours + %s, activities = activities + 1 WHERE volunteer_id = %s"
            ),
            (hours, e.aggregate_id),
        )
        self._service_hours(tx, e.aggregate_id, e.data["served_on"], hours)

    @handles(Volunteer.AwardVoided)
    def _voided(self, tx: Tx, e: Envelope) -> None:
        self._ledger(tx, e, "void", e.data["activity_id"], e.data["reason"])
        tx.execute(
            self.view.q(
                "SELECT hours, served_on FROM {baton_ledger} WHERE volunteer_id = %s AND kind = 'award' AND ref = %s"
            ),
            (e.aggregate_id, e.data["activity_id"]),
        )
        award = tx.fetchone()
        if award:
            tx.execute(
                self.view.q(
                    "UPDATE {baton_volunteers} SET hours = hours - %s, activities = activities - 1 "
                    "WHERE volunteer_id = %s"
                ),
                (award["hours"], e.aggregate_id),
            )
            self._service_hours(tx, e.aggregate_id, award["served_on"], -award["hours"])

    @handles(Volunteer.PointsRedeemed)
    def _redeemed(self, tx: Tx, e: Envelope) -> None:
        self._ledger(tx, e, "redeem", e.data["reward_id"])
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_redemptions} (redemption_id, volunteer_id, reward_id, community_id, points, "
                "occurred_at, position) SELECT %s, %s, %s, community_id, %s, %s, %s FROM {baton_volunteers} "
                "WHERE volunteer_id = %s ON CONFLICT DO NOTHING"
            ),
            (
                e.data["redemption_id"],
                e.aggregate_id,
                e.data["reward_id"],
                -cents(e.data["points"]),
                e.occurred_at,
                e.position,
                e.aggregate_id,
            ),
        )

    @handles(Volunteer.PointsExpired)
    def _expired(self, tx: Tx, e: Envelope) -> None:
        self._ledger(tx, e, "expire", None)

    @handles(Volunteer.Pledged)
    def _pledged(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_pledges} (volunteer_id, year, hours, service, branch) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING"
            ),
            (e.aggregate_id, d["year"], None if d["hours"] is None else cents(d["hours"]), d["service"], d["branch"]),
        )

    @handles(Activity.Published)
    def _published(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_activities} (activity_id, community_id, title, starts_at, ends_at, place, "
                "capacity, points_per_hour, max_hours, signups, confirmed, status, voided_reason) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0, 0, 'published', NULL) ON CONFLICT DO NOTHING"
            ),
            (
                e.aggregate_id,
                d["community_id"],
                d["title"],
                d["starts_at"],
                d["ends_at"],
                d["place"],
                d["capacity"],
                cents(d["points_per_hour"]),
                cents(d["max_hours"]),
            ),
        )

    @handles(Activity.SignedUp)
    def _signed_up(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_roster} (activity_id, volunteer_id, signed_up_at, voided) VALUES (%s, %s, %s, 0) "
                "ON CONFLICT DO NOTHING"
            ),
            (e.aggregate_id, e.data["volunteer_id"], e.occurred_at),
        )
        tx.execute(
            self.view.q("UPDATE {baton_activities} SET signups = %s WHERE activity_id = %s"),
            (e.data["signups"], e.aggregate_id),
        )

    @handles(Activity.AttendanceConfirmed)
    def _confirmed(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "UPDATE {baton_roster} SET hours = %s, credited_hours = %s, points = %s, confirmed_at = %s "
                "WHERE activity_id = %s AND volunteer_id = %s"
            ),
            (
                cents(d["hours"]),
                cents(d["credited_hours"]),
                cents(d["points"]),
                e.occurred_at,
                e.aggregate_id,
                d["volunteer_id"],
            ),
        )
        tx.execute(
            self.view.q("UPDATE {baton_activities} SET confirmed = confirmed + 1 WHERE activity_id = %s"),
            (e.aggregate_id,),
        )

    @handles(Activity.CreditVoided)
    def _credit_voided(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q("UPDATE {baton_activities} SET status = 'voided', voided_reason = %s WHERE activity_id = %s"),
            (e.data["reason"], e.aggregate_id),
        )
        tx.execute(self.view.q("UPDATE {baton_roster} SET voided = 1 WHERE activity_id = %s"), (e.aggregate_id,))

    @handles(Reward.Listed)
    def _listed(self, tx: Tx, e: Envelope) -> None:
        d = e.data
        tx.execute(
            self.view.q(
                "INSERT INTO {baton_rewards} (reward_id, community_id, name, cost, stock, handed_out) "
                "VALUES (%s, %s, %s, %s, %s, 0) ON CONFLICT DO NOTHING"
            ),
            (e.aggregate_id, d["community_id"], d["name"], cents(d["cost"]), d["stock"]),
        )

    @handles(Reward.Restocked)
    def _restocked(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q("UPDATE {baton_rewards} SET stock = %s WHERE reward_id = %s"),
            (e.data["stock"], e.aggregate_id),
        )

    @handles(Reward.HandedOut)
    def _handed_out(self, tx: Tx, e: Envelope) -> None:
        tx.execute(
            self.view.q("UPDATE {baton_rewards} SET stock = %s, handed_out = handed_out + 1 WHERE reward_id = %s"),
            (e.data["stock"], e.aggregate_id),
        )
