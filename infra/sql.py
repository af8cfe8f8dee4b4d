"""The views database: SQL on SQLite or PostgreSQL, tables tracked with a position, and fenced cursors.

What the read models, the notary, the leases and the secrets table write through; it imports no service or
projection, so every adapter may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from infra.ddl import serialise_ddl

_TABLE = re.compile(r"\{(\w+)\}")


class Tx:
    """One transaction on the views database; SQL is written with %s placeholders for both backends."""

    def __init__(self, cursor: Any, postgres: bool, pipeline: Any = None) -> None:
        self._cursor = cursor
        self._postgres = postgres
        self._pipeline = pipeline
        self.memo: dict[str, Any] = {}
        """What a projection keeps in memory until it flushes, before this transaction commits."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(sql if self._postgres else sql.replace("%s", "?"), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(sql if self._postgres else sql.replace("%s", "?"), list(rows))

    def fetchone(self) -> dict[str, Any] | None:
        row = self._cursor.fetchone()
        if row is None:
            return None
        return dict(row) if isinstance(row, dict) else dict(zip(self._names(), row, strict=True))

    def fetchall(self) -> list[dict[str, Any]]:
        rows = self._cursor.fetchall()
        if not rows or isinstance(rows[0], dict):  # PostgreSQL's rows are dicts already
            return [dict(row) for row in rows]
        names = self._names()  # dict(sqlite3.Row) looks each column up by name: ~6x slower
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _names(self) -> list[str]:
        return [column[0] for column in getattr(self._cursor, "sqlite_cursor", self._cursor).description]

    @property
    def rowcount(self) -> int:
        if self._pipeline is not None:
            self._pipeline.sync()  # a pipelined statement's count is known once its result is back
        cursor = getattr(self._cursor, "sqlite_cursor", self._cursor)
        return int(cursor.rowcount)


def in_chunks(ids: Iterable[str], size: int = 500) -> Iterator[tuple[list[str], str]]:
    """IDS (sorted) in runs of SIZE, each with the `%s, %s, ...` of its `IN (...)` list."""
    ordered = sorted(ids)
    for start in range(0, len(ordered), size):
        chunk = ordered[start : start + size]
        yield chunk, ", ".join(["%s"] * len(chunk))


class Sql:
    """The views database: SQLite file or PostgreSQL schema, with table names qualified."""

    def __init__(self, datastore: SQLiteDatastore | PostgresDatastore) -> None:
        self.datastore = datastore
        self.postgres = isinstance(datastore, PostgresDatastore)
        self.schema = datastore.schema if isinstance(datastore, PostgresDatastore) else None

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{name}"' if self.schema else name

    def sql(self, statement: str) -> str:
        """Replace {name} with the qualified table name."""
        return _TABLE.sub(lambda m: self.table(m.group(1)), statement)

    @contextmanager
    def transaction(self, *, commit: bool = True, pipelined: bool = False) -> Iterator[Tx]:
        """PIPELINED (PostgreSQL): statements go out without waiting for each answer (psycopg's pipeline mode); a
        read, or a row count, waits for what went before it."""
        with self.datastore.transaction(commit=commit) as cursor:
            if pipelined and self.postgres:
                with cursor.connection.pipeline() as pipeline:
                    yield Tx(cursor, True, pipeline)
            else:
                yield Tx(cursor, self.postgres)

    def create(self, *statements: str) -> None:
        """Run DDL ({name} qualified) in one transaction, one instance at a time.

        PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe when two sessions run it at once (one fails on
        pg_type's unique index), so every instance's DDL takes the same transaction-scoped advisory lock.
        """
        with self.transaction() as tx:
            if self.schema is not None:
                serialise_ddl(tx, self.schema)
            for statement in statements:
                tx.execute(self.sql(statement))

    def faults(self) -> dict[str, Any] | None:
        """The last disk-full or read-only fault a write to the views database met, until one commits again."""
        state = getattr(self.datastore, "faults", None)
        return state.report() if state is not None else None

    def close(self) -> None:
        self.datastore.close()


TRACKING_DDL = "CREATE TABLE IF NOT EXISTS {baton_tracking} (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"


