"""The privacy context: who Baton holds personal data of, and erasing it on request."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from domain.errors import NotFound, Thing
from domain.privacy import AlreadyErased, PersonalData
from infra.clock import Clock
from infra.privacy import KeyRow
from infra.store import Store
from services.access import Actor, Context, Role, check_community_scope, require_role
from services.base import BatonApplication, Decision, Receipt
from services.organisation import OrganisationApp

ERASERS = (Role.ADMIN, Role.DISTRICT, Role.STREET, Role.COMMUNITY)


class PrivacyApp(BatonApplication):
    """Erases residents' personal data by destroying their key, and says what was erased when."""

    def __init__(self, store: Store, clock: Clock, org: OrganisationApp) -> None:
        super().__init__(store, clock)
        self.org = org

    def _row(self, person_id: UUID | str) -> tuple[UUID, KeyRow]:
        unknown = NotFound(
            f"person {person_id} is not known: Baton holds no personal data under that id", Thing.PERSON, person_id
        )
        try:
            pid = UUID(str(person_id))
        except ValueError:
            raise unknown from None
        row = self.store.vault.person(pid)
        if row is None:
            raise unknown
        return pid, row

    def erasure(self, person_id: UUID) -> PersonalData | None:
        try:
            return self.repository.get(PersonalData.create_id(person_id))
        except AggregateNotFoundError:
            return None

    def person(self, actor: Actor, person_id: UUID | str) -> dict[str, Any]:
        """Whether the person's data is held or erased (never the data itself)."""
        require_role(actor, *ERASERS, action="look up a person's data record")
        pid, row = self._row(person_id)
        check_community_scope(self.org.current(), actor, row.community_id, "look up this person")
        erasure = self.erasure(pid)
        out: dict[str, Any] = {"person_id": str(pid), "community_id": row.community_id, "erased": row.erased}
        if erasure is not None:
            out.update(erased_at=erasure.erased_at.isoformat(), reason=erasure.reason)
        return out

    def erase(self, ctx: Context, person_id: UUID | str, *, reason: str) -> Receipt:
        """Erase a resident's personal data: their key is destroyed with the event that records it."""
        require_role(ctx.actor, *ERASERS, action="erase personal data")
        pid, row = self._row(person_id)
        check_community_scope(self.org.current(), ctx.actor, row.community_id, "erase this person's data")

        def decide(now: datetime) -> Decision:
            prior = self.erasure(pid)
            if prior is not None:
                raise AlreadyErased(f"person {pid}'s personal data was already erased on {prior.erased_at.date()}")
            erasure = PersonalData.erase(
                person_id=pid, community_id=row.community_id, reason=reason, timestamp=now, meta=ctx.meta()
            )
            return [erasure], {
                "person_id": str(pid),
                "community_id": row.community_id,
                "erased": True,
                "erased_at": now.isoformat(),
                "reason": erasure.reason,
            }

        return self.execute(ctx, decide)
