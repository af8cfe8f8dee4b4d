"""The `baton` command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from infra.logging import configure_logging
from infra.settings import Settings

app = typer.Typer(help="Baton: the event-sourced backbone of community governance.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens for the HTTP API.", no_args_is_help=True)
app.add_typer(token_app, name="token")
standard_app = typer.Typer(help="The branch standard (党支部标准化规范), kept as data.", no_args_is_help=True)
app.add_typer(standard_app, name="standard")
scheme_app = typer.Typer(help="The assessment scheme (考核指挥棒), kept as data.", no_args_is_help=True)
app.add_typer(scheme_app, name="scheme")
STANDARDS_DIR = Path(__file__).resolve().parent.parent / "standards"
err = Console(stderr=True, soft_wrap=True)


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


@app.command()
def serve() -> None:
    """Run everything in one process: HTTP API, NATS consumers, the relay, and (unless BATON_NATS_URL) nats-server."""
    import uvicorn

    from api.app import create_app
    from api.tokens import Tokens, load_secret
    from infra.bootstrap import Runtime, bootstrap

    settings = _settings()
    with _exclusive(settings, "serve"):
        baton = bootstrap(settings)
        tokens = Tokens(load_secret(settings.data_dir, settings.token_secret), timedelta(days=settings.token_ttl_days))
        runtime = Runtime(baton)
        asgi = create_app(baton, tokens, runtime)
        try:
            uvicorn.run(asgi, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False)
        finally:
            baton.close()


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=1, max=365, help="How many days of governance to play.")] = 28,
) -> None:
    """Fill an empty data dir with a county and play weeks of governance through the real command path."""
    from demo.script import run_demo

    settings = _settings()
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
    from api.tokens import Tokens, load_secret

    settings = _settings()
    tokens = Tokens(load_secret(settings.data_dir, settings.token_secret), timedelta(days=settings.token_ttl_days))
    try:
        typer.echo(tokens.issue(role, unit, actor))
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


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
    reordered (the first bad position is named); 5 a finalised score does not replay."""
    from audit.verify import verify

    report = verify(bundle, key)
    for note in report.notes:
        (typer.echo if report.ok else err.print)(note)
    if report.ok:
        typer.echo(
            f"intact: {report.events} events, {report.checkpoints} signed checkpoints, "
            f"{report.finalised} finalised scores replayed; key {report.key}"
        )
    raise typer.Exit(report.code)


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

    baton = bootstrap(settings)
    try:
        names = [name] if name else list(baton.projections)
        unknown = [n for n in names if n not in baton.projections]
        if unknown:
            err.print(f"[red]unknown read model {unknown[0]!r}; use one of: {', '.join(baton.projections)}[/red]")
            raise typer.Exit(2)
        top = baton.store.max_position()
        for projection_name in names:
            projection = baton.projections[projection_name]
            projection.reset()
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
            ) as progress:
                task = progress.add_task(projection_name, total=top or 1)
                position = projection.catch_up(progress=lambda p, t=task: progress.update(t, completed=p))
                progress.update(task, completed=top or 1)
            err.print(f"{projection_name}: rebuilt up to position {position}")
    finally:
        baton.close()


@app.command()
def asyncapi() -> None:
    """Print the AsyncAPI document of the NATS interface."""
    from consumers.spec import asyncapi_document

    typer.echo(json.dumps(asyncapi_document(), indent=2, sort_keys=True, ensure_ascii=False))


@app.command()
def openapi() -> None:
    """Print the OpenAPI document of the HTTP API."""
    from api.app import openapi_document

    typer.echo(json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
