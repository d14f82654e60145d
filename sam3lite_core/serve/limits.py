"""The request-body limit: a body over it is refused with 413 while it is read, before it is held whole.

A declared `Content-Length` over the limit is refused before a byte of the body is read; a body sent without
one (chunked) is counted as it arrives and refused at the first chunk past the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import HTTPException

MAX_BODY_BYTES = 100 * 2**20  # the backend's IMAGE_MAX_BYTES: no request body is read past it
JSON_OVERHEAD = 2**16  # the rest of a prompt's JSON body besides the image

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def body_limit(max_upload_bytes: int) -> int:
    """The largest body worth reading for images of at most `max_upload_bytes`: their base64 (4/3 larger) and
    the JSON around it, at most MAX_BODY_BYTES."""
    return min(MAX_BODY_BYTES, max_upload_bytes * 4 // 3 + JSON_OVERHEAD)


def _too_large(limit: int, image: bool = True) -> str:
    what = "the image limit, base64-encoded" if image else "the upload limit of this path"
    return f"request body over the {limit}-byte limit of this service ({what})"


class BodyLimit:
    """ASGI middleware refusing HTTP request bodies over `limit` bytes with 413 {"detail", "message"}; a path
    starting with a prefix of `by_prefix` has that prefix's limit instead (uploads larger than an image)."""

    def __init__(self, app: ASGIApp, limit: int, by_prefix: Mapping[str, int] | None = None) -> None:
        self.app, self.limit = app, limit
        self.by_prefix = sorted((by_prefix or {}).items(), key=lambda item: -len(item[0]))

    def limit_for(self, path: str) -> int:
        return next((limit for prefix, limit in self.by_prefix if path.startswith(prefix)), self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        image = limit == self.limit
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._refuse(send, _too_large(limit, image))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if received > limit:
                # An HTTPException passes FastAPI's body parsing unchanged and is answered as a 413.
                raise HTTPException(413, _too_large(limit, image))
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send, text: str) -> None:
        body = json.dumps({"detail": text, "message": text}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
