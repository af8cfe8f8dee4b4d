"""Notifications for the SMS/WeChat gateway on Baton's authenticated embedded nats-server: what a resident must hear
of, with their contact in clear for the gateway's login only, each once across a restart; deadlines about to lapse."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from infra.bootstrap import Container, Runtime
from infra.clock import ManualClock
from infra.jetstream import NOTIFY_DURABLE, NOTIFY_STREAM, department_durable
from infra.nats_auth import JS_API_PREFIX, Credentials, NatsAuth
from infra.settings import Settings
from services.access import Actor, Context, Role
from services.reports import resident
from tests.conftest import seed_county_direct

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

STAFF = Context(actor=Actor(Role.COMMUNITY, "tishu", "wang"), correlation_id="notify-test")


async def connect(runtime: Serving, creds: Credentials, errors: list[str]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        runtime.url,
        user=creds.user,
        password=creds.password,
        inbox_prefix=creds.inbox_prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )


async def fetch(nc: Client, want: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Notifications from the gateway's durable until `want` arrived (or timeout), acked; then a short wait for more."""
    js = nc.jetstream(prefix=JS_API_PREFIX, timeout=2)
    sub = await js.pull_subscribe_bind(durable=NOTIFY_DURABLE, stream=NOTIFY_STREAM)
    got: list[dict[str, Any]] = []
    assert not nc.is_closed
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            msgs = await sub.fetch(50, timeout=0.5)
        except TimeoutError:
            if len(got) >= want:
                break
            continue
        for msg in msgs:
            got.append({"subject": msg.subject, **json.loads(msg.data)})
            await msg.ack()
    await sub.unsubscribe()
    return got


class Serving:
    """Baton's runtime with its embedded, authenticated nats-server; restarted as a new Runtime, as a process would."""

    def __init__(self, baton: Container) -> None:
        self.baton = baton
        self.runtime = Runtime(baton, watch=False)

    @property
    def url(self) -> str:
        return self.runtime.url

    async def restart(self) -> None:
        await self.runtime.stop()
        self.runtime = Runtime(self.baton, watch=False)
        await self.runtime.start()


@pytest.fixture
async def served(baton: Container) -> AsyncIterator[Serving]:
    seed_county_direct(baton)
    baton.settings.watch_interval = 0.2
    serving = Serving(baton)
    await serving.runtime.start()
    yield serving
    await serving.runtime.stop()


def raise_report(baton: Container) -> tuple[str, str]:
    receipt = baton.reports.raise_report(
        STAFF,
        channel="hotline_12345",
        category="drainage",
        description="Sewage at building 3",
        community_id="tishu",
        address="提署路 3 号",
        reporter={"name": "李阿姨", "phone": "13900001111"},
    )
    return receipt.body["report_id"], receipt.body["tracking_code"]


async def test_the_gateway_hears_each_change_once_with_the_contact_and_no_one_else_can_read_it(
    served: Serving, baton: Container, settings: Settings
) -> None:
    auth = NatsAuth.load(settings.data_dir, settings.nats_secret)
    rid, code = raise_report(baton)
    baton.reports.accept(STAFF, rid)
    baton.reports.resolve(STAFF, rid, result="drain cleared")
    baton.reports.rate_by_code(Context(actor=resident("tracking"), correlation_id="r"), code, rating="dissatisfied")
    errors: list[str] = []
    gateway = await connect(served, auth.notifier(), errors)
    try:
        notes = await fetch(gateway, 4)
        assert [n["kind"] for n in notes] == ["received", "accepted", "result", "reopened"]
        assert {n["subject"] for n in notes} == {f"baton.notify.resident.{rid}"}
        assert notes[0]["contact"] == {"name": "李阿姨", "phone": "13900001111", "address": None}
        assert notes[2]["detail"] == "drain cleared" and notes[0]["community_id"] == "tishu"
        assert code not in json.dumps(notes)

    finally:
        await gateway.close()
    await served.restart()  # BATON_EVENTS hands the new notifier everything again; nothing is sent twice
    baton.reports.resolve(STAFF, rid, result="pipe relaid")
    gateway = await connect(served, auth.notifier(), errors)
    try:
        later = await fetch(gateway, 1, timeout=10)
        assert [n["kind"] for n in later] == ["result"], later
    finally:
        await gateway.close()

    housing = await connect(served, auth.department("HOUSING"), errors)
    try:
        with pytest.raises(Exception):  # noqa: B017 - a denied API call times out or answers no responders
            await housing.jetstream(prefix=JS_API_PREFIX, timeout=1).consumer_info(NOTIFY_STREAM, NOTIFY_DURABLE)
        await housing.subscribe("baton.notify.>")
        await housing.flush()
        await asyncio.sleep(0.3)
        assert any("permissions violation" in e.lower() and "baton.notify" in e.lower() for e in errors), errors
    finally:
        await housing.close()
    auditor = await connect(served, auth.auditor(), errors)
    try:
        await auditor.subscribe("baton.notify.>")
        await auditor.flush()
        await asyncio.sleep(0.3)
        assert sum("baton.notify" in e.lower() for e in errors) >= 2, errors
    finally:
        await auditor.close()
    gateway = await connect(served, auth.notifier(), errors)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the gateway reads notifications, nothing else
            await gateway.jetstream(prefix=JS_API_PREFIX, timeout=1).consumer_info(
                "BATON_DEPT", department_durable("HOUSING")
            )
    finally:
        await gateway.close()


async def test_a_deadline_about_to_lapse_is_told_to_the_community_once(
    served: Serving, baton: Container, settings: Settings, clock: ManualClock
) -> None:
    auth = NatsAuth.load(settings.data_dir, settings.nats_secret)
    rid, _ = raise_report(baton)
    await served.runtime.wait_idle()
    clock.advance(timedelta(hours=23))  # triage is due at 24 h: within the two hours' warning
    errors: list[str] = []
    gateway = await connect(served, auth.notifier(), errors)
    try:
        notes = await fetch(gateway, 2, timeout=10)
        warned = [n for n in notes if n["kind"] == "deadline_near"]
        assert [n["subject"] for n in warned] == ["baton.notify.community.tishu"], notes
        assert warned[0]["report_id"] == rid and warned[0]["status"] == "received"
        await asyncio.sleep(1.0)  # several more ticks of the warner
        assert [n["kind"] for n in await fetch(gateway, 0, timeout=1)] == []
    finally:
        await gateway.close()
