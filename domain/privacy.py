"""Residents' personal data: sealed under a key per person, and erased on request (PIPL art. 47).

The domain never sees plaintext personal data: the application seals names, phones and addresses
before they reach an aggregate, so every event carries only a `Sealed` token. Erasing a person
records `PersonalData.Erased`; the store destroys the person's key in the same transaction, after
which every token of that person reads as erased while the history itself stays intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.common import Meta, check_text
from domain.errors import Conflict

SEALED_PREFIX = "pii1."


@dataclass(frozen=True, slots=True)
class Sealed:
    """One personal datum, encrypted under its person's key: `pii1.<person id hex>.<ciphertext>`."""

    token: str

    def __post_init__(self) -> None:
        if not self.token.startswith(SEALED_PREFIX) or self.token.count(".") != 2:
            raise ValueError("a sealed value looks like pii1.<person id hex>.<ciphertext>")

    @property
    def person_id(self) -> UUID:
        return UUID(hex=self.token.split(".", 2)[1])

    def __str__(self) -> str:
        return self.token


class AlreadyErased(Conflict):
    """The person's personal data was erased before."""

    code = "already_erased"


class PersonErased(Conflict):
    """New personal data cannot be added to a person whose data was erased."""

    code = "person_erased"


class PersonalData(Aggregate):
    """The record that a resident's personal data was erased; it exists only once they ask."""

    @staticmethod
    def create_id(person_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"baton:personal-data:{person_id}")

    @classmethod
    def erase(cls, *, person_id: UUID, community_id: str, reason: str, timestamp: datetime, meta: Meta) -> PersonalData:
        """Erase a person's personal data: their key goes, the events that carried it stay."""
        return cls(
            person_id=person_id,
            community_id=community_id,
            reason=check_text("reason", reason, 500),
            timestamp=timestamp,
            meta=meta,
        )

    @event("Erased")
    def __init__(self, person_id: UUID, community_id: str, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        self.person_id = person_id
        self.community_id = community_id
        self.reason = reason
        self.erased_at = timestamp
