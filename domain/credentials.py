"""Bearer credentials as events: which signing keys are in service, which tokens were revoked, and which Open311
clients hold an API key.

The keys themselves never enter the log (it goes out on NATS); only their ids and when they came
into or left service. A revoked token stays revoked until it would have expired anyway. An Open311
client's API key is kept as its SHA-256 only (the key is 256 random bits, so its hash names it
without revealing it), with the client's name and the channel its reports arrive through.
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.common import Meta, check_text
from domain.errors import Conflict, DuplicateEntry, InvalidCommand, NotFound

CREDENTIALS_ID: UUID = uuid5(NAMESPACE_URL, "baton:credentials")
OPEN311_CLIENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""An Open311 client's name: the app or kiosk holding the key, e.g. `wechat-estation` (it becomes part of the
actor id `open311:NAME` on every report the client files)."""
OPEN311_CHANNELS = ("open311", "e_station")
"""The report channels an Open311 key files through: a civic app (open311) or the 民情e站 mini-program (e_station)."""
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


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
        self.open311_keys: dict[str, dict[str, Any]] = {}  # client name -> {channel, key_sha256, issued_at}

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

    # Open311 clients' API keys -----------------------------------------------------------

    def open311_clients(self) -> dict[str, dict[str, Any]]:
        """The Open311 keys in service, by client name: {channel, key_sha256, issued_at}."""
        return dict(getattr(self, "open311_keys", {}))  # a snapshot from before Open311 keys has none

    def issue_open311_key(self, name: str, channel: str, key_sha256: str, *, timestamp: datetime, meta: Meta) -> None:
        """An Open311 client gets an API key (its hash is recorded; the key itself is shown once, never kept)."""
        if not isinstance(name, str) or not OPEN311_CLIENT.fullmatch(name):
            raise InvalidCommand(
                f"client name {name!r} is not valid: use 1-63 lower-case letters, digits, '.', '_' or '-', "
                "e.g. wechat-estation"
            )
        if channel not in OPEN311_CHANNELS:
            raise InvalidCommand(
                f"channel {channel!r} is not one an Open311 key files through; use open311 or e_station"
            )
        if not isinstance(key_sha256, str) or not SHA256_HEX.fullmatch(key_sha256):
            raise InvalidCommand("an API key is recorded as its SHA-256: 64 lower-case hex digits")
        clients = self.open311_clients()
        if name in clients:
            raise DuplicateEntry(
                f"client {name} already holds an Open311 key (issued {clients[name]['issued_at'].date()}); "
                f"revoke it first (baton open311 key revoke --name {name}) or choose another name"
            )
        if any(c["key_sha256"] == key_sha256 for c in clients.values()):
            raise DuplicateEntry("that API key is already in service; issue a new random one")
        self._open311_key_issued(name=name, channel=channel, key_sha256=key_sha256, timestamp=timestamp, meta=meta)

    @event("Open311KeyIssued")
    def _open311_key_issued(self, name: str, channel: str, key_sha256: str, *, timestamp: datetime, meta: Meta) -> None:
        self.open311_keys = {
            **self.open311_clients(),
            name: {"channel": channel, "key_sha256": key_sha256, "issued_at": timestamp},
        }

    def revoke_open311_key(self, name: str, *, timestamp: datetime, meta: Meta) -> None:
        """The client's key is refused from now on; the name may be issued a new key."""
        clients = self.open311_clients()
        if name not in clients:
            held = ", ".join(sorted(clients)) or "none"
            raise NotFound(f"no Open311 key named {name!r} is in service (in service: {held})")
        self._open311_key_revoked(name=name, key_sha256=clients[name]["key_sha256"], timestamp=timestamp, meta=meta)

    @event("Open311KeyRevoked")
    def _open311_key_revoked(self, name: str, key_sha256: str, *, timestamp: datetime, meta: Meta) -> None:
        self.open311_keys = {n: c for n, c in self.open311_clients().items() if n != name}

    def open311_client(self, key_sha256: str) -> tuple[str, str] | None:
        """(client name, channel) of the key in service with this SHA-256, or None (unknown or revoked)."""
        for name, client in self.open311_clients().items():
            if hmac.compare_digest(client["key_sha256"], key_sha256):
                return name, str(client["channel"])
        return None
