"""The credentials context: signing keys put in service and retired, tokens and actors revoked, as events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from eventsourcing.application import AggregateNotFoundError

from domain.credentials import CREDENTIALS_ID, Credentials
from services.access import Context, Role, require_role
from services.base import BatonApplication, Decision, Receipt

Change = Callable[[Credentials, datetime], dict[str, object]]


class CredentialsApp(BatonApplication):
    """Keeps the credentials log the token verifier reads on every request."""

    def current(self) -> Credentials | None:
        """The credentials as of now; None before anything was rotated or revoked."""
        try:
            return self.repository.get(CREDENTIALS_ID)
        except AggregateNotFoundError:
            return None

    def _change(
        self, ctx: Context, action: str, change: Callable[[Credentials, datetime], dict[str, object]]
    ) -> Receipt:
        require_role(ctx.actor, Role.ADMIN, Role.SYSTEM, action=action)

        def decide(now: datetime) -> Decision:
            credentials = self.current() or Credentials(timestamp=now, meta=ctx.meta())
            return [credentials], change(credentials, now)

        return self.execute(ctx, decide)

    def put_key_in_service(self, ctx: Context, kid: str) -> Receipt:
        """Record that a new signing key signs from now on."""

        def change(c: Credentials, now: datetime) -> dict[str, object]:
            c.put_key_in_service(kid, timestamp=now, meta=ctx.meta())
            return {"kid": kid, "in_service": sorted(c.keys)}

        return self._change(ctx, "rotate signing keys", change)

    def retire_key(self, ctx: Context, kid: str) -> Receipt:
        """Refuse every token signed with this key from now on."""

        def change(c: Credentials, now: datetime) -> dict[str, object]:
            c.retire_key(kid, timestamp=now, meta=ctx.meta())
            return {"kid": kid, "in_service": sorted(c.keys)}

        return self._change(ctx, "retire signing keys", change)

    def revoke_token(self, ctx: Context, jti: str, expires_at: datetime, reason: str) -> Receipt:
        """Refuse one token from now on."""

        def change(c: Credentials, now: datetime) -> dict[str, object]:
            c.revoke_token(jti, expires_at, reason, timestamp=now, meta=ctx.meta())
            return {"revoked": "token", "jti": jti, "expires_at": expires_at.isoformat()}

        return self._change(ctx, "revoke tokens", change)

    def revoke_actor(self, ctx: Context, actor_id: str, reason: str) -> Receipt:
        """Refuse every token issued to this actor so far."""

        def change(c: Credentials, now: datetime) -> dict[str, object]:
            c.revoke_actor(actor_id, reason, timestamp=now, meta=ctx.meta())
            return {"revoked": "actor", "actor_id": actor_id, "issued_before": now.isoformat()}

        return self._change(ctx, "revoke tokens", change)
