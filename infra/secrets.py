"""Baton's own secrets, kept once per installation in the store's database and wrapped under BATON_MASTER_KEY.

Several `baton serve` instances share one database (BATON_STORE) and one NATS, and nothing else: each has its
own data dir. With BATON_MASTER_KEY set, the token keyring, the checkpoint signing key, the personal-data
master key and the NATS secret are each made once, by whichever instance needs it first, and kept in table
`baton_secrets` (in the PostgreSQL schema, or in events.sqlite), sealed with AES-256-GCM under a key derived
from BATON_MASTER_KEY, with the secret's name as associated data (a row copied under another name does not
open). Every instance reads the same ones. They never enter the event log, which goes out on NATS and into
exports. Without BATON_MASTER_KEY each data dir keeps its own keys (`DATA_DIR/keys`), as a single instance
always has; the first start with a master key imports that data dir's keys (see `LocalCopy`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infra.ddl import serialise_ddl
from infra.sql import Sql

log = structlog.get_logger("baton.secrets")

SECRETS_TABLE = "baton_secrets"
_WRAPPING_INFO = b"baton/secrets/aes-256-gcm/v1"


class SecretName(StrEnum):
    """The secrets an installation keeps in its database."""

    TOKEN_KEYRING = "token-keyring"
    CHECKPOINT_KEY = "checkpoint-key"
    PII_MASTER = "pii-master"
    NATS_SECRET = "nats-secret"


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret as the database keeps it: its value, and a version that grows with every change."""

    name: SecretName
    value: bytes
    version: int
    updated_at: str

    def __repr__(self) -> str:  # never print the value
        return f"Secret({self.name.value!r}, version={self.version})"


class WrongMasterKey(ValueError):
    """BATON_MASTER_KEY does not open a secret kept in the database."""


class SecretChanged(Exception):
    """Another instance changed the secret since it was read; read it again and redo the change."""


class KeysInDatabase(RuntimeError):
    """The database keeps this installation's keys, and this instance was started without BATON_MASTER_KEY."""


@dataclass(frozen=True)
class LocalCopy:
    """Where a data dir kept a secret before BATON_MASTER_KEY, and how its file reads as the stored value."""

    path: Path
    read: Callable[[Path], bytes]

    def load(self) -> bytes | None:
        """The value the data dir holds, or None when it holds none."""
        return self.read(self.path) if self.path.exists() else None


class SecretTable:
    """The `baton_secrets` rows: name, version, sealed value, time of the last change. Holds no key itself."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.table = sql.table(SECRETS_TABLE)
        with sql.transaction() as tx:
            if sql.postgres:
                assert sql.schema is not None
                serialise_ddl(tx, sql.schema)
            tx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (name TEXT PRIMARY KEY, version BIGINT NOT NULL, "
                "sealed TEXT NOT NULL, updated_at TEXT NOT NULL)"
            )

    def row(self, name: SecretName) -> tuple[str, int, str] | None:
        """(sealed, version, updated_at) of the named secret, or None."""
        with self.sql.transaction(commit=False) as tx:
            tx.execute(f"SELECT sealed, version, updated_at FROM {self.table} WHERE name = %s", (name.value,))
            found = tx.fetchone()
        return (found["sealed"], int(found["version"]), found["updated_at"]) if found else None

    def versions(self) -> dict[str, int]:
        """Every kept secret's name and version."""
        with self.sql.transaction(commit=False) as tx:
            tx.execute(f"SELECT name, version FROM {self.table} ORDER BY name")
            return {r["name"]: int(r["version"]) for r in tx.fetchall()}

    def version(self, name: SecretName) -> int:
        """The named secret's version; 0 when it is not kept."""
        with self.sql.transaction(commit=False) as tx:
            tx.execute(f"SELECT version FROM {self.table} WHERE name = %s", (name.value,))
            found = tx.fetchone()
        return int(found["version"]) if found else 0

    def insert(self, name: SecretName, sealed: str) -> bool:
        """Keep a new secret as version 1; False if one is kept under that name already."""
        with self.sql.transaction() as tx:
            tx.execute(
                f"INSERT INTO {self.table} (name, version, sealed, updated_at) VALUES (%s, 1, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name.value, sealed, _now()),
            )
            return tx.rowcount == 1

    def update(self, name: SecretName, sealed: str, expected_version: int) -> bool:
        """Replace the secret if it is still at expected_version; False if another change came first."""
        with self.sql.transaction() as tx:
            tx.execute(
                f"UPDATE {self.table} SET sealed = %s, version = version + 1, updated_at = %s "
                "WHERE name = %s AND version = %s",
                (sealed, _now(), name.value, expected_version),
            )
            return tx.rowcount == 1


