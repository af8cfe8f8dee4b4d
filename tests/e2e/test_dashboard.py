"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a real `baton serve`.

Each actor signs in with a pasted token and sees what the API lets its token read, no more: the pages are shells
and the data comes from the JSON API the browser calls. Screenshots go to tests/output/ (not committed).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import blow, seed_county
from tests.faults import BATON, Served

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("BATON_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[1] / "output"
BLOCKED_RESOURCE = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")


@pytest.fixture(scope="module")
def browser(county: County) -> Iterator[Any]:
    """One Chromium for the module; missing, it is a skip, or a failure with CI set (as PostgreSQL is).

    After the county: Playwright's sync API keeps an event loop running, so asyncio.run must come first."""
    if not Path(CHROMIUM).exists():
        message = (
            f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium; make test installs it as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + " (CI not set, so skipping)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class County:
    """What the seeding did, to compare the pages with."""

    whistles: dict[str, str] = field(default_factory=dict)  # name -> whistle id
    reports: list[str] = field(default_factory=list)
    month: str = ""


@pytest.fixture(scope="module")
def county(served: Served) -> County:
    """A small county over HTTP: four whistles in three communities, departments reporting in, two reports."""

    async def seed() -> County:
        found = County(month=datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m"))
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            await seed_county(client, served.auth)
            found.whistles["tishu_drain"] = await blow(client, served.auth, title="提署路雨水井堵塞")
            found.whistles["tishu_noise"] = await blow(
                client, served.auth, title="夜间施工噪音", category="security", summoned_departments=["PSB"]
            )
            found.whistles["qingshan"] = await blow(
                client, served.auth, community_id="qingshan", title="青山小区停水", summoned_departments=["HOUSING"]
            )
            found.whistles["taibai"] = await blow(
                client, served.auth, community_id="taibai", title="太白路积水", summoned_departments=["HOUSING"]
            )
            for name, code in (("tishu_drain", "HOUSING"), ("tishu_noise", "PSB")):
                r = await client.post(
                    f"/v1/whistles/{found.whistles[name]}/report-in", headers=served.auth("department", code)
                )
                assert r.status_code == 200, r.text
            for community, text in (("tishu", "楼道灯不亮"), ("taibai", "垃圾清运不及时")):
                report = {"channel": "walk_in", "category": "neighbourhood", "description": text}
                r = await client.post(
                    "/v1/reports",
                    json={**report, "community_id": community, "address": f"{community} 3号楼"},
                    headers=served.auth("community", community, "wang"),
                )
                assert r.status_code == 201, r.text
                found.reports.append(r.json()["report_id"])
            admin = served.auth("admin", None, "root")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the read models follow the log; wait until they show it all
                board = (await client.get("/v1/whistles", headers=admin)).json()["items"]
                inbox = (await client.get("/v1/reports", headers=admin)).json()["items"]
                cards = (await client.get("/v1/scorecards", headers=admin)).json()
                answered = [w for w in board if w["status"] == "answered"]
                summoned = {c["department"]: c["summoned"] for c in cards}
                if len(board) == 4 and len(answered) == 2 and len(inbox) == 2 and summoned.get("HOUSING") == 3:
                    return found
                await asyncio.sleep(0.1)
            raise AssertionError("the board and the inbox did not show the seeded county in 30 s")

    return asyncio.run(seed())


class Session:
    """A browser tab signed in with one token; collects console errors and every URL it requested."""

    def __init__(self, browser: Any, served: Served, headers: dict[str, str], phone: bool = False) -> None:
        self.served = served
        self.token = headers["Authorization"].removeprefix("Bearer ")
        viewport = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
        self.context = browser.new_context(viewport=viewport, locale="zh-CN", timezone_id="Asia/Shanghai")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.closed = False

    def sign_in(self) -> None:
        page = self.page
        page.goto(f"{self.served.url}/signin")
        page.fill("#token", self.token)
        page.click("#signin button[type=submit]")
        page.wait_for_url(f"{self.served.url}/?lang=zh")

    def open(self, path: str) -> Any:
        self.page.goto(f"{self.served.url}{path}")
        return self.page

    def shot(self, name: str) -> None:
        OUTPUT.mkdir(exist_ok=True)
        self.page.screenshot(path=str(OUTPUT / f"dashboard-{name}.png"), full_page=True)

    def close(self, refused: int | None = None) -> None:
        """Fail on any console error (a refusal the test expects shows as the browser's failed-resource line)."""
        unexpected = [
            e for e in self.errors if not (refused and (m := BLOCKED_RESOURCE.match(e)) and int(m[1]) == refused)
        ]
        leaked = [u for u in self.urls if self.token in u]
        cookies = self.context.cookies()
        self.context.close()
        self.closed = True
        assert not unexpected, f"console errors: {unexpected}"
        assert not leaked, f"the token went into a URL: {leaked}"
        assert not cookies, f"the dashboard set cookies: {cookies}"


def sessions_on(browser: Any, served: Served) -> Iterator[Callable[..., Session]]:
    """Open signed-in tabs on this server (role, unit, phone?); close what the test left open."""
    sessions: list[Session] = []

    def open_as(role: str, unit: str | None, *, phone: bool = False) -> Session:
        session = Session(browser, served, served.auth(role, unit, f"{role}-{unit}"), phone=phone)
        sessions.append(session)
        session.sign_in()
        return session

    yield open_as
    for session in sessions:
        if not session.closed:
            session.context.close()


@pytest.fixture
def signed_in(browser: Any, served: Served, county: County) -> Iterator[Callable[..., Session]]:
    yield from sessions_on(browser, served)


def api(served: Served, path: str, role: str, unit: str | None, **params: str) -> httpx.Response:
    return httpx.get(f"{served.url}{path}", params=params, headers=served.auth(role, unit, f"{role}-{unit}"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`baton demo --days 2` on a fresh data dir, then `baton serve` on it: the county the README's tour shows."""
    server = Served(tmp_path_factory.mktemp("demo"), "sqlite")
    server.data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([BATON, "demo", "--days", "2"], env=server.env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        with ThreadPoolExecutor(1) as thread:  # Playwright's loop may be running here already: start it in another
            thread.submit(asyncio.run, server.start()).result()
        yield server
    finally:
        server.stop()


@pytest.fixture
def demo_signed_in(browser: Any, demo: Served) -> Iterator[Callable[..., Session]]:
    yield from sessions_on(browser, demo)


def refused(open_as: Callable[..., Session], role: str, unit: str, path: str, where: str) -> None:
    """A role the page is not for: no link to it in the nav, and the API's 403 where the page's data would be."""
    session = open_as(role, unit)
    assert path not in nav_links(session.page)
    page = session.open(path)
    page.wait_for_selector(f"{where} .api-error")
    assert page.get_attribute(f"{where} .api-error", "data-status") == "403"
    session.close(refused=403)


def nav_links(page: Any) -> list[str]:
    """The nav links the page shows (hidden ones left out)."""
    links = page.locator("nav a:visible")
    return [str(links.nth(i).get_attribute("href")).split("?")[0] for i in range(links.count())]


def test_district_sees_the_whole_county_on_the_overview(signed_in: Callable[..., Session], served: Served) -> None:
    """Open, overdue, escalated and closed are counted over what the district's token reads; the trend is drawn."""
    session = signed_in("district", "dangtu")
    page = session.page
    expect(page.locator("#n-open")).not_to_have_text("–")
    board = api(served, "/v1/whistles", "district", "dangtu").json()["items"]
    assert page.text_content("#n-open") == str(sum(w["status"] != "closed" for w in board)) == "4"
    assert page.text_content("#n-overdue") == str(sum(w["overdue"] for w in board))
    assert page.text_content("#n-escalated") == "0"
    assert page.locator("#trend-chart canvas").count() == 1
    assert "district · dangtu" in page.text_content("#whoami")
    session.shot("overview-district")
    session.close()


def test_a_community_sees_its_own_whistles_and_follows_one_to_its_timeline(
    signed_in: Callable[..., Session], served: Served, county: County
) -> None:
    """The board of a community token lists only its community's whistles; a row opens the whistle's timeline."""
    session = signed_in("community", "tishu")
    page = session.open("/board")
    page.wait_for_selector("#board table.board tbody tr")
    rows = page.locator("#board tbody tr")
    assert {rows.nth(i).get_attribute("data-community") for i in range(rows.count())} == {"tishu"}
    assert {rows.nth(i).get_attribute("data-whistle") for i in range(rows.count())} == {
        county.whistles["tishu_drain"],
        county.whistles["tishu_noise"],
    }
    assert "已应哨" in page.text_content("#board")
    session.shot("board-community")

    page.click(f"tr[data-whistle='{county.whistles['tishu_drain']}'] a")
    page.wait_for_selector("ol.timeline li")
    detail = api(served, f"/v1/whistles/{county.whistles['tishu_drain']}", "community", "tishu").json()
    steps = page.locator("ol.timeline li")
    assert [steps.nth(i).get_attribute("data-type") for i in range(steps.count())] == [
        e["type"] for e in detail["timeline"]
    ]
    assert page.text_content("article.whistle h1") == "提署路雨水井堵塞"
    assert "吹哨" in page.text_content("ol.timeline") and "应哨" in page.text_content("ol.timeline")
    session.shot("whistle-timeline")

    # Another community's whistle: the API's refusal, in its own words, where the timeline would be.
    page = session.open(f"/whistle?id={county.whistles['taibai']}")
    page.wait_for_selector(".api-error")
    refusal = api(served, f"/v1/whistles/{county.whistles['taibai']}", "community", "tishu")
    assert refusal.status_code == 403
    assert page.text_content(".api-error .message") == refusal.json()["error"]["message"]
    session.close(refused=403)


def test_filters_narrow_the_board_and_english_is_a_click_away(
    signed_in: Callable[..., Session], served: Served
) -> None:
    """Status and community filters go to the API as its query; the page reads the same in English; on a phone."""
    session = signed_in("district", "dangtu", phone=True)
    page = session.open("/board")
    page.wait_for_selector("select[name=community] option[value=qingshan]", state="attached")
    page.wait_for_selector("#board tbody tr")
    page.select_option("select[name=status]", "answered")
    expect(page.locator("#board tbody tr")).to_have_count(2)
    answered = api(served, "/v1/whistles", "district", "dangtu", status="answered").json()["items"]
    shown = page.locator("#board tbody tr")
    assert {shown.nth(i).get_attribute("data-whistle") for i in range(shown.count())} == {
        w["whistle_id"] for w in answered
    }
    page.select_option("select[name=status]", "")
    page.select_option("select[name=community]", "qingshan")
    expect(page.locator("#board tbody tr")).to_have_count(1)
    expect(page.locator("#board tbody tr").first).to_have_attribute("data-community", "qingshan")
    session.shot("board-filtered-phone")

    page.click("a.lang")
    page.wait_for_selector("#board tbody tr")
    assert page.text_content("h1") == "Whistle board"
    assert "Blown" in page.text_content("#board thead")
    session.close()


def test_the_ranking_page_shows_the_apis_figures(
    signed_in: Callable[..., Session], served: Served, county: County
) -> None:
    """Rank, rates, composite and class per department, as GET /v1/rankings/{month} has them; a bar chart."""
    session = signed_in("district", "dangtu")
    page = session.open("/rankings?unit_type=department")
    page.wait_for_selector("#ranking table.ranking tbody tr")
    ranking = api(served, f"/v1/rankings/{county.month}", "district", "dangtu", unit_type="department").json()
    assert ranking["units"], ranking
    rows = page.locator("#ranking tbody tr")
    assert [rows.nth(i).get_attribute("data-unit") for i in range(rows.count())] == [
        u["unit"] for u in ranking["units"]
    ]
    labels = {"advanced": "先进", "good": "较好", "average": "一般", "lagging": "后进"}
    for unit in ranking["units"]:
        row = page.locator(f"#ranking tr[data-unit='{unit['unit']}']")
        assert row.locator("td.rank").text_content() == (str(unit["rank"]) if unit["rank"] is not None else "–")
        assert row.locator("td.composite").text_content() == (unit["composite"] or "–")
        response = f"{float(unit['response_rate']) * 100:.2f}%" if unit["response_rate"] else "–"
        assert row.locator("td.response").text_content() == response
        assert row.locator("td.class").text_content() == (labels[unit["class"]] if unit["class"] else "–")
    assert [u["unit"] for u in ranking["units"]][:1] == ["PSB"]  # reported in on every summons
    assert page.locator("#ranking .chart canvas").count() == 1
    session.shot("ranking-departments")

    page.select_option("select[name=unit_type]", "community")
    expect(page.locator("#ranking tr[data-unit=tishu]")).to_have_count(1)
    session.close()


def test_scorecards_every_department_for_the_district_its_own_for_a_department(
    signed_in: Callable[..., Session], served: Served
) -> None:
    """The district reads every department's scorecard as GET /v1/scorecards has it; a department its own card."""
    session = signed_in("district", "dangtu")
    page = session.open("/scorecards")
    page.wait_for_selector("#scorecards tbody tr")
    cards = api(served, "/v1/scorecards", "district", "dangtu").json()
    rows = page.locator("#scorecards tbody tr")
    assert [rows.nth(i).get_attribute("data-department") for i in range(rows.count())] == [
        c["department"] for c in cards
    ]
    for card in cards:
        row = page.locator(f"#scorecards tr[data-department='{card['department']}']")
        shown = f"{card['report_in_on_time_pct']}%" if card["report_in_on_time_pct"] is not None else "–"
        assert row.locator("td.report-in").text_content() == shown
    assert page.locator("#scorecards .chart canvas").count() == 1
    session.shot("scorecards-district")
    session.close()

    session = signed_in("department", "HOUSING")
    page = session.open("/scorecards")
    page.wait_for_selector("#scorecards tbody tr")
    rows = page.locator("#scorecards tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-department") == "HOUSING"
    session.close()


def test_the_reports_inbox_is_each_tokens_own(signed_in: Callable[..., Session], served: Served) -> None:
    """A community reads its own residents' reports; a department gets the API's 403 message instead."""
    session = signed_in("community", "taibai")
    page = session.open("/reports")
    page.wait_for_selector("#reports tbody tr")
    rows = page.locator("#reports tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-community") == "taibai"
    assert "垃圾清运不及时" in page.text_content("#reports")
    session.shot("reports-community")
    session.close()

    session = signed_in("department", "HOUSING")
    page = session.open("/reports")
    page.wait_for_selector("#reports .api-error")
    refusal = api(served, "/v1/reports", "department", "HOUSING")
    assert refusal.status_code == 403
    assert page.get_attribute("#reports .api-error", "data-status") == "403"
    assert page.text_content("#reports .api-error .message") == refusal.json()["error"]["message"]
    session.shot("reports-department-refused")
    page = session.open("/board")  # the department's board: the whistles it is summoned to
    page.wait_for_selector("#board tbody tr")
    assert page.locator("#board tbody tr").count() == 3
    session.close(refused=403)


def test_without_a_token_the_pages_ask_for_one(browser: Any, served: Served) -> None:
    """No token: the page sends no API request and goes to the sign-in page; a pasted non-token is refused there."""
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    api_calls: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: api_calls.append(r.url) if "/v1/" in r.url else None)
    page.goto(f"{served.url}/board")
    page.wait_for_url(re.compile(r"/signin\?lang=zh$"))
    page.fill("#token", "not-a-token")
    page.click("#signin button[type=submit]")
    assert page.is_visible("#signin-error")
    context.close()
    assert not errors and not api_calls, (errors, api_calls)


def test_a_whistle_blown_over_http_shows_on_an_open_board_without_a_reload(
    signed_in: Callable[..., Session], served: Served
) -> None:
    """Live: the page follows the read models' position (server-sent events) and reads its board again."""
    session = signed_in("community", "qingshan")
    page = session.open("/board")
    page.wait_for_selector("#board table.board tbody tr")
    expect(page.locator("body")).to_have_attribute("data-position", re.compile(r"^\d+$"))
    page.evaluate("window.__still_this_page = true")
    started = time.monotonic()
    r = httpx.post(
        f"{served.url}/v1/whistles",
        json={"community_id": "qingshan", "category": "drainage", "title": "青山路井盖缺失", "description": "夜里危险"},
        headers=served.auth("community", "qingshan", "li"),
    )
    assert r.status_code == 201, r.text
    row = page.locator(f"tr[data-whistle='{r.json()['whistle_id']}']")
    expect(row).to_be_visible(timeout=15_000)
    shown_after = time.monotonic() - started
    assert page.evaluate("window.__still_this_page") is True  # the same page: no reload
    assert "青山路井盖缺失" in row.text_content()
    print(f"\nlive: a whistle blown over HTTP showed on the open board {shown_after:.2f} s later")
    session.shot("board-live")
    session.close()


def test_an_auditor_verifies_an_events_inclusion_in_the_browser_and_a_forgery_fails(
    signed_in: Callable[..., Session], served: Served
) -> None:
    """The page hashes the event's bytes and walks the inclusion proof with WebCrypto, against the signed root."""
    deadline = time.monotonic() + 30
    while api(served, "/v1/audit/checkpoint", "auditor", None).status_code != 200:  # the notary signs every few s
        assert time.monotonic() < deadline, "no checkpoint signed in 30 s"
        time.sleep(0.2)
    session = signed_in("auditor", None)
    page = session.open("/audit?position=3")
    verdict = page.locator("#verdict")
    expect(verdict).to_have_attribute("data-verdict", "ok", timeout=10_000)
    proof = api(served, "/v1/audit/proof/3", "auditor", None).json()
    assert proof["root"] in verdict.text_content() and page.text_content("#checkpoint") == proof["checkpoint"]
    session.shot("audit-verified")

    original = httpx.get(f"{served.url}/v1/audit/events/3", headers=served.auth("auditor", None)).content
    forged = original.replace(b'"position":3', b'"position":3 ')  # one byte more: another leaf
    assert forged != original
    page.route("**/v1/audit/events/3", lambda route: route.fulfill(status=200, body=forged))
    page.click("#verify button[type=submit]")
    expect(verdict).to_have_attribute("data-verdict", "failed", timeout=10_000)
    assert "叶子哈希" in verdict.text_content()
    session.close()

    district = signed_in("community", "tishu")
    page = district.open("/audit")
    expect(page.locator("#verdict .api-error")).to_be_visible(timeout=10_000)  # the API's refusal, in its words
    district.close(refused=403)


def test_a_demo_data_dir_offers_its_actors_at_sign_in_and_others_do_not(browser: Any, served: Served) -> None:
    """Only where `baton demo` left its actors' file: one click signs in as one of them; elsewhere, paste a token."""
    actors = served.data_dir / "demo-actors.json"
    actors.write_text(
        json.dumps(
            [
                {
                    "label": "当涂县 district",
                    "role": "district",
                    "unit": "dangtu",
                    "token": served.auth("district", "dangtu", "demo")["Authorization"].removeprefix("Bearer "),
                }
            ],
            ensure_ascii=False,
        )
    )
    context = browser.new_context(locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(f"{served.url}/signin")
        page.click("#demo-actor-list button[data-role=district]")
        page.wait_for_url(f"{served.url}/?lang=zh")
        expect(page.locator("#whoami")).to_contain_text("district · dangtu")
        actors.unlink()
        with page.expect_response("**/demo/actors") as answered:
            page.goto(f"{served.url}/signin")
        assert answered.value.status == 200 and answered.value.json() == []
        page.wait_for_timeout(200)
        assert page.locator("#demo-actors").is_hidden()
    finally:
        context.close()


def test_volunteering_leaderboard_reward_stock_and_lapses_are_the_apis(
    demo_signed_in: Callable[..., Session], demo: Served
) -> None:
    """A community's leaderboard, catalogue and lapsed points as the volunteering API has them; on a phone."""
    session = demo_signed_in("community", "tishu", phone=True)
    assert "/volunteering" in nav_links(session.page)
    page = session.open("/volunteering")
    page.wait_for_selector("#leaderboard table.leaderboard tbody tr")
    page.wait_for_selector("#lapses .lapse-total")
    board = api(demo, "/v1/communities/tishu/leaderboard", "community", "tishu", limit="200").json()
    rows = page.locator("#leaderboard tbody tr")
    assert [rows.nth(i).get_attribute("data-volunteer") for i in range(rows.count())] == [
        v["volunteer_id"] for v in board
    ]
    for v in board[:5]:
        row = page.locator(f"#leaderboard tr[data-volunteer='{v['volunteer_id']}']")
        assert row.locator("td.earned").text_content() == v["earned"]
        assert row.locator("td.balance").text_content() == v["balance"]
        assert row.locator("td.expired").text_content() == v["expired"]
    assert page.locator("#leaderboard .chart canvas").count() == 1
    lapsed = [v for v in board if float(v["expired"]) != 0]  # a lapse is a negative ledger entry
    assert lapsed, "the demo lapses last year's points at New Year"
    total = sum(-float(v["expired"]) for v in lapsed)
    assert page.get_attribute("#lapses .lapse-total", "data-total") == f"{total:.2f}"
    assert page.locator("#lapses tbody tr").count() == len(lapsed)
    rewards = api(demo, "/v1/rewards", "community", "tishu", community="tishu").json()
    assert rewards, "the demo offers a catalogue"
    shown = page.locator("#rewards tbody tr")
    assert [shown.nth(i).get_attribute("data-reward") for i in range(shown.count())] == [
        r["reward_id"] for r in rewards
    ]
    for r in rewards:
        stock = page.locator(f"#rewards tr[data-reward='{r['reward_id']}'] td.stock").text_content()
        assert stock.split()[0] == str(r["stock"])
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling on a phone
    session.shot("volunteering-community-phone")
    session.close()

    refused(
        demo_signed_in, "department", "PSB", "/volunteering", "#leaderboard"
    )  # not a volunteering reader: no link, and the API's refusal


def test_branches_grades_aspects_and_rectifications_are_the_apis(
    demo_signed_in: Callable[..., Session], demo: Served
) -> None:
    """The district's branches by grade and rectifications; a branch's aspects; a community sees its own."""
    session = demo_signed_in("district", "dangtu")
    assert "/branches" in nav_links(session.page)
    page = session.open("/branches")
    page.wait_for_selector("#branches table.branches tbody tr")
    page.wait_for_selector("#n-branches")
    overview = api(demo, "/v1/branches/overview", "district", "dangtu").json()
    assert page.text_content("#n-branches") == str(overview["branches"])
    assert page.text_content("#n-open-rect") == str(overview["open_rectifications"])
    assert page.text_content("#n-overdue-rect") == str(overview["overdue_rectifications"])
    assert page.locator("#branch-overview .chart canvas").count() == 1
    board = api(demo, "/v1/branches", "district", "dangtu").json()
    rows = page.locator("#branches tbody tr")
    assert [rows.nth(i).get_attribute("data-branch") for i in range(rows.count())] == [b["branch_id"] for b in board]
    grades = {"red_flag": "红旗型", "exemplary": "示范型", "standard": "标准型", "below_standard": "未达标"}
    for b in board:
        row = page.locator(f"#branches tr[data-branch='{b['branch_id']}']")
        assert row.locator("td.grade").text_content() == (grades[b["grade"]] if b["grade"] else "–")
        assert row.locator("td.open").text_content() == str(b["open_rectifications"])
        assert row.locator("td.overdue").text_content() == str(b["overdue_rectifications"])
    audited = next(b for b in board if b["audits"] and b["open_rectifications"])
    page.click(f"#branches tr[data-branch='{audited['branch_id']}'] button")
    page.wait_for_selector("#branch-detail table.aspects tbody tr")
    detail = api(demo, f"/v1/branches/{audited['branch_id']}", "district", "dangtu").json()
    latest = max(detail["audit_history"], key=lambda a: a["position"])
    aspects = page.locator("#branch-detail table.aspects tbody tr")
    assert [aspects.nth(i).get_attribute("data-aspect") for i in range(aspects.count())] == [
        a["code"] for a in latest["aspects"]
    ]
    assert [aspects.nth(i).locator("td.score").text_content() for i in range(aspects.count())] == [
        a["score"] for a in latest["aspects"]
    ]
    assert "组织生活" in page.text_content("#branch-detail")
    shown = page.locator("#branch-detail table.rectifications tbody tr")
    assert [shown.nth(i).get_attribute("data-status") for i in range(shown.count())] == [
        r["status"] for r in detail["rectifications"]
    ]
    assert page.locator("#branch-detail .chart canvas").count() == 1
    session.shot("branches-district")
    session.close()

    session = demo_signed_in("community", "tishu", phone=True)
    page = session.open("/branches")
    page.wait_for_selector("#branches tbody tr")
    own = api(demo, "/v1/branches", "community", "tishu").json()
    assert own and {b["community_id"] for b in own} == {"tishu"}
    assert page.locator("#branches tbody tr").count() == len(own)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    session.close()

    refused(
        demo_signed_in, "volunteer", "tishu", "/branches", "#branches"
    )  # no branches for a volunteer: no link, and the API's refusal


def test_the_assessment_table_and_its_drill_down_to_events_are_the_apis(
    demo_signed_in: Callable[..., Session], demo: Served
) -> None:
    """Units x indicators as GET /v1/assessments/{year} scores them; an indicator opens its facts and events."""
    this_year = datetime.now(ZoneInfo("Asia/Shanghai")).year
    year = next(  # the demo finalises last December's year
        y for y in (this_year - 1, this_year) if api(demo, f"/v1/assessments/{y}/final", "district", "dangtu").json()
    )
    final = [
        f for f in api(demo, f"/v1/assessments/{year}/finalisations", "district", "dangtu").json() if not f["voided"]
    ]
    cutoff = next(f["cutoff_position"] for f in final if f["unit_type"] == "community")
    session = demo_signed_in("district", "dangtu")
    assert "/assessment" in nav_links(session.page)
    page = session.open(f"/assessment?year={year}&unit_type=community")
    # A finalised year shows its final scores: those at the finalisation's cut-off, not as of now.
    expect(page.locator("#assessment p[data-cutoff]")).to_have_attribute("data-cutoff", str(cutoff))
    result = api(
        demo, f"/v1/assessments/{year}", "district", "dangtu", unit_type="community", position=str(cutoff)
    ).json()
    assert result["cutoff_position"] == cutoff
    ranked = sorted(result["units"], key=lambda u: (u["rank"] is None, u["rank"] or 0, u["unit"]))
    rows = page.locator("#assessment tbody tr")
    assert [rows.nth(i).get_attribute("data-unit") for i in range(rows.count())] == [u["unit"] for u in ranked]
    for unit in ranked:
        row = page.locator(f"#assessment tr[data-unit='{unit['unit']}']")
        assert row.locator("td.total").text_content() == (unit["total"] or "–")
        cells = row.locator("td.ind")
        assert [cells.nth(i).text_content() for i in range(cells.count())] == [
            i["score"] or "–" for i in unit["indicators"]
        ]
    notes = page.locator("#finalisations p.final")
    assert notes.count() == len(final) > 0
    assert {notes.nth(i).get_attribute("data-tree-size") for i in range(notes.count())} == {
        str(f["tree_size"]) for f in final
    }
    assert final[0]["root"] in page.text_content("#finalisations")

    unit = next(u for u in ranked if any(i["events"] for i in u["indicators"]))
    indicator = next(i for i in unit["indicators"] if i["events"])
    page.click(f"#assessment tr[data-unit='{unit['unit']}'] button[data-indicator='{indicator['code']}']")
    page.wait_for_selector("#drill ol.positions li")
    assert page.get_attribute("#drill h3", "data-events") == str(len(indicator["events"]))
    facts = page.locator("#drill table.facts tbody tr")
    assert {facts.nth(i).get_attribute("data-fact") for i in range(facts.count())} == set(indicator["facts"])
    shown = page.locator("#drill ol.positions a")
    assert [int(shown.nth(i).get_attribute("data-position")) for i in range(shown.count())] == indicator["events"][:500]
    assert indicator["name"] in page.text_content("#drill h2")
    session.shot("assessment-drill-down")
    session.close()

    session = demo_signed_in("auditor", None)  # an auditor reads events one by one: one behind the score, verified
    page = session.open(f"/assessment?year={year}&unit_type=community")
    expect(page.locator("#assessment p[data-cutoff]")).to_have_attribute("data-cutoff", str(cutoff))
    page.click(f"#assessment tr[data-unit='{unit['unit']}'] button[data-indicator='{indicator['code']}']")
    page.click("#drill ol.positions a >> nth=0")
    expect(page.locator("#verdict")).to_have_attribute("data-verdict", "ok", timeout=10_000)
    assert page.input_value("#position") == str(indicator["events"][0])
    session.close()

    session = demo_signed_in("community", "tishu", phone=True)
    page = session.open(f"/assessment?year={this_year}")
    page.wait_for_selector("#assessment tbody tr")
    page.wait_for_selector("#finalisations p")
    if not api(demo, f"/v1/assessments/{this_year}/final", "community", "tishu").json():
        assert page.locator("#finalisations p.provisional").count() == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    session.close()

    refused(
        demo_signed_in, "volunteer", "tishu", "/assessment", "#assessment"
    )  # not an assessment reader: no link, and the API's refusal


def all_reports(served: Served, role: str, unit: str | None) -> list[dict[str, Any]]:
    """Every report the token reads, page by page."""
    items: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    while True:
        page = api(served, "/v1/reports", role, unit, limit="200", **cursor).json()
        items += page["items"]
        if not page["next_cursor"]:
            return items
        cursor = {"cursor": page["next_cursor"]}


def test_the_case_map_places_reports_over_the_grid_boundaries(
    demo_signed_in: Callable[..., Session], demo: Served
) -> None:
    """The demo's grid boundaries drawn with ECharts (no tiles), its reports with coordinates as points, by grid."""
    boundaries = api(demo, "/v1/org/boundaries", "district", "dangtu").json()
    reports = all_reports(demo, "district", "dangtu")
    placed = [r for r in reports if r["lat"] is not None and r["long"] is not None]
    assert boundaries["features"] and placed, "baton demo draws the grids and places reports raised through the apps"
    session = demo_signed_in("district", "dangtu")
    assert "/map" in nav_links(session.page)
    page = session.open("/map")
    chart = page.locator("#map-chart")
    expect(chart).to_have_attribute("data-points", str(len(placed)))
    assert chart.get_attribute("data-regions") == str(len(boundaries["features"]))
    assert page.locator("#map-chart canvas").count() == 1
    by_grid: dict[str, int] = {}
    for r in reports:
        by_grid[r["grid_id"] or ""] = by_grid.get(r["grid_id"] or "", 0) + 1
    rows = page.locator("#map-grids tbody tr")
    assert {
        rows.nth(i).get_attribute("data-grid"): int(rows.nth(i).locator("td.reports").text_content())
        for i in range(rows.count())
    } == by_grid
    session.shot("map-district")
    session.close()

    session = demo_signed_in("community", "tishu", phone=True)
    page = session.open("/map")
    own = [r for r in all_reports(demo, "community", "tishu") if r["lat"] is not None]
    expect(page.locator("#map-chart")).to_have_attribute("data-points", str(len(own)))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    session.shot("map-community-phone")
    session.close()

    refused(
        demo_signed_in, "department", "PSB", "/map", "#map-error"
    )  # departments read whistles, not residents' reports


def test_a_finalised_month_shows_its_digest_and_signed_root_on_the_ranking_page(
    demo_signed_in: Callable[..., Session], demo: Served
) -> None:
    """The admin finalises last month over HTTP; the ranking page gives it as finalised, as the API does."""
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    month = f"{now.year - 1}-12" if now.month == 1 else f"{now.year}-{now.month - 1:02d}"
    r = httpx.post(f"{demo.url}/v1/rankings/{month}/finalise", json={}, headers=demo.auth("admin", None, "root"))
    assert r.status_code == 201, r.text
    ranking = api(demo, f"/v1/rankings/{month}", "district", "dangtu", unit_type="community").json()
    assert ranking["final"]["digest"] == r.json()["digests"]["community"]
    session = demo_signed_in("district", "dangtu")
    page = session.open(f"/rankings?month={month}&unit_type=community")
    note = page.locator("#ranking p.final")
    expect(note).to_have_attribute("data-digest", ranking["final"]["digest"])
    assert note.get_attribute("data-tree-size") == str(ranking["final"]["tree_size"])
    assert ranking["final"]["root"] in note.text_content()
    rows = page.locator("#ranking tbody tr")
    assert [rows.nth(i).get_attribute("data-unit") for i in range(rows.count())] == [
        u["unit"] for u in ranking["units"]
    ]
    session.shot("ranking-finalised")
    page = session.open(f"/rankings?month={now.strftime('%Y-%m')}")
    expect(page.locator("#ranking p.provisional")).to_have_count(1)
    session.close()
