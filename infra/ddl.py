"""Schema changes that several instances may make at once on one PostgreSQL schema.

Two transactions running `CREATE TABLE IF NOT EXISTS` (or `CREATE SCHEMA`, or eventsourcing's `CREATE TYPE`)
for the same name at once can both find it missing, and the slower one then fails with a unique violation on
the catalog (pg_type, pg_namespace) instead of finding it made. Every such change first takes an advisory lock
named after the schema, so they run one after another: a transaction's own lock (gone with its commit), or,
around eventsourcing's table creation, which spans several transactions, a session's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _key(schema: str) -> tuple[str]:
    return (f"baton-ddl:{schema}",)


def serialise_ddl(cursor: Any, schema: str) -> None:
    """Wait until no one else changes this schema's tables; held until the transaction ends (PostgreSQL)."""
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", _key(schema))


@contextmanager
def ddl_session(connection: Any, schema: str) -> Iterator[None]:
    """The same lock held by a connection (in autocommit) around changes others make in transactions of their own."""
    connection.execute("SELECT pg_advisory_lock(hashtext(%s))", _key(schema))
    try:
        yield
    finally:
        connection.execute("SELECT pg_advisory_unlock(hashtext(%s))", _key(schema))


__all__ = ["ddl_session", "serialise_ddl"]
