"""One instance against three: HTTP commands per second through a load balancer's round robin, and how long a
failover takes. Three `baton serve` on the local PostgreSQL and a 3-node NATS cluster (infra.installation).

    .venv/bin/python -m bench.instances [--seconds 20] [--clients 16]

On a 2-core machine three instances (six processes, three NATS nodes and PostgreSQL) share the same two cores:
this shows what running several costs or gains here, not what three machines would do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from infra.installation import Installation

PG = "postgresql://postgres@127.0.0.1:5432/test"
COUNTY = [
    ("/v1/org/units", {"id": "dangtu", "kind": "district", "name": "当涂县"}),
    ("/v1/org/units", {"id": "gushu", "kind": "street", "parent": "dangtu", "name": "姑孰镇"}),
    ("/v1/org/units", {"id": "tishu", "kind": "community", "parent": "gushu", "name": "提署社区", "residents": 12000}),
    ("/v1/org/departments", {"code": "HOUSING", "name": "住建局"}),
    ("/v1/org/categories", {"code": "drainage", "name": "排水", "duty": "department", "departments": ["HOUSING"]}),
]
WHISTLE = {"community_id": "tishu", "category": "drainage", "title": "Blocked drain", "description": "bench"}


async def load(urls: list[str], headers: dict[str, str], clients: int, seconds: float) -> dict[str, Any]:
    """CLIENTS closed-loop clients blowing whistles for SECONDS, each request to the next URL in turn."""
    turn = 0
    done, failed = 0, 0
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal turn, done, failed
        while time.monotonic() < deadline:
            url, turn = urls[turn % len(urls)], turn + 1
            try:
                r = await http.post(f"{url}/v1/whistles", json=WHISTLE, headers=headers)
                done, failed = done + (r.status_code == 201), failed + (r.status_code != 201)
            except httpx.HTTPError:
                failed += 1

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=clients * 2)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return {"commands_per_s": round(done / (time.monotonic() - started), 1), "failed": failed}


async def failover(installation: Installation, headers: dict[str, str]) -> dict[str, float]:
    """kill -9 of the instance holding the relay under load: when the lease moved, and the longest pause in
    relaying and in the read models from the kill until 20 s after it."""
    first = installation.instances[0]
    async with httpx.AsyncClient(timeout=5.0) as http:
        leases = (await http.get(f"{first.url}/health")).json()["leases"]
        victim = next(i for i in installation.instances if leases["relay"]["holder"].startswith(f"{i.name}/"))
        watcher = next(i for i in installation.instances if i is not victim)
        others = [i.url for i in installation.instances if i is not victim]
        background = asyncio.create_task(load(others, headers, 4, 22.0))
        await asyncio.sleep(2.0)
        assert victim.process is not None
        killed = time.monotonic()
        victim.process.kill()
        figures: dict[str, float] = {}
        last: dict[str, tuple[int, float]] = {}  # what: (value, when it last grew)
        stall = {"relay": 0.0, "views": 0.0}
        while time.monotonic() - killed < 20:
            health = (await http.get(f"{watcher.url}/health")).json()
            now = time.monotonic() - killed
            if "lease_moved_s" not in figures and not health["leases"]["relay"]["holder"].startswith(f"{victim.name}/"):
                figures["lease_moved_s"] = round(now, 2)
            seen = {
                "relay": health["relay"]["published"] or 0,
                "views": min(p["position"] for p in health["projections"].values()),
            }
            for what, value in seen.items():
                previous, since = last.get(what, (value, 0.0))
                if value > previous or what not in last:
                    stall[what] = max(stall[what], now - since) if what in last else 0.0
                    last[what] = (value, now)
            await asyncio.sleep(0.05)
        await background
        await asyncio.to_thread(victim.stop)
    figures["relay_longest_pause_s"] = round(max(stall["relay"], 20 - last["relay"][1]), 2)
    figures["views_longest_pause_s"] = round(max(stall["views"], 20 - last["views"][1]), 2)
    return figures


async def main(seconds: float, clients: int) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="baton-bench-instances-"))
    installation = Installation(root, f"{PG}?schema={schema}")
    try:
        await installation.start(BATON_RATE_LIMIT="0", BATON_LOG_LEVEL="warning")
        token = installation.baton("token", "issue", "--role", "admin", "--actor", "bench").strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=10.0) as http:
            for path, body in COUNTY:
                r = await http.post(f"{installation.instances[0].url}{path}", json=body, headers=headers)
                assert r.status_code == 201, r.text
        urls = [i.url for i in installation.instances]
        one = await load(urls[:1], headers, clients, seconds)
        three = await load(urls, headers, clients, seconds)
        result = {
            "clients": clients,
            "seconds": seconds,
            "one_instance": one,
            "three_instances": three,
            "ratio": round(three["commands_per_s"] / one["commands_per_s"], 2),
            "failover": await failover(installation, headers),
        }
    finally:
        await installation.stop()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.seconds, args.clients)), indent=1))
