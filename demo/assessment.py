"""The demo's baton: the scheme, two-way evaluation, and the year's scores finalised against the Merkle tree."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from demo.county import County

Post = Callable[..., Awaitable[httpx.Response]]
Auth = Callable[..., dict[str, str]]

SCHEME_FILE = Path(__file__).resolve().parent.parent / "standards" / "assessment-scheme-2026.1.json"
RATINGS = ["excellent", "good", "good", "fair", "poor"]


class AssessmentDemo:
    """Publishes the scheme, has units rate each other, finalises the year."""

    def __init__(self, county: County, post: Post, auth: Auth, rng: random.Random) -> None:
        self.county, self.post, self.auth, self.rng = county, post, auth, rng
        self.final: dict[str, Any] = {}
        self.refusal = ""

    async def publish(self) -> None:
        await self.post("/v1/assessment-schemes", json.loads(SCHEME_FILE.read_text()), self.auth("admin"))

    async def rate(self, year: int) -> None:
        """双向评价: every community rates four departments; every department rates four communities."""
        codes = [d["code"] for d in self.county.departments]
        for community in self.county.communities:
            for code in self.rng.sample(codes, 4):
                await self.post(
                    "/v1/evaluations",
                    {"year": year, "ratee": code, "rating": self.rng.choice(RATINGS)},
                    self.auth("community", community),
                )
        for code in codes:
            for community in self.rng.sample(self.county.communities, 4):
                await self.post(
                    "/v1/evaluations",
                    {"year": year, "ratee": community, "rating": self.rng.choice(RATINGS)},
                    self.auth("department", code),
                )

    async def finalise(self, year: int) -> None:
        """Finalise a year that is over; its scores are then tied to the tree of the history they come from."""
        r = await self.post(f"/v1/assessments/{year}/finalise", {}, self.auth("admin"))
        if r.status_code != 201:
            raise RuntimeError(f"finalising {year}: {r.status_code} {r.text}")
        self.final = r.json()

    async def try_to_finalise(self, year: int) -> None:
        """Finalise a year that is not over: refused, since that would fix its baton for good."""
        r = await self.post(f"/v1/assessments/{year}/finalise", {}, self.auth("admin"))
        self.refusal = r.json()["error"]["message"] if r.status_code == 409 else f"{r.status_code} {r.text}"
