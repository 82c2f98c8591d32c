"""Parameter limits at their exact boundaries, and the default max_tokens sent upstream under a quota.

OpenAI and CloudBase: `n` 1 to 4 unary and exactly 1 streamed, `stop` up to 4 strings (chat/requests.py
MAX_N, MAX_STOP_SEQUENCES). The accepted side is asserted on what reached the upstream; a refused call
never reaches it.
"""

from __future__ import annotations

from typing import Any

import pytest

from chat.requests import DEFAULT_MAX_TOKENS, MAX_N, MAX_STOP_SEQUENCES
from models_registry.models import LlmModel, Provider
from tests.chat.conftest import World, post, usage_records

CHAT: dict[str, Any] = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


def test_the_documented_limits() -> None:
    # docs/api.md: "n (... other dialects 1-4 unary, 1 streamed)", "stop (<= 4 strings)", "1024 when none".
    assert (MAX_N, MAX_STOP_SEQUENCES, DEFAULT_MAX_TOKENS) == (4, 4, 1024)


def _paths(world: World) -> list[str]:
    return [f"{world.url}/v1/chat/completions", f"{world.url}/v1/ai/sim/v1/chat/completions"]


def _refused(world: World, path: str, body: dict[str, Any], param: str) -> None:
    before = len(world.upstream.state.requests)
    response = post(path, body, world.headers())
    assert response.status_code == 400, response.text
    if "/v1/ai/" not in path:
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_parameter", param)
    assert len(world.upstream.state.requests) == before  # never reached the upstream


def _accepted(world: World, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = post(path, body, world.headers())
    assert response.status_code == 200, response.text
    sent = world.upstream.state.requests[-1].body
    assert isinstance(sent, dict)
    return sent


@pytest.mark.parametrize("dialect", [0, 1], ids=["openai", "cloudbase"])
def test_n_unary_is_1_to_4(world: World, dialect: int) -> None:
    path = _paths(world)[dialect]
    for n in (1, 4):
        sent = _accepted(world, path, {**CHAT, "n": n})
        assert sent.get("n", 1) == n
        assert len(post(path, {**CHAT, "n": n}, world.headers()).json()["choices"]) == n
    for n in (0, 5):
        _refused(world, path, {**CHAT, "n": n}, "n")


@pytest.mark.parametrize("dialect", [0, 1], ids=["openai", "cloudbase"])
def test_n_streamed_is_exactly_1(world: World, dialect: int) -> None:
    path = _paths(world)[dialect]
    response = post(path, {**CHAT, "n": 1, "stream": True}, world.headers())
    assert response.status_code == 200 and response.text.rstrip().endswith("[DONE]")
    _refused(world, path, {**CHAT, "n": 2, "stream": True}, "n")
    records = usage_records(2)
    assert [r.error_code for r in records] == ["", "N_STREAM_INVALID"]


@pytest.mark.parametrize("dialect", [0, 1], ids=["openai", "cloudbase"])
def test_stop_up_to_4_strings(world: World, dialect: int) -> None:
    path = _paths(world)[dialect]
    four = ["a1", "b2", "c3", "d4"]
    assert _accepted(world, path, {**CHAT, "stop": four})["stop"] == four
    assert _accepted(world, path, {**CHAT, "stop": "a1"})["stop"] in ("a1", ["a1"])
    _refused(world, path, {**CHAT, "stop": [*four, "e5"]}, "stop")
    records = usage_records(3)
    assert [r.error_code for r in records] == ["", "", "PARAM_INVALID"]


def test_default_max_tokens_is_sent_upstream_under_a_quota(world: World) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(token_quota=1_000_000)
    sent = _accepted(world, _paths(world)[0], CHAT)
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS == 1024
    # A model whose context is smaller than the default gets its context as the cap.
    LlmModel.objects.filter(pk=world.model.pk).update(context_length=600)
    assert _accepted(world, _paths(world)[1], CHAT)["max_tokens"] == 600
    # The caller's own value is sent as given.
    assert _accepted(world, _paths(world)[0], {**CHAT, "max_tokens": 7})["max_tokens"] == 7
