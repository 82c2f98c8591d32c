"""The playground's websocket door (docs/playground.md): parse a message, call a service, render.

Each answer is one gateway call (`chat.gateway.gateway_call`, entry "playground") streamed as
`delta` messages, in its own task so that several run at once over one socket (compare mode) and
`stop` or a disconnect can cancel one at once. However an answer ends, its Stream is closed (which
ends the upstream call, frees the slot and settles the quota) and the answer is stored. Answers of
a shared conversation are also sent to the channel-layer group of the conversation, where project
members who `subscribe`d to it receive them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import User

from chat import selectors, services
from chat.db import run_db
from chat.errors import Failure, GatewayError, rejected
from chat.gateway import Answer, Stream, gateway_call, new_request_id
from chat.models import ConversationMode, TurnStatus
from chat.services import PlannedStream, StreamSpec, TurnPlan, TurnStart
from console.callers import CallerRejected, session_caller_from_cache
from console.current import SESSION_KEY
from models_registry.providers.base import Usage

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
MAX_STREAMS = 4  # compare mode: up to four models at once
MAX_TAG = 64


def group_name(conversation_id: str) -> str:
    return f"playground.{conversation_id}"


def _usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


# What helps, in plain words, for the failures a playground user meets: the page shows it under the
# gateway's own message (which says what happened).
HINTS: dict[Failure, str] = {
    Failure.FORBIDDEN: "Your role in this project does not allow this.",
    Failure.GROUP_NOT_FOUND: "The model's provider is gone. Pick another model.",
    Failure.MODEL_NOT_SUPPORTED: "This model is not in the project any more. Pick another model.",
    Failure.MODEL_DISABLED: "The model is switched off. A project admin or member can switch it on under Models.",
    Failure.NO_INFERENCE: "This model is not set up to answer (no infer capability). Pick another model.",
    Failure.CONFIG_MISSING: "The provider is not configured yet: its address or credentials are missing. "
    "Complete it under Models → Providers.",
    Failure.PARAM_INVALID: "Check the settings on the right.",
    Failure.MAX_TOKENS_INVALID: "Lower Max tokens to at most the model's context length.",
    Failure.CONTENT_TOO_LONG: "The conversation is longer than the model can read. Start a new chat, "
    "shorten the message or lower Max tokens.",
    Failure.QUOTA_EXCEEDED: "The provider's token quota is used up for this period. An admin can raise it "
    "on the provider's page; waiting does not help.",
    Failure.CONCURRENCY_EXCEEDED: "Too many answers are streaming at once. Try again in a moment.",
    Failure.RATE_EXCEEDED: "Too many requests in a short time. Try again in a moment.",
    Failure.UPSTREAM_RATE_LIMITED: "The provider is limiting requests. Try again in a moment.",
    Failure.UPSTREAM_TIMEOUT: "The provider did not answer in time. Try again, or pick another model.",
    Failure.MODEL_STARTING: "The model is still loading. Try again in a few seconds.",
    Failure.UPSTREAM_ERROR: "The provider failed or is unreachable. Try again, or pick another model.",
    Failure.NOT_FOUND: "It may have been deleted, or it is not shared with you.",
    Failure.BODY_TOO_LARGE: "Shorten the message.",
    Failure.INTERNAL: "Something went wrong in the console. Try again; if it persists, tell an admin.",
}


def error_event(error: GatewayError, request: str | None) -> dict[str, Any]:
    return {
        "type": "error",
        "request": request,
        "code": error.failure.name,
        "message": error.message,
        "hint": HINTS.get(error.failure, ""),
        "retry_after": error.retry_after,
        "param": error.param,
    }


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(Failure.PARAM_INVALID, message, param=param)


def _tag(value: Any, param: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TAG:
        raise _invalid(f"{param} must be a string of 1 to {MAX_TAG} characters.", param)
    return value


def parse_start(content: dict[str, Any]) -> TurnStart:
    """A `start` message as a TurnStart; GatewayError(PARAM_INVALID) names the field at fault."""
    raw_streams = content.get("streams")
    if raw_streams is None:
        raw_streams = [{"request": content.get("request"), "model": content.get("model")}]
    if not isinstance(raw_streams, list) or not 1 <= len(raw_streams) <= MAX_STREAMS:
        raise _invalid(f"streams must list 1 to {MAX_STREAMS} models.", "streams")
    streams = []
    for item in raw_streams:
        if not isinstance(item, dict):
            raise _invalid("each of streams must be an object with request and model.", "streams")
        streams.append(StreamSpec(request=_tag(item.get("request"), "request"), model=_model(item.get("model"))))
    if len({s.request for s in streams}) != len(streams):
        raise _invalid("each stream needs its own request id.", "request")
    conversation = content.get("conversation")
    if conversation is not None:
        conversation = _tag(conversation, "conversation")
    project = content.get("project")
    if project is not None:
        project = _tag(project, "project")
    text = content.get("content")
    if text is not None and not isinstance(text, str):
        raise _invalid("content must be a string.", "content")
    edit = content.get("edit")
    if edit is not None and (not isinstance(edit, int) or isinstance(edit, bool)):
        raise _invalid("edit must be a turn id.", "edit")
    mode = content.get("mode", ConversationMode.CHAT)
    if mode not in ConversationMode.values:
        raise _invalid("mode must be 'chat' or 'text'.", "mode")
    params = content.get("params") or {}
    if not isinstance(params, dict):
        raise _invalid("params must be an object.", "params")
    system, title = content.get("system") or "", content.get("title") or ""
    if not isinstance(system, str) or not isinstance(title, str):
        raise _invalid("system and title must be strings.", "system")
    if conversation is None and text is None:
        raise GatewayError(Failure.PARAM_REQUIRED, "A new conversation starts with content.", param="content")
    return TurnStart(
        streams=streams,
        conversation_id=conversation,
        project_id=project,
        content=text,
        edit=edit,
        mode=mode,
        system=system,
        title=title,
        params=params,
    )


def _model(value: Any) -> str:
    if value is None or value == "":
        raise GatewayError(Failure.MODEL_REQUIRED, "The model parameter is required.", param="model")
    if not isinstance(value, str):
        raise _invalid("model must be a string.", "model")
    return value


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab's socket: any number of answers at once, and the shared conversations it watches."""

    user: User
    answers: dict[str, asyncio.Task[None]]
    watching: set[str]
    closed: bool
    session_project: str | None = None  # the session's current project, once read
    session_read: bool = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.answers, self.watching, self.closed = {}, set(), False
        if user is None or not user.is_authenticated:
            # Accepted first so the page can read the close code (a refused handshake has none).
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            self.closed = True
            return
        self.user = user
        await self.accept()

    async def disconnect(self, code: int) -> None:
        self.closed = True
        tasks = list(self.answers.values())
        for task in tasks:
            task.cancel()
        # Each task closes its stream (the upstream call, the slot, the quota) and stores the answer.
        await asyncio.gather(*tasks, return_exceptions=True)
        for conversation_id in self.watching:
            await self.channel_layer.group_discard(group_name(conversation_id), self.channel_name)
        self.watching.clear()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closed or not hasattr(self, "user"):
            return
        if text_data is None:
            await self.send_json(error_event(_invalid("Send JSON text messages."), None))
            return
        if len(text_data) > settings.GATEWAY_MAX_BODY_BYTES:
            error = GatewayError(
                Failure.BODY_TOO_LARGE, f"A message may be at most {settings.GATEWAY_MAX_BODY_BYTES} bytes."
            )
            await self.send_json(error_event(error, None))
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self.send_json(error_event(_invalid("The message is not valid JSON."), None))
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        request = content.get("request") if isinstance(content, dict) else None
        request = request if isinstance(request, str) else None
        try:
            if not isinstance(content, dict):
                raise _invalid("A message is a JSON object with a type.")
            kind = content.get("type")
            if kind == "start":
                await self._start(parse_start(content))
            elif kind == "stop":
                self._stop(request)
            elif kind == "subscribe":
                await self._subscribe(_tag(content.get("conversation"), "conversation"))
            elif kind == "unsubscribe":
                await self._unsubscribe(_tag(content.get("conversation"), "conversation"))
            else:
                raise _invalid("type must be start, stop, subscribe or unsubscribe.", "type")
        except GatewayError as error:
            await self.send_json(error_event(error, request))
        except Exception:
            logger.exception("playground message failed")
            await self.send_json(error_event(GatewayError(Failure.INTERNAL, "Internal error."), request))

    # --- start and stop ----------------------------------------------------------------------------
    async def _start(self, start: TurnStart) -> None:
        busy = [s.request for s in start.streams if s.request in self.answers]
        if busy:
            raise _invalid(f"request {busy[0]!r} is already streaming.", "request")
        # One socket streams at most a compare mode's worth of answers at a time: a group without
        # max_concurrency set would otherwise let one user's socket start answers without bound.
        if len(self.answers) + len(start.streams) > MAX_STREAMS:
            raise GatewayError(
                Failure.CONCURRENCY_EXCEEDED,
                f"At most {MAX_STREAMS} answers stream at once on one connection; wait for one to finish or stop it.",
                retry_after=1,
            )
        plan = await self._plan(start)
        # The models are called at once (each answer's task starts its gateway call); the user's
        # message is stored meanwhile, and each answer waits for it before its `started`.
        stored = asyncio.ensure_future(run_db(services.playground_turn_store, plan.write))
        for stream in plan.streams:
            self.answers[stream.request] = asyncio.create_task(self._answer(plan, stream, stored))

    async def _plan(self, start: TurnStart) -> TurnPlan:
        """The turn's plan from reads alone; none at all for a new conversation in a project whose
        caller was looked up within the last second (console.callers.TOKEN_CACHE_SECONDS)."""
        project_id = start.project_id or self.session_project
        if start.conversation_id is None and project_id is not None:
            try:
                caller = session_caller_from_cache(user=self.user, project_id=project_id)
            except CallerRejected as exc:
                raise rejected(exc) from None
            if caller is not None:
                return services.playground_turn_plan(user=self.user, start=start, project_id=project_id, caller=caller)
        session = self.scope.get("session")
        session_read = self.session_read

        def read() -> tuple[TurnPlan, str | None]:
            # In the thread: reading the session may load it from the database. Once loaded, the
            # session object answers from memory for the socket's life, so its value is kept.
            session_project = self.session_project
            if not session_read:
                session_project = session.get(SESSION_KEY) if session is not None else None
            plan = services.playground_turn_plan(
                user=self.user, start=start, project_id=start.project_id or session_project
            )
            return plan, session_project

        plan, self.session_project = await run_db(read)
        self.session_read = True
        return plan

    def _stop(self, request: str | None) -> None:
        for tag, task in list(self.answers.items()):
            if request is None or tag == request:
                task.cancel()

    async def _answer(self, plan: TurnPlan, planned: PlannedStream, stored: asyncio.Future[int]) -> None:
        """One model's answer, from `started` to `done`, `stopped` or `error`, stored however it ends.
        Its gateway call starts at once; `started` (which names the user's stored turn) waits for the
        message to be stored, and a message that could not be stored ends the call unanswered."""
        request, conversation_id = planned.request, plan.conversation_id
        request_id = new_request_id()
        started = time.perf_counter()
        base = {"request": request, "conversation": conversation_id, "model": planned.model}
        call = asyncio.ensure_future(
            gateway_call(
                caller=plan.caller, route=planned.route, body=planned.body, request_id=request_id, started=started
            )
        )
        stopping = False
        while not stored.done():
            try:
                await asyncio.wait([stored])  # not cancelled with this task: the answer is stored against it
            except asyncio.CancelledError:
                stopping = True  # stop, or the socket closed, before `started`: ended below
                call.cancel()
        if stored.cancelled() or stored.exception() is not None:
            await _abandon(call)
            self.answers.pop(request, None)
            failure = None if stored.cancelled() else stored.exception()
            if not isinstance(failure, GatewayError):
                logger.error("storing a playground message failed", exc_info=failure)
                failure = GatewayError(Failure.INTERNAL, "Internal error.")
            await self._emit(plan, {**error_event(failure, request), **base, "turn": None})
            return
        text: list[str] = []
        stream: Stream | None = None
        status, error, finish_reason = TurnStatus.OK, None, None
        tokens_per_second = None
        try:
            started_event = {"type": "started", **base, "turn": stored.result(), "content": plan.user_content}
            await self._emit(plan, {**started_event, "request_id": request_id})
            if stopping:
                raise asyncio.CancelledError
            result = await call
            assert isinstance(result, Stream)  # the body asks for a stream
            stream = result
            async for delta in stream:
                if delta.finish_reason:
                    finish_reason = delta.finish_reason
                if delta.text:
                    text.append(delta.text)
                    await self._emit(plan, {"type": "delta", **base, "text": delta.text})
            tokens_per_second = _rate(stream, started)
        except GatewayError as failure:
            status, error = TurnStatus.ERROR, failure
        except asyncio.CancelledError:
            status = TurnStatus.STOPPED  # stop, or the socket closed: ours to finish below
        finally:
            if stream is not None:
                await stream.aclose()  # the upstream call ends, the slot is freed, the quota settled
            else:
                await _abandon(call)
            self.answers.pop(request, None)
        usage = stream.usage if stream is not None else None
        ttft_ms = stream.ttft_ms if stream is not None else None
        turn = await run_db(
            services.answer_record,
            conversation_id=conversation_id,
            model_name=planned.model,
            request_id=request_id,
            content="".join(text),
            usage=usage,
            ttft_ms=ttft_ms,
            tokens_per_second=tokens_per_second,
            status=status,
            error_code=error.failure.name if error else "",
        )
        turn_id = turn.pk if turn is not None else None
        if error is not None:
            await self._emit(plan, {**error_event(error, request), **base, "turn": turn_id})
        elif status == TurnStatus.STOPPED:
            await self._emit(plan, {"type": "stopped", **base, "turn": turn_id, "usage": _usage(usage)})
        else:
            done = {
                "type": "done",
                **base,
                "turn": turn_id,
                "usage": _usage(usage),
                "ttft_ms": ttft_ms,
                "tokens_per_second": tokens_per_second,
                "finish_reason": finish_reason,
            }
            await self._emit(plan, done)

    async def _emit(self, plan: TurnPlan, event: dict[str, Any]) -> None:
        if not self.closed:
            await self.send_json(event)
        if plan.shared:
            message = {"type": "playground.event", "event": event, "origin": self.channel_name}
            await self.channel_layer.group_send(group_name(plan.conversation_id), message)

    # --- watching a shared conversation ------------------------------------------------------------
    async def _subscribe(self, conversation_id: str) -> None:
        found = await database_sync_to_async(selectors.conversation_visible)(
            user=self.user, conversation_id=conversation_id
        )
        if found is None:
            raise GatewayError(Failure.NOT_FOUND, "No such conversation.", param="conversation")
        await self.channel_layer.group_add(group_name(conversation_id), self.channel_name)
        self.watching.add(conversation_id)
        await self.send_json({"type": "subscribed", "conversation": conversation_id})

    async def _unsubscribe(self, conversation_id: str) -> None:
        if conversation_id in self.watching:
            await self.channel_layer.group_discard(group_name(conversation_id), self.channel_name)
            self.watching.discard(conversation_id)
        await self.send_json({"type": "unsubscribed", "conversation": conversation_id})

    async def playground_event(self, message: dict[str, Any]) -> None:
        """A live event of a shared conversation this socket watches (not one it streams itself).
        Whether the watcher may still see it is checked again as each answer starts, so a
        conversation unshared, or a member removed from the project, stops reaching them."""
        event = message["event"]
        conversation_id = event.get("conversation")
        if message.get("origin") == self.channel_name or self.closed or conversation_id not in self.watching:
            return
        if event.get("type") == "started":
            visible = await database_sync_to_async(selectors.conversation_visible)(
                user=self.user, conversation_id=conversation_id
            )
            if visible is None:
                await self.channel_layer.group_discard(group_name(conversation_id), self.channel_name)
                self.watching.discard(conversation_id)
                await self.send_json({"type": "unsubscribed", "conversation": conversation_id})
                return
        await self.send_json(event)


async def _abandon(call: asyncio.Future[Answer | Stream]) -> None:
    """End a gateway call whose answer is not wanted: cancelled while under way (the gateway closes
    it), closed if it already returned its stream (the slot freed, the quota settled)."""
    call.cancel()
    await asyncio.wait([call])
    if not call.cancelled() and call.exception() is None:
        result = call.result()
        if isinstance(result, Stream):
            await result.aclose()


def _rate(stream: Stream, started: float) -> float | None:
    """Completion tokens per second after the first token: the generation speed, not the wait."""
    if stream.usage is None or stream.ttft_ms is None:
        return None
    seconds = time.perf_counter() - started - stream.ttft_ms / 1000
    if seconds <= 0 or stream.usage.completion_tokens <= 0:
        return None
    return round(stream.usage.completion_tokens / seconds, 2)
