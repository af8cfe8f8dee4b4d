"""A store that is reachable but cannot take writes: its disk is full, or it is read-only.

Both are the operator's to fix (free space; make the file system or the database writable again), and both
leave nothing half-written: the transaction that met the fault rolls back whole. Commands are answered 503
with the cause (`store_full`, `store_read_only`) and `Retry-After`; followers (read models, notary, relay,
leases) retry until the store takes writes again, and service resumes by itself, with no restart.

SQLite says SQLITE_FULL ("database or disk is full") and SQLITE_READONLY ("attempt to write a readonly
database"); PostgreSQL says SQLSTATE 53100 disk_full and 25006 read_only_sql_transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from eventsourcing.persistence import PersistenceError

SQLITE_FULL, SQLITE_READONLY = 13, 8
PG_DISK_FULL, PG_READ_ONLY = "53100", "25006"
RETRY_AFTER = 5
"""Seconds a client is asked to wait before retrying a command refused for a store fault."""


class StoreFault(PersistenceError):
    """The store is reachable but refused to write; nothing of the transaction was recorded."""

    code = "store_fault"
    template = "the event store cannot take writes ({where}); nothing was recorded; fix it, then retry"

    def __init__(self, where: str, detail: str = "") -> None:
        self.where, self.detail = where, detail
        super().__init__(self.template.format(where=where))


class StoreFull(StoreFault):
    """The store's disk (or PostgreSQL tablespace) is full."""

    code = "store_full"
    template = "the event store's disk is full ({where}); nothing was recorded; free space, then retry"


class StoreReadOnly(StoreFault):
    """The store takes no writes: a read-only file or file system, or a read-only database session."""

    code = "store_read_only"
    template = (
        "the event store is read-only ({where}); nothing was recorded; make it writable again (the file "
        "system's mount and the files' permissions; on PostgreSQL default_transaction_read_only, or a standby "
        "in place of the primary), then retry"
    )


def fault_kind(exc: BaseException | None) -> type[StoreFault] | None:
    """StoreFull or StoreReadOnly if exc (or what it wraps) says the disk is full or the store is read-only."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, StoreFault):
            return type(exc)
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code == SQLITE_FULL:
                return StoreFull
            if code == SQLITE_READONLY:
                return StoreReadOnly
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate == PG_DISK_FULL:
            return StoreFull
        if sqlstate == PG_READ_ONLY:
            return StoreReadOnly
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def as_fault(exc: BaseException, where: str) -> StoreFault | None:
    """exc as the StoreFault it is (naming where), or None if it is no such fault."""
    if isinstance(exc, StoreFault):
        return exc
    kind = fault_kind(exc)
    return None if kind is None else kind(where, str(exc))


class FaultState:
    """The last write fault a datastore met and since when; cleared by its next write that commits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fault: StoreFault | None = None
        self.since: float | None = None

    def met(self, fault: StoreFault) -> None:
        with self._lock:
            if self.fault is None or type(self.fault) is not type(fault):
                self.since = time.monotonic()
            self.fault = fault

    def cleared(self) -> None:
        if self.fault is not None:
            with self._lock:
                self.fault, self.since = None, None

    def report(self) -> dict[str, Any] | None:
        """The fault as /health shows it, or None."""
        fault, since = self.fault, self.since
        if fault is None:
            return None
        return {"code": fault.code, "message": str(fault), "for_s": round(time.monotonic() - (since or 0), 1)}


__all__ = ["RETRY_AFTER", "FaultState", "StoreFault", "StoreFull", "StoreReadOnly", "as_fault", "fault_kind"]
