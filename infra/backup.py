"""`baton backup` and `baton restore`: what cannot be re-made, in one portable SQLite file, on either store.

A backup holds what no rebuild can bring back: every stored event with its position (the notification id, which
is part of each event's signed bytes), the command log, the person keys, the keys sealed under BATON_MASTER_KEY
(if the installation keeps them in the database), the store's identity (its log origin) and the signed
checkpoints. Read models and the Merkle tree's leaves and nodes are left out: they are re-made from the events
(`baton serve`, `baton rebuild`), and the re-made tree reproduces every signed root.

Layout of the file (format baton-backup, version 1), a SQLite database whatever the store it came from:
  baton_backup        key/value: format, version, source backend, position, counts, store id, when, by whom
  events              position INTEGER PRIMARY KEY, originator_id (UUID hex), originator_version, topic, state
  baton_commands      the command log, as the store keeps it
  baton_person_keys   each person's key, wrapped under the personal-data master key (NULL once erased)
  baton_secrets       Baton's own keys sealed under BATON_MASTER_KEY (empty when keys live in DATA_DIR/keys)
  baton_store_meta    the store's identity (its checkpoints' origin)
  baton_checkpoints   the signed checkpoints up to the backup's tree size

The copy is consistent while `baton serve` writes: on SQLite it starts from SQLite's online backup API (one step,
one read snapshot of events.sqlite); on PostgreSQL every table is read in one REPEATABLE READ, read-only
transaction. Positions commit in order on both, so the snapshot holds a prefix of the log; checkpoints are kept up
to its size. Keys kept in DATA_DIR/keys are never in the file; the master key never is either.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import psycopg
import structlog
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment
from psycopg import sql
from psycopg.rows import tuple_row

from audit.note import Checkpoint, NoteError, Signer, read_private_key
from infra.notary import MerkleView, local_signing_key
from infra.secrets import SECRETS_TABLE, SecretName, SecretStore, SecretTable, WrongMasterKey
from infra.settings import Settings
from infra.sql import Sql
from infra.sqlite import BatonSQLiteDatastore
from infra.store import (
    COMMANDS_TABLE,
    KEYS_TABLE,
    MEDIA_TABLE,
    META_TABLE,
    Store,
    ensure_schema,
    pg_connect,
    views_datastore,
)

log = structlog.get_logger("baton.backup")

FORMAT = "baton-backup"
VERSION = 1
"""The newest format version this Baton writes and reads."""
APPLICATION_ID = 0x4254_4E42
"""SQLite's `PRAGMA application_id` of a backup file ("BTNB"), so `file` and a restore can tell one at a glance."""
SQLITE_EVENTS = "stored_events"
POSTGRES_EVENTS = "baton_events"
"""The stored-event tables eventsourcing makes: SQLite's keeps positions as rowids, PostgreSQL's in a bigserial."""
CHECKPOINTS_TABLE = "baton_checkpoints"
BATCH = 5000

COPIED: dict[str, tuple[str, ...]] = {
    COMMANDS_TABLE: ("key", "fingerprint", "outcome", "positions"),
    KEYS_TABLE: ("person_id", "community_id", "wrapped"),
    SECRETS_TABLE: ("name", "version", "sealed", "updated_at"),
    META_TABLE: ("key", "value"),
}
"""The store's own tables copied as they are, with their columns."""
OPTIONAL: dict[str, tuple[str, ...]] = {MEDIA_TABLE: ("sha256", "content_type", "data")}
"""Tables copied too, that a backup from an older release may lack (residents' photos, since 0.2)."""
CHECKPOINT_COLUMNS = ("size", "root", "note", "signed_at")
EVENT_COLUMNS = ("position", "originator_id", "originator_version", "topic", "state")

