"""`baton backup` and `baton restore`, on real SQLite and PostgreSQL: a consistent copy taken while `baton serve`
writes, restored with every position kept, across backends, refused where it must be; and the pg_dump path."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from infra.backup import VERSION, backup, events_table, read_summary
from infra.bootstrap import Container, bootstrap
from infra.cli import app as cli
from infra.lock import DataDirLock
from infra.settings import Settings
from infra.sql import Sql
from infra.sqlite import BatonSQLiteDatastore
from infra.store import ensure_schema, postgres_datastore
from projections.base import catch_up_together
from services.access import Actor, Context, Role
from tests.conftest import PG_URL, blow_direct, seed_county_direct
from tests.faults import BATON, Load, Served, settle

REPORTER = {"name": "王芳", "phone": "13900001111"}
PHOTO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # NUL bytes and all


@pytest.fixture
def new_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Makes fresh, empty stores of the test's backend (SQLite data dirs, or PostgreSQL schemas dropped after)."""
    schemas: list[str] = []

    def make(name: str, kind: str | None = None) -> Settings:
        kind = kind or backend
        data_dir = tmp_path / name
        if kind == "sqlite":
            return Settings(data_dir=data_dir, store="sqlite", watch_interval=3600)
        request.getfixturevalue("postgres_url")
        schemas.append(f"t_{uuid.uuid4().hex[:10]}")
        return Settings(data_dir=data_dir, store=f"{PG_URL}?schema={schemas[-1]}", watch_interval=3600)

    yield make
    if schemas:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment naming that store. The log level stays info: a CLI run in-process configures logging for
    the tests after it, which capture info logs."""
    return {**os.environ, "BATON_DATA_DIR": str(settings.data_dir), "BATON_STORE": settings.store, **extra}


def baton_cli(settings: Settings, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """`baton ARGS` as a child process on that store."""
    env = env_of(settings, BATON_LOG_LEVEL="warning")
    done = subprocess.run([BATON, *args], env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, f"baton {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}"
    return done


def history(settings: Settings) -> list[tuple[int, str, int, str, bytes]]:
    """Every stored event as (position, aggregate, version, topic, state)."""
    baton = bootstrap(settings)
    try:
        rows, after = [], 0
        while batch := baton.store.select(after, 5000):
            rows += [(n.id, str(n.originator_id), n.originator_version, n.topic, bytes(n.state)) for n in batch]
            after = batch[-1].id
        return rows
    finally:
        baton.close()


def commands(settings: Settings) -> dict[str, list[int]]:
    """The command log: key -> positions of its events."""
    baton = bootstrap(settings)
    try:
        with baton.store.recorder.datastore.transaction(commit=False) as c:
            schema = getattr(baton.store.recorder.datastore, "schema", None)
            table = f'"{schema}".baton_commands' if settings.is_postgres else "baton_commands"
            c.execute(f"SELECT key, positions FROM {table}")
            return {r["key"]: json.loads(r["positions"]) for r in c.fetchall()}
    finally:
        baton.close()


class Clipped:
    """A store's events up to a position, as projections read them."""

    def __init__(self, baton: Container, stop: int) -> None:
        self.source, self.stop = baton.source, stop

    def envelopes(self, after: int, limit: int, stop: int | None = None) -> list[Any]:
        return self.source.envelopes(after, limit, stop=min(self.stop, stop if stop is not None else self.stop))


def views_at(settings: Settings, position: int, scratch: Settings) -> dict[str, Any]:
    """Every read model built from scratch over the store's events up to position (in the scratch store's views)."""
    if scratch.is_postgres:
        ensure_schema(scratch.postgres_env())
        sql_ = Sql(postgres_datastore(scratch, pool_size=2, max_overflow=2))
    else:
        scratch.data_dir.mkdir(parents=True, exist_ok=True)
        sql_ = Sql(BatonSQLiteDatastore(str(scratch.data_dir / "views.sqlite")))
    baton = bootstrap(settings)
    try:
        source = Clipped(baton, position)
        projections = [type(p)(type(p.view)(sql_), source) for p in baton.projections.values()]
        assert catch_up_together(projections) == position
        return {p.name: p.view.dump() for p in projections}
    finally:
        baton.close()
        sql_.close()


