from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from django.utils import timezone

from chat.models import Conversation, Turn, TurnRole, TurnStatus, UsageRecord
from console.models import Membership, Project, Role
from models_registry.models import LlmModel


def models_listing(*, project: Project, group: str | None) -> list[dict[str, Any]]:
    """Models a caller can use now: enabled, with inference, in an enabled group."""
    qs = LlmModel.objects.select_related("provider").filter(
        Q(supports_chat=True) | Q(supports_completions=True),  # not a forecast engine
        provider__project=project,
        enabled=True,
        cap_infer=True,
        provider__enabled=True,
    )
    if group is not None:
        qs = qs.filter(provider__slug=group)
    return [
        {"id": m.name, "object": "model", "created": int(m.created_at.timestamp()), "owned_by": m.provider.slug}
        for m in qs.order_by("provider__slug", "pk")
    ]


def projects_listing(*, user_id: int, base: str, name: str | None = None) -> list[dict[str, Any]]:
    """The user's projects in IAM's shape; `name` keeps only the one of exactly that name, as IAM's
    `GET /v3/projects?name=` does (the manual's recipe: find the project by name, take its id)."""
    projects = Project.objects.filter(memberships__user_id=user_id).order_by("created_at")
    if name is not None:
        # No project's name holds a NUL, and PostgreSQL refuses a query that looks for one.
        projects = projects.filter(name=name) if "\x00" not in name else projects.none()
    return [
        {
            "domain_id": p.pk,
            "is_domain": False,
            "parent_id": p.pk,
            "name": p.name,
            "description": p.description,
            "links": {"next": None, "previous": None, "self": f"{base}/{p.pk}"},
            "id": p.pk,
            "enabled": True,
        }
        for p in projects
    ]


def usage_summary(*, project: Project, hours: int = 24) -> dict[str, int]:
    """Calls, failed calls and tokens of the project's gateway calls in the last `hours`."""
    from datetime import timedelta

    from django.db.models import Count, Q, Sum
    from django.utils import timezone

    from chat.models import UsageRecord

    since = timezone.now() - timedelta(hours=hours)
    totals = UsageRecord.objects.filter(project=project, created_at__gte=since).aggregate(
        calls=Count("id"), failed=Count("id", filter=Q(status="error")), tokens=Sum("total_tokens")
    )
    return {"calls": totals["calls"] or 0, "failed": totals["failed"] or 0, "tokens": totals["tokens"] or 0}


# --- the playground ---------------------------------------------------------------------------------
def first_membership(*, user: User) -> Membership | None:
    return Membership.objects.select_related("project").filter(user=user).order_by("created_at", "pk").first()


def conversation_visible(*, user: User, conversation_id: str) -> Conversation | None:
    """A conversation the user may read: their own, or one shared in a project where they may use
    models. Anything else (another project's, a colleague's unshared one, none) is None alike."""
    if not isinstance(conversation_id, str) or "\x00" in conversation_id:
        return None
    return (
        Conversation.objects.select_related("project")
        .filter(
            pk=conversation_id,
            project__memberships__user=user,
            project__memberships__role__in=[Role.ADMIN, Role.MEMBER],
        )
        .filter(Q(owner=user) | Q(shared=True))
        .first()
    )


def conversations_listing(*, user: User, project: Project) -> list[Conversation]:
    """The sidebar: the user's conversations in the project, then those colleagues share, newest first."""
    return list(
        Conversation.objects.filter(project=project)
        .filter(Q(owner=user) | Q(shared=True))
        .select_related("owner")
        .order_by("-updated_at")
    )


def history_messages(*, system: str, turns: list[Turn], model_name: str) -> list[dict[str, str]]:
    """The chat history sent to `model_name`: the persona, every user turn, and after each the answer
    this model gave (else the first complete one; compare mode stores one per model). Failed answers
    are left out; a stopped one is sent as far as it got. From turns in order, stored or about to be
    (a playground turn is planned before its message is stored)."""
    messages = [{"role": "system", "content": system}] if system else []
    answers: list[Turn] = []

    def flush() -> None:
        usable = [t for t in answers if t.status != TurnStatus.ERROR and t.content]
        mine = [t for t in usable if t.model_name == model_name]
        chosen = mine[0] if mine else next((t for t in usable if t.status == TurnStatus.OK), None)
        if chosen is not None:
            messages.append({"role": "assistant", "content": chosen.content})
        answers.clear()

    for turn in turns:
        if turn.role == TurnRole.USER:
            flush()
            messages.append({"role": "user", "content": turn.content})
        else:
            answers.append(turn)
    flush()
    return messages


