"""Histories recorded by earlier releases (tests/corpus/<release>/) load with today's code: every event type is still
known at its version or upcast to the current one, every aggregate loads, the read models rebuild to the figures
recorded then, the Merkle leaves and the exported bytes are the ones signed then, and every finalised score
replays to the same result (`baton verify` exits 0, on the old bundle and on a new export)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from audit.verify import verify
from domain.events import catalogue, event_classes, upcasters
from infra.export import export
from infra.settings import Settings
from projections.base import catch_up_together
from tests.corpus.record import read_figures
from tests.scenarios import CORPORA, differences, load, old_bundle, recorded


@pytest.fixture(params=CORPORA, ids=[p.name for p in CORPORA])
def corpus(request: pytest.FixtureRequest) -> Path:
    return Path(request.param)


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
