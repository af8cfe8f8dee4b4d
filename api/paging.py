"""Keyset paging for the routes that answer a JSON array: `limit` and an opaque `cursor`, the next page named in a
`Link: <...>; rel="next"` header (RFC 8288), so the array stays what it was and a client that never pages still
learns that there is more."""

# No `from __future__ import annotations`: the query parameters' annotations name the enclosing call's arguments.
import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response

from api.common import ApiError

LINK_HEADER = {
    "Link": {
        "description": 'The next page, `<path?...&cursor=...>; rel="next"`, when the answer was cut at `limit`; '
        "absent on the last page.",
        "schema": {"type": "string"},
    }
}
PAGED = {200: {"headers": LINK_HEADER}}
"""What a paged route's OpenAPI `responses` say about the Link header."""


@dataclass(frozen=True)
class Page:
    """What the client asked for: at most LIMIT rows after the row the cursor names (none: from the first); and the
    request and response the Link header is made from and set on."""

    limit: int
    after: tuple[Any, ...] | None
    request: Request
    response: Response

    def fetch_limit(self) -> int:
        """Rows to read: one more than asked tells whether a next page exists."""
        return self.limit + 1

    def cut(self, rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
        """ROWS (read with fetch_limit) cut to the limit; a Link header names the page after the last row kept."""
        if len(rows) <= self.limit:
            return rows
        rows = rows[: self.limit]
        cursor = encode(tuple(rows[-1][k] for k in key))
        url = self.request.url.include_query_params(cursor=cursor)
        self.response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        return rows


def encode(values: tuple[Any, ...]) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str, kinds: tuple[type, ...]) -> tuple[Any, ...]:
    """The row values a cursor names, each of the kind KINDS says, or a 422 that says where cursors come from."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        values = None
    if (
        not isinstance(values, list)
        or len(values) != len(kinds)
        or not all(type(v) is kind for v, kind in zip(values, kinds, strict=True))
    ):
        raise ApiError(
            422,
            "invalid_cursor",
            f"cursor {cursor[:40]!r} is not one this route gave out; follow the URL in the previous page's Link "
            'header (rel="next"), or leave cursor out for the first page',
        )
    return tuple(values)


def paging(default: int, most: int, kinds: tuple[type, ...]) -> Any:
    """A dependency giving a Page: `limit` (1..MOST, DEFAULT) and `cursor` (from a Link header) of a keyset of KINDS."""

    def page(
        request: Request,
        response: Response,
        limit: Annotated[int, Query(ge=1, le=most, description="Rows per page")] = default,
        cursor: Annotated[
            str | None,
            Query(
                max_length=1024,
                pattern=r"^[A-Za-z0-9_-]+$",
                description='From the previous page\'s `Link: <...>; rel="next"` header',
            ),
        ] = None,
    ) -> Page:
        return Page(limit, decode(cursor, kinds) if cursor is not None else None, request, response)

    return Depends(page)
