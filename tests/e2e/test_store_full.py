"""A full disk and a read-only store, for real: `baton serve` on a small tmpfs filled up under load (SQLite), on a
PostgreSQL tablespace on a small tmpfs filled up, on a PostgreSQL role made read-only; and SQLite's own read-only
refusal. Commands are answered 503 `store_full` / `store_read_only` with Retry-After, nothing is half-stored,
department commands wait in BATON_INTAKE and get one outcome each, /health says why, and service resumes by
itself once the operator frees space or makes the store writable: the same commands are then recorded once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from api.app import create_app
from api.tokens import Tokens
from consumers.intake import Intake
from infra.bootstrap import bootstrap
from infra.clock import ManualClock
from infra.settings import Settings
from infra.sqlite import BatonSQLiteConnection, BatonSQLiteConnectionPool
from infra.store_faults import StoreReadOnly
from tests.conftest import PG_URL, START, Auth, seed_county_direct
from tests.faults import Audit, Load, Served, audit, settle

WORKERS = 4
TMPFS_MB = 48


@contextlib.contextmanager
def tmpfs(path: Path, megabytes: int, options: str = "") -> Iterator[Path]:
    """A tmpfs of that size mounted at path, unmounted afterwards; with CI set, a failed mount fails the test."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m{options}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs at {path}: {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of directory with one file, until it has no byte left; the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> float:
    """Wait until check() is true; the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.1)
    return round(time.monotonic() - start, 2)


async def health(served: Served) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        answer: dict[str, Any] = (await client.get(f"{served.url}/health")).json()
        return answer


def faulted(load: Load, code: str) -> int:
    return sum(s.codes_503.count(code) for s in load.sent)


class Episode:
    """One fault: how it was seen, how long it lasted, what was refused meanwhile."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.figures: dict[str, Any] = {"fault": code}

    async def run(self, served: Served, load: Load, start: Callable[[], Any], end: Callable[[], Any]) -> None:
        before, nats_before = faulted(load, self.code), len(load.nats_sent)
        await asyncio.to_thread(start)
        began = time.monotonic()
        self.figures["first_503_s"] = await until(
            f"a command answered 503 {self.code}", lambda: asyncio.sleep(0, faulted(load, self.code) > before)
        )
        seen: dict[str, Any] = {}

        async def degraded() -> bool:
            seen.update(await health(served))
            return seen["status"] == "degraded" and seen["store"].get("fault") == self.code

        await until(f"/health degraded with {self.code}", degraded)
        self.figures["health_error"] = seen["store"]["error"]
        await asyncio.sleep(2.0)  # commands keep coming, HTTP and NATS
        await asyncio.to_thread(end)
        ended = time.monotonic()

        async def healthy() -> bool:
            h = await health(served)
            return h["store"].get("writable", True) and h["store"].get("ok", False)

        self.figures["writable_again_s"] = await until("/health writable again", healthy)
        self.figures["fault_s"] = round(ended - began, 2)
        self.figures["answered_503"] = faulted(load, self.code) - before
        self.figures["nats_sent_meanwhile"] = len(load.nats_sent) - nats_before


async def under_load(served: Served, episodes: list[tuple[Episode, Callable[[], Any], Callable[[], Any]]]) -> Audit:
    await served.start()
    load = Load(served)
    await load.seed()
    nc = await served.nats()
    workers = [asyncio.create_task(load.worker()) for _ in range(WORKERS)]
    department = asyncio.create_task(load.department(nc))
    try:
        await asyncio.sleep(2.0)
        for episode, start, end in episodes:
            await episode.run(served, load, start, end)
            await asyncio.sleep(2.0)
    finally:
        load.stopping = True
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.wait_for(department, 120)
        await nc.close()
    await settle(served, load, timeout=120)
    result = await audit(served, load)
    await load.close()
    check(served, load, result, [e for e, _, _ in episodes])
    return result


