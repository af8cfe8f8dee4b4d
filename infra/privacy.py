"""Crypto-shredding of residents' personal data: one AES-256-GCM key per person, wrapped by a master key.

A person's key is written in the same transaction as the first event that carries their sealed data,
and destroyed in the same transaction as their `PersonalData.Erased` event; nothing else ever deletes
one. Keys live beside the events (table `baton_person_keys`) but are mutable, unlike the events: an
erased person's ciphertext stays in the store, on BATON_EVENTS and in exported bundles, so every
Merkle leaf and finalised score still verifies, while no one can read it any more.

Two writers (two instances) sealing the same new person at once each make a key. Each inserts its key row in
its events' transaction; the first to commit keeps its key, and the other's save finds the row taken and fails
with PersonKeyConflict (an IntegrityError) unless its data opens under the stored key, so the command is
decided again and seals under the key that is stored. A key derived from the person's id and the master key
would need no such check, but erasure would then destroy nothing: the derivation could be redone.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import IntegrityError, StoredEvent, Transcoding
from eventsourcing.utils import get_topic

from domain.privacy import SEALED_PREFIX, PersonalData, PersonErased, Sealed
from infra.keys import kept_secret
from infra.secrets import LocalCopy, SecretName, SecretStore

log = structlog.get_logger("baton.privacy")

ERASED_TOPIC = get_topic(PersonalData.Erased)
_SEALED_IN_STATE = re.compile(rb"pii1\.([0-9a-f]{32})\.([A-Za-z0-9_-]+)")
_FRESH_KEYS_KEPT = 20_000


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A person's row in the key table: their community and wrapped key (None once erased)."""

    person_id: str
    community_id: str
    wrapped: str | None

    @property
    def erased(self) -> bool:
        return self.wrapped is None


@dataclass(frozen=True, slots=True)
class FreshKey:
    """A key this process made for a person, and the sealed data of theirs that a save carries."""

    row: KeyRow
    sealed: tuple[bytes, ...]
    """The ciphertexts (nonce + ciphertext) of this person in the events being saved."""


class PersonKeyConflict(IntegrityError):
    """Another writer stored a key for this new person first: decide the command again, sealing under that key."""


class KeyTable(Protocol):
    """What the vault needs from the store's recorder."""

    def select_person_keys(self, person_ids: Sequence[str]) -> dict[str, KeyRow]: ...

    def person_key_rows(self, after: str, limit: int) -> list[KeyRow]:
        """Up to limit rows of people not erased, by person id, after the one given."""
        ...

    def replace_wrapped(self, person_id: str, old: str, new: str) -> bool:
        """Replace a person's wrapped key if it is still old; whether it was."""
        ...


def load_master_key(data_dir: Path, configured: str | None, kept: SecretStore | None = None) -> bytes:
    """BATON_PII_KEY if set; else the installation's key (BATON_MASTER_KEY); else one kept in the data dir."""
    if configured:
        key = _decode_key(configured)
        if key is None:
            raise ValueError("BATON_PII_KEY must be 32 random bytes in base64, e.g. `openssl rand -base64 32`")
        return key
    local = local_master_key(data_dir)
    if kept is not None:
        return kept.get_or_create(SecretName.PII_MASTER, lambda: secrets.token_bytes(32), local).value
    made = kept_secret(local.path, lambda: base64.b64encode(secrets.token_bytes(32)).decode())
    return base64.b64decode(made)


def local_master_key(data_dir: Path) -> LocalCopy:
    """The data dir's own personal-data master key (as kept without BATON_MASTER_KEY)."""
    return LocalCopy(data_dir / "keys" / "pii-master", _read_key)


def _decode_key(text: str) -> bytes | None:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == 32 else None


