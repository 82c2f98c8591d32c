"""Writes of the playground: conversations, their turns, and the preparation of a turn to stream.

A turn is planned from reads alone (`playground_turn_plan`: who may write where, the history, the
gateway body of each model to answer it), so the models are called at once; the user's message is
stored (`playground_turn_store`) while they are. Each answer goes through the one gateway service
(`chat.gateway.gateway_call`), like any API call; what came of it is stored by `answer_record`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Subquery
from django.utils import timezone

from chat import selectors
from chat.errors import Failure, GatewayError, rejected
from chat.gateway import Route
from chat.models import Conversation, ConversationMode, Turn, TurnRole, TurnStatus, new_conversation_id
from console.callers import Caller, CallerRejected, Rejection, session_caller
from console.models import Project
from models_registry.models import LlmModel
from models_registry.providers.base import Usage

# The sampling parameters a conversation keeps; the gateway checks their values on every turn.
PARAM_KEYS = ("temperature", "top_p", "max_tokens", "stop")
TITLE_MAX = 200


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if k in PARAM_KEYS and v is not None}


def conversation_create(
    *,
    owner: User,
    project: Project,
    model_name: str,
    mode: str = ConversationMode.CHAT,
    system: str = "",
    params: dict[str, Any] | None = None,
    title: str = "",
) -> Conversation:
    if mode not in ConversationMode.values:
        raise GatewayError(Failure.PARAM_INVALID, "mode must be 'chat' or 'text'.", param="mode")
    model = LlmModel.objects.filter(provider__project=project, name=model_name).order_by("provider__slug").first()
    return Conversation.objects.create(
        owner=owner,
        project=project,
        model_name=model_name,
        model=model,
        mode=mode,
        system=system,
        params=_params(params),
        title=title[:TITLE_MAX],
    )


def conversation_rename(*, conversation: Conversation, title: str) -> None:
    conversation.title = title.strip()[:TITLE_MAX]
    conversation.save(update_fields=["title"])


def conversation_set_shared(*, conversation: Conversation, shared: bool) -> None:
    """Shared: every member of the project who may use models can read it and watch it live; only
    its owner ever writes to it."""
    conversation.shared = shared
    conversation.save(update_fields=["shared"])


def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()  # its turns with it (CASCADE)


def turn_append(*, conversation: Conversation, role: str, content: str, **outcome: Any) -> Turn:
    turn = Turn.objects.create(conversation=conversation, role=role, content=content, **outcome)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    return turn


def _edit_and_truncate(*, conversation_id: str, turn_id: int, content: str) -> None:
    turns = Turn.objects.filter(conversation_id=conversation_id)
    if not turns.filter(pk=turn_id, role=TurnRole.USER).update(content=content):
        raise _no_user_turn(turn_id)
    turns.filter(pk__gt=turn_id).delete()


@transaction.atomic
def turn_edit_and_truncate(*, conversation: Conversation, turn_id: int, content: str) -> None:
    """Rewrite a past user turn and forget everything after it, so the conversation resumes from there."""
    _edit_and_truncate(conversation_id=conversation.pk, turn_id=turn_id, content=content)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())


# --- a playground turn ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSpec:
    """One answer to stream: the client's tag for it, and the model asked."""

    request: str
    model: str


@dataclass(frozen=True)
class TurnStart:
    """A parsed `start` message (docs/playground.md)."""

    streams: list[StreamSpec]
    conversation_id: str | None = None
    project_id: str | None = None
    content: str | None = None
    edit: int | None = None
    mode: str = ConversationMode.CHAT
    system: str = ""
    title: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedStream:
    request: str
    model: str
    route: Route
    body: dict[str, Any]


@dataclass(frozen=True)
class NewConversation:
    project_id: str
    model_name: str
    mode: str
    system: str
    params: dict[str, Any]
    title: str


@dataclass(frozen=True)
class TurnWrite:
    """How the user's message is stored (`playground_turn_store`), as the reads decided it: in a
    new conversation, appended, a past turn edited (and what followed forgotten), or the last one
    answered again (the answers of these models to it forgotten)."""

    owner_id: int
    conversation_id: str
    new: NewConversation | None = None
    content: str | None = None  # appended, or the edited turn's new text
    edit: int | None = None
    regenerate: int | None = None  # the last user turn, answered again
    models: tuple[str, ...] = ()
    params: dict[str, Any] | None = None  # an existing conversation's parameters, merged


