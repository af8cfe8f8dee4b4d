"""Leases: each singleton role (relay, watcher, intake, inbox router, projections, notary) runs where its lease is.

A lease is a row in the views database (the store's own schema on PostgreSQL): name, holder, epoch and an
expiry in the database's clock. Every instance asks for every lease it could hold each `ttl / 5` seconds; the
holder's ask renews it, anyone else's takes it once it has expired. A holder that dies (kill -9) or stalls
(SIGSTOP) past its expiry loses the lease to the next asker within about `ttl` seconds, and every new holding
gets a higher epoch. Time-based rather than a session advisory lock (Marten's daemon): a stopped process keeps
its connection, and with it an advisory lock, for as long as it is stopped.

A lease alone cannot stop a holder that wakes after losing it from writing what it was writing. So every write
a singleton makes to the views database is fenced: in the write's own transaction, `Fence.check` reads the lease
row (locking it against a takeover until the transaction ends) and refuses the write unless this holder, at this
epoch, still holds it unexpired. Writes to NATS are fenced by NATS itself (the relay's expected last sequence,
message ids), and commands by the store's version checks and the command log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from infra import metrics
from infra.sql import Sql, Tx

log = structlog.get_logger("baton.lease")

LEASES_DDL = (
    "CREATE TABLE IF NOT EXISTS {baton_leases} (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "epoch BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, acquired_at DOUBLE PRECISION NOT NULL)"
)
ROLES = ("relay", "watcher", "intake", "inbox", "notifier", "projections", "notary")
"""Every singleton role, in the order /health lists them."""


class LeaseLost(Exception):
    """This process no longer holds the lease a write is fenced by: the write is refused."""


def holder_name(instance: str) -> str:
    """Who asks: the instance's name and this process (serve and its projector are two holders)."""
    return f"{instance}/{os.getpid()}"


def default_instance(port: int) -> str:
    return f"{socket.gethostname()}:{port}"


@dataclass(frozen=True)
class Holding:
    """A lease as this process holds it."""

    name: str
    holder: str
    epoch: int


@dataclass
class Fence:
    """What a singleton's writes check, in their own transaction, before they commit."""

    leases: Leases
    holding: Holding
    refused: int = 0

    def check(self, tx: Tx) -> None:
        """Raise LeaseLost unless the lease is still ours, at our epoch, unexpired (locked till tx ends)."""
        if not self.leases.holds(tx, self.holding):
            self.refused += 1
            metrics.fenced_writes.labels(self.holding.name).inc()
            raise LeaseLost(
                f"lease {self.holding.name} is no longer held by {self.holding.holder} at epoch {self.holding.epoch}"
            )


class Leases:
    """The lease table: ask for a lease (take or renew), check one inside a transaction, release, list."""

    def __init__(self, sql: Sql, holder: str, ttl: float = 5.0) -> None:
        self.sql, self.holder, self.ttl = sql, holder, ttl
        # The database's clock decides expiry, so instances on machines whose clocks disagree still agree.
        self.now = (
            "EXTRACT(EPOCH FROM clock_timestamp())" if sql.postgres else "((julianday('now') - 2440587.5) * 86400.0)"
        )
        self.sql.create(LEASES_DDL)

    def ask(self, name: str) -> Holding | None:
        """Take the lease if it is free or expired, renew it if it is ours; None while another holds it."""
        now = self.now
        with self.sql.transaction() as tx:
            tx.execute(
                self.sql.sql(
                    "INSERT INTO {baton_leases} AS l (name, holder, epoch, expires_at, acquired_at) "
                    f"VALUES (%s, %s, 1, {now} + %s, {now}) "
                    "ON CONFLICT (name) DO UPDATE SET "
                    f"epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > {now} THEN l.epoch "
                    "ELSE l.epoch + 1 END, "
                    f"acquired_at = CASE WHEN l.holder = excluded.holder AND l.expires_at > {now} "
                    "THEN l.acquired_at ELSE excluded.acquired_at END, "
                    "holder = excluded.holder, expires_at = excluded.expires_at "
                    f"WHERE l.holder = excluded.holder OR l.expires_at <= {now} "
                    "RETURNING epoch"
                ),
                (name, self.holder, self.ttl),
            )
            row = tx.fetchone()
        return None if row is None else Holding(name, self.holder, int(row["epoch"]))

    def holds(self, tx: Tx, holding: Holding) -> bool:
        """Whether holding is still the lease, unexpired, inside tx (PostgreSQL: locking the row till tx ends)."""
        lock = " FOR SHARE" if self.sql.postgres else ""  # SQLite's write transactions hold the whole file
        tx.execute(
            self.sql.sql(
                "SELECT epoch FROM {baton_leases} WHERE name = %s AND holder = %s AND epoch = %s "
                f"AND expires_at > {self.now}{lock}"
            ),
            (holding.name, holding.holder, holding.epoch),
        )
        return tx.fetchone() is not None

    def release(self, holding: Holding) -> None:
        """Give the lease up at once (a clean stop), so another instance need not wait for it to expire."""
        with self.sql.transaction() as tx:
            tx.execute(
                self.sql.sql(
                    f"UPDATE {{baton_leases}} SET expires_at = {self.now} - 1 "
                    "WHERE name = %s AND holder = %s AND epoch = %s"
                ),
                (holding.name, holding.holder, holding.epoch),
            )

    def all(self) -> dict[str, dict[str, Any]]:
        """Every lease: holder, epoch, seconds until it expires (negative: expired, nobody holds it)."""
        with self.sql.transaction(commit=False) as tx:
            tx.execute(
                self.sql.sql(
                    f"SELECT name, holder, epoch, expires_at - {self.now} AS expires_in, "
                    f"{self.now} - acquired_at AS held_for FROM {{baton_leases}} ORDER BY name"
                )
            )
            rows = tx.fetchall()
        return {
            r["name"]: {
                "holder": r["holder"],
                "epoch": int(r["epoch"]),
                "expires_in": round(float(r["expires_in"]), 3),
                "held_for": round(float(r["held_for"]), 3),
            }
            for r in rows
        }


