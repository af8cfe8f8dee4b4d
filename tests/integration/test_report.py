"""`baton report`: the year's assessment report as HTML and as a PDF printed by headless Chromium, from a governed
year's real history on both stores; its figures are the API's and its root the finalisation's."""

from __future__ import annotations

import asyncio
import base64
import html
import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from infra.bootstrap import Container, Runtime
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.settings import Settings
from tests.conftest import Auth
from tests.scenarios import SCHEME, governed_year

CHROMIUM = shutil.which("chromium")


async def test_the_report_holds_the_apis_scores_and_the_signed_root(
    client: httpx.AsyncClient,
    auth: Auth,
    clock: ManualClock,
    runtime: Runtime,
    baton: Container,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await governed_year(client, auth, clock, runtime)
    year = clock.now().year
    r = await client.post("/v1/assessment-schemes", json=SCHEME, headers=auth("admin"))
    assert r.status_code in (201, 409), r.text
    await runtime.wait_idle()
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    month = clock.now().strftime("%Y-%m")
    out = tmp_path / "report.html"
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["report", "--year", str(year), "--month", month, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<script" not in page  # one self-contained document: charts are inline SVG
    api = (
        await client.get(f"/v1/assessments/{year}", params={"unit_type": "department"}, headers=auth("admin"))
    ).json()
    for unit in api["units"]:
        row = re.search(rf'<tr data-unit="{re.escape(unit["unit"])}">(.*?)</tr>', page, re.S)
        assert row, unit["unit"]
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row[1], re.S)]
        assert cells[:4] == [str(unit["rank"] or "–"), unit["name"], unit["total"] or "–", unit["grade"] or "–"]
    signed = baton.notary.view.checkpoint()
    assert signed is not None and base64.b64encode(signed["root"]).decode() in page  # provisional: the latest root
    assert "provisional" in page and f"{month} 接诉即办排名" in page
    ranking = (await client.get(f"/v1/rankings/{month}", headers=auth("admin"))).json()
    assert all(f'data-unit="{u["unit"]}"' in page for u in ranking["units"])

    if CHROMIUM is None and not os.environ.get("CI"):
        pytest.skip("no Chromium to print the PDF (apt-get install chromium)")
    pdf = tmp_path / "report.pdf"
    printed = await asyncio.to_thread(CliRunner().invoke, cli, ["report", "--year", str(year), "--out", str(pdf)])
    assert printed.exit_code == 0, printed.output
    assert pdf.read_bytes().startswith(b"%PDF-") and pdf.stat().st_size > 10_000


def test_a_report_names_a_file_it_can_write(tmp_path: Path, settings: Settings, monkeypatch: Any) -> None:
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    result = CliRunner().invoke(cli, ["report", "--year", "2026", "--out", str(tmp_path / "report.docx")])
    assert result.exit_code == 2 and ".html or .pdf" in result.output