@dataclass(frozen=True)
class TurnPlan:
    caller: Caller
    conversation_id: str
    shared: bool
    user_content: str  # the message answered, for members watching live who have not seen it
    streams: list[PlannedStream]
    write: TurnWrite


def _not_found(conversation_id: str) -> GatewayError:
    # The same answer for a conversation of another project, another member's unshared one, or none.
    return GatewayError(Failure.NOT_FOUND, "No such conversation.", param="conversation")


def _no_user_turn(turn_id: int) -> GatewayError:
    return GatewayError(Failure.NOT_FOUND, f"No user turn {turn_id} in this conversation.", param="edit")


def _session_caller(user: User, project_id: str, *, new: bool) -> Caller:
    try:
        return session_caller(user=user, project_id=project_id)
    except CallerRejected as exc:
        if new and exc.reason == Rejection.INVALID:
            raise GatewayError(Failure.NOT_FOUND, "No such project.", param="project") from None
        raise rejected(exc) from None


def playground_turn_plan(
    *, user: User, start: TurnStart, project_id: str | None, caller: Caller | None = None
) -> TurnPlan:
    """Everything a turn's gateway calls need, from reads alone: that the user may write to the
    conversation (its owner, still a member whose role may use models), the history as it will be
    once the message is stored, and each model's gateway body. Nothing is written: the plan says
    what `playground_turn_store` writes, which runs while the models are called. A new conversation
    in `project_id` with the project's `caller` already known (`console.callers.session_caller_from_cache`)
    needs no query at all. Raises GatewayError."""
    models = tuple(s.model for s in start.streams)
    if start.conversation_id is None:
        if caller is None:
            if project_id is None:
                membership = selectors.first_membership(user=user)
                if membership is None:
                    raise GatewayError(Failure.FORBIDDEN, "You are not a member of any project yet.")
                project_id = membership.project_id
            caller = _session_caller(user, project_id, new=True)
        if start.edit is not None:
            raise _no_user_turn(start.edit)  # a new conversation has no past turn
        assert start.content is not None  # parse_start: a new conversation starts with content
        params = _params(start.params)
        write = TurnWrite(
            owner_id=user.pk,
            conversation_id=new_conversation_id(),
            new=NewConversation(
                project_id=caller.project.pk,
                model_name=models[0],
                mode=start.mode,
                system=start.system,
                params=params,
                title=(start.title or start.content[:80])[:TITLE_MAX],
            ),
            content=start.content,
        )
        mode, system, shared, content = start.mode, start.system, False, start.content
        turns = [Turn(role=TurnRole.USER, content=content)]
    else:
        found = selectors.conversation_visible(user=user, conversation_id=start.conversation_id)
        if found is None:
            raise _not_found(start.conversation_id)
        caller = _session_caller(user, found.project_id, new=False)
        if found.owner_id != user.pk:
            raise GatewayError(Failure.FORBIDDEN, "This conversation is shared read-only: only its owner continues it.")
        if start.edit is not None and start.content is None:
            raise GatewayError(Failure.PARAM_REQUIRED, "An edit needs the new content.", param="content")
        params = {**found.params, **_params(start.params)}
        mode, system, shared = found.mode, found.system, found.shared
        # The foreign key is among the fields read: the related manager sets each turn's conversation
        # from it, and a deferred one would cost a query per turn.
        turns = list(
            found.turns.order_by("pk").only("pk", "conversation_id", "role", "content", "model_name", "status")
        )
        if start.edit is not None:
            at = next((i for i, t in enumerate(turns) if t.pk == start.edit and t.role == TurnRole.USER), None)
            if at is None:
                raise _no_user_turn(start.edit)
            assert start.content is not None  # checked above
            turns = [*turns[:at], Turn(pk=start.edit, role=TurnRole.USER, content=start.content)]
            content = start.content
            write = TurnWrite(owner_id=user.pk, conversation_id=found.pk, content=content, edit=start.edit)
        elif start.content is None:
            at = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].role == TurnRole.USER), None)
            if at is None:
                raise GatewayError(Failure.PARAM_REQUIRED, "Nothing to regenerate: send content.", param="content")
            last = turns[at]
            turns = [*turns[: at + 1], *(t for t in turns[at + 1 :] if t.model_name not in models)]
            content = last.content
            write = TurnWrite(owner_id=user.pk, conversation_id=found.pk, regenerate=last.pk, models=models)
        else:
            content = start.content
            turns.append(Turn(role=TurnRole.USER, content=content))
            write = TurnWrite(owner_id=user.pk, conversation_id=found.pk, content=content)
        if start.params:
            write = replace(write, params=params)
    route = Route(entry="playground", mode="text" if mode == ConversationMode.TEXT else "chat")
    planned = []
    for spec in start.streams:
        body: dict[str, Any] = {"model": spec.model, "stream": True, **params}
        if route.mode == "text":
            body["prompt"] = content
        else:
            body["messages"] = selectors.history_messages(system=system, turns=turns, model_name=spec.model)
        planned.append(PlannedStream(request=spec.request, model=spec.model, route=route, body=body))
    return TurnPlan(
        caller=caller,
        conversation_id=write.conversation_id,
        shared=shared,
        user_content=content,
        streams=planned,
        write=write,
    )


