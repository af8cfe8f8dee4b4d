"""GET /metrics in the Prometheus text format: commands by route and outcome, latency, group commit, lags, leases."""

from __future__ import annotations

import asyncio
import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.tokens import Tokens
from infra.bootstrap import Container, Runtime
from tests.conftest import Auth, blow, seed_county


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and sorted labels (the parser checks the format on the way)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_commands_and_show_lags_and_leases(
    baton: Container, runtime: Runtime, tokens: Tokens, auth: Auth, nc
) -> None:
    app = create_app(baton, tokens, runtime)  # the runtime is the fixture's, already started
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test") as client:
        before = samples((await client.get("/metrics")).text)
        await seed_county(client, auth)
        whistle = await blow(client, auth)
        key = {"Idempotency-Key": "metrics-1"}
        community = auth("community", "tishu", "wang")
        body = {"community_id": "tishu", "category": "drainage", "title": "t", "description": "d"}
        for _ in range(2):
            r = await client.post("/v1/whistles", json=body, headers={**community, **key})
            assert r.status_code == 201
        wrong = await client.post("/v1/whistles", json={**body, "category": "nope"}, headers=community)
        assert wrong.status_code == 422
        command = {"command_id": "m-1", "whistle_id": whistle}
        await nc.jetstream().publish("baton.dept.HOUSING.cmd.report_in", json.dumps(command).encode())
        await nc.jetstream().publish(
            "baton.dept.HOUSING.cmd.fly", json.dumps({**command, "command_id": "m-2"}).encode()
        )
        await runtime.wait_idle()
        followers = ("relay", "notary", "whistle_board", "department_scorecard", "volunteering", "branches")
        for _ in range(200):  # the department's commands decided, and what they recorded followed everywhere
            found = samples((await client.get("/metrics")).text)
            if value(found, "baton_commands_total", channel="nats", action="unknown", outcome="rejected") and all(
                value(found, "baton_lag_events", follower=f) == 0 for f in followers
            ):
                break
            await asyncio.sleep(0.05)
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    found = samples(response.text)

    def grew(name: str, **labels: str) -> float:
        return value(found, name, **labels) - value(before, name, **labels)

    blows = {"channel": "http", "action": "POST /v1/whistles"}
    assert grew("baton_commands_total", **blows, outcome="accepted") == 2
    assert grew("baton_commands_total", **blows, outcome="replayed") == 1
    assert grew("baton_commands_total", **blows, outcome="rejected") == 1
    assert grew("baton_commands_total", channel="nats", action="report_in", outcome="accepted") == 1
    assert grew("baton_commands_total", channel="nats", action="unknown", outcome="rejected") == 1
    assert grew("baton_http_requests_total", method="POST", route="/v1/whistles", status="201") == 3
    assert grew("baton_http_request_seconds_count", method="POST", route="/v1/whistles") == 4
    assert grew("baton_command_seconds_count", channel="http") >= 4 + 17  # the county's seed commands too
    assert grew("baton_group_commit_commands_count", channel="http") >= 19  # saves of one or more commands
    assert grew("baton_group_commit_commands_count", channel="nats") >= 1
    assert value(found, "baton_store_position") == baton.store.max_position()
    for follower in followers:
        assert ("baton_lag_events", (("follower", follower),)) in found
        assert value(found, "baton_lag_events", follower=follower) == 0
    holder = runtime.leases.holder
    for role in ("relay", "intake", "inbox", "projections", "notary"):
        assert value(found, "baton_lease_holder", role=role, holder=holder) == 1
        assert value(found, "baton_lease_epoch", role=role) >= 1
        assert value(found, "baton_lease_expires_in_seconds", role=role) > 0