Role = Callable[[Fence], Awaitable[None]]
"""A singleton's work: runs while the lease is held, cancelled when it is lost; its writes check the fence."""


@dataclass
class Running:
    """A role this process holds, and its task."""

    fence: Fence
    task: asyncio.Task[None]
    renewed: float = field(default_factory=time.monotonic)


class Roles:
    """Runs each role while this process holds its lease: asks every ttl/5 s, stops a role the moment it is lost.

    A role whose lease could not be renewed for `ttl` seconds on this process's own clock (the database was out
    of reach, or the process stood still) is stopped too: by then another instance may hold it.
    """

    def __init__(self, leases: Leases, roles: dict[str, Role]) -> None:
        self.leases = leases
        self.roles = roles
        self.running: dict[str, Running] = {}
        self.takeovers = 0
        self.losses = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Threads of their own: renewals must not queue behind the roles' work in the default pool (a busy
        # catch-up there delayed them past the TTL, and the process dropped roles it still held).
        self._asker = ThreadPoolExecutor(max_workers=max(len(roles), 1), thread_name_prefix="leases")

    async def _ask(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._asker, fn, *args)

    @property
    def held(self) -> list[str]:
        return [name for name in self.roles if name in self.running]

    def fence(self, name: str) -> Fence | None:
        running = self.running.get(name)
        return running.fence if running else None

    async def start(self) -> None:
        """Ask once for every lease (so a lone instance holds them all on return), then keep asking, each role on
        its own: an ask waits while that role's own fenced transaction holds its row, and must not hold up the
        others' renewals (seen under load: one slow ask, and every role dropped at once)."""
        await asyncio.gather(*(self._turn(name) for name in self.roles))
        await asyncio.sleep(0)  # the roles just taken run up to their first wait (a role sets itself up there)
        self._tasks = [asyncio.create_task(self._keep(name), name=f"lease:{name}") for name in self.roles]

    async def _keep(self, name: str) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.leases.ttl / 5)
            if (late := time.monotonic() - started - self.leases.ttl / 5) > self.leases.ttl / 2:
                log.warning("lease_loop_late", lease=name, seconds=round(late, 2))  # the event loop was held up
            try:
                await self._turn(name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease_round_failed", lease=name)

    async def _turn(self, name: str) -> None:
        """Renew, take or give up one role's lease."""
        running = self.running.get(name)
        if running is not None and (unrenewed := time.monotonic() - running.renewed) > self.leases.ttl:
            await self._stop(name, "not renewed in time", unrenewed_s=round(unrenewed, 1))
        elif running is not None and running.task.done():
            await self._stop(name, f"ended: {_outcome(running.task)}")
        asked = time.monotonic()
        try:
            holding = await self._ask(self.leases.ask, name)
        except Exception as exc:
            log.warning("lease_ask_failed", lease=name, error=repr(exc))
            return
        if (took := time.monotonic() - asked) > self.leases.ttl / 2:  # what kept it: the database, or this loop
            log.warning("lease_ask_slow", lease=name, seconds=round(took, 2), ttl=self.leases.ttl)
        running = self.running.get(name)
        if running is not None:
            if holding is not None and holding.epoch == running.fence.holding.epoch:
                running.renewed = asked
                return
            await self._stop(name, "taken over")
        if holding is not None:
            fence = Fence(self.leases, holding)
            task = asyncio.create_task(self.roles[name](fence), name=f"role:{name}")
            self.running[name] = Running(fence, task, renewed=asked)
            self.takeovers += 1
            metrics.lease_changes.labels(name, "taken").inc()
            log.info("lease_taken", lease=name, holder=holding.holder, epoch=holding.epoch)

    async def _stop(self, name: str, why: str, **detail: Any) -> None:
        running = self.running.pop(name)
        self.losses += 1
        metrics.lease_changes.labels(name, "lost").inc()
        log.warning("lease_lost", lease=name, epoch=running.fence.holding.epoch, why=why, **detail)
        await _cancel(running.task)

    async def stop(self) -> None:
        """Stop every role and give its lease up."""
        for task in self._tasks:
            await _cancel(task)
        for name in list(self.running):
            running = self.running.pop(name)
            await _cancel(running.task)
            with contextlib.suppress(Exception):
                await self._ask(self.leases.release, running.fence.holding)
        self._asker.shutdown(wait=False)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        async with asyncio.timeout(15):
            await task


def _outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "returned" if exc is None else repr(exc)
