"""`python -m bench --quick` runs end to end and prints its one table (no timing is ever asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.scenarios import ROOT

ROWS = ["1", "1a", "1b", "1c", "1d", "1e", "2", "3a", "3b", "3c", "4", "5", "6", "6a", "6b"]


def test_quick_bench_prints_every_row_with_a_ratio(tmp_path: Path) -> None:
    log_file = tmp_path / "bench.log"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--backends", "sqlite", "--log-file", str(log_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("Machine: nproc "), out
    assert "Python 3." in out.splitlines()[0]
    assert "SQLite" in out and "ratio" in out
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] in ROWS:
            found[cells[1]] = cells
    assert sorted(found) == sorted(ROWS), out
    for number, cells in found.items():
        assert re.search(r"\d[\d.e+-]*x", cells[-2]), f"row {number} has no ratio: {cells}"
        assert "failed" not in " ".join(cells), cells
    assert log_file.stat().st_size > 0
