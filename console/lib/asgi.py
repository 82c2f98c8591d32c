"""Small helpers for the project's plain ASGI endpoints (the gateway, the local model server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Server-sent events, relayed piece by piece: no proxy may hold them back (nginx honours X-Accel-Buffering).
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(ConnectionError):
    """The client disconnected: there is nobody left to answer."""


class BodyTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than {limit} bytes.")
        self.limit = limit


async def read_body(receive: Receive, *, limit: int) -> bytes:
    """The whole request body; raises ClientGone or BodyTooLarge (before reading past `limit`)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("client went away before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    try:
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
    except OSError as exc:  # uvicorn raises ClientDisconnected (an OSError) once the peer is gone
        raise ClientGone("client went away") from exc


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (ASGI servers send them lower-cased already)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def run_until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` (which writes a streamed answer) while watching for the client to leave.

    After the body, the only message an ASGI server sends is `http.disconnect`. Returns True when
    the work finished; False when the client left first, in which case the work was cancelled and
    awaited, so its `finally` blocks (closing an upstream call, freeing a slot) have run."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        with contextlib.suppress(Exception):
            while (await receive())["type"] != "http.disconnect":
                pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError, ClientGone):
            await task
        return False
    finally:
        watcher.cancel()
        task.cancel()
