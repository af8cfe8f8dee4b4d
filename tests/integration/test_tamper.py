"""Tampering with an export is caught every time: a byte of an event, a deleted event, two swapped, a finalised
score changed, a checkpoint re-signed with another key, leaves rewritten to match."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import httpx
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from api.app import create_app
from api.tokens import Tokens
from audit.merkle import leaf_hash
from audit.note import Checkpoint, Signer, Verifier
from audit.verify import EVENTS, OK, SCORES, SIGNATURE, Assessments, Failed, Report, _check_voidings, roots_at, verify
from domain.common import year_end
from infra.bootstrap import Runtime, bootstrap
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.export import export
from infra.nats_server import EmbeddedNats
from infra.settings import Settings
from tests.conftest import START, Auth
from tests.scenarios import ROOT, governed_year


@pytest.fixture(autouse=True, params=["one process", "helpers"])
def helpers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check twice: in one process, and with helper processes checking chunks of a few lines each (the
    path a bundle of HELP_FROM events or more takes), which must give the same report."""
    if request.param == "helpers":
        from audit import verify as verify_module

        monkeypatch.setattr(verify_module, "HELP_FROM", 1)
        monkeypatch.setattr(verify_module, "CHUNK", 3000)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One governed year, finalised and exported (SQLite; the bundle format is the same for PostgreSQL)."""
    root = tmp_path_factory.mktemp("governed")

    async def build() -> None:
        settings = Settings(data_dir=root / "data", store="sqlite", watch_interval=3600, checkpoint_interval=0.5)
        clock = ManualClock(START)
        baton = bootstrap(settings, clock)
        server = EmbeddedNats(root / "nats")
        await server.start()
        runtime = Runtime(baton, nats_url=server.url, watch=False)
        await runtime.start()
        tokens = Tokens(b"test-secret-that-is-long-enough-for-hs256!")
        auth = Auth(tokens)
        try:
            transport = httpx.ASGITransport(app=create_app(baton, tokens))
            async with httpx.AsyncClient(transport=transport, base_url="http://baton.test") as client:
                await governed_year(client, auth, clock, runtime)
                year = clock.now().year
                clock.set(year_end(year))
                departments = {"unit_types": ["department"]}
                mistake = {**departments, "reason": "finalised with the wrong cut-off"}
                for path, body in (("finalise", departments), ("void", mistake), ("finalise", departments)):
                    r = await client.post(f"/v1/assessments/{year}/{path}", json=body, headers=auth("admin"))
                    assert r.status_code == 201, r.text
            export(baton, root / "pristine")
        finally:
            await runtime.stop()
            await server.stop()
            baton.close()

    asyncio.run(build())
    assert verify(root / "pristine").code == OK
    return root / "pristine"


def copy_of(bundle: Path, tmp: Path) -> Path:
    target = tmp / f"copy-{len(list(tmp.iterdir()))}"
    shutil.copytree(bundle, target)
    return target


def lines(path: Path) -> list[bytes]:
    return (path / "events.jsonl").read_bytes().splitlines()


def write_lines(path: Path, rows: list[bytes]) -> None:
    (path / "events.jsonl").write_bytes(b"".join(r + b"\n" for r in rows))


def test_one_byte_of_one_event(bundle: Path, tmp_path: Path) -> None:
    target = copy_of(bundle, tmp_path)
    rows = lines(target)
    index = len(rows) // 2
    position = json.loads(rows[index])["position"]
    rows[index] = rows[index].replace(b'"type":"', b'"type":"x', 1)
    write_lines(target, rows)
    report = verify(target)
    assert report.code == EVENTS and f"position {position}" in report.notes[-1] and "altered" in report.notes[-1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_caught(
    bundle: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    target = copy_of(bundle, tmp_path_factory.mktemp("flip"))
    raw = bytearray((target / "events.jsonl").read_bytes())
    offset = data.draw(st.integers(0, len(raw) - 1))
    raw[offset] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[offset]))
    (target / "events.jsonl").write_bytes(bytes(raw))
    assert verify(target).code == EVENTS


def test_one_event_deleted(bundle: Path, tmp_path: Path) -> None:
    target = copy_of(bundle, tmp_path)
    rows = lines(target)
    deleted = json.loads(rows[10])["position"]
    write_lines(target, rows[:10] + rows[11:])
    report = verify(target)
    assert report.code == EVENTS and "missing" in report.notes[-1]
    assert f"between positions {deleted - 1} and {deleted + 1}" in report.notes[-1]


def test_two_events_swapped(bundle: Path, tmp_path: Path) -> None:
    target = copy_of(bundle, tmp_path)
    rows = lines(target)
    rows[20], rows[21] = rows[21], rows[20]
    write_lines(target, rows)
    report = verify(target)
    assert report.code == EVENTS and "reordered" in report.notes[-1]
    assert f"position {json.loads(rows[20])['position']}" in report.notes[-1]


def test_a_finalised_score_changed(bundle: Path, tmp_path: Path) -> None:
    copy = copy_of(bundle, tmp_path)
    finalised = json.loads((copy / "finalised.json").read_text())
    finalised[0]["score"] = "99.99"
    (copy / "finalised.json").write_text(json.dumps(finalised))
    assert verify(copy).code == SCORES

    in_history = copy_of(bundle, tmp_path)
    rows = lines(in_history)
    index = next(i for i, r in enumerate(rows) if b'"type":"finalised"' in r)
    body = json.loads(rows[index])
    body["data"]["score"] = "99.99"
    rows[index] = rfc8785.dumps(body)
    write_lines(in_history, rows)
    report = verify(in_history)
    assert report.code == EVENTS and f"position {body['position']}" in report.notes[-1]


def test_a_checkpoint_re_signed_with_another_key(bundle: Path, tmp_path: Path) -> None:
    copy = copy_of(bundle, tmp_path)
    origin = json.loads((copy / "manifest.json").read_text())["origin"]
    forger = Signer(origin, Ed25519PrivateKey.generate())
    path = sorted((copy / "checkpoints").iterdir())[0]
    text = path.read_text().split("\n\n")[0] + "\n"
    path.write_text(forger.sign(text))
    report = verify(copy)
    assert report.code == SIGNATURE and path.name in report.notes[-1]

    # Re-signing everything and swapping the bundle's key is caught once the log's key is pinned.
    pinned = Verifier.parse((bundle / "key.vkey").read_text()).vkey()
    for cp in (copy / "checkpoints").iterdir():
        cp.write_text(forger.sign(cp.read_text().split("\n\n")[0] + "\n"))
    (copy / "key.vkey").write_text(forger.verifier.vkey())
    assert verify(copy).code == OK  # only the bundle's own key: a warning, not proof
    assert verify(copy, pinned).code == SIGNATURE


def test_leaves_rewritten_to_match_an_altered_event(bundle: Path, tmp_path: Path) -> None:
    copy = copy_of(bundle, tmp_path)
    rows = lines(copy)
    body = json.loads(rows[5])
    body["data"]["name"] = "另一个名字"
    rows[5] = rfc8785.dumps(body)
    write_lines(copy, rows)
    leaves = bytearray((copy / "leaves.bin").read_bytes())
    leaves[5 * 32 : 6 * 32] = leaf_hash(rows[5])
    (copy / "leaves.bin").write_bytes(bytes(leaves))
    report = verify(copy)
    found = re.search(r"between tree indexes (\d+) and (\d+)", report.notes[-1])
    assert report.code == EVENTS and found, report.notes
    assert int(found[1]) <= 5 <= int(found[2]), report.notes[-1]  # the range of the first checkpoint covering it


def test_the_cli_exit_codes(bundle: Path, tmp_path: Path) -> None:
    ok = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert ok.exit_code == 0 and "intact" in ok.output
    broken = copy_of(bundle, tmp_path)
    (broken / "leaves.bin").unlink()
    assert CliRunner().invoke(cli, ["verify", str(broken)]).exit_code == 2


def forged(bundle: Path, tmp_path: Path, rows: list[bytes]) -> Path:
    """A copy holding these events, with leaves, checkpoints, copies and key all made anew by a forger."""
    copy = copy_of(bundle, tmp_path)
    write_lines(copy, rows)
    leaves = [leaf_hash(row) for row in rows]
    (copy / "leaves.bin").write_bytes(b"".join(leaves))
    finalised = [{"position": b["position"], **b["data"]} for b in map(json.loads, rows) if b["type"] == "finalised"]
    (copy / "finalised.json").write_text(json.dumps(finalised))
    origin = json.loads((copy / "manifest.json").read_text())["origin"]
    forger = Signer(origin, Ed25519PrivateKey.generate())
    sizes = {len(rows)}
    for path in (copy / "checkpoints").iterdir():
        if int(path.stem) <= len(rows):
            sizes.add(int(path.stem))
        else:
            path.unlink()
    roots = roots_at(leaves, sizes)
    for size in sizes:
        (copy / "checkpoints" / f"{size}.txt").write_text(forger.sign(Checkpoint(origin, size, roots[size]).text()))
    (copy / "key.vkey").write_text(forger.verifier.vkey())
    return copy


def test_a_voiding_must_name_the_finalisation_that_stands(bundle: Path, tmp_path: Path) -> None:
    rows = lines(bundle)
    assert verify(forged(bundle, tmp_path, rows)).code == OK  # the forger's own key: consistent, if not proof
    index = next(i for i, r in enumerate(rows) if b'"type":"finalisation_voided"' in r)
    body = json.loads(rows[index])
    body["data"]["cutoff_position"] -= 1
    rows[index] = rfc8785.dumps(body)
    report = verify(forged(bundle, tmp_path, rows[: index + 1]))
    assert report.code == SCORES and f"the voiding at position {body['position']}" in report.notes[-1]
    assert "does not stand there" in report.notes[-1]


def test_finalisations_and_voidings_take_turns_and_an_early_one_is_named() -> None:
    scheme = json.loads((ROOT / "standards" / "assessment-scheme-2026.1.json").read_text())

    def step(position: int, cutoff: int) -> dict:
        return {
            "position": position,
            "year": 2026,
            "unit_type": "department",
            "scheme_version": "2026.1",
            "cutoff_position": cutoff,
            "tree_size": cutoff,
            "root": f"root-{cutoff}",
        }

    early = Assessments(
        schemes={"2026.1": scheme},
        finalised=[step(10, 9), step(11, 9)],
        finalised_at={10: "2026-06-01T00:00:00+00:00"},
    )
    report = Report()
    _check_voidings(early, report)
    assert (
        report.voided == 0
        and "made on 2026-06-01T00:00:00+00:00, before the year could be finalised" in (report.notes[-1])
    )
    twice = Assessments(
        schemes={"2026.1": scheme}, finalised=[step(10, 9), step(20, 19)], finalised_at={10: "", 20: ""}
    )
    with pytest.raises(Failed, match="finalisation at position 20 was made while the one at position 10 stood"):
        _check_voidings(twice, Report())
    turns = Assessments(
        schemes={"2026.1": scheme},
        finalised=[step(10, 9), step(20, 9)],
        finalised_at={10: "2027-01-02T00:00:00+00:00", 20: "2027-01-03T00:00:00+00:00"},
        voidings=[{**step(15, 9), "reason": "r"}, {**step(25, 9), "reason": "r"}],
    )
    report = Report()
    _check_voidings(turns, report)
    assert report.voided == 2 and report.notes == []
