"""Bearer tokens: signed JWTs (HS256, PyJWT) naming the actor's role and unit, with an expiry, a key id and a
token id, checked against the credentials log (retired keys, revoked tokens and actors) on every request."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from domain.credentials import Credentials
from infra.keys import write_private
from services.access import Actor, Role

ISSUER = "baton"
UNIT_REQUIRED = {
    Role.DISTRICT,
    Role.STREET,
    Role.COMMUNITY,
    Role.GRID,
    Role.DEPARTMENT,
    Role.ORGANISER,
    Role.VOLUNTEER,
    Role.SECRETARY,
}
ISSUABLE = [r for r in Role if r is not Role.SYSTEM]
REFRESH_SECONDS = 1.0
LEEWAY_SECONDS = 5.0


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged, expired, revoked or signed with a retired key."""


class Keyring:
    """HS256 signing keys by key id; the newest signs, every key on the ring verifies."""

    def __init__(self, keys: dict[str, bytes], signing: str, path: Path | None = None) -> None:
        if signing not in keys:
            raise ValueError(f"signing key {signing} is not on the ring")
        self.keys, self.signing, self.path = dict(keys), signing, path
        self._mtime = self._stat()

    @classmethod
    def single(cls, secret: bytes, kid: str = "k1") -> Keyring:
        return cls({kid: secret}, kid)

    @classmethod
    def load(cls, data_dir: Path, configured: str | None = None) -> Keyring:
        """BATON_TOKEN_SECRET as the one key if set, else DATA_DIR/keys/token-keys.json (created on first use)."""
        if configured:
            return cls.single(configured.encode(), "configured")
        path = data_dir / "keys" / "token-keys.json"
        if not path.exists():
            legacy = data_dir / "keys" / "token-secret"
            secret = legacy.read_text().strip() if legacy.exists() else secrets.token_urlsafe(48)
            _write_private(path, {"signing": "k1", "keys": {"k1": secret}})
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> Keyring:
        doc = json.loads(path.read_text())
        return cls({k: v.encode() for k, v in doc["keys"].items()}, doc["signing"], path)

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime if self.path else None
        except OSError:
            return None

    def reload_if_changed(self) -> None:
        """Pick up a key added or removed by `baton token rotate` / `retire` in another process."""
        if self.path is not None and self._stat() != self._mtime:
            fresh = self._read(self.path)
            self.keys, self.signing, self._mtime = fresh.keys, fresh.signing, fresh._mtime

    def rotate(self) -> str:
        """Add a new signing key; the others keep verifying. Returns the new key id."""
        if self.path is None:
            raise ValueError(
                "a configured BATON_TOKEN_SECRET cannot rotate; unset it to use the keyring in the data dir"
            )
        kid = f"k{int(time.time())}-{secrets.token_hex(3)}"
        keys = {**self.keys, kid: secrets.token_urlsafe(48).encode()}
        _write_private(self.path, {"signing": kid, "keys": {k: v.decode() for k, v in keys.items()}})
        self.keys, self.signing, self._mtime = keys, kid, self._stat()
        return kid

    def remove(self, kid: str) -> None:
        """Forget a retired key's secret (its tokens are refused by the credentials log already)."""
        if self.path is None or kid not in self.keys:
            return
        if kid == self.signing:
            raise ValueError(f"key {kid} still signs new tokens; rotate to a new key first")
        keys = {k: v for k, v in self.keys.items() if k != kid}
        _write_private(self.path, {"signing": self.signing, "keys": {k: v.decode() for k, v in keys.items()}})
        self.keys, self._mtime = keys, self._stat()


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    write_private(path, json.dumps(doc))


class Tokens:
    """Issues and verifies bearer tokens (wall-clock expiry: credentials are not domain time)."""

    def __init__(
        self,
        keyring: Keyring | bytes,
        ttl: timedelta = timedelta(days=30),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.keyring = keyring if isinstance(keyring, Keyring) else Keyring.single(keyring)
        self.ttl = ttl
        self.now = now
        self._credentials: Callable[[], Credentials | None] | None = None
        self._state: Credentials | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def attach(self, credentials: Callable[[], Credentials | None]) -> None:
        """Check every token against the credentials log (retired keys, revoked tokens and actors)."""
        self._credentials = credentials
        self.refresh()

    def refresh(self) -> None:
        """Re-read the credentials log now (after a revocation here; otherwise once a second)."""
        if self._credentials is not None:
            state = self._credentials()
            with self._lock:
                self._state, self._fetched = state, time.monotonic()
        self.keyring.reload_if_changed()

    def _current(self) -> Credentials | None:
        if self._credentials is not None and time.monotonic() - self._fetched > REFRESH_SECONDS:
            self.refresh()
        return self._state

    def issue(self, role: str, unit: str | None, actor_id: str | None = None) -> str:
        try:
            role_value = Role(role)
        except ValueError:
            raise ValueError(f"unknown role {role!r}; use one of: {', '.join(r.value for r in ISSUABLE)}") from None
        if role_value is Role.SYSTEM:
            raise ValueError("the system role is Baton's own and is never issued")
        if role_value in UNIT_REQUIRED and not unit:
            raise ValueError(f"role {role_value.value} needs --unit (for a department: its code)")
        now = self.now()
        claims = {
            "iss": ISSUER,
            "sub": actor_id or f"{role_value.value}-{uuid.uuid4().hex[:8]}",
            "jti": uuid.uuid4().hex,
            "role": role_value.value,
            "unit": unit,
            "iat": round(now.timestamp(), 3),
            "exp": int((now + self.ttl).timestamp()),
        }
        kid = self.keyring.signing
        return jwt.encode(claims, self.keyring.keys[kid], algorithm="HS256", headers={"kid": kid})

    def claims(self, token: str, *, verify_exp: bool = True) -> dict[str, Any]:
        """The token's claims once its signature checks out (and, unless told otherwise, its expiry)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid", "k1")
            key = self.keyring.keys.get(kid)
            if key is None:
                self.keyring.reload_if_changed()
                key = self.keyring.keys.get(kid)
            if key is None:
                raise InvalidToken("the token was signed with a key Baton no longer holds; issue a new one")
            # Expiry is checked below against the injected clock, not PyJWT's own.
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": False, "verify_iat": False},
            )
            now = self.now().timestamp()
            expires, issued = float(claims["exp"]), float(claims["iat"])
        except (jwt.InvalidTokenError, KeyError, ValueError, TypeError):
            raise InvalidToken("the token is not valid; issue one with `baton token issue`") from None
        if verify_exp and expires <= now - LEEWAY_SECONDS:
            raise InvalidToken("the token has expired; issue a new one with `baton token issue`")
        if issued > now + LEEWAY_SECONDS:
            raise InvalidToken("the token is not valid yet (issued in the future); check the clocks")
        claims["kid"] = kid
        return claims

    def verify(self, token: str) -> Actor:
        claims = self.claims(token)
        try:
            role = Role(claims["role"])
        except (KeyError, ValueError):
            raise InvalidToken("the token is not valid; issue one with `baton token issue`") from None
        if role is Role.SYSTEM:
            raise InvalidToken("the token is not valid; issue one with `baton token issue`")
        state = self._current()
        if state is not None:
            issued = datetime.fromtimestamp(float(claims["iat"]), UTC)
            why = state.refuses(claims["kid"], claims.get("jti"), str(claims["sub"]), issued)
            if why:
                raise InvalidToken(why)
        return Actor(role=role, unit=claims.get("unit"), id=str(claims["sub"]))
