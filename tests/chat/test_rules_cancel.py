"""A call's end however it comes, and switches in force at once: a client that leaves during a unary call or
before the first streamed piece frees its slot and is recorded cancelled; a model switched off is refused on
the very next inference call; a revoked key is refused once the one-second key cache has passed; the
upstream's own Retry-After reaches the caller."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from chat import limits
from chat.models import UsageRecord
from console import services as console_services
from console.models import ApiKey
from models_registry import services as registry_services
from models_registry.models import Provider
from tests.chat.conftest import World, post, usage_records
from tests.conftest import wait_until

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


def _slots(world: World) -> int:
    return asyncio.run(limits.limiter().active_slots(world.provider.pk))


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "before-first-piece"])
def test_a_client_that_leaves_frees_the_slot_and_is_recorded_cancelled(world: World, stream: bool) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(max_concurrency=1)
    world.faults.first_token_delay = 2.0  # the upstream takes its time over the first byte
    with pytest.raises(httpx.ReadTimeout):
        # The client gives up after 0.4 s and closes its connection.
        httpx.post(
            f"{world.url}/v1/chat/completions",
            json={**CHAT, "stream": stream},
            headers=world.headers(),
            timeout=httpx.Timeout(10, read=0.4),
        )
    left = time.monotonic()
    assert wait_until(lambda: _slots(world) == 0, timeout=1.0), "the slot was not freed within 1 s of the disconnect"
    assert wait_until(lambda: UsageRecord.objects.exists(), timeout=1.0)
    record = UsageRecord.objects.get()
    assert (record.status, record.stream) == ("cancelled", stream)
    # Recorded before the upstream would have answered: the call ended with its client.
    assert time.monotonic() - left < 1.5
    world.faults.first_token_delay = 0
    assert post(f"{world.url}/v1/chat/completions", CHAT, world.headers()).status_code == 200


def test_a_model_switched_off_is_refused_on_the_very_next_inference_call(world: World) -> None:
    assert post(f"{world.url}/v1/chat/completions", CHAT, world.headers()).status_code == 200
    registry_services.model_set_enabled(model=world.model, enabled=False, by=None)
    refused = post(f"{world.url}/v1/chat/completions", CHAT, world.headers())
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_disabled"
    registry_services.model_set_enabled(model=world.model, enabled=True, by=None)
    assert post(f"{world.url}/v1/chat/completions", CHAT, world.headers()).status_code == 200
    assert [r.error_code for r in usage_records(3)] == ["", "MODEL_DISABLED", ""]
    assert len(world.upstream.state.requests) == 2


def test_a_revoked_key_is_refused_once_the_cache_second_has_passed(world: World) -> None:
    assert post(f"{world.url}/v1/chat/completions", CHAT, world.headers()).status_code == 200  # now cached
    console_services.api_key_revoke(key=ApiKey.objects.get(project=world.alice.project), by=world.alice.user)
    time.sleep(1.1)  # console/callers.py TOKEN_CACHE_SECONDS = 1.0, and a margin
    refused = post(f"{world.url}/v1/chat/completions", CHAT, world.headers())
    assert refused.status_code == 401, refused.text
    assert len(world.upstream.state.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_the_upstreams_own_retry_after_is_passed_through(world: World, stream: bool) -> None:
    world.faults.status = 429
    world.faults.retry_after = 7
    response = post(f"{world.url}/v1/chat/completions", {**CHAT, "stream": stream}, world.headers())
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert [r.error_code for r in usage_records(1)] == ["UPSTREAM_RATE_LIMITED"]
