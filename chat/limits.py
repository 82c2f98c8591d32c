"""Concurrency slots and request rates per provider, shared by every web process.

Scaled runtime: Redis, with Lua scripts so each check-and-take is one atomic step across any
number of daphne processes. Embedded runtime: one web process, so in-process state is exact.
Token quotas live in the database (see `quota`), because they must survive restarts.

A Redis slot is a lease, not a counter, so a process that dies holding slots frees them when their
leases end. A lease is short (LEASE_SECONDS) and the process renews every lease it holds at a third
of that while its calls run: a stream that outlives one lease keeps its slot, and a dead process's
slots are free again within LEASE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Protocol

from django.conf import settings

logger = logging.getLogger(__name__)

# How long a Redis slot lasts unless renewed. A module constant so tests can shrink it.
LEASE_SECONDS = 30.0
# A Redis that stops answering must refuse calls, not hold each one for ever.
REDIS_TIMEOUT_SECONDS = 2.0

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


class LimiterUnavailable(Exception):
    """The shared limits store could not be asked: no slot or rate can be confirmed."""


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
    """Every method raises LimiterUnavailable, never a Redis error, when Redis cannot be reached."""

    def __init__(self, url: str, *, prefix: str = "lmc") -> None:
        self.url = url
        self.prefix = prefix
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object] = weakref.WeakKeyDictionary()
        # Per event loop (each has its own client): the slots its calls hold (slot -> provider id),
        # and the one task that renews their leases.
        self._held: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, int]] = weakref.WeakKeyDictionary()
        self._renewers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )

    def _key(self, provider_id: int) -> str:
        return f"{self.prefix}:slots:{provider_id}"

    def _redis(self):  # type: ignore[no-untyped-def]
        import redis.asyncio as redis

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = redis.Redis.from_url(
                self.url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
            )
            self._clients[loop] = client
        return client

    async def acquire_slot(self, provider_id: int, limit: int, lease_seconds: float) -> str | None:
        now = time.time()
        slot = uuid.uuid4().hex
        with _unavailable_as_ours():
            ok = await self._redis().eval(
                _SLOT_SCRIPT,
                1,
                self._key(provider_id),
                now,
                limit,
                now + lease_seconds,
                slot,
                math.ceil(lease_seconds) + 60,
            )
        if ok != 1:
            return None
        loop = asyncio.get_running_loop()
        held = self._held.setdefault(loop, {})
        held[slot] = provider_id
        renewer = self._renewers.get(loop)
        if renewer is None or renewer.done():
            self._renewers[loop] = loop.create_task(self._renew(held, lease_seconds), name="slot-lease-renewal")
        return slot

    async def _renew(self, held: dict[str, int], lease_seconds: float) -> None:
        """Extend every lease this loop holds, each third of a lease, until it holds none. XX: a lease
        that ended meanwhile (its slot taken by another call) is not brought back."""
        while held:
            await asyncio.sleep(lease_seconds / 3)
            now = time.time()
            try:
                pipe = self._redis().pipeline(transaction=False)
                for slot, provider_id in list(held.items()):
                    pipe.zadd(self._key(provider_id), {slot: now + lease_seconds}, xx=True)
                    pipe.expire(self._key(provider_id), math.ceil(lease_seconds) + 60)
                await pipe.execute()
            except Exception as exc:  # the next round tries again; a lease lasts three rounds
                logger.warning("could not renew %d concurrency slot leases: %s", len(held), exc)

    async def release_slot(self, provider_id: int, slot: str) -> None:
        loop = asyncio.get_running_loop()
        held = self._held.get(loop, {})
        held.pop(slot, None)  # first: a failing Redis must not keep the lease renewed
        if not held and (renewer := self._renewers.pop(loop, None)) is not None:
            renewer.cancel()
        with _unavailable_as_ours():
            await self._redis().zrem(self._key(provider_id), slot)

    async def take_rate(self, provider_id: int, rps: float) -> float:
        with _unavailable_as_ours():
            wait_ms = await self._redis().eval(
                _RATE_SCRIPT, 1, f"{self.prefix}:rate:{provider_id}", rps, int(time.time() * 1000)
            )
        return float(wait_ms) / 1000

    async def active_slots(self, provider_id: int) -> int:
        redis = self._redis()
        with _unavailable_as_ours():
            await redis.zremrangebyscore(self._key(provider_id), "-inf", time.time())
            return int(await redis.zcard(self._key(provider_id)))


@contextlib.contextmanager
def _unavailable_as_ours() -> Iterator[None]:
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:
        raise LimiterUnavailable(f"the limits store is unreachable: {type(exc).__name__}") from exc


_limiter: Limiter | None = None


def limiter() -> Limiter:
    global _limiter
    if _limiter is None:
        _limiter = RedisLimiter(settings.REDIS_URL) if settings.REDIS_URL else LocalLimiter()
    return _limiter
