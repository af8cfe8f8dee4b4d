"""The baton end to end: reproducible scores, finalisation tied to the Merkle tree, signed checkpoints and proofs,
an export that verifies offline, and tampering that is caught every time."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
import rfc8785
from typer.testing import CliRunner

from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from audit.note import Checkpoint, Verifier
from audit.scoring import score
from audit.verify import OK, verify
from domain.common import year_end
from infra.bootstrap import Container, Runtime
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.export import export
from infra.settings import Settings
from tests.conftest import Auth, seed_county, stream_messages
from tests.scenarios import SCHEME, governed_year


async def test_scores_are_reproducible_final_and_replay_from_an_export(
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
    auditor = auth("auditor", None, "audit-team")
    live = await client.get(f"/v1/assessments/{year}", params={"unit_type": "department"}, headers=auditor)
    assert live.status_code == 200, live.text
    again = await client.get(f"/v1/assessments/{year}", params={"unit_type": "department"}, headers=auditor)
    assert live.content == again.content == rfc8785.dumps(live.json())
    result = live.json()
    psb = next(u for u in result["units"] if u["unit"] == "PSB")
    assert psb["rank"] is not None and psb["grade"] is not None
    rated = next(i for i in psb["indicators"] if i["code"] == "rated_by_communities")
    assert rated["value"] == "5.0000" and len(rated["events"]) == 1
    for unit_type in ("community", "street"):
        r = await client.get(f"/v1/assessments/{year}", params={"unit_type": unit_type}, headers=auditor)
        assert r.status_code == 200 and any(u["total"] is not None for u in r.json()["units"])

    admin = auth("admin")
    early = await client.post(f"/v1/assessments/{year}/finalise", json={}, headers=admin)
    assert early.status_code == 409 and early.json()["error"]["code"] == "year_not_over", early.text
    assert f"before {year + 1}-01-01 00:00:00+08:00 (Asia/Shanghai)" in early.json()["error"]["message"]
    ahead = {"as_of": f"{year}-12-31T23:00:00+08:00"}
    assert (await client.post(f"/v1/assessments/{year}/finalise", json=ahead, headers=admin)).status_code == 422
    assert (await client.get(f"/v1/assessments/{year}/finalisations", headers=auditor)).json() == []

    clock.set(year_end(year))
    cut_short = await client.post(f"/v1/assessments/{year}/finalise", json=ahead, headers=admin)
    assert cut_short.status_code == 422 and "leave out the rest of the year" in cut_short.text
    finalised = await client.post(f"/v1/assessments/{year}/finalise", json={}, headers=admin)
    assert finalised.status_code == 201, finalised.text
    final = finalised.json()
    assert final["cutoff_position"] == result["cutoff_position"]
    assert final["tree_size"] == result["events"]
    assert base64.b64decode(final["root"]) == baton.notary.view.root(final["tree_size"])
    twice = await client.post(f"/v1/assessments/{year}/finalise", json={}, headers=admin)
    assert twice.status_code == 409 and "void it first" in twice.text

    # A finalisation made by mistake is voided with a reason, then made again: both stay in the history.
    why = {"unit_types": ["department"], "reason": "finalised before the departments' late feedback was in"}
    voided = await client.post(f"/v1/assessments/{year}/void", json=why, headers=admin)
    assert voided.status_code == 201 and voided.json()["voided"] == ["department"], voided.text
    standing = (await client.get(f"/v1/assessments/{year}/final", headers=auditor)).json()
    assert standing and {r["unit_type"] for r in standing} == {"community", "street"}
    again = await client.post(f"/v1/assessments/{year}/finalise", json={"unit_types": ["department"]}, headers=admin)
    assert again.status_code == 201 and again.json()["cutoff_position"] == voided.json()["position"], again.text
    assert (
        await client.post(f"/v1/assessments/{year}/void", json=why, headers=auth("district", "dangtu"))
    ).status_code == 201
    nothing = await client.post(f"/v1/assessments/{year}/void", json=why, headers=admin)
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "not_final"
    again = await client.post(f"/v1/assessments/{year}/finalise", json={"unit_types": ["department"]}, headers=admin)
    assert again.status_code == 201, again.text
    history = (await client.get(f"/v1/assessments/{year}/finalisations", headers=auditor)).json()
    assert [(f["unit_type"], f["voided"] is not None) for f in history] == [
        ("department", True),
        ("community", False),
        ("street", False),
        ("department", True),
        ("department", False),
    ]
    assert history[0]["voided"]["reason"] == why["reason"] and history[0]["voided"]["voided_by"]["role"] == "admin"
    await runtime.wait_idle()
    records = (await client.get(f"/v1/assessments/{year}/final", headers=auditor)).json()
    assert {(r["unit_type"], r["unit"]): r["score"] for r in records if r["unit_type"] == "department"} == {
        ("department", u["unit"]): u["total"] for u in result["units"]
    }

    bundle = tmp_path / "export"
    manifest = export(baton, bundle)
    vkey = (await client.get("/v1/audit/key", headers=auditor)).json()["vkey"]
    report = verify(bundle, vkey)
    assert report.code == OK, report.notes
    departments = len(result["units"])
    assert report.finalised == len(records) + 2 * departments and report.voided == 2
    assert report.events == manifest["tree_size"] and report.pinned

    events = [json.loads(line) for line in (bundle / "events.jsonl").read_text().splitlines()]
    replayed = score(events, SCHEME, year, "department", final["cutoff_position"])
    assert rfc8785.dumps(replayed) == live.content

    await runtime.stop()
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    rebuilt = await asyncio.to_thread(CliRunner().invoke, cli, ["rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    after = await asyncio.to_thread(baton.assessment.compute, year, "department", cutoff=final["cutoff_position"])
    assert rfc8785.dumps(after) == live.content
    cli_score = await asyncio.to_thread(
        CliRunner().invoke, cli, ["score", "--year", str(year), "--position", str(final["cutoff_position"]), "--json"]
    )
    assert cli_score.exit_code == 0 and cli_score.output.strip().encode() == live.content


async def test_checkpoints_are_signed_published_and_prove_inclusion_and_consistency(
    client: httpx.AsyncClient, auth: Auth, runtime: Runtime, baton: Container, nc
) -> None:
    await seed_county(client, auth)
    auditor = auth("auditor")
    baton.notary.catch_up()
    first = baton.notary.sign()
    assert first is not None
    r = await client.post(
        "/v1/whistles",
        json={"community_id": "tishu", "category": "drainage", "title": "t", "description": "d"},
        headers=auth("community", "tishu"),
    )
    position = r.json()["position"]
    baton.notary.catch_up()
    _, second_size = baton.notary.sign()
    verifier = Verifier.parse((await client.get("/v1/audit/key", headers=auditor)).json()["vkey"])

    proof = (await client.get(f"/v1/audit/proof/{position}", headers=auditor)).json()
    checkpoint = Checkpoint.verified(proof["checkpoint"], verifier, baton.notary.origin)
    canonical = (await client.get(f"/v1/audit/events/{position}", headers=auditor)).content
    assert base64.b64encode(leaf_hash(canonical)).decode() == proof["leaf_hash"]
    verify_inclusion(
        leaf_hash(canonical),
        proof["index"],
        checkpoint.size,
        [base64.b64decode(p) for p in proof["proof"]],
        checkpoint.root,
    )

    consistency = (
        await client.get("/v1/audit/consistency", params={"from": first[1], "to": second_size}, headers=auditor)
    ).json()
    verify_consistency(
        first[1],
        second_size,
        [base64.b64decode(p) for p in consistency["proof"]],
        base64.b64decode(consistency["root1"]),
        base64.b64decode(consistency["root2"]),
    )
    assert (await client.get("/v1/audit/checkpoint", headers=auth("community", "tishu"))).status_code == 403

    await runtime.wait_idle()
    for _ in range(100):
        published = await stream_messages(nc, "BATON_AUDIT")
        if published:
            break
        await asyncio.sleep(0.1)
    Checkpoint.verified(published[-1].data.decode(), verifier, baton.notary.origin)
