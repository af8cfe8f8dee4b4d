"""The `baton` command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from infra.logging import configure_logging
from infra.settings import Settings

if TYPE_CHECKING:
    from infra.secrets import LocalCopy, SecretName
    from services.access import Context

app = typer.Typer(help="Baton: the event-sourced backbone of community governance.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens for the HTTP API.", no_args_is_help=True)
app.add_typer(token_app, name="token")
standard_app = typer.Typer(help="The branch standard (党支部标准化规范), kept as data.", no_args_is_help=True)
app.add_typer(standard_app, name="standard")
scheme_app = typer.Typer(help="The assessment scheme (考核指挥棒), kept as data.", no_args_is_help=True)
app.add_typer(scheme_app, name="scheme")
nats_creds_app = typer.Typer(help="NATS logins for department systems and auditors.", no_args_is_help=True)
app.add_typer(nats_creds_app, name="nats-creds")
keys_app = typer.Typer(help="Baton's own keys: where they are kept, and moving a data dir's into the database.")
app.add_typer(keys_app, name="keys", no_args_is_help=True)
open311_app = typer.Typer(help="Open311 GeoReport v2 (/open311/v2): API keys of civic apps.", no_args_is_help=True)
app.add_typer(open311_app, name="open311")
open311_key_app = typer.Typer(
    help="API keys of Open311 clients, kept as events (only each key's SHA-256), good on every instance.",
    no_args_is_help=True,
)
open311_app.add_typer(open311_key_app, name="key")
STANDARDS_DIR = Path(__file__).resolve().parent.parent / "standards"
err = Console(stderr=True, soft_wrap=True)
REBUILD_BATCH = 10_000
"""Events per rebuild transaction of each read model: fewer commits (each an fsync) than the live batches."""
REBUILD_HELP_FROM = 100_000
"""Events from which helper processes decode for a rebuild (infra.helpers; each costs ~1 s to start)."""


@contextmanager
def _exclusive(settings: Settings, purpose: str) -> Iterator[None]:
    """Hold the data dir for this command, or exit saying who holds it."""
    from infra.lock import DataDirBusy, DataDirLock

    try:
        with DataDirLock(settings.data_dir, purpose):
            yield
    except DataDirBusy as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def run_http(asgi: Any, host: str, port: int) -> None:
    """Serve an ASGI app as `baton serve` does (the bench runs its bare Starlette app through this too)."""
    import uvicorn

    uvicorn.run(asgi, host=host, port=port, log_config=None, access_log=False)


@app.command()
def serve() -> None:
    """Run everything in one process: HTTP API, NATS consumers, the relay, and (unless BATON_NATS_URL) nats-server."""
    import structlog

    from api.app import create_app
    from api.tokens import Keyring, Tokens
    from infra.bootstrap import ALL, COMMANDS, Runtime, bootstrap
    from infra.heap import freeze_startup_heap, log_long_pauses

    settings = _settings()
    with _exclusive(settings, "serve"):
        baton = bootstrap(settings)
        if settings.is_postgres and baton.store.secrets is None:
            structlog.get_logger("baton.cli").info(
                "keys_kept_in_data_dir", keys=str(settings.data_dir / "keys"), instances="one per store"
            )
        keyring = Keyring.load(settings.data_dir, settings.token_secret, baton.store.secrets)
        tokens = Tokens(keyring, timedelta(days=settings.token_ttl_days))
        runtime = Runtime(baton, part=COMMANDS if settings.projector_process else ALL)
        asgi = create_app(baton, tokens, runtime)
        log_long_pauses()
        baton.org.current()  # the organisation every request reads, loaded now to be frozen with the rest
        freeze_startup_heap()
        try:
            run_http(asgi, settings.http_host, settings.http_port)
        finally:
            baton.close()


@app.command(hidden=True)
def projector() -> None:
    """The read models and the notary, for a `baton serve` that starts this; stops when stdin closes."""
    from infra.lock import DataDirLock
    from infra.projector import run_projector

    settings = _settings()
    with DataDirLock(settings.data_dir, "projector", name="projector.lock", wait=30.0):
        asyncio.run(run_projector(settings))


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=1, max=365, help="How many days of governance to play.")] = 28,
) -> None:
    """Fill an empty data dir with a county and play weeks of governance through the real command path."""
    from demo.script import run_demo

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_file = settings.data_dir / "demo.log"
    configure_logging(settings.log_level, settings.log_format, file=log_file)  # the terminal shows the progress
    err.print(f"The demo's detailed log: {log_file}")
    with _exclusive(settings, "demo"):
        code = run_demo(settings, days)
    raise typer.Exit(code)


@token_app.command("issue")
def token_issue(
    role: Annotated[str, typer.Option(help="admin, district, street, community, grid, department, ...")],
    unit: Annotated[str | None, typer.Option(help="The actor's unit id; for a department, its code.")] = None,
    actor: Annotated[str | None, typer.Option(help="The actor's id (default: generated).")] = None,
) -> None:
    """Print a bearer token for that actor."""
    from api.tokens import Keyring, Tokens
    from infra.store import open_secrets

    settings = _settings()
    with open_secrets(settings) as kept:
        keyring = Keyring.load(settings.data_dir, settings.token_secret, kept)
    tokens = Tokens(keyring, timedelta(days=settings.token_ttl_days))
    try:
        typer.echo(tokens.issue(role, unit, actor))
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _cli_context(action: str) -> Context:
    from services.access import Actor, Context, Role

    return Context(actor=Actor(Role.ADMIN, None, "cli"), correlation_id=f"cli-{action}")


@token_app.command("rotate")
def token_rotate() -> None:
    """Put a new signing key in service; tokens signed with older keys keep working until those are retired."""
    from api.tokens import Keyring
    from infra.bootstrap import bootstrap

    settings = _settings()
    baton = bootstrap(settings)
    try:
        keyring = Keyring.load(settings.data_dir, settings.token_secret, baton.store.secrets)
        try:
            kid = keyring.rotate()
        except ValueError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        receipt = baton.credentials.put_key_in_service(_cli_context("rotate"), kid)
    finally:
        baton.close()
    older = ", ".join(k for k in keyring.keys if k != kid) or "none"
    typer.echo(f"key {kid} signs new tokens from now on (position {receipt.position}); still verifying: {older}")
    typer.echo("retire an older key once its tokens are replaced: baton token retire KID")


@token_app.command("retire")
def token_retire(kid: Annotated[str, typer.Argument(help="The key id to retire (see `baton token rotate`).")]) -> None:
    """Refuse every token signed with this key from now on, and forget its secret."""
    from api.tokens import Keyring
    from domain.errors import DomainError
    from infra.bootstrap import bootstrap

    settings = _settings()
    baton = bootstrap(settings)
    try:
        keyring = Keyring.load(settings.data_dir, settings.token_secret, baton.store.secrets)
        if kid == keyring.signing:
            err.print(f"[red]key {kid} still signs new tokens; run `baton token rotate` first[/red]")
            raise typer.Exit(2)
        receipt = baton.credentials.retire_key(_cli_context("retire"), kid)
        keyring.remove(kid)
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    typer.echo(f"key {kid} retired at position {receipt.position}; its tokens are refused from now on")


@token_app.command("revoke")
def token_revoke(
    reason: Annotated[str, typer.Option(help="Why, for the record.")],
    token: Annotated[str | None, typer.Option(help="The token to revoke.")] = None,
    actor: Annotated[str | None, typer.Option(help="Revoke every token issued to this actor id so far.")] = None,
) -> None:
    """Revoke one token, or every token an actor holds; recorded as an event, effective within a second."""
    from datetime import UTC

    from api.tokens import InvalidToken, Keyring, Tokens
    from domain.errors import DomainError
    from infra.bootstrap import bootstrap

    if (token is None) == (actor is None):
        err.print("[red]name exactly one of --token or --actor[/red]")
        raise typer.Exit(2)
    settings = _settings()
    baton = bootstrap(settings)
    try:
        tokens = Tokens(Keyring.load(settings.data_dir, settings.token_secret, baton.store.secrets))
        if token is not None:
            claims = tokens.claims(token, verify_exp=False)
            expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
            receipt = baton.credentials.revoke_token(_cli_context("revoke"), claims["jti"], expires, reason)
        else:
            assert actor is not None
            receipt = baton.credentials.revoke_actor(_cli_context("revoke"), actor, reason)
    except (InvalidToken, KeyError) as exc:
        err.print(f"[red]--token: {exc}; only a token Baton issued (with a jti) can be revoked[/red]")
        raise typer.Exit(2) from None
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    typer.echo(json.dumps({**receipt.body, "position": receipt.position}))


@open311_key_app.command("issue")
def open311_key_issue(
    name: Annotated[str, typer.Option(help="The client app's name, e.g. wechat-estation (lower case, digits, .-_).")],
    channel: Annotated[str, typer.Option(help="The channel its reports arrive through: open311 or e_station.")] = (
        "open311"
    ),
) -> None:
    """Print a new random API key for an Open311 client, once: only its SHA-256 is recorded."""
    from domain.errors import DomainError
    from infra.bootstrap import bootstrap

    settings = _settings()
    baton = bootstrap(settings)
    try:
        receipt, key = baton.credentials.issue_open311_key(_cli_context("open311-key-issue"), name, channel)
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    typer.echo(key)
    err.print(
        f"Open311 key of {name} (channel {channel}) recorded at position {receipt.position}; it is shown only now: "
        "the app sends it as api_key when it POSTs /open311/v2/requests.json"
    )


@open311_key_app.command("revoke")
def open311_key_revoke(name: Annotated[str, typer.Option(help="The client whose key to revoke.")]) -> None:
    """Refuse the client's key from now on, on every instance (recorded as an event)."""
    from domain.errors import DomainError
    from infra.bootstrap import bootstrap

    settings = _settings()
    baton = bootstrap(settings)
    try:
        receipt = baton.credentials.revoke_open311_key(_cli_context("open311-key-revoke"), name)
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    typer.echo(f"Open311 key of {name} revoked at position {receipt.position}; it is refused from now on")


