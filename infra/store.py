"""The event store: one notification log shared by every bounded context, on SQLite or PostgreSQL.

Besides the events, the store keeps a command log: the outcome of each command that carried an
idempotency key (HTTP Idempotency-Key, a department's command_id), written in the same transaction
as the command's events, so a retried command is answered from the log and never applied twice. A
batch of commands saved together writes one row per command, each with its own events' positions.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    Notification,
    PersistenceError,
    StoredEvent,
    UUIDAsHex,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from eventsourcing.utils import Environment, get_topic
from psycopg.sql import SQL, Identifier

from infra.ddl import ddl_session, serialise_ddl
from infra.privacy import KeyRow, SealedAsToken, Vault, load_master_key
from infra.secrets import SecretStore, SecretTable, refuse_without_master_key
from infra.settings import Settings
from infra.sql import Sql
from infra.sqlite import BatonSQLiteDatastore, BatonSQLiteFactory
from infra.store_faults import FaultState, StoreFault, StoreReadOnly, as_fault


@dataclass(frozen=True)
class CommandRecord:
    """The remembered outcome of a command that carried an idempotency key."""

    key: str
    fingerprint: str
    outcome: dict[str, Any]
    positions: list[int] = field(default_factory=list)
    events: tuple[tuple[uuid.UUID, int], ...] = field(default=(), compare=False, repr=False)
    """(aggregate id, version) of the command's own events, when it shares one transaction with other commands."""

    def row(self, positions: Sequence[int] | None = None) -> tuple[str, str, str, str]:
        return (
            self.key,
            self.fingerprint,
            json.dumps(self.outcome, sort_keys=True),
            json.dumps(list(positions if positions is not None else self.positions)),
        )

    @classmethod
    def from_row(cls, row: Any) -> CommandRecord:
        return cls(
            key=row["key"],
            fingerprint=row["fingerprint"],
            outcome=json.loads(row["outcome"]),
            positions=json.loads(row["positions"]),
        )


Commands = CommandRecord | Sequence[CommandRecord] | None
"""The `command=` of a save: one record owning all the events saved, or several, each owning its `events`."""


def command_rows(
    command: Commands, stored_events: Sequence[StoredEvent], ids: Sequence[int] | None
) -> list[tuple[str, str, str, str]]:
    """The command log rows a save writes, each with the positions of its own command's events."""
    if command is None:
        return []
    if isinstance(command, CommandRecord):
        return [command.row(ids)]
    positions = {
        (str(e.originator_id), e.originator_version): position
        for e, position in zip(stored_events, ids or (), strict=True)
    }
    return [record.row([positions[str(a), v] for a, v in record.events]) for record in command]


def store_person_keys(
    vault: Vault,
    stored_events: Sequence[StoredEvent],
    insert: Callable[[KeyRow], bool],
    select: Callable[[str], KeyRow | None],
) -> None:
    """Insert a save's fresh person keys; where one was stored first, check the save's data opens under that one."""
    for fresh in vault.keys_to_insert(stored_events):
        if not insert(fresh.row):
            vault.check_stored(fresh, select(fresh.row.person_id))


class CommandLog:
    """Reads and writes the command log (the half of it not written alongside events)."""

    def get(self, key: str) -> CommandRecord | None:
        raise NotImplementedError

    def get_many(self, keys: Iterable[str]) -> dict[str, CommandRecord]:
        """The records of those keys that are recorded, in one query."""
        raise NotImplementedError

    def put(self, record: CommandRecord) -> bool:
        """Record an outcome that produced no events; False if the key was already recorded."""
        raise NotImplementedError

    def put_all(self, records: Sequence[CommandRecord]) -> None:
        """Record outcomes that produced no events in one transaction; IntegrityError if a key was recorded."""
        raise NotImplementedError

    def identity(self) -> str:
        """This store's id, made once when the store is created."""
        raise NotImplementedError

    def put_media(self, sha256: str, content_type: str, data: bytes) -> bool:
        """Keep an uploaded photo under its hash (outside the event log); False when it was kept already."""
        raise NotImplementedError

    def get_media(self, sha256: str) -> tuple[str, bytes] | None:
        """(content type, bytes) of a kept photo, or None."""
        raise NotImplementedError


