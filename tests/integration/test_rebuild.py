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
    counts = {row["department"]: row for row in live["department_scorecard"]["baton_score_counts"]}
    assert counts["URBAN"]["declines"] == 1 and counts["HOUSING"]["reopens"] >= 1, counts
    assert sum(row["escalations"] for row in counts.values()) >= 3, counts
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

    # a batch that moves whistles made before it reads their rows in one query, none one by one
    batch_reads: list[list[str]] = []
    rows = board.view.rows

    def counted_rows(tx: Any, whistle_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        batch_reads.append(sorted(whistle_ids))
        return rows(tx, whistle_ids)

    monkeypatch.setattr(board.view, "rows", counted_rows)
    community = Context(Actor(Role.COMMUNITY, "tishu", "wang"), "test")
    for whistle_id in whistles:
        baton.whistles.dispatch(community, whistle_id, lead_department="HOUSING")
    board.catch_up(batch_size=1000)
    assert batch_reads == [sorted(whistles)] and reads == []
    assert len(writes) == 2 and sorted(writes[1]) == sorted(whistles)


def recount(baton: Container) -> dict[tuple[str, str], tuple[int, int]]:
    """The scorecard tally counted again from its rows, as scorecards were counted before there was a tally."""
    counted: dict[tuple[str, str], tuple[int, int]] = {}
    view = baton.scorecard.view
    queries = (
        "SELECT department, 'report_in.' || state AS measure, COUNT(*) AS n, COALESCE(SUM(minutes), 0) AS m "
        "FROM {baton_score_summons} GROUP BY department, state",
        "SELECT department, 'handling.' || state AS measure, COUNT(*) AS n, COALESCE(SUM(minutes), 0) AS m "
        "FROM {baton_score_orders} GROUP BY department, state",
        "SELECT department, 'rating.' || rating AS measure, COUNT(*) AS n, 0 AS m "
        "FROM {baton_score_ratings} GROUP BY department, rating",
        "SELECT department, 'resident.' || rating AS measure, COUNT(*) AS n, 0 AS m "
        "FROM {baton_score_resident_ratings} GROUP BY department, rating",
    )
    with view.db.transaction(commit=False) as tx:
        for sql in queries:
            tx.execute(view.q(sql))
            counted.update({(r["department"], r["measure"]): (int(r["n"]), int(r["m"])) for r in tx.fetchall()})
    return counted


def tally(baton: Container) -> dict[tuple[str, str], tuple[int, int]]:
    """The tally's non-zero rows (a state every row has left stays at zero)."""
    rows = baton.scorecard.view.dump()["baton_score_tally"]
    return {(r["department"], r["measure"]): (int(r["n"]), int(r["minutes"])) for r in rows if r["n"]}


async def test_the_scorecards_tally_equals_its_rows_and_an_older_installation_gains_it(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime, baton: Container, settings: Settings
) -> None:
    await seed_county(client, auth)
    await play(client, auth, clock, runtime)
    counted = recount(baton)
    measures = {measure.partition(".")[0] for _, measure in counted}
    assert {"report_in", "handling", "rating"} <= measures, measures
    assert tally(baton) == counted
    cards = baton.scorecard.view.scorecards()
    assert [c["department"] for c in cards] == sorted({d for d, _ in counted}), cards
    assert baton.scorecard.view.scorecards("HOUSING") == [c for c in cards if c["department"] == "HOUSING"]
    await runtime.stop()

    view = baton.scorecard.view
    with view.db.transaction() as tx:  # as an installation from before the tally has it
        tx.execute(f"DROP TABLE {view.db.table('baton_score_tally')}")
    type(view)(view.db)  # the next start's DDL
    assert tally(baton) == counted
    assert baton.scorecard.view.scorecards() == cards
    type(view)(view.db)  # and the one after adds nothing
    assert baton.scorecard.view.scorecards() == cards
