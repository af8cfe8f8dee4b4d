"""Live updates for open pages: server-sent events whenever the read models have applied new events.

`GET /v1/changes` (any valid token) streams `event: position` with the store position every read model has
applied, each time it moves, so a page re-reads what it shows; a comment line every 15 s keeps proxies from closing
it. A stream lasts `wait` seconds (the browser then opens another), so no connection is held forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api.common import ERRORS, Router, actor_dependency
from api.tokens import Tokens
from services.access import Actor

POLL = 0.2
"""Seconds between looks at the read models' positions (one indexed SELECT)."""
HEARTBEAT = 15.0


class SharedPosition:
    """The read models' position, read at most once per POLL whatever the number of open streams."""

    def __init__(self, applied: Callable[[], int]) -> None:
        self.applied = applied
        self.value, self.read_at = 0, -POLL
        self.lock = asyncio.Lock()

    async def now(self) -> int:
        async with self.lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self.read_at >= POLL:
                self.value = await anyio.to_thread.run_sync(self.applied)
                self.read_at = loop.time()
            return self.value


def changes_router(applied: Callable[[], int], tokens: Tokens) -> APIRouter:
    """applied(): the position every read model has reached."""
    router = Router(prefix="/v1", tags=["live"], responses=ERRORS)
    shared = SharedPosition(applied)

    @router.get(
        "/changes",
        response_class=StreamingResponse,
        summary="Server-sent events: the position the read models have applied, each time it moves",
        responses={200: {"content": {"text/event-stream": {}}}},
        include_in_schema=False,  # a stream, not a document: the README and the dashboard say what it sends
    )
    async def changes(
        actor: Actor = Depends(actor_dependency(tokens)),
        wait: Annotated[
            float, Query(ge=0, le=3600, description="Seconds to keep the stream open (0: one event).")
        ] = 300,
    ) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            end, beat = loop.time() + wait, loop.time() + HEARTBEAT
            last = -1
            while True:
                position = await shared.now()
                if position != last:
                    last = position
                    yield f"event: position\ndata: {json.dumps({'position': position})}\n\n".encode()
                now = loop.time()
                if now >= end:
                    return
                if now >= beat:
                    beat = now + HEARTBEAT
                    yield b": still here\n\n"
                await asyncio.sleep(min(POLL, end - now))

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return router
