"""HTTP helpers shared by every upstream call: pooled httpx.AsyncClients per event loop, and
Retry-After parsing.

Several small pools instead of one big one: httpcore looks over every pooled connection for
each request, so one pool of 64+ busy connections costs more per call than eight of eight.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import itertools
import math
import re
import ssl
import weakref
from datetime import UTC, datetime

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


# Beyond an hour a caller is better served by asking again than by sleeping on one answer; the cap
# also keeps a hostile or broken upstream from parking clients for days.
RETRY_AFTER_CAP = 3600
_DELAY_SECONDS = re.compile(r"[0-9]+")  # 1*DIGIT, ASCII only: str.isdigit() also accepts "²"


def parse_retry_after(value: str | None, *, now: datetime | None = None, cap: int = RETRY_AFTER_CAP) -> int | None:
    """Whole seconds to wait from a Retry-After value (RFC 9110 §10.2.3): delay-seconds, or an
    HTTP-date in any of its three forms, rounded up; a date already past is 0; at most `cap`.
    None when the value is missing or not a valid Retry-After (then the header is ignored)."""
    text = (value or "").strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        # Python refuses to turn more than 4300 digits into an int; anything past 10 is over the cap anyway.
        return cap if len(text) > 10 else min(int(text), cap)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # the asctime form carries no zone; HTTP-dates are GMT
    wait = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0, math.ceil(wait)), cap)
