"""The stream guard: notices a Baton stream that NATS no longer has, and makes Baton's streams and consumers again.

The store is the truth and BATON_EVENTS a copy of it. A stream can go while Baton runs: deleted by an operator, or
every stream and durable consumer at once when a nats-server loses its data dir. Each process (serve's command
side, the projector) asks every second after each stream; a stream that is not found is made again
(`ensure_streams`), and a stream whose creation time changed (made again here or by another process) has this
process's durable consumers on it made again, and its followers told: the relay republishes the history, the
notary its checkpoints. A pull consumer whose durable vanished fails its fetches meanwhile and resumes on the new
one by itself; a durable made again delivers the new stream from its first message, and whatever its handler
already did is skipped by position (read models, inbox router).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from infra.jetstream import STREAMS, UNAVAILABLE, ensure_streams, jetstream_api

log = structlog.get_logger("baton.guard")

INTERVAL = 1.0
"""Seconds between looks at the streams."""

Recreated = Callable[[list[str]], Awaitable[list[str]]]
"""Told the streams made again since the last look; makes this process's consumers on them again and returns them."""


class StreamGuard:
    """Looks after Baton's streams from one process: notices one lost, makes them again, has consumers follow."""

    def __init__(
        self, nc: Client, replicas: int, on_recreated: Recreated, part: str, interval: float = INTERVAL
    ) -> None:
        self.nc = nc
        self.replicas = replicas
        self.on_recreated = on_recreated
        self.part = part
        self.interval = interval
        self.created: dict[str, str] = {}
        """Each stream's creation time as last seen here."""
        self.lost: list[str] = []
        """Streams found missing and not yet made again with their consumers (empty: nothing to recover)."""
        self.lost_at: float | None = None
        self.losses = 0
        self.last: dict[str, Any] | None = None
        """What the last recovery did (for /health)."""
        self._wake = asyncio.Event()

    @property
    def recovering(self) -> bool:
        return bool(self.lost)

    def wake(self) -> None:
        """Look now (the relay found BATON_EVENTS missing)."""
        self._wake.set()

    async def look(self) -> dict[str, str | None]:
        """Each stream's creation time, or None if NATS says it has no such stream (unanswered: left out)."""
        found: dict[str, str | None] = {}
        for name in STREAMS:
            try:
                info = await jetstream_api(self.nc, f"STREAM.INFO.{name}", timeout=1.0)
            except NotFoundError:
                found[name] = None
            except UNAVAILABLE:
                continue
            else:
                found[name] = str(info.get("created"))
        return found

    async def run(self) -> None:
        """Look every INTERVAL seconds (or when woken) until cancelled."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down or between servers: the next look tries again
                (log.info if self.lost else log.debug)("stream_guard_look_failed", error=repr(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def check(self) -> None:
        """One look: make missing streams again; have consumers follow streams that were made again."""
        now = await self.look()
        missing = sorted(name for name, created in now.items() if created is None)
        if missing:
            if not self.lost:
                self.lost_at = time.monotonic()
                self.losses += 1
                log.warning("stream_lost", streams=missing, part=self.part)
            self.lost = sorted(set(self.lost) | set(missing))
            await ensure_streams(self.nc, self.replicas)
            now = await self.look()
        for name, created in now.items():  # seen for the first time (at start): as made then
            if created is not None and name not in self.created and name not in self.lost:
                self.created[name] = created
        remade = sorted(
            name for name, created in now.items() if created is not None and self.created.get(name) != created
        )
        if not remade:
            return
        consumers = await self.on_recreated(remade)
        self.created.update({name: str(now[name]) for name in remade})
        lost_for = round(time.monotonic() - self.lost_at, 2) if self.lost_at is not None else None
        self.last = {"streams": remade, "consumers": consumers, "recovered_in_s": lost_for}
        log.warning(
            "stream_recreated",
            streams=remade,
            made_here=[name for name in remade if name in self.lost],
            consumers=consumers,
            part=self.part,
            lost_for_s=lost_for,
        )
        self.lost = [name for name in self.lost if name not in remade]
        if not self.lost:
            self.lost_at = None

    def health(self) -> dict[str, Any]:
        return {"lost": self.lost, "losses": self.losses, "last_recovery": self.last}
