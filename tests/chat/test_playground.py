"""The playground's websocket (chat/consumers.py, docs/playground.md) against the OpenAI upstream
simulator: every turn is one gateway call with the entry point "playground", so it gets the same
checks, limits, quota and usage records as an API call, and each refusal arrives with its gateway code.

The consumer is driven with `WebsocketCommunicator`, a signed-in user put in its scope as
AuthMiddlewareStack would; the authentication and origin tests go through console.asgi.application.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client

from chat import selectors, services
from chat.consumers import CLOSE_UNAUTHENTICATED, PlaygroundConsumer
from chat.models import Conversation, QuotaCounter, Turn, UsageRecord
from chat.usage import writer
from console import callers
from console.current import SESSION_KEY
from console.models import Membership, Role
from models_registry import services as registry_services
from models_registry.models import LlmModel, Provider
from tests.chat.conftest import World
from tests.conftest import wait_until
from tests.factories import add_member, make_project, make_user

REPLY = "Hello from the simulator. This answer streams word by word."
REPLY_WORDS = len(REPLY.split())  # the simulator streams one word a piece
# Reported by the upstream and nothing the gateway could count itself (10 words, a 1-word prompt).
UPSTREAM_USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
TERMINAL = {"done", "stopped", "error"}


def _socket(user: User | AnonymousUser) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(PlaygroundConsumer.as_asgi(), "/ws/playground/")
    communicator.scope["user"] = user
    return communicator


async def _open(user: User) -> WebsocketCommunicator:
    communicator = _socket(user)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _until_end(communicator: WebsocketCommunicator, *requests: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Every event up to the last of the requests' terminal events."""
    pending, events = set(requests), []
    while pending:
        event = await communicator.receive_json_from(timeout=timeout)
        events.append(event)
        if event["type"] in TERMINAL and event.get("request") in pending:
            pending.discard(event["request"])
    return events


def _start(content: str = "hi", request: str = "r1", model: str = "sim-chat", **extra: Any) -> dict[str, Any]:
    return {"type": "start", "request": request, "model": model, "content": content, **extra}


def _run(world: World, scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def settled() -> Any:
        try:
            return await scenario()
        finally:
            # The usage batch is written off the request path. drain() returns as soon as nothing is
            # queued, which is also while the background flusher is still writing what it took.
            usage = writer()
            await usage.drain()
            if usage.flusher is not None:
                await asyncio.wait([usage.flusher])

    return asyncio.run(settled())


def _member(world: World, name: str, role: str = Role.MEMBER) -> User:
    user = make_user(name)
    add_member(project=world.alice.project, user=user, role=role)
    return user


def _of(events: list[dict[str, Any]], kind: str, request: str = "r1") -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and e.get("request") == request]


# --- streaming -------------------------------------------------------------------------------------
def test_streams_in_several_deltas_then_done_with_the_upstreams_usage(world: World) -> None:
    world.faults.usage = dict(UPSTREAM_USAGE)

    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(world.alice.user)
        await ws.send_json_to(_start(system="Be brief.", params={"temperature": 0.5, "max_tokens": 64}))
        events = await _until_end(ws, "r1")
        await ws.disconnect()
        return events

    events = _run(world, scenario)
    assert [e["type"] for e in events] == ["started"] + ["delta"] * REPLY_WORDS + ["done"]
    assert "".join(e["text"] for e in _of(events, "delta")) == REPLY
    [done] = _of(events, "done")
    assert done["usage"] == UPSTREAM_USAGE
    assert done["ttft_ms"] > 0 and done["tokens_per_second"] > 0 and done["finish_reason"] == "stop"
    conversation = Conversation.objects.get(pk=done["conversation"])
    assert (conversation.owner, conversation.project, conversation.system) == (
        world.alice.user,
        world.alice.project,
        "Be brief.",
    )
    assert conversation.params == {"temperature": 0.5, "max_tokens": 64}
    user_turn, answer = conversation.turns.order_by("pk")
    assert (user_turn.role, user_turn.content) == ("user", "hi")
    assert (answer.role, answer.content, answer.status, answer.pk) == ("assistant", REPLY, "ok", done["turn"])
    assert (answer.prompt_tokens, answer.completion_tokens, answer.total_tokens) == (12, 9, 21)
    # The upstream got the persona, the message and the conversation's sampling parameters.
    [sent] = world.upstream.state.requests
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (sent.body["temperature"], sent.body["max_tokens"], sent.body["stream"]) == (0.5, 64, True)
    # One usage record, marked as the playground's, with the upstream's figures exactly.
    [record] = UsageRecord.objects.all()
    assert (record.dialect, record.mode, record.stream, record.status) == ("playground", "chat", True, "ok")
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (12, 9, 21)
    assert record.usage_estimated is False
    assert (record.user_id, record.api_key_id, record.project_id) == (world.alice.user.pk, None, world.alice.project.pk)
    assert record.request_id == answer.request_id == events[0]["request_id"]


