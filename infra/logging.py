"""Structured logs: key-value pairs via structlog; readable lines on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog


def configure_logging(level: str = "info", fmt: str = "auto", file: Path | None = None) -> None:
    """Route structlog and the standard library's logging to stderr (or FILE) in one format.

    FMT is `json`, `console`, or `auto`: console on a terminal, JSON when stderr is a pipe or a file."""
    if file is not None:
        fmt = "json"
    elif fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,  # tests capture logs after the CLI configured them
    )
    handler: logging.Handler = logging.FileHandler(file) if file is not None else logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if fmt == "json" else []),  # the traceback, not exc_info=true
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "nats", "faststream", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
