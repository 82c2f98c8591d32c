"""Upstream faults become clear errors in the caller's dialect and free the slot; limits hold exactly."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from chat import limits
from chat.models import QuotaCounter, UsageRecord
from models_registry.models import Provider
from tests.chat.conftest import World, post, usage_records

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


def _limit(world: World, **fields: object) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(**fields)


def _slots(world: World) -> int:
    return asyncio.run(limits.limiter().active_slots(world.provider.pk))


@pytest.fixture
def limited(world: World) -> World:
    _limit(world, max_concurrency=2)
    return world


@pytest.mark.parametrize(
    ("fault", "value", "status", "openai_code", "pangu_code"),
    [
        ("status", 500, 502, "upstream_error", "PANGU.0031"),
        ("status", 503, 502, "upstream_error", "PANGU.0031"),
        ("status", 429, 429, "upstream_rate_limited", "APIG.0308"),
        ("error_in_200", True, 502, "upstream_error", "PANGU.0031"),
        ("first_token_delay", 2.0, 504, "upstream_timeout", "APIG.0201"),
    ],
)
def test_unary_faults(
    limited: World, fault: str, value: object, status: int, openai_code: str, pangu_code: str
) -> None:
    world = limited
    _limit(world, timeout_seconds=1)
    setattr(world.faults, fault, value)
    for stream in (False, True):
        response = post(f"{world.url}/v1/chat/completions", {**CHAT, "stream": stream}, world.headers())
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == openai_code
        if status == 429:
            assert response.headers["Retry-After"] == "1"
        pangu = post(world.pangu_path(), {"messages": [{"content": "hi"}], "stream": stream}, world.headers())
        assert pangu.status_code == status and pangu.json()["error_code"] == pangu_code
    assert _slots(world) == 0
    assert len(usage_records(4, status="error")) == 4


@pytest.mark.parametrize("fault", ["malformed_sse", "drop_after"])
def test_mid_stream_faults_end_with_an_error_event(limited: World, fault: str) -> None:
    world = limited
    setattr(world.faults, fault, True if fault == "malformed_sse" else 3)
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=world.headers(), timeout=15
    ) as response:
        assert response.status_code == 200
        events = [e for e in response.read().decode().split("\n\n") if e]
    last = json.loads(events[-1][len("data: ") :])
    assert last["error"]["code"] == "upstream_error" and events[-1] != "data: [DONE]"
    with httpx.stream(
        "POST",
        world.pangu_path(),
        json={"messages": [{"content": "hi"}], "stream": True},
        headers=world.headers(),
        timeout=15,
    ) as response:
        events = [e for e in response.read().decode().split("\n\n") if e]
    assert json.loads(events[-1][len("data:") :])["error_code"] == "PANGU.0031"
    assert _slots(world) == 0


def test_client_disconnect_cancels_upstream_and_frees_slot(limited: World) -> None:
    world = limited
    world.faults.token_delay = 0.2
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=world.headers(), timeout=15
    ) as response:
        pieces = response.iter_raw()  # held: a dropped iterator would close the connection early
        next(pieces)  # the first piece arrives
        assert _slots(world) == 1
        response.close()  # then the client goes away: the connection closes
    left = time.monotonic()
    while _slots(world) and time.monotonic() - left < 1.0:
        time.sleep(0.02)
    assert _slots(world) == 0, "the slot was not freed within 1 s of the disconnect"
    while not world.upstream.state.disconnects and time.monotonic() - left < 1.0:
        time.sleep(0.02)
    assert world.upstream.state.disconnects == 1, "the upstream call was not cancelled within 1 s"
    deadline = time.monotonic() + 2
    while not UsageRecord.objects.filter(status="cancelled").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    record = UsageRecord.objects.get()
    assert record.status == "cancelled" and record.stream
    # The upstream call was cut too: the simulator saw its client vanish long before the 10 pieces.
    assert record.latency_ms < 1500


def test_concurrency_limit_admits_exactly_n(world: World) -> None:
    _limit(world, max_concurrency=3)
    world.faults.first_token_delay = 0.6

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=20) as client:
            return await asyncio.gather(
                *[
                    client.post(f"{world.url}/v1/ai/sim/v1/chat/completions", json=CHAT, headers=world.headers())
                    for _ in range(10)
                ]
            )

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 7, codes
    refused = [r.json() for r in responses if r.status_code == 429]
    assert {r["code"] for r in refused} == {"EXCEED_CONCURRENT_REQUEST_LIMIT"}
    assert _slots(world) == 0
    world.faults.first_token_delay = 0
    assert post(f"{world.url}/v1/chat/completions", CHAT, world.headers()).status_code == 200


def test_rate_limit_answers_429_with_retry_after(world: World) -> None:
    _limit(world, rps=1)
    first = post(f"{world.url}/v1/chat/completions", CHAT, world.headers())
    second = post(world.pangu_path(), {"messages": [{"content": "hi"}]}, world.headers())
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"
    assert second.json()["error_code"] == "PANGU.3267"


def test_quota_race_never_overspends(world: World) -> None:
    quota = 1000
    _limit(world, token_quota=quota)
    body = {**CHAT, "max_tokens": 10}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(
                *[
                    client.post(f"{world.url}/v1/chat/completions", json=body, headers=world.headers())
                    for _ in range(200)
                ]
            )

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    others = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 429)]
    assert not others, others[:3]
    assert len(ok) + len(refused) == 200 and ok and refused
    assert {r.json()["error"]["code"] for r in refused} == {"insufficient_quota"}
    assert len(usage_records(200)) == 200  # every call settled
    counter = QuotaCounter.objects.get(provider=world.provider)
    spent = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert counter.reserved == 0
    assert counter.used == spent <= quota
    # Once spent, the next call is refused before reaching the upstream.
    before = len(world.upstream.state.requests)
    while post(f"{world.url}/v1/chat/completions", body, world.headers()).status_code == 200:
        pass
    assert QuotaCounter.objects.get(provider=world.provider).used <= quota
    assert len(world.upstream.state.requests) >= before


def test_monthly_quota_counts_per_month(world: World) -> None:
    _limit(world, token_quota=100000, quota_period="monthly")
    assert post(f"{world.url}/v1/chat/completions", CHAT, world.headers()).status_code == 200
    usage_records(1)  # settled with the record, just after the answer
    counter = QuotaCounter.objects.get(provider=world.provider)
    assert len(counter.period) == 7 and counter.period[4] == "-" and counter.used > 0
