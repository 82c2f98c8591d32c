"""Concurrency slots and request rates per provider, shared by every web process.

Scaled runtime: Redis, with Lua scripts so each check-and-take is one atomic step across any
number of daphne processes. Embedded runtime: one web process, so in-process state is exact.
Token quotas live in the database (see `quota`), because they must survive restarts.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
import weakref
from typing import Protocol

from django.conf import settings

_SLOT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""

# Token bucket: capacity max(1, rps) tokens, refilled at rps per second. Returns the wait in ms (0 = taken).
_RATE_SCRIPT = """
local rate = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local capacity = math.max(1, rate)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - ts) / 1000 * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return wait
"""


class Limiter(Protocol):
    async def acquire_slot(self, provider_id: int, limit: int, lease_seconds: float) -> str | None: ...

    async def release_slot(self, provider_id: int, slot: str) -> None: ...

    async def take_rate(self, provider_id: int, rps: float) -> float:
        """0 when the call may go now, else the seconds until it may."""
        ...

    async def active_slots(self, provider_id: int) -> int: ...


class LocalLimiter:
    """Exact within one process: the event loop runs one check at a time."""

    def __init__(self) -> None:
        self.slots: dict[int, set[str]] = {}
        self.buckets: dict[int, tuple[float, float]] = {}

    async def acquire_slot(self, provider_id: int, limit: int, lease_seconds: float) -> str | None:
        taken = self.slots.setdefault(provider_id, set())
        if len(taken) >= limit:
            return None
        slot = uuid.uuid4().hex
        taken.add(slot)
        return slot

    async def release_slot(self, provider_id: int, slot: str) -> None:
        self.slots.get(provider_id, set()).discard(slot)

    async def take_rate(self, provider_id: int, rps: float) -> float:
        now = time.monotonic()
        capacity = max(1.0, rps)
        tokens, ts = self.buckets.get(provider_id, (capacity, now))
        tokens = min(capacity, tokens + (now - ts) * rps)
        if tokens >= 1:
            self.buckets[provider_id] = (tokens - 1, now)
            return 0.0
        self.buckets[provider_id] = (tokens, now)
        return (1 - tokens) / rps

    async def active_slots(self, provider_id: int) -> int:
        return len(self.slots.get(provider_id, set()))


class RedisLimiter:
    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object] = weakref.WeakKeyDictionary()

    def _redis(self):  # type: ignore[no-untyped-def]
        import redis.asyncio as redis

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = redis.Redis.from_url(self.url)
            self._clients[loop] = client
        return client

    async def acquire_slot(self, provider_id: int, limit: int, lease_seconds: float) -> str | None:
        # A lease, not a counter: a process that dies holding slots frees them when the lease ends.
        now = time.time()
        slot = uuid.uuid4().hex
        ok = await self._redis().eval(
            _SLOT_SCRIPT,
            1,
            f"lmc:slots:{provider_id}",
            now,
            limit,
            now + lease_seconds,
            slot,
            math.ceil(lease_seconds) + 60,
        )
        return slot if ok == 1 else None

    async def release_slot(self, provider_id: int, slot: str) -> None:
        await self._redis().zrem(f"lmc:slots:{provider_id}", slot)

    async def take_rate(self, provider_id: int, rps: float) -> float:
        wait_ms = await self._redis().eval(_RATE_SCRIPT, 1, f"lmc:rate:{provider_id}", rps, int(time.time() * 1000))
        return float(wait_ms) / 1000

    async def active_slots(self, provider_id: int) -> int:
        redis = self._redis()
        await redis.zremrangebyscore(f"lmc:slots:{provider_id}", "-inf", time.time())
        return int(await redis.zcard(f"lmc:slots:{provider_id}"))


_limiter: Limiter | None = None


def limiter() -> Limiter:
    global _limiter
    if _limiter is None:
        _limiter = RedisLimiter(settings.REDIS_URL) if settings.REDIS_URL else LocalLimiter()
    return _limiter