@open311_key_app.command("list")
def open311_key_list() -> None:
    """The Open311 keys in service: client name, channel, when issued (never a key)."""
    from infra.bootstrap import bootstrap

    settings = _settings()
    baton = bootstrap(settings)
    try:
        keys = baton.credentials.open311_keys()
    finally:
        baton.close()
    for key in keys:
        typer.echo(f"{key['name']}\t{key['channel']}\tissued {key['issued_at']}")
    if not keys:
        err.print("no Open311 key is in service; issue one with `baton open311 key issue --name APP`")


def _known_departments(settings: Settings) -> list[str]:
    from infra.bootstrap import bootstrap

    baton = bootstrap(settings)
    try:
        return sorted(baton.org.current().departments)
    finally:
        baton.close()


def _nats_url(settings: Settings) -> str:
    """BATON_NATS_URL without Baton's own login, else the embedded server's address from its config (its port is
    picked at start)."""
    from infra.settings import without_password

    if settings.nats_url:
        return without_password(settings.nats_url)
    import re

    config = settings.data_dir / "nats" / "nats-server.conf"
    match = re.search(r'^listen: "([^"]+)"', config.read_text(), re.M) if config.exists() else None
    return f"nats://{match.group(1)}" if match else "nats://127.0.0.1:<BATON_NATS_PORT; run `baton serve` first>"


