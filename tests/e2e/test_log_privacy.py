"""A resident's contact never reaches `baton serve`'s log, even at debug: not through a report, a whistle, Open311,
a refused request that carries it, nor the notifications the gateway is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import seed_county
from tests.faults import Served

NAME, PHONE, ADDRESS = "欧阳秀兰", "13977770123", "提署路 88 号 2 单元"
EMAIL = "ouyang.xiulan@example.org"
PERSONAL = (NAME, "秀兰", PHONE, ADDRESS, EMAIL)
COMMUNITY = ("community", "tishu", "wang")
GRID = {
    "type": "Polygon",
    "coordinates": [[[118.48, 31.54], [118.50, 31.54], [118.50, 31.56], [118.48, 31.56], [118.48, 31.54]]],
}


@pytest.fixture(scope="module")
def debug_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("log-privacy"), "sqlite", env={"BATON_LOG_LEVEL": "debug"})
    try:
        asyncio.run(server.start())
        yield server
    finally:
        server.stop()


async def test_personal_data_stays_out_of_the_log_at_debug(debug_served: Served) -> None:
    served = debug_served
    key = served.cli("open311", "key", "issue", "--name", "privacy-app").strip().splitlines()[0]
    contact = {"name": NAME, "phone": PHONE, "address": ADDRESS}
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        await seed_county(client, served.auth)
        r = await client.put("/v1/org/units/tishu-g1/boundary", json=GRID, headers=served.auth("admin"))
        assert r.status_code == 200, r.text
        report = {
            "channel": "hotline_12345",
            "category": "drainage",
            "description": "Sewage at the gate",
            "community_id": "tishu",
            "address": "提署路 3 号",
            "reporter": contact,
        }
        r = await client.post("/v1/reports", json=report, headers=served.auth(*COMMUNITY))
        assert r.status_code == 201, r.text
        rid = r.json()["report_id"]
        for step, body in (("accept", {}), ("resolve", {"result": "cleared"})):
            r = await client.post(f"/v1/reports/{rid}/{step}", json=body, headers=served.auth(*COMMUNITY))
            assert r.status_code == 200, r.text
        whistle = {
            "community_id": "tishu",
            "title": "积水",
            "category": "drainage",
            "description": "Water at the gate",
            "summoned_departments": ["HOUSING"],
            "reporter": contact,
        }
        r = await client.post("/v1/whistles", json=whistle, headers=served.auth(*COMMUNITY))
        assert r.status_code == 201, r.text
        bad = {**report, "reporter": {"name": NAME, "phone": f"call {PHONE} after six"}}
        r = await client.post("/v1/reports", json=bad, headers=served.auth(*COMMUNITY))
        assert r.status_code == 422 and "reporter.phone" in r.text, r.text
        form = {
            "api_key": key,
            "service_code": "drainage",
            "description": "雨水井堵塞",
            "lat": "31.5501",
            "long": "118.4902",
            "first_name": "秀兰",
            "last_name": "欧阳",
            "phone": PHONE,
            "email": EMAIL,
        }
        r = await client.post("/open311/v2/requests.json", data=form)
        assert r.status_code in (200, 201), r.text
        r = await client.post("/open311/v2/requests.json", data={**form, "lat": "north", "long": "east"})
        assert r.status_code == 400, r.text
        position = await served.position()
        r = await client.get("/v1/reports", params={"min_position": position}, headers=served.auth(*COMMUNITY))
        assert r.status_code == 200 and len(r.json()["items"]) >= 2, r.text
    log = Path(served.log).read_text(encoding="utf-8")
    assert "command_accepted" in log, "the log is not at debug: the test would prove nothing"
    escaped = [json.dumps(p)[1:-1] for p in PERSONAL]  # JSON lines write CJK as \uXXXX escapes
    assert [p for p in (*PERSONAL, *escaped) if p in log] == [], "personal data in the log"
