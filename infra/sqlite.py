"""Baton's SQLite datastore, for the event store and the views database alike.

`baton serve` and its projector process (and a CLI command run beside them) write the same two files. In
WAL mode a deferred transaction (eventsourcing's plain `BEGIN`) that reads and then writes cannot wait for
another connection's write lock: SQLite answers SQLITE_BUSY at once, without the busy timeout, because its
snapshot may be stale (a notary reading its position and then appending leaves while the other process's
notary appended them). So every write transaction here starts with `BEGIN IMMEDIATE`: it takes the write
lock first, waiting up to the busy timeout for it, and reads only what the last writer committed. A lock
still held after the whole timeout is `StoreBusy`, not an unreachable store.

Connections also get a real prepared-statement cache: eventsourcing passes `cached_statements=True`, which
sqlite3 reads as a cache of one statement, so a projection alternating a select, an upsert and an insert
prepared each again on every event (a rebuild ran at half speed).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Literal

from eventsourcing.persistence import ConnectionUnavailableError, InterfaceError, OperationalError
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteTransaction,
)
from eventsourcing.utils import Environment, EnvType

from infra.store_faults import FaultState, StoreFault, StoreReadOnly, as_fault

EVENTSOURCING_VERSION = "9.5.6"
"""What the subclasses below were written for (pinned in pyproject.toml). They patch nothing, but override
SQLiteConnectionPool._create_connection and read its _pool, _put_condition and SQLiteConnection._sqlite_conn, all
private: infra.bootstrap.install_patches warns at start-up when another eventsourcing is installed."""
STATEMENTS = 128
"""Prepared statements each connection keeps (sqlite3's own default)."""
BUSY_TIMEOUT = 30
"""Seconds a write waits for another connection's write lock before it is refused as StoreBusy."""
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class StoreBusy(OperationalError):
    """The SQLite store was reachable but stayed busy for the whole timeout, so nothing was written."""

    def __init__(self, database: str, seconds: float, why: str = "stayed locked by another writer") -> None:
        self.database, self.seconds = database, seconds
        super().__init__(f"{database} {why} for {seconds:g} s")


def is_busy(exc: BaseException) -> bool:
    """Whether exc (or what it wraps) is SQLite's 'database is locked' or 'table is locked'."""
    while exc is not None:
        if isinstance(exc, StoreBusy):
            return True
        if isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


class BatonSQLiteTransaction(SQLiteTransaction):
    """A transaction that, if it is to commit, takes the write lock at BEGIN; busy errors become StoreBusy."""

    connection: BatonSQLiteConnection

    def __enter__(self) -> SQLiteCursor:
        cursor = self.connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE" if self.commit else "BEGIN")
        except sqlite3.Error as exc:
            cursor.sqlite_cursor.close()
            if is_busy(exc):
                raise self.connection.busy() from exc
            if (fault := self.connection.fault(exc)) is not None:
                raise fault from exc
            raise OperationalError(exc) from exc
        return cursor

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc_val, exc_tb)
        except (StoreBusy, StoreFault):
            raise
        except Exception as exc:
            if is_busy(exc):
                raise self.connection.busy() from exc
            if (fault := self.connection.fault(exc)) is not None:
                raise fault from exc
            raise
        if self.commit:
            self.connection.faults.cleared()


class BatonSQLiteConnection(SQLiteConnection):
    """A pooled SQLite connection whose write transactions begin immediate."""

    def __init__(
        self, sqlite_conn: sqlite3.Connection, max_age: float | None, path: str, timeout: float, faults: FaultState
    ) -> None:
        super().__init__(sqlite_conn, max_age)
        self.path, self.database, self.timeout = path, path.rsplit("/", 1)[-1], timeout
        self.faults = faults
        self.pool: BatonSQLiteConnectionPool | None = None

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[SQLiteCursor]:
        with BatonSQLiteTransaction(self, commit=commit) as curs, curs:
            yield curs

    def busy(self) -> StoreBusy:
        return StoreBusy(self.database, self.timeout)

    def fault(self, exc: BaseException) -> StoreFault | None:
        """exc as StoreFull or StoreReadOnly; the connection is then rolled back and closed (the pool opens a fresh
        one, which sees the file system as it is by then: a connection opened read-only stays so)."""
        fault = as_fault(exc, self.path)
        if fault is None:
            return None
        self.faults.met(fault)
        try:
            if self._sqlite_conn.in_transaction:
                self._sqlite_conn.rollback()
        except sqlite3.Error:
            pass
        self.close()
        if isinstance(fault, StoreReadOnly) and self.pool is not None:
            self.pool.drain()  # the idle connections were opened read-only too
        return fault


