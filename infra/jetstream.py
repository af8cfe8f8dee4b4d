"""JetStream streams of the public contract, and a pipelined publisher whose every ack or error arrives.

nats-py's own publish_async leaves a future pending forever when the server answers with an error
(nats-io/nats.py#985: APIError.from_error raises inside the reply callback), which would hang the
relay exactly when it must notice a rejected publish. This publisher resolves every future.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServerError, ServiceUnavailableError

log = structlog.get_logger("baton.jetstream")
T = TypeVar("T")

EVENTS_STREAM = "BATON_EVENTS"
AUDIT_STREAM = "BATON_AUDIT"
INTAKE_STREAM = "BATON_INTAKE"
DEPT_STREAM = "BATON_DEPT"
NOTIFY_STREAM = "BATON_NOTIFY"

SECOND = 1_000_000_000
"""JetStream's API counts durations in nanoseconds."""

STREAMS: dict[str, dict[str, Any]] = {
    EVENTS_STREAM: {
        "description": "Every Baton domain event, in store order, once.",
        "subjects": ["baton.evt.>"],
        "storage": StorageType.FILE.value,
        "retention": RetentionPolicy.LIMITS.value,
        "discard": DiscardPolicy.NEW.value,
        "deny_delete": True,
        "deny_purge": True,
        "duplicate_window": 120 * SECOND,
    },
    INTAKE_STREAM: {
        "description": "Every command a department system sent, accepted or not.",
        "subjects": ["baton.dept.*.cmd.>"],
        "storage": StorageType.FILE.value,
        "retention": RetentionPolicy.LIMITS.value,
        "deny_delete": True,
        "deny_purge": True,
        "duplicate_window": 120 * SECOND,
    },
    AUDIT_STREAM: {
        "description": "Signed checkpoints of the Merkle tree over BATON_EVENTS (C2SP signed notes).",
        "subjects": ["baton.audit.>"],
        "storage": StorageType.FILE.value,
        "retention": RetentionPolicy.LIMITS.value,
        "deny_delete": True,
        "deny_purge": True,
        "duplicate_window": 600 * SECOND,
    },
    DEPT_STREAM: {
        "description": "What each department must see (inbox events, command outcomes), kept until it reads it.",
        "subjects": ["baton.dept.*.inbox.>", "baton.dept.*.outcome"],
        "storage": StorageType.FILE.value,
        "retention": RetentionPolicy.WORK_QUEUE.value,
        "duplicate_window": 600 * SECOND,
    },
    NOTIFY_STREAM: {
        "description": "Notifications for the SMS/WeChat gateway (residents' contact details in clear), kept 30 days.",
        "subjects": ["baton.notify.>"],
        "storage": StorageType.FILE.value,
        "retention": RetentionPolicy.LIMITS.value,
        "max_age": 30 * 24 * 3600 * SECOND,
        "duplicate_window": 600 * SECOND,
    },
}
"""What Baton's contract fixes in each stream, as JetStream's API spells it. Everything else in a stream's
configuration (limits, placement, compression, ...) is the operator's and is left as found."""
COMPLETE_STREAMS = (EVENTS_STREAM, AUDIT_STREAM)
"""Streams an auditor replays from the first message: a limit that drops old messages breaks that."""


CONSUMER_NOT_UNIQUE = 10100
"""JetStream's err_code for a consumer whose filter overlaps another's on a work-queue stream."""
CONSUMER_EXISTS = 10148
"""JetStream's err_code for creating a consumer that another Baton instance created meanwhile."""
REPLICAS_EXCEED_STREAM = 10126
"""JetStream's err_code for a consumer with more replicas than its stream has yet (still scaling up)."""
SCALE_WAIT = 60.0
"""Seconds a start waits for a stream whose replicas it raised to reach them (about 10 s here)."""
NOTIFY_DURABLE = "notify_gateway"
"""The gateway's durable pull consumer on BATON_NOTIFY (created by Baton; the gateway only binds)."""
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


