"""Hostile-input guards in front of the API: NUL characters (422), body size (413), a per-token rate limit (429)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

from api.tokens import Tokens
from domain.report import MAX_PHOTO_BYTES

MEDIA_PATH = "/v1/media"
"""Where photos are uploaded as raw bytes (up to domain.report.MAX_PHOTO_BYTES)."""
log = structlog.get_logger("baton.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXEMPT_PATHS = frozenset({"/health"})
BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


async def send_error(
    send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with the contract's error body straight from ASGI, without the app."""
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


class Refused(Exception):
    """The request body turned out unacceptable while it was being read."""


NUL_ESCAPE = b"\\u0000"
"""A NUL character as JSON writes it: PostgreSQL text cannot hold it, so no input may carry one."""


class RequestGuard:
    """Refuse NUL characters (422) and bodies over max_bytes (413), from headers or as the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, scope: Scope, size: str) -> tuple[int, str, str]:
        log.warning("request_too_large", path=scope.get("path"), size=size, limit=self.max_bytes)
        return (
            413,
            "body_too_large",
            f"the request body is {size}; at most {self.max_bytes} bytes are accepted, send a smaller body",
        )

    @staticmethod
    def _nul(scope: Scope, where: str) -> tuple[int, str, str]:
        log.warning("request_with_nul", path=scope.get("path"), where=where)
        return (
            422,
            "invalid_request",
            f"the {where} contains a NUL character (\\u0000), which Baton cannot store; remove it",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            await send_error(send, *self._nul(scope, "URL"))
            return
        if any(b"\x00" in value for _, value in scope.get("headers", ())):
            await send_error(send, *self._nul(scope, "headers"))
            return
        declared = _header(scope, b"content-length")
        if declared is None and scope["method"] in BODILESS and _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body to guard: the wrappers below cost more than the check
            return
        limit = self.max_bytes if self.max_bytes > 0 else None
        photo = scope.get("path") == MEDIA_PATH and scope.get("method") == "POST"
        if photo:  # a photo is bytes, not JSON: its own limit, and a NUL in it is no escape
            limit = MAX_PHOTO_BYTES + 1024
        if limit and declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await send_error(send, *self._too_large(scope, f"{int(declared)} bytes"))
            return
        received = 0
        tail = b""
        refusal: tuple[int, str, str] | None = None
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, tail, refusal
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if limit and received > limit:
                    refusal = self._too_large(scope, f"over {limit} bytes (streamed)")
                    raise Refused
                if not photo and NUL_ESCAPE in tail + chunk:
                    refusal = self._nul(scope, "body")
                    raise Refused
                tail = (tail + chunk)[-(len(NUL_ESCAPE) - 1) :]
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refusal is not None and not started:
                return  # whatever the app answers to a refused body, the answer is the refusal
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if refusal is None or started:
                raise
        if refusal is not None and not started:
            await send_error(send, *refusal)


@dataclass
class Bucket:
    """A token bucket: `tokens` left at monotonic time `at`."""

    tokens: float
    at: float


class RateLimit:
    """A token bucket per verified token (role, unit, subject), else per client address; answers 429."""

    MAX_KEYS = 10_000

    def __init__(
        self,
        app: ASGIApp,
        tokens: Tokens,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self.buckets: dict[str, Bucket] = {}

    def key(self, scope: Scope) -> str:
        """Whose bucket a request draws from: a valid token's actor, otherwise the client's address."""
        authorization = _header(scope, b"authorization")
        if authorization and authorization[:7].lower() == b"bearer ":
            token = authorization[7:].strip().decode("latin-1")
            try:
                actor = self.tokens.verify(token)
            except Exception:  # invalid, or not checkable now: the route's own check answers for it
                pass
            else:
                return f"token:{actor.role.value}:{actor.unit}:{actor.id}"
        client = scope.get("client")
        host = client[0] if client else "unknown"
        return "ip:" + hashlib.sha256(str(host).encode()).hexdigest()[:16]

    def take(self, key: str) -> float:
        """Take one request from the key's bucket; 0 when allowed, else the seconds until one is free."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.MAX_KEYS:
                self._forget_full(now)
            bucket = self.buckets[key] = Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled (idle keys): they would start full anyway."""
        for key in [k for k, b in self.buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]:
            del self.buckets[key]
        if len(self.buckets) >= self.MAX_KEYS:
            self.buckets.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.rate <= 0 or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        key = self.key(scope)
        wait = self.take(key)
        if not wait:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        log.warning("rate_limited", path=scope.get("path"), key=key, retry_after=retry_after)
        await send_error(
            send,
            429,
            "rate_limited",
            f"too many requests: at most {self.rate:g} per second (bursts of {self.burst}) for one token, "
            f"or one address without a token; retry after {retry_after} s",
            [(b"retry-after", str(retry_after).encode())],
        )