class BatonSQLiteConnectionPool(SQLiteConnectionPool):
    """Opens BatonSQLiteConnections, each with a cache of STATEMENTS prepared statements, in WAL mode."""

    faults: FaultState

    @property
    def busy_timeout(self) -> float:
        return self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT

    def _create_connection(self) -> BatonSQLiteConnection:
        try:
            c = sqlite3.connect(
                database=self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,  # autocommit: transactions are begun explicitly
                cached_statements=STATEMENTS,
                timeout=self.busy_timeout,
            )
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            self._use_wal(c)
            self.is_journal_mode_wal = True
        c.row_factory = sqlite3.Row
        conn = BatonSQLiteConnection(c, self.max_age, self.db_name, self.busy_timeout, self.faults)
        conn.pool = self
        return conn

    def drain(self) -> None:
        """Close the idle connections, so the next ones open the file afresh."""
        with self._put_condition:
            while self._pool:
                self._pool.pop().close()

    def _use_wal(self, c: sqlite3.Connection) -> None:
        """Put a new database file in WAL mode, waiting for other processes that have it open."""
        # SQLite may refuse the switch at once, without its busy wait, while another process starting on the same
        # fresh data dir has the file open.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if c.execute("PRAGMA journal_mode;").fetchone()[0].lower() != "wal":
                    c.execute("PRAGMA journal_mode=WAL;")
                    self.journal_mode_was_changed_to_wal = True
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


class BatonSQLiteDatastore(SQLiteDatastore):
    """eventsourcing's SQLiteDatastore on a BatonSQLiteConnectionPool."""

    def __init__(
        self,
        db_name: str,
        *,
        lock_timeout: int | None = BUSY_TIMEOUT,
        pool_size: int = 5,
        max_overflow: int = 10,
        single_row_tracking: bool = True,
        originator_id_type: Literal["uuid", "text"] = "uuid",
    ) -> None:
        super().__init__(db_name, single_row_tracking=single_row_tracking, originator_id_type=originator_id_type)
        # Replaces the pool just made (it has opened no connection). A thread waits as long for this process's
        # writer (the pool lets one write at a time) as that writer waits for another process's lock.
        self.pool = BatonSQLiteConnectionPool(
            db_name=db_name,
            lock_timeout=lock_timeout,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=float(lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT),
        )
        self.faults = self.pool.faults = FaultState()
        """The last disk-full or read-only fault a write met here, until a write commits again."""

    @contextmanager
    def get_connection(self, *, commit: bool) -> Iterator[SQLiteConnection]:
        try:
            conn = self.pool.get_connection(is_writer=commit)
        except ConnectionUnavailableError as exc:
            name = self.pool.db_name.rsplit("/", 1)[-1]
            raise StoreBusy(name, self.pool.pool_timeout, "had no connection free in this process") from exc
        try:
            yield conn
        finally:
            self.pool.put_connection(conn)


class BatonSQLiteFactory(SQLiteFactory):
    """eventsourcing's SQLite factory on a BatonSQLiteDatastore (name it in PERSISTENCE_MODULE by its topic)."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)  # reads and checks the SQLITE_* settings into the datastore it makes
        given = self.datastore
        self.datastore = BatonSQLiteDatastore(
            given.pool.db_name,
            lock_timeout=given.pool.lock_timeout,
            single_row_tracking=given.single_row_tracking,
            originator_id_type=given.originator_id_type,
        )
        given.close()


__all__ = [
    "BUSY_TIMEOUT",
    "STATEMENTS",
    "BatonSQLiteDatastore",
    "BatonSQLiteFactory",
    "StoreBusy",
    "is_busy",
]
