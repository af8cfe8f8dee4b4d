"""RouteIndex keeps FastAPI's order for routes with a parameter in their first two segments, in every bucket."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from api.common import RouteIndex


async def test_routes_with_a_parameter_in_their_first_segments_are_tried_in_every_bucket_in_order() -> None:
    def app(indexed: bool) -> FastAPI:
        made = FastAPI()
        made.get("/v1/a")(lambda: "literal")
        made.get("/{page}")(lambda page: f"page {page}")
        made.get("/v1/{name}")(lambda name: f"name {name}")
        made.post("/v1/{name}/go")(lambda name: f"go {name}")
        made.get("/v1/a/{rest:path}")(lambda rest: f"rest {rest}")
        if indexed:
            made.router.middleware_stack = RouteIndex(made.router)
        return made

    paths = ["/v1/a", "/v1/b", "/x", "/x/", "/v1/b/go", "/v1/a/deep/er", "/v1/a/", "/v2/a", "/"]
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app(True)), base_url="http://t") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app(False)), base_url="http://t") as b,
    ):
        for path in paths:
            for method in ("GET", "POST"):
                ours, theirs = await a.request(method, path), await b.request(method, path)
                assert (ours.status_code, ours.text, ours.headers.get("location")) == (
                    theirs.status_code,
                    theirs.text,
                    theirs.headers.get("location"),
                ), (method, path)
        assert (await a.get("/v1/b")).json() == "name b" and (await a.get("/x")).json() == "page x"
