"""The token quota admits exactly quota // reservation calls, no more and no fewer, and refused calls never
reach the upstream.

The upstream here over-reports its usage (far more than any call can reserve), so every settled call is
charged exactly its reservation by the settlement clamp: the count of admitted calls is then the same
whether the calls overlap (each holds its reservation) or follow one another (each has settled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chat.models import QuotaCounter
from models_registry.models import Provider
from tests.chat.conftest import UPSTREAM_KEY, World, post, usage_records
from tests.upstreams.base import SimulatorServer, SimulatorState
from tests.upstreams.openai import OpenAIHandler

# What the call below reserves, by chat/requests.py `reservation_size`:
#   prompt bytes: "hi" = 2
#   + 8 per message: 1 message = 8
#   + max_tokens * n = 10 * 1 = 10
RESERVATION = 2 + 8 + 10 * 1
CALL = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
# used + reserved + R == quota for the last admitted call: `<=`, not `<`, admits it.
QUOTA = 50 * RESERVATION
OVER_REPORTED = {"prompt_tokens": 50_000, "completion_tokens": 50_000, "total_tokens": 100_000}


class OverReportingHandler(OpenAIHandler):
    """An OpenAI upstream that claims far more usage than the call could have spent."""

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(payload, dict) and "usage" in payload:
            payload = {**payload, "usage": OVER_REPORTED}
        super().send_json(status, payload, headers)


@pytest.fixture
def upstream() -> Iterator[SimulatorServer]:
    server = SimulatorServer(OverReportingHandler, SimulatorState(api_key=UPSTREAM_KEY)).start()
    yield server
    server.stop()


def _quota(world: World, quota: int) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(token_quota=quota)


def _check_outcome(world: World, responses: list[httpx.Response], *, quota: int) -> None:
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == quota // RESERVATION, [r.status_code for r in responses]
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} == {(429, "insufficient_quota")}
    # Refused calls never reached the upstream.
    assert len(world.upstream.state.requests) == len(ok)
    records = usage_records(len(responses))
    assert len(records) == len(responses)
    assert sorted(r.error_code for r in records) == sorted(["QUOTA_EXCEEDED"] * len(refused) + [""] * len(ok))
    counter = QuotaCounter.objects.get(provider=world.provider)
    # The clamp: each call charged its reservation, not the 100 000 tokens the upstream claimed.
    assert (counter.used, counter.reserved) == (len(ok) * RESERVATION, 0)


@pytest.mark.parametrize("quota", [QUOTA, QUOTA + RESERVATION - 1])
def test_concurrent_calls_admitted_exactly_quota_over_reservation(world: World, quota: int) -> None:
    _quota(world, quota)
    # Every admitted call holds its reservation while the later ones are checked.
    world.faults.first_token_delay = 1.0
    calls = quota // RESERVATION + 10

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(
                *[
                    client.post(f"{world.url}/v1/chat/completions", json=CALL, headers=world.headers())
                    for _ in range(calls)
                ]
            )

    _check_outcome(world, asyncio.run(burst()), quota=quota)


def test_sequential_calls_admitted_exactly_quota_over_reservation(world: World) -> None:
    _quota(world, QUOTA)
    responses = []
    for _ in range(QUOTA // RESERVATION + 3):
        responses.append(post(f"{world.url}/v1/chat/completions", CALL, world.headers()))
        usage_records(len(responses))  # settled before the next call
    _check_outcome(world, responses, quota=QUOTA)


def test_the_last_token_of_the_quota_is_usable(world: World) -> None:
    # used + reserved + R == quota exactly: admitted; one token less of quota: refused.
    _quota(world, RESERVATION)
    assert post(f"{world.url}/v1/chat/completions", CALL, world.headers()).status_code == 200
    usage_records(1)
    _quota(world, 2 * RESERVATION - 1)
    refused = post(f"{world.url}/v1/chat/completions", CALL, world.headers())
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert len(world.upstream.state.requests) == 1