def test_a_usage_record_per_turn_and_the_history_goes_with_the_next_turn(world: World) -> None:
    world.faults.usage = dict(UPSTREAM_USAGE)

    async def scenario() -> None:
        ws = await _open(world.alice.user)
        await ws.send_json_to(_start("first"))
        [*_, done] = await _until_end(ws, "r1")
        await ws.send_json_to(_start("second", request="r2", conversation=done["conversation"]))
        await _until_end(ws, "r2")
        await ws.disconnect()

    _run(world, scenario)
    records = list(UsageRecord.objects.order_by("created_at"))
    assert [(r.dialect, r.status, r.total_tokens) for r in records] == [("playground", "ok", 21)] * 2
    assert world.upstream.state.requests[1].body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "second"},
    ]
    assert Turn.objects.count() == 4


def test_compare_mode_streams_several_models_over_one_socket(world: World) -> None:
    registry_services.model_create(provider=world.provider, by=None, fields={"name": "sim-b", "context_length": 4096})
    registry_services.model_create(provider=world.provider, by=None, fields={"name": "sim-c", "context_length": 4096})
    world.faults.token_delay = 0.01
    streams = [
        {"request": "a", "model": "sim-chat"},
        {"request": "b", "model": "sim-b"},
        {"request": "c", "model": "sim-c"},
    ]

    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(world.alice.user)
        await ws.send_json_to({"type": "start", "streams": streams, "content": "compare"})
        events = await _until_end(ws, "a", "b", "c")
        await ws.disconnect()
        return events

    events = _run(world, scenario)
    for tag, model in [("a", "sim-chat"), ("b", "sim-b"), ("c", "sim-c")]:
        assert "".join(e["text"] for e in _of(events, "delta", tag)) == REPLY
        [done] = _of(events, "done", tag)
        assert done["model"] == model and done["usage"]["completion_tokens"] == REPLY_WORDS
    # Interleaved: the answers ran at once, not one after another.
    order = [e["request"] for e in events if e["type"] == "delta"]
    assert order.index("b") < len(order) - order[::-1].index("a") - 1
    answers = Turn.objects.filter(role="assistant").order_by("model_name")
    assert [(t.model_name, t.status) for t in answers] == [("sim-b", "ok"), ("sim-c", "ok"), ("sim-chat", "ok")]
    assert Turn.objects.filter(role="user").count() == 1
    assert sorted(UsageRecord.objects.values_list("model_name", flat=True)) == ["sim-b", "sim-c", "sim-chat"]


def test_edit_a_past_turn_then_regenerate_resends_from_there(world: World) -> None:
    async def scenario() -> None:
        ws = await _open(world.alice.user)
        await ws.send_json_to(_start("first"))
        [started, *_, done] = await _until_end(ws, "r1")
        conversation = done["conversation"]
        await ws.send_json_to(_start("second", request="r2", conversation=conversation))
        await _until_end(ws, "r2")
        await ws.send_json_to(_start("uno", request="r3", conversation=conversation, edit=started["turn"]))
        await _until_end(ws, "r3")
        await ws.send_json_to({"type": "start", "request": "r4", "model": "sim-chat", "conversation": conversation})
        await _until_end(ws, "r4")
        await ws.disconnect()

    _run(world, scenario)
    bodies = [r.body["messages"] for r in world.upstream.state.requests]
    assert bodies[2] == bodies[3] == [{"role": "user", "content": "uno"}]  # "second" and its answer are gone
    assert list(Turn.objects.order_by("pk").values_list("role", "content")) == [("user", "uno"), ("assistant", REPLY)]
    assert UsageRecord.objects.filter(dialect="playground", status="ok").count() == 4