def _read_key(path: Path) -> bytes:
    key = _decode_key(path.read_text())
    if key is None:
        raise ValueError(f"{path} does not hold a personal-data master key (base64 of 32 bytes)")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Vault:
    """Seals personal data under per-person keys, reveals it while the key lives, and knows who was erased."""

    def __init__(self, keys: KeyTable, master_key: bytes) -> None:
        self.keys = keys
        self._master = AESGCM(master_key)
        self._fresh: OrderedDict[str, tuple[bytes, KeyRow]] = OrderedDict()
        self._lock = threading.Lock()

    # Writing ----------------------------------------------------------------------------------

    def seal(self, person_id: UUID, community_id: str, text: str) -> Sealed:
        """Encrypt text under the person's key, creating the key if the person is new."""
        key = self._key_for(person_id, community_id)
        nonce = secrets.token_bytes(12)
        ciphertext = AESGCM(key).encrypt(nonce, text.encode(), person_id.bytes)
        return Sealed(f"{SEALED_PREFIX}{person_id.hex}.{_b64(nonce + ciphertext)}")

    def seal_optional(self, person_id: UUID, community_id: str, text: str | None) -> Sealed | None:
        """seal(), or None when there is nothing to seal."""
        text = (text or "").strip()
        return self.seal(person_id, community_id, text) if text else None

    def _key_for(self, person_id: UUID, community_id: str) -> bytes:
        pid = person_id.hex
        row = self.keys.select_person_keys([pid]).get(pid)
        if row is not None:
            if row.wrapped is None:
                raise PersonErased(
                    f"person {person_id}'s personal data was erased; record them as a new person (omit person_id)"
                )
            return self._unwrap(row)
        with self._lock:
            fresh = self._fresh.get(pid)
            if fresh is None:
                key = AESGCM.generate_key(bit_length=256)
                fresh = (key, KeyRow(pid, community_id, self._wrap(person_id, key)))
                self._fresh[pid] = fresh
                while len(self._fresh) > _FRESH_KEYS_KEPT:
                    self._fresh.popitem(last=False)
            return fresh[0]

    def _wrap(self, person_id: UUID, key: bytes) -> str:
        nonce = secrets.token_bytes(12)
        return _b64(nonce + self._master.encrypt(nonce, key, b"baton-person-key:" + person_id.bytes))

    def _unwrap(self, row: KeyRow, master: AESGCM | None = None) -> bytes:
        assert row.wrapped is not None
        raw = _unb64(row.wrapped)
        person = UUID(hex=row.person_id)
        return (master or self._master).decrypt(raw[:12], raw[12:], b"baton-person-key:" + person.bytes)

    def rewrap(self, old_master: bytes, batch: int = 1000) -> tuple[int, int]:
        """Re-wrap under this master key each person's key only old_master opens: (re-wrapped, opened by neither)."""
        old = AESGCM(old_master)
        rewrapped = unreadable = 0
        after = ""
        while rows := self.keys.person_key_rows(after, batch):
            for row in rows:
                assert row.wrapped is not None
                try:
                    self._unwrap(row)
                    continue
                except InvalidTag:
                    pass
                try:
                    key = self._unwrap(row, old)
                except InvalidTag:
                    unreadable += 1
                    continue
                if self.keys.replace_wrapped(row.person_id, row.wrapped, self._wrap(UUID(hex=row.person_id), key)):
                    rewrapped += 1
            after = rows[-1].person_id
        return rewrapped, unreadable

    # Hooks the recorder calls inside the events' transaction -----------------------------------

    def keys_to_insert(self, stored_events: Sequence[StoredEvent]) -> list[FreshKey]:
        """The fresh keys whose sealed data these events carry, by person id (the order every writer locks in)."""
        sealed: dict[str, list[bytes]] = {}
        for stored in stored_events:
            if b"pii1." not in stored.state:
                continue
            for match in _SEALED_IN_STATE.finditer(stored.state):
                sealed.setdefault(match.group(1).decode(), []).append(match.group(2))
        fresh: list[FreshKey] = []
        with self._lock:
            for pid in sorted(sealed):
                made = self._fresh.get(pid)
                if made is not None:
                    fresh.append(FreshKey(made[1], tuple(_unb64(t.decode()) for t in sealed[pid])))
        return fresh

    def check_stored(self, fresh: FreshKey, stored: KeyRow | None) -> None:
        """PersonKeyConflict unless this save's data of the person opens under the key stored for them."""
        if stored is not None and stored.wrapped == fresh.row.wrapped:
            return
        person = UUID(hex=fresh.row.person_id)
        if stored is not None and stored.wrapped is not None:
            cipher = AESGCM(self._unwrap(stored))
            try:
                for raw in fresh.sealed:
                    cipher.decrypt(raw[:12], raw[12:], person.bytes)
            except (InvalidTag, ValueError):
                pass
            else:
                return
        log.info("person_key_conflict", person_id=str(person))
        raise PersonKeyConflict(f"another writer stored a key for person {person} first; decide the command again")

    def keys_to_destroy(self, stored_events: Sequence[StoredEvent]) -> list[str]:
        """Person ids (hex) erased by these events."""
        erased = []
        for stored in stored_events:
            if stored.topic == ERASED_TOPIC:
                value = json.loads(stored.state)["person_id"]
                erased.append(UUID(str(value["_data_"] if isinstance(value, dict) else value)).hex)
        if erased:
            with self._lock:
                for pid in erased:
                    self._fresh.pop(pid, None)
        return erased

    # Reading ----------------------------------------------------------------------------------

    def person(self, person_id: UUID) -> KeyRow | None:
        """The person's key row, or None if Baton holds no personal data of theirs."""
        return self.keys.select_person_keys([person_id.hex]).get(person_id.hex)

    def reveal(self, tokens: Iterable[str]) -> dict[str, str | None]:
        """Plaintext for each sealed token; None where the person was erased (or the token is bad)."""
        tokens = {t for t in tokens if isinstance(t, str) and t.startswith(SEALED_PREFIX)}
        if not tokens:
            return {}
        person_ids = sorted({t.split(".", 2)[1] for t in tokens})
        rows = self.keys.select_person_keys(person_ids)
        keys: dict[str, AESGCM | None] = {}
        for pid in person_ids:
            row = rows.get(pid)
            keys[pid] = None
            if row is not None and row.wrapped is not None:
                try:
                    keys[pid] = AESGCM(self._unwrap(row))
                except InvalidTag:  # wrapped under another master key: shown as unreadable, not a failed request
                    log.error(
                        "person_key_wrapped_under_another_master_key",
                        person_id=str(UUID(hex=pid)),
                        hint="run `baton keys import` on the instance whose data dir holds that key",
                    )
        out: dict[str, str | None] = {}
        for token in tokens:
            _, pid, data = token.split(".", 2)
            cipher = keys.get(pid)
            if cipher is None:
                out[token] = None
                continue
            try:
                raw = _unb64(data)
                out[token] = cipher.decrypt(raw[:12], raw[12:], UUID(hex=pid).bytes).decode()
            except (InvalidTag, ValueError, binascii.Error):
                out[token] = None
        return out

    def reveal_in(self, value: Any, visible: bool = True) -> Any:
        """A copy of value with every sealed token replaced by its plaintext (None if erased or not visible)."""
        tokens: set[str] = set()
        _collect(value, tokens)
        plain = self.reveal(tokens) if visible and tokens else {}
        return _replace(value, plain)


def _collect(value: Any, into: set[str]) -> None:
    if isinstance(value, str):
        if value.startswith(SEALED_PREFIX):
            into.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, into)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect(v, into)


def _replace(value: Any, plain: dict[str, str | None]) -> Any:
    if isinstance(value, str):
        return plain.get(value) if value.startswith(SEALED_PREFIX) else value
    if isinstance(value, dict):
        return {k: _replace(v, plain) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(v, plain) for v in value]
    return value


class SealedAsToken(Transcoding):
    """Stores a Sealed value as its token; nothing is decrypted when events are read."""

    type = Sealed
    name = "sealed"

    def encode(self, obj: Sealed) -> str:
        return obj.token

    def decode(self, data: str) -> Sealed:
        return Sealed(data)


__all__ = [
    "ERASED_TOPIC",
    "FreshKey",
    "KeyRow",
    "PersonKeyConflict",
    "SealedAsToken",
    "Vault",
    "load_master_key",
    "local_master_key",
]