log = structlog.get_logger("baton.store")

COMMANDS_TABLE = "baton_commands"
KEYS_PER_QUERY = 500
META_TABLE = "baton_store_meta"
KEYS_TABLE = "baton_person_keys"
MEDIA_TABLE = "baton_media"
"""Photos residents uploaded, by SHA-256: their hash is in the event, their bytes here (erasable, never signed)."""


class BatonSQLiteRecorder(SQLiteApplicationRecorder, CommandLog):
    """SQLite application recorder that also writes the command log and person keys in the events' transaction."""

    vault: Vault | None = None

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {COMMANDS_TABLE} ("
            "key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, "
            "outcome TEXT NOT NULL, positions TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} ("
            "person_id TEXT PRIMARY KEY, community_id TEXT NOT NULL, wrapped TEXT)",
            f"CREATE TABLE IF NOT EXISTS {MEDIA_TABLE} ("
            "sha256 TEXT PRIMARY KEY, content_type TEXT NOT NULL, data BLOB NOT NULL)",
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        rows = command_rows(kwargs.get("command"), stored_events, ids)
        if rows:
            c.executemany(f"INSERT INTO {COMMANDS_TABLE} VALUES (?,?,?,?)", rows)
        if self.vault is not None:

            def insert(row: KeyRow) -> bool:
                c.execute(
                    f"INSERT INTO {KEYS_TABLE} VALUES (?,?,?) ON CONFLICT (person_id) DO NOTHING",
                    (row.person_id, row.community_id, row.wrapped),
                )
                return bool(c.sqlite_cursor.rowcount == 1)

            def select(person_id: str) -> KeyRow | None:
                c.execute(f"SELECT * FROM {KEYS_TABLE} WHERE person_id = ?", (person_id,))
                r = c.fetchone()
                return KeyRow(r["person_id"], r["community_id"], r["wrapped"]) if r else None

            store_person_keys(self.vault, stored_events, insert, select)
            for person_id in self.vault.keys_to_destroy(stored_events):
                c.execute(f"UPDATE {KEYS_TABLE} SET wrapped = NULL WHERE person_id = ?", (person_id,))
        return ids

    def select_events_of(self, originator_ids: Sequence[uuid.UUID]) -> list[StoredEvent]:
        """Every stored event of these aggregates, in one query per 500, by aggregate and version."""
        found: list[StoredEvent] = []
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(originator_ids), KEYS_PER_QUERY):
                chunk = [i.hex for i in originator_ids[start : start + KEYS_PER_QUERY]]
                c.execute(
                    f"SELECT * FROM {self.events_table_name} WHERE originator_id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY originator_id, originator_version",
                    chunk,
                )
                found.extend(
                    StoredEvent(
                        originator_id=self.convert_originator_id(row["originator_id"]),
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=row["state"],
                    )
                    for row in c.fetchall()
                )
        return found

    def select_person_keys(self, person_ids: Sequence[str]) -> dict[str, KeyRow]:
        if not person_ids:
            return {}
        marks = ",".join("?" * len(person_ids))
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT * FROM {KEYS_TABLE} WHERE person_id IN ({marks})", tuple(person_ids))
            return {r["person_id"]: KeyRow(r["person_id"], r["community_id"], r["wrapped"]) for r in c.fetchall()}

    def person_key_rows(self, after: str, limit: int) -> list[KeyRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT * FROM {KEYS_TABLE} WHERE person_id > ? AND wrapped IS NOT NULL ORDER BY person_id LIMIT ?",
                (after, limit),
            )
            return [KeyRow(r["person_id"], r["community_id"], r["wrapped"]) for r in c.fetchall()]

    def replace_wrapped(self, person_id: str, old: str, new: str) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"UPDATE {KEYS_TABLE} SET wrapped = ? WHERE person_id = ? AND wrapped = ?", (new, person_id, old))
            return bool(c.sqlite_cursor.rowcount == 1)

    def get(self, key: str) -> CommandRecord | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT * FROM {COMMANDS_TABLE} WHERE key=?", (key,))
            row = c.fetchone()
        return CommandRecord.from_row(row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, CommandRecord]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CommandRecord] = {}
        if not wanted:
            return found
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(wanted), KEYS_PER_QUERY):
                chunk = wanted[start : start + KEYS_PER_QUERY]
                c.execute(f"SELECT * FROM {COMMANDS_TABLE} WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update((row["key"], CommandRecord.from_row(row)) for row in c.fetchall())
        return found

    def put(self, record: CommandRecord) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"INSERT INTO {COMMANDS_TABLE} VALUES (?,?,?,?) ON CONFLICT (key) DO NOTHING",
                record.row(),
            )
            return c.sqlite_cursor.rowcount == 1

    def put_all(self, records: Sequence[CommandRecord]) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.executemany(f"INSERT INTO {COMMANDS_TABLE} VALUES (?,?,?,?)", [r.row() for r in records])

    def put_media(self, sha256: str, content_type: str, data: bytes) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"INSERT INTO {MEDIA_TABLE} VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                (sha256, content_type, data),
            )
            return c.sqlite_cursor.rowcount == 1

    def get_media(self, sha256: str) -> tuple[str, bytes] | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT content_type, data FROM {MEDIA_TABLE} WHERE sha256 = ?", (sha256,))
            row = c.fetchone()
        return (row["content_type"], bytes(row["data"])) if row else None

    def identity(self) -> str:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"INSERT INTO {META_TABLE} VALUES ('store_id', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,)
            )
            c.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'store_id'")
            return str(c.fetchone()["value"])