class View(TrackingRecorder):
    """A read model: its tables and the position up to which it has applied events."""

    tables: tuple[str, ...] = ()
    ddl: tuple[str, ...] = ()

    def __init__(self, sql: Sql) -> None:
        self.db = sql
        self.create_tables()

    def q(self, statement: str) -> str:
        return self.db.sql(statement)

    def create_tables(self) -> None:
        self.db.create(TRACKING_DDL, *self.ddl)

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, ordered (to compare a rebuild with live processing)."""
        with self.db.transaction(commit=False) as tx:
            out = {}
            for table in self.tables:
                tx.execute(f"SELECT * FROM {self.db.table(table)}")
                out[table] = sorted(tx.fetchall(), key=lambda r: sorted((k, str(v)) for k, v in r.items()))
            return out

    def drop_tables(self, projection_name: str) -> None:
        """Drop this view's tables and forget its position (for a rebuild)."""
        with self.db.transaction() as tx:
            for table in self.tables:
                tx.execute(f"DROP TABLE IF EXISTS {self.db.table(table)}")
            tx.execute(self.q("DELETE FROM {baton_tracking} WHERE name = %s"), (projection_name,))
        self.create_tables()

    # TrackingRecorder -----------------------------------------------------------

    def insert_tracking(self, tracking: Tracking) -> None:
        with self.db.transaction() as tx:
            self.track(tx, tracking)

    def track(self, tx: Tx, tracking: Tracking) -> None:
        """Record the position inside the caller's transaction."""
        tx.execute(
            self.q(
                "INSERT INTO {baton_tracking} (name, position) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position"
            ),
            (tracking.application_name, tracking.notification_id),
        )

    def advance(self, tx: Tx, name: str, expected: int, position: int) -> None:
        """Move name's position from expected to position in tx; PositionMoved if another writer moved it first."""
        tx.execute(
            self.q("UPDATE {baton_tracking} SET position = %s WHERE name = %s AND position = %s"),
            (position, name, expected),
        )
        if tx.rowcount == 1:
            return
        if expected == 0:
            tx.execute(
                self.q("INSERT INTO {baton_tracking} (name, position) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"),
                (name, position),
            )
            if tx.rowcount == 1:
                return
        raise PositionMoved(f"{name} is no longer at position {expected}: another writer applied events first")

    def locked_position(self, tx: Tx, name: str) -> int:
        """The position, locked till tx ends (PostgreSQL), so a second writer waits and then sees the new one."""
        lock = " FOR UPDATE" if self.db.postgres else ""  # SQLite's write transactions hold the whole file
        tx.execute(self.q(f"SELECT position FROM {{baton_tracking}} WHERE name = %s{lock}"), (name,))
        row = tx.fetchone()
        return int(row["position"]) if row else 0

    def max_tracking_id(self, application_name: str) -> int | None:
        with self.db.transaction(commit=False) as tx:
            return self.position(tx, application_name)

    def position(self, tx: Tx, name: str) -> int | None:
        tx.execute(self.q("SELECT position FROM {baton_tracking} WHERE name = %s"), (name,))
        row = tx.fetchone()
        return int(row["position"]) if row else None


class PositionMoved(Exception):
    """A read model's position was not where its writer read it: the write is refused, the writer reads again."""


class Fenced(Protocol):
    """What a singleton's writes check in their own transaction (infra.lease.Fence)."""

    def check(self, tx: Tx) -> None: ...


class Cursor:
    """How far a singleton that writes outside the views database (the inbox router) has got: its row of
    baton_tracking, moved only forward, each move in a transaction fenced by the singleton's lease.

    It is what lets the singleton skip what it already did when NATS hands it again (a stream republished from
    the store after it was lost)."""

    def __init__(self, sql: Sql, name: str, fence: Fenced | None = None) -> None:
        self.view = View(sql)
        self.name = name
        self.fence = fence

    def position(self) -> int:
        return self.view.max_tracking_id(self.name) or 0

    def advance(self, position: int) -> int:
        """Move forward to position (never back); the position now. LeaseLost if the fence no longer holds."""
        with self.view.db.transaction() as tx:
            if self.fence is not None:
                self.fence.check(tx)
            tracked = self.view.locked_position(tx, self.name)
            if position <= tracked:
                return tracked
            self.view.advance(tx, self.name, tracked, position)
            return position
