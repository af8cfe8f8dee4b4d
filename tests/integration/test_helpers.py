"""Helper processes (infra.helpers, both cores) change nothing but the time: the notary's catch-up gives every event
the leaf release 0.1.0 signed and the tree one process makes, and stops where another notary got ahead; an export is
the signed bundle byte for byte; a rebuild gives the recorded figures."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import pytest

from audit import verify as verify_module
from audit.merkle import leaf_hash
from audit.verify import Report, verify
from infra import helpers as helpers_module
from infra import notary as notary_module
from infra.bootstrap import bootstrap
from infra.clock import ManualClock
from infra.notary import Notary, canonical
from infra.settings import Settings
from tests.corpus.record import read_figures
from tests.scenarios import CORPUS, differences, load, old_bundle, recorded

FIRST = CORPUS / "0.1.0"


def test_helpers_make_the_signed_leaves_and_tree(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notary_module, "HELP_FROM", 1)
    monkeypatch.setattr(helpers_module, "HELP_STRETCH", 97)  # many stretches, none aligned with a subtree
    signed = (old_bundle(FIRST, tmp_path / "bundle") / "leaves.bin").read_bytes()
    baton = load(FIRST, tmp_path / "data", settings.store)
    try:
        size = baton.notary.catch_up(helpers=True)
        assert size == len(signed) // 32 == baton.store.max_position()
        view = baton.notary.view
        assert b"".join(h for _, h in view.leaves(0, size)) == signed
        assert baton.notary.position() == baton.store.max_position()
        plain = load(FIRST, tmp_path / "plain")
        try:
            assert plain.notary.catch_up() == size
            for n in (1, 97, 256, size):
                assert plain.notary.view.subtree(0, n) == view.subtree(0, n)
        finally:
            plain.close()
    finally:
        baton.close()


def test_helpers_stop_where_another_notary_got_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notary_module, "HELP_FROM", 1)
    monkeypatch.setattr(helpers_module, "HELP_STRETCH", 50)
    baton = load(FIRST, tmp_path / "data")
    try:
        view = baton.notary.view
        with view.db.transaction() as tx:  # another notary appends a batch while this one's helpers hash
            notifications = baton.store.select(0, 120)
            leaves = [(n.id, leaf_hash(canonical(baton.codec.recorded(n)))) for n in notifications]
            view.append(tx, leaves, 0)
            view.advance(tx, "notary", 0, notifications[-1].id)
        ahead = baton.notary.position()
        assert 0 < ahead < baton.store.max_position()
        monkeypatch.setattr(Notary, "position", lambda self: 0)  # what it read before the other moved
        baton.notary._catch_up_helped()
        assert view.size() == 120  # it appended nothing: the first stretch was taken
        monkeypatch.undo()
        size = baton.notary.catch_up(helpers=True)
        assert size == baton.store.max_position()
        signed = (old_bundle(FIRST, tmp_path / "bundle") / "leaves.bin").read_bytes()
        assert b"".join(h for _, h in baton.notary.view.leaves(0, size)) == signed
    finally:
        baton.close()


def test_an_export_written_with_helpers_is_the_signed_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra import export as export_module

    for module in (notary_module, export_module):
        monkeypatch.setattr(module, "HELP_FROM", 1)
    monkeypatch.setattr(helpers_module, "HELP_STRETCH", 97)
    old = old_bundle(FIRST, tmp_path / "bundle")
    baton = load(FIRST, tmp_path / "data")
    try:
        export_module.export(baton, tmp_path / "new")
    finally:
        baton.close()
    new = tmp_path / "new"
    for name in ("events.jsonl", "leaves.bin"):
        assert (new / name).read_bytes() == (old / name).read_bytes(), name
    assert json.loads((new / "finalised.json").read_text()) == json.loads((old / "finalised.json").read_text())
    assert sorted(p.name for p in (new / "schemes").iterdir()) == sorted(p.name for p in (old / "schemes").iterdir())
    assert verify(new).ok
    monkeypatch.setattr(verify_module, "CHUNK", 5000)
    checked = verify_module._check_events_helped(new, verify_module.Leaves(new / "leaves.bin"), Report(), None)
    assert checked is not None  # the helpers' pass, not the one-process one after a doubt
    assert checked.finalised == json.loads((old / "finalised.json").read_text())
    assert verify_module.verify(new).events == len((old / "leaves.bin").read_bytes()) // 32


def test_a_rebuild_with_helpers_gives_the_recorded_figures(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra import cli

    monkeypatch.setattr(cli, "REBUILD_HELP_FROM", 1)
    monkeypatch.setattr(cli, "REBUILD_BATCH", 97)  # many batches, each a stretch of one helper task
    baton = load(FIRST, tmp_path / "data", settings.store)
    baton.close()
    rebuilt_settings = Settings(data_dir=tmp_path / "data", store=settings.store)
    cli._rebuild(rebuilt_settings, None)
    baton = bootstrap(rebuilt_settings, ManualClock(datetime.fromisoformat(recorded(FIRST)["recorded_at"])))
    try:
        assert all(p.position() == baton.store.max_position() for p in baton.projections.values())
        figures = asyncio.run(read_figures(baton))
        assert differences(json.loads((FIRST / "figures.json").read_text()), figures) == []
    finally:
        baton.close()
