"""The machine the run was on, and the one table of results."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from bench.measure import Figure, Plan, Results

BACKEND_TITLES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def machine() -> str:
    """nproc, CPU model, Python, and the load when the run started (the machine is shared)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Machine: nproc {nproc}, {model}; Python {platform.python_version()} ({platform.python_implementation()}); "
        f"{platform.system()} {platform.release()}; load average at start {load}"
    )


def rows(plan: Plan) -> list[tuple[str, str, str]]:
    """(key, number, label) of every row, in order; the label names the bare substrate after "vs"."""
    out = [
        ("http_404", "1", "HTTP from outside (wrk -t2 -c16 → baton serve): a 404, no token, vs bare Starlette {}"),
        ("http_org", "1a", "  GET /v1/org (a small authenticated read) vs bare Starlette"),
        ("http_board", "1b", "  GET /v1/whistles?limit=1 vs bare Starlette"),
        ("http_blow", "1c", "  POST /v1/whistles (blow a whistle) vs bare Starlette"),
        ("http_report_in", "1d", "  POST /v1/whistles/{id}/report-in (a department) vs bare Starlette"),
        (
            "reads",
            "1e",
            f"  reads p50 / p99 at {plan.read_rate}/s offered (paced client) vs bare Starlette at the same rate",
        ),
        ("intake", "2", "NATS intake commands/s (report_in, counted by outcomes) vs save loop"),
    ]
    for i, rate in enumerate(plan.offered_rates):
        number = f"3{'abc'[i]}" if i < 3 else f"3.{i + 1}"
        label = f"command → whistle board p50 / p99, {rate:,}/s offered (paced client → baton serve) vs one save"
        out.append((f"latency_{rate}", number, label))
    out += [
        ("relay", "4", "relay events/s to an empty BATON_EVENTS vs js.publish_async"),
        ("rebuild", "5", "baton rebuild events/s (all 4 read models) vs select_notifications"),
        ("audit", "6", "baton export + baton verify events/s vs sha256 per line"),
        ("export", "6a", "  export alone vs sha256 per line"),
        ("verify", "6b", "  verify alone vs sha256 per line"),
    ]
    return out


def _amount(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ours(figure: Figure) -> str:
    if figure.latency:
        assert figure.ours_p99 is not None
        return f"{_amount(figure.ours)} / {_amount(figure.ours_p99)} ms"
    return f"{_amount(figure.ours)} {figure.unit}"


def _bare(figure: Figure) -> str:
    if figure.latency:
        assert figure.bare_p99 is not None
        return f"{_amount(figure.bare)} / {_amount(figure.bare_p99)} ms"
    unit = figure.bare_unit or ("ev/s" if figure.unit in ("cmd/s", "req/s") else figure.unit)
    return f"{_amount(figure.bare)} {unit}"


def ratio(value: float) -> str:
    """0.42x; below 0.1 with two significant digits (0.0031x), so a small ratio never prints as 0.00x."""
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _ratio(figure: Figure) -> str:
    if figure.latency and figure.ratio_p99 is not None:
        return f"{ratio(figure.ratio)} / {ratio(figure.ratio_p99)}"
    return ratio(figure.ratio)


def table(plan: Plan, results: list[Results]) -> Table:
    """One row per measurement; per backend: Baton, the bare substrate, and Baton's fraction of its speed."""
    layout = (
        "read models and notary in a second process, as `baton serve` runs them"
        if plan.projector_process
        else "everything in one process (--one-process)"
    )
    table = Table(
        title=f"Baton vs the bare substrate, same run, same machine; {layout}",
        caption=(
            "ratio = Baton's fraction of the substrate's speed (ours/bare for rates, bare/ours for latencies "
            "p50 / p99): 1.00x = as fast as the substrate. Bare: bare Starlette {} = a Starlette app answering {} on "
            "the same uvicorn options in its own process, loaded by the same client in the same run; "
            "save loop = eventsourcing Application, one "
            "trivial event per transaction on the same backend and recorder; one save = the latency of such a save; "
            "js.publish_async = nats-py to a stream with BATON_EVENTS's settings; select_notifications = one read "
            "of the log in pages of 5,000; sha256 per line = hashlib over each line of events.jsonl."
        ),
        caption_justify="left",
    )
    table.add_column("#")
    table.add_column("measurement", ratio=1, min_width=40)
    for result in results:
        title = BACKEND_TITLES.get(result.backend, result.backend)
        table.add_column(title, justify="right", no_wrap=True)
        table.add_column("bare", justify="right", no_wrap=True)
        table.add_column("ratio", justify="right", no_wrap=True)
    for key, number, label in rows(plan):
        cells = [number, label]
        notes: dict[str, str] = {}
        for result in results:
            figure = result.figures.get(key)
            if figure is None:
                error = result.errors.get(key) or result.errors.get("*")
                cells += [escape(f"failed: {error}" if error else "not measured"), "", "n/a"]
                continue
            cells += [_ours(figure), _bare(figure), _ratio(figure)]
            if figure.note:
                notes[BACKEND_TITLES.get(result.backend, result.backend)] = figure.note
        if len(set(notes.values())) == 1 and len(notes) == len(results):
            cells[1] += f"\n[dim]{escape(next(iter(notes.values())))}[/dim]"
        elif notes:
            cells[1] += "\n[dim]" + escape("; ".join(f"{title}: {note}" for title, note in notes.items())) + "[/dim]"
        table.add_row(*cells)
    return table