FILE_DDL = (
    "CREATE TABLE baton_backup (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE events (position INTEGER PRIMARY KEY, originator_id TEXT NOT NULL, "
    "originator_version INTEGER NOT NULL, topic TEXT NOT NULL, state BLOB NOT NULL, "
    "UNIQUE (originator_id, originator_version))",
    f"CREATE TABLE {COMMANDS_TABLE} (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, outcome TEXT NOT NULL, "
    "positions TEXT NOT NULL)",
    f"CREATE TABLE {KEYS_TABLE} (person_id TEXT PRIMARY KEY, community_id TEXT NOT NULL, wrapped TEXT)",
    f"CREATE TABLE {SECRETS_TABLE} (name TEXT PRIMARY KEY, version INTEGER NOT NULL, sealed TEXT NOT NULL, "
    "updated_at TEXT NOT NULL)",
    f"CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"CREATE TABLE {CHECKPOINTS_TABLE} (size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL, "
    "signed_at TEXT NOT NULL)",
    f"CREATE TABLE {MEDIA_TABLE} (sha256 TEXT PRIMARY KEY, content_type TEXT NOT NULL, data BLOB NOT NULL)",
)

Progress = Callable[[int, int], None]
"""progress(events done, events in all)."""


class BackupError(Exception):
    """A backup or restore refused; the message says what to do."""


class NoStore(BackupError):
    """There is no Baton store where the settings point."""


class NotABackup(BackupError):
    """The file is not a Baton backup (or is damaged)."""


class NewerFormat(BackupError):
    """The backup was written in a format newer than this Baton reads."""


class StoreNotEmpty(BackupError):
    """The store a restore would write into already holds something."""


@dataclass(frozen=True)
class Summary:
    """What a backup file holds, from its baton_backup table."""

    path: Path
    source: str
    position: int
    events: int
    commands: int
    person_keys: int
    secrets: int
    checkpoints: int
    tree_size: int
    """The size of the last signed checkpoint in the file (0: none)."""
    store_id: str
    made_at: str
    made_by: str
    version: int = VERSION
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list, compare=False)
    """What the person must know or do next (keys, NATS)."""

    @property
    def keys_in_file(self) -> bool:
        """Whether Baton's own keys travel in the file (sealed under BATON_MASTER_KEY)."""
        return self.secrets > 0

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    @classmethod
    def from_meta(cls, path: Path, meta: dict[str, str]) -> Summary:
        try:
            return cls(
                path=path,
                source=meta["source"],
                position=int(meta["position"]),
                events=int(meta["events"]),
                commands=int(meta["commands"]),
                person_keys=int(meta["person_keys"]),
                secrets=int(meta["secrets"]),
                checkpoints=int(meta["checkpoints"]),
                tree_size=int(meta["tree_size"]),
                store_id=meta["store_id"],
                made_at=meta["made_at"],
                made_by=meta["made_by"],
                version=int(meta["version"]),
            )
        except (KeyError, ValueError) as exc:
            raise NotABackup(f"{path} is not a Baton backup (its baton_backup table lacks {exc}); {_GIVE}") from None


_GIVE = "give a file written by `baton backup --out FILE`"


def events_table(settings: Settings) -> str:
    """The name of the stored-event table in the store BATON_STORE names."""
    return POSTGRES_EVENTS if settings.is_postgres else SQLITE_EVENTS


def _made_by() -> str:
    try:
        return f"baton {package_version('baton')}"
    except PackageNotFoundError:
        return "baton"


# Backup ------------------------------------------------------------------------------------------------------------


