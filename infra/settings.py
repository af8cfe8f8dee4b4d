"""Settings from the environment (prefix BATON_), optionally from a .env file."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse, urlunparse

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_REPLICAS = 5
"""JetStream's limit on a stream's replicas."""


def nats_servers(url: str) -> list[str]:
    """The server URLs in a BATON_NATS_URL: one, or a cluster's comma-separated (blanks and spaces ignored)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def without_password(url: str) -> str:
    """A NATS URL (or comma-separated URLs) with any user and password taken out, fit to show or hand out."""
    shown = []
    for server in nats_servers(url):
        parsed = urlparse(server if "://" in server else f"nats://{server}")
        host = parsed.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parsed.port is not None:
            netloc += f":{parsed.port}"
        shown.append(urlunparse(parsed._replace(netloc=netloc)))
    return ",".join(shown)


class Settings(BaseSettings):
    """Where Baton keeps its data and how it reaches NATS and HTTP clients."""

    model_config = SettingsConfigDict(env_prefix="BATON_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./var")
    store: str = "sqlite"
    nats_url: str | None = None
    """An external NATS; a cluster's URLs comma-separated (nats://a:4222,nats://b:4222). Unset: Baton embeds one."""
    nats_port: int = 0
    nats_replicas: int = 1
    """Copies JetStream keeps of each Baton stream and consumer: 3 on a 3-node cluster, 1 on one server (1..5).
    An existing stream or consumer with more replicas keeps them; one with fewer is raised to this."""
    nats_secret: str | None = None
    """Secret every embedded-NATS password derives from (32+ characters); unset: kept in DATA_DIR/keys."""
    nats_user: str | None = None
    """User for an external NATS (BATON_NATS_URL); or put it in the URL."""
    nats_password: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    http_max_body: int = 256 * 1024
    """Largest request body in bytes (413 beyond it); 0 turns the limit off."""
    rate_limit: float = 50.0
    """Requests per second one token (or one address without a token) may make; 0 turns the limit off."""
    rate_burst: int = 100
    """How many requests a token may make at once before the rate applies."""
    token_secret: str | None = None
    token_ttl_days: int = 30
    pii_key: str | None = None
    """Master key wrapping every person's key (base64 of 32 bytes); unset: kept in DATA_DIR/keys (or the database)."""
    master_key: str | None = None
    """Base64 of 32 bytes shared by every instance: Baton's own keys are then kept in the database, wrapped under it."""
    watch_interval: float = 10.0
    log_level: str = "info"
    log_format: str = "auto"
    """`json`, `console`, or `auto`: console lines on a terminal, JSON lines otherwise."""
    log_origin: str | None = None
    projector_process: bool = True
    """`baton serve` runs the read models and the notary in a second process; false: all in one process."""
    sqlite_busy_timeout: int = 30
    """Seconds a SQLite write waits for another process's write lock before giving up (StoreBusy, a 503)."""
    checkpoint_every: int = 256
    checkpoint_interval: float = 10.0
    instance: str | None = None
    """This instance's name in /health and the leases; unset: host name and HTTP port."""
    lease_ttl: float = 5.0
    """Seconds a singleton's lease lasts unrenewed: how long an instance that died may hold a role."""

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if value == "sqlite" or value.startswith(("postgresql://", "postgres://")):
            return value
        raise ValueError("BATON_STORE must be 'sqlite' or a postgresql:// URL")

    @field_validator("master_key")
    @classmethod
    def _check_master_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(
                "BATON_MASTER_KEY must be 32 random bytes in base64 (make one with `openssl rand -base64 32`) "
                "and be the same on every instance"
            )
        return value.strip()

    @property
    def master_key_bytes(self) -> bytes | None:
        """BATON_MASTER_KEY's 32 bytes, or None when keys are kept in the data dir."""
        return base64.b64decode(self.master_key) if self.master_key else None

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, value: str | None) -> str | None:
        if value is not None and not nats_servers(value):
            raise ValueError("BATON_NATS_URL names no server; give nats://host:port, or several comma-separated")
        return value

    @field_validator("nats_replicas")
    @classmethod
    def _check_nats_replicas(cls, value: int) -> int:
        if not 1 <= value <= MAX_REPLICAS:
            raise ValueError(
                f"BATON_NATS_REPLICAS must be 1 to {MAX_REPLICAS} (JetStream keeps at most {MAX_REPLICAS} copies): "
                "1 on a single nats-server, 3 on a 3-node cluster"
            )
        return value

    @property
    def nats_servers(self) -> list[str]:
        """BATON_NATS_URL as the list of server URLs nats-py and FastStream take."""
        return nats_servers(self.nats_url) if self.nats_url else []

    @property
    def is_postgres(self) -> bool:
        return self.store != "sqlite"

    def postgres_env(self) -> dict[str, str]:
        """The eventsourcing POSTGRES_* settings for the BATON_STORE URL."""
        url = urlparse(self.store)
        query = parse_qs(url.query)
        return {
            "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "postgres",
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            "POSTGRES_SCHEMA": query.get("schema", ["public"])[0],
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", ["5"])[0],
            "POSTGRES_POOL_SIZE": query.get("pool_size", ["10"])[0],
            "POSTGRES_MAX_OVERFLOW": query.get("max_overflow", ["10"])[0],
        }
