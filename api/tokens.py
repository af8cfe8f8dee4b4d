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
from infra.secrets import LocalCopy, SecretChanged, SecretName, SecretStore
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
NEVER_ISSUED = {Role.SYSTEM, Role.RESIDENT}
"""Baton's own role, and the resident's, who acts through a tracking code or an Open311 client's key."""
ISSUABLE = [r for r in Role if r not in NEVER_ISSUED]
REFRESH_SECONDS = 1.0
LEEWAY_SECONDS = 5.0
CHECKED_TOKENS = 10_000
"""Tokens whose signatures were checked, remembered with the key that checked them (forgotten all at once when full)."""


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged, expired, revoked or signed with a retired key."""


Doc = dict[str, Any]
"""A keyring as kept: {"signing": kid, "keys": {kid: secret}}."""


class KeyringFile:
    """The keyring of one instance, DATA_DIR/keys/token-keys.json (0600); a change shows in its mtime."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[Doc, object]:
        """The keyring (made on first use from the legacy single secret, if any) and its change marker."""
        if not self.path.exists():
            legacy = self.path.with_name("token-secret")
            secret = legacy.read_text().strip() if legacy.exists() else secrets.token_urlsafe(48)
            write_private(self.path, json.dumps(_new_doc(secret)))
        return json.loads(self.path.read_text()), self.marker()

    def marker(self) -> object:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def changed(self, marker: object) -> bool:
        return self.marker() != marker

    def save(self, doc: Doc, marker: object) -> object:
        """Write the keyring (the last writer wins, as one instance's CLI is the only writer)."""
        write_private(self.path, json.dumps(doc))
        return self.marker()


class KeyringInDatabase:
    """The installation's keyring, kept in the database and shared by every instance; changes show in its version."""

    CHECK_SECONDS = 0.25

    def __init__(self, kept: SecretStore, data_dir: Path) -> None:
        self.kept = kept
        self.data_dir = data_dir
        self._loaded = False
        self._checked = 0.0

    def load(self) -> tuple[Doc, object]:
        """The kept keyring; made once, from the data dir's if it has one (its tokens keep working)."""
        secret = self.kept.get(SecretName.TOKEN_KEYRING) if self._loaded else None
        if secret is None:
            secret = self.kept.get_or_create(
                SecretName.TOKEN_KEYRING,
                lambda: _encode(_new_doc(secrets.token_urlsafe(48))),
                local_keyring(self.data_dir),
            )
        self._loaded, self._checked = True, time.monotonic()
        return json.loads(secret.value), secret.version

    def changed(self, marker: object) -> bool:
        now = time.monotonic()
        if now - self._checked < self.CHECK_SECONDS:
            return False
        self._checked = now
        return self.kept.version(SecretName.TOKEN_KEYRING) != marker

    def save(self, doc: Doc, marker: object) -> object:
        """Replace the keyring read at marker; SecretChanged if another instance changed it meanwhile."""
        assert isinstance(marker, int)
        return self.kept.put(SecretName.TOKEN_KEYRING, _encode(doc), marker).version


KeyringSource = KeyringFile | KeyringInDatabase


def _new_doc(secret: str) -> Doc:
    return {"signing": "k1", "keys": {"k1": secret}}


