"""Bearer tokens: signed JWTs (HS256, PyJWT) naming the actor's role and unit, with an expiry."""

from __future__ import annotations

import os
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt

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


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged or expired."""


def load_secret(data_dir: Path, configured: str | None) -> bytes:
    """BATON_TOKEN_SECRET if set, else a secret kept in the data dir (created on first use)."""
    if configured:
        return configured.encode()
    path = data_dir / "keys" / "token-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


class Tokens:
    """Issues and verifies bearer tokens (wall-clock expiry: credentials are not domain time)."""

    def __init__(self, secret: bytes, ttl: timedelta = timedelta(days=30)) -> None:
        self.secret = secret
        self.ttl = ttl

    def issue(self, role: str, unit: str | None, actor_id: str | None = None) -> str:
        try:
            role_value = Role(role)
        except ValueError:
            raise ValueError(f"unknown role {role!r}; use one of: {', '.join(r.value for r in ISSUABLE)}") from None
        if role_value is Role.SYSTEM:
            raise ValueError("the system role is Baton's own and is never issued")
        if role_value in UNIT_REQUIRED and not unit:
            raise ValueError(f"role {role_value.value} needs --unit (for a department: its code)")
        now = datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "sub": actor_id or f"{role_value.value}-{uuid.uuid4().hex[:8]}",
            "role": role_value.value,
            "unit": unit,
            "iat": int(now.timestamp()),
            "exp": int((now + self.ttl).timestamp()),
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> Actor:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
            role = Role(claims["role"])
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired; issue a new one with `baton token issue`") from None
        except (jwt.InvalidTokenError, KeyError, ValueError):
            raise InvalidToken("the token is not valid; issue one with `baton token issue`") from None
        if role is Role.SYSTEM:
            raise InvalidToken("the token is not valid; issue one with `baton token issue`")
        return Actor(role=role, unit=claims.get("unit"), id=str(claims["sub"]))
