"""Lists answered as a JSON array page by keyset (SQLite and PostgreSQL): `limit`, and a `Link: <...>; rel="next"`
header while there is more; the pages joined equal the whole list; a cursor not given out is a clear 422."""

from __future__ import annotations

import re

import httpx

from infra.bootstrap import Runtime
from infra.clock import ManualClock
from tests.conftest import Auth, seed_county
from tests.scenarios import Branches, Volunteering

NEXT = re.compile(r'^<(/v1/[^>]+)>; rel="next"$')


async def walk(client: httpx.AsyncClient, path: str, headers: dict) -> tuple[list[dict], int]:
    """Every row of a paged list by following its Link headers; and how many pages it took."""
    rows: list[dict] = []
    pages = 0
    next_url: str | None = path
    while next_url is not None:
        r = await client.get(next_url, headers=headers)
        assert r.status_code == 200, r.text
        rows += r.json()
        pages += 1
        link = r.headers.get("Link")
        next_url = None
        if link is not None:
            match = NEXT.match(link)
            assert match, link
            next_url = match.group(1)
        assert pages < 50
    return rows, pages


async def test_lists_page_by_link_header(
    client: httpx.AsyncClient, auth: Auth, clock: ManualClock, runtime: Runtime
) -> None:
    await seed_county(client, auth)
    branches = Branches(client, auth)
    # names that sort apart from registration order, two of them alike (the branch id breaks the tie)
    for name in ("丙支部", "甲支部", "乙支部", "甲支部", "丁支部", "戊支部", "己支部"):
        await branches.register(name)
    v = Volunteering(client, auth, clock)
    activities = [await v.activity() for _ in range(5)]
    li = await v.volunteer()
    await v.serve(activities[0], li, hours="3")
    rice = await v.reward(stock=10, cost="5")
    for _ in range(3):
        await v.post(f"/v1/volunteers/{li}/redemptions", {"reward_id": rice}, v.as_volunteer(li))
    await runtime.wait_idle()
    community = auth("community", "tishu")

    for path, headers, limit in (
        ("/v1/branches", community, 3),
        ("/v1/activities?community=tishu", v.organiser, 2),
        ("/v1/redemptions?community=tishu", v.organiser, 2),
    ):
        whole = await client.get(path, headers=headers)
        assert whole.status_code == 200 and "Link" not in whole.headers, (path, whole.headers)
        sep = "&" if "?" in path else "?"
        rows, pages = await walk(client, f"{path}{sep}limit={limit}", headers)
        assert rows == whole.json(), path
        assert pages == -(-len(rows) // limit), (path, pages)  # no Link on the last page, even a full one
        assert len(rows) >= 3, path

    names = [r["name"] for r in (await client.get("/v1/branches", headers=community)).json()]
    assert names == sorted(names) and len(names) == 7
    overview = (await client.get("/v1/branches/overview", headers=auth("district", "dangtu"))).json()
    assert overview["branches"] == 7 and sum(overview["by_grade"].values()) == 7

    for cursor, why in (("bm90LWpzb24", "not JSON"), ("WzFd", "a keyset of another length"), ("!!", "pattern")):
        r = await client.get(f"/v1/branches?cursor={cursor}", headers=community)
        assert r.status_code == 422, (why, r.text)
        if why != "pattern":
            error = r.json()["error"]
            assert error["code"] == "invalid_cursor" and "Link" in error["message"], error
    r = await client.get("/v1/redemptions?cursor=WyJhIl0", headers=v.organiser)  # ["a"]: a position is a number
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
    r = await client.get("/v1/branches?limit=1001", headers=community)
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]
