"""A month's ranking finalised: refused before the month ends, tied to the tree's size and root, given as finalised
from then on, and recounted by `baton verify` from an export, which catches figures that do not recount."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from typer.testing import CliRunner

from audit.verify import OK, SCORES, verify
from domain.common import digest
from domain.ranking import MonthlyRanking, month_end
from infra.bootstrap import Container, Runtime
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.export import export
from infra.settings import Settings
from tests.conftest import Auth, blow
from tests.scenarios import governed_year


async def test_a_month_is_finalised_on_the_signed_tree_and_verify_recounts_it(
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
    month = clock.now().astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    admin, auditor = auth("admin"), auth("auditor", None, "audit-team")
    early = await client.post(f"/v1/rankings/{month}/finalise", json={}, headers=admin)
    assert early.status_code == 409 and early.json()["error"]["code"] == "month_not_over", early.text
    assert (await client.get(f"/v1/rankings/{month}/finalisations", headers=auditor)).json() == []
    live = (await client.get(f"/v1/rankings/{month}", params={"unit_type": "department"}, headers=auditor)).json()
    assert live["final"] is None and live["units"]

    clock.set(month_end(month))
    refused = await client.post(f"/v1/rankings/{month}/finalise", json={}, headers=auth("street", "gushu"))
    assert refused.status_code == 403
    body = {"unit_types": ["department", "community"]}
    finalised = await client.post(f"/v1/rankings/{month}/finalise", json=body, headers=admin)
    assert finalised.status_code == 201, finalised.text
    receipt = finalised.json()
    assert base64.b64decode(receipt["root"]) == baton.notary.view.root(receipt["tree_size"])
    assert receipt["digests"]["department"] == digest({k: v for k, v in live.items() if k != "final"})
    twice = await client.post(f"/v1/rankings/{month}/finalise", json={"unit_types": ["community"]}, headers=admin)
    assert twice.status_code == 409 and "already final" in twice.text

    # Cases after the cut-off leave the finalised figures as they were; the month is given as finalised.
    await blow(client, auth, title="Late drain", summoned_departments=["HOUSING"])
    await runtime.wait_idle()
    shown = (await client.get(f"/v1/rankings/{month}", params={"unit_type": "department"}, headers=auditor)).json()
    assert shown["final"]["digest"] == receipt["digests"]["department"]
    assert (
        shown["final"]["tree_size"] == receipt["tree_size"] and shown["cutoff_position"] == receipt["cutoff_position"]
    )
    assert {k: v for k, v in shown.items() if k != "final"} == {k: v for k, v in live.items() if k != "final"}
    records = (await client.get(f"/v1/rankings/{month}/finalisations", headers=auditor)).json()
    assert [(r["unit_type"], r["digest"], r["root"]) for r in records] == [
        (t, receipt["digests"][t], receipt["root"]) for t in ("department", "community")
    ]
    unknown = await client.get("/v1/rankings/1999-01/finalisations", headers=auditor)
    assert unknown.status_code == 404 and "1999-01" in unknown.json()["error"]["message"]

    # The command line finalises what is left (the streets), after the cut-off of the later whistle.
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    ran = await asyncio.to_thread(CliRunner().invoke, cli, ["ranking", "--month", month, "--finalise"])
    assert ran.exit_code == 0, ran.output
    assert f"{month} street ranking finalised: figures sha256" in ran.output
    again = await asyncio.to_thread(CliRunner().invoke, cli, ["ranking", "--month", month, "--finalise"])
    assert again.exit_code == 2 and "already final for every unit type" in again.output
    streets = (await client.get(f"/v1/rankings/{month}/finalisations", headers=auditor)).json()
    assert [r["unit_type"] for r in streets] == ["department", "community", "street"]
    assert streets[2]["cutoff_position"] > receipt["cutoff_position"]

    bundle = tmp_path / "export"
    export(baton, bundle)
    vkey = (await client.get("/v1/audit/key", headers=auditor)).json()["vkey"]
    report = verify(bundle, vkey)
    assert report.code == OK, report.notes
    assert report.rankings == 3

    # Figures that do not recount (recorded by hand, not counted from the log) fail the bundle, named.
    month_before = "2026-02"
    forged = MonthlyRanking(month=month_before, timestamp=clock.now(), meta={})
    position = baton.store.max_position()
    size, root = baton.assessment.tree(position)
    figures = {
        "month": month_before,
        "unit_type": "community",
        "cutoff_position": position,
        "events": size,
        "units": [],
    }
    forged.finalise(figures, "0" * 64, size, base64.b64encode(root).decode(), timestamp=clock.now(), meta={})
    baton.assessment.save(forged)
    forged_bundle = tmp_path / "forged"
    export(baton, forged_bundle)
    failed = verify(forged_bundle, vkey)
    assert failed.code == SCORES, failed.notes
    assert f"the {month_before} community ranking finalised at position" in failed.notes[-1]
    assert "recounting the events gives" in failed.notes[-1]
