"""`python -m bench.scale` on a small history: every operation exits 0 and the table has a row per size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.scenarios import ROOT


def test_small_scale_run_measures_every_operation(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale",
            "--events",
            "6000",
            "--steps",
            "4000",
            "--data-dir",
            str(tmp_path / "data"),
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())
    assert len(rows) == 2 and rows[0]["events"] >= 4000 and rows[1]["events"] >= 6000  # a batch may overshoot
    for row in rows:
        for name in ("notary", "rebuild", "score", "export", "verify", "substrate"):
            assert row[name]["code"] == 0, (name, row[name]["output"])
            assert row[name]["peak_mb"] > 0
        assert row["read_per_s"] > 0 and row["sha_per_s"] > 0  # each row's substrate, measured in the same run
    assert "Offline throughout" in done.stdout
    assert "x its substrate" in done.stdout and "200M" in done.stdout
