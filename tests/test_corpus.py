"""Histories recorded by earlier releases (tests/corpus/<release>/) load with today's code: every event type is still
known at its version or upcast to the current one, every aggregate loads, the read models rebuild to the figures
recorded then, the Merkle leaves and the exported bytes are the ones signed then, and every finalised score
replays to the same result (`baton verify` exits 0, on the old bundle and on a new export)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from audit.verify import verify
from domain.events import catalogue, event_classes, upcasters
from infra.backup import backup, restore
from infra.bootstrap import Baton, bootstrap
from infra.clock import ManualClock
from infra.export import export
from infra.settings import Settings
from projections.base import catch_up_together
from tests.corpus.record import decompress, read_figures

CORPUS = Path(__file__).parent / "corpus"
CORPORA = sorted(p for p in CORPUS.iterdir() if (p / "corpus.json").is_file())


@pytest.fixture(params=CORPORA, ids=[p.name for p in CORPORA])
def corpus(request: pytest.FixtureRequest) -> Path:
    return Path(request.param)


def recorded(corpus: Path) -> dict[str, Any]:
    return dict(json.loads((corpus / "corpus.json").read_text()))


def unpack(corpus: Path, data_dir: Path) -> None:
    """The corpus's store and keys as a data dir (the read models are not kept: they rebuild)."""
    data_dir.mkdir(parents=True)
    decompress(corpus / "events.sqlite.xz", data_dir / "events.sqlite")
    shutil.copytree(corpus / "keys", data_dir / "keys")


def old_bundle(corpus: Path, out: Path) -> Path:
    """The export bundle as the corpus's release wrote it."""
    shutil.copytree(corpus / "export", out)
    decompress(out / "events.jsonl.xz", out / "events.jsonl")
    (out / "events.jsonl.xz").unlink()
    return out


def load(corpus: Path, data_dir: Path, store: str = "sqlite") -> Baton:
    """The corpus opened by today's code at the clock it was recorded at; on PostgreSQL, moved there first with
    `baton backup` and `baton restore` (every event at its position)."""
    unpack(corpus, data_dir)
    if store != "sqlite":
        backup(Settings(data_dir=data_dir, store="sqlite"), data_dir.parent / "corpus.backup")
        (data_dir / "events.sqlite").unlink()
        restore(Settings(data_dir=data_dir, store=store), data_dir.parent / "corpus.backup")
    clock = ManualClock(datetime.fromisoformat(recorded(corpus)["recorded_at"]))
    return bootstrap(Settings(data_dir=data_dir, store=store), clock)


def differences(then: Any, now: Any, where: str = "") -> list[str]:
    """Where NOW disagrees with THEN; keys NOW has beyond THEN's are additions, not differences."""
    if isinstance(then, dict) and isinstance(now, dict):
        out = []
        for key, value in then.items():
            if key not in now:
                out.append(f"{where}.{key}: gone (was {value!r})")
            else:
                out.extend(differences(value, now[key], f"{where}.{key}"))
        return out
    if isinstance(then, list) and isinstance(now, list):
        if len(then) != len(now):
            return [f"{where}: {len(now)} items, recorded {len(then)}"]
        return [d for i, (a, b) in enumerate(zip(then, now, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if then == now else [f"{where}: {now!r}, recorded {then!r}"]


def test_the_corpus_is_as_recorded(corpus: Path) -> None:
    """Nobody rewrote a recorded corpus: every file has the hash it was recorded with."""
    files = recorded(corpus)["files"]
    assert files, "a corpus lists its files"
    for name, digest in files.items():
        assert hashlib.sha256((corpus / name).read_bytes()).hexdigest() == digest, f"{corpus.name}/{name} was changed"


def test_every_event_type_of_the_corpus_is_still_read(corpus: Path) -> None:
    """An event type recorded then exists now, at the same version with the same fields or upcast to a newer one."""
    then = json.loads((corpus / "events.json").read_text())
    now = catalogue()
    classes = {f"{a}.{e}": cls for a, e, cls in event_classes()}
    for name, was in then.items():
        assert name in now, f"{name}, recorded by release {corpus.name}, no longer exists: keep its class"
        is_ = now[name]
        assert is_["version"] >= was["version"], f"{name} went back from version {was['version']} to {is_['version']}"
        if is_["version"] == was["version"]:
            assert is_["fields"] == was["fields"], (
                f"{name}'s fields changed since release {corpus.name} ({was['fields']} -> {is_['fields']}) at the "
                f"same version {was['version']}: raise its class_version and add upcast_v{was['version']}_v"
                f"{was['version'] + 1} (see domain/events.py), then record the change in CHANGELOG.md"
            )
        else:
            assert len(upcasters(classes[name], was["version"])) == is_["version"] - was["version"]


def test_the_corpus_loads_and_replays_with_todays_code(corpus: Path, settings: Settings, tmp_path: Path) -> None:
    """Aggregates, read models, leaves, exported bytes and finalised scores, all from the recorded history."""
    baton = load(corpus, tmp_path / "var", settings.store)
    try:
        versions: dict[Any, int] = {}
        for notification in baton.store.select(0, 1_000_000):
            versions[notification.originator_id] = notification.originator_version
        assert sum(versions.values()) == recorded(corpus)["events"]
        for aggregate_id, version in versions.items():
            assert baton.org.repository.get(aggregate_id).version == version

        catch_up_together(list(baton.projections.values()))
        figures = asyncio.run(read_figures(baton))
        then = json.loads((corpus / "figures.json").read_text())
        assert differences(then, figures) == []

        manifest = json.loads((corpus / "export" / "manifest.json").read_text())
        size = baton.notary.catch_up()
        assert size == manifest["tree_size"]
        assert baton.notary.view.root(size).hex() == manifest["root"]
        old = old_bundle(corpus, tmp_path / "old")
        assert b"".join(leaf for _, leaf in baton.notary.view.leaves(0, size)) == (old / "leaves.bin").read_bytes()

        new = tmp_path / "new"
        export(baton, new)
        assert (new / "events.jsonl").read_bytes() == (old / "events.jsonl").read_bytes()
    finally:
        baton.close()
    for bundle in (old, new):
        report = verify(bundle)
        assert report.ok, (bundle.name, report.code, report.notes)
        assert report.finalised, "the corpus has finalised assessments to replay"
