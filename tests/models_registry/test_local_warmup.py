"""The local adapter while the embedded model server starts: a call waits a bounded time for it, then
fails as "unavailable" with a Retry-After and words that say the model is starting, never as a
generic connect failure. Against real loopback servers that start late or say they are loading."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from models_registry.models import Provider, ProviderKind
from models_registry.providers.base import InferenceRequest, UpstreamError
from models_registry.providers.local import STARTING_RETRY_AFTER, LocalAdapter
from tests.conftest import free_port, run_adapter
from tests.upstreams.base import SimulatorServer
from tests.upstreams.local_llm import LocalLlmState, serve

REPLY = "Hello from the simulator. This answer streams word by word."


async def call(adapter: LocalAdapter, shape: str) -> str:
    request = InferenceRequest(mode="chat", model="sim-chat", messages=[{"role": "user", "content": "hi"}])
    if shape == "complete":
        return (await adapter.complete(request)).texts[0]
    request.stream = True
    return "".join([piece.text async for piece in adapter.stream(request)])


def adapter_on(port: int) -> LocalAdapter:
    return LocalAdapter(Provider(kind=ProviderKind.LOCAL, base_url=f"http://127.0.0.1:{port}/v1"))


@pytest.fixture(autouse=True)
def _local_llm_on(settings: Settings) -> None:
    settings.LOCAL_LLM = "on"
    settings.LOCAL_LLM_WARMUP_WAIT = 5.0


def start_later(servers: list[SimulatorServer], delay: float, **kwargs: Any) -> threading.Timer:
    timer = threading.Timer(delay, lambda: servers.append(serve(**kwargs)))
    timer.start()
    return timer


@pytest.mark.parametrize("shape", ["complete", "stream"])
def test_a_call_waits_for_a_server_that_starts_listening(servers: list[SimulatorServer], shape: str) -> None:
    port = free_port()
    timer = start_later(servers, 1.0, port=port)
    started = time.monotonic()
    try:
        text = run_adapter(call(adapter_on(port), shape))
    finally:
        timer.join()
    assert text == REPLY
    assert time.monotonic() - started >= 0.9  # it did wait for the server, not find one by chance


@pytest.mark.parametrize("shape", ["complete", "stream"])
def test_a_call_gives_up_on_a_server_that_never_listens(settings: Settings, shape: str) -> None:
    settings.LOCAL_LLM_WARMUP_WAIT = 1.0
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        run_adapter(call(adapter_on(free_port()), shape))
    elapsed = time.monotonic() - started
    assert caught.value.kind == "unavailable"
    assert caught.value.retry_after == STARTING_RETRY_AFTER == 5
    assert "local model is starting" in str(caught.value) and "cannot connect" not in str(caught.value)
    assert 0.9 <= elapsed < 3.0


@pytest.mark.parametrize("shape", ["complete", "stream"])
def test_a_call_waits_through_loading_answers(servers: list[SimulatorServer], shape: str) -> None:
    server = serve(loading=True)
    servers.append(server)
    assert isinstance(server.state, LocalLlmState)
    state = server.state
    timer = threading.Timer(1.0, lambda: setattr(state, "loading", False))
    timer.start()
    try:
        text = run_adapter(call(adapter_on(server.server_address[1]), shape))
    finally:
        timer.join()
    assert text == REPLY
    assert len(state.requests) >= 2  # refused while loading, answered once loaded


def test_a_server_loading_past_the_wait_gives_its_own_retry_after(
    settings: Settings, servers: list[SimulatorServer]
) -> None:
    settings.LOCAL_LLM_WARMUP_WAIT = 0.5
    server = serve(loading=True)
    servers.append(server)
    with pytest.raises(UpstreamError) as caught:
        run_adapter(call(adapter_on(server.server_address[1]), "complete"))
    assert caught.value.kind == "unavailable" and caught.value.retry_after == 3
    assert "local model is starting" in str(caught.value)


def test_other_failures_are_not_waited_for(servers: list[SimulatorServer]) -> None:
    # A 503 that is not "loading" (the real server's model_load_failed, say) will not heal by waiting.
    server = serve()
    servers.append(server)
    server.state.faults.status = 503
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        run_adapter(call(adapter_on(server.server_address[1]), "complete"))
    assert caught.value.kind == "unavailable" and caught.value.retry_after is None
    assert time.monotonic() - started < 1.0 and len(server.state.requests) == 1


def test_no_wait_when_the_embedded_server_is_off(settings: Settings) -> None:
    settings.LOCAL_LLM = "off"
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        run_adapter(call(adapter_on(free_port()), "complete"))
    assert caught.value.kind == "unavailable" and caught.value.retry_after is None
    assert "LOCAL_LLM=off" in str(caught.value)
    assert time.monotonic() - started < 1.0
