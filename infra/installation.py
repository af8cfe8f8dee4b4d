"""A whole installation on one machine, as an operator would run it on three: a 3-node NATS cluster and three
`baton serve` instances on the local PostgreSQL, sharing one master key, with the demo county. For trying out
scale-out and failover (`make cluster`) and for `bench.instances`; not for production (one machine is one
failure domain).

    make cluster    # python -m infra.installation var/installation: until Ctrl-C; prints the URLs
    make nats-cluster    # python -m infra.installation --nats-only var/cluster: only the NATS nodes

What the instances share is exactly what the README's "Running several instances" says: BATON_STORE,
BATON_MASTER_KEY, BATON_NATS_URL and BATON_NATS_REPLICAS. Each has its own data dir, HTTP port and name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from infra.bootstrap import bootstrap
from infra.keys import kept_secret
from infra.logging import configure_logging
from infra.nats_auth import NatsAuth, load_nats_secret
from infra.nats_cluster import NatsCluster
from infra.settings import Settings

log = structlog.get_logger("baton.installation")

BATON = str(Path(sys.executable).parent / "baton")
STORE = "postgresql://postgres@127.0.0.1:5432/test?schema=baton_installation"


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Instance:
    """One `baton serve` of the installation: its name, data dir, port and (while it runs) process."""

    name: str
    data_dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "serve.log").open("ab") as out:
            self.process = subprocess.Popen([BATON, "serve"], env=self.env, stdout=out, stderr=out)

    async def healthy(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self.process is not None
        return await until_healthy(self.process, self.url, self.data_dir / "serve.log", timeout)

    def stop(self) -> None:
        terminate(self.process)


class Installation:
    """The cluster and the instances under ROOT, on STORE; the master key is kept in ROOT/master.key."""

    def __init__(self, root: Path, store: str = STORE, count: int = 3, first_port: int = 8001) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.master_key = kept_secret(
            self.root / "master.key", lambda: base64.b64encode(secrets.token_bytes(32)).decode()
        )
        self.shared = {"BATON_STORE": store, "BATON_MASTER_KEY": self.master_key}
        self.count, self.first_port = count, first_port
        self.cluster: NatsCluster | None = None
        self.instances: list[Instance] = []

    def env(self, **more: str) -> dict[str, str]:
        return {**os.environ, **self.shared, **more}

    def baton(self, *args: str, data_dir: Path | None = None) -> str:
        """Run `baton ARGS` as an operator of this installation would; its output."""
        env = self.env(BATON_DATA_DIR=str(data_dir or self.root / "operator"))
        done = subprocess.run([BATON, *args], env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"baton {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    def ensure_demo(self) -> None:
        """Fill the store with the demo county, unless it holds events already."""
        settings = Settings(data_dir=self.root / "operator", store=self.store, master_key=self.master_key)
        baton = bootstrap(settings)
        try:
            empty = baton.store.max_position() == 0
        finally:
            baton.close()
        if empty:
            print("filling the store with the demo county (a minute or two)...", flush=True)
            self.baton("demo", data_dir=self.root / "demo")

    def _auth(self) -> tuple[NatsAuth, list[str]]:
        """Baton's NATS accounts from the installation's secret, and the departments they are for."""
        settings = Settings(data_dir=self.root / "operator", store=self.store, master_key=self.master_key)
        baton = bootstrap(settings)
        try:
            auth = NatsAuth.load(settings.data_dir, None, baton.store.secrets)
            return auth, sorted(baton.org.current().departments)
        finally:
            baton.close()

    async def start(self, replicas: int = 3, **settings: str) -> None:
        """Start the NATS cluster, then every instance at once; return when all are healthy."""
        auth, departments = await asyncio.to_thread(self._auth)
        saved = self.root / "nats-ports.json"
        ports = json.loads(saved.read_text()) if saved.exists() else None
        self.cluster = NatsCluster(self.root / "nats", auth, departments, ports=ports)
        saved.write_text(json.dumps([[n.port, n.cluster_port, n.monitor_port] for n in self.cluster.nodes]))
        await self.cluster.start()
        self.instances = [
            Instance(
                f"i{n}",
                self.root / f"i{n}",
                self.first_port + n - 1,
                self.env(
                    BATON_DATA_DIR=str(self.root / f"i{n}"),
                    BATON_HTTP_PORT=str(self.first_port + n - 1),
                    BATON_NATS_URL=self.cluster.url,
                    BATON_NATS_REPLICAS=str(replicas),
                    BATON_INSTANCE=f"i{n}",
                    **settings,
                ),
            )
            for n in range(1, self.count + 1)
        ]
        for instance in self.instances:
            instance.start()
        await asyncio.gather(*(i.healthy() for i in self.instances))

    async def stop(self) -> None:
        for instance in self.instances:
            await asyncio.to_thread(instance.stop)
        if self.cluster is not None:
            await self.cluster.stop()


async def _main(root: Path) -> None:
    configure_logging("warning", "console")
    installation = Installation(root, os.environ.get("BATON_STORE", STORE))
    await asyncio.to_thread(installation.ensure_demo)
    await installation.start()
    token = installation.baton("token", "issue", "--role", "admin", "--actor", "operator").strip()
    assert installation.cluster is not None
    health = await installation.instances[0].healthy()
    print(f"\nThree instances on {installation.store}, NATS cluster {installation.cluster.url}:")
    for instance in installation.instances:
        print(f"  {instance.name}  {instance.url}   (log: {instance.data_dir}/serve.log)")
    print("Who holds each singleton role:")
    for role, lease in health["leases"].items():
        print(f"  {role:12} {lease['holder']}")
    print(
        f"\nADMIN={token}\n"
        f'curl -s -H "Authorization: Bearer $ADMIN" {installation.instances[1].url}/v1/whistles?limit=3\n'
        f"curl -s {installation.instances[2].url}/health\n"
        f"Shared by every instance: BATON_STORE, BATON_MASTER_KEY (kept in {root}/master.key), "
        "BATON_NATS_URL, BATON_NATS_REPLICAS=3.\n"
        "Kill one (kill -9 its pid) and watch the leases move in /health. Ctrl-C stops everything.",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await installation.stop()


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM a child still running, SIGKILL it if it has not exited within TIMEOUT seconds."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def until_healthy(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> dict[str, Any]:
    """Wait until the `baton serve` at URL answers /health "ok"; fail if it exits or takes longer than TIMEOUT."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"baton serve exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(f"{url}/health")
                if r.status_code == 200 and r.json()["status"] == "ok":
                    return dict(r.json())
            await asyncio.sleep(0.1)
    raise RuntimeError(f"baton serve at {url} was not healthy within {timeout:.0f} s; see {log}")