def backup(settings: Settings, out: Path, progress: Progress | None = None) -> Summary:
    """Write a consistent copy of the store to a new file `out`; safe while `baton serve` runs."""
    started = time.monotonic()
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new file name (a backup never overwrites)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    _remove(partial)
    try:
        _private_file(partial)  # the command log and wrapped person keys are the installation's, not the public's
        with closing(sqlite3.connect(partial, isolation_level=None)) as file:
            file.execute("PRAGMA journal_mode=OFF")  # a partial file is thrown away, never recovered
            file.execute("PRAGMA synchronous=OFF")
            file.execute(f"PRAGMA application_id={APPLICATION_ID}")
            file.execute(f"PRAGMA user_version={VERSION}")
            file.execute("BEGIN")
            for statement in FILE_DDL:
                file.execute(statement)
            if settings.is_postgres:
                _copy_postgres(settings, file, progress)
            else:
                _copy_sqlite(settings, file, partial)
                if progress is not None:
                    done = file.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                    progress(done, done)
            meta = _describe(settings, file)
            file.executemany("INSERT INTO baton_backup (key, value) VALUES (?, ?)", sorted(meta.items()))
            file.execute("COMMIT")
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, out)
    finally:
        _remove(partial)
    summary = Summary.from_meta(out, meta)
    summary = _with(summary, seconds=round(time.monotonic() - started, 2))
    log.info(
        "backup_written",
        path=str(out),
        source=summary.source,
        position=summary.position,
        events=summary.events,
        checkpoints=summary.checkpoints,
        bytes=summary.size_bytes,
        seconds=summary.seconds,
    )
    return summary