def _encode(doc: Doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def local_keyring(data_dir: Path) -> LocalCopy:
    """The data dir's own keyring (or its legacy single secret), as the value the database would keep."""
    path = data_dir / "keys" / "token-keys.json"
    legacy = path.with_name("token-secret")
    if not path.exists() and legacy.exists():
        return LocalCopy(legacy, lambda p: _encode(_new_doc(p.read_text().strip())))
    return LocalCopy(path, lambda p: _encode(json.loads(p.read_text())))


class Keyring:
    """HS256 signing keys by key id; the newest signs, every key on the ring verifies."""

    ATTEMPTS = 5

    def __init__(self, keys: dict[str, bytes], signing: str, source: KeyringSource | None = None) -> None:
        if signing not in keys:
            raise ValueError(f"signing key {signing} is not on the ring")
        self.keys, self.signing, self.source = dict(keys), signing, source
        self._marker: object = None

    @classmethod
    def single(cls, secret: bytes, kid: str = "k1") -> Keyring:
        return cls({kid: secret}, kid)

    @classmethod
    def load(cls, data_dir: Path, configured: str | None = None, kept: SecretStore | None = None) -> Keyring:
        """BATON_TOKEN_SECRET if set; else the keyring in the database (BATON_MASTER_KEY); else DATA_DIR/keys's."""
        if configured:
            return cls.single(configured.encode(), "configured")
        source: KeyringSource
        if kept is not None:
            source = KeyringInDatabase(kept, data_dir)
        else:
            source = KeyringFile(data_dir / "keys" / "token-keys.json")
        doc, marker = source.load()
        ring = cls._of(doc, source)
        ring._marker = marker
        return ring

    @classmethod
    def _of(cls, doc: Doc, source: KeyringSource | None) -> Keyring:
        return cls({k: v.encode() for k, v in doc["keys"].items()}, doc["signing"], source)

    def _doc(self) -> Doc:
        return {"signing": self.signing, "keys": {k: v.decode() for k, v in self.keys.items()}}

    def _reload(self) -> None:
        assert self.source is not None
        doc, self._marker = self.source.load()
        fresh = self._of(doc, self.source)
        self.keys, self.signing = fresh.keys, fresh.signing

    def reload_if_changed(self) -> None:
        """Pick up a key added or removed by `baton token rotate` / `retire` in another process or instance."""
        if self.source is not None and self.source.changed(self._marker):
            self._reload()

    def rotate(self) -> str:
        """Add a new signing key; the others keep verifying. Returns the new key id."""
        if self.source is None:
            raise ValueError(
                "a configured BATON_TOKEN_SECRET cannot rotate; unset it to use Baton's keyring (in the data dir, "
                "or in the database with BATON_MASTER_KEY)"
            )
        kid = f"k{int(time.time())}-{secrets.token_hex(3)}"
        self._change(lambda doc: {"signing": kid, "keys": {**doc["keys"], kid: secrets.token_urlsafe(48)}})
        return kid

    def remove(self, kid: str) -> None:
        """Forget a retired key's secret (its tokens are refused by the credentials log already)."""
        if self.source is None:
            return
        self._reload()
        if kid not in self.keys:
            return
        if kid == self.signing:
            raise ValueError(f"key {kid} still signs new tokens; rotate to a new key first")
        self._change(lambda doc: {**doc, "keys": {k: v for k, v in doc["keys"].items() if k != kid}})

    def _change(self, change: Callable[[Doc], Doc]) -> None:
        """Apply change to the kept keyring as it is now; again if another instance changed it meanwhile."""
        assert self.source is not None
        for _ in range(self.ATTEMPTS):
            self._reload()
            doc = change(self._doc())
            try:
                marker = self.source.save(doc, self._marker)
            except SecretChanged:
                continue
            fresh = self._of(doc, self.source)
            self.keys, self.signing, self._marker = fresh.keys, fresh.signing, marker
            return
        raise SecretChanged("the keyring kept changing under this change; run the command again")


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
        self._checked: dict[str, tuple[bytes, dict[str, Any]]] = {}

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

    def _stale(self) -> bool:
        return self._credentials is not None and time.monotonic() - self._fetched > REFRESH_SECONDS

    def _current(self) -> Credentials | None:
        if self._stale():
            self.refresh()
        return self._state

    def issue(self, role: str, unit: str | None, actor_id: str | None = None) -> str:
        try:
            role_value = Role(role)
        except ValueError:
            raise ValueError(f"unknown role {role!r}; use one of: {', '.join(r.value for r in ISSUABLE)}") from None
        if role_value in NEVER_ISSUED:
            raise ValueError(
                f"the {role_value.value} role is never issued: it is Baton's own, or a resident's "
                "(who acts with a tracking code or through an Open311 key)"
            )
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

    def _signed(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature checks out under the key it names, remembered with that key (a
        client sends the same token with every request; checking the signature again costs ~30 us)."""
        kid = jwt.get_unverified_header(token).get("kid", "k1")
        key = self.keyring.keys.get(kid)
        if key is None:
            self.keyring.reload_if_changed()
            key = self.keyring.keys.get(kid)
        if key is None:
            raise InvalidToken("the token was signed with a key Baton no longer holds; issue a new one")
        # Expiry is checked by claims() against the injected clock, not PyJWT's own.
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": False, "verify_iat": False},
        )
        claims["kid"] = kid
        if len(self._checked) >= CHECKED_TOKENS:
            self._checked.clear()
        self._checked[token] = (key, claims)
        return claims

    def claims(self, token: str, *, verify_exp: bool = True) -> dict[str, Any]:
        """The token's claims once its signature checks out (and, unless told otherwise, its expiry)."""
        try:
            checked = self._checked.get(token)
            if checked is not None and self.keyring.keys.get(checked[1]["kid"]) is checked[0]:
                claims = dict(checked[1])
            else:
                claims = dict(self._signed(token))
            now = self.now().timestamp()
            expires, issued = float(claims["exp"]), float(claims["iat"])
        except (jwt.InvalidTokenError, KeyError, ValueError, TypeError):
            raise InvalidToken("the token is not valid; issue one with `baton token issue`") from None
        if verify_exp and expires <= now - LEEWAY_SECONDS:
            raise InvalidToken("the token has expired; issue a new one with `baton token issue`")
        if issued > now + LEEWAY_SECONDS:
            raise InvalidToken("the token is not valid yet (issued in the future); check the clocks")
        return claims

    def verify_cached(self, token: str) -> Actor | None:
        """verify() without I/O: None when it would read the store or the keyring (the state is due for its
        refresh, or the token names a key not on the ring); then call verify() where blocking is fine."""
        if self._stale():
            return None
        checked = self._checked.get(token)
        if checked is None or self.keyring.keys.get(checked[1]["kid"]) is not checked[0]:
            try:
                kid = jwt.get_unverified_header(token).get("kid", "k1")
            except jwt.InvalidTokenError:
                raise InvalidToken("the token is not valid; issue one with `baton token issue`") from None
            if kid not in self.keyring.keys:
                return None
        return self.verify(token)

    def verify(self, token: str) -> Actor:
        claims = self.claims(token)
        try:
            role = Role(claims["role"])
        except (KeyError, ValueError):
            raise InvalidToken("the token is not valid; issue one with `baton token issue`") from None
        if role in NEVER_ISSUED:
            raise InvalidToken("the token is not valid; issue one with `baton token issue`")
        state = self._current()
        if state is not None:
            issued = datetime.fromtimestamp(float(claims["iat"]), UTC)
            why = state.refuses(claims["kid"], claims.get("jti"), str(claims["sub"]), issued)
            if why:
                raise InvalidToken(why)
        return Actor(role=role, unit=claims.get("unit"), id=str(claims["sub"]))
