"""The gateway service called without HTTP, as the playground socket will call it: a session caller gets
the same checks, limits, quota settlement and usage records as an API call, marked with its entry point."""

from __future__ import annotations

import asyncio

import pytest

from chat.errors import Failure, GatewayError
from chat.gateway import Answer, Route, Stream, gateway_call
from chat.models import QuotaCounter, UsageRecord
from chat.usage import writer
from console.callers import Caller, CallerRejected, Rejection, caller_for_session
from console.models import Role
from models_registry.models import LlmModel, Provider
from tests.chat.conftest import World, usage_records
from tests.factories import add_member, make_project, make_user

PLAYGROUND_CHAT = Route(entry="playground", mode="chat")
REPLY_WORDS = 10  # the simulator's reply, "Hello from the simulator. This answer streams word by word."


def _body(**extra: object) -> dict[str, object]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}], **extra}


def _session(world: World) -> Caller:
    return caller_for_session(user=world.alice.user, project=world.alice.project)


async def _settled(coro: object) -> object:
    """Run a gateway coroutine and wait for its usage batch, which is written off the request path."""
    try:
        return await coro  # type: ignore[misc]
    finally:
        await writer().drain()


def test_session_caller_streams_and_is_recorded_as_playground(world: World) -> None:
    caller = _session(world)
    assert caller.via == "session" and caller.role == Role.ADMIN

    async def chat() -> tuple[str, Stream]:
        stream = await gateway_call(caller=caller, route=PLAYGROUND_CHAT, body=_body(stream=True))
        assert isinstance(stream, Stream)
        text = "".join([delta.text async for delta in stream])
        await writer().drain()
        return text, stream

    text, stream = asyncio.run(chat())
    assert text == world.upstream.state.reply
    assert stream.usage is not None and stream.usage.completion_tokens == REPLY_WORDS
    assert stream.ttft_ms is not None and stream.ttft_ms > 0
    [record] = usage_records(1)
    assert (record.dialect, record.status, record.stream, record.http_status) == ("playground", "ok", True, 200)
    assert record.user_id == world.alice.user.pk and record.api_key_id is None
    assert record.project_id == world.alice.project.pk and record.model_id == world.model.pk
    assert (record.completion_tokens, record.total_tokens) == (REPLY_WORDS, stream.usage.total_tokens)
    assert record.request_id == stream.request_id


def test_unary_answer_through_the_service(world: World) -> None:
    answer = asyncio.run(_settled(gateway_call(caller=_session(world), route=PLAYGROUND_CHAT, body=_body())))
    assert isinstance(answer, Answer)
    assert answer.completion.texts == [world.upstream.state.reply]
    assert answer.usage.completion_tokens == REPLY_WORDS
    [record] = usage_records(1)
    assert (record.dialect, record.status, record.stream) == ("playground", "ok", False)


def test_same_checks_in_the_same_order_and_the_refusal_is_recorded(world: World) -> None:
    LlmModel.objects.filter(pk=world.model.pk).update(enabled=False)
    with pytest.raises(GatewayError) as refused:
        asyncio.run(_settled(gateway_call(caller=_session(world), route=PLAYGROUND_CHAT, body=_body())))
    assert refused.value.failure is Failure.MODEL_DISABLED
    assert world.upstream.state.requests == []  # the upstream was never reached
    [record] = usage_records(1)
    assert (record.dialect, record.status, record.error_code, record.http_status) == (
        "playground",
        "error",
        "MODEL_DISABLED",
        403,
    )
    # No model named: the check before it fails first, with its own code.
    with pytest.raises(GatewayError) as missing:
        asyncio.run(_settled(gateway_call(caller=_session(world), route=PLAYGROUND_CHAT, body={"messages": []})))
    assert missing.value.failure is Failure.MODEL_REQUIRED


def test_operators_and_strangers_get_no_session_caller(world: World) -> None:
    carol = make_user("carol")
    add_member(project=world.alice.project, user=carol, role=Role.OPERATOR)
    with pytest.raises(CallerRejected) as operator:
        caller_for_session(user=carol, project=world.alice.project)
    assert operator.value.reason is Rejection.FORBIDDEN
    assert caller_for_session(user=carol, project=world.alice.project, allow_operator=True).role == Role.OPERATOR
    bob = make_user("bob")
    make_project(name="bob-project", owner=bob)
    with pytest.raises(CallerRejected) as stranger:
        caller_for_session(user=bob, project=world.alice.project)
    assert stranger.value.reason is Rejection.INVALID


def test_limits_and_quota_hold_for_the_service_and_stop_frees_everything(world: World) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(max_concurrency=1, token_quota=100_000)
    world.faults.token_delay = 0.05
    caller = _session(world)

    async def scenario() -> tuple[GatewayError, list[str]]:
        first = await gateway_call(caller=caller, route=PLAYGROUND_CHAT, body=_body(stream=True, max_tokens=50))
        assert isinstance(first, Stream)
        # The user presses stop after the first piece, and the page has not closed the stream yet.
        pieces = aiter(first)
        seen = [(await anext(pieces)).text]
        with pytest.raises(GatewayError) as busy:
            await gateway_call(caller=caller, route=PLAYGROUND_CHAT, body=_body(stream=True))
        await first.aclose()
        world.faults.token_delay = 0
        again = await gateway_call(caller=caller, route=PLAYGROUND_CHAT, body=_body())
        assert isinstance(again, Answer)
        await writer().drain()
        return busy.value, seen

    busy, seen = asyncio.run(scenario())
    assert busy.failure is Failure.CONCURRENCY_EXCEEDED and busy.retry_after == 1
    assert seen == ["Hello"]
    busy_record, stopped, answered = usage_records(3)  # in the order they ended
    assert [r.status for r in (busy_record, stopped, answered)] == ["error", "cancelled", "ok"]
    assert busy_record.error_code == "CONCURRENCY_EXCEEDED" and busy_record.total_tokens == 0
    # The stopped call is charged the one piece it got (estimated) plus its prompt; the answered one
    # what the upstream reported. Nothing stays reserved.
    counter = QuotaCounter.objects.get(provider=world.provider)
    assert counter.reserved == 0
    assert counter.used == stopped.total_tokens + answered.total_tokens
    assert stopped.completion_tokens == 1 and stopped.usage_estimated is True
    assert answered.completion_tokens == REPLY_WORDS and answered.usage_estimated is False
    assert UsageRecord.objects.count() == 3
