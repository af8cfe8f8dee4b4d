"""The organisation context: units, departments, categories and cadres, managed by admins."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Recording

from domain.organisation import ORGANISATION_ID, Organisation
from services.access import Context, Role, require_role
from services.base import BatonApplication, Decision, Receipt


class OrganisationApp(BatonApplication):
    """Keeps the organisation's reference data as events."""

    _snapshot: Organisation | None = None
    _checked_at = float("-inf")
    _generation = 0
    FRESH_FOR = 1.0
    """Seconds a snapshot is trusted without asking the store; this process's own changes count at once."""

    def current(self) -> Organisation:
        """The organisation as of now, shared by every reader (never change it); empty before the first command.

        Every command reads it, and a fresh copy from the repository costs a deep copy of the whole county
        (~2 ms); the organisation changes rarely, so the copy is remade only when a newer event exists, and
        the store is asked at most once a second unless this process changed the organisation meanwhile
        (another process's change, e.g. a CLI seeding while serving, shows within a second).
        """
        snapshot, generation = self._snapshot, self._generation
        if snapshot is not None and time.monotonic() - self._checked_at < self.FRESH_FOR:
            return snapshot
        checked_at = time.monotonic()
        if snapshot is None or self.recorder.select_events(ORGANISATION_ID, gt=snapshot.version, limit=1):
            try:
                snapshot = self.repository.get(ORGANISATION_ID)
            except AggregateNotFoundError:
                return _empty_organisation()
        if generation == self._generation:  # no change of ours landed while we looked
            self._snapshot, self._checked_at = snapshot, checked_at
        return snapshot

    def fresh(self) -> Organisation | None:
        """current() when it needs no look at the store (looked within FRESH_FOR s), else None: for the event loop."""
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - self._checked_at < self.FRESH_FOR:
            return snapshot
        return None

    def _notify(self, recordings: list[Recording[UUID]]) -> None:
        self._generation += 1
        self._checked_at = float("-inf")
        super()._notify(recordings)

    def _change(self, ctx: Context, change: Any) -> Receipt:
        require_role(ctx.actor, Role.ADMIN, action="change the organisation")

        def decide(now: datetime) -> Decision:
            try:
                org = self.repository.get(ORGANISATION_ID)
            except AggregateNotFoundError:
                org = Organisation(name="organisation", timestamp=now, meta=ctx.meta())
            body = change(org, now)
            return [org], body

        return self.execute(ctx, decide)

    def add_unit(
        self,
        ctx: Context,
        *,
        unit_id: str,
        kind: str,
        parent_id: str | None,
        name: str,
        residents: int | None,
    ) -> Receipt:
        def change(org: Organisation, now: datetime) -> dict[str, Any]:
            org.add_unit(unit_id, kind, parent_id, name, residents, timestamp=now, meta=ctx.meta())
            return {"unit_id": unit_id}

        return self._change(ctx, change)

    def draw_boundary(self, ctx: Context, *, unit_id: str, geometry: dict[str, Any]) -> Receipt:
        def change(org: Organisation, now: datetime) -> dict[str, Any]:
            org.draw_boundary(unit_id, geometry, timestamp=now, meta=ctx.meta())
            return {"unit_id": unit_id}

        return self._change(ctx, change)

    def add_department(self, ctx: Context, *, code: str, name: str) -> Receipt:
        def change(org: Organisation, now: datetime) -> dict[str, Any]:
            org.add_department(code, name, timestamp=now, meta=ctx.meta())
            return {"code": code}

        return self._change(ctx, change)

    def define_category(
        self,
        ctx: Context,
        *,
        code: str,
        name: str,
        duty: str,
        departments: list[str],
        deadline_class: str,
        deadline_overrides: dict[str, int | None],
    ) -> Receipt:
        def change(org: Organisation, now: datetime) -> dict[str, Any]:
            org.define_category(
                code,
                name,
                duty,
                departments,
                deadline_class,
                deadline_overrides,
                timestamp=now,
                meta=ctx.meta(),
            )
            return {"code": code}

        return self._change(ctx, change)

    def register_cadre(
        self,
        ctx: Context,
        *,
        cadre_id: str,
        name: str,
        department: str | None,
        unit_id: str | None,
        title: str | None,
    ) -> Receipt:
        def change(org: Organisation, now: datetime) -> dict[str, Any]:
            org.register_cadre(cadre_id, name, department, unit_id, title, timestamp=now, meta=ctx.meta())
            return {"cadre_id": cadre_id}

        return self._change(ctx, change)

    def second_cadre(self, ctx: Context, *, cadre_id: str, community_id: str) -> Receipt:
        def change(org: Organisation, now: datetime) -> dict[str, Any]:
            org.second_cadre(cadre_id, community_id, timestamp=now, meta=ctx.meta())
            return {"cadre_id": cadre_id, "community_id": community_id}

        return self._change(ctx, change)


def _empty_organisation() -> Organisation:
    org = Organisation(name="organisation", timestamp=datetime.min.replace(tzinfo=UTC), meta={})
    org.collect_events()
    return org