def test_a_text_mode_conversation_sends_the_message_as_the_prompt(world: World) -> None:
    [*_, done] = _one_turn(world, _start("Once upon a time", model="sim-text", mode="text"))
    assert done["type"] == "done"
    [sent] = world.upstream.state.requests
    assert sent.path == "/v1/completions" and sent.body["prompt"] == "Once upon a time"
    assert "messages" not in sent.body
    assert UsageRecord.objects.get().mode == "text"


# --- stop and disconnect ---------------------------------------------------------------------------
def test_stop_mid_stream_ends_within_a_second_and_settles_slot_and_quota(world: World) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(max_concurrency=1, token_quota=100_000)
    world.faults.token_delay = 0.3

    async def scenario() -> tuple[list[dict[str, Any]], float, list[dict[str, Any]]]:
        ws = await _open(world.alice.user)
        await ws.send_json_to(_start(max_tokens=50))
        started = await ws.receive_json_from(timeout=5)
        first = await ws.receive_json_from(timeout=5)
        assert (started["type"], first["type"]) == ("started", "delta")
        pressed = time.perf_counter()
        await ws.send_json_to({"type": "stop", "request": "r1"})
        [stopped] = await _until_end(ws, "r1")
        took = time.perf_counter() - pressed
        await writer().drain()
        # The slot is free: the next turn is not refused for concurrency.
        world.faults.token_delay = 0
        await ws.send_json_to(_start("again", request="r2", conversation=stopped["conversation"]))
        again = await _until_end(ws, "r2")
        await ws.disconnect()
        return [first, stopped], took, again

    (first, stopped), took, again = _run(world, scenario)
    assert stopped["type"] == "stopped" and took < 1.0
    assert again[-1]["type"] == "done"
    turn = Turn.objects.get(pk=stopped["turn"])
    assert (turn.status, turn.content) == ("stopped", first["text"])  # the partial answer is kept
    cancelled = UsageRecord.objects.get(request_id=turn.request_id)
    assert cancelled.status == "cancelled" and cancelled.dialect == "playground"
    counter = QuotaCounter.objects.get(provider=world.provider)
    assert counter.reserved == 0
    assert counter.used == sum(UsageRecord.objects.values_list("total_tokens", flat=True))
    assert wait_until(lambda: world.upstream.state.disconnects == 1, timeout=3)


def test_a_closed_socket_cancels_the_upstream_and_frees_the_slot(world: World) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(max_concurrency=1)
    world.faults.token_delay = 0.3

    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(world.alice.user)
        await ws.send_json_to(_start())
        assert (await ws.receive_json_from(timeout=5))["type"] == "started"
        assert (await ws.receive_json_from(timeout=5))["type"] == "delta"
        await ws.disconnect()
        world.faults.token_delay = 0
        other = await _open(world.alice.user)
        await other.send_json_to(_start("again", request="r2"))
        events = await _until_end(other, "r2")
        await other.disconnect()
        return events

    events = _run(world, scenario)
    assert events[-1]["type"] == "done"
    assert sorted(UsageRecord.objects.values_list("status", flat=True)) == ["cancelled", "ok"]
    assert sorted(Turn.objects.filter(role="assistant").values_list("status", flat=True)) == ["ok", "stopped"]
    assert wait_until(lambda: world.upstream.state.disconnects == 1, timeout=3)


# --- each refusal with its gateway code ------------------------------------------------------------
def _one_turn(world: World, message: dict[str, Any], user: User | None = None) -> list[dict[str, Any]]:
    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(user or world.alice.user)
        await ws.send_json_to(message)
        events = await _until_end(ws, message.get("request", "r1"))
        await ws.disconnect()
        return events

    events: list[dict[str, Any]] = _run(world, scenario)
    return events


