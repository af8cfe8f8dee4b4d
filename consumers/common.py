"""Pieces the FastStream handlers share, and a fix for FastStream 0.7.8's batched pull loop.

FastStream's BatchPullStreamSubscriber keeps re-fetching until the batch is full or its timeout is
spent. Near the end of that window nats-py 2.16 raises a bare TimeoutError (js/client.py, _fetch_n),
which FastStream does not catch (it expects nats.errors.TimeoutError): the batch gathered so far is
dropped unacknowledged and waits out the consumer's ack_wait (30 s) before redelivery. Measured here:
2 % of sporadic messages delayed 30 s. `install_prompt_batches` replaces that loop with one that hands
over whatever a single fetch returns (nats-py returns as soon as messages are there), and never drops
a fetched batch. It replaces a private method, so it is installed only when asked (the composition root does at
start-up, infra.bootstrap.install_patches) and only on the FastStream version it was written for.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

import anyio
import structlog
from faststream import Context
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from nats.aio.client import Client
from nats.errors import ConnectionClosedError
from nats.js.api import ConsumerConfig

from infra.jetstream import ensure_consumer
from infra.patches import require_version

log = structlog.get_logger("baton.consumers")

BatchMessage = Annotated[NatsBatchMessage, Context("message")]
"""The batch as received: raw messages with subjects, headers and stream sequences."""

FETCH_WAIT = 1.0
"""Seconds one pull request lingers on the server when nothing is there (not a delay: it returns on arrival)."""
MIN_BACKOFF, MAX_BACKOFF = 0.1, 1.0
"""Seconds between fetches while they fail: the first retry comes soon, an election (~5 s) is polled each second."""


def pull(batch_size: int) -> PullSub[Any]:
    return PullSub(batch_size=batch_size, timeout=FETCH_WAIT, batch=True)


def stream(name: str) -> JStream:
    """A stream Baton declares itself (infra.jetstream.ensure_streams), so FastStream must not."""
    return JStream(name, declare=False)


async def raw_bodies(msg: StreamMessage[Any]) -> Any:
    """Leave bodies as bytes: the handler parses (and rejects) them itself."""
    return msg.body


async def _consume_promptly(self: BatchPullStreamSubscriber) -> None:
    """Hand each fetch's messages to the handler at once; a fetched batch is never dropped.

    While the consumer has no leader (its node died, an election runs: 'no responders', 503) fetches fail at
    once; the loop backs off, logs the interruption once and, when messages flow again, how long it lasted.
    """
    assert self.subscription, "You should call `create_subscription` at first."
    durable = self.config.durable_name
    failing_since: float | None = None
    failures, backoff = 0, MIN_BACKOFF
    while self.running:
        try:
            messages = await self.subscription.fetch(batch=self.pull_sub.batch_size, timeout=self.pull_sub.timeout)
        except TimeoutError:
            continue
        except ConnectionClosedError:
            return
        except Exception as exc:
            failures += 1
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("pull_interrupted", consumer=durable, error=repr(exc))
            else:
                log.debug("pull_failed", consumer=durable, error=repr(exc), failures=failures)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        if failing_since is not None and messages:
            stalled = round(time.monotonic() - failing_since, 2)
            log.warning("pull_recovered", consumer=durable, stalled_s=stalled, failed_fetches=failures)
            failing_since, failures, backoff = None, 0, MIN_BACKOFF
        if messages and self.running:
            await self.consume(messages)


def durables(broker: NatsBroker) -> list[tuple[str, ConsumerConfig]]:
    """The stream and durable consumer of each batched pull subscriber: what Baton creates before FastStream binds.

    The same configuration FastStream would create (nats-py's pull_subscribe only creates a consumer it cannot
    find), without a replica count: JetStream then gives the consumer as many as its stream.
    """
    found = []
    for sub in broker.subscribers:
        if isinstance(sub, BatchPullStreamSubscriber) and sub.stream is not None and sub.config.durable_name:
            config = dataclasses.replace(
                sub.config, filter_subject=sub.subject.broker_address, filter_subjects=None, num_replicas=None
            )
            found.append((sub.stream.name, config))
    return found


async def ensure_durables(nc: Client, broker: NatsBroker, replicas: int) -> None:
    """Create each subscriber's durable consumer, or raise its replicas to REPLICAS (never lowering them)."""
    for stream_name, config in durables(broker):
        await ensure_consumer(nc, stream_name, config, replicas)


FASTSTREAM_VERSION = "0.7.8"
"""The FastStream whose BatchPullStreamSubscriber._consume_pull (a private method) _consume_promptly replaces: read
for 0.7.8 with nats-py 2.16, both pinned in pyproject.toml. Another version may have fixed the loop, or renamed
what _consume_promptly uses (self.subscription, self.pull_sub, self.running, self.consume)."""


def install_prompt_batches() -> None:
    """Use the prompt pull loop for every batched pull subscriber; UnexpectedVersion on another FastStream."""
    require_version("faststream", FASTSTREAM_VERSION, "consumers.common.install_prompt_batches")
    if BatchPullStreamSubscriber._consume_pull is not _consume_promptly:
        BatchPullStreamSubscriber._consume_pull = _consume_promptly  # type: ignore[method-assign]
        log.debug("patch_installed", patch="prompt_batches", faststream=FASTSTREAM_VERSION)
