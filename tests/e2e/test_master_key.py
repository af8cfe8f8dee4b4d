"""Keys from one master key: several instances on one database, each with its own data dir, share the token
keyring, the checkpoint key, the personal-data master key and the NATS secret, kept in the database under
BATON_MASTER_KEY; an existing data dir's keys move in; two instances sealing one new person agree on its key."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError
from structlog.testing import capture_logs
from typer.testing import CliRunner

from api.app import create_app
from api.tokens import InvalidToken, Keyring, Tokens
from domain.privacy import Sealed
from infra.bootstrap import Container, bootstrap
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.nats_auth import NatsAuth
from infra.secrets import SECRETS_TABLE, KeysInDatabase, SecretName, WrongMasterKey
from infra.settings import Settings
from projections.base import catch_up_together
from services.access import Actor, Context, Role
from tests.conftest import ADMIN, CATEGORIES, DEPARTMENTS, PG_URL, START, UNITS, seed_county_direct
from tests.faults import Served

NAME, PHONE, ADDRESS = "王秀英", "13700001111", "青山社区5栋1单元302"
CLI_CTX = Context(actor=ADMIN, correlation_id="test")
STAFF = Context(actor=Actor(Role.COMMUNITY, "tishu", "wang"), correlation_id="test")


def new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def instance(data_dir: Path, store: str, master_key: str | None, **overrides: Any) -> Settings:
    """One instance's settings: its own data dir, the shared store and master key."""
    return Settings(
        data_dir=data_dir,
        store=store,
        master_key=master_key,
        watch_interval=3600,
        checkpoint_interval=0.5,
        **overrides,
    )


@contextmanager
def opened(*settings: Settings) -> Iterator[list[Container]]:
    """bootstrap() each, closed afterwards."""
    batons: list[Container] = []
    try:
        for s in settings:
            batons.append(bootstrap(s, ManualClock(START)))
        yield batons
    finally:
        for b in batons:
            b.close()


def kept_rows(store: str) -> dict[str, tuple[int, str]]:
    """name -> (version, sealed) of every secret kept in a PostgreSQL schema."""
    schema = store.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL) as conn:
        rows = conn.execute(
            sql.SQL("SELECT name, version, sealed FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(SECRETS_TABLE)
            )
        ).fetchall()
    return {name: (version, sealed) for name, version, sealed in rows}


def local_keys(data_dir: Path) -> list[str]:
    keys = data_dir / "keys"
    return sorted(p.name for p in keys.iterdir()) if keys.exists() else []


def blow_with_reporter(baton: Container) -> tuple[str, str]:
    receipt = baton.whistles.blow(
        STAFF,
        community_id="tishu",
        category="drainage",
        title="Sewage in the courtyard",
        description="Reported at the e-station.",
        reporter={"name": NAME, "phone": PHONE, "address": ADDRESS},
    )
    return receipt.body["whistle_id"], receipt.body["reporter_id"]


def reporter_name(baton: Container, whistle_id: str) -> str | None:
    """The whistle's reporter name as this instance's vault reveals it (from the event itself, not a read model)."""
    (blown, *_) = baton.store.recorder.select_events_of([uuid.UUID(whistle_id)])
    token = baton.store.mapper.to_domain_event(blown).reporter["name"]
    assert isinstance(token, Sealed)
    return baton.store.vault.reveal([token.token])[token.token]


@asynccontextmanager
async def client(baton: Container, tokens: Tokens) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(baton, tokens)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test") as c:
        yield c


