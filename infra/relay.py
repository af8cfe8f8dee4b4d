"""The relay: follows the store's notification log and publishes every event to BATON_EVENTS once, in order.

What has been published is read from the stream itself (the Baton-Position of its last message), on
start and after every failure, so a crash between publishing and recording cannot open a gap or
repeat an event. Each message carries Nats-Expected-Last-Sequence: if any message of a pipelined
batch is lost, every later one is refused by the server, and the relay re-reads the stream and
resumes right after the last event it holds. Nats-Msg-Id dedupes a republish within the window.

When the node leading BATON_EVENTS dies, publishes are answered 'no responders' (or, if they reached the
dying leader, not at all) and the stream's API does not answer until the survivors elect a new leader (about
5 s here). The relay gives up on a batch at its first refusal or after ACK_IDLE seconds without any ack, asks
the stream with a short timeout, backs off up to half a second, and logs the interruption and its length once.

When BATON_EVENTS itself is lost (deleted, or NATS lost its data) and made again empty, the stream says it holds
nothing: the relay republishes the whole history from position 0, with the same Nats-Msg-Ids and Baton-Positions,
in order (the first publish expects the stream's last sequence 0, so nothing lands before it), and logs
`relay_republished` with the count and rate once it is back where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from infra import metrics
from infra.envelope import EnvelopeCodec
from infra.jetstream import ACK_IDLE, EVENTS_STREAM, JetStreamPublisher, PubAck, PublishRejected, settle
from infra.store import Store

log = structlog.get_logger("baton.relay")

STORE_HEADER = "Baton-Store"
MIN_BACKOFF, MAX_BACKOFF = 0.1, 0.5
"""Seconds before the next resync after a failure. During an election each attempt also waits out its 1 s request
timeout, so the relay asks about every 1.5 s and resumes within that of the new leader's election."""


@dataclass
class Republish:
    """A republish of the history to a BATON_EVENTS that holds less than the relay had published (it was lost)."""

    start: int
    """The position the stream held when the relay found it behind (0: it was made again empty)."""
    until: int
    """The position the relay had published before."""
    began: float
    events: int = 0


class StreamMismatch(RuntimeError):
    """BATON_EVENTS holds events this store does not have: it belongs to another store."""


async def last_published(js: JetStreamContext) -> int:
    """The store position of BATON_EVENTS' last message (0 when it holds none)."""
    info = await js.stream_info(EVENTS_STREAM)
    if not info.state.messages:
        return 0
    msg = await js.get_msg(EVENTS_STREAM, seq=info.state.last_seq)
    return int((msg.headers or {}).get("Baton-Position", "0"))


