"""County x 10 at scale: write about a million events of governance, then time rebuild, score, export and verify.

    python -m bench.scale [--events 1000000] [--steps 250000,500000] [--data-dir DIR] [--seed 2019]

The history (bench/scale_history.py) grows in one SQLite data dir; at each step the four offline operations
run, each in a fresh subprocess whose peak RSS comes from wait4(), so memory is per operation and can be
compared as the history grows. Nothing runs online: no nats-server, relay or `baton serve`. The notary's
tree is caught up (in its own subprocess, timed separately) before `baton export`, which would otherwise do
it itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Measured:
    """One operation in one subprocess."""

    seconds: float
    peak_mb: float
    code: int
    output: str


@dataclass
class Step:
    """The four operations (and the notary's catch-up) at one history size."""

    events: int
    year: int
    generate_s: float
    notary: Measured
    rebuild: Measured
    score: Measured
    export: Measured
    verify: Measured
    export_mb: float


# A small launcher between this process and the measured one: a child's peak RSS starts from its parent's at
# fork (Linux carries it across exec), so forking from this process, which holds the generator, would
# report the generator's memory for every operation. The launcher is a bare interpreter of about 10 MB.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def measure(argv: list[str], env: dict[str, str], log: Path) -> Measured:
    """Run argv in a fresh process; its wall time and its own peak RSS (from wait4 in a small launcher)."""
    rusage = log.with_suffix(".rss")
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, str(rusage), *argv], env=env, stdout=out, stderr=out, cwd=REPO
        )
    seconds = time.perf_counter() - started
    kilobytes, code = (int(x) for x in rusage.read_text().split())
    return Measured(seconds, kilobytes / 1024, code, log.read_text()[-2000:])


def notary_catch_up(data_dir: Path) -> None:
    """Give every stored event its Merkle leaf (what `baton export` does first), in this process."""
    from infra.bootstrap import bootstrap
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("warning", "console")
    baton = bootstrap(Settings(data_dir=data_dir))
    try:
        print(json.dumps({"tree_size": baton.notary.catch_up()}))
    finally:
        baton.close()


def generate(data_dir: Path, steps: list[int], seed: int, console: Console) -> Any:
    """Yield (events, year, seconds) after writing each step's history into data_dir."""
    from bench.scale_history import START, History
    from infra.bootstrap import bootstrap
    from infra.clock import ManualClock
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("warning", "console")
    clock = ManualClock(START.replace(year=START.year - 1))
    baton = bootstrap(Settings(data_dir=data_dir), clock)
    try:
        if baton.store.max_position():
            raise SystemExit(f"{data_dir} already holds events; give a fresh --data-dir")
        history = History(baton, clock, seed)
        started = time.perf_counter()
        history.setup()
        console.print(
            f"organisation through the services: {history.tally.service_commands} commands, one transaction each, "
            f"in {history.tally.service_seconds:.1f} s"
        )
        for target in steps:
            events = history.run(target)
            seconds = time.perf_counter() - started
            console.print(
                f"history: {events:,} events up to {clock.now():%Y-%m-%d} in {seconds:.1f} s "
                f"({history.tally.transactions:,} batched transactions); whistles {sum(history.tally.fates.values()):,}"
            )
            # Score the last whole year once there is one: the busiest year, whose evidence scoring must carry.
            yield events, max(START.year, clock.now().year - 1), seconds
            started = time.perf_counter()
    finally:
        baton.close()


