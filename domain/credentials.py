"""Bearer credentials as events: which signing keys are in service, and which tokens were revoked.

The keys themselves never enter the log (it goes out on NATS); only their ids and when they came
into or left service. A revoked token stays revoked until it would have expired anyway.
"""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.common import Meta, check_text
from domain.errors import Conflict, InvalidCommand

CREDENTIALS_ID: UUID = uuid5(NAMESPACE_URL, "baton:credentials")


class KeyNotInService(Conflict):
    """The signing key named was already retired."""

    code = "key_not_in_service"


class Credentials(Aggregate):
    """The one record of signing keys in service and of revoked tokens and actors."""

    @staticmethod
    def create_id() -> UUID:
        return CREDENTIALS_ID

    @event("Opened")
    def __init__(self, *, timestamp: datetime, meta: Meta) -> None:
        self.keys: dict[str, datetime] = {}
        self.retired: dict[str, datetime] = {}
        self.tokens: dict[str, datetime] = {}  # jti -> when it would have expired
        self.actors: dict[str, datetime] = {}  # actor id -> tokens issued before this are revoked

    def check_kid(self, kid: str) -> None:
        if not kid or len(kid) > 64:
            raise InvalidCommand("a key id is 1-64 characters")

    def put_key_in_service(self, kid: str, *, timestamp: datetime, meta: Meta) -> None:
        """A new signing key starts signing; the older ones keep verifying until retired."""
        self.check_kid(kid)
        if kid in self.keys or kid in self.retired:
            raise Conflict(f"key {kid} was already put in service; rotate to a new key id")
        self._key_rotated(kid, timestamp=timestamp, meta=meta)

    @event("KeyRotated")
    def _key_rotated(self, kid: str, *, timestamp: datetime, meta: Meta) -> None:
        self.keys[kid] = timestamp

    def retire_key(self, kid: str, *, timestamp: datetime, meta: Meta) -> None:
        """Tokens signed with a retired key are refused from now on (the first key was never rotated in)."""
        self.check_kid(kid)
        if kid in self.retired:
            raise KeyNotInService(f"key {kid} was already retired on {self.retired[kid].date()}")
        self._key_retired(kid, timestamp=timestamp, meta=meta)

    @event("KeyRetired")
    def _key_retired(self, kid: str, *, timestamp: datetime, meta: Meta) -> None:
        self.keys.pop(kid, None)
        self.retired[kid] = timestamp

    def revoke_token(self, jti: str, expires_at: datetime, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        """One token stops working at once."""
        if not jti or len(jti) > 64:
            raise InvalidCommand("a token id (jti) is 1-64 characters")
        if jti in self.tokens:
            raise Conflict(f"token {jti} is already revoked")
        self._token_revoked(jti, expires_at, check_text("reason", reason, 500), timestamp=timestamp, meta=meta)

    @event("TokenRevoked")
    def _token_revoked(self, jti: str, expires_at: datetime, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        self.tokens = {j: exp for j, exp in self.tokens.items() if exp > timestamp}
        self.tokens[jti] = expires_at

    def revoke_actor(self, actor_id: str, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        """Every token issued to this actor until now stops working (a cadre leaves, a device is lost)."""
        if not actor_id or len(actor_id) > 200:
            raise InvalidCommand("an actor id is 1-200 characters")
        self._actor_revoked(actor_id, check_text("reason", reason, 500), timestamp=timestamp, meta=meta)

    @event("ActorRevoked")
    def _actor_revoked(self, actor_id: str, reason: str, *, timestamp: datetime, meta: Meta) -> None:
        self.actors[actor_id] = timestamp

    def refuses(self, kid: str | None, jti: str | None, actor_id: str, issued_at: datetime) -> str | None:
        """Why a token with these claims is refused, or None if it stands."""
        if kid is not None and kid in self.retired:
            return "the token was signed with a retired key; issue a new one"
        if jti is not None and jti in self.tokens:
            return "the token was revoked; issue a new one"
        cutoff = self.actors.get(actor_id)
        if cutoff is not None and issued_at <= cutoff:
            return "tokens issued to this actor before their revocation no longer work; issue a new one"
        return None