@nats_creds_app.command("issue")
def nats_creds_issue(
    department: Annotated[str | None, typer.Option(help="The department's code.")] = None,
    auditor: Annotated[bool, typer.Option("--auditor", help="The read-only auditor instead.")] = False,
    notifier: Annotated[
        bool, typer.Option("--notifier", help="The SMS/WeChat notification gateway (reads BATON_NOTIFY) instead.")
    ] = False,
) -> None:
    """Print, as JSON, what a department system (or the auditor) needs to connect to Baton's NATS."""
    from infra.jetstream import (
        AUDIT_STREAM,
        AUDITOR_DURABLE,
        DEPT_STREAM,
        EVENTS_STREAM,
        NOTIFY_DURABLE,
        NOTIFY_STREAM,
        department_durable,
    )
    from infra.nats_auth import JS_API_PREFIX, NatsAuth
    from infra.store import open_secrets

    if (department is not None) + auditor + notifier != 1:
        err.print("[red]name exactly one of --department CODE, --auditor or --notifier[/red]")
        raise typer.Exit(2)
    settings = _settings()
    with open_secrets(settings) as kept:
        auth = NatsAuth.load(settings.data_dir, settings.nats_secret, kept)
    doc: dict[str, object]
    if department is not None:
        known = _known_departments(settings)
        if department not in known:
            err.print(
                f"[red]{department!r} is not a department of this organisation "
                f"(known: {', '.join(known) or 'none'}); add it with POST /v1/org/departments[/red]"
            )
            raise typer.Exit(2)
        creds = auth.department(department)
        doc = {
            "consumer": {"stream": DEPT_STREAM, "durable": department_durable(department)},
            "send": f"baton.dept.{department}.cmd.<action>",
            "receive": [f"baton.dept.{department}.outcome", f"baton.dept.{department}.inbox.>"],
        }
    elif notifier:
        creds = auth.notifier()
        doc = {"consumer": {"stream": NOTIFY_STREAM, "durable": NOTIFY_DURABLE}, "receive": ["baton.notify.>"]}
    else:
        creds = auth.auditor()
        doc = {"consumers": [{"stream": s, "durable": AUDITOR_DURABLE} for s in (EVENTS_STREAM, AUDIT_STREAM)]}
    from infra.settings import nats_servers

    url = _nats_url(settings)
    typer.echo(
        json.dumps(
            {
                "url": url,
                "servers": nats_servers(url),
                "user": creds.user,
                "password": creds.password,
                "inbox_prefix": creds.inbox_prefix,
                "js_api_prefix": JS_API_PREFIX,
                **doc,
            },
            indent=2,
        )
    )