def run(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True, width=max(Console().width, 200))
    steps = sorted({*args.steps, args.events})
    own_dir = args.data_dir is None
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="baton-scale-", dir="/tmp"))
    logs = data_dir / "logs"
    env = {
        **os.environ,
        "BATON_DATA_DIR": str(data_dir),
        "BATON_LOG_LEVEL": "warning",
        "BATON_LOG_FORMAT": "console",
        "COLUMNS": "120",
    }
    baton = [sys.executable, "-m", "infra.cli"]  # this checkout's code, whatever `baton` on PATH is
    console.print(
        f"County x 10 into {data_dir}: offline, no nats-server, relay or `baton serve`; each operation in a fresh "
        "subprocess (peak RSS: wait4 in a small launcher)."
    )
    results: list[Step] = []
    try:
        for events, year, generated in generate(data_dir, steps, args.seed, console):
            if args.generate_only:
                continue
            logs.mkdir(exist_ok=True)
            out = Path(tempfile.mkdtemp(prefix=f"baton-scale-export-{events}-", dir="/tmp"))
            shutil.rmtree(out)
            py = [sys.executable, "-m", "bench.scale", "--notary-only", "--data-dir", str(data_dir)]
            step = Step(
                events=events,
                year=year,
                generate_s=generated,
                notary=measure(py, env, logs / f"notary-{events}.log"),
                rebuild=measure([*baton, "rebuild"], env, logs / f"rebuild-{events}.log"),
                score=measure(
                    [*baton, "score", "--year", str(year), "--unit-type", "community"],
                    env,
                    logs / f"score-{events}.log",
                ),
                export=measure([*baton, "export", "--out", str(out)], env, logs / f"export-{events}.log"),
                verify=measure([*baton, "verify", str(out)], env, logs / f"verify-{events}.log"),
                export_mb=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20 if out.exists() else 0,
            )
            shutil.rmtree(out, ignore_errors=True)
            results.append(step)
            for name in ("notary", "rebuild", "score", "export", "verify"):
                measured: Measured = getattr(step, name)
                if measured.code != 0:
                    console.print(f"[red]{name} at {events:,} events exited {measured.code}[/red]\n{measured.output}")
            console.print(
                f"  measured at {events:,}: rebuild {step.rebuild.seconds:.1f} s, score {step.score.seconds:.1f} s, "
                f"export {step.export.seconds:.1f} s, verify {step.verify.seconds:.1f} s"
            )
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    if results:
        console.print(table(results))
    if args.report:
        Path(args.report).write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    console.print(
        "Offline throughout: no nats-server, relay or `baton serve`; the notary takes part only as the in-process "
        "Merkle catch-up (its own column: the events new since the previous row) and export's one signed checkpoint. "
        f"Generator peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB."
    )
    return 0 if all(getattr(r, n).code == 0 for r in results for n in ("rebuild", "score", "export", "verify")) else 1


def table(results: list[Step]) -> Table:
    """One row per history size: seconds, events per second and peak RSS of each operation."""
    t = Table(title="County x 10: offline operations as the history grows (seconds · events/s · peak RSS)")
    columns = ("events", "notary catch-up", "rebuild (4 views)", "score (year: community)", "export", "verify")
    for column in columns:
        t.add_column(column, justify="right")
    previous = 0
    for r in results:

        def cell(m: Measured, events: int | None) -> str:
            rate = f" · {events / m.seconds:,.0f}/s" if events else ""
            return f"{m.seconds:.1f} s{rate} · {m.peak_mb:.0f} MB"

        t.add_row(
            f"{r.events:,}",
            cell(r.notary, r.events - previous),
            cell(r.rebuild, r.events),
            f"{r.year}: {cell(r.score, None)}",
            f"{cell(r.export, r.events)} · bundle {r.export_mb:,.0f} MB",
            cell(r.verify, r.events),
        )
        previous = r.events
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="history size at the last step")
    parser.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=None,
        help="smaller sizes to measure on the way (default: a quarter and a half of --events)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="a fresh data dir (default: a new one in /tmp)")
    parser.add_argument("--seed", type=int, default=2019)
    parser.add_argument("--keep", action="store_true", help="keep the data dir made in /tmp")
    parser.add_argument("--report", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--generate-only", action="store_true", help="write the history, measure nothing")
    parser.add_argument("--notary-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate_only:
        args.keep = True
    if args.notary_only:
        notary_catch_up(args.data_dir)
        return 0
    if args.steps is None:
        args.steps = [args.events // 4, args.events // 2]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
