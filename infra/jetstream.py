"""JetStream streams of the public contract, and a pipelined publisher whose every ack or error arrives.

nats-py's own publish_async leaves a future pending forever when the server answers with an error
(nats-io/nats.py#985: APIError.from_error raises inside the reply callback), which would hang the
relay exactly when it must notice a rejected publish. This publisher resolves every future.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

log = structlog.get_logger("baton.jetstream")

EVENTS_STREAM = "BATON_EVENTS"
AUDIT_STREAM = "BATON_AUDIT"
INTAKE_STREAM = "BATON_INTAKE"
DEPT_STREAM = "BATON_DEPT"

STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=EVENTS_STREAM,
        description="Every Baton domain event, in store order, once.",
        subjects=["baton.evt.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=INTAKE_STREAM,
        description="Every command a department system sent, accepted or not.",
        subjects=["baton.dept.*.cmd.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        deny_delete=True,
        deny_purge=True,
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=AUDIT_STREAM,
        description="Signed checkpoints of the Merkle tree over BATON_EVENTS (C2SP signed notes).",
        subjects=["baton.audit.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        deny_delete=True,
        deny_purge=True,
        duplicate_window=600.0,
    ),
    StreamConfig(
        name=DEPT_STREAM,
        description="What each department must see (inbox events, command outcomes), kept until it reads it.",
        subjects=["baton.dept.*.inbox.>", "baton.dept.*.outcome"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.WORK_QUEUE,
        duplicate_window=600.0,
    ),
)


CONSUMER_NOT_UNIQUE = 10100
"""JetStream's err_code for a consumer whose filter overlaps another's on a work-queue stream."""
AUDITOR_DURABLE = "auditor"
"""The auditor's durable pull consumer on BATON_EVENTS and on BATON_AUDIT (created by Baton; auditors only bind)."""


def department_durable(code: str) -> str:
    """The durable pull consumer on BATON_DEPT through which department CODE reads its inbox and outcomes."""
    return f"dept_{code}"


def department_filter(code: str) -> str:
    """The inbox subjects of department CODE."""
    return f"baton.dept.{code}.inbox.>"


def department_consumer(code: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=department_durable(code),
        description=f"Department {code}: its inbox and the outcome of each command it sent.",
        filter_subjects=[department_filter(code), f"baton.dept.{code}.outcome"],
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
        max_ack_pending=1000,
    )


def auditor_consumer(stream: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=AUDITOR_DURABLE,
        description=f"The auditor's read of {stream}, from the first message.",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the contract's streams, or bring their configuration up to date; and the auditor's consumers."""
    for config in STREAMS:
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    for stream in (EVENTS_STREAM, AUDIT_STREAM):
        await _ensure_consumer(js, stream, auditor_consumer(stream))


async def ensure_department_consumers(js: JetStreamContext, codes: list[str]) -> None:
    """A durable consumer on BATON_DEPT for each department, so department credentials never need to create one.

    A department system that made its own consumer on its subjects (before logins existed) keeps it: a work
    queue admits one consumer per subject, so Baton then leaves that department's alone.
    """
    for code in codes:
        try:
            await _ensure_consumer(js, DEPT_STREAM, department_consumer(code))
        except BadRequestError as exc:
            if exc.err_code != CONSUMER_NOT_UNIQUE:
                raise
            log.warning("department_consumer_taken", department=code, error=exc.description)


async def _ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    assert config.durable_name is not None
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, config)


class PublishRejected(Exception):
    """JetStream answered a publish with an error."""

    def __init__(self, code: int, err_code: int | None, description: str) -> None:
        super().__init__(f"{code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


@dataclass(frozen=True, slots=True)
class PubAck:
    """What JetStream stored: the stream, its sequence, and whether it was a duplicate."""

    stream: str
    seq: int
    duplicate: bool


class JetStreamPublisher:
    """Publishes to JetStream with many messages in flight; each returns a future of its PubAck."""

    def __init__(self, nc: Client, max_pending: int = 2000) -> None:
        self._nc = nc
        self._prefix = f"_INBOX.baton.{uuid.uuid4().hex}"
        self._futures: dict[str, asyncio.Future[PubAck]] = {}
        self._counter = 0
        self._window = asyncio.Semaphore(max_pending)
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        self.fail_pending(ConnectionError("publisher closed"))

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        """Send one message; the returned future holds its ack, or PublishRejected."""
        await self._window.acquire()
        self._counter += 1
        token = str(self._counter)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _f: self._window.release())
        self._futures[token] = future
        try:
            await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
        except Exception as exc:
            self._futures.pop(token, None)
            if not future.done():
                future.set_exception(exc)
        return future

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every future still waiting for its ack."""
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(exc)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._futures.pop(token, None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(PublishRejected(503, None, "no stream listens on this subject"))
            return
        try:
            reply = json.loads(msg.data)
        except ValueError:
            future.set_exception(PublishRejected(500, None, f"unreadable ack {msg.data[:80]!r}"))
            return
        error = reply.get("error")
        if error:
            future.set_exception(
                PublishRejected(int(error.get("code", 500)), error.get("err_code"), error.get("description", ""))
            )
            return
        future.set_result(
            PubAck(stream=reply.get("stream", ""), seq=int(reply.get("seq", 0)), duplicate=bool(reply.get("duplicate")))
        )
