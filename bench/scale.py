"""County x 10 at scale: write about a million events of governance, then time rebuild, score, export and verify.

    python -m bench.scale [--events 1000000] [--steps 250000,500000] [--data-dir DIR] [--seed 2019] [--store URL]

The history (bench/scale_history.py) grows in one SQLite data dir; at each step the four offline operations
run, each in a fresh subprocess whose peak RSS comes from wait4(), so memory is per operation and can be
compared as the history grows. Nothing runs online: no nats-server, relay or `baton serve`. The notary's
tree is caught up (in its own subprocess, timed separately) before `baton export`, which would otherwise do
it itself.

Each operation is also printed as a ratio of its bare substrate, measured in the same run at the same size in a
subprocess of its own: the same store's select_notifications read of every event (notary, rebuild, score,
export), and SHA-256 of each line of the export's events.jsonl (verify); and as the time a city-year of 200
million events (Beijing's 12345: ~25M cases of ~8 events) would take at that rate.
"""

from __future__ import annotations

import argparse
import hashlib
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
CITY_YEAR = 200_000_000
"""Events in a city-year: Beijing's 12345 took ~25M requests in 2025, ~8 events a case."""


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
    substrate: Measured
    read_per_s: float
    """The same store's select_notifications over every event, events/s."""
    sha_per_s: float
    """SHA-256 of each line of the export's events.jsonl, lines/s."""


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
    """Give every stored event its Merkle leaf (what `baton export` does first): this process appends, helper
    processes on both cores hash."""
    from infra.bootstrap import bootstrap
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("warning", "console")
    baton = bootstrap(Settings(data_dir=data_dir))
    try:
        print(json.dumps({"tree_size": baton.notary.catch_up(helpers=True)}))
    finally:
        baton.close()


def substrate(data_dir: Path, bundle: Path) -> None:
    """Print the bare substrate's rates: the store's select_notifications of every event; sha256 per exported line."""
    from infra.bootstrap import bootstrap
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("warning", "console")
    baton = bootstrap(Settings(data_dir=data_dir))
    try:
        store, after, count = baton.store, 0, 0
        started = time.perf_counter()
        while batch := store.select(after, 2000):
            count += len(batch)
            after = batch[-1].id
        read = count / (time.perf_counter() - started)
    finally:
        baton.close()
    lines, started = 0, time.perf_counter()
    with (bundle / "events.jsonl").open("rb") as f:
        for line in f:
            hashlib.sha256(line).digest()
            lines += 1
    print(json.dumps({"read_per_s": read, "sha_per_s": lines / (time.perf_counter() - started)}))


READ_RATE, READ_SECONDS = 200, 10.0


def served_reads(data_dir: Path, store: str, console: Console, rate: int = READ_RATE) -> dict[str, Any]:
    """`baton serve` on the history, once it has published and signed everything: the reads a community's pages
    make at READ_RATE/s from the paced client's process, against bare Starlette at the same rate."""
    import asyncio

    from bench.served import Served, measure_reads
    from infra.settings import Settings

    async def run() -> dict[str, Any]:
        served = Served(Settings(data_dir=data_dir, store=store), seed=False, log_file=data_dir / "serve-reads.log")
        async with served.running():
            started = time.perf_counter()
            health = await served.idle(timeout=3600)
            took = time.perf_counter() - started
            console.print(f"baton serve caught up (relay, read models, notary) in {took:.0f} s")
            scratch = Path(tempfile.mkdtemp(prefix="baton-scale-reads-", dir="/tmp"))
            try:
                found = await measure_reads(served, scratch, rate, READ_SECONDS, 120)
                return {**found, "events": int(health["store"]["position"])}
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    return asyncio.run(run())


def reads_table(found: dict[str, Any]) -> Table:
    t = Table(
        title=f"Reads from outside at {found['events']:,} events: {found['requests']} requests at {found['rate']}/s "
        "(paced client → baton serve) vs bare Starlette at the same rate"
    )
    for column in ("read", "p50 ms", "p99 ms", "p99 x bare"):
        t.add_column(column, justify="right")
    bare_p99 = found["bare"][1]
    for kind, (p50, p99) in [*found["kinds"].items(), ("all", found["ours"]), ("bare Starlette {}", found["bare"])]:
        t.add_row(kind, f"{p50:.1f}", f"{p99:.1f}", f"{bare_p99 / p99:.2f}x" if p99 else "n/a")
    return t


