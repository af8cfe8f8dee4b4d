"""The notary: gives every stored event a Merkle leaf in store order and signs checkpoints of the tree.

A leaf is SHA-256(0x00 || the event's canonical bytes), the canonical bytes being RFC 8785 (JCS) of the
event's public body, as published on BATON_EVENTS. Nodes of every full subtree are kept, so a root or a
proof costs O(log^2 n) lookups. Checkpoints are C2SP signed notes (Ed25519), one every N events or T
seconds, kept, served over HTTP and published on baton.audit.checkpoint.

Checkpoints go to BATON_AUDIT in size order, each expecting the stream's last sequence as the notary last saw it.
What the stream holds is read again at start, after any failure and when the stream was made again: a BATON_AUDIT
that was lost is refilled with every checkpoint kept in the views database, in order, under the same Nats-Msg-Ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from eventsourcing.persistence import IntegrityError

from audit.merkle import EMPTY_ROOT, consistency_proof, inclusion_proof, leaf_hash, node_hash, split
from audit.note import Checkpoint, Signer, read_private_key
from infra.envelope import EnvelopeCodec, canonical
from infra.helpers import helped, helper_leaves
from infra.secrets import LocalCopy, SecretName, SecretStore
from infra.sql import Fenced, PositionMoved, Sql, Tx, View
from infra.store import Store

log = structlog.get_logger("baton.notary")

RETRY_MIN, RETRY_MAX = 0.1, 1.0
"""Seconds before the notary tries again after a failure (NATS or the store unavailable)."""


def load_signer(data_dir: Path, origin: str, kept: SecretStore | None = None) -> Signer:
    """The checkpoint signing key: the installation's (BATON_MASTER_KEY), else the data dir's own."""
    local = local_signing_key(data_dir)
    if kept is None:
        return Signer.load_or_create(local.path, origin)
    secret = kept.get_or_create(SecretName.CHECKPOINT_KEY, Signer.generate_private_bytes, local)
    return Signer.from_private_bytes(origin, secret.value)


def local_signing_key(data_dir: Path) -> LocalCopy:
    """The data dir's own checkpoint signing key (as kept without BATON_MASTER_KEY)."""
    return LocalCopy(data_dir / "keys" / "checkpoint.ed25519", read_private_key)


HELP_FROM = 100_000
"""Events behind from which catch_up(helpers=True) hashes in helper processes (each costs ~1 s to start)."""
APPEND_AT_ONCE = 2_000
"""Leaves appended in one transaction of a helped catch-up (as many as the plain catch-up reads at once)."""


