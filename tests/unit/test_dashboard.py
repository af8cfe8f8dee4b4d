"""The dashboard's shells: every page renders in both languages with no inline script, and the vendored assets are
the files their manifest names (version and sha256)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.dashboard import ASSETS, PAGES, SECURITY_HEADERS, dashboard_router
from api.dashboard_labels import EN, ZH

STATIC = Path(__file__).resolve().parents[2] / "api" / "web" / "static"


@pytest.fixture
async def client() -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(dashboard_router())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton.test")


def test_both_languages_have_every_label() -> None:
    assert set(ZH) == set(EN)


def test_the_vendored_files_are_those_the_manifest_names() -> None:
    manifest = (STATIC / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| `[\w.]+`.*\| ([\d.]+) \|.*\| `([0-9a-f]{64})` \|$", manifest, re.MULTILINE)
    assert {name for name, _, _ in rows} == {"htmx.min.js", "echarts.min.js"}
    for name, _version, digest in rows:
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, f"{name} differs from the manifest"


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_every_page_renders_without_inline_script(client: httpx.AsyncClient, lang: str) -> None:
    for path in PAGES:
        r = await client.get(path, params={"lang": lang, "id": "abc", "status": "closed", "month": "2026-11"})
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", r.text, re.DOTALL)
        inline = [attrs for attrs, body in scripts if body.strip() and 'type="application/json"' not in attrs]
        assert not inline, (path, inline)
        assert ("吹哨台账" if lang == "zh" else "Whistle board") in r.text


async def test_query_values_are_escaped_and_ids_checked(client: httpx.AsyncClient) -> None:
    r = await client.get("/board", params={"community": '"><script>alert(1)</script>'})
    assert "<script>alert(1)" not in r.text
    r = await client.get("/whistle", params={"id": "../v1/org"})
    assert "/v1/whistles/../" not in r.text and 'class="error"' in r.text


async def test_assets_are_served_with_their_types(client: httpx.AsyncClient) -> None:
    for name, media_type in ASSETS.items():
        r = await client.get(f"/assets/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media_type
        assert r.content == (STATIC / name).read_bytes()