@nats_creds_app.command("config")
def nats_creds_config() -> None:
    """Print the `accounts` block for an external nats-server: Baton's service account, the auditor, each department."""
    from infra.nats_auth import NatsAuth
    from infra.store import open_secrets

    settings = _settings()
    with open_secrets(settings) as kept:
        auth = NatsAuth.load(settings.data_dir, settings.nats_secret, kept)
    typer.echo(auth.server_config(_known_departments(settings)), nl=False)
    service = auth.service()
    err.print(
        f"Baton logs in with BATON_NATS_USER={service.user} BATON_NATS_PASSWORD={service.password}; "
        "enable JetStream on the server; rerun after adding a department, then reload the server."
    )


def _key_sources(settings: Settings) -> list[tuple[SecretName, LocalCopy, str | None]]:
    """Each kept secret, the data dir's own copy of it, and the setting that overrides both (if set)."""
    from api.tokens import local_keyring
    from infra.nats_auth import local_nats_secret
    from infra.notary import local_signing_key
    from infra.privacy import local_master_key
    from infra.secrets import SecretName

    data_dir = settings.data_dir
    return [
        (SecretName.TOKEN_KEYRING, local_keyring(data_dir), "BATON_TOKEN_SECRET" if settings.token_secret else None),
        (SecretName.CHECKPOINT_KEY, local_signing_key(data_dir), None),
        (SecretName.PII_MASTER, local_master_key(data_dir), "BATON_PII_KEY" if settings.pii_key else None),
        (SecretName.NATS_SECRET, local_nats_secret(data_dir), "BATON_NATS_SECRET" if settings.nats_secret else None),
    ]


@keys_app.command("status")
def keys_status() -> None:
    """Say where each key comes from: the database (BATON_MASTER_KEY), a setting, or the data dir."""
    from infra.secrets import SecretName
    from infra.store import open_secrets

    settings = _settings()
    with open_secrets(settings) as kept:
        if kept is None:
            typer.echo(
                f"keys: kept in {settings.data_dir / 'keys'} (no BATON_MASTER_KEY); "
                + ("one instance per store" if settings.is_postgres else "this instance's own")
            )
        else:
            typer.echo(
                f"keys: kept in the database ({'postgresql' if settings.is_postgres else 'events.sqlite'}) under "
                "BATON_MASTER_KEY, the same on every instance"
            )
        for name, local, setting in _key_sources(settings):
            copy = "none" if not local.path.exists() else "present"
            if setting is not None:
                where = f"{setting} (the setting wins)"
            elif kept is None:
                where = str(local.path) if local.path.exists() else f"{local.path} (made on first start)"
                copy = "in use"
            elif (secret := kept.get(name)) is None:
                where = "database: not yet (made, or imported from the data dir, on first start)"
            else:
                where = f"database: version {secret.version}, changed {secret.updated_at}"
                if local.path.exists():
                    copy = "same" if local.load() == secret.value else "differs, not used"
                    if copy != "same" and name is SecretName.PII_MASTER:
                        copy += " (`baton keys import` re-wraps persons sealed under it)"
            typer.echo(f"{name.value:15} {where}; data dir copy: {copy}")


