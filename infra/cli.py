"""The `baton` command line."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from infra.logging import configure_logging
from infra.settings import Settings

app = typer.Typer(help="Baton: the event-sourced backbone of community governance.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens for the HTTP API.", no_args_is_help=True)
app.add_typer(token_app, name="token")
err = Console(stderr=True)


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
    raise typer.Exit(run_demo(settings, days))


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


@app.command()
def rebuild(
    name: Annotated[str | None, typer.Argument(help="One read model (e.g. whistle_board); default: all.")] = None,
) -> None:
    """Drop read models and rebuild them from the history (stop `baton serve` first)."""
    from infra.bootstrap import bootstrap

    settings = _settings()
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