def test_a_model_disabled_between_turns_is_refused_on_the_next_turn(world: World) -> None:
    [*_, done] = _one_turn(world, _start())
    assert done["type"] == "done"
    LlmModel.objects.filter(pk=world.model.pk).update(enabled=False)
    [started, error] = _one_turn(world, _start("more", conversation=done["conversation"]))
    assert started["type"] == "started"
    assert (error["type"], error["code"], error["retry_after"]) == ("error", "MODEL_DISABLED", None)
    assert error["message"] == "Model 'sim-chat' is disabled. Enable it in the console."
    assert len(world.upstream.state.requests) == 1  # the second turn never reached the upstream
    assert list(UsageRecord.objects.order_by("created_at").values_list("status", "error_code")) == [
        ("ok", ""),
        ("error", "MODEL_DISABLED"),
    ]
    assert Turn.objects.get(pk=error["turn"]).error_code == "MODEL_DISABLED"


def test_used_up_quota_arrives_as_its_code(world: World) -> None:
    Provider.objects.filter(pk=world.provider.pk).update(token_quota=5)
    [_, error] = _one_turn(world, _start())
    assert (error["code"], error["retry_after"]) == ("QUOTA_EXCEEDED", None)
    assert error["message"] == "Model group 'sim' has used up its token quota."
    assert world.upstream.state.requests == []


def test_the_concurrency_limit_refuses_the_second_of_two_compared_models(world: World) -> None:
    registry_services.model_create(provider=world.provider, by=None, fields={"name": "sim-b", "context_length": 4096})
    Provider.objects.filter(pk=world.provider.pk).update(max_concurrency=1)
    world.faults.token_delay = 0.05
    message = {
        "type": "start",
        "content": "hi",
        "streams": [{"request": "a", "model": "sim-chat"}, {"request": "b", "model": "sim-b"}],
    }

    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(world.alice.user)
        await ws.send_json_to(message)
        events = await _until_end(ws, "a", "b")
        await ws.disconnect()
        return events

    events = _run(world, scenario)
    ends = sorted((e["type"], e.get("code")) for e in events if e["type"] in TERMINAL)
    assert ends == [("done", None), ("error", "CONCURRENCY_EXCEEDED")]
    [error] = [e for e in events if e["type"] == "error"]
    assert error["retry_after"] == 1
    assert error["message"] == "Model group 'sim' is at its limit of 1 concurrent requests."
    assert len(world.upstream.state.requests) == 1


def test_an_upstream_5xx_arrives_as_upstream_error(world: World) -> None:
    world.faults.status = 500
    [_, error] = _one_turn(world, _start())
    assert error["code"] == "UPSTREAM_ERROR"
    assert error["message"].startswith("The model's provider failed:")
    [record] = UsageRecord.objects.all()
    assert (record.status, record.error_code) == ("error", "UPSTREAM_ERROR")


def test_an_upstream_that_stalls_mid_answer_ends_in_upstream_timeout_after_the_providers_timeout(
    world: World,
) -> None:
    """The provider's timeout holds between pieces too, not only before the first: the simulator
    sends one word, then nothing for 1.5 s against a timeout of 0.5 s."""
    Provider.objects.filter(pk=world.provider.pk).update(timeout_seconds=0.5)
    world.faults.token_delay = 1.5

    async def scenario() -> tuple[list[dict[str, Any]], float]:
        ws = await _open(world.alice.user)
        await ws.send_json_to(_start())
        assert (await ws.receive_json_from(timeout=5))["type"] == "started"
        first = await ws.receive_json_from(timeout=5)
        assert first["type"] == "delta"
        after_first = time.perf_counter()
        [error] = await _until_end(ws, "r1")
        stalled = time.perf_counter() - after_first
        await ws.disconnect()
        return [first, error], stalled

    (first, error), stalled = _run(world, scenario)
    assert (error["type"], error["code"]) == ("error", "UPSTREAM_TIMEOUT")
    assert error["message"] == "The model did not answer in time: upstream did not answer within 0.5 s."
    assert 0.45 <= stalled < 1.2  # the timeout, not the next word 1.5 s on
    assert Turn.objects.get(pk=error["turn"]).content == first["text"]
    [record] = UsageRecord.objects.all()
    assert (record.status, record.error_code) == ("error", "UPSTREAM_TIMEOUT")