def _copy_sqlite(settings: Settings, file: sqlite3.Connection, partial: Path) -> None:
    """events.sqlite through SQLite's online backup API (one snapshot), then the checkpoints from views.sqlite."""
    source = settings.data_dir / "events.sqlite"
    if not source.exists():
        raise NoStore(
            f"there is no Baton store at {source}; set BATON_DATA_DIR (or BATON_STORE) to the store to back up"
        )
    snapshot = partial.with_name(partial.name + ".events")
    _remove(snapshot)
    try:
        _private_file(snapshot)
        timeout = float(settings.sqlite_busy_timeout)
        with (
            closing(sqlite3.connect(_read_only(source), uri=True, timeout=timeout)) as live,
            closing(sqlite3.connect(snapshot)) as copy,
        ):
            live.backup(copy)  # pages=-1: one step, under one read snapshot; writers go on meanwhile (WAL)
        file.execute("ATTACH DATABASE ? AS snap", (str(snapshot),))
        try:
            tables = {r[0] for r in file.execute("SELECT name FROM snap.sqlite_master WHERE type = 'table'")}
            if SQLITE_EVENTS not in tables:
                raise NoStore(f"{source} holds no Baton events table ({SQLITE_EVENTS}); is it a Baton store?")
            file.execute(
                f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT rowid, originator_id, originator_version, "
                f"topic, state FROM snap.{SQLITE_EVENTS} ORDER BY rowid"
            )
            for table, columns in (COPIED | OPTIONAL).items():
                if table in tables:
                    names = ", ".join(columns)
                    file.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM snap.{table}")
            file.execute("COMMIT")  # DETACH is refused inside a transaction
            file.execute("DETACH DATABASE snap")
            file.execute("BEGIN")
        except BaseException:
            with suppress(sqlite3.Error):
                file.execute("ROLLBACK")
                file.execute("DETACH DATABASE snap")
            raise
    finally:
        _remove(snapshot)
    views = settings.data_dir / "views.sqlite"
    if views.exists():
        with closing(sqlite3.connect(_read_only(views), uri=True, timeout=timeout)) as read:
            found = read.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (CHECKPOINTS_TABLE,))
            if found.fetchone():
                rows = read.execute(f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM {CHECKPOINTS_TABLE} ORDER BY size")
                _insert_checkpoints(file, rows)


def _copy_postgres(settings: Settings, file: sqlite3.Connection, progress: Progress | None) -> None:
    """Every table in one REPEATABLE READ, read-only transaction: one snapshot of the schema."""
    schema = settings.postgres_env()["POSTGRES_SCHEMA"]
    with _pg_connect(settings) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            present = _pg_tables(conn, schema)
            if POSTGRES_EVENTS not in present:
                raise NoStore(
                    f"there is no Baton store in schema {schema!r} of {_pg_where(settings)}; "
                    "set BATON_STORE to the store to back up"
                )
            total = _pg_count(conn, schema, POSTGRES_EVENTS)
            with conn.cursor(name="baton_backup_events") as events:
                events.itersize = BATCH
                events.execute(
                    sql.SQL(
                        "SELECT notification_id, originator_id, originator_version, topic, state FROM {0}.{1} "
                        "ORDER BY notification_id"
                    ).format(sql.Identifier(schema), sql.Identifier(POSTGRES_EVENTS))
                )
                done = 0
                while rows := events.fetchmany(BATCH):
                    file.executemany(
                        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
                        [(r[0], _hex(r[1]), r[2], r[3], bytes(r[4])) for r in rows],
                    )
                    done += len(rows)
                    if progress is not None:
                        progress(done, total)
            for table, columns in (COPIED | OPTIONAL).items():
                if table in present:
                    rows = conn.execute(
                        sql.SQL("SELECT {0} FROM {1}.{2}").format(
                            sql.SQL(", ").join(map(sql.Identifier, columns)),
                            sql.Identifier(schema),
                            sql.Identifier(table),
                        )
                    ).fetchall()
                    marks = ", ".join("?" * len(columns))
                    file.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
            if CHECKPOINTS_TABLE in present:
                rows = conn.execute(
                    sql.SQL("SELECT size, root, note, signed_at FROM {0}.{1} ORDER BY size").format(
                        sql.Identifier(schema), sql.Identifier(CHECKPOINTS_TABLE)
                    )
                ).fetchall()
                _insert_checkpoints(file, rows)


def _insert_checkpoints(file: sqlite3.Connection, rows: Iterable[Any]) -> None:
    file.executemany(
        f"INSERT INTO {CHECKPOINTS_TABLE} ({', '.join(CHECKPOINT_COLUMNS)}) VALUES (?, ?, ?, ?)",
        ((int(size), bytes(root), note, signed_at) for size, root, note, signed_at in rows),
    )


def _describe(settings: Settings, file: sqlite3.Connection) -> dict[str, str]:
    """The baton_backup rows; drops checkpoints beyond the snapshot's tree (signed after it was taken)."""
    events = file.execute("SELECT COUNT(*), COALESCE(MAX(position), 0) FROM events").fetchone()
    file.execute(f"DELETE FROM {CHECKPOINTS_TABLE} WHERE size > ?", (events[0],))

    def count(table: str) -> int:
        return int(file.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    store_id = file.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'store_id'").fetchone()
    if events[0] and store_id is None:
        raise NoStore("the store has events but no identity (baton_store_meta); is it a Baton store?")
    tree = file.execute(f"SELECT COALESCE(MAX(size), 0) FROM {CHECKPOINTS_TABLE}").fetchone()[0]
    return {
        "format": FORMAT,
        "version": str(VERSION),
        "source": "postgresql" if settings.is_postgres else "sqlite",
        "position": str(events[1]),
        "events": str(events[0]),
        "commands": str(count(COMMANDS_TABLE)),
        "person_keys": str(count(KEYS_TABLE)),
        "secrets": str(count(SECRETS_TABLE)),
        "checkpoints": str(count(CHECKPOINTS_TABLE)),
        "tree_size": str(tree),
        "store_id": store_id[0] if store_id else "",
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "made_by": _made_by(),
    }


# Reading a backup --------------------------------------------------------------------------------------------------


@contextmanager
def open_backup(path: Path) -> Iterator[tuple[sqlite3.Connection, Summary]]:
    """The backup file opened read-only, and what it holds; NotABackup / NewerFormat if it cannot be restored."""
    if not path.is_file():
        raise NotABackup(f"there is no file {path}; {_GIVE}")
    try:
        conn = sqlite3.connect(_read_only(path), uri=True)
    except sqlite3.Error as exc:
        raise NotABackup(f"{path} cannot be opened ({exc}); {_GIVE}") from None
    try:
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise NotABackup(f"{path} is not a Baton backup ({exc}); {_GIVE}") from None
        if "baton_backup" not in tables:
            raise NotABackup(f"{path} is a SQLite file but not a Baton backup (no baton_backup table); {_GIVE}")
        meta = dict(conn.execute("SELECT key, value FROM baton_backup").fetchall())
        if meta.get("format") != FORMAT:
            raise NotABackup(f"{path} is not a Baton backup (format {meta.get('format')!r}); {_GIVE}")
        version = int(meta.get("version", "0")) if str(meta.get("version", "")).isdigit() else 0
        if version > VERSION:
            raise NewerFormat(
                f"{path} is a Baton backup of format version {version}, made by "
                f"{meta.get('made_by', 'a newer Baton')}; "
                f"this Baton reads versions up to {VERSION}: restore it with that Baton version or a newer one"
            )
        if version < 1:
            raise NotABackup(f"{path} names no valid format version ({meta.get('version')!r}); {_GIVE}")
        if check != "ok":
            raise NotABackup(f"{path} is damaged (SQLite quick_check: {check}); restore an intact copy of the backup")
        missing = {"events", *COPIED, CHECKPOINTS_TABLE} - tables
        if missing:
            raise NotABackup(f"{path} lacks table(s) {', '.join(sorted(missing))}; {_GIVE}")
        yield conn, Summary.from_meta(path, meta)
    finally:
        conn.close()


def read_summary(path: Path) -> Summary:
    """What a backup file holds (and that it can be restored by this Baton)."""
    with open_backup(path) as (_, summary):
        return summary


# Restore -----------------------------------------------------------------------------------------------------------


def restore(settings: Settings, path: Path, progress: Progress | None = None) -> Summary:
    """Restore a backup into the empty store the settings name, keeping every event's position."""
    started = time.monotonic()
    with open_backup(path) as (backup_file, summary):
        _create_tables(settings)
        if settings.is_postgres:
            _restore_postgres(settings, backup_file, summary, progress)
        else:
            _restore_sqlite(settings, path, summary)
            if progress is not None:
                progress(summary.events, summary.events)
    summary = _with(summary, seconds=round(time.monotonic() - started, 2), notes=next_steps(settings, summary))
    log.info(
        "backup_restored",
        path=str(path),
        into="postgresql" if settings.is_postgres else "sqlite",
        position=summary.position,
        events=summary.events,
        checkpoints=summary.checkpoints,
        seconds=summary.seconds,
    )
    return summary


def _create_tables(settings: Settings) -> None:
    """The store's tables as Baton makes them, and nothing in them: no store id, no keys (the backup brings those)."""
    env = Store._environment(settings)
    if settings.is_postgres:
        ensure_schema(env)
    factory = InfrastructureFactory.construct(Environment("Baton", env))
    try:
        recorder = factory.application_recorder()
        if getattr(recorder, "events_table_name", None) != events_table(settings):
            raise RuntimeError(
                f"eventsourcing keeps events in {recorder.events_table_name!r}, not where restore writes"
            )
        SecretTable(Sql(recorder.datastore))  # type: ignore[arg-type]
    finally:
        factory.close()
    views = Sql(views_datastore(settings))
    try:
        MerkleView(views)
    finally:
        views.close()


_CHECKED = (POSTGRES_EVENTS, *COPIED, CHECKPOINTS_TABLE, "baton_merkle_leaves", "baton_tracking")


def _not_empty(found: dict[str, int], where: str) -> StoreNotEmpty:
    held = ", ".join(f"{t}: {n} row{'s' if n != 1 else ''}" for t, n in found.items())
    return StoreNotEmpty(
        f"the store at {where} is not empty ({held}); `baton restore` writes only into an empty store and never "
        "over one: point BATON_DATA_DIR at a new directory (SQLite) or BATON_STORE at a new schema "
        "(postgresql://...?schema=NEW), or move the old store aside yourself, and run it again"
    )


def _restore_sqlite(settings: Settings, path: Path, summary: Summary) -> None:
    """Rows copied file to file inside SQLite (ATTACH), positions as rowids; then the checkpoints into views.sqlite."""
    events_db, views_db = settings.data_dir / "events.sqlite", settings.data_dir / "views.sqlite"
    timeout = float(settings.sqlite_busy_timeout)
    with closing(sqlite3.connect(views_db, isolation_level=None, timeout=timeout)) as views:
        found = _counts(views, ("baton_checkpoints", "baton_merkle_leaves", "baton_tracking"))
        if found:
            raise _not_empty(found, str(views_db))
    with closing(
        sqlite3.connect(events_db.resolve().as_uri(), uri=True, isolation_level=None, timeout=timeout)
    ) as store:
        store.execute("ATTACH DATABASE ? AS backup", (_read_only(path),))
        store.execute("BEGIN IMMEDIATE")
        try:
            found = _counts(store, (SQLITE_EVENTS, *COPIED))
            if found:
                raise _not_empty(found, str(events_db))
            store.execute(
                f"INSERT INTO {SQLITE_EVENTS} (rowid, originator_id, originator_version, topic, state) "
                "SELECT position, originator_id, originator_version, topic, state FROM backup.events ORDER BY position"
            )
            held = {r[0] for r in store.execute("SELECT name FROM backup.sqlite_master WHERE type = 'table'")}
            for table, columns in (COPIED | {t: c for t, c in OPTIONAL.items() if t in held}).items():
                names = ", ".join(columns)
                store.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} FROM backup.{table}")
            _check_counts(store, SQLITE_EVENTS, summary)
            store.execute("COMMIT")
        except BaseException:
            store.execute("ROLLBACK")
            raise
        store.execute("DETACH DATABASE backup")
    with closing(
        sqlite3.connect(views_db.resolve().as_uri(), uri=True, isolation_level=None, timeout=timeout)
    ) as views:
        views.execute("ATTACH DATABASE ? AS backup", (_read_only(path),))
        names = ", ".join(CHECKPOINT_COLUMNS)
        views.execute("BEGIN IMMEDIATE")
        views.execute(f"INSERT INTO main.{CHECKPOINTS_TABLE} ({names}) SELECT {names} FROM backup.{CHECKPOINTS_TABLE}")
        views.execute("COMMIT")
        views.execute("DETACH DATABASE backup")


def _counts(conn: sqlite3.Connection, tables: Iterable[str]) -> dict[str, int]:
    """Rows held by each of these tables that exist and are not empty."""
    present = {r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
    counts = {t: int(conn.execute(f"SELECT COUNT(*) FROM main.{t}").fetchone()[0]) for t in tables if t in present}
    return {t: n for t, n in counts.items() if n}


def _check_counts(conn: sqlite3.Connection, table: str, summary: Summary) -> None:
    n, top = conn.execute(f"SELECT COUNT(*), COALESCE(MAX(rowid), 0) FROM main.{table}").fetchone()
    if (n, top) != (summary.events, summary.position):
        raise NotABackup(
            f"{summary.path} holds {n} events up to position {top}, but says {summary.events} up to "
            f"{summary.position}: it is incomplete; restore an intact copy"
        )


def _restore_postgres(
    settings: Settings, backup_file: sqlite3.Connection, summary: Summary, progress: Progress | None
) -> None:
    """One transaction: lock the events table, check the schema is empty, COPY with explicit ids, move the sequence."""
    schema = settings.postgres_env()["POSTGRES_SCHEMA"]

    def table(name: str) -> sql.Composed:
        return sql.SQL("{0}.{1}").format(sql.Identifier(schema), sql.Identifier(name))

    with _pg_connect(settings) as conn, conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {0} IN EXCLUSIVE MODE").format(table(POSTGRES_EVENTS)))
        present = _pg_tables(conn, schema)
        found = {t: n for t in _CHECKED if t in present and (n := _pg_count(conn, schema, t))}
        if found:
            raise _not_empty(found, f"schema {schema!r} of {_pg_where(settings)}")
        columns = ("notification_id", "originator_id", "originator_version", "topic", "state")
        copy_events = sql.SQL("COPY {0} ({1}) FROM STDIN").format(
            table(POSTGRES_EVENTS), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        done = 0
        with conn.cursor() as cur, cur.copy(copy_events) as copy:
            rows = backup_file.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY position")
            while batch := rows.fetchmany(BATCH):
                for position, originator_id, version, topic, state in batch:
                    copy.write_row((position, uuid.UUID(hex=originator_id), version, topic, state))
                done += len(batch)
                if progress is not None:
                    progress(done, summary.events)
        held = {r[0] for r in backup_file.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        optional = [(t, c) for t, c in OPTIONAL.items() if t in held]
        for name, cols in (*COPIED.items(), *optional, (CHECKPOINTS_TABLE, CHECKPOINT_COLUMNS)):
            rows = backup_file.execute(f"SELECT {', '.join(cols)} FROM {name}").fetchall()
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        sql.SQL("INSERT INTO {0} ({1}) VALUES ({2})").format(
                            table(name),
                            sql.SQL(", ").join(map(sql.Identifier, cols)),
                            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
                        ),
                        rows,
                    )
        n, top = conn.execute(
            sql.SQL("SELECT COUNT(*), COALESCE(MAX(notification_id), 0) FROM {0}").format(table(POSTGRES_EVENTS))
        ).fetchone()  # type: ignore[misc]
        if (n, top) != (summary.events, summary.position):
            raise NotABackup(f"{summary.path} is incomplete ({n} events up to {top}); restore an intact copy")
        if top:  # new events continue after the restored ones
            conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), %s)",
                (f'"{schema}"."{POSTGRES_EVENTS}"', top),
            )