class SecretStore:
    """The installation's secrets, sealed under BATON_MASTER_KEY in the database every instance shares."""

    def __init__(self, table: SecretTable, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key is 32 bytes")
        self.table = table
        wrapping = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_WRAPPING_INFO).derive(master_key)
        self._aead = AESGCM(wrapping)

    def get(self, name: SecretName) -> Secret | None:
        """The secret, or None if no instance has made it yet."""
        row = self.table.row(name)
        if row is None:
            return None
        sealed, version, updated_at = row
        return Secret(name, self._open(name, sealed), version, updated_at)

    def version(self, name: SecretName) -> int:
        """The secret's version (0: not made yet): one cheap query, to notice a change made elsewhere."""
        return self.table.version(name)

    def get_or_create(self, name: SecretName, make: Callable[[], bytes], local: LocalCopy | None = None) -> Secret:
        """The kept secret; if none yet, keeps the data dir's copy (local) or make()'s, and returns what won."""
        found = self.get(name)
        if found is None:  # instances starting at once each offer theirs; all read back the first insert's
            imported = local.load() if local is not None else None
            value = imported if imported is not None else make()
            if self.table.insert(name, self._seal(name, value)):
                if imported is not None:
                    assert local is not None
                    log.info("secret_imported", secret=name.value, source=str(local.path))
                else:
                    log.info("secret_created", secret=name.value)
            found = self.get(name)
            assert found is not None, f"secret {name.value} was kept and is gone"
        elif local is not None and (copy := local.load()) is not None and copy != found.value:
            log.warning(
                "secret_differs_from_data_dir",
                secret=name.value,
                path=str(local.path),
                using="database",
                hint="the data dir's copy is not used while BATON_MASTER_KEY is set (see `baton keys status`)",
            )
        return found

    def put(self, name: SecretName, value: bytes, expected_version: int) -> Secret:
        """Replace the secret read at expected_version (0: not kept yet); SecretChanged if it changed since."""
        sealed = self._seal(name, value)
        done = (
            self.table.insert(name, sealed)
            if expected_version == 0
            else self.table.update(name, sealed, expected_version)
        )
        if not done:
            raise SecretChanged(f"secret {name.value} was changed by another instance meanwhile; read it again")
        stored = self.get(name)
        assert stored is not None
        return stored

    def _seal(self, name: SecretName, value: bytes) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, value, name.value.encode())).decode()

    def _open(self, name: SecretName, sealed: str) -> bytes:
        try:
            raw = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], name.value.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise WrongMasterKey(
                f"BATON_MASTER_KEY does not open the secret {name.value!r} kept in the database: every instance "
                "needs the master key the installation's keys were made under"
            ) from None


def refuse_without_master_key(table: SecretTable) -> None:
    """Refuse to make per-data-dir keys for a database whose keys are kept in it (they would differ)."""
    kept = table.versions()
    if kept:
        raise KeysInDatabase(
            f"this database keeps its keys ({', '.join(kept)}) under BATON_MASTER_KEY; start this instance with "
            "the same BATON_MASTER_KEY as the others, or its tokens, checkpoints and personal data would not match"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


__all__ = [
    "SECRETS_TABLE",
    "KeysInDatabase",
    "LocalCopy",
    "Secret",
    "SecretChanged",
    "SecretName",
    "SecretStore",
    "SecretTable",
    "WrongMasterKey",
    "refuse_without_master_key",
]
