"""Unmodified OpenAI client code works against the console by changing only base URL and key."""

from __future__ import annotations

import openai
import pytest

from tests.chat.conftest import UPSTREAM_KEY, World, usage_records


@pytest.mark.parametrize("base", ["/v1", "/v1/ai/sim/v1"], ids=["openai", "cloudbase"])
def test_chat_unary_and_stream(world: World, base: str) -> None:
    client = openai.OpenAI(base_url=world.url + base, api_key=world.key, max_retries=0)
    answer = client.chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": "Say hello"}], max_tokens=5, temperature=0.2
    )
    assert answer.choices[0].message.content == "Hello from the simulator. This"
    assert answer.usage is not None and answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens == 2
    sent = world.upstream.state.requests[-1]
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # the provider's key, not the caller's
    assert sent.body["model"] == "sim-chat" and sent.body["max_tokens"] == 5 and sent.body["temperature"] == 0.2

    pieces = []
    stream = client.chat.completions.create(
        model="sim-chat",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == world.upstream.state.reply
    assert usage is not None and usage.completion_tokens == 10
    records = usage_records(2)
    assert [(r.stream, r.status, r.completion_tokens) for r in records] == [(False, "ok", 5), (True, "ok", 10)]
    assert all(r.dialect == ("openai" if base == "/v1" else "cloudbase") for r in records)
    assert records[1].ttft_ms is not None and records[1].api_key_id is not None


def test_text_completions_and_models(world: World) -> None:
    client = openai.OpenAI(base_url=world.url + "/v1", api_key=world.key, max_retries=0)
    answer = client.completions.create(model="sim-text", prompt="Once upon a time", max_tokens=3)
    assert answer.choices[0].text == "Hello from the"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(model="sim-text", prompt="Once", stream=True) if c.choices
    )
    assert streamed == world.upstream.state.reply
    ids = [m.id for m in client.models.list()]
    assert ids == ["sim-chat", "sim-text"]


def test_sdk_sees_errors_as_exceptions(world: World) -> None:
    client = openai.OpenAI(base_url=world.url + "/v1", api_key=world.key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=world.url + "/v1", api_key="lmc-" + "x" * 48, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "x"}])
    cloudbase = openai.OpenAI(base_url=world.url + "/v1/ai/sim/v1", api_key=world.key, max_retries=0)
    world.model.enabled = False
    world.model.save()
    with pytest.raises(openai.PermissionDeniedError) as denied:
        cloudbase.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["code"] == "AI_MODEL_DISABLED"  # type: ignore[index]
