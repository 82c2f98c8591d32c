"""One pooled httpx.AsyncClient per event loop, shared by every upstream call of the process."""

from __future__ import annotations

import asyncio
import weakref

import httpx

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()

# Per-request timeouts are set by each call from its provider's settings; these are the pool's.
_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=30)


def async_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        # retries=2 re-tries only failed connects, when nothing has reached the upstream yet: safe.
        transport = httpx.AsyncHTTPTransport(retries=2, limits=_LIMITS)
        client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60.0), follow_redirects=False)
        _clients[loop] = client
    return client
