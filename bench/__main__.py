"""`python -m bench [--backends sqlite,postgres] [--quick]`: measure, then print one table."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import structlog
from rich.console import Console

from bench.measure import Plan, Results, run_backend
from bench.report import machine, table
from infra.logging import configure_logging

log = structlog.get_logger("baton.bench")
BACKENDS = ("sqlite", "postgres")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated: sqlite, postgres (default: both)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds): the figures mean nothing")
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="run the read models and the notary in the measuring process (BATON_PROJECTOR_PROCESS=false)",
    )
    parser.add_argument(
        "--http-only",
        action="store_true",
        help="only the HTTP rows (1-1e, 3a-3c: baton serve and bare Starlette from outside); the others not measured",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path(tempfile.gettempdir()) / "baton-bench.log",
        help="where Baton's logs go, as in production: JSON at --log-level (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="info", help="Baton's log level (default: info, as `baton serve`)")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        parser.error(f"unknown backend {unknown[0] if unknown else '(none)'}; use {', '.join(BACKENDS)}")
    return args


def log_to_file(path: Path, level: str) -> None:
    """Baton's production logging (JSON lines at `level`), written to a file so the table stands alone."""
    configure_logging(level, "json")
    root = logging.getLogger()
    path.write_text("")  # a fresh log; appended to, so the projector process's lines are not overwritten
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [handler]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    log_to_file(args.log_file, args.log_level)
    console = Console(width=max(Console().width, 180), soft_wrap=False)
    plan = Plan.quick() if args.quick else Plan.full()
    plan = dataclasses.replace(
        plan, projector_process=not args.one_process, log_file=args.log_file, http_only=args.http_only
    )
    console.print(machine())
    started = time.perf_counter()
    results: list[Results] = []
    for backend in args.backends:
        log.info("bench_backend_started", backend=backend)
        results.append(asyncio.run(run_backend(backend, plan)))
    console.print(table(plan, results))
    events = ", ".join(f"{r.backend} {r.events:,} events in the store" for r in results)
    console.print(
        f"{'quick smoke run, ' if args.quick else ''}{events}; took {time.perf_counter() - started:.0f} s; "
        f"logs in {args.log_file}"
    )
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
