"""Pooled httpx.AsyncClients per event loop, shared by every upstream call of the process.

Several small pools instead of one big one: httpcore looks over every pooled connection for
each request, so one pool of 64+ busy connections costs more per call than eight of eight.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import ssl
import weakref

import httpx

SHARDS = 8
# Per-request timeouts are set by each call from its provider's settings; these are the pools'.
_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30)


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building a TLS context loads the CA bundle (~30 ms): once per process, shared by every pool.
    return httpx.create_ssl_context()


class _Shards:
    def __init__(self) -> None:
        self.clients = [self._new() for _ in range(SHARDS)]
        self.turn = itertools.cycle(range(SHARDS))

    @staticmethod
    def _new() -> httpx.AsyncClient:
        # retries=2 re-tries only failed connects, when nothing has reached the upstream yet: safe.
        transport = httpx.AsyncHTTPTransport(retries=2, limits=_LIMITS, verify=_tls())
        return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60.0), follow_redirects=False)

    def next(self) -> httpx.AsyncClient:
        index = next(self.turn)
        client = self.clients[index]
        if client.is_closed:
            client = self.clients[index] = self._new()
        return client


_shards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shards] = weakref.WeakKeyDictionary()


def async_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    shards = _shards.get(loop)
    if shards is None:
        shards = _shards[loop] = _Shards()
    return shards.next()
