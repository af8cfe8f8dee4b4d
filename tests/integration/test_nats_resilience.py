"""What lets Baton ride out a NATS node's death, piece by piece on one real nats-server: publishes that are refused
for want of a stream are retried until it answers, publishes nobody answers are given up instead of waited for
forever, and the replica setting and cluster URLs are checked before anything connects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, StreamConfig
from pydantic import ValidationError

from infra.bootstrap import Runtime, bootstrap
from infra.jetstream import (
    JetStreamPublisher,
    PublishRejected,
    publish_all,
    publish_in_order,
    rewind_consumer,
    settle,
)
from infra.nats_server import EmbeddedNats
from infra.settings import Settings, nats_servers, without_password
from tests.conftest import stream_messages


@pytest.fixture
async def publisher(nats_server: EmbeddedNats, nc: Client) -> AsyncIterator[JetStreamPublisher]:
    pub = JetStreamPublisher(nc)
    await pub.start()
    yield pub
    await pub.close()


def messages(n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    return [(f"later.{i}", json.dumps(i).encode(), {"Nats-Msg-Id": f"later-{i}"}) for i in range(n)]


async def test_publishes_refused_for_want_of_a_stream_are_sent_again_until_it_answers(
    nc: Client, publisher: JetStreamPublisher
) -> None:
    """As while a stream's leader is being elected: 'no responders', then the stream answers; each stored once."""
    with pytest.raises(PublishRejected) as refused:
        await (await publisher.publish("later.x", b"{}", {"Nats-Msg-Id": "probe"}))
    assert refused.value.code == 503
    sending = asyncio.create_task(publish_all(publisher, messages(20), patience=30.0))
    await asyncio.sleep(1.0)
    assert not sending.done(), "gave up while the stream was missing"
    await nc.jetstream().add_stream(StreamConfig(name="LATER", subjects=["later.>"]))
    await sending
    stored = await stream_messages(nc, "LATER")
    assert sorted(int(m.data) for m in stored) == list(range(20))


async def test_a_publish_nobody_answers_is_given_up_instead_of_waited_for_forever(
    nc: Client, publisher: JetStreamPublisher
) -> None:
    """As a publish that reached a stream leader just before its node died: there is interest, so no 503, and
    no ack ever comes. The waiters give up once no ack has come for a while; the publisher's window is freed."""
    await nc.subscribe("later.>")  # listens and never answers
    futures = [await publisher.publish(subject, data, headers) for subject, data, headers in messages(5)]
    assert not await settle(futures, idle=0.5)
    assert all(f.cancelled() for f in futures)
    with pytest.raises(TimeoutError):
        await publish_all(publisher, messages(5), patience=1.0)
    publisher.ack_timeout = 0.5
    late = await publisher.publish("later.1", b"1", {"Nats-Msg-Id": "late"})
    with pytest.raises(TimeoutError):
        await late  # every future resolves, even one nobody waits for with a timeout of their own


def test_the_replica_setting_is_checked_with_a_clear_message() -> None:
    for wrong in (0, 6):
        with pytest.raises(ValidationError, match="BATON_NATS_REPLICAS must be 1 to 5"):
            Settings(nats_replicas=wrong)
    assert Settings(nats_replicas=3).nats_replicas == 3


def test_a_cluster_url_is_every_server_and_is_shown_without_its_password() -> None:
    url = "nats://baton:s3cret@10.0.0.1:4222, nats://10.0.0.2:4222,,nats://baton:s3cret@[::1]:4223"
    assert Settings(nats_url=url).nats_servers == [
        "nats://baton:s3cret@10.0.0.1:4222",
        "nats://10.0.0.2:4222",
        "nats://baton:s3cret@[::1]:4223",
    ]
    assert without_password(url) == "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://[::1]:4223"
    assert nats_servers("nats://a:1") == ["nats://a:1"]
    with pytest.raises(ValidationError, match="names no server"):
        Settings(nats_url=" , ")


async def test_the_embedded_server_refuses_more_than_one_replica(tmp_path: Path) -> None:
    baton = bootstrap(Settings(data_dir=tmp_path, nats_replicas=3))
    try:
        runtime = Runtime(baton, watch=False)
        with pytest.raises(ValueError, match="needs a NATS cluster"):
            await runtime.start()
        assert runtime.embedded is None
    finally:
        baton.close()


@pytest.mark.parametrize("ordered", [False, True])
async def test_one_departments_outcomes_stay_in_order_when_the_first_is_refused_for_a_while(
    nc: Client, publisher: JetStreamPublisher, ordered: bool
) -> None:
    """The first outcome meets no stream leader (503) and the second finds one, as across an election: pipelined,
    the second is stored first; published in order, each waits for the one before it."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="LATER", subjects=["later.b"]))
    batch = [("later.a", b"1", {"Nats-Msg-Id": "one"}), ("later.b", b"2", {"Nats-Msg-Id": "two"})]

    async def elected() -> None:  # the stream takes the first subject a moment later
        await asyncio.sleep(0.5)
        await js.update_stream(StreamConfig(name="LATER", subjects=["later.a", "later.b"]))

    election = asyncio.create_task(elected())
    if ordered:
        await publish_in_order(publisher, batch, key=lambda message: "PSB", patience=10.0)
    else:
        await publish_all(publisher, batch, patience=10.0)
    await election
    stored = [int(m.data) for m in await stream_messages(nc, "LATER")]
    assert stored == ([1, 2] if ordered else [2, 1])


@pytest.mark.parametrize("rewound", [False, True])
async def test_a_new_holder_rewinds_the_intake_to_its_ack_floor_and_sees_commands_in_order(
    nc: Client, rewound: bool
) -> None:
    """The intake's holder died with commands 2 and 3 delivered but not acked: JetStream would bring them back only
    after the ack wait, behind 4 and 5. Rewound, the new holder gets 2, 3, 4, 5 in order at once."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="CMDS", subjects=["cmds.>"]))
    for i in range(1, 6):
        await js.publish(f"cmds.{i}", str(i).encode())
    dead = await js.pull_subscribe("cmds.>", durable="intake", stream="CMDS", config=ConsumerConfig(ack_wait=30))
    first, *taken = await dead.fetch(3, timeout=2)
    await first.ack_sync()
    assert [int(m.data) for m in taken] == [2, 3]  # delivered, never acked: their holder died
    if rewound:
        assert await rewind_consumer(nc, "CMDS", "intake") == 2
        assert await rewind_consumer(nc, "CMDS", "intake") is None  # nothing outstanding any more
    new = await js.pull_subscribe_bind(durable="intake", stream="CMDS")
    got = [int(m.data) for m in await new.fetch(4, timeout=2)]
    assert got == ([2, 3, 4, 5] if rewound else [4, 5])
