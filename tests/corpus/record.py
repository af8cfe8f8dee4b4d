"""`make corpus`: record the history this release writes, for every later release's suite to load.

    .venv/bin/python -m tests.corpus.record tests/corpus/<release>

Plays the demo county (`baton demo`) into a fresh data dir, exports it, and keeps in the corpus dir:
  events.sqlite.xz   the store (events, command log, person keys), copied with SQLite's online backup
  keys/              the demo's own keys (made for the demo, not secrets): personal data, checkpoints, tokens, NATS
  export/            the export bundle as `baton export` wrote it, events.jsonl compressed (events.jsonl.xz)
  figures.json       what the read API answered after a rebuild from the history: later releases must agree
  events.json        every event type's version and fields in this release (domain.events.catalogue)
  corpus.json        release, clock, event counts by type and version, sha256 of every file
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import lzma
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BATON = [sys.executable, "-m", "infra.cli"]
"""This checkout's CLI (not whichever `baton` the venv installed), so a corpus is recorded by the code beside it."""
TOKEN_SECRET = b"corpus-figures-token-secret-long-enough!"


def release() -> str:
    """This checkout's release, from pyproject.toml."""
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def compress(source: Path, target: Path) -> None:
    with source.open("rb") as src, lzma.open(target, "wb", preset=9) as dst:
        shutil.copyfileobj(src, dst)


def decompress(source: Path, target: Path) -> None:
    with lzma.open(source, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def board_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whistle board as figures: how many whistles, by status, community and overdue."""
    return {
        "whistles": len(rows),
        "by_status": dict(sorted(Counter(r["status"] for r in rows).items())),
        "by_community": dict(sorted(Counter(r["community_id"] for r in rows).items())),
        "overdue": sum(1 for r in rows if r.get("overdue")),
    }


async def read_figures(baton: Any) -> dict[str, Any]:
    """What the read API answers an admin, route by route, on a history whose read models were just rebuilt."""
    import httpx

    from api.app import create_app
    from api.tokens import Tokens

    tokens = Tokens(TOKEN_SECRET)
    headers = {"Authorization": f"Bearer {tokens.issue('admin', None, 'corpus')}"}
    app = create_app(baton, tokens)
    figures: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.corpus") as http:

        async def get(path: str) -> Any:
            r = await http.get(path, headers=headers)
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
            return r.json()

        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await get("/v1/whistles?limit=200" + (f"&cursor={cursor}" if cursor else ""))
            rows.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        figures["whistle_board"] = board_summary(rows)
        org = await get("/v1/org")
        figures["/v1/org"] = org
        communities = sorted(u["id"] for u in org["units"] if u["kind"] == "community")
        for path in ["/v1/scorecards", "/v1/branches/overview", "/v1/branches", "/v1/party-service", "/v1/standards"]:
            figures[path] = await get(path)
        for community in communities:
            for path in [
                f"/v1/communities/{community}/leaderboard?limit=100",
                f"/v1/communities/{community}/participation",
                f"/v1/rewards?community={community}",
                f"/v1/activities?community={community}",
            ]:
                figures[path] = await get(path)
        finalisations = {}
        for event in baton.source.envelopes(0, 1_000_000):
            if event.aggregate == "assessment" and event.type == "finalised":
                finalisations[event.data["year"]] = True
        for year in sorted(finalisations):
            figures[f"/v1/assessments/{year}/final"] = await get(f"/v1/assessments/{year}/final")
            figures[f"/v1/assessments/{year}/finalisations"] = await get(f"/v1/assessments/{year}/finalisations")
    return figures


def record(out: Path) -> dict[str, Any]:
    """Play, export and keep the demo county's history in OUT (which must not exist yet)."""
    from domain.events import catalogue
    from infra.bootstrap import bootstrap
    from infra.clock import ManualClock
    from infra.settings import Settings
    from projections.base import catch_up_together

    if out.exists():
        raise SystemExit(f"{out} exists: a recorded corpus is never rewritten; bump the release in pyproject.toml")
    work = Path(tempfile.mkdtemp(prefix="baton-corpus-"))
    data = work / "var"
    env = {
        **os.environ,
        "BATON_DATA_DIR": str(data),
        "BATON_STORE": "sqlite",
        "BATON_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("BATON_MASTER_KEY", None)
    subprocess.run([*BATON, "demo"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    exporting = [*BATON, "export", "--out", str(work / "export")]
    subprocess.run(exporting, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    clock = datetime.now(UTC).replace(microsecond=0)
    (data / "views.sqlite").unlink()
    baton = bootstrap(Settings(data_dir=data, store="sqlite"), ManualClock(clock))
    try:
        catch_up_together(list(baton.projections.values()))
        figures = asyncio.run(read_figures(baton))
        envelopes = baton.source.envelopes(0, 1_000_000)
        types = Counter(f"{e.name} v{e.type_version}" for e in envelopes)
    finally:
        baton.close()
    out.mkdir(parents=True)
    snapshot = work / "events.sqlite"
    with sqlite3.connect(data / "events.sqlite") as source, sqlite3.connect(snapshot) as target:
        source.backup(target)
    compress(snapshot, out / "events.sqlite.xz")
    shutil.copytree(data / "keys", out / "keys")
    shutil.copytree(work / "export", out / "export")
    compress(out / "export" / "events.jsonl", out / "export" / "events.jsonl.xz")
    (out / "export" / "events.jsonl").unlink()
    (out / "events.json").write_text(json.dumps(catalogue(), indent=1, sort_keys=True) + "\n")
    (out / "figures.json").write_text(json.dumps(figures, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    corpus = {
        "release": release(),
        "recorded_at": clock.isoformat(),
        "events": len(envelopes),
        "event_types": dict(sorted(types.items())),
        "files": {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()},
    }
    (out / "corpus.json").write_text(json.dumps(corpus, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(work)
    return corpus


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / release()
    summary = record(target)
    print(f"recorded {summary['events']} events of {len(summary['event_types'])} types in {target}")