def _turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "id": turn.pk,
        "role": turn.role,
        "content": turn.content,
        "model": turn.model_name,
        "status": turn.status,
        "error_code": turn.error_code,
        "usage": {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "total_tokens": turn.total_tokens,
        },
        "ttft_ms": turn.ttft_ms,
        "tokens_per_second": turn.tokens_per_second,
        "created_at": turn.created_at.isoformat(),
    }


def conversation_export_json(*, conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "model": conversation.model_name,
        "mode": conversation.mode,
        "system": conversation.system,
        "params": conversation.params,
        "shared": conversation.shared,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "turns": [_turn_json(t) for t in conversation.turns.order_by("pk")],
    }


def conversation_export_markdown(*, conversation: Conversation) -> str:
    """The conversation as Markdown: a heading per turn; the texts are as written (a reader renders
    them, and sanitises them, like any Markdown)."""
    lines = [
        f"# {conversation.title or 'Conversation'}",
        "",
        f"Model: `{conversation.model_name}` ({conversation.mode})",
    ]
    if conversation.system:
        lines += ["", "## System", "", conversation.system]
    for turn in conversation.turns.order_by("pk"):
        if turn.role == TurnRole.USER:
            heading = "## User"
        else:
            heading = f"## Assistant ({turn.model_name})"
            if turn.status != TurnStatus.OK:
                heading += f" [{turn.status}{': ' + turn.error_code if turn.error_code else ''}]"
        lines += ["", heading, "", turn.content]
    return "\n".join(lines) + "\n"


def playground_models(*, project: Project) -> list[dict[str, Any]]:
    """The model picker: models that can answer now (enabled, with inference, in an enabled
    provider), grouped by provider. `value` is what the gateway resolves: the bare name, or
    `provider/name` when two providers of the project serve a model of that name. A model without a
    chat template (a base model) is offered for text completion only."""
    rows = list(
        LlmModel.objects.select_related("provider")
        .filter(provider__project=project, enabled=True, cap_infer=True, provider__enabled=True)
        .filter(Q(supports_chat=True) | Q(supports_completions=True))  # forecast engines answer tasks only
        .order_by("provider__name", "provider__slug", "name")
    )
    counts: dict[str, int] = {}
    for name in LlmModel.objects.filter(provider__project=project).values_list("name", flat=True):
        counts[name] = counts.get(name, 0) + 1
    groups: dict[int, dict[str, Any]] = {}
    for m in rows:
        group = groups.setdefault(
            m.provider_id,
            {
                "provider": m.provider.name,
                "slug": m.provider.slug,
                "configured": m.provider.is_configured,
                "models": [],
            },
        )
        group["models"].append(
            {
                "value": f"{m.provider.slug}/{m.name}" if counts.get(m.name, 0) > 1 else m.name,
                "label": m.display_name or m.name,
                "context_length": m.context_length,
                "chat": m.supports_chat,
                "text": m.supports_completions,
            }
        )
    return list(groups.values())


def conversation_page_data(*, conversation: Conversation) -> dict[str, Any]:
    """What the page needs to show a stored conversation: its settings and turns."""
    data = conversation_export_json(conversation=conversation)
    data["owner"] = conversation.owner.get_username()
    return data


def usage_records(
    *,
    project: Project,
    user: User | None = None,
    model: str = "",
    key: str = "",
    dialect: str = "",
    status: str = "",
    since: date | None = None,
    until: date | None = None,
) -> QuerySet[UsageRecord]:
    """A project's gateway calls for the usage log, newest first: only `user`'s own when given (a
    member's view), filtered by model name, API key (name or prefix), door, outcome and the days
    `since`..`until` inclusive (the server's time zone)."""
    records = UsageRecord.objects.filter(project=project).select_related("api_key", "user")
    if user is not None:
        records = records.filter(user=user)
    if model:
        records = records.filter(model_name__iexact=model)
    if key:
        records = records.filter(Q(api_key__name__iexact=key) | Q(api_key__prefix__startswith=key))
    if dialect:
        records = records.filter(dialect=dialect)
    if status:
        records = records.filter(status=status)
    if since is not None:
        records = records.filter(created_at__gte=_day_start(since))
    if until is not None and until < date.max:  # the last day a date can name has no day after it
        records = records.filter(created_at__lt=_day_start(until + timedelta(days=1)))
    return records.order_by("-created_at", "-pk")


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))
