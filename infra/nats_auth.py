"""NATS accounts, users and permissions: Baton's own account, one account per department, a read-only auditor.

Every principal lives in its own NATS account. Baton's account (BATON) holds the streams and exports exactly
what the others import; a department's account imports only its own subjects and its own durable consumer.
Accounts rather than per-user permissions alone, because nats-server checks a publish's subject, never its
reply subject, and JetStream answers to any reply subject: in one account a department could send a command
with reply `baton.evt.x` and have JetStream's acknowledgement stored in BATON_EVENTS. Across accounts a reply
is mapped back into the requester's own account, where no stream listens.

Passwords are derived from one secret (HMAC-SHA256 of the principal's name), so `baton nats-creds issue`
prints them without a running server; the server config holds only their bcrypt hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import nats
import structlog
from nats.js.errors import NotFoundError

from domain.common import DEPARTMENT_CODE
from infra.jetstream import (
    AUDIT_STREAM,
    AUDITOR_DURABLE,
    DEPT_STREAM,
    EVENTS_STREAM,
    NOTIFY_DURABLE,
    NOTIFY_STREAM,
    department_durable,
    department_filter,
)
from infra.keys import kept_secret, write_private
from infra.secrets import LocalCopy, SecretName, SecretStore

log = structlog.get_logger("baton.nats_auth")

SERVICE_ACCOUNT = "BATON"
AUDITOR_ACCOUNT = "AUDIT"
NOTIFY_ACCOUNT = "NOTIFY"
NOTIFY_USER = "notifier"
SERVICE_USER = "baton"
AUDITOR_USER = "auditor"
JS_API_PREFIX = "$JS.BATON.API"
"""Where other accounts reach Baton's JetStream API (nc.jetstream(prefix=JS_API_PREFIX)); their own `$JS.API`
answers 'JetStream not enabled for account'."""
BCRYPT_ROUNDS = 6
"""Low on purpose: the passwords are 256-bit HMACs, not guessable words; the hash only keeps them out of the config."""
MIN_SECRET_LENGTH = 32
AUDITED_STREAMS = (EVENTS_STREAM, AUDIT_STREAM)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one principal connects with."""

    user: str
    password: str
    account: str
    inbox_prefix: str


def department_account(code: str) -> str:
    return f"DEPT_{code}"


def check_department_code(code: str) -> str:
    if not DEPARTMENT_CODE.match(code):
        raise ValueError(f"{code!r} is not a department code (A-Z, 0-9 and _, 2-32 characters, a letter first)")
    return code


