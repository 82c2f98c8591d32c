"""Writes of the playground: conversations, their turns, and the preparation of a turn to stream.

A turn is prepared in one database hop (`playground_turn_begin`): who may write where, the user's
message stored, and the gateway body of each model to answer it. The answer itself goes through the
one gateway service (`chat.gateway.gateway_call`), like any API call; what came of it is stored by
`answer_record`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat import selectors
from chat.errors import Failure, GatewayError, rejected
from chat.gateway import Route
from chat.models import Conversation, ConversationMode, Turn, TurnRole, TurnStatus
from console.callers import Caller, CallerRejected, caller_for_session
from console.models import Project
from models_registry.models import LlmModel
from models_registry.providers.base import Mode, Usage

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


@transaction.atomic
def turn_edit_and_truncate(*, conversation: Conversation, turn_id: int, content: str) -> Turn:
    """Rewrite a past user turn and forget everything after it, so the conversation resumes from there."""
    turn = Turn.objects.select_for_update().filter(conversation=conversation, pk=turn_id, role=TurnRole.USER).first()
    if turn is None:
        raise GatewayError(Failure.NOT_FOUND, f"No user turn {turn_id} in this conversation.", param="edit")
    Turn.objects.filter(conversation=conversation, pk__gt=turn.pk).delete()
    turn.content = content
    turn.save(update_fields=["content"])
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    return turn


@transaction.atomic
def turn_regenerate(*, conversation: Conversation, model_names: list[str]) -> Turn:
    """Answer the last user turn again: the answers of these models after it are forgotten."""
    last = conversation.turns.filter(role=TurnRole.USER).order_by("-pk").first()
    if last is None:
        raise GatewayError(Failure.PARAM_REQUIRED, "Nothing to regenerate: send content.", param="content")
    conversation.turns.filter(pk__gt=last.pk, model_name__in=model_names).delete()
    return last


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
class TurnPlan:
    caller: Caller
    conversation_id: str
    shared: bool
    user_turn_id: int
    user_content: str  # the message answered, for members watching live who have not seen it
    streams: list[PlannedStream]


def _caller(user: User, project: Project) -> Caller:
    try:
        return caller_for_session(user=user, project=project)
    except CallerRejected as exc:
        raise rejected(exc) from None


def _not_found(conversation_id: str) -> GatewayError:
    # The same answer for a conversation of another project, another member's unshared one, or none.
    return GatewayError(Failure.NOT_FOUND, "No such conversation.", param="conversation")


@transaction.atomic
def playground_turn_begin(*, user: User, start: TurnStart, session_project_id: str | None) -> TurnPlan:
    """Check the user may write to the conversation (its owner, still a member whose role may use
    models), store the user's message (new, edited, or the last one again for a regenerate) and
    return each model's gateway body. Raises GatewayError; nothing is stored then."""
    if start.conversation_id is None:
        project_id = start.project_id or session_project_id
        if project_id is not None:
            project = Project.objects.filter(pk=project_id, memberships__user=user).first()
            if project is None:
                raise GatewayError(Failure.NOT_FOUND, "No such project.", param="project")
        else:
            membership = selectors.first_membership(user=user)
            if membership is None:
                raise GatewayError(Failure.FORBIDDEN, "You are not a member of any project yet.")
            project = membership.project
        caller = _caller(user, project)
        conversation = conversation_create(
            owner=user,
            project=project,
            model_name=start.streams[0].model,
            mode=start.mode,
            system=start.system,
            params=start.params,
            title=start.title or (start.content or "")[:80],
        )
    else:
        found = selectors.conversation_visible(user=user, conversation_id=start.conversation_id)
        if found is None:
            raise _not_found(start.conversation_id)
        caller = _caller(user, found.project)
        if found.owner_id != user.pk:
            raise GatewayError(Failure.FORBIDDEN, "This conversation is shared read-only: only its owner continues it.")
        conversation = found
        if start.params:
            conversation.params = {**conversation.params, **_params(start.params)}
            conversation.save(update_fields=["params"])
    models = [s.model for s in start.streams]
    if start.edit is not None:
        if start.content is None:
            raise GatewayError(Failure.PARAM_REQUIRED, "An edit needs the new content.", param="content")
        user_turn = turn_edit_and_truncate(conversation=conversation, turn_id=start.edit, content=start.content)
    elif start.content is None:
        user_turn = turn_regenerate(conversation=conversation, model_names=models)
    else:
        user_turn = turn_append(conversation=conversation, role=TurnRole.USER, content=start.content)
    mode: Mode = "text" if conversation.mode == ConversationMode.TEXT else "chat"
    planned = []
    for spec in start.streams:
        body: dict[str, Any] = {"model": spec.model, "stream": True, **_params(conversation.params)}
        if mode == "text":
            body["prompt"] = user_turn.content
        else:
            body["messages"] = selectors.conversation_messages(conversation=conversation, model_name=spec.model)
        planned.append(
            PlannedStream(request=spec.request, model=spec.model, route=Route(entry="playground", mode=mode), body=body)
        )
    return TurnPlan(
        caller=caller,
        conversation_id=conversation.pk,
        shared=conversation.shared,
        user_turn_id=user_turn.pk,
        user_content=user_turn.content,
        streams=planned,
    )


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
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    if conversation is None:
        return None
    return turn_append(
        conversation=conversation,
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