@keys_app.command("import")
def keys_import() -> None:
    """Move this data dir's keys into the database; re-wrap persons sealed under its own personal-data key."""
    from infra.privacy import local_master_key
    from infra.secrets import SecretChanged, SecretName
    from infra.store import Store, open_secrets

    settings = _settings()
    if settings.master_key_bytes is None:
        err.print(
            "[red]set BATON_MASTER_KEY first, the same on every instance (`openssl rand -base64 32` makes one)[/red]"
        )
        raise typer.Exit(2)
    old_master: bytes | None = None
    with open_secrets(settings) as kept:
        assert kept is not None
        for name, local, setting in _key_sources(settings):
            value = local.load()
            secret = kept.get(name)
            if setting is not None:
                typer.echo(f"{name.value}: {setting} is set and wins; nothing to import")
            elif value is None:
                state = f"version {secret.version}" if secret else "made on first start"
                typer.echo(f"{name.value}: the data dir has none; database: {state}")
            elif secret is None:
                try:
                    kept.put(name, value, 0)
                    typer.echo(f"{name.value}: imported from {local.path}")
                except SecretChanged:
                    typer.echo(f"{name.value}: another instance kept one meanwhile; run again to compare")
            elif secret.value == value:
                typer.echo(f"{name.value}: already in the database (version {secret.version})")
            elif name is SecretName.PII_MASTER:
                old_master = value
            else:
                typer.echo(
                    f"{name.value}: the database keeps another (version {secret.version}); "
                    f"{local.path} is not used and can go"
                )
    if old_master is not None:
        store = Store(settings)
        try:
            rewrapped, unreadable = store.vault.rewrap(old_master)
        finally:
            store.close()
        typer.echo(
            f"pii-master: the database keeps another; re-wrapped {rewrapped} persons' keys made under "
            f"{local_master_key(settings.data_dir).path} ({unreadable} opened by neither key)"
        )


@standard_app.command("publish")
def standard_publish(
    path: Annotated[
        Path | None, typer.Argument(help="A standard document (JSON); default: the newest in standards/.")
    ] = None,
) -> None:
    """Publish a version of the branch standard into the history; audits use it from now on."""
    from domain.errors import DomainError, DuplicateEntry
    from infra.bootstrap import bootstrap
    from services.access import Actor, Context, Role

    settings = _settings()
    path = path or sorted(STANDARDS_DIR.glob("branch-standard-*.json"))[-1]
    document = json.loads(path.read_text())
    baton = bootstrap(settings)
    try:
        ctx = Context(actor=Actor(Role.ADMIN, None, "cli"), correlation_id=f"publish-{path.name}")
        receipt = baton.branches.publish_standard(ctx, document)
        typer.echo(f"published branch standard {receipt.body['version']} at position {receipt.position}")
    except DuplicateEntry as exc:
        typer.echo(exc.message)
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()


@app.command()
def score(
    year: Annotated[int, typer.Option(help="The assessment year.")],
    unit_type: Annotated[str, typer.Option(help="department, community or street.")] = "department",
    as_of: Annotated[datetime | None, typer.Option(help="Cut-off time, e.g. 2026-12-31T23:59:59+08:00.")] = None,
    position: Annotated[int | None, typer.Option(help="Cut-off position (instead of --as-of).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the canonical JSON result.")] = False,
) -> None:
    """Score every unit of a type for a year from the history (pure: the same cut-off gives the same bytes)."""
    import rfc8785

    from domain.errors import DomainError
    from infra.bootstrap import bootstrap

    settings = _settings()
    baton = bootstrap(settings)
    try:
        if as_of is not None and as_of.tzinfo is None:
            raise typer.BadParameter("--as-of needs a timezone, e.g. +08:00")
        result = baton.assessment.compute(year, unit_type, cutoff=position, as_of=as_of)
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    if as_json:
        typer.echo(rfc8785.dumps(result).decode())
        return
    table = Table(
        title=f"{year} {unit_type} assessment, scheme {result['scheme_version']}, "
        f"events up to position {result['cutoff_position']}"
    )
    for column in ("rank", "unit", "name", "total", "grade"):
        table.add_column(column)
    for unit in sorted(result["units"], key=lambda u: (u["rank"] is None, u["rank"] or 0, u["unit"])):
        table.add_row(str(unit["rank"] or "-"), unit["unit"], unit["name"], str(unit["total"]), str(unit["grade"]))
    Console(soft_wrap=True).print(table)