def load_nats_secret(data_dir: Path, configured: str | None, kept: SecretStore | None = None) -> bytes:
    """BATON_NATS_SECRET if set; else the installation's (BATON_MASTER_KEY); else the data dir's (0600)."""
    if configured:
        if len(configured) < MIN_SECRET_LENGTH:
            raise ValueError(f"BATON_NATS_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        return configured.encode()
    local = local_nats_secret(data_dir)
    if kept is not None:
        return kept.get_or_create(SecretName.NATS_SECRET, lambda: secrets.token_urlsafe(48).encode(), local).value
    return kept_secret(local.path, lambda: secrets.token_urlsafe(48)).encode()


def local_nats_secret(data_dir: Path) -> LocalCopy:
    """The data dir's own NATS secret (as kept without BATON_MASTER_KEY)."""
    return LocalCopy(data_dir / "keys" / "nats-secret", lambda path: path.read_text().strip().encode())


def _service_import(subject: str, to: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"service": {"account": SERVICE_ACCOUNT, "subject": subject}}
    if to is not None:
        entry["to"] = to
    return entry


def _js_api_import(subject: str) -> dict[str, Any]:
    """Import one of Baton's JetStream API subjects under JS_API_PREFIX."""
    assert subject.startswith("$JS.API.")
    return _service_import(subject, JS_API_PREFIX + subject.removeprefix("$JS.API"))


def _stream_import(subject: str) -> dict[str, Any]:
    return {"stream": {"account": SERVICE_ACCOUNT, "subject": subject}}


def service_exports() -> list[dict[str, Any]]:
    """What Baton's account offers; each other account imports only its own part of it."""
    audited = [AUDITOR_ACCOUNT]
    exports: list[dict[str, Any]] = [
        {"service": "baton.dept.*.cmd.>"},
        {"stream": "baton.dept.*.outcome"},
        {"stream": "baton.dept.*.inbox.>"},
        {"service": f"$JS.API.CONSUMER.INFO.{DEPT_STREAM}.*"},
        {"service": f"$JS.API.CONSUMER.MSG.NEXT.{DEPT_STREAM}.*", "response_type": "stream"},
        {"service": f"$JS.ACK.{DEPT_STREAM}.*.>"},
        {"stream": "baton.evt.>", "accounts": audited},
        {"stream": "baton.audit.>", "accounts": audited},
    ]
    gateway = [NOTIFY_ACCOUNT]
    exports += [
        {"service": f"$JS.API.CONSUMER.INFO.{NOTIFY_STREAM}.{NOTIFY_DURABLE}", "accounts": gateway},
        {
            "service": f"$JS.API.CONSUMER.MSG.NEXT.{NOTIFY_STREAM}.{NOTIFY_DURABLE}",
            "response_type": "stream",
            "accounts": gateway,
        },
        {"service": f"$JS.ACK.{NOTIFY_STREAM}.{NOTIFY_DURABLE}.>", "accounts": gateway},
    ]
    for stream in AUDITED_STREAMS:
        exports += [
            {"service": f"$JS.API.STREAM.INFO.{stream}", "accounts": audited},
            {"service": f"$JS.API.STREAM.MSG.GET.{stream}", "accounts": audited},
            {"service": f"$JS.API.CONSUMER.INFO.{stream}.{AUDITOR_DURABLE}", "accounts": audited},
            {
                "service": f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{AUDITOR_DURABLE}",
                "response_type": "stream",
                "accounts": audited,
            },
            {"service": f"$JS.ACK.{stream}.{AUDITOR_DURABLE}.>", "accounts": audited},
        ]
    return exports


def department_permissions(code: str) -> dict[str, Any]:
    """Department CODE: send its commands, read its outcomes and inbox, use its own durable; nothing else."""
    durable = department_durable(code)
    return {
        "publish": {
            "allow": [
                f"baton.dept.{code}.cmd.>",
                f"{JS_API_PREFIX}.CONSUMER.INFO.{DEPT_STREAM}.{durable}",
                f"{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{DEPT_STREAM}.{durable}",
                f"$JS.ACK.{DEPT_STREAM}.{durable}.>",
            ]
        },
        "subscribe": {
            "allow": [f"baton.dept.{code}.outcome", department_filter(code), f"_INBOX_dept_{code}.>"],
        },
    }


def department_imports(code: str) -> list[dict[str, Any]]:
    durable = department_durable(code)
    return [
        _service_import(f"baton.dept.{code}.cmd.>"),
        _stream_import(f"baton.dept.{code}.outcome"),
        _stream_import(department_filter(code)),
        _js_api_import(f"$JS.API.CONSUMER.INFO.{DEPT_STREAM}.{durable}"),
        _js_api_import(f"$JS.API.CONSUMER.MSG.NEXT.{DEPT_STREAM}.{durable}"),
        _service_import(f"$JS.ACK.{DEPT_STREAM}.{durable}.>"),
    ]


def auditor_permissions() -> dict[str, Any]:
    """The auditor: stream info, single messages and its own durable on BATON_EVENTS and BATON_AUDIT; no publish."""
    publish = []
    for stream in AUDITED_STREAMS:
        publish += [
            f"{JS_API_PREFIX}.STREAM.INFO.{stream}",
            f"{JS_API_PREFIX}.STREAM.MSG.GET.{stream}",
            f"{JS_API_PREFIX}.CONSUMER.INFO.{stream}.{AUDITOR_DURABLE}",
            f"{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{AUDITOR_DURABLE}",
            f"$JS.ACK.{stream}.{AUDITOR_DURABLE}.>",
        ]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": ["baton.evt.>", "baton.audit.>", "_INBOX_auditor.>"]},
    }