# Keys and what to do next ------------------------------------------------------------------------------------------


def next_steps(settings: Settings, summary: Summary) -> list[str]:
    """What the person must know after a restore: whether the keys are there and open the checkpoints, NATS."""
    notes = []
    origin = settings.log_origin or f"baton/{summary.store_id}"
    last = _last_checkpoint(settings)
    if summary.keys_in_file:
        if settings.master_key_bytes is None:
            notes.append(
                "keys: this backup's keys are sealed under BATON_MASTER_KEY; set the installation's master key "
                "(the same as before) before `baton serve`, or Baton refuses to start"
            )
        else:
            notes.append(_check_signer(settings, origin, last, kept=True))
    else:
        keys = settings.data_dir / "keys"
        if not local_signing_key(settings.data_dir).path.exists():
            notes.append(
                f"keys: not in the backup (they were kept in the data dir). Copy the keys directory you backed up "
                f"into {keys} (mode 700, files 600) BEFORE `baton serve`: without it Baton makes new keys, the "
                "restored checkpoints would not verify, sealed personal data would not open and issued tokens and "
                "NATS logins would be refused"
            )
        else:
            notes.append(_check_signer(settings, origin, last, kept=False))
    nats = settings.data_dir / "nats"
    if settings.nats_url or nats.exists():
        where = f"the streams on {settings.nats_url}" if settings.nats_url else f"{nats}"
        notes.append(
            f"nats: {where} may hold events past the backup's position {summary.position}; Baton's relay refuses "
            "a stream that ends with an event this store does not hold: start on a fresh NATS (delete "
            f"{nats} for the embedded one; on an external one delete BATON_EVENTS and BATON_AUDIT)"
        )
    notes.append(
        "next: `baton serve` catches every read model and the Merkle tree up from the restored history "
        "(`baton rebuild` does the read models first, with a progress bar)"
    )
    return notes