def check(served: Served, load: Load, result: Audit, episodes: list[Episode]) -> None:
    """The exactly-once audit, and: a command answered 503 for the fault left no event of its own meanwhile."""
    counts = events_by_correlation(served.settings())
    # Commands of one kind make the same number of events; one refused first and accepted on retry must too.
    usual: dict[str, Counter[int]] = {}
    for s in load.sent:
        if s.accepted and not s.refused_503:
            usual.setdefault(s.what, Counter())[counts[s.correlation_id]] += 1
    refused = [s for s in load.sent if any(c in ("store_full", "store_read_only") for c in s.codes_503)]
    doubled = [s for s in refused if s.accepted and counts[s.correlation_id] not in usual.get(s.what, {})]
    left = [s for s in refused if not s.accepted and counts[s.correlation_id]]
    figures = {
        **result.figures(),
        "commands": len(load.sent),
        "answered_503_for_fault_then_accepted": sum(1 for s in refused if s.accepted),
        "episodes": [e.figures for e in episodes],
    }
    print("store-fault-figures", json.dumps(figures, ensure_ascii=False))
    assert refused, "no command met the fault"
    assert not doubled and not left, (doubled[:3], left[:3])
    assert all(s.accepted or s.what == "evaluate-too-early" for s in refused), [s.body for s in refused][:3]
    assert result.lost == 0 and result.duplicated == 0 and result.published == result.events
    assert result.rejected_with_events == 0 and result.accepted_without_events == 0
    assert result.nats_rejected_with_events == 0 and result.nats_accepted_without_events == 0
    assert result.read_models_match_rebuild
    assert result.nats_outcomes_in_order  # the batch the store refused was decided again in place, not nacked


def events_by_correlation(settings: Settings) -> Counter[str]:
    baton = bootstrap(settings)
    try:
        found: Counter[str] = Counter()
        after = 0
        while batch := baton.store.select(after, 5000):
            found.update(baton.codec.envelope(n).correlation_id or "" for n in batch)
            after = batch[-1].id
        return found
    finally:
        baton.close()


async def test_sqlite_disk_full_under_load_then_space_freed(tmp_path: Path) -> None:
    """The data dir on a 48 MB tmpfs, filled up while serve takes HTTP and department commands; then space freed."""
    data = tmp_path / "data"
    with tmpfs(data, TMPFS_MB):
        # JetStream keeps its own store, and disables itself on a full disk: here it lives beside, not on, the tmpfs.
        (tmp_path / "nats").mkdir()
        (data / "nats").symlink_to(tmp_path / "nats")
        served = Served(data, "sqlite")
        served.log = tmp_path / "serve.log"
        full = Episode("store_full")
        filler: list[Path] = []
        try:
            await under_load(served, [(full, lambda: filler.append(fill(data)), lambda: filler.pop().unlink())])
        finally:
            served.stop()
        assert "events.sqlite" in full.figures["health_error"] or "views.sqlite" in full.figures["health_error"]


async def test_sqlite_read_only_store_is_refused_then_recorded_once(tmp_path: Path, tokens: Tokens) -> None:
    """SQLite refusing writes (SQLITE_READONLY) to every connection: HTTP 503 store_read_only, the intake's batch left
    undecided; once writable, the same commands are recorded once, without a restart."""
    settings = Settings(data_dir=tmp_path, store="sqlite", watch_interval=3600)
    baton = bootstrap(settings, ManualClock(START))
    seed_county_direct(baton)
    pool = baton.store.recorder.datastore.pool
    assert isinstance(pool, BatonSQLiteConnectionPool)
    read_only = {"on": False}
    create = pool._create_connection

    def connect() -> BatonSQLiteConnection:
        conn = create()
        if read_only["on"]:  # SQLite's own switch: every write is "attempt to write a readonly database"
            conn._sqlite_conn.execute("PRAGMA query_only = ON")
        return conn

    pool._create_connection = connect  # type: ignore[method-assign]
    auth = Auth(tokens)
    blow = {"community_id": "tishu", "category": "drainage", "title": "Drain", "description": "Blocked"}
    keys = [f"blow-{i}" for i in range(5)]
    headers = auth("community", "tishu", "wang")
    try:
        transport = httpx.ASGITransport(app=create_app(baton, tokens))
        async with httpx.AsyncClient(transport=transport, base_url="http://baton.test") as client:
            first = await client.post("/v1/whistles", json=blow, headers={**headers, "Idempotency-Key": "first"})
            assert first.status_code == 201
            wid = first.json()["whistle_id"]
            before = baton.store.max_position()
            read_only["on"] = True
            pool.drain()
            refused = await asyncio.gather(
                *(client.post("/v1/whistles", json=blow, headers={**headers, "Idempotency-Key": k}) for k in keys)
            )
            assert {r.status_code for r in refused} == {503}, [r.text for r in refused]
            error = refused[0].json()["error"]
            assert error["code"] == "store_read_only" and "events.sqlite" in error["message"], error
            assert "nothing was recorded" in error["message"] and refused[0].headers["Retry-After"] == "5"
            assert baton.store.fault() is not None and baton.store.fault()["code"] == "store_read_only"
            intake = Intake(baton.whistles, baton.org, baton.store.commands)
            command = json.dumps({"command_id": "c-1", "whistle_id": wid}).encode()
            with pytest.raises(StoreReadOnly):  # unacked: redelivered and decided once the store takes writes
                intake.decide_batch([("baton.dept.HOUSING.cmd.report_in", command, 1)])
            assert baton.store.max_position() == before
            read_only["on"] = False  # the operator makes it writable; nothing is restarted
            again = await asyncio.gather(
                *(client.post("/v1/whistles", json=blow, headers={**headers, "Idempotency-Key": k}) for k in keys)
            )
            # A command on a connection opened while read-only may meet it once more (and renews the pool's).
            for i, answer in enumerate(again):
                if answer.status_code == 503:
                    again[i] = await client.post(
                        "/v1/whistles", json=blow, headers={**headers, "Idempotency-Key": keys[i]}
                    )
            assert [r.status_code for r in again] == [201] * len(keys), [r.text for r in again]
            assert baton.store.fault() is None
            replayed = await client.post("/v1/whistles", json=blow, headers={**headers, "Idempotency-Key": keys[0]})
            assert replayed.headers.get("Idempotent-Replayed") == "true"
            [(_, outcome, _)] = intake.decide_batch([("baton.dept.HOUSING.cmd.report_in", command, 1)])
            assert outcome.status == "accepted", outcome
            assert baton.store.max_position() == before + len(keys) + 1
    finally:
        baton.close()


