"""chat/limits.py's LocalLimiter with a hand-driven clock: slots exactly at their limit and given back,
and the token bucket's burst, refill and wait worked out by hand (capacity max(1, rps), refilled at rps
per second). Written against the surviving mutants of `make mutation`.
"""

from __future__ import annotations

import asyncio

import pytest

from chat import limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(limits.time, "monotonic", fake)
    return fake


def test_slots_at_the_limit_and_given_back() -> None:
    async def scenario() -> None:
        limiter = limits.LocalLimiter()
        assert await limiter.active_slots(1) == 0
        first = await limiter.acquire_slot(1, 2, 30.0)
        second = await limiter.acquire_slot(1, 2, 30.0)
        assert first is not None and second is not None and first != second
        assert len(first) == 32 and int(first, 16) >= 0
        assert await limiter.acquire_slot(1, 2, 30.0) is None
        assert await limiter.active_slots(1) == 2
        # Another provider has its own slots.
        assert await limiter.acquire_slot(2, 1, 30.0) is not None
        assert await limiter.acquire_slot(2, 1, 30.0) is None
        await limiter.release_slot(1, first)
        assert await limiter.active_slots(1) == 1
        assert await limiter.active_slots(2) == 1
        await limiter.release_slot(1, "not-a-slot")
        await limiter.release_slot(3, "never-held")
        assert await limiter.active_slots(3) == 0
        assert await limiter.acquire_slot(1, 2, 30.0) is not None
        assert await limiter.acquire_slot(1, 2, 30.0) is None

    asyncio.run(scenario())


def test_a_new_limiter_holds_nothing() -> None:
    limiter = limits.LocalLimiter()
    assert (limiter.slots, limiter.buckets) == ({}, {})


def test_rate_burst_refill_and_wait(clock: Clock) -> None:
    async def scenario() -> None:
        limiter = limits.LocalLimiter()
        # rps 3: a burst of 3, then the 4th waits a third of a second for one token.
        assert [await limiter.take_rate(7, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert await limiter.take_rate(7, 3.0) == 1 / 3
        # Half a second refills 1.5 tokens: one call goes, the next waits for the missing half.
        clock.now += 0.5
        assert await limiter.take_rate(7, 3.0) == 0.0
        assert await limiter.take_rate(7, 3.0) == 0.5 / 3
        # Ten idle seconds refill only up to the capacity of 3.
        clock.now += 10
        assert [await limiter.take_rate(7, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert await limiter.take_rate(7, 3.0) > 0
        # Another provider has its own full bucket.
        assert await limiter.take_rate(8, 3.0) == 0.0

    asyncio.run(scenario())


def test_rate_below_one_per_second(clock: Clock) -> None:
    async def scenario() -> None:
        limiter = limits.LocalLimiter()
        # rps 0.5: a capacity of 1 (never less), then one call per two seconds.
        assert await limiter.take_rate(1, 0.5) == 0.0
        assert await limiter.take_rate(1, 0.5) == 2.0
        clock.now += 1
        assert await limiter.take_rate(1, 0.5) == 1.0
        # Exactly one token after two seconds in all: taken (a full token is enough).
        clock.now += 1
        assert await limiter.take_rate(1, 0.5) == 0.0
        assert limiter.buckets[1] == (0.0, clock.now)

    asyncio.run(scenario())


def test_a_refused_rate_keeps_its_partial_token(clock: Clock) -> None:
    async def scenario() -> None:
        limiter = limits.LocalLimiter()
        assert await limiter.take_rate(1, 2.0) == 0.0
        assert await limiter.take_rate(1, 2.0) == 0.0
        clock.now += 0.25
        assert await limiter.take_rate(1, 2.0) == 0.25
        assert limiter.buckets[1] == (0.5, clock.now)
        clock.now += 0.25
        assert await limiter.take_rate(1, 2.0) == 0.0

    asyncio.run(scenario())
