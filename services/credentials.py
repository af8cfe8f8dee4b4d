"""The credentials context: signing keys put in service and retired, tokens and actors revoked, and Open311
clients' API keys issued and revoked, as events."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from eventsourcing.application import AggregateNotFoundError

from domain.credentials import CREDENTIALS_ID, Credentials
from services.access import Context, Role, require_role
from services.base import BatonApplication, Decision, Receipt

Change = Callable[[Credentials, datetime], dict[str, object]]
OPEN311_KEY_PREFIX = "o311_"
"""Marks an Open311 API key for what it is (in a config file, a log line someone pasted, a secret scanner)."""


@dataclass(frozen=True)
class Open311Client:
    """Who an Open311 API key belongs to, and the channel its reports arrive through."""

    name: str
    channel: str


def key_digest(key: str) -> str:
    """The SHA-256 under which an API key is recorded and looked up."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


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

    # Open311 clients ---------------------------------------------------------------------

    def issue_open311_key(self, ctx: Context, name: str, channel: str = "open311") -> tuple[Receipt, str]:
        """A new random API key for an Open311 client: the receipt, and the key (shown once; only its hash is kept)."""
        key = OPEN311_KEY_PREFIX + secrets.token_urlsafe(32)

        def change(c: Credentials, now: datetime) -> dict[str, object]:
            c.issue_open311_key(name, channel, key_digest(key), timestamp=now, meta=ctx.meta())
            return {"open311_client": name, "channel": channel}

        return self._change(ctx, "issue Open311 keys", change), key

    def revoke_open311_key(self, ctx: Context, name: str) -> Receipt:
        """The client's key is refused from now on, on every instance."""

        def change(c: Credentials, now: datetime) -> dict[str, object]:
            c.revoke_open311_key(name, timestamp=now, meta=ctx.meta())
            return {"open311_client": name, "revoked": True}

        return self._change(ctx, "revoke Open311 keys", change)

    def open311_keys(self) -> list[dict[str, object]]:
        """The Open311 keys in service: client name, channel, when issued (never the key or its hash)."""
        state = self.current()
        clients = state.open311_clients() if state is not None else {}
        return [
            {"name": name, "channel": c["channel"], "issued_at": c["issued_at"].isoformat()}
            for name, c in sorted(clients.items())
        ]

    def open311_client(self, key: str) -> Open311Client | None:
        """The client holding this API key now, or None for a key never issued or revoked (read from the store, so a
        revocation on any instance counts at once)."""
        state = self.current()
        found = state.open311_client(key_digest(key)) if state is not None and key else None
        return Open311Client(*found) if found is not None else None