def _last_checkpoint(settings: Settings) -> str | None:
    views = Sql(views_datastore(settings))
    try:
        found = MerkleView(views).checkpoint()
    finally:
        views.close()
    return str(found["note"]) if found else None


def _check_signer(settings: Settings, origin: str, note: str | None, *, kept: bool) -> str:
    """Whether the checkpoint key this installation will sign with signed the restored checkpoints."""
    try:
        if kept:
            assert settings.master_key_bytes is not None
            store = Store._environment(settings)
            datastore = (
                views_datastore(settings)
                if settings.is_postgres
                else _sqlite_datastore(Path(store["SQLITE_DBNAME"]), settings)
            )
            try:
                secret = SecretStore(SecretTable(Sql(datastore)), settings.master_key_bytes).get(
                    SecretName.CHECKPOINT_KEY
                )
            finally:
                datastore.close()
            if secret is None:
                return "keys: the backup keeps no checkpoint key; Baton makes one on first start"
            signer = Signer.from_private_bytes(origin, secret.value)
            where = "BATON_MASTER_KEY opens the restored keys"
        else:
            path = local_signing_key(settings.data_dir).path
            signer = Signer.from_private_bytes(origin, read_private_key(path))
            where = f"{path} is in place"
    except WrongMasterKey:
        return (
            "keys: BATON_MASTER_KEY does not open the restored keys; set the master key the installation used "
            "when the backup was made"
        )
    if note is None:
        return f"keys: {where} (no checkpoint to check it against)"
    try:
        Checkpoint.verified(note, signer.verifier, origin)
    except NoteError as exc:
        return (
            f"keys: WARNING {where}, but it did not sign the restored checkpoints ({exc}); "
            "use the keys backed up with this store"
        )
    return f"keys: {where} and signed the restored checkpoints"


