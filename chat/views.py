"""The playground's pages: the chat page itself (which talks to `/ws/playground/`, chat/consumers.py)
and the HTTP actions on a stored conversation: rename, share, delete, export. Thin: check, call, render."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from chat import selectors, services
from chat.models import Conversation
from chat.personas import DEFAULT_PARAMS, PERSONAS
from console.current import AuthedRequest, require_current_membership
from console.models import Membership, Role

OPERATORS_REFUSED = "Operators submit and watch forecast jobs; the playground is for the project's admins and members."


def _user_of_models(request: AuthedRequest) -> Membership:
    membership = require_current_membership(request)
    if membership.role == Role.OPERATOR:
        raise PermissionDenied(OPERATORS_REFUSED)
    return membership


def _visible(request: AuthedRequest, conversation_id: str) -> Conversation:
    # 404 alike for another project's conversation, a colleague's unshared one, and none at all.
    conversation = selectors.conversation_visible(user=request.user, conversation_id=conversation_id)
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def _owned(request: AuthedRequest, conversation_id: str) -> Conversation:
    conversation = _visible(request, conversation_id)
    if conversation.owner_id != request.user.pk:
        raise PermissionDenied("This conversation is shared with you read-only: only its owner can change it.")
    return conversation


def _form_params(conversation: Conversation | None) -> dict[str, object]:
    """The sampling fields' values: the conversation's own where it set them, else the defaults."""
    params: dict[str, object] = {**DEFAULT_PARAMS, "stop": [], **(conversation.params if conversation else {})}
    if isinstance(params["stop"], str):
        params["stop"] = [params["stop"]]
    return params


@login_required
@require_GET
def playground(request: AuthedRequest, conversation_id: str | None = None) -> HttpResponse:
    membership = _user_of_models(request)
    conversation = _visible(request, conversation_id) if conversation_id else None
    project = conversation.project if conversation is not None else membership.project
    context = {
        "project": project,
        "conversation": conversation,
        "read_only": conversation is not None and conversation.owner_id != request.user.pk,
        "conversations": selectors.conversations_listing(user=request.user, project=project),
        "model_groups": selectors.playground_models(project=project),
        "personas": PERSONAS,
        "defaults": DEFAULT_PARAMS,
        "params": _form_params(conversation),
        "page_data": {
            "project": project.pk,
            "user": request.user.get_username(),
            "conversation": selectors.conversation_page_data(conversation=conversation) if conversation else None,
            "socket": "/ws/playground/",
            "page": reverse("chat:playground"),
            "defaults": DEFAULT_PARAMS,
        },
    }
    return render(request, "chat/playground.html", context)


@login_required
@require_POST
def conversation_rename(request: AuthedRequest, conversation_id: str) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    title = request.POST.get("title", "")
    if not title.strip():
        messages.error(request, "A title cannot be empty.")
    else:
        services.conversation_rename(conversation=conversation, title=title)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@login_required
@require_POST
def conversation_share(request: AuthedRequest, conversation_id: str) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    shared = request.POST.get("shared") == "on"
    services.conversation_set_shared(conversation=conversation, shared=shared)
    if shared:
        messages.success(request, "Shared: the project's members can open this page's link and watch it live.")
    else:
        messages.success(request, "No longer shared: only you can open it.")
    return redirect("chat:conversation", conversation_id=conversation.pk)


@login_required
@require_POST
def conversation_delete(request: AuthedRequest, conversation_id: str) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    title = str(conversation)
    services.conversation_delete(conversation=conversation)
    messages.success(request, f"Deleted “{title}”.")
    return redirect("chat:playground")


@login_required
@require_GET
def conversation_export(request: AuthedRequest, conversation_id: str, fmt: str) -> HttpResponse:
    conversation = _visible(request, conversation_id)
    filename = slugify(conversation.title)[:60] or "conversation"
    if fmt == "md":
        body = selectors.conversation_export_markdown(conversation=conversation)
        response = HttpResponse(body, content_type="text/markdown; charset=utf-8")
    else:
        data = selectors.conversation_export_json(conversation=conversation)
        response = HttpResponse(json.dumps(data, ensure_ascii=False, indent=2), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    return response