def live_views(settings: Settings) -> dict[str, Any]:
    baton = bootstrap(settings)
    try:
        return {name: p.view.dump() for name, p in baton.projections.items()}
    finally:
        baton.close()


def root_at(settings: Settings, size: int) -> str:
    baton = bootstrap(settings)
    try:
        baton.notary.catch_up()
        return baton.notary.view.root(size).hex()
    finally:
        baton.close()


def export_and_verify(settings: Settings, out: Path) -> dict[str, Any]:
    """`baton export` of the store, checked by `baton verify` (exit 0); its manifest."""
    baton_cli(settings, "export", "--out", str(out))
    verified = subprocess.run([BATON, "verify", str(out)], capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout
    return dict(json.loads((out / "manifest.json").read_text()))


async def test_backup_while_serving(backend: str, new_store: Any, tmp_path: Path) -> None:
    """A backup taken mid-load holds exactly the events up to its snapshot; restored, it serves the same history."""
    original = new_store("original")
    served = Served(original.data_dir, original.store, env={"BATON_CHECKPOINT_INTERVAL": "0.3"})
    file = tmp_path / "mid-load.backup"
    await served.start()
    try:
        load = Load(served)
        await load.seed()
        workers = [asyncio.create_task(load.worker()) for _ in range(3)]
        await asyncio.sleep(2.0)
        took = await asyncio.to_thread(served.cli, "backup", "--out", str(file))
        await asyncio.sleep(1.0)
        load.stopping = True
        await asyncio.gather(*workers)
        await load.close()
        await settle(served, load)
    finally:
        served.stop()
    summary = read_summary(file)
    print(f"\nbackup mid-load: {took.strip()}")
    before = history(original)
    assert before[-1][0] > summary.position > 50, "the backup was not taken mid-load"
    assert summary.checkpoints >= 1 and 0 < summary.tree_size <= summary.events
    assert oct(file.stat().st_mode & 0o777) == "0o600"

    restored = new_store("restored")
    shutil.copytree(original.data_dir / "keys", restored.data_dir / "keys")
    done = baton_cli(restored, "restore", str(file))
    assert "signed the restored checkpoints" in done.stdout + done.stderr, done.stdout + done.stderr

    # Every event up to the snapshot, at its position, and nothing after it; the command log cut at the same place.
    after = history(restored)
    assert after == [e for e in before if e[0] <= summary.position]
    assert len(after) == summary.events
    logged, restored_log = commands(original), commands(restored)
    assert restored_log, "the load's idempotency keys were not logged"
    assert all(max(p, default=0) <= summary.position for p in restored_log.values())
    assert all(logged[k] == p for k, p in restored_log.items())
    assert {k for k, p in logged.items() if p and max(p) <= summary.position} <= set(restored_log)

    # serve rebuilds every read model from the restored history: equal to the original's at the snapshot.
    again = Served(restored.data_dir, restored.store)
    await again.start()
    try:
        await settle(again, None)  # type: ignore[arg-type]  # it waits on /health only
    finally:
        again.stop()
    expected = views_at(original, summary.position, new_store("scratch"))
    assert expected["whistle_board"]["baton_whistles"], "no whistle was blown before the backup"
    assert live_views(restored) == expected

    manifest = export_and_verify(restored, tmp_path / "export")
    assert manifest["tree_size"] == summary.events
    assert manifest["root"] == root_at(original, summary.events)


def test_restore_into_the_other_backend(backend: str, new_store: Any, tmp_path: Path) -> None:
    """SQLite -> PostgreSQL (the county-to-city path) and back: positions, person keys, identity, checkpoints kept."""
    source = new_store("source")
    target = new_store("target", "postgres" if backend == "sqlite" else "sqlite")
    baton = bootstrap(source)
    try:
        assert baton.store.recorder.events_table_name == events_table(source)
        seed_county_direct(baton)
        ctx = Context(actor=Actor(Role.COMMUNITY, "tishu", "wang"), correlation_id="reporter")
        baton.whistles.blow(
            ctx, community_id="tishu", category="drainage", title="t", description="d", reporter=REPORTER
        )
        photo = baton.reports.upload_photo(ctx, PHOTO)["sha256"]
        blow_direct(baton, 20)
        baton.notary.catch_up()
        baton.notary.sign()
        blow_direct(baton, 3)
    finally:
        baton.close()
    file = tmp_path / "county.backup"
    summary = backup(source, file)
    events = history(source)
    assert (summary.source, summary.checkpoints) == (source.store.split(":")[0], 1)
    assert (summary.events, summary.position) == (len(events), events[-1][0])

    shutil.copytree(source.data_dir / "keys", target.data_dir / "keys")
    runner = CliRunner()
    result = runner.invoke(cli, ["restore", str(file)], env=env_of(target))
    assert result.exit_code == 0, result.output
    assert "signed the restored checkpoints" in result.output
    assert history(target) == events

    baton = bootstrap(target)
    try:
        tokens = [t for e in baton.source.envelopes(0, 100) for t in _tokens(e.body())]
        assert tokens and set(baton.store.vault.reveal(tokens).values()) == set(REPORTER.values())
        assert baton.store.identity == summary.store_id
        assert baton.reports.photo(photo) == ("image/png", PHOTO)  # kept outside the log, travels with the backup
        blow_direct(baton, 1)  # new events continue right after the restored ones
        assert baton.store.max_position() == summary.position + 1
    finally:
        baton.close()
    manifest = export_and_verify(target, tmp_path / "export")
    assert manifest["tree_size"] == summary.events + 1
    assert root_at(target, summary.events) == root_at(source, summary.events)


def _tokens(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value.startswith("pii1."):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tokens(v)
    elif isinstance(value, list):
        for v in value:
            yield from _tokens(v)


def test_restore_refuses(settings: Settings, new_store: Any, tmp_path: Path) -> None:
    """Not a backup, a newer format, a store that holds anything, a data dir in use: each refused, saying what to do."""
    baton = bootstrap(settings)
    try:
        seed_county_direct(baton)
    finally:
        baton.close()
    good = tmp_path / "good.backup"
    backup(settings, good)
    runner = CliRunner()

    def restore(file: Path, into: Settings) -> Any:
        return runner.invoke(cli, ["restore", str(file)], env=env_of(into))

    garbage = tmp_path / "garbage.backup"
    garbage.write_bytes(os.urandom(4096))
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    newer = tmp_path / "newer.backup"
    shutil.copy(good, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE baton_backup SET value = ? WHERE key = 'version'", (str(VERSION + 1),))
    cases = [
        (garbage, "is not a Baton backup"),
        (other, "not a Baton backup (no baton_backup table)"),
        (tmp_path / "missing.backup", "there is no file"),
        (newer, f"format version {VERSION + 1}"),
    ]
    empty = new_store("empty")
    for file, said in cases:
        result = restore(file, empty)
        assert result.exit_code == 2, result.output
        assert said in result.output, result.output
        what_to_do = "baton backup --out FILE" if file is not newer else "with that Baton version or a newer one"
        assert what_to_do in result.output.replace("\n", " "), result.output

    refused = restore(good, settings)  # the very store it came from
    assert refused.exit_code == 2
    text = refused.output.replace("\n", " ")
    assert "is not empty" in text and "writes only into an empty store" in text, text
    assert ("new directory" if not settings.is_postgres else "new schema") in text

    with DataDirLock(empty.data_dir, "serve"):
        busy = restore(good, empty)
    assert busy.exit_code == 3 and "stop it first" in busy.output.replace("\n", " "), busy.output
    assert restore(good, empty).exit_code == 0  # nothing was written by the refusals


@pytest.mark.parametrize("backend", ["postgres"])
def test_pg_dump_and_pg_restore(new_store: Any, tmp_path: Path, postgres_url: str) -> None:
    """The README's pg_dump / pg_restore path: into another database, then rebuilt; the same Merkle root."""
    tools = {t: shutil.which(t) for t in ("pg_dump", "pg_restore")}
    if not all(tools.values()):
        message = f"pg_dump / pg_restore not on PATH ({tools})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    source = new_store("source", "postgres")
    baton = bootstrap(source)
    try:
        seed_county_direct(baton)
        blow_direct(baton, 30)
        size = baton.notary.catch_up()
        baton.notary.sign()
        expected_root = baton.notary.view.root(size).hex()
        top = baton.store.max_position()
    finally:
        baton.close()
    schema = source.postgres_env()["POSTGRES_SCHEMA"]
    database = f"baton_restore_{uuid.uuid4().hex[:8]}"
    dump = tmp_path / "store.dump"
    subprocess.run(
        [tools["pg_dump"], "--format=custom", f"--schema={schema}", f"--file={dump}", postgres_url],
        check=True,
        timeout=120,
    )
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        url = postgres_url.rsplit("/", 1)[0] + f"/{database}"
        subprocess.run(
            [tools["pg_restore"], "--no-owner", "--exit-on-error", f"--dbname={url}", str(dump)],
            check=True,
            timeout=120,
        )
        restored = Settings(data_dir=tmp_path / "restored", store=f"{url}?schema={schema}", watch_interval=3600)
        shutil.copytree(source.data_dir / "keys", restored.data_dir / "keys")
        baton_cli(restored, "rebuild")
        manifest = export_and_verify(restored, tmp_path / "export")
        assert (manifest["tree_size"], manifest["root"]) == (size, expected_root)
        baton = bootstrap(restored)
        try:
            blow_direct(baton, 1)  # pg_dump carries the sequence: the next event follows on
            assert baton.store.max_position() == top + 1
        finally:
            baton.close()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def test_keys_sealed_under_the_master_key_travel_with_the_backup(
    settings: Settings, new_store: Any, tmp_path: Path
) -> None:
    """With BATON_MASTER_KEY the keys are in the file (sealed), the master key is not; a restore needs it again."""
    master = base64.b64encode(os.urandom(32)).decode()
    source = settings.model_copy(update={"master_key": master})
    baton = bootstrap(source)
    try:
        seed_county_direct(baton)
        baton.notary.catch_up()
        baton.notary.sign()
    finally:
        baton.close()
    assert not (source.data_dir / "keys").exists(), "keys were written to the data dir despite the master key"
    file = tmp_path / "sealed.backup"
    summary = backup(source, file)
    assert summary.keys_in_file
    assert master.encode() not in file.read_bytes()

    runner = CliRunner()
    without = new_store("without")
    result = runner.invoke(cli, ["restore", str(file)], env=env_of(without))
    assert result.exit_code == 0, result.output
    assert "set the installation's master key" in result.output.replace("\n", " "), result.output

    target = new_store("target")
    result = runner.invoke(cli, ["restore", str(file)], env=env_of(target, BATON_MASTER_KEY=master))
    assert result.exit_code == 0, result.output
    assert "BATON_MASTER_KEY opens the restored keys and signed the restored checkpoints" in result.output
    out = tmp_path / "export"
    exported = subprocess.run(
        [BATON, "export", "--out", str(out)],
        env=env_of(target, BATON_MASTER_KEY=master),
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0, exported.stderr
    verified = subprocess.run([BATON, "verify", str(out)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads((out / "manifest.json").read_text())["root"] == root_at(source, summary.events)