@app.command()
def ranking(
    month: Annotated[str, typer.Option(help="The month, YYYY-MM (Asia/Shanghai).")],
    unit_type: Annotated[str, typer.Option(help="community, street or department.")] = "community",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON result, with the events behind each rate.")
    ] = False,
    finalise: Annotated[
        bool,
        typer.Option(
            "--finalise",
            help="Finalise the ended month's ranking of each unit type not final yet (as an admin): its figures' "
            "digest, tied to the tree size and root they were counted from; `baton verify` recounts it.",
        ),
    ] = False,
) -> None:
    """The month's ranking (接诉即办): response, resolution, satisfaction, composite, change and class per unit."""
    from domain.errors import DomainError
    from infra.bootstrap import bootstrap

    baton = bootstrap(_settings())
    try:
        if finalise:
            receipt = baton.assessment.finalise_ranking(_cli_context("finalise-ranking"), month)
            body = receipt.body
            for kind, value in body["digests"].items():
                typer.echo(f"{month} {kind} ranking finalised: figures sha256 {value}")
            typer.echo(f"at position {body['cutoff_position']}, tree size {body['tree_size']}, root {body['root']}")
        result = baton.assessment.ranking(month, unit_type)
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{month} {unit_type} ranking (10 % response + 45 % resolution + 45 % satisfaction)")
    columns = (
        "rank",
        "unit",
        "name",
        "cases",
        "response",
        "resolution",
        "satisfaction",
        "composite",
        "change",
        "class",
    )
    for column in columns:
        table.add_column(column)
    for u in result["units"]:
        rates = [u[f"{k}_rate"] for k in ("response", "resolution", "satisfaction")]
        shown = [f"{Decimal(r) * 100:.1f}%" if r is not None else "-" for r in rates]
        table.add_row(
            str(u["rank"] or "-"),
            u["unit"],
            u["name"],
            str(u["cases"]),
            *shown,
            u["composite"] or "-",
            u["change"] or "-",
            u["class"] or "-",
        )
    Console(soft_wrap=True).print(table)


def _county_name(org: Any) -> str:
    """The district(s) the organisation holds, by name (the organisation's own name otherwise)."""
    districts = [u["name"] for u in org.units.values() if u["kind"] == "district"]
    return "、".join(districts) or str(org.name)


@app.command()
def report(
    year: Annotated[int, typer.Option(help="The assessment year.")],
    out: Annotated[Path, typer.Option(help="FILE.html, or FILE.pdf (printed by headless Chromium).")],
    month: Annotated[str | None, typer.Option(help="Add this month's 接诉即办 rankings, YYYY-MM.")] = None,
) -> None:
    """Write the year's assessment report a district circulates: rankings, charts, strengths and gaps, signed root."""
    from audit.report import Basis, b64, render, to_pdf
    from domain.errors import DomainError
    from infra.bootstrap import bootstrap

    if out.suffix not in (".html", ".pdf"):
        err.print("[red]--out must end in .html or .pdf[/red]")
        raise typer.Exit(2)
    baton = bootstrap(_settings())
    try:
        scores = {}
        finals = {r["unit_type"]: r for r in baton.assessment.finalisations(year) if r.get("voided") is None}
        for unit_type in ("department", "community", "street"):
            final = finals.get(unit_type)
            if final is not None:
                result = baton.assessment.compute(
                    year, unit_type, cutoff=final["cutoff_position"], scheme_version=final["scheme_version"]
                )
                basis = Basis(True, final["cutoff_position"], final["tree_size"], final["root"])
            else:
                result = baton.assessment.compute(year, unit_type)
                baton.notary.catch_up()
                signed = baton.notary.view.checkpoint()
                root = b64(signed["root"]) if signed else None
                basis = Basis(False, result["cutoff_position"], signed["size"] if signed else None, root)
            scores[unit_type] = (result, basis)
        rankings = (
            {t: baton.assessment.ranking(month, t) for t in ("community", "street", "department")} if month else None
        )
        html = render(
            organisation=_county_name(baton.org.current()),
            year=year,
            generated=baton.clock.now().isoformat(timespec="seconds"),
            scores=scores,
            month=month,
            rankings=rankings,
        )
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    if out.suffix == ".pdf":
        to_pdf(html, out)
    else:
        out.write_text(html, encoding="utf-8")
    typer.echo(f"wrote {out} ({out.stat().st_size:,} bytes)")