class BatonPostgresRecorder(PostgresApplicationRecorder, CommandLog):
    """PostgreSQL application recorder that also writes the command log and person keys in the events' transaction."""

    vault: Vault | None = None

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.commands_table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(COMMANDS_TABLE))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "key text PRIMARY KEY, fingerprint text NOT NULL, "
                "outcome text NOT NULL, positions text NOT NULL)"
            ).format(self.commands_table)
        )
        self.insert_command_statement = SQL("INSERT INTO {0} VALUES (%s, %s, %s, %s)").format(self.commands_table)
        self.meta_table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(META_TABLE))
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {0} (key text PRIMARY KEY, value text NOT NULL)").format(self.meta_table)
        )
        self.keys_table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(KEYS_TABLE))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} (person_id text PRIMARY KEY, community_id text NOT NULL, wrapped text)"
            ).format(self.keys_table)
        )
        self.media_table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(MEDIA_TABLE))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "sha256 text PRIMARY KEY, content_type text NOT NULL, data bytea NOT NULL)"
            ).format(self.media_table)
        )

    def create_table(self) -> None:
        with self.datastore.get_connection() as conn, ddl_session(conn, self.datastore.schema):
            super().create_table()

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ids = super().insert_events(stored_events, **kwargs)
        self.datastore.faults.cleared()  # type: ignore[attr-defined]
        return ids

    def _insert_events(self, curs: psycopg.Cursor[Any], stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        # Fresh person keys go in before the events: a conflict found here raises while the transaction is
        # still open, so it rolls back (an error raised after the events' insert would be re-raised by
        # eventsourcing only once its transaction block had committed).
        super()._insert_events(curs, stored_events, **kwargs)
        if self.vault is None:
            return

        def insert(row: KeyRow) -> bool:
            curs.execute(
                SQL(
                    "INSERT INTO {0} VALUES (%s, %s, %s) ON CONFLICT (person_id) DO NOTHING RETURNING person_id"
                ).format(self.keys_table),
                (row.person_id, row.community_id, row.wrapped),
            )
            return curs.fetchone() is not None

        def select(person_id: str) -> KeyRow | None:
            curs.execute(SQL("SELECT * FROM {0} WHERE person_id = %s").format(self.keys_table), (person_id,))
            r = curs.fetchone()
            return KeyRow(r["person_id"], r["community_id"], r["wrapped"]) if r else None

        store_person_keys(self.vault, stored_events, insert, select)

    def _fetch_ids_after_insert_events(
        self, curs: psycopg.Cursor[Any], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        rows = command_rows(kwargs.get("command"), stored_events, ids)
        if rows:
            curs.executemany(self.insert_command_statement, rows)
        if self.vault is not None:
            for person_id in self.vault.keys_to_destroy(stored_events):
                curs.execute(
                    SQL("UPDATE {0} SET wrapped = NULL WHERE person_id = %s").format(self.keys_table), (person_id,)
                )
        return ids

    def select_events_of(self, originator_ids: Sequence[uuid.UUID]) -> list[StoredEvent]:
        """Every stored event of these aggregates, in one query, by aggregate and version."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT * FROM {0}.{1} WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
                ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name)),
                (list(originator_ids),),
            )
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    def select_person_keys(self, person_ids: Sequence[str]) -> dict[str, KeyRow]:
        if not person_ids:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT * FROM {0} WHERE person_id = ANY(%s)").format(self.keys_table), (list(person_ids),)
            )
            return {r["person_id"]: KeyRow(r["person_id"], r["community_id"], r["wrapped"]) for r in curs.fetchall()}

    def person_key_rows(self, after: str, limit: int) -> list[KeyRow]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT * FROM {0} WHERE person_id > %s AND wrapped IS NOT NULL ORDER BY person_id LIMIT %s"
                ).format(self.keys_table),
                (after, limit),
            )
            return [KeyRow(r["person_id"], r["community_id"], r["wrapped"]) for r in curs.fetchall()]

    def replace_wrapped(self, person_id: str, old: str, new: str) -> bool:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("UPDATE {0} SET wrapped = %s WHERE person_id = %s AND wrapped = %s").format(self.keys_table),
                (new, person_id, old),
            )
            return curs.rowcount == 1

    def get(self, key: str) -> CommandRecord | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT * FROM {0} WHERE key = %s").format(self.commands_table), (key,))
            row = curs.fetchone()
        return CommandRecord.from_row(row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, CommandRecord]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT * FROM {0} WHERE key = ANY(%s)").format(self.commands_table), (wanted,))
            return {row["key"]: CommandRecord.from_row(row) for row in curs.fetchall()}

    def put(self, record: CommandRecord) -> bool:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.insert_command_statement + SQL(" ON CONFLICT (key) DO NOTHING"), record.row())
            return curs.rowcount == 1

    def put_all(self, records: Sequence[CommandRecord]) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.executemany(self.insert_command_statement, [r.row() for r in records])

    def put_media(self, sha256: str, content_type: str, data: bytes) -> bool:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("INSERT INTO {0} VALUES (%s, %s, %s) ON CONFLICT (sha256) DO NOTHING").format(self.media_table),
                (sha256, content_type, data),
            )
            return curs.rowcount == 1

    def get_media(self, sha256: str) -> tuple[str, bytes] | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT content_type, data FROM {0} WHERE sha256 = %s").format(self.media_table), (sha256,)
            )
            row = curs.fetchone()
        return (row["content_type"], bytes(row["data"])) if row else None

    def identity(self) -> str:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("INSERT INTO {0} VALUES ('store_id', %s) ON CONFLICT (key) DO NOTHING").format(self.meta_table),
                (uuid.uuid4().hex,),
            )
            curs.execute(SQL("SELECT value FROM {0} WHERE key = 'store_id'").format(self.meta_table))
            row = curs.fetchone()
            assert row is not None
            return str(row["value"])


class BatonPostgresDatastore(PostgresDatastore):
    """eventsourcing's PostgresDatastore whose disk-full and read-only errors are StoreFull and StoreReadOnly.

    They are raised at once, not retried (eventsourcing retries an OperationalError ten times). When a session is
    found read-only the pool's sessions are renewed: one opened against a read-only database (or a standby) stays
    read-only, a fresh one may not.
    """

    faults: FaultState

    @property
    def where(self) -> str:
        return f"PostgreSQL database {self.pool.kwargs.get('dbname')!r}, schema {self.schema!r}"

    @contextmanager
    def get_connection(self) -> Iterator[Any]:
        try:
            with super().get_connection() as conn:
                yield conn
        except StoreFault:
            raise
        except PersistenceError as exc:
            fault = as_fault(exc, self.where)
            if fault is None:
                raise
            self.faults.met(fault)
            if isinstance(fault, StoreReadOnly):
                self.pool.drain()  # every session, this one too, is closed: the next ones open afresh
            raise fault from exc

    @contextmanager
    def transaction(self, *, commit: bool = False) -> Iterator[Any]:
        with super().transaction(commit=commit) as curs:
            yield curs
        if commit:
            self.faults.cleared()


def baton_postgres(datastore: PostgresDatastore) -> BatonPostgresDatastore:
    """The datastore, as a BatonPostgresDatastore (eventsourcing's factory makes a plain one)."""
    datastore.__class__ = BatonPostgresDatastore
    assert isinstance(datastore, BatonPostgresDatastore)
    datastore.faults = FaultState()
    return datastore


class BatonPostgresFactory(PostgresFactory):
    """eventsourcing's PostgreSQL factory on a BatonPostgresDatastore (name it in PERSISTENCE_MODULE by its topic)."""

    def __init__(self, env: Environment | Any) -> None:
        super().__init__(env)
        baton_postgres(self.datastore)


class Store:
    """The opened event store: its factory, recorder and mapper, shared by every Application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend = "postgresql" if settings.is_postgres else "sqlite"
        env = self._environment(settings)
        self.env = Environment("Baton", env)
        if settings.is_postgres:
            ensure_schema(env)
        self.factory = InfrastructureFactory.construct(self.env)
        self.recorder: BatonSQLiteRecorder | BatonPostgresRecorder = self.factory.application_recorder()  # type: ignore[assignment]
        transcoder = self.factory.transcoder()
        if isinstance(transcoder, JSONTranscoder):
            for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), SealedAsToken()):
                transcoder.register(transcoding)
        self.mapper: Mapper[Any] = self.factory.mapper(transcoder=transcoder)
        self.identity = self.recorder.identity()
        self.secrets = secret_store(settings, Sql(self.recorder.datastore))
        """The installation's keys in the database (BATON_MASTER_KEY), or None: each data dir keeps its own."""
        self.vault = Vault(self.recorder, load_master_key(settings.data_dir, settings.pii_key, self.secrets))
        self.recorder.vault = self.vault
        self._listeners: list[Callable[[int], None]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listening: threading.Thread | None = None

    @staticmethod
    def _environment(settings: Settings) -> dict[str, str]:
        if settings.is_postgres:
            return {
                "PERSISTENCE_MODULE": get_topic(BatonPostgresFactory),
                "APPLICATION_RECORDER_TOPIC": get_topic(BatonPostgresRecorder),
                **settings.postgres_env(),
            }
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": get_topic(BatonSQLiteFactory),
            "APPLICATION_RECORDER_TOPIC": get_topic(BatonSQLiteRecorder),
            "SQLITE_DBNAME": str(settings.data_dir / "events.sqlite"),
            "SQLITE_LOCK_TIMEOUT": str(settings.sqlite_busy_timeout),
        }

    @property
    def commands(self) -> CommandLog:
        return self.recorder

    @property
    def faults(self) -> FaultState:
        """The last disk-full or read-only fault a write to the event store met, until a write commits again."""
        return self.recorder.datastore.faults

    def fault(self) -> dict[str, Any] | None:
        """The last write fault as /health shows it, or None: it stands until a command's events are stored again.

        No probe: on PostgreSQL a small write may fit in a table's free space while the next page of events does not.
        """
        return self.faults.report()

    def max_position(self) -> int:
        """The position of the newest stored event, 0 when there is none."""
        return self.recorder.max_notification_id() or 0

    def select(self, after: int, limit: int, stop: int | None = None) -> Sequence[Notification]:
        """Up to `limit` notifications with positions above `after` (and at most `stop`)."""
        return self.recorder.select_notifications(start=after, limit=limit, stop=stop, inclusive_of_start=False)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call listener(position) after every save: this process's at once, another's (PostgreSQL) on NOTIFY.

        On a notification from another process the position is 0: the listener reads what is new itself.
        """
        with self._lock:
            self._listeners.append(listener)
            if self.settings.is_postgres and self._listening is None:
                self._listening = threading.Thread(target=self._listen, name="store-listen", daemon=True)
                self._listening.start()

    def _listen(self) -> None:
        """LISTEN on the channel eventsourcing NOTIFYs in every insert of events, whoever inserts them."""
        channel = SQL("LISTEN {0}").format(Identifier(self.recorder.channel_name))
        while not self._closing.is_set():
            try:
                with pg_connect(self.settings, autocommit=True) as conn:
                    conn.execute(channel)
                    self.saved(0)  # whatever was saved while nobody listened
                    while not self._closing.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.saved(0)
            except psycopg.Error as exc:
                log.warning("store_listen_failed", error=str(exc))
                self._closing.wait(1.0)

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def saved(self, position: int) -> None:
        """Tell listeners that events up to position were saved."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(position)

    def views_datastore(self) -> BatonSQLiteDatastore | PostgresDatastore:
        """Where read models live: a second SQLite file, or the same PostgreSQL schema."""
        return views_datastore(self.settings)

    def close(self) -> None:
        self._closing.set()
        self.factory.close()


def views_datastore(settings: Settings) -> BatonSQLiteDatastore | PostgresDatastore:
    """Where read models (and the Merkle tree and checkpoints) live: views.sqlite, or the store's PostgreSQL schema."""
    if settings.is_postgres:
        return postgres_datastore(settings, pool_size=4, max_overflow=8)
    return BatonSQLiteDatastore(
        str(settings.data_dir / "views.sqlite"), lock_timeout=settings.sqlite_busy_timeout, pool_size=6
    )


def pg_connect(settings: Settings, **options: Any) -> psycopg.Connection[Any]:
    """A plain connection to BATON_STORE's database (outside eventsourcing's pools), with psycopg's OPTIONS."""
    pg = settings.postgres_env()
    return psycopg.connect(
        dbname=pg["POSTGRES_DBNAME"],
        host=pg["POSTGRES_HOST"],
        port=pg["POSTGRES_PORT"],
        user=pg["POSTGRES_USER"],
        password=pg["POSTGRES_PASSWORD"],
        connect_timeout=int(float(pg["POSTGRES_CONNECT_TIMEOUT"])),
        **options,
    )


def postgres_datastore(settings: Settings, *, pool_size: int, max_overflow: int) -> PostgresDatastore:
    """A PostgresDatastore on BATON_STORE's schema (beside the event store's own)."""
    pg = settings.postgres_env()
    return baton_postgres(
        PostgresDatastore(
            dbname=pg["POSTGRES_DBNAME"],
            host=pg["POSTGRES_HOST"],
            port=pg["POSTGRES_PORT"],
            user=pg["POSTGRES_USER"],
            password=pg["POSTGRES_PASSWORD"],
            schema=pg["POSTGRES_SCHEMA"],
            connect_timeout=float(pg["POSTGRES_CONNECT_TIMEOUT"]),
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
    )


def secret_store(settings: Settings, sql: Sql) -> SecretStore | None:
    """The installation's keys (BATON_MASTER_KEY), or None: keys per data dir, if the database keeps none."""
    table = SecretTable(sql)
    master = settings.master_key_bytes
    if master is None:
        refuse_without_master_key(table)
        return None
    return SecretStore(table, master)


@contextmanager
def open_secrets(settings: Settings) -> Iterator[SecretStore | None]:
    """The installation's keys for a command that opens no Store (`baton token issue`); None without a master key."""
    if settings.master_key_bytes is None:
        yield None
        return
    if settings.is_postgres:
        ensure_schema(settings.postgres_env())
        datastore: BatonSQLiteDatastore | PostgresDatastore = postgres_datastore(settings, pool_size=1, max_overflow=1)
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        datastore = BatonSQLiteDatastore(
            str(settings.data_dir / "events.sqlite"), lock_timeout=settings.sqlite_busy_timeout, pool_size=1
        )
    try:
        yield secret_store(settings, Sql(datastore))
    finally:
        datastore.close()


def ensure_schema(env: dict[str, str]) -> None:
    """Create the PostgreSQL schema BATON_STORE names, if it is missing (one instance at a time)."""
    schema = env["POSTGRES_SCHEMA"]
    with (
        psycopg.connect(
            dbname=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
            connect_timeout=int(float(env["POSTGRES_CONNECT_TIMEOUT"])),
            autocommit=True,
        ) as conn,
        conn.transaction(),
    ):
        serialise_ddl(conn, schema)  # instances starting at once would both find it missing
        conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {0}").format(Identifier(schema)))


__all__ = [
    "CommandLog",
    "CommandRecord",
    "Commands",
    "IntegrityError",
    "Store",
    "command_rows",
    "ensure_schema",
    "open_secrets",
    "views_datastore",
]