def notify_consumer() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=NOTIFY_DURABLE,
        description="The notification gateway's read of BATON_NOTIFY: each notification until it is acked.",
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


UNAVAILABLE = (TimeoutError, NoRespondersError, ServiceUnavailableError)
"""What JetStream answers (or fails to) while it has no leader for the call: during an election, or a node down.
nats-py's TimeoutError is the builtin's subclass."""


async def patiently(what: str, step: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run STEP, retried with backoff for up to TIMEOUT seconds while JetStream is unavailable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    backoff, attempts = 0.2, 0
    while True:
        attempts += 1
        try:
            return await step()
        except UNAVAILABLE as exc:
            if loop.time() + backoff > deadline:
                raise JetStreamSetupError(
                    f"JetStream did not answer ({what}) within {timeout:.0f}s: {exc!r}; is a JetStream leader elected?"
                ) from exc
            log.warning("jetstream_unavailable", step=what, attempt=attempts, error=repr(exc), retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


class JetStreamSetupError(RuntimeError):
    """A stream or consumer Baton needs could not be created as configured; the message says what to change."""


async def jetstream_api(
    nc: Client, call: str, body: dict[str, Any] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """One request to Baton's account's JetStream API ($JS.API.CALL) with the raw JSON both ways.

    Raw, because a configuration read and written back through nats-py's dataclasses loses every field they do
    not model, which an update would then reset. An error reply is raised as nats-py's APIError subclass.
    """
    payload = json.dumps(body).encode() if body is not None else b""
    reply = json.loads((await nc.request(f"$JS.API.{call}", payload, timeout=timeout)).data)
    if "error" in reply:
        APIError.from_error(reply["error"])  # raises
    return dict(reply)


def replicas_of(info: dict[str, Any]) -> int:
    """How many copies a stream or consumer has now, from its info: its leader and the followers it lists (without
    a leader yet, the list holds every peer); outside a cluster, one."""
    cluster = info.get("cluster") or {}
    peers = len(cluster.get("replicas") or [])
    return peers + 1 if cluster.get("leader") else max(peers, 1)


async def ensure_streams(nc: Client, replicas: int = 1) -> dict[str, int]:
    """Create the contract's streams, or bring their contract fields up to date; and the auditor's consumers.

    Returns each stream's replica count as configured now. Replicas and the dedupe window are never lowered: a
    stream with more replicas (or a longer window) than configured keeps them; one with fewer is raised.
    """
    counts = {name: await ensure_stream(nc, name, contract, replicas) for name, contract in STREAMS.items()}
    for stream in (EVENTS_STREAM, AUDIT_STREAM):
        await ensure_consumer(nc, stream, auditor_consumer(stream), replicas)
    await ensure_consumer(nc, NOTIFY_STREAM, notify_consumer(), replicas)
    return counts


async def ensure_stream(nc: Client, name: str, contract: dict[str, Any], replicas: int) -> int:
    """Create stream NAME with the contract and REPLICAS, or update the contract fields of the existing one."""
    try:
        info = await jetstream_api(nc, f"STREAM.INFO.{name}")
    except NotFoundError:
        try:
            await jetstream_api(nc, f"STREAM.CREATE.{name}", {"name": name, **contract, "num_replicas": replicas})
        except (BadRequestError, ServerError) as exc:
            raise JetStreamSetupError(
                f"cannot create stream {name} with {replicas} replicas: {exc.description}; BATON_NATS_REPLICAS "
                "must not exceed the JetStream servers that can hold it (1 on a single nats-server)"
            ) from exc
        log.info("stream_created", stream=name, replicas=replicas)
        return replicas
    current: dict[str, Any] = info["config"]
    wanted = {**current, **contract}
    have = int(current.get("num_replicas") or 1)
    wanted["num_replicas"] = max(have, replicas)
    window = max(int(current.get("duplicate_window") or 0), contract["duplicate_window"])
    if current.get("max_age"):  # JetStream refuses a dedupe window longer than the stream keeps messages
        window = min(window, int(current["max_age"]))
    wanted["duplicate_window"] = window
    if have > replicas:
        log.info("stream_replicas_kept", stream=name, replicas=have, configured=replicas)
    if name in COMPLETE_STREAMS and any(
        int(current.get(limit) or -1) > 0 for limit in ("max_age", "max_msgs", "max_bytes")
    ):
        log.warning(
            "stream_limited",
            stream=name,
            max_age_s=int(current.get("max_age") or 0) / SECOND,
            max_msgs=current.get("max_msgs"),
            max_bytes=current.get("max_bytes"),
            note="kept as the operator set it; an auditor replaying the stream will not find old messages",
        )
    changed = sorted(key for key, value in wanted.items() if current.get(key) != value)
    if not changed:
        return have
    try:
        await jetstream_api(nc, f"STREAM.UPDATE.{name}", wanted)
    except (BadRequestError, ServerError) as exc:
        if changed != ["num_replicas"]:
            raise JetStreamSetupError(
                f"cannot bring stream {name} up to date ({', '.join(changed)}): {exc.description}"
            ) from exc
        # A node down (or too few for the setting): the stream works on with the copies it has; next start retries.
        log.error("stream_replicas_not_raised", stream=name, replicas=have, configured=replicas, error=exc.description)
        return have
    log.info("stream_updated", stream=name, fields=changed, replicas=wanted["num_replicas"], had_replicas=have)
    if wanted["num_replicas"] > have:
        await _scaled(nc, name, int(wanted["num_replicas"]))
    return int(wanted["num_replicas"])


async def _scaled(nc: Client, name: str, replicas: int, timeout: float = SCALE_WAIT) -> None:
    """Wait while JetStream copies stream NAME to its new peers (seconds); its consumers follow only then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    have = 0
    while True:
        try:
            have = replicas_of(await jetstream_api(nc, f"STREAM.INFO.{name}", timeout=2.0))
        except UNAVAILABLE:  # the stream moves to its new peer group and elects a leader there
            pass
        if have >= replicas:
            break
        if loop.time() > deadline:
            log.warning("stream_still_scaling", stream=name, replicas=have, configured=replicas, waited_s=timeout)
            return
        await asyncio.sleep(0.25)
    log.info("stream_scaled", stream=name, replicas=replicas)


async def ensure_department_consumers(nc: Client, codes: list[str], replicas: int = 1) -> None:
    """A durable consumer on BATON_DEPT for each department, so department credentials never need to create one.

    A department system that made its own consumer on its subjects (before logins existed) keeps it: a work
    queue admits one consumer per subject, so Baton then leaves that department's alone.
    """
    for code in codes:
        try:
            await ensure_consumer(nc, DEPT_STREAM, department_consumer(code), replicas)
        except BadRequestError as exc:
            if exc.err_code != CONSUMER_NOT_UNIQUE:
                raise
            log.warning("department_consumer_taken", department=code, error=exc.description)


async def ensure_consumer(nc: Client, stream: str, config: ConsumerConfig, replicas: int = 1) -> None:
    """Create durable consumer CONFIG on STREAM if missing; raise its replicas if it has fewer than REPLICAS.

    A new consumer gets no replica count of its own, which JetStream reads as 'as many as the stream' (and keeps
    following when the stream is scaled); a work-queue stream admits no other count. One with an explicit count
    below REPLICAS is set to follow its stream; one with REPLICAS or more keeps them.
    """
    durable = config.durable_name
    assert durable is not None and config.num_replicas is None
    try:
        info = await jetstream_api(nc, f"CONSUMER.INFO.{stream}.{durable}")
    except NotFoundError:
        body = {"stream_name": stream, "config": config.as_dict(), "action": "create"}
        try:
            await jetstream_api(nc, f"CONSUMER.CREATE.{stream}.{durable}", body)
        except BadRequestError as exc:
            if exc.err_code != CONSUMER_EXISTS:
                raise
        return
    current: dict[str, Any] = info["config"]
    explicit = int(current.get("num_replicas") or 0)
    if explicit == 0 or explicit >= replicas:
        if explicit > replicas:
            log.info("consumer_replicas_kept", stream=stream, consumer=durable, replicas=explicit, configured=replicas)
        return
    body = {"stream_name": stream, "config": {**current, "num_replicas": 0}, "action": "update"}
    try:
        await jetstream_api(nc, f"CONSUMER.CREATE.{stream}.{durable}", body)
    except BadRequestError as exc:
        if exc.err_code != REPLICAS_EXCEED_STREAM:
            raise
        log.warning("consumer_replicas_not_raised", stream=stream, consumer=durable, error=exc.description)
        return
    log.info("consumer_replicas_raised", stream=stream, consumer=durable, had_replicas=explicit, replicas="stream's")


async def retire_consumers(nc: Client, stream: str, durables: Iterable[str]) -> list[str]:
    """Delete durable consumers a former release made on STREAM, where they are still found; the ones deleted."""
    retired = []
    for durable in durables:
        try:
            await jetstream_api(nc, f"CONSUMER.DELETE.{stream}.{durable}")
        except NotFoundError:
            continue
        retired.append(durable)
        log.info("consumer_retired", stream=stream, consumer=durable)
    return retired


async def rewind_consumer(nc: Client, stream: str, durable: str) -> int | None:
    """Have a durable consumer deliver everything after its ack floor again, in order; the first sequence it will
    deliver, or None when it has nothing outstanding (or does not exist yet).

    A message delivered to a consumer whose process died comes back only after its ack wait, behind messages
    delivered since: the intake would then decide a department's commands out of the order sent. Its new lease
    holder rewinds it first. Messages above the floor that were acked come again too, and are answered from the
    command log under the same outcome id, which JetStream drops as a repeat.
    """
    try:
        info = await jetstream_api(nc, f"CONSUMER.INFO.{stream}.{durable}")
    except NotFoundError:
        return None
    if not info.get("num_ack_pending") and not info.get("num_redelivered"):
        return None
    start = int(info["ack_floor"]["stream_seq"]) + 1
    config = {k: v for k, v in info["config"].items() if k not in ("opt_start_time", "opt_start_seq")}
    config.update(deliver_policy="by_start_sequence", opt_start_seq=start)
    await jetstream_api(nc, f"CONSUMER.DELETE.{stream}.{durable}")
    await jetstream_api(nc, f"CONSUMER.CREATE.{stream}.{durable}", {"stream_name": stream, "config": config})
    log.info("consumer_rewound", stream=stream, consumer=durable, from_seq=start, pending=info.get("num_ack_pending"))
    return start


Message = tuple[str, bytes, dict[str, str]]
"""(subject, payload, headers) of one message to publish."""
MIN_BACKOFF, MAX_BACKOFF = 0.1, 1.0
"""Seconds between sends again of publishes refused for want of a stream leader."""
ACK_IDLE = 3.0
"""Seconds without any ack after which publishes still in flight are given up (acks normally take milliseconds)."""


def _leaderless(error: BaseException) -> bool:
    """Whether a publish failed for a reason that passes: no stream leader (an election), no answer, disconnected."""
    if isinstance(error, PublishRejected):
        return error.code == 503
    return isinstance(error, (TimeoutError, ConnectionError))


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
    """Publishes to JetStream with many messages in flight; each returns a future of its PubAck.

    Every future resolves: with the ack, the server's refusal, or TimeoutError after ACK_TIMEOUT seconds (a
    publish that reached a stream leader as its node died is never answered).
    """

    def __init__(self, nc: Client, max_pending: int = 2000, ack_timeout: float = 10.0) -> None:
        self._nc = nc
        self.ack_timeout = ack_timeout
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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAck] = loop.create_future()
        expiry = loop.call_later(self.ack_timeout, self._expire, token)
        future.add_done_callback(lambda _f: (self._window.release(), expiry.cancel()))
        self._futures[token] = future
        try:
            await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
        except Exception as exc:
            self._futures.pop(token, None)
            if not future.done():
                future.set_exception(exc)
        return future

    def _expire(self, token: str) -> None:
        future = self._futures.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(TimeoutError(f"no ack within {self.ack_timeout}s"))

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
            future.set_exception(
                PublishRejected(503, None, "no responders: no stream on this subject, or its leader is being elected")
            )
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


async def settle(futures: Sequence[asyncio.Future[PubAck]], idle: float = ACK_IDLE, first_error: bool = False) -> bool:
    """Wait for publish futures until all are done, IDLE seconds pass without any of them finishing, or (with
    FIRST_ERROR) one fails; cancel those still waiting. True if all finished.

    Progress, not a deadline: a busy server acking slowly is waited for; a stream leader that died with
    publishes in flight never answers them, and they are given up after IDLE seconds.
    """
    loop = asyncio.get_running_loop()
    last = loop.time()

    def progressed(_: asyncio.Future[PubAck]) -> None:
        nonlocal last
        last = loop.time()

    pending = {future for future in futures if not future.done()}
    for future in pending:
        future.add_done_callback(progressed)
    when = asyncio.FIRST_EXCEPTION if first_error else asyncio.ALL_COMPLETED
    try:
        while pending:
            done, pending = await asyncio.wait(pending, timeout=idle, return_when=when)
            if first_error and any(f.exception() is not None for f in done if not f.cancelled()):
                break
            if pending and loop.time() - last >= idle:
                break
    finally:
        for future in pending:
            future.cancel()  # frees its place in the publisher's window
    return not pending


async def publish_all(
    publisher: JetStreamPublisher, messages: Sequence[Message], patience: float = 20.0
) -> list[PubAck]:
    """Publish MESSAGES and wait for every ack; the acks, in the order of MESSAGES. Those refused for want of a stream
    leader, unanswered, or cut off by a disconnection are sent again, in order, with backoff for up to PATIENCE
    seconds; then the error is raised. Each message must carry a Nats-Msg-Id, so that JetStream drops a repeat of one
    it stored."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    started, backoff, todo, attempts = loop.time(), MIN_BACKOFF, list(range(len(messages))), 0
    acks: dict[int, PubAck] = {}
    while True:
        attempts += 1
        futures = [await publisher.publish(*messages[i]) for i in todo]
        await settle(futures)
        errors = [_error(future) for future in futures]
        for i, future, error in zip(todo, futures, errors, strict=True):
            if error is None:
                acks[i] = future.result()
        failed = [i for i, error in zip(todo, errors, strict=True) if error is not None]
        if not failed:
            if attempts > 1:
                log.info(
                    "publish_recovered",
                    messages=len(messages),
                    attempts=attempts,
                    stalled_s=round(loop.time() - started, 2),
                )
            return [acks[i] for i in range(len(messages))]
        error = next(e for e in errors if e is not None)
        if not _leaderless(error) or loop.time() + backoff > deadline:
            raise error
        (log.info if attempts == 1 else log.debug)(
            "publish_retry", failed=len(failed), of=len(messages), error=repr(error), retry_in_s=backoff
        )
        await asyncio.sleep(backoff)
        backoff, todo = min(backoff * 2, MAX_BACKOFF), failed


async def publish_in_order(
    publisher: JetStreamPublisher, messages: Sequence[Message], key: Callable[[Message], str], patience: float = 20.0
) -> None:
    """Publish MESSAGES so that those with one KEY are stored in the order given, even across a leader's death.

    Pipelined, a message refused by a dying leader and sent again lands after later ones the new leader took
    (and a repeat of those is dropped as a duplicate), so each key's messages go one at a time, each after the
    one before it is acked; different keys go side by side.
    """
    queues: dict[str, list[Message]] = {}
    for message in messages:
        queues.setdefault(key(message), []).append(message)

    async def one_by_one(queue: list[Message]) -> None:
        for message in queue:
            await publish_all(publisher, [message], patience)

    results = await asyncio.gather(*(one_by_one(q) for q in queues.values()), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _error(future: asyncio.Future[PubAck]) -> BaseException | None:
    if future.cancelled():
        return TimeoutError(f"no ack within {ACK_IDLE}s of the last one")
    return future.exception()