class MerkleView(View):
    """Leaves, full-subtree nodes and signed checkpoints, in the views database."""

    tables = ("baton_merkle_nodes", "baton_merkle_leaves", "baton_checkpoints")

    def __init__(self, sql: Sql) -> None:
        blob = "BYTEA" if sql.postgres else "BLOB"
        self.ddl = (
            f"CREATE TABLE IF NOT EXISTS {{baton_merkle_nodes}} (level INTEGER NOT NULL, idx BIGINT NOT NULL, "
            f"hash {blob} NOT NULL, PRIMARY KEY (level, idx))",
            "CREATE TABLE IF NOT EXISTS {baton_merkle_leaves} (idx BIGINT PRIMARY KEY, position BIGINT NOT NULL)",
            "CREATE UNIQUE INDEX IF NOT EXISTS baton_merkle_leaves_position ON {baton_merkle_leaves} (position)",
            f"CREATE TABLE IF NOT EXISTS {{baton_checkpoints}} (size BIGINT PRIMARY KEY, root {blob} NOT NULL, "
            "note TEXT NOT NULL, signed_at TEXT NOT NULL)",
        )
        super().__init__(sql)

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.db.transaction(commit=False) as tx:
            tx.execute(self.q(sql), params)
            return tx.fetchall()

    def size(self, tx: Tx | None = None) -> int:
        sql = "SELECT MAX(idx) AS top FROM {baton_merkle_leaves}"
        if tx is None:
            rows = self.fetch(sql)
        else:
            tx.execute(self.q(sql))
            rows = tx.fetchall()
        top = rows[0]["top"] if rows else None
        return 0 if top is None else int(top) + 1

    def append(self, tx: Tx, leaves: list[tuple[int, bytes]], start: int) -> int:
        """Add leaves (position, hash) from index start, with every subtree they complete; return the new size."""
        written: dict[tuple[int, int], bytes] = {}

        def node(level: int, idx: int) -> bytes:
            if (level, idx) in written:
                return written[(level, idx)]
            tx.execute(self.q("SELECT hash FROM {baton_merkle_nodes} WHERE level = %s AND idx = %s"), (level, idx))
            row = tx.fetchone()
            assert row is not None, f"missing Merkle node {level}/{idx}"
            return bytes(row["hash"])

        rows, leaf_rows = [], []
        index = start
        for position, h in leaves:
            written[(0, index)] = h
            rows.append((0, index, h))
            leaf_rows.append((index, position))
            level, i = 0, index
            while i & 1:
                parent = node_hash(node(level, i - 1), node(level, i))
                level, i = level + 1, i >> 1
                written[(level, i)] = parent
                rows.append((level, i, parent))
            index += 1
        tx.executemany(self.q("INSERT INTO {baton_merkle_nodes} (level, idx, hash) VALUES (%s, %s, %s)"), rows)
        tx.executemany(self.q("INSERT INTO {baton_merkle_leaves} (idx, position) VALUES (%s, %s)"), leaf_rows)
        return index

    def subtree(self, start: int, end: int) -> bytes:
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            rows = self.fetch(
                "SELECT hash FROM {baton_merkle_nodes} WHERE level = %s AND idx = %s", (level, start >> level)
            )
            if not rows:
                raise LookupError(f"the tree has no subtree {start}..{end}")
            return bytes(rows[0]["hash"])
        k = split(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int) -> bytes:
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def leaves(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """(position, leaf hash) for indexes start..end-1."""
        rows = self.fetch(
            "SELECT l.position, n.hash FROM {baton_merkle_leaves} l JOIN {baton_merkle_nodes} n "
            "ON n.level = 0 AND n.idx = l.idx WHERE l.idx >= %s AND l.idx < %s ORDER BY l.idx",
            (start, end),
        )
        return [(int(r["position"]), bytes(r["hash"])) for r in rows]

    def index_of(self, position: int) -> int | None:
        rows = self.fetch("SELECT idx FROM {baton_merkle_leaves} WHERE position = %s", (position,))
        return int(rows[0]["idx"]) if rows else None

    def size_at(self, position: int) -> int:
        """How many leaves cover events up to and including position."""
        rows = self.fetch("SELECT COUNT(*) AS n FROM {baton_merkle_leaves} WHERE position <= %s", (position,))
        return int(rows[0]["n"])

    def add_checkpoint(self, size: int, root: bytes, note: str, signed_at: str, fence: Fenced | None = None) -> None:
        with self.db.transaction() as tx:
            if fence is not None:
                fence.check(tx)
            tx.execute(
                self.q(
                    "INSERT INTO {baton_checkpoints} (size, root, note, signed_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (size) DO NOTHING"
                ),
                (size, root, note, signed_at),
            )

    def checkpoint(self, size: int | None = None) -> dict[str, Any] | None:
        if size is None:
            rows = self.fetch("SELECT * FROM {baton_checkpoints} ORDER BY size DESC LIMIT 1")
        else:
            rows = self.fetch("SELECT * FROM {baton_checkpoints} WHERE size = %s", (size,))
        return {**rows[0], "root": bytes(rows[0]["root"])} if rows else None

    def checkpoints(self, after: int = 0) -> list[dict[str, Any]]:
        rows = self.fetch(
            "SELECT size, root, note, signed_at FROM {baton_checkpoints} WHERE size > %s ORDER BY size", (after,)
        )
        return [{**r, "root": bytes(r["root"])} for r in rows]


class Notary:
    """Keeps the Merkle tree level with the store and signs checkpoints of it."""

    name = "notary"

    def __init__(
        self,
        store: Store,
        codec: EnvelopeCodec,
        view: MerkleView,
        signer: Signer,
        origin: str,
        now: Callable[[], Any],
        every: int = 256,
        interval: float = 10.0,
    ) -> None:
        self.store, self.codec, self.view, self.signer, self.origin = store, codec, view, signer, origin
        self.now = now
        self.every, self.interval = every, interval
        self.error: str | None = None
        self.fence: Fenced | None = None
        """Set while this process holds the notary's lease: its appends and signatures check it."""
        self._appending = threading.Lock()
        self._resync = True
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def position(self) -> int:
        return self.view.max_tracking_id(self.name) or 0

    def catch_up(self, batch: int = 2000, helpers: bool = False) -> int:
        """Give every stored event not yet in the tree its leaf; return the tree size.

        With HELPERS, a long way behind (HELP_FROM events or more), helper processes on the other cores read,
        decode, canonicalise and hash stretches of the store while this one appends their leaves in order."""
        with self._appending:
            if helpers:
                self._catch_up_helped()
            return self._catch_up(batch)

    def _catch_up_helped(self) -> None:
        tracked, top = self.position(), self.store.max_position()
        if top - tracked < HELP_FROM:
            return
        for after, (positions, hashes) in helped(self.store.settings, tracked, top, helper_leaves):
            leaves = [(p, hashes[32 * i : 32 * i + 32]) for i, p in enumerate(positions)]
            # A stretch's leaves in several transactions: one write of 20,000 held the views database (where the
            # leases are renewed, on SQLite) for seconds on a busy disk, and every lease was lost.
            for start in range(0, len(leaves), APPEND_AT_ONCE):
                part = leaves[start : start + APPEND_AT_ONCE]
                try:
                    with self.view.db.transaction() as tx:
                        if self.fence is not None:
                            self.fence.check(tx)
                        at = self.view.locked_position(tx, self.name)
                        if at > after:
                            raise PositionMoved(f"the notary's position is {at}, past {after}")
                        self.view.append(tx, part, self.view.size(tx))
                        self.view.advance(tx, self.name, at, part[-1][0])
                except (IntegrityError, PositionMoved):
                    # Another notary appended meanwhile: the plain catch-up goes on from where it got to.
                    log.info("notary_caught_up_by_another", tracked=after, position=self.position())
                    return
                after = part[-1][0]

    def _catch_up(self, batch: int) -> int:
        while True:
            # Read and hash before the write transaction, which then only appends: hashing inside it held the views
            # database (where SQLite's leases are renewed) nearly without a break through a long catch-up, and the
            # lease renewals, waiting their turn, were starved past their TTL.
            tracked = self.position()
            notifications = self.store.select(tracked, batch)
            if not notifications:
                return self.view.size()
            leaves = [(n.id, leaf_hash(canonical(self.codec.recorded(n)))) for n in notifications]
            try:
                with self.view.db.transaction() as tx:
                    if self.fence is not None:
                        self.fence.check(tx)
                    at = self.view.locked_position(tx, self.name)
                    if at != tracked:
                        raise PositionMoved(f"the notary's position is {at}, not {tracked}")
                    self.view.append(tx, leaves, self.view.size(tx))
                    self.view.advance(tx, self.name, tracked, leaves[-1][0])
            except (IntegrityError, PositionMoved):
                # Another notary (the lease holder's, or a finalisation's in an HTTP process) appended these leaves
                # first. Go on from where it got to.
                if self.position() <= tracked:
                    raise
                log.info("notary_caught_up_by_another", tracked=tracked, position=self.position())

    def sign(self, size: int | None = None) -> tuple[str, int] | None:
        """Sign a checkpoint of the tree at size (default: all of it); None if that size is already signed."""
        with self._appending:
            return self._sign(size)

    def _sign(self, size: int | None) -> tuple[str, int] | None:
        size = self.view.size() if size is None else size
        if size == 0 or self.view.checkpoint(size) is not None:
            return None
        root = self.view.root(size)
        note = self.signer.sign(Checkpoint(self.origin, size, root).text())
        self.view.add_checkpoint(size, root, note, self.now().isoformat(), self.fence)
        log.info("checkpoint_signed", size=size)
        return note, size

    def due(self, last_size: int, last_time: float) -> bool:
        size = self.view.size()
        return size > last_size and (size - last_size >= self.every or time.monotonic() - last_time >= self.interval)

    def _on_saved(self, position: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def resync(self) -> None:
        """Read BATON_AUDIT again before publishing (it was made again: it may hold fewer checkpoints)."""
        self._resync = True
        self._wake.set()

    async def run(
        self, publish: Callable[[str, int], Awaitable[None]], published_on_stream: Callable[[], Awaitable[int]]
    ) -> None:
        """Follow the store, sign a checkpoint every N events or T seconds, publish every checkpoint once, in order.

        PUBLISHED_ON_STREAM says the tree size of the last checkpoint the stream holds; it is asked at start, after
        a failure, and after resync()."""
        self._loop = asyncio.get_running_loop()
        self._resync = True
        published = 0
        behind: int | None = None  # while republishing: the size published before the stream was lost
        self.store.add_listener(self._on_saved)
        last_signed_at = time.monotonic()
        failing_since: float | None = None
        backoff = RETRY_MIN
        try:
            while True:
                self._wake.clear()
                try:
                    await asyncio.to_thread(self.catch_up)
                    latest = await asyncio.to_thread(self.view.checkpoint)
                    if await asyncio.to_thread(self.due, latest["size"] if latest else 0, last_signed_at):
                        await asyncio.to_thread(self.sign)
                        last_signed_at = time.monotonic()
                    if self._resync:
                        self._resync = False
                        on_stream = await published_on_stream()
                        if on_stream < published:
                            behind = max(published, behind or 0)
                            log.warning("checkpoints_republishing", stream_holds=on_stream, published_before=behind)
                        published = on_stream
                    sent = 0
                    for checkpoint in await asyncio.to_thread(self.view.checkpoints, published):
                        await publish(checkpoint["note"], checkpoint["size"])
                        published, sent = checkpoint["size"], sent + 1
                    if behind is not None and published >= behind:
                        log.warning("checkpoints_republished", checkpoints=sent, tree_size=published)
                        behind = None
                    self.error = None
                    if failing_since is not None:
                        log.info("notary_recovered", stalled_s=round(time.monotonic() - failing_since, 2))
                        failing_since, backoff = None, RETRY_MIN
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.error = f"{type(exc).__name__}: {exc}"
                    self._resync = True  # a refused publish: the stream may not be what the notary thought
                    if failing_since is None:
                        failing_since = time.monotonic()
                        log.warning("notary_failed", error=self.error)
                    else:
                        log.info(
                            "notary_retry_failed", error=self.error, for_s=round(time.monotonic() - failing_since, 2)
                        )
                    # Not woken by saves meanwhile: with NATS or the store down, that would retry at their rate.
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self.interval, 1.0)):
                        await self._wake.wait()
        finally:
            self.store.remove_listener(self._on_saved)

    # Proofs ------------------------------------------------------------------------------------

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return inclusion_proof(self.view.subtree, index, size)

    def consistency(self, first: int, second: int) -> list[bytes]:
        return consistency_proof(self.view.subtree, first, second)
