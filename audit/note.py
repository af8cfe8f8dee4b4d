"""Checkpoints as C2SP signed notes (tlog-checkpoint, signed-note), signed with Ed25519."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = b"\x01"
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space start each signature line


class NoteError(ValueError):
    """A note or checkpoint is malformed or its signature does not verify."""


def key_hash(name: str, public: bytes) -> bytes:
    """The first four bytes of SHA-256(name || \\n || 0x01 || public key)."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A signed-note verifier key: name, key hash and Ed25519 public key."""

    name: str
    public: bytes

    @property
    def hash(self) -> bytes:
        return key_hash(self.name, self.public)

    def vkey(self) -> str:
        """The C2SP verifier key string: name+hexhash+base64(0x01 || key)."""
        return f"{self.name}+{self.hash.hex()}+{base64.b64encode(ED25519 + self.public).decode()}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        try:
            name, hexhash, encoded = vkey.strip().split("+", 2)
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise NoteError("a verifier key reads name+hash+base64key") from None
        if raw[:1] != ED25519 or len(raw) != 33:
            raise NoteError("only Ed25519 verifier keys are supported")
        verifier = cls(name, raw[1:])
        if verifier.hash.hex() != hexhash:
            raise NoteError("the verifier key's hash does not match its name and key")
        return verifier

    def verify(self, note: str) -> str:
        """Return the note's text if one of its signatures is ours and valid; else raise NoteError."""
        text, signatures = split_note(note)
        key = Ed25519PublicKey.from_public_bytes(self.public)
        found = False
        for name, blob in signatures:
            if name != self.name or blob[:4] != self.hash:
                continue
            found = True
            try:
                key.verify(blob[4:], text.encode())
                return text
            except InvalidSignature:
                continue
        raise NoteError(
            "the note's signature by this key does not verify" if found else f"the note is not signed by {self.name}"
        )


class Signer:
    """An Ed25519 signing key under a name (the log's origin)."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        if not name or any(c.isspace() or c == "+" for c in name):
            raise NoteError("a key name has no spaces or '+'")
        self.name = name
        self.private = private
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    def sign(self, text: str) -> str:
        """The signed note: text, a blank line, one signature line."""
        if not text.endswith("\n"):
            raise NoteError("a note's text ends with a newline")
        signature = self.private.sign(text.encode())
        blob = base64.b64encode(self.verifier.hash + signature).decode()
        return f"{text}\n{SIGNATURE_PREFIX}{self.name} {blob}\n"

    @classmethod
    def load_or_create(cls, path: Path, name: str) -> Signer:
        """The key kept at path (PEM, mode 600), created on first use."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        return cls(name, Ed25519PrivateKey.from_private_bytes(read_private_key(path)))

    @classmethod
    def from_private_bytes(cls, name: str, raw: bytes) -> Signer:
        """A signer from the 32 raw bytes of an Ed25519 private key."""
        return cls(name, Ed25519PrivateKey.from_private_bytes(raw))

    @staticmethod
    def generate_private_bytes() -> bytes:
        """The 32 raw bytes of a new Ed25519 private key."""
        return Ed25519PrivateKey.generate().private_bytes_raw()


def read_private_key(path: Path) -> bytes:
    """The 32 raw bytes of the Ed25519 private key kept at path (PEM, PKCS#8)."""
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise NoteError(f"{path} does not hold a PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise NoteError(f"{path} does not hold an Ed25519 key")
    return private.private_bytes_raw()


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(text, [(key name, key hash + signature)]) of a signed note, or NoteError."""
    if "\n\n" not in note or not note.endswith("\n"):
        raise NoteError("a signed note is text, a blank line, then signature lines")
    cut = note.rindex("\n\n")
    text, block = note[: cut + 1], note[cut + 2 :]
    signatures = []
    for line in block.splitlines():
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("a signature line starts with an em dash and a space")
        try:
            name, encoded = line[len(SIGNATURE_PREFIX) :].split(" ")
            blob = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise NoteError("a signature line reads: name base64") from None
        if len(blob) != 4 + 64:
            raise NoteError("an Ed25519 signature line carries a 4-byte key hash and a 64-byte signature")
        signatures.append((name, blob))
    if not signatures:
        raise NoteError("the note has no signatures")
    return text, signatures


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: origin, tree size, root hash."""

    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint reads: origin, size, base64 root, each on its own line")
        origin, size, root = lines[0], lines[1], lines[2]
        if not size.isdigit() or (size != "0" and size.startswith("0")):
            raise NoteError(f"checkpoint size {size!r} is not a decimal number")
        try:
            raw = base64.b64decode(root, validate=True)
        except ValueError:
            raise NoteError("the checkpoint root is not base64") from None
        if len(raw) != 32:
            raise NoteError("the checkpoint root is not a SHA-256 hash")
        return cls(origin, int(size), raw)

    @classmethod
    def verified(cls, note: str, verifier: Verifier, origin: str | None = None) -> Checkpoint:
        """Parse a signed checkpoint note after checking its signature (and origin)."""
        checkpoint = cls.parse(verifier.verify(note))
        if origin is not None and checkpoint.origin != origin:
            raise NoteError(f"the checkpoint is for log {checkpoint.origin!r}, not {origin!r}")
        return checkpoint
