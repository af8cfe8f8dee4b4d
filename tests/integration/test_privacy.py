"""Residents' personal data: sealed under a key per person everywhere it goes, and erased by destroying the key,
after which the history, its Merkle tree and every finalised score still verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from audit.verify import OK, verify
from domain.common import year_end
from infra.bootstrap import Container, Runtime
from infra.clock import ManualClock
from infra.export import export
from infra.nats_server import EmbeddedNats
from tests.conftest import Auth, seed_county, stream_messages
from tests.scenarios import SCHEME

NAME, PHONE, ADDRESS = "张秀兰", "13905556677", "提署社区3栋2单元401"
VOLUNTEER, VOLUNTEER_PHONE = "李建国", "13811112222"
PLAINTEXTS = [NAME, PHONE, ADDRESS, VOLUNTEER, VOLUNTEER_PHONE]


def _leaks(blob: bytes) -> list[str]:
    return [p for p in PLAINTEXTS if p.encode() in blob]


async def _people(client: httpx.AsyncClient, auth: Auth) -> tuple[str, str, str]:
    """A whistle raised by a resident and a volunteer with a phone; returns (whistle, reporter, volunteer)."""
    r = await client.post(
        "/v1/whistles",
        json={
            "community_id": "tishu",
            "category": "drainage",
            "title": "Sewage in the courtyard",
            "description": "Reported by phone to the e-station.",
            "reporter": {"name": NAME, "phone": PHONE, "address": ADDRESS},
        },
        headers=auth("community", "tishu", "wang"),
    )
    assert r.status_code == 201, r.text
    whistle, reporter = r.json()["whistle_id"], r.json()["reporter_id"]
    r = await client.post(
        "/v1/volunteers",
        json={"community_id": "tishu", "name": VOLUNTEER, "phone": VOLUNTEER_PHONE},
        headers=auth("community", "tishu", "wang"),
    )
    assert r.status_code == 201, r.text
    return whistle, reporter, r.json()["volunteer_id"]


async def test_personal_data_is_sealed_everywhere_and_erasure_keeps_the_history_verifiable(
    client: httpx.AsyncClient,
    auth: Auth,
    baton: Container,
    runtime: Runtime,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    clock: ManualClock,
) -> None:
    await seed_county(client, auth)
    r = await client.post("/v1/assessment-schemes", json=SCHEME, headers=auth("admin"))
    assert r.status_code == 201, r.text
    whistle, reporter, volunteer = await _people(client, auth)
    assert (
        await client.post(f"/v1/whistles/{whistle}/report-in", headers=auth("department", "HOUSING"))
    ).status_code == 200
    await runtime.wait_idle()
    community = auth("community", "tishu", "wang")

    # Those who serve the resident read the plaintext; assessors never do.
    detail = (await client.get(f"/v1/whistles/{whistle}", headers=community)).json()
    assert detail["reporter"] == {
        "person_id": reporter,
        "name": NAME,
        "phone": PHONE,
        "address": ADDRESS,
        "erased": False,
    }
    assert detail["timeline"][0]["data"]["reporter"]["name"] == NAME
    assert (await client.get(f"/v1/whistles/{whistle}", headers=auth("department", "HOUSING"))).json()["reporter"][
        "phone"
    ] == PHONE
    audited = (await client.get(f"/v1/whistles/{whistle}", headers=auth("auditor", None, "audit"))).json()
    assert audited["reporter"]["name"] is None and audited["reporter"]["erased"] is False
    assert _leaks(json.dumps(audited, ensure_ascii=False).encode()) == []
    card = (await client.get(f"/v1/volunteers/{volunteer}", headers=community)).json()
    assert card["name"] == VOLUNTEER and card["erased"] is False

    # At rest and on the wire there is only ciphertext: the store, the read models, BATON_EVENTS.
    stored = baton.store.select(0, 10_000)
    assert stored and all(_leaks(n.state) == [] for n in stored)
    assert any(b"pii1." + bytes(reporter.replace("-", ""), "ascii") in n.state for n in stored)
    views = json.dumps([p.view.dump() for p in baton.projections.values()], ensure_ascii=False, default=str)
    assert _leaks(views.encode()) == []
    conn = await nats.connect(nats_server.url)
    try:
        published = await stream_messages(conn, "BATON_EVENTS")
    finally:
        await conn.close()
    assert len(published) == len(stored)
    assert all(_leaks(m.data) == [] for m in published)
    blown = next(json.loads(m.data) for m in published if m.subject == "baton.evt.whistle.blown")
    assert blown["data"]["reporter"]["name"].startswith(f"pii1.{reporter.replace('-', '')}.")

    year = clock.now().year
    clock.set(year_end(year))
    finalised = await client.post(f"/v1/assessments/{year}/finalise", json={}, headers=auth("admin"))
    assert finalised.status_code == 201, finalised.text
    await runtime.wait_idle()
    before = export(baton, tmp_path / "before")
    assert _leaks((tmp_path / "before" / "events.jsonl").read_bytes()) == []

    # Erasure: scope first, then the key goes with the event that records it.
    path = f"/v1/people/{reporter}/erase"
    outsider = await client.post(path, json={"reason": "ticket 7"}, headers=auth("community", "taibai"))
    assert outsider.status_code == 403, outsider.text
    assessor = await client.post(path, json={"reason": "ticket 7"}, headers=auth("auditor", None, "audit"))
    assert assessor.status_code == 403
    unknown = await client.post(
        "/v1/people/00000000-0000-4000-8000-000000000000/erase", json={"reason": "x"}, headers=community
    )
    assert unknown.status_code == 404 and "holds no personal data" in unknown.json()["error"]["message"]
    erased = await client.post(path, json={"reason": "resident's request, ticket 7"}, headers=community)
    assert erased.status_code == 200, erased.text
    assert erased.json()["erased"] is True and erased.json()["position"] > before["tree_size"]
    again = await client.post(path, json={"reason": "again"}, headers=community)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_erased"
    r = await client.post(f"/v1/people/{volunteer}/erase", json={"reason": "moved away"}, headers=auth("admin"))
    assert r.status_code == 200, r.text
    await runtime.wait_idle()

    assert baton.store.vault.person(_uuid(reporter)).erased  # type: ignore[union-attr]
    detail = (await client.get(f"/v1/whistles/{whistle}", headers=community)).json()
    assert detail["reporter"] == {
        "person_id": reporter,
        "name": None,
        "phone": None,
        "address": None,
        "erased": True,
    }
    assert detail["timeline"][0]["data"]["reporter"]["name"] is None
    card = (await client.get(f"/v1/volunteers/{volunteer}", headers=community)).json()
    assert card["name"] is None and card["erased"] is True
    looked_up = (await client.get(f"/v1/people/{reporter}", headers=community)).json()
    assert looked_up["erased"] is True and looked_up["reason"] == "resident's request, ticket 7"

    # The same person cannot be given new data; an unknown person id is refused.
    for person_id, status, code in [(reporter, 409, "person_erased"), (volunteer + "x", 422, None)]:
        r = await client.post(
            "/v1/whistles",
            json={
                "community_id": "tishu",
                "category": "drainage",
                "title": "Again",
                "description": "Same resident",
                "reporter": {"name": NAME, "person_id": person_id},
            },
            headers=community,
        )
        assert r.status_code == status, r.text
        if code:
            assert r.json()["error"]["code"] == code

    # The history is untouched: the same ciphertext, the same Merkle roots, the finalised scores still verify.
    after = export(baton, tmp_path / "after")
    vkey = (await client.get("/v1/audit/key", headers=auth("auditor", None, "audit"))).json()["vkey"]
    report = verify(tmp_path / "after", vkey)
    assert report.code == OK, report.notes
    assert report.finalised > 0
    lines_before = (tmp_path / "before" / "events.jsonl").read_bytes().splitlines()
    lines_after = (tmp_path / "after" / "events.jsonl").read_bytes().splitlines()
    assert lines_after[: len(lines_before)] == lines_before
    assert after["tree_size"] == before["tree_size"] + 2
    assert baton.notary.view.root(before["tree_size"]).hex() == _root(before)
    assert verify(tmp_path / "before", vkey).code == OK


def _uuid(text: str) -> Any:
    from uuid import UUID

    return UUID(text)


def _root(manifest: dict[str, Any]) -> str:
    return str(manifest["root"])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_reporter_details_are_validated(client: httpx.AsyncClient, auth: Auth) -> None:
    await seed_county(client, auth)
    base = {"community_id": "tishu", "category": "drainage", "title": "t", "description": "d"}
    for reporter, fragment in [
        ({}, "at least one of name, phone or address"),
        ({"phone": "call me"}, "reporter.phone"),
        ({"name": "x" * 101}, "reporter.name"),
        ({"name": "a", "email": "a@b.c"}, "reporter.email"),
    ]:
        r = await client.post("/v1/whistles", json={**base, "reporter": reporter}, headers=auth("community", "tishu"))
        assert r.status_code == 422, r.text
        assert fragment in r.json()["error"]["message"]