@scheme_app.command("publish")
def scheme_publish(
    path: Annotated[Path | None, typer.Argument(help="A scheme (JSON); default: newest in standards/.")] = None,
) -> None:
    """Publish a version of the assessment scheme into the history."""
    from domain.errors import DomainError, DuplicateEntry
    from infra.bootstrap import bootstrap
    from services.access import Actor, Context, Role

    settings = _settings()
    path = path or sorted(STANDARDS_DIR.glob("assessment-scheme-*.json"))[-1]
    baton = bootstrap(settings)
    try:
        ctx = Context(actor=Actor(Role.ADMIN, None, "cli"), correlation_id=f"publish-{path.name}")
        receipt = baton.assessment.publish_scheme(ctx, json.loads(path.read_text()))
        typer.echo(f"published assessment scheme {receipt.body['version']} at position {receipt.position}")
    except DuplicateEntry as exc:
        typer.echo(exc.message)
    except DomainError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()


@app.command("export")
def export_bundle(out: Annotated[Path, typer.Option(help="A new, empty directory.")]) -> None:
    """Write an auditor's bundle of the whole history: events, leaves, signed checkpoints, key, schemes, scores."""
    from infra.bootstrap import bootstrap
    from infra.export import export

    settings = _settings()
    baton = bootstrap(settings)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
        ) as progress:
            task = progress.add_task("export", total=None)
            manifest = export(baton, out, lambda done, total: progress.update(task, completed=done, total=total))
    except FileExistsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        baton.close()
    typer.echo(f"exported {manifest['tree_size']} events to {out}; root {manifest['root']}")


@app.command("verify")
def verify_bundle(
    bundle: Annotated[Path, typer.Argument(help="A directory written by `baton export`.")],
    key: Annotated[str | None, typer.Option(help="The log's verifier key (vkey string or file) to pin.")] = None,
) -> None:
    """Check an export offline. Exit 0 intact; 2 unreadable; 3 bad signature; 4 events altered, missing or
    reordered (the first bad position is named); 5 a finalised score or monthly ranking does not replay."""
    from audit.verify import verify

    report = verify(bundle, key)
    for note in report.notes:
        (typer.echo if report.ok else err.print)(note)
    if report.ok:
        typer.echo(
            f"intact: {report.events} events, {report.checkpoints} signed checkpoints, "
            f"{report.finalised} finalised scores replayed ({report.voided} finalisations voided since), "
            f"{report.rankings} finalised monthly rankings recounted; "
            f"key {report.key}"
        )
    raise typer.Exit(report.code)