@transaction.atomic
def playground_turn_store(write: TurnWrite) -> int:
    """Store the user's message as planned; returns its turn's id. Raises GatewayError(NOT_FOUND)
    when the conversation or the edited turn went in the meantime (nothing is stored then)."""
    now = timezone.now()
    if write.new is not None:
        new = write.new
        # The model's row while it exists (the gateway resolves it by name on every turn).
        model = LlmModel.objects.filter(provider__project_id=new.project_id, name=new.model_name)
        Conversation.objects.create(
            id=write.conversation_id,
            owner_id=write.owner_id,
            project_id=new.project_id,
            model_name=new.model_name,
            model_id=Subquery(model.order_by("provider__slug").values("pk")[:1]),
            mode=new.mode,
            system=new.system,
            params=new.params,
            title=new.title,
            created_at=now,
            updated_at=now,
        )
    else:
        fields: dict[str, Any] = {"updated_at": now}
        if write.params is not None:
            fields["params"] = write.params
        if not Conversation.objects.filter(pk=write.conversation_id, owner_id=write.owner_id).update(**fields):
            raise _not_found(write.conversation_id)
    if write.edit is not None:
        assert write.content is not None
        _edit_and_truncate(conversation_id=write.conversation_id, turn_id=write.edit, content=write.content)
        return write.edit
    if write.regenerate is not None:
        # The answers of these models to the last user turn are forgotten; it is answered again.
        Turn.objects.filter(
            conversation_id=write.conversation_id, pk__gt=write.regenerate, model_name__in=write.models
        ).delete()
        return write.regenerate
    assert write.content is not None
    turn = Turn.objects.create(conversation_id=write.conversation_id, role=TurnRole.USER, content=write.content)
    return int(turn.pk)


def answer_record(
    *,
    conversation_id: str,
    model_name: str,
    request_id: str,
    content: str,
    usage: Usage | None,
    ttft_ms: float | None,
    tokens_per_second: float | None,
    status: str,
    error_code: str = "",
) -> Turn | None:
    """Store an answer however it ended: complete, stopped (its partial text) or failed. None when
    the conversation was deleted while it streamed."""
    if status not in TurnStatus.values:
        raise ValueError(status)
    with transaction.atomic():
        # Two statements: the conversation's row (locked until the insert) and the answer.
        if not Conversation.objects.filter(pk=conversation_id).update(updated_at=timezone.now()):
            return None
        return Turn.objects.create(
            conversation_id=conversation_id,
            role=TurnRole.ASSISTANT,
            content=content,
            model_name=model_name,
            request_id=request_id,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0,
            ttft_ms=ttft_ms,
            tokens_per_second=tokens_per_second,
            status=status,
            error_code=error_code,
        )