async def run_nats_cluster(root: Path) -> None:
    """Only the three NATS nodes, with the accounts of the departments in BATON_STORE, until SIGINT or SIGTERM."""
    settings = Settings()
    configure_logging(settings.log_level, "console")
    secret = load_nats_secret(root, settings.nats_secret)
    saved = root / "ports.json"  # the same addresses on every start, so a running Baton's BATON_NATS_URL holds
    ports = json.loads(saved.read_text()) if saved.exists() else None
    cluster = NatsCluster(
        root, NatsAuth(secret, root / "keys" / "nats-hashes.json"), _departments(settings), ports=ports
    )
    saved.write_text(json.dumps([[n.port, n.cluster_port, n.monitor_port] for n in cluster.nodes]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the nodes start: a stop while they do is not lost
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(cluster.start())
        await asyncio.wait([starting, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            given = "" if settings.nats_secret else f" BATON_NATS_SECRET=$(cat {root / 'keys' / 'nats-secret'})"
            print(f"BATON_NATS_URL={cluster.url} BATON_NATS_REPLICAS={len(cluster.nodes)}{given}", flush=True)
            await stop.wait()
        else:
            starting.cancel()
    finally:
        await cluster.stop()


def _departments(settings: Settings) -> list[str]:
    """The departments of the organisation in BATON_STORE (none if there is no store yet): their NATS accounts."""
    if not settings.is_postgres and not (settings.data_dir / "events.sqlite").exists():
        return []
    baton = bootstrap(settings)
    try:
        return sorted(baton.org.current().departments)
    finally:
        baton.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=None, help="where the instances and nodes keep data")
    parser.add_argument("--nats-only", action="store_true", help="only the 3-node NATS cluster (make nats-cluster)")
    args = parser.parse_args()
    if args.nats_only:
        asyncio.run(run_nats_cluster(Path(args.root or "var/cluster")))
    else:
        asyncio.run(_main(Path(args.root or "var/installation")))
