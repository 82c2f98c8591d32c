"""The checks in the documented order (docs/api.md, "The checks, in order"): for each pair of neighbouring
checks, a call that fails both is refused by the earlier one.

Called through the service (`gateway_call`), asserting `GatewayError.failure`, so the pairs hold for every
door alike; the first pair (authentication) is an HTTP door's own step.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.errors import Failure, GatewayError
from chat.gateway import Route, gateway_call
from chat.usage import writer
from console.callers import caller_for_session
from models_registry.models import Deployment, DeploymentState, LlmModel, Provider
from tests.chat.conftest import World, post

OPENAI_CHAT = Route(entry="openai", mode="chat")
CHAT: dict[str, Any] = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
PANGU_CHAT: dict[str, Any] = {"messages": [{"content": "hi"}]}


def _failure(world: World, route: Route, body: dict[str, Any]) -> Failure:
    caller = caller_for_session(user=world.alice.user, project=world.alice.project)

    async def call() -> Failure:
        try:
            await gateway_call(caller=caller, route=route, body=body)
        except GatewayError as error:
            return error.failure
        finally:
            await writer().drain()
        raise AssertionError("the call was admitted")

    return asyncio.run(call())


def _pangu(world: World) -> Route:
    return Route(entry="pangu", mode="chat", project_id=world.alice.project.pk, deployment_id=world.deployment.pk)


def _provider(world: World, **fields: object) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(**fields)


def _model(world: World, **fields: object) -> None:
    LlmModel.objects.filter(pk=world.model.pk).update(**fields)


def test_1_authentication_before_2_group(world: World) -> None:
    bad = {"Authorization": "Bearer lmc-not-a-key"}
    response = post(f"{world.url}/v1/ai/no-such-group/v1/chat/completions", CHAT, bad)
    assert response.status_code == 401, response.text
    missing = post(f"{world.url}/v1/ai/no-such-group/v1/chat/completions", CHAT, {})
    assert missing.status_code == 401, missing.text


def test_2_group_before_3_model_given(world: World) -> None:
    route = Route(entry="cloudbase", mode="chat", group="no-such-group")
    assert _failure(world, route, {"messages": CHAT["messages"]}) is Failure.GROUP_NOT_FOUND


def test_3_model_given_before_4_parameters_and_4_known_model_before_5_enabled(world: World) -> None:
    _provider(world, enabled=False)
    cloudbase = Route(entry="cloudbase", mode="chat", group="sim")
    assert _failure(world, cloudbase, {"messages": "not a list"}) is Failure.MODEL_REQUIRED
    # An unknown model in a disabled group: the model is unknown first.
    assert _failure(world, cloudbase, {**CHAT, "model": "no-such-model"}) is Failure.MODEL_NOT_SUPPORTED


@pytest.mark.parametrize("switch", ["model", "group"])
def test_5_enabled_before_6_inference(world: World, switch: str) -> None:
    _model(world, cap_infer=False)
    if switch == "model":
        _model(world, enabled=False)
    else:
        _provider(world, enabled=False)
    assert _failure(world, OPENAI_CHAT, CHAT) is Failure.MODEL_DISABLED
    assert _failure(world, _pangu(world), PANGU_CHAT) is Failure.MODEL_DISABLED


def test_group_enabled_is_honoured_on_its_own(world: World) -> None:
    _provider(world, enabled=False)
    assert _failure(world, OPENAI_CHAT, CHAT) is Failure.MODEL_DISABLED
    assert _failure(world, Route(entry="cloudbase", mode="chat", group="sim"), CHAT) is Failure.MODEL_DISABLED


def test_stopped_deployment_is_honoured_and_comes_before_6_inference(world: World) -> None:
    Deployment.objects.filter(pk=world.deployment.pk).update(state=DeploymentState.STOPPED)
    assert _failure(world, _pangu(world), PANGU_CHAT) is Failure.MODEL_DISABLED
    _model(world, cap_infer=False)
    assert _failure(world, _pangu(world), PANGU_CHAT) is Failure.MODEL_DISABLED
    assert world.upstream.state.requests == []


def test_6_inference_before_7_config(world: World) -> None:
    _provider(world, base_url="")
    _model(world, cap_infer=False)
    assert _failure(world, OPENAI_CHAT, CHAT) is Failure.NO_INFERENCE
    # The interface half of the same check: chat to a text-only model.
    _model(world, cap_infer=True, supports_chat=False)
    assert _failure(world, OPENAI_CHAT, CHAT) is Failure.NO_INFERENCE


def test_7_config_before_8_parameters(world: World) -> None:
    _provider(world, base_url="")
    assert _failure(world, OPENAI_CHAT, {**CHAT, "temperature": 5}) is Failure.CONFIG_MISSING
    assert _failure(world, OPENAI_CHAT, {**CHAT, "messages": []}) is Failure.CONFIG_MISSING


def test_8_parameters_before_9_quota(world: World) -> None:
    _provider(world, token_quota=1)
    assert _failure(world, OPENAI_CHAT, {**CHAT, "temperature": 5}) is Failure.PARAM_INVALID
    assert _failure(world, OPENAI_CHAT, CHAT) is Failure.QUOTA_EXCEEDED


def test_9_quota_before_10_concurrency(world: World) -> None:
    _provider(world, token_quota=1, max_concurrency=0)
    assert _failure(world, OPENAI_CHAT, CHAT) is Failure.QUOTA_EXCEEDED
    _provider(world, token_quota=None)
    assert _failure(world, OPENAI_CHAT, CHAT) is Failure.CONCURRENCY_EXCEEDED


def test_10_concurrency_before_11_rate(world: World) -> None:
    _provider(world, rps=0.01)

    caller = caller_for_session(user=world.alice.user, project=world.alice.project)

    async def scenario() -> tuple[Failure, Failure]:
        failures = []
        await gateway_call(caller=caller, route=OPENAI_CHAT, body=CHAT)  # spends the bucket's one token
        for concurrency in (0, None):
            await asyncio.to_thread(_provider, world, max_concurrency=concurrency)
            try:
                await gateway_call(caller=caller, route=OPENAI_CHAT, body=CHAT)
            except GatewayError as error:
                failures.append(error.failure)
        await writer().drain()
        return failures[0], failures[1]

    assert asyncio.run(scenario()) == (Failure.CONCURRENCY_EXCEEDED, Failure.RATE_EXCEEDED)
    assert len(world.upstream.state.requests) == 1
