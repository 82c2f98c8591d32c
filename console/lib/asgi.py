"""Small helpers for the project's plain ASGI endpoints (the gateway, the local model server)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.http import HttpRequest

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


def declared_length(scope: Scope) -> int | None:
    """The body size the request announces in Content-Length; None when it announces none (chunked) or
    one that is not a number (the server has refused those already; the body is then counted)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return max(int(value), 0)
            return None
    return None


# --- who the client is --------------------------------------------------------------------------------
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# What a client could forge to pass for someone else or for HTTPS; dropped unless a trusted proxy sent it.
FORWARDED_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip", b"forwarded"}
)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: Iterable[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


class TrustedProxies:
    """The one rule for who the client is, applied to every request before anything reads it.

    From a peer in `networks` (the reverse proxies, TRUSTED_PROXIES), the client is the rightmost
    X-Forwarded-For address that is not itself a trusted proxy, and the scheme is X-Forwarded-Proto's.
    From anyone else those headers are removed, so neither Django nor the gateway ever sees them, and
    the socket's peer is the client. Replaces daphne's `--proxy-headers`, which believes them from
    anyone. The result is in the scope (`client`, `scheme`): read it with `client_ip`."""

    def __init__(self, app: ASGIApp, *, networks: Iterable[Network]) -> None:
        self.app = app
        self.networks = tuple(networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in {"http", "websocket"}:
            scope = self.resolve(scope)
        await self.app(scope, receive, send)

    def resolve(self, scope: Scope) -> Scope:
        peer = scope.get("client")
        headers = list(scope.get("headers", []))
        if not peer or not _trusted(_address(str(peer[0])), self.networks):
            kept = [(name, value) for name, value in headers if name.lower() not in FORWARDED_HEADERS]
            return scope if len(kept) == len(headers) else {**scope, "headers": kept}
        resolved = dict(scope)
        hops = [
            hop.strip()
            for name, value in headers
            if name.lower() == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        client = str(peer[0])
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # garbage is not believed: the last trusted hop is as far as the chain is known
            client = str(address)
            if not _trusted(address, self.networks):
                break
        if client != str(peer[0]):
            resolved["client"] = (client, 0)
        for name, value in headers:
            if name.lower() == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",", 1)[0].strip().lower()
                if proto in {"http", "https"}:
                    secure = proto == "https"
                    if scope["type"] == "websocket":
                        resolved["scheme"] = "wss" if secure else "ws"
                    else:
                        resolved["scheme"] = proto
                break
        return resolved


def client_ip(scope: Scope) -> str:
    """The client's address by the TrustedProxies rule (throttling and audit key on this)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def request_client_ip(request: HttpRequest) -> str:
    """`client_ip` for a Django request: Django takes REMOTE_ADDR from the scope TrustedProxies set."""
    return str(request.META.get("REMOTE_ADDR", ""))


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