def test_a_malformed_message_is_an_error_not_a_crash(world: World) -> None:
    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(world.alice.user)
        out = []
        for raw in ["not json", "[1]", '{"type": "dance"}', '{"type": "start", "request": 5, "model": "m"}']:
            await ws.send_to(text_data=raw)
            out.append(await ws.receive_json_from(timeout=5))
        await ws.send_json_to({"type": "start", "request": "r1", "model": "sim-chat"})  # no content, no conversation
        out.append(await ws.receive_json_from(timeout=5))
        await ws.disconnect()
        return out

    events = _run(world, scenario)
    assert [e["code"] for e in events] == ["PARAM_INVALID"] * 4 + ["PARAM_REQUIRED"]
    assert world.upstream.state.requests == [] and Conversation.objects.count() == 0


# --- who may connect, open and watch --------------------------------------------------------------
def test_an_anonymous_socket_is_closed_with_4401(world: World) -> None:
    async def scenario() -> dict[str, Any]:
        ws = _socket(AnonymousUser())
        connected, _ = await ws.connect()
        assert connected  # accepted only to say why it closes
        closed = await ws.receive_output(timeout=5)
        await ws.wait()
        return closed

    assert asyncio.run(scenario()) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


def _asgi_socket(headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    from console.asgi import application

    return WebsocketCommunicator(application, "/ws/playground/", headers=[(b"host", b"localhost"), *headers])


def test_through_the_asgi_stack_a_session_streams_and_no_session_is_refused(world: World) -> None:
    client = Client()
    client.force_login(world.alice.user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    origin = (b"origin", b"http://localhost")

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        anonymous = _asgi_socket([origin])
        assert (await anonymous.connect())[0]
        closed = await anonymous.receive_output(timeout=5)
        await anonymous.wait()
        ws = _asgi_socket([origin, (b"cookie", cookie)])
        assert (await ws.connect())[0]
        await ws.send_json_to(_start())
        events = await _until_end(ws, "r1")
        await ws.disconnect()
        return closed, events

    closed, events = _run(world, scenario)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    assert events[-1]["type"] == "done"
    assert UsageRecord.objects.get().user_id == world.alice.user.pk


def test_a_new_conversation_goes_to_the_sessions_current_project(world: World) -> None:
    second = make_project(name="alice-second", owner=world.alice.user)  # holds no models
    client = Client()
    client.force_login(world.alice.user)
    session = client.session
    session[SESSION_KEY] = second.pk
    session.save()
    cookie = (b"cookie", f"sessionid={session.session_key}".encode())

    async def scenario() -> list[dict[str, Any]]:
        ws = _asgi_socket([(b"origin", b"http://localhost"), cookie])
        assert (await ws.connect())[0]
        await ws.send_json_to(_start())
        events = await _until_end(ws, "r1")
        await ws.disconnect()
        return events

    [_, error] = _run(world, scenario)
    assert error["code"] == "MODEL_NOT_SUPPORTED"  # sim-chat is alice-project's, not this one's
    assert Conversation.objects.get().project == second
    assert world.upstream.state.requests == []


def test_a_foreign_origin_is_refused_before_the_handshake(world: World) -> None:
    client = Client()
    client.force_login(world.alice.user)
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())

    async def scenario() -> tuple[bool, Any]:
        ws = _asgi_socket([(b"origin", b"http://evil.example"), cookie])
        connected, code = await ws.connect()
        return connected, code

    connected, code = asyncio.run(scenario())
    assert connected is False and code == 1000  # a refused handshake (HTTP 403), no socket
    assert Conversation.objects.count() == 0


def test_another_projects_member_cannot_open_write_or_watch_a_conversation(world: World) -> None:
    """bob (of another project) learns nothing: alice's conversation, shared or not, is answered as a
    conversation that does not exist, and alice's project as a project that does not exist."""
    [*_, done] = _one_turn(world, _start())
    conversation = done["conversation"]
    services.conversation_set_shared(conversation=Conversation.objects.get(pk=conversation), shared=True)
    bob = make_user("bob")
    make_project(name="bob-project", owner=bob)

    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(bob)
        out = []
        for message in [
            _start(conversation=conversation),
            _start(conversation="0" * 32),
            {"type": "subscribe", "conversation": conversation},
            {"type": "subscribe", "conversation": "0" * 32},
            _start(project=world.alice.project.pk),
        ]:
            await ws.send_json_to(message)
            out.append(await ws.receive_json_from(timeout=5))
        await ws.disconnect()
        return out

    mine, missing, watch, watch_missing, project = _run(world, scenario)
    assert mine == missing and watch == watch_missing
    assert (mine["code"], mine["message"], watch["code"]) == ("NOT_FOUND", "No such conversation.", "NOT_FOUND")
    assert (project["code"], project["message"]) == ("NOT_FOUND", "No such project.")
    assert len(world.upstream.state.requests) == 1 and Turn.objects.count() == 2


def test_operators_and_colleagues_see_only_what_the_rules_allow(world: World) -> None:
    """carol (operator) may not use the playground; dave (member) cannot see alice's unshared
    conversation, can watch it once shared, and can never write to it."""
    [*_, done] = _one_turn(world, _start())
    conversation = done["conversation"]
    carol, dave = _member(world, "carol", Role.OPERATOR), _member(world, "dave")

    async def ask(user: User, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ws = await _open(user)
        out = []
        for message in messages:
            await ws.send_json_to(message)
            out.append(await ws.receive_json_from(timeout=5))
        await ws.disconnect()
        return out

    project = world.alice.project.pk
    [operator_new] = _run(world, lambda: ask(carol, [_start(project=project)]))
    assert operator_new["code"] == "FORBIDDEN"
    [hidden] = _run(world, lambda: ask(dave, [{"type": "subscribe", "conversation": conversation}]))
    assert hidden["code"] == "NOT_FOUND"
    services.conversation_set_shared(conversation=Conversation.objects.get(pk=conversation), shared=True)
    watch, write = _run(
        world,
        lambda: ask(dave, [{"type": "subscribe", "conversation": conversation}, _start(conversation=conversation)]),
    )
    assert watch == {"type": "subscribed", "conversation": conversation}
    assert write["code"] == "FORBIDDEN"
    [operator_watch] = _run(world, lambda: ask(carol, [{"type": "subscribe", "conversation": conversation}]))
    assert operator_watch["code"] == "NOT_FOUND"
    assert len(world.upstream.state.requests) == 1 and Turn.objects.count() == 2


def test_a_shared_conversations_live_answer_reaches_a_watching_member(world: World) -> None:
    [*_, done] = _one_turn(world, _start())
    conversation = done["conversation"]
    services.conversation_set_shared(conversation=Conversation.objects.get(pk=conversation), shared=True)
    dave = _member(world, "dave")
    world.faults.token_delay = 0.01

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        watcher = await _open(dave)
        await watcher.send_json_to({"type": "subscribe", "conversation": conversation})
        assert (await watcher.receive_json_from(timeout=5))["type"] == "subscribed"
        owner = await _open(world.alice.user)
        await owner.send_json_to(_start("again", conversation=conversation))
        seen_by_owner = await _until_end(owner, "r1")
        seen_by_watcher = await _until_end(watcher, "r1")
        await owner.disconnect()
        await watcher.disconnect()
        return seen_by_owner, seen_by_watcher

    seen_by_owner, seen_by_watcher = _run(world, scenario)
    assert seen_by_watcher == seen_by_owner
    assert "".join(e["text"] for e in _of(seen_by_watcher, "delta")) == REPLY
    assert seen_by_watcher[-1]["type"] == "done"


def test_a_watcher_stops_receiving_once_unshared_or_no_longer_a_member(world: World) -> None:
    """dave and erin watch alice's shared conversation. She unshares it: her next answer reaches
    neither. She shares it again after erin left the project: it reaches dave, and erin's watch ends."""
    [*_, done] = _one_turn(world, _start())
    conversation = done["conversation"]
    row = Conversation.objects.get(pk=conversation)
    services.conversation_set_shared(conversation=row, shared=True)
    dave, erin = _member(world, "dave"), _member(world, "erin")

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        watchers = [await _open(dave), await _open(erin)]
        for watcher in watchers:
            await watcher.send_json_to({"type": "subscribe", "conversation": conversation})
            assert (await watcher.receive_json_from(timeout=5))["type"] == "subscribed"
        owner = await _open(world.alice.user)
        await database_sync_to_async(services.conversation_set_shared)(conversation=row, shared=False)
        await owner.send_json_to(_start("secret", conversation=conversation))
        await _until_end(owner, "r1")
        for watcher in watchers:
            assert await watcher.receive_nothing(timeout=0.2)
        await database_sync_to_async(services.conversation_set_shared)(conversation=row, shared=True)
        await database_sync_to_async(lambda: Membership.objects.filter(user=erin).delete())()
        await owner.send_json_to(_start("public", request="r2", conversation=conversation))
        await _until_end(owner, "r2")
        seen_by_dave = await _until_end(watchers[0], "r2")
        erin_told = await watchers[1].receive_json_from(timeout=5)
        assert await watchers[1].receive_nothing(timeout=0.2)
        for socket in [owner, *watchers]:
            await socket.disconnect()
        return seen_by_dave, erin_told

    seen_by_dave, erin_told = _run(world, scenario)
    assert seen_by_dave[-1]["type"] == "done" and "".join(e["text"] for e in _of(seen_by_dave, "delta", "r2")) == REPLY
    assert erin_told == {"type": "unsubscribed", "conversation": conversation}


# --- the call starts before the message is stored ------------------------------------------------
def _store_once_called(world: World, before_store: Callable[[Any], None] = lambda write: None) -> Any:
    """A stand-in for services.playground_turn_store that stores only once the upstream has the
    request: a turn whose call waited for its message to be stored would never get there."""
    real = services.playground_turn_store

    def store(write: Any) -> int:
        assert wait_until(lambda: len(world.upstream.state.requests) >= 1, timeout=5)
        before_store(write)
        return real(write)

    return store


def test_the_model_is_called_while_the_message_is_stored_and_started_still_comes_first(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "playground_turn_store", _store_once_called(world))
    events = _one_turn(world, _start("hello"))
    assert [e["type"] for e in events] == ["started"] + ["delta"] * REPLY_WORDS + ["done"]
    user_turn = Turn.objects.get(role="user")
    assert (events[0]["turn"], user_turn.content) == (user_turn.pk, "hello")
    assert Turn.objects.get(role="assistant").pk == events[-1]["turn"]


def test_a_message_that_cannot_be_stored_ends_the_call_and_frees_its_slot(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversation is deleted (another tab) between the reads and the write: the answer under
    way is cancelled, its slot freed and its usage recorded, and the turn ends in NOT_FOUND."""
    [*_, done] = _one_turn(world, _start())
    conversation = done["conversation"]
    Provider.objects.filter(pk=world.provider.pk).update(max_concurrency=1)
    world.faults.token_delay = 0.3

    def delete(write: Any) -> None:
        Conversation.objects.filter(pk=write.conversation_id).delete()

    monkeypatch.setattr(services, "playground_turn_store", _store_once_called(world, delete))
    world.upstream.state.requests.clear()
    [error] = _one_turn(world, _start("more", conversation=conversation))
    assert (error["type"], error["code"], error["message"], error["turn"]) == (
        "error",
        "NOT_FOUND",
        "No such conversation.",
        None,
    )
    assert error["request"] == "r1" and error["conversation"] == conversation
    assert wait_until(lambda: world.upstream.state.disconnects == 1, timeout=3)
    assert sorted(UsageRecord.objects.values_list("status", flat=True)) == ["cancelled", "ok"]
    assert Conversation.objects.count() == 0 and Turn.objects.count() == 0
    monkeypatch.undo()
    world.faults.token_delay = 0
    [*_, again] = _one_turn(world, _start("new"))  # the slot was given back
    assert again["type"] == "done"


def test_a_member_removed_from_the_project_is_refused_once_the_callers_second_is_over(world: World) -> None:
    """The socket remembers who is asking for console.callers.TOKEN_CACHE_SECONDS, as the API does a
    verified token: dave, removed from the project, is still answered within that second and
    refused on a turn started after it; the upstream never sees that turn."""
    dave = _member(world, "dave")
    project = world.alice.project.pk

    async def scenario() -> tuple[str, str, dict[str, Any]]:
        ws = await _open(dave)
        await ws.send_json_to(_start(project=project))
        first = (await _until_end(ws, "r1"))[-1]["type"]
        removed = time.monotonic()
        await database_sync_to_async(lambda: Membership.objects.filter(user=dave).delete())()
        await ws.send_json_to(_start(request="r2", project=project))
        cached = (await _until_end(ws, "r2"))[-1]["type"]
        assert time.monotonic() - removed < callers.TOKEN_CACHE_SECONDS  # else the test proves nothing
        await asyncio.sleep(callers.TOKEN_CACHE_SECONDS + 0.1)
        await ws.send_json_to(_start(request="r3", project=project))
        refused = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return first, cached, refused

    first, cached, refused = _run(world, scenario)
    assert (first, cached) == ("done", "done")
    assert (refused["type"], refused["code"], refused["message"]) == ("error", "NOT_FOUND", "No such project.")
    assert len(world.upstream.state.requests) == 2


# --- the services ----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_edit_truncates_after_the_turn_and_exports_render_the_rest(alice: Any) -> None:
    conversation = services.conversation_create(
        owner=alice.user, project=alice.project, model_name="m", system="You are a kindergarten teacher."
    )
    first = services.turn_append(conversation=conversation, role="user", content="one")
    services.turn_append(conversation=conversation, role="assistant", content="<b>1</b>", model_name="m")
    services.turn_append(conversation=conversation, role="user", content="two")
    services.turn_append(conversation=conversation, role="assistant", content="2", model_name="m", status="stopped")
    services.turn_edit_and_truncate(conversation=conversation, turn_id=first.pk, content="uno")
    assert list(conversation.turns.values_list("role", "content")) == [("user", "uno")]
    services.turn_append(conversation=conversation, role="assistant", content="<b>1</b>", model_name="m")
    services.conversation_rename(conversation=conversation, title="  Counting  ")
    conversation.refresh_from_db()
    assert conversation.title == "Counting"
    assert selectors.conversation_export_markdown(conversation=conversation) == (
        "# Counting\n\nModel: `m` (chat)\n\n## System\n\nYou are a kindergarten teacher.\n\n"
        "## User\n\nuno\n\n## Assistant (m)\n\n<b>1</b>\n"
    )
    exported = selectors.conversation_export_json(conversation=conversation)
    assert [(t["role"], t["content"], t["status"]) for t in exported["turns"]] == [
        ("user", "uno", "ok"),
        ("assistant", "<b>1</b>", "ok"),
    ]
    assert exported["system"] == "You are a kindergarten teacher." and exported["title"] == "Counting"
    services.conversation_delete(conversation=conversation)
    assert Conversation.objects.count() == 0 and Turn.objects.count() == 0


@pytest.mark.django_db
def test_planning_a_turn_costs_the_same_queries_however_long_the_history(alice: Any) -> None:
    """Three reads (the conversation with its project, the caller's membership, the turns) whether the
    history holds 2 turns or 12: the turns are read in one query, none fetched again one by one (a
    deferred foreign key read per turn once made a 200-conversation load queue for a second)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    conversation = services.conversation_create(owner=alice.user, project=alice.project, model_name="m")
    counts = []
    for _ in range(6):
        services.turn_append(conversation=conversation, role="user", content="q")
        services.turn_append(conversation=conversation, role="assistant", content="a", model_name="m")
        start = services.TurnStart(
            streams=[services.StreamSpec(request="r1", model="m")], conversation_id=conversation.pk, content="next"
        )
        callers._token_cache.clear()  # the session caller is read afresh each time, as after its second
        with CaptureQueriesContext(connection) as queries:
            plan = services.playground_turn_plan(user=alice.user, start=start, project_id=None)
        counts.append(len(queries))
    assert counts == [3] * 6
    assert len(plan.streams[0].body["messages"]) == 6 * 2 + 1