# PostgreSQL -----------------------------------------------------------------------------------------------------


def admin(statement: sql.Composable | str, params: tuple[Any, ...] = ()) -> list[Any]:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def postgres_role_on_tmpfs(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A login role whose tables land in a tablespace on a small tmpfs (the role's default_tablespace); dropped
    afterwards with its schema and tablespace, and unmounted."""
    tag = uuid.uuid4().hex[:8]
    role, space, schema = f"baton_full_{tag}", f"baton_full_{tag}", f"t_full_{tag}"
    mount = Path(f"/tmp/baton-pgspace-{tag}")
    uid, gid = _postgres_ids()
    with tmpfs(mount, 24, f",mode=0700,uid={uid},gid={gid}"):
        try:
            admin(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role)))
            admin(
                sql.SQL("CREATE TABLESPACE {} OWNER {} LOCATION {}").format(
                    sql.Identifier(space), sql.Identifier(role), sql.Literal(str(mount))
                )
            )
            admin(
                sql.SQL("ALTER ROLE {} SET default_tablespace = {}").format(sql.Identifier(role), sql.Identifier(space))
            )
            yield role, schema, mount
        finally:
            terminate(role)
            admin(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            with contextlib.suppress(psycopg.Error):
                admin(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(space)))
            admin(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def terminate(role: str) -> None:
    """End the role's sessions (only this test's): new ones read the role's settings afresh."""
    admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))


def set_read_only(role: str, on: bool) -> None:
    if on:
        admin(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(role)))
        terminate(role)  # as a failover to a standby would
    else:
        admin(sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(sql.Identifier(role)))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_tablespace_full_then_role_read_only_under_load(backend: str, tmp_path: Path) -> None:
    """Baton's tables in a tablespace on a 24 MB tmpfs, filled up under load, then freed; then the role made read-only
    (its sessions ended, as by a failover onto a standby), then writable again."""
    with postgres_role_on_tmpfs(tmp_path) as (role, schema, mount):
        store = f"postgresql://{role}@127.0.0.1:5432/test?schema={schema}&connect_timeout=2"
        served = Served(tmp_path / "served", store)
        full, read_only = Episode("store_full"), Episode("store_read_only")
        filler: list[Path] = []
        try:
            await under_load(
                served,
                [
                    (full, lambda: filler.append(fill(mount)), lambda: filler.pop().unlink()),
                    (read_only, lambda: set_read_only(role, True), lambda: set_read_only(role, False)),
                ],
            )
            spaces = admin(
                "SELECT count(*) FILTER (WHERE tablespace IS NOT NULL), count(*) FROM pg_tables WHERE schemaname = %s",
                (schema,),
            )
            assert spaces[0][0] == spaces[0][1] > 0, spaces  # every table was on the small tablespace
        finally:
            served.stop()
            with contextlib.suppress(psycopg.Error):
                set_read_only(role, False)
        assert "PostgreSQL database 'test'" in full.figures["health_error"]