class Relay:
    """Publishes the store's events to BATON_EVENTS with a dedupe id, pipelined."""

    def __init__(
        self,
        store: Store,
        codec: EnvelopeCodec,
        nc: Client,
        publisher: JetStreamPublisher,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        ack_idle: float = ACK_IDLE,
        sync_timeout: float = 1.0,
        on_stream_missing: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=sync_timeout)
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.ack_idle = ack_idle
        self.published = 0
        self.stream_seq = 0
        self.synced = False
        self.error: str | None = None
        self.resyncs = 0
        self.interrupted_at: float | None = None
        self.republishing: Republish | None = None
        self.on_stream_missing = on_stream_missing
        self._resync = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_saved(self, position: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def resync(self) -> None:
        """Read the stream again before the next publish (it was made again: it may hold less than published)."""
        self._resync = True
        self._wake.set()

    async def run(self) -> None:
        """Publish forever; on any failure, re-read the stream and carry on."""
        self._loop = asyncio.get_running_loop()
        self.store.add_listener(self._on_saved)
        backoff = MIN_BACKOFF
        try:
            while True:
                try:
                    await self.sync()
                    backoff = MIN_BACKOFF
                    await self._publish_forever()
                except asyncio.CancelledError:
                    raise
                except StreamMismatch as exc:
                    self.error = str(exc)
                    log.error("relay_stream_mismatch", error=str(exc))
                    await asyncio.sleep(5.0)
                except Exception as exc:
                    self._interrupted(exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            self.store.remove_listener(self._on_saved)

    def _interrupted(self, exc: Exception, backoff: float) -> None:
        self.synced = False
        self.resyncs += 1
        metrics.relay_resyncs.inc()
        self.error = f"{type(exc).__name__}: {exc}"
        if self.interrupted_at is None:
            self.interrupted_at = time.monotonic()
            log.warning("relay_interrupted", error=self.error, published=self.published)
        else:
            log.info(
                "relay_resync_failed",
                error=self.error,
                for_s=round(time.monotonic() - self.interrupted_at, 2),
                retry_in_s=backoff,
            )

    async def sync(self) -> None:
        """Learn from BATON_EVENTS which position it holds last."""
        self._resync = False
        try:
            info = await self.js.stream_info(EVENTS_STREAM)
        except NotFoundError:
            if self.on_stream_missing is not None:
                self.on_stream_missing()
            raise
        last_seq = info.state.last_seq or 0
        position = 0
        if info.state.messages:
            msg = await self.js.get_msg(EVENTS_STREAM, seq=last_seq)
            headers = msg.headers or {}
            position = int(headers.get("Baton-Position", "0"))
            if headers.get(STORE_HEADER) != self.store.identity:
                raise StreamMismatch(
                    f"{EVENTS_STREAM} ends with an event of store {headers.get(STORE_HEADER)}, not of this store "
                    f"({self.store.identity}); point Baton at the NATS that belongs to this store, or at a fresh one"
                )
            await asyncio.to_thread(self._check_same_store, position, headers.get("Nats-Msg-Id"))
        if position < self.published:
            until = max(self.published, self.republishing.until if self.republishing else 0)
            self.republishing = Republish(start=position, until=until, began=time.monotonic())
            log.warning("relay_republishing", stream_holds=position, published_before=until)
        self.published, self.stream_seq = position, last_seq
        self.synced, self.error = True, None
        if self.interrupted_at is None:
            log.info("relay_synced", published=position, stream_seq=last_seq)
        else:
            stalled = round(time.monotonic() - self.interrupted_at, 2)
            self.interrupted_at = None
            log.warning("relay_recovered", published=position, stream_seq=last_seq, stalled_s=stalled)

    def _check_same_store(self, position: int, msg_id: str | None) -> None:
        found = self.store.select(position - 1, 1, stop=position)
        if not found or self.codec.recorded(found[0]).msg_id != msg_id:
            raise StreamMismatch(
                f"{EVENTS_STREAM} ends with position {position} ({msg_id}), which this store does not hold; "
                "point Baton at the NATS that belongs to this store, or at a fresh one"
            )

    async def _publish_forever(self) -> None:
        while True:
            self._wake.clear()
            if self._resync:
                return
            batch = await asyncio.to_thread(self._next_batch)
            if not batch:
                # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancel that races the event.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                continue
            await self._publish(batch)

    async def _acked(self, futures: list[asyncio.Future[PubAck]]) -> None:
        """Wait for every ack; raise at the first refusal (every later publish expected it to succeed), or once
        ACK_IDLE seconds pass without any ack (publishes that reached a leader as it died are never answered)."""
        if not await settle(futures, self.ack_idle, first_error=True):
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if errors:
                raise errors[0]
            raise ConnectionError(f"no ack within {self.ack_idle}s of the last one")
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]

    def _next_batch(self) -> list[tuple[int, str, bytes, dict[str, str]]]:
        notifications = self.store.select(self.published, self.batch_size)
        out = []
        for n in notifications:
            envelope = self.codec.recorded(n)
            headers = envelope.headers()
            headers[STORE_HEADER] = self.store.identity
            out.append((envelope.position, envelope.subject, envelope.to_json(), headers))
        return out

    async def _publish(self, batch: list[tuple[int, str, bytes, dict[str, str]]]) -> None:
        started = time.perf_counter()
        futures = []
        seq = self.stream_seq
        for _position, subject, payload, headers in batch:
            headers["Nats-Expected-Last-Sequence"] = str(seq)
            futures.append(await self.publisher.publish(subject, payload, headers))
            seq += 1
        await self._acked(futures)
        for (position, _subject, _payload, _headers), future in zip(batch, futures, strict=True):
            ack = future.result()
            if ack.duplicate:
                raise PublishRejected(409, None, f"position {position} was already in the stream")
            self.published, self.stream_seq = position, ack.seq
        metrics.relay_published.inc(len(batch))
        if self.republishing is not None:
            self._republished(len(batch))
        log.debug(
            "relay_published",
            first=batch[0][0],
            last=batch[-1][0],
            count=len(batch),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _republished(self, count: int) -> None:
        """Count a republished batch; log once the stream is back where it was."""
        assert self.republishing is not None
        again = self.republishing
        again.events += count
        if self.published < again.until:
            return
        seconds = time.monotonic() - again.began
        log.warning(
            "relay_republished",
            events=again.events,
            from_position=again.start,
            to_position=self.published,
            seconds=round(seconds, 2),
            events_per_s=round(again.events / seconds) if seconds > 0 else None,
        )
        self.republishing = None