def poll(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until check() held; AssertionError if it did not within timeout."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"still not so after {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - began


# Settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["short", base64.b64encode(bytes(range(16))).decode(), "not base64 at all!!"])
def test_a_master_key_that_is_not_32_bytes_of_base64_is_refused_saying_how_to_make_one(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"openssl rand -base64 32"):
        Settings(master_key=bad)
    assert Settings(master_key="").master_key is None


# Two instances, one database ---------------------------------------------------------------------------------


async def test_two_instances_on_one_database_share_every_key(tmp_path: Path, pg_schema: str) -> None:
    store, master = f"{PG_URL}?schema={pg_schema}", new_master_key()
    a_settings, b_settings = instance(tmp_path / "a", store, master), instance(tmp_path / "b", store, master)
    with opened(a_settings, b_settings) as (a, b):
        seed_county_direct(a)
        tokens_a = Tokens(Keyring.load(a_settings.data_dir, None, a.store.secrets))
        tokens_b = Tokens(Keyring.load(b_settings.data_dir, None, b.store.secrets))
        admin = {"Authorization": f"Bearer {tokens_a.issue('admin', None, 'root')}"}
        staff = {"Authorization": f"Bearer {tokens_a.issue('community', 'tishu', 'wang')}"}
        async with client(a, tokens_a) as http_a, client(b, tokens_b) as http_b:
            key_a = await http_a.get("/v1/audit/key", headers=admin)
            key_b = await http_b.get("/v1/audit/key", headers=admin)
            assert key_a.status_code == key_b.status_code == 200, key_b.text  # A's token accepted by B
            assert key_a.json() == key_b.json()

            r = await http_a.post(
                "/v1/whistles",
                json={
                    "community_id": "tishu",
                    "category": "drainage",
                    "title": "Sewage in the courtyard",
                    "description": "Reported at the e-station.",
                    "reporter": {"name": NAME, "phone": PHONE, "address": ADDRESS},
                },
                headers=staff,
            )
            assert r.status_code == 201, r.text
            whistle, reporter = r.json()["whistle_id"], r.json()["reporter_id"]
            await asyncio.to_thread(catch_up_together, list(b.projections.values()))
            seen = (await http_b.get(f"/v1/whistles/{whistle}", headers=staff)).json()["reporter"]
            assert (seen["name"], seen["phone"], seen["address"], seen["erased"]) == (NAME, PHONE, ADDRESS, False)

            r = await http_b.post(f"/v1/people/{reporter}/erase", json={"reason": "asked to"}, headers=admin)
            assert r.status_code == 200, r.text
            seen = (await http_a.get(f"/v1/whistles/{whistle}", headers=staff)).json()["reporter"]
            assert (seen["name"], seen["phone"], seen["erased"]) == (None, None, True)

        nats_a = NatsAuth.load(a_settings.data_dir, None, a.store.secrets)
        nats_b = NatsAuth.load(b_settings.data_dir, None, b.store.secrets)
        assert nats_a.department("PSB") == nats_b.department("PSB")
        assert nats_a.service() == nats_b.service()

        kept = kept_rows(store)
        assert sorted(kept) == sorted(n.value for n in SecretName)
        assert all(version == 1 for version, _ in kept.values())
        values = [s.value for n in SecretName if (s := a.store.secrets.get(n)) is not None]  # type: ignore[union-attr]
        log = b"".join(n.state for n in a.store.select(0, 100_000))
        for value in values:  # nothing secret in the table in the clear, nor anywhere in the event log
            for form in (value, base64.b64encode(value), base64.urlsafe_b64encode(value).rstrip(b"=")):
                assert form not in log
                assert all(form.decode(errors="ignore") not in sealed for _, sealed in kept.values())
    assert local_keys(a_settings.data_dir) == local_keys(b_settings.data_dir) == []  # no key in a data dir


def test_a_keyring_change_reaches_the_other_instance_within_seconds(tmp_path: Path, pg_schema: str) -> None:
    store, master = f"{PG_URL}?schema={pg_schema}", new_master_key()
    a_settings, b_settings = instance(tmp_path / "a", store, master), instance(tmp_path / "b", store, master)
    with opened(a_settings, b_settings) as (a, b):
        ring_a = Keyring.load(a_settings.data_dir, None, a.store.secrets)
        tokens_a, tokens_b = Tokens(ring_a), Tokens(Keyring.load(b_settings.data_dir, None, b.store.secrets))
        tokens_a.attach(a.credentials.current)
        tokens_b.attach(b.credentials.current)
        old = tokens_a.issue("admin", None, "root")
        assert tokens_b.verify(old).id == "root"

        kid = ring_a.rotate()
        a.credentials.put_key_in_service(CLI_CTX, kid)
        new = tokens_a.issue("admin", None, "root")

        def accepted() -> bool:
            try:
                return tokens_b.verify(new).id == "root"
            except InvalidToken:
                return False

        new_accepted = poll(accepted)

        def b_signs_with_it() -> bool:
            tokens_b.verify(old)  # as any request does: re-reads the credentials log and keyring once a second
            return tokens_b.keyring.signing == kid

        b_signs = poll(b_signs_with_it)
        a.credentials.retire_key(CLI_CTX, "k1")
        ring_a.remove("k1")

        def refused() -> bool:
            try:
                tokens_b.verify(old)
            except InvalidToken:
                return True
            return False

        old_refused = poll(refused)
        forgotten = poll(lambda: "k1" not in tokens_b.keyring.keys)
        print(
            f"\nkeyring propagation to B: new key's token accepted after {new_accepted:.3f} s, B signing with it "
            f"after {b_signs:.3f} s, old key's token refused after {old_refused:.3f} s, its secret gone after "
            f"{forgotten:.3f} s"
        )
        assert kept_rows(store)[SecretName.TOKEN_KEYRING.value][0] == 3  # made, rotated, retired


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_instances_starting_at_once_make_one_key_each(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store = f"{PG_URL}?schema={request.getfixturevalue('pg_schema')}" if backend == "postgres" else "sqlite"
    master, n = new_master_key(), 4
    # PostgreSQL: four data dirs on one (empty) schema; SQLite: four processes' worth of opens of one events.sqlite.
    dirs = [tmp_path / f"i{i}" for i in range(n)] if backend == "postgres" else [tmp_path] * n
    barrier = threading.Barrier(n)
    seen: list[tuple[str, bytes, bytes, str] | BaseException] = [ValueError("not run")] * n

    def start(i: int) -> None:
        try:
            settings = instance(dirs[i], store, master)
            barrier.wait(timeout=30)
            with opened(settings) as (baton,):
                keyring = Keyring.load(settings.data_dir, None, baton.store.secrets)
                nats = NatsAuth.load(settings.data_dir, None, baton.store.secrets)
                seen[i] = (
                    baton.notary.signer.verifier.vkey(),
                    baton.store.vault._master.encrypt(b"\0" * 12, b"probe", None),
                    nats.secret,
                    repr(sorted(keyring.keys.items())),
                )
        except BaseException as exc:
            seen[i] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    failures = [s for s in seen if isinstance(s, BaseException)]
    assert not failures, failures
    assert len(set(seen)) == 1, "instances starting at once disagree on a key"
    if backend == "postgres":
        assert {v for v, _ in kept_rows(store).values()} == {1}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_two_writers_sealing_one_new_person_at_once_leave_no_unreadable_data(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"{PG_URL}?schema={request.getfixturevalue('pg_schema')}" if backend == "postgres" else "sqlite"
    master = new_master_key()
    data = [tmp_path / "a", tmp_path / "b"] if backend == "postgres" else [tmp_path, tmp_path]
    person = uuid.uuid4()
    with opened(instance(data[0], store, master), instance(data[1], store, master)) as (a, b):
        seed_county_direct(a)
        made_key = threading.Barrier(2)
        for baton in (a, b):
            # Both writers use the same new person (as two instances recording one resident at once would) and
            # both make its key before either saves: the race, every time.
            monkeypatch.setattr(baton.whistles, "_reporter_id", lambda reporter: person)
            key_for, first = baton.store.vault._key_for, [True]

            def racing(pid: uuid.UUID, community: str, key_for: Any = key_for, first: list[bool] = first) -> bytes:
                key = key_for(pid, community)
                if first[0]:
                    first[0] = False
                    made_key.wait(timeout=30)
                return key

            monkeypatch.setattr(baton.store.vault, "_key_for", racing)
        results: list[Any] = [None, None]

        def blow(i: int, baton: Container) -> None:
            try:
                results[i] = blow_with_reporter(baton)
            except BaseException as exc:
                results[i] = exc

        threads = [threading.Thread(target=blow, args=(i, x)) for i, x in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(isinstance(r, BaseException) for r in results), results
        whistles = [r[0] for r in results]
        assert {r[1] for r in results} == {str(person)}
        for baton in (a, b):
            assert [reporter_name(baton, w) for w in whistles] == [NAME, NAME]


# An existing data dir ---------------------------------------------------------------------------------------


def test_the_single_machine_default_keeps_its_keys_in_the_data_dir(tmp_path: Path) -> None:
    settings = instance(tmp_path, "sqlite", None)
    with opened(settings) as (baton,):
        assert baton.store.secrets is None
        Keyring.load(tmp_path, None, baton.store.secrets)
        NatsAuth.load(tmp_path, None, baton.store.secrets)
        seed_county_direct(baton)
        whistle, _ = blow_with_reporter(baton)
        assert reporter_name(baton, whistle) == NAME
    assert local_keys(tmp_path) == ["checkpoint.ed25519", "nats-secret", "pii-master", "token-keys.json"]
    assert all((tmp_path / "keys" / f).stat().st_mode & 0o777 == 0o600 for f in local_keys(tmp_path))
    with opened(settings) as (baton,):  # the same keys again
        assert reporter_name(baton, whistle) == NAME


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_an_existing_data_dir_moves_into_the_database_keeping_its_keys(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store = f"{PG_URL}?schema={request.getfixturevalue('pg_schema')}" if backend == "postgres" else "sqlite"
    old_dir = tmp_path / "a"
    before = instance(old_dir, store, None)
    with opened(before) as (baton,):
        seed_county_direct(baton)
        whistle, _ = blow_with_reporter(baton)
        vkey = baton.notary.signer.verifier.vkey()
        token = Tokens(Keyring.load(old_dir, None)).issue("admin", None, "root")
        nats_password = NatsAuth.load(old_dir).service().password

    master = new_master_key()
    after = instance(old_dir, store, master)
    with capture_logs() as logs, opened(after) as (baton,):
        tokens = Tokens(Keyring.load(old_dir, None, baton.store.secrets))
        assert reporter_name(baton, whistle) == NAME  # the personal-data master key came along
        assert baton.notary.signer.verifier.vkey() == vkey  # and the checkpoint key: one log, one key
        assert tokens.verify(token).id == "root"
        assert NatsAuth.load(old_dir, None, baton.store.secrets).service().password == nats_password
    imported = {e["secret"]: e["source"] for e in logs if e["event"] == "secret_imported"}
    assert imported == {
        "pii-master": str(old_dir / "keys" / "pii-master"),
        "checkpoint-key": str(old_dir / "keys" / "checkpoint.ed25519"),
        "token-keyring": str(old_dir / "keys" / "token-keys.json"),
        "nats-secret": str(old_dir / "keys" / "nats-secret"),
    }
    assert not [e for e in logs if e["event"] == "secret_created"]

    if backend == "postgres":  # a new instance with an empty data dir gets the very same keys
        with opened(instance(tmp_path / "b", store, master)) as (other,):
            assert reporter_name(other, whistle) == NAME
            assert other.notary.signer.verifier.vkey() == vkey
            assert Tokens(Keyring.load(tmp_path / "b", None, other.store.secrets)).verify(token).id == "root"
    with pytest.raises(KeysInDatabase, match="start this instance with the same BATON_MASTER_KEY"):
        bootstrap(before)
    with pytest.raises(WrongMasterKey, match="does not open the secret"):
        bootstrap(instance(old_dir, store, new_master_key()))


def test_keys_import_rewraps_people_sealed_under_another_instances_own_key(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances that ran with a key each (before BATON_MASTER_KEY): the second's people become readable."""
    store = f"{PG_URL}?schema={pg_schema}"
    with opened(instance(tmp_path / "a", store, None), instance(tmp_path / "b", store, None)) as (a, b):
        seed_county_direct(a)
        on_a, _ = blow_with_reporter(a)
        on_b, _ = blow_with_reporter(b)
        assert reporter_name(b, on_b) == NAME
    master = new_master_key()
    with opened(instance(tmp_path / "a", store, master)) as (a,):  # A starts first: its keys are the installation's
        assert reporter_name(a, on_a) == NAME
        assert reporter_name(a, on_b) is None
    monkeypatch.setenv("BATON_DATA_DIR", str(tmp_path / "b"))
    monkeypatch.setenv("BATON_STORE", store)
    monkeypatch.setenv("BATON_MASTER_KEY", master)
    status = CliRunner().invoke(cli, ["keys", "status"])
    assert status.exit_code == 0, status.output
    assert "kept in the database" in status.output
    assert "pii-master" in status.output and "differs, not used" in status.output
    result = CliRunner().invoke(cli, ["keys", "import"])
    assert result.exit_code == 0, result.output
    assert "re-wrapped 1 persons' keys" in result.output and "(0 opened by neither key)" in result.output
    with opened(instance(tmp_path / "b", store, master), instance(tmp_path / "a", store, master)) as (b, a):
        for baton in (a, b):
            assert [reporter_name(baton, w) for w in (on_a, on_b)] == [NAME, NAME]


def test_keys_import_without_a_master_key_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["keys", "import"])
    assert result.exit_code == 2 and "set BATON_MASTER_KEY" in result.output
    status = CliRunner().invoke(cli, ["keys", "status"])
    assert status.exit_code == 0 and "no BATON_MASTER_KEY" in status.output


# Two `baton serve` processes ----------------------------------------------------------------------------------


async def test_two_served_instances_started_at_once_share_every_key(tmp_path: Path, pg_schema: str) -> None:
    """Two `baton serve`s (own data dirs, ports, NATS) started at once on one empty schema and one master key."""
    store = f"{PG_URL}?schema={pg_schema}&pool_size=2&max_overflow=4"  # 4 processes and each CLI run on one server
    shared = {"BATON_MASTER_KEY": new_master_key()}
    a = Served(tmp_path / "a", store, token_secret=None, env=shared)
    b = Served(tmp_path / "b", store, token_secret=None, env=shared)
    try:
        await asyncio.gather(a.start(), b.start())
        old = (await asyncio.to_thread(a.cli, "token", "issue", "--role", "admin", "--actor", "root")).strip()
        async with httpx.AsyncClient(timeout=10) as http:

            async def get(served: Served, path: str, token: str) -> httpx.Response:
                return await http.get(served.url + path, headers={"Authorization": f"Bearer {token}"})

            key_a, key_b = await get(a, "/v1/audit/key", old), await get(b, "/v1/audit/key", old)
            assert key_a.status_code == key_b.status_code == 200, key_b.text  # A's token is good on B
            assert key_a.json() == key_b.json()

            admin = {"Authorization": f"Bearer {old}"}
            for path, payload in (
                [("/v1/org/units", u) for u in UNITS]
                + [("/v1/org/departments", {"code": c, "name": n}) for c, n in DEPARTMENTS]
                + [("/v1/org/categories", c) for c in CATEGORIES]
            ):
                r = await http.post(a.url + path, json=payload, headers=admin)
                assert r.status_code == 201, r.text
            r = await http.post(
                a.url + "/v1/whistles",
                json={
                    "community_id": "tishu",
                    "category": "drainage",
                    "title": "Sewage in the courtyard",
                    "description": "Reported at the e-station.",
                    "reporter": {"name": NAME, "phone": PHONE, "address": ADDRESS},
                },
                headers=admin,
            )
            assert r.status_code == 201, r.text
            whistle, reporter = r.json()["whistle_id"], r.json()["reporter_id"]

            async def reporter_on(served: Served, token: str) -> dict[str, Any] | None:
                r = await get(served, f"/v1/whistles/{whistle}", token)
                return r.json()["reporter"] if r.status_code == 200 else None

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while (seen := await reporter_on(b, old)) is None and loop.time() < deadline:
                await asyncio.sleep(0.1)  # B's read model follows the store
            assert seen is not None and (seen["name"], seen["phone"], seen["address"]) == (NAME, PHONE, ADDRESS)

            rotated = await asyncio.to_thread(a.cli, "token", "rotate")
            kid = rotated.split()[1]
            new = (await asyncio.to_thread(a.cli, "token", "issue", "--role", "admin", "--actor", "root")).strip()
            began = loop.time()
            while (await get(b, "/v1/org", new)).status_code != 200:
                assert loop.time() - began < 10, "B never accepted a token of A's new key"
                await asyncio.sleep(0.05)
            new_accepted = loop.time() - began
            await asyncio.to_thread(a.cli, "token", "retire", "k1")
            began = loop.time()
            while (refused := await get(b, "/v1/org", old)).status_code != 401:
                assert loop.time() - began < 10, "B still accepts a token of the key A retired"
                await asyncio.sleep(0.05)
            old_refused = loop.time() - began
            assert (
                "retired" in refused.json()["error"]["message"]
                or "no longer holds" in refused.json()["error"]["message"]
            )
            assert (await get(b, "/v1/org", new)).status_code == 200
            print(
                f"\nserved: {kid}'s token accepted on B {new_accepted:.3f} s after `baton token issue` returned on A; "
                f"k1's refused on B {old_refused:.3f} s after `baton token retire` returned on A"
            )

            r = await http.post(
                f"{b.url}/v1/people/{reporter}/erase",
                json={"reason": "asked to"},
                headers={"Authorization": f"Bearer {new}"},
            )
            assert r.status_code == 200, r.text
            seen = await reporter_on(a, new)
            assert seen is not None and (seen["name"], seen["phone"], seen["erased"]) == (None, None, True)

        await b.departments_admitted({"PSB"})
        login = json.loads(await asyncio.to_thread(a.cli, "nats-creds", "issue", "--department", "PSB"))
        nc = await nats.connect(
            f"nats://127.0.0.1:{b.nats_port}", user=login["user"], password=login["password"], allow_reconnect=False
        )  # a department's login issued on A opens B's NATS
        await nc.close()
        assert local_keys(a.data_dir) == local_keys(b.data_dir) == ["nats-hashes.json"]
    finally:
        a.stop()
        b.stop()
