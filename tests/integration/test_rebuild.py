"""`baton rebuild` replays the history into the same read models that live processing built."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from infra.bootstrap import Container, Runtime
from infra.cli import app as cli
from infra.clock import ManualClock
from infra.settings import Settings
from services.access import Actor, Context, Role
from tests.conftest import Auth, blow_direct, seed_county, seed_county_direct
from tests.scenarios import play


@pytest.mark.parametrize("how", ["catch_up", "cli"])
async def test_rebuild_equals_live(
    client: httpx.AsyncClient,
    auth: Auth,
    clock: ManualClock,
    runtime: Runtime,
    baton: Container,
    settings: Settings,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_county(client, auth)
    await play(client, auth, clock, runtime)
    live = {name: p.view.dump() for name, p in baton.projections.items()}
    assert live["whistle_board"]["baton_whistles"], "the live board is empty"
    kinds = {row["kind"] for row in live["volunteering"]["baton_ledger"]}
    assert kinds == {"award", "redeem", "void", "expire"}, kinds
    statuses = {row["status"] for row in live["branches"]["baton_rectifications"]}
    assert statuses == {"completed", "overdue", "open"}, statuses
    await runtime.stop()

    if how == "cli":
        monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("BATON_STORE", settings.store)
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["rebuild"])
        assert result.exit_code == 0, result.output
        assert "rebuilt up to position" in result.output
    else:
        for projection in baton.projections.values():
            projection.reset()
            assert projection.view.dump() != live[projection.name]
            projection.catch_up(batch_size=7)

    rebuilt = {name: p.view.dump() for name, p in baton.projections.items()}
    assert rebuilt == live


def test_a_batch_reads_and_writes_each_board_row_once(baton: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_county_direct(baton)
    whistles = blow_direct(baton, 3)
    housing = Context(Actor(Role.DEPARTMENT, "HOUSING", "desk"), "test")
    for whistle_id in whistles:
        baton.whistles.report_in(housing, whistle_id)
    board = baton.board
    board.catch_up(batch_size=1)  # one event per transaction: every row read and written each time
    one_by_one = board.view.dump()
    board.reset()
    reads: list[str] = []
    writes: list[list[str]] = []
    row, save_rows = board.view.row, board.view.save_rows

    def counted_row(tx: Any, whistle_id: str) -> dict[str, Any]:
        reads.append(whistle_id)
        return row(tx, whistle_id)

    def counted_save_rows(tx: Any, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        writes.append([r["whistle_id"] for r in rows])
        save_rows(tx, rows)

    monkeypatch.setattr(board.view, "row", counted_row)
    monkeypatch.setattr(board.view, "save_rows", counted_save_rows)

    board.catch_up(batch_size=1000)

    assert reads == [], "every row was made in this batch, so none is read back"
    assert len(writes) == 1 and sorted(writes[0]) == sorted(whistles)
    assert board.view.dump() == one_by_one