def auditor_imports() -> list[dict[str, Any]]:
    imports = [_stream_import("baton.evt.>"), _stream_import("baton.audit.>")]
    for stream in AUDITED_STREAMS:
        imports += [
            _js_api_import(f"$JS.API.STREAM.INFO.{stream}"),
            _js_api_import(f"$JS.API.STREAM.MSG.GET.{stream}"),
            _js_api_import(f"$JS.API.CONSUMER.INFO.{stream}.{AUDITOR_DURABLE}"),
            _js_api_import(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{AUDITOR_DURABLE}"),
            _service_import(f"$JS.ACK.{stream}.{AUDITOR_DURABLE}.>"),
        ]
    return imports


def notifier_permissions() -> dict[str, Any]:
    """The notification gateway: its own durable on BATON_NOTIFY, nothing else (no event, no command)."""
    return {
        "publish": {
            "allow": [
                f"{JS_API_PREFIX}.CONSUMER.INFO.{NOTIFY_STREAM}.{NOTIFY_DURABLE}",
                f"{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{NOTIFY_STREAM}.{NOTIFY_DURABLE}",
                f"$JS.ACK.{NOTIFY_STREAM}.{NOTIFY_DURABLE}.>",
            ]
        },
        "subscribe": {"allow": ["_INBOX_notifier.>"]},
    }


def notifier_imports() -> list[dict[str, Any]]:
    return [
        _js_api_import(f"$JS.API.CONSUMER.INFO.{NOTIFY_STREAM}.{NOTIFY_DURABLE}"),
        _js_api_import(f"$JS.API.CONSUMER.MSG.NEXT.{NOTIFY_STREAM}.{NOTIFY_DURABLE}"),
        _service_import(f"$JS.ACK.{NOTIFY_STREAM}.{NOTIFY_DURABLE}.>"),
    ]


class NatsAuth:
    """Derives every principal's password from one secret and renders the server's `accounts` block."""

    def __init__(self, secret: bytes, hash_cache: Path | None = None) -> None:
        self.secret = secret
        self.hash_cache = hash_cache
        self._fingerprint = hmac.new(secret, b"baton-nats-bcrypt-cache-v1", hashlib.sha256).hexdigest()
        self._hashes: dict[str, str] = self._load_hashes()

    @classmethod
    def load(cls, data_dir: Path, configured: str | None = None, kept: SecretStore | None = None) -> NatsAuth:
        """The NATS secret (see load_nats_secret), with its bcrypt cache in DATA_DIR/keys."""
        return cls(load_nats_secret(data_dir, configured, kept), data_dir / "keys" / "nats-hashes.json")

    def password(self, principal: str) -> str:
        digest = hmac.new(self.secret, principal.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def service(self) -> Credentials:
        return Credentials(SERVICE_USER, self.password("service"), SERVICE_ACCOUNT, "_INBOX")

    def auditor(self) -> Credentials:
        return Credentials(AUDITOR_USER, self.password("auditor"), AUDITOR_ACCOUNT, "_INBOX_auditor")

    def notifier(self) -> Credentials:
        return Credentials(NOTIFY_USER, self.password("notifier"), NOTIFY_ACCOUNT, "_INBOX_notifier")

    def department(self, code: str) -> Credentials:
        check_department_code(code)
        return Credentials(
            f"dept-{code}", self.password(f"department:{code}"), department_account(code), f"_INBOX_dept_{code}"
        )

    def accounts(self, departments: Iterable[str]) -> dict[str, Any]:
        """The server's accounts: BATON (JetStream, the service), AUDIT, and DEPT_CODE for each department."""
        service, auditor, notifier = self.service(), self.auditor(), self.notifier()
        accounts: dict[str, Any] = {
            SERVICE_ACCOUNT: {
                "jetstream": "enabled",
                "users": [{"user": service.user, "password": self.hash(service)}],
                "exports": service_exports(),
            },
            AUDITOR_ACCOUNT: {
                "users": [{"user": auditor.user, "password": self.hash(auditor), "permissions": auditor_permissions()}],
                "imports": auditor_imports(),
            },
            NOTIFY_ACCOUNT: {
                "users": [
                    {"user": notifier.user, "password": self.hash(notifier), "permissions": notifier_permissions()}
                ],
                "imports": notifier_imports(),
            },
        }
        for code in sorted(set(departments)):
            creds = self.department(code)
            accounts[creds.account] = {
                "users": [
                    {"user": creds.user, "password": self.hash(creds), "permissions": department_permissions(code)}
                ],
                "imports": department_imports(code),
            }
        self._save_hashes()
        return accounts

    def server_config(self, departments: Iterable[str]) -> str:
        """The `accounts` block for nats-server.conf (the config format reads JSON); no anonymous user."""
        return "accounts: " + json.dumps(self.accounts(departments), indent=2) + "\n"

    def hash(self, creds: Credentials) -> str:
        """The bcrypt hash of a principal's password, computed once per secret and kept in the cache."""
        cached = self._hashes.get(creds.user)
        if cached is None:
            cached = bcrypt.hashpw(creds.password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
            self._hashes[creds.user] = cached
        return cached

    def _load_hashes(self) -> dict[str, str]:
        if self.hash_cache is None:
            return {}
        try:
            cache = json.loads(self.hash_cache.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(cache, dict) or cache.get("fingerprint") != self._fingerprint:
            return {}
        return {str(k): str(v) for k, v in cache.get("hashes", {}).items()}

    def _save_hashes(self) -> None:
        if self.hash_cache is None:
            return
        wanted = {"fingerprint": self._fingerprint, "hashes": dict(sorted(self._hashes.items()))}
        try:
            if json.loads(self.hash_cache.read_text()) == wanted:
                return
        except (OSError, ValueError):
            pass
        write_private(self.hash_cache, json.dumps(wanted, indent=1))


async def _quiet(exc: Exception) -> None:
    """A probe's connection errors are its answer, not something to log."""


async def department_ready(url: str, creds: Credentials, code: str) -> bool:
    """True once department CODE can log in and reach Baton's JetStream API through its imports."""
    try:
        nc = await nats.connect(
            url,
            user=creds.user,
            password=creds.password,
            inbox_prefix=creds.inbox_prefix,
            name="baton-probe",
            error_cb=_quiet,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
        )
    except Exception as exc:
        log.debug("department_probe_refused", department=code, error=repr(exc))
        return False
    try:
        await nc.jetstream(prefix=JS_API_PREFIX, timeout=2).consumer_info(DEPT_STREAM, department_durable(code))
    except NotFoundError:
        return True  # JetStream answered: the import is wired, the consumer is just not there yet
    except Exception as exc:
        log.debug("department_probe_unanswered", department=code, error=repr(exc))
        return False
    finally:
        await nc.close()
    return True


__all__ = [
    "AUDITOR_DURABLE",
    "JS_API_PREFIX",
    "Credentials",
    "NatsAuth",
    "department_durable",
    "department_filter",
    "department_ready",
    "load_nats_secret",
    "local_nats_secret",
]