@app.command("backup")
def backup_store(out: Annotated[Path, typer.Option(help="A new file to write (never overwritten).")]) -> None:
    """Copy the store consistently into one file while `baton serve` runs: events with their positions, command
    log, person keys, sealed keys (BATON_MASTER_KEY) and signed checkpoints. Keys in DATA_DIR/keys are not in it."""
    from infra.backup import BackupError, backup

    settings = _settings()
    try:
        with _progress("backup") as progress:
            summary = backup(settings, out, progress)
    except (BackupError, FileExistsError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    typer.echo(
        f"backed up {summary.events} events up to position {summary.position}, {summary.checkpoints} signed "
        f"checkpoints (last at tree size {summary.tree_size}), {summary.commands} logged commands and "
        f"{summary.person_keys} person keys from {summary.source} to {out} "
        f"({summary.size_bytes / 1e6:.1f} MB, {summary.seconds:.1f} s)"
    )
    if summary.keys_in_file:
        typer.echo(
            "keys: sealed in this file under BATON_MASTER_KEY; the master key is not in it: keep it apart from "
            "the backup, a restore needs it"
        )
    else:
        keys = settings.data_dir / "keys"
        err.print(
            f"[yellow]keys: NOT in this file; they are in {keys}. Back that directory up separately and keep it "
            "apart from this file: without it a restored store gets new keys, its checkpoints do not verify and its "
            "sealed personal data does not open[/yellow]"
        )


@app.command("restore")
def restore_store(
    file: Annotated[Path, typer.Argument(help="A file written by `baton backup`.")],
) -> None:
    """Restore a backup into an empty store (BATON_STORE, BATON_DATA_DIR), every event at its position (refused
    while `baton serve` runs, and into a store that holds anything)."""
    from infra.backup import BackupError, restore

    settings = _settings()
    with _exclusive(settings, "restore"):
        try:
            with _progress("restore") as progress:
                summary = restore(settings, file, progress)
        except BackupError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    where = settings.store if settings.is_postgres else str(settings.data_dir / "events.sqlite")
    typer.echo(
        f"restored {summary.events} events up to position {summary.position} and {summary.checkpoints} signed "
        f"checkpoints (made {summary.made_at} from {summary.source}) into {where} in {summary.seconds:.1f} s"
    )
    for note in summary.notes:
        (err.print if "WARNING" in note or "not in the backup" in note else typer.echo)(note)


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr, fed progress(done, total)."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    ) as progress:
        task = progress.add_task(what, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@app.command()
def rebuild(
    name: Annotated[str | None, typer.Argument(help="One read model (e.g. whistle_board); default: all.")] = None,
) -> None:
    """Drop read models and rebuild them from the history (refused while `baton serve` runs)."""
    settings = _settings()
    with _exclusive(settings, "rebuild"):
        _rebuild(settings, name)


def _rebuild(settings: Settings, name: str | None) -> None:
    from infra.bootstrap import bootstrap
    from infra.envelope import Envelope
    from infra.helpers import helped, helper_envelopes
    from projections.base import apply_together, catch_up_together

    baton = bootstrap(settings)
    try:
        names = [name] if name else list(baton.projections)
        unknown = [n for n in names if n not in baton.projections]
        if unknown:
            err.print(f"[red]unknown read model {unknown[0]!r}; use one of: {', '.join(baton.projections)}[/red]")
            raise typer.Exit(2)
        top = baton.store.max_position()
        projections = [baton.projections[n] for n in names]
        for projection in projections:
            projection.reset()
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
        ) as progress:
            task = progress.add_task(", ".join(names), total=top or 1)
            if top >= REBUILD_HELP_FROM:  # helper processes on both cores read and decode; this one applies
                stretches = helped(settings, 0, top, helper_envelopes, REBUILD_BATCH)
                batches = ([Envelope(*fields) for fields in found] for _, found in stretches)
                apply_together(projections, batches, progress=lambda p: progress.update(task, completed=p))
            position = catch_up_together(
                projections, batch_size=REBUILD_BATCH, progress=lambda p: progress.update(task, completed=p)
            )
            progress.update(task, completed=top or 1)
        for projection_name in names:
            err.print(f"{projection_name}: rebuilt up to position {position}")
    finally:
        baton.close()


@app.command()
def asyncapi() -> None:
    """Print the AsyncAPI document of the NATS interface."""
    from consumers.spec import asyncapi_document

    typer.echo(json.dumps(asyncapi_document(), indent=2, sort_keys=True, ensure_ascii=False))


@app.command()
def events() -> None:
    """Print every event type Baton records, with its version and fields (docs/events.json)."""
    from domain.events import catalogue

    typer.echo(json.dumps(catalogue(), indent=2, sort_keys=True, ensure_ascii=False))


@app.command()
def openapi() -> None:
    """Print the OpenAPI document of the HTTP API."""
    from api.app import openapi_document

    typer.echo(json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False))


def main() -> None:
    from infra.secrets import KeysInDatabase, WrongMasterKey

    try:
        app()
    except (KeysInDatabase, WrongMasterKey) as exc:
        err.print(f"[red]{exc}[/red]")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