def generate(data_dir: Path, steps: list[int], seed: int, console: Console, store: str = "sqlite") -> Any:
    """Yield (events, year, seconds) after writing each step's history into data_dir."""
    from bench.scale_history import START, History
    from infra.bootstrap import bootstrap
    from infra.clock import ManualClock
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("warning", "console")
    clock = ManualClock(START.replace(year=START.year - 1))
    baton = bootstrap(Settings(data_dir=data_dir, store=store), clock)
    try:
        if baton.store.max_position():
            raise SystemExit(f"{store if store != 'sqlite' else data_dir} already holds events; give a fresh one")
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
        "BATON_STORE": args.store,  # the subprocesses' Settings read it (PostgreSQL: events and views there)
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
        for events, year, generated in generate(data_dir, steps, args.seed, console, args.store):
            if args.generate_only:
                continue
            logs.mkdir(exist_ok=True)
            out = Path(tempfile.mkdtemp(prefix=f"baton-scale-export-{events}-", dir="/tmp"))
            shutil.rmtree(out)
            py = [sys.executable, "-m", "bench.scale", "--data-dir", str(data_dir)]
            notary = measure([*py, "--notary-only"], env, logs / f"notary-{events}.log")
            rebuild = measure([*baton, "rebuild"], env, logs / f"rebuild-{events}.log")
            score = measure(
                [*baton, "score", "--year", str(year), "--unit-type", "community"], env, logs / f"score-{events}.log"
            )
            export = measure([*baton, "export", "--out", str(out)], env, logs / f"export-{events}.log")
            bare = measure([*py, "--substrate-only", str(out)], env, logs / f"substrate-{events}.log")
            rates = json.loads(bare.output.strip().splitlines()[-1]) if bare.code == 0 else {}
            step = Step(
                events=events,
                year=year,
                generate_s=generated,
                notary=notary,
                rebuild=rebuild,
                score=score,
                export=export,
                verify=measure([*baton, "verify", str(out)], env, logs / f"verify-{events}.log"),
                export_mb=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20 if out.exists() else 0,
                substrate=bare,
                read_per_s=rates.get("read_per_s", 0.0),
                sha_per_s=rates.get("sha_per_s", 0.0),
            )
            shutil.rmtree(out, ignore_errors=True)
            results.append(step)
            for name in ("notary", "rebuild", "score", "export", "verify", "substrate"):
                measured: Measured = getattr(step, name)
                if measured.code != 0:
                    console.print(f"[red]{name} at {events:,} events exited {measured.code}[/red]\n{measured.output}")
            console.print(
                f"  measured at {events:,}: rebuild {step.rebuild.seconds:.1f} s, score {step.score.seconds:.1f} s, "
                f"export {step.export.seconds:.1f} s, verify {step.verify.seconds:.1f} s"
            )
        if args.reads and results:
            found = served_reads(data_dir, args.store, console, args.read_rate)
            console.print(reads_table(found))
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
    names = ("rebuild", "score", "export", "verify", "substrate")
    return 0 if all(getattr(r, n).code == 0 for r in results for n in names) else 1


def table(results: list[Step]) -> Table:
    """One row per history size: each operation's seconds, events/s, ratio to its substrate, city-year time, RSS."""
    t = Table(
        title="County x 10: offline operations as the history grows "
        "(seconds · events/s · x its substrate in this run · a 200M-event city-year at that rate · peak RSS)"
    )
    columns = ("events", "substrate", "notary catch-up", "rebuild (5 views)", "score (a year: community)", "export")
    for column in (*columns, "verify"):
        t.add_column(column, justify="right")
    previous = 0
    for r in results:

        def cell(m: Measured, events: int, bare: float) -> str:
            if events <= 0 or bare <= 0:
                return f"{m.seconds:.1f} s · {m.peak_mb:.0f} MB"
            rate = events / m.seconds
            city = CITY_YEAR / rate
            when = f"{city / 3600:.1f} h" if city >= 5400 else f"{city / 60:.0f} min"
            return f"{m.seconds:.1f} s · {rate:,.0f}/s · {rate / bare:.2f}x · 200M {when} · {m.peak_mb:.0f} MB"

        t.add_row(
            f"{r.events:,}",
            f"read {r.read_per_s:,.0f}/s · sha256 {r.sha_per_s:,.0f} lines/s",
            cell(r.notary, r.events - previous, r.read_per_s),
            cell(r.rebuild, r.events, r.read_per_s),
            f"{r.year}: {cell(r.score, r.events, r.read_per_s)}",
            f"{cell(r.export, r.events, r.read_per_s)} · bundle {r.export_mb:,.0f} MB",
            cell(r.verify, r.events, r.sha_per_s),
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
    parser.add_argument(
        "--store", default="sqlite", help="sqlite (in the data dir), or a PostgreSQL URL with a fresh ?schema=NAME"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir made in /tmp")
    parser.add_argument("--report", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--generate-only", action="store_true", help="write the history, measure nothing")
    parser.add_argument(
        "--reads", action="store_true", help="after the last step, serve the history and time reads from outside"
    )
    parser.add_argument(
        "--reads-only", action="store_true", help="serve the history already in --data-dir and time reads from outside"
    )
    parser.add_argument("--read-rate", type=int, default=READ_RATE, help="reads/s offered (default: %(default)s)")
    parser.add_argument("--notary-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--substrate-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.substrate_only is not None:
        substrate(args.data_dir, args.substrate_only)
        return 0
    if args.generate_only:
        args.keep = True
    if args.reads_only:
        if args.data_dir is None:
            parser.error("--reads-only needs --data-dir: a history bench.scale wrote and rebuilt")
        console = Console(soft_wrap=True, width=max(Console().width, 160))
        console.print(reads_table(served_reads(args.data_dir, args.store, console, args.read_rate)))
        return 0
    if args.notary_only:
        notary_catch_up(args.data_dir)
        return 0
    if args.steps is None:
        args.steps = [args.events // 4, args.events // 2]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
