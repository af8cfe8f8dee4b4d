"""The relay: follows the store's notification log and publishes every event to BATON_EVENTS once, in order.

What has been published is read from the stream itself (the Baton-Position of its last message), on
start and after every failure, so a crash between publishing and recording cannot open a gap or
repeat an event. Each message carries Nats-Expected-Last-Sequence: if any message of a pipelined
batch is lost, every later one is refused by the server, and the relay re-reads the stream and
resumes right after the last event it holds. Nats-Msg-Id dedupes a republish within the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from infra import metrics
from infra.envelope import EnvelopeCodec
from infra.jetstream import EVENTS_STREAM, JetStreamPublisher, PublishRejected
from infra.store import Store

log = structlog.get_logger("baton.relay")

STORE_HEADER = "Baton-Store"


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
        ack_timeout: float = 15.0,
    ) -> None:
        self.store = store
        self.codec = codec
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        self.published = 0
        self.stream_seq = 0
        self.synced = False
        self.error: str | None = None
        self.resyncs = 0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_saved(self, position: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Publish forever; on any failure, re-read the stream and carry on."""
        self._loop = asyncio.get_running_loop()
        self.store.add_listener(self._on_saved)
        backoff = 0.1
        try:
            while True:
                try:
                    await self.sync()
                    backoff = 0.1
                    await self._publish_forever()
                except asyncio.CancelledError:
                    raise
                except StreamMismatch as exc:
                    self.error = str(exc)
                    log.error("relay_stream_mismatch", error=str(exc))
                    await asyncio.sleep(5.0)
                except Exception as exc:
                    self.synced = False
                    self.resyncs += 1
                    metrics.relay_resyncs.inc()
                    self.error = f"{type(exc).__name__}: {exc}"
                    self.publisher.fail_pending(exc)
                    log.warning("relay_resync", error=self.error, published=self.published, backoff=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            self.store.remove_listener(self._on_saved)

    async def sync(self) -> None:
        """Learn from BATON_EVENTS which position it holds last."""
        info = await self.js.stream_info(EVENTS_STREAM)
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
        self.published, self.stream_seq = position, last_seq
        self.synced, self.error = True, None
        log.info("relay_synced", published=position, stream_seq=last_seq)

    def _check_same_store(self, position: int, msg_id: str | None) -> None:
        found = self.store.select(position - 1, 1, stop=position)
        if not found or self.codec.envelope(found[0]).msg_id != msg_id:
            raise StreamMismatch(
                f"{EVENTS_STREAM} ends with position {position} ({msg_id}), which this store does not hold; "
                "point Baton at the NATS that belongs to this store, or at a fresh one"
            )

    async def _publish_forever(self) -> None:
        while True:
            self._wake.clear()
            batch = await asyncio.to_thread(self._next_batch)
            if not batch:
                # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancel that races the event.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                continue
            await self._publish(batch)

    def _next_batch(self) -> list[tuple[int, str, bytes, dict[str, str]]]:
        notifications = self.store.select(self.published, self.batch_size)
        out = []
        for n in notifications:
            envelope = self.codec.envelope(n)
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
        try:
            async with asyncio.timeout(self.ack_timeout):
                acks = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            raise ConnectionError(f"no ack for {len(batch)} events within {self.ack_timeout}s") from None
        for (position, _subject, _payload, _headers), ack in zip(batch, acks, strict=True):
            if isinstance(ack, BaseException):
                raise ack
            if ack.duplicate:
                raise PublishRejected(409, None, f"position {position} was already in the stream")
            self.published, self.stream_seq = position, ack.seq
        metrics.relay_published.inc(len(batch))
        log.debug(
            "relay_published",
            first=batch[0][0],
            last=batch[-1][0],
            count=len(batch),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