def _sqlite_datastore(path: Path, settings: Settings) -> BatonSQLiteDatastore:
    return BatonSQLiteDatastore(str(path), lock_timeout=settings.sqlite_busy_timeout, pool_size=1)


# PostgreSQL and files ----------------------------------------------------------------------------------------------


def _pg_connect(settings: Settings) -> psycopg.Connection[Any]:
    return pg_connect(settings, row_factory=tuple_row)


def _pg_where(settings: Settings) -> str:
    pg = settings.postgres_env()
    return f"{pg['POSTGRES_HOST']}:{pg['POSTGRES_PORT']}/{pg['POSTGRES_DBNAME']}"


def _pg_tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
    return {r[0] for r in rows.fetchall()}


def _pg_count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT COUNT(*) FROM {0}.{1}").format(sql.Identifier(schema), sql.Identifier(table))
    ).fetchone()
    return int(row[0]) if row else 0


def _hex(originator_id: Any) -> str:
    return originator_id.hex if isinstance(originator_id, uuid.UUID) else uuid.UUID(str(originator_id)).hex


def _with(summary: Summary, **changes: Any) -> Summary:
    return replace(summary, **changes)


def _read_only(path: Path) -> str:
    """A SQLite URI opening path read-only (any character in the path escaped)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def _private_file(path: Path) -> None:
    """Create path empty, readable by its owner only (SQLite then writes into it as it finds it)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _remove(path: Path) -> None:
    for p in (
        path,
        path.with_name(path.name + "-journal"),
        path.with_name(path.name + "-wal"),
        path.with_name(path.name + "-shm"),
    ):
        with suppress(FileNotFoundError):
            p.unlink()


__all__ = [
    "FORMAT",
    "VERSION",
    "BackupError",
    "NewerFormat",
    "NoStore",
    "NotABackup",
    "StoreNotEmpty",
    "Summary",
    "backup",
    "events_table",
    "next_steps",
    "read_summary",
    "restore",
]
