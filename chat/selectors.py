from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import F, Q, QuerySet, Sum
from django.db.models.functions import Lower
from django.utils import timezone

from chat import quota, rollups
from chat.db import run_db
from chat.models import (
    Conversation,
    QuotaCounter,
    RollupDimension,
    Turn,
    TurnRole,
    TurnStatus,
    UsageDaily,
    UsageLatency,
    UsageRecord,
)
from console.lib.days import on_days
from console.models import ApiKey, Membership, Project, Role
from models_registry.models import LlmModel, Provider, QuotaPeriod


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
        # LOWER(model_name) = ..., which the usage_project_model index holds (iexact would be UPPER or LIKE).
        records = records.alias(model_lower=Lower("model_name")).filter(model_lower=model.lower())
    if key:
        # The project's matching keys first (a few rows), then their calls by the api_key index.
        keys = ApiKey.objects.filter(project=project).filter(Q(name__iexact=key) | Q(prefix__startswith=key))
        records = records.filter(api_key__in=keys.values("pk"))
    if dialect:
        records = records.filter(dialect=dialect)
    if status:
        records = records.filter(status=status)
    return on_days(records, since=since, until=until).order_by("-created_at", "-pk")


# The export's columns: (header, the record's field). One table, so a header cannot drift from its field.
CSV_COLUMNS = (
    ("created_at", "created_at"),
    ("request_id", "request_id"),
    ("model", "model_name"),
    ("api_key", "api_key__name"),
    ("api_key_prefix", "api_key__prefix"),
    ("user", "user__username"),
    *((name, name) for name in ("dialect", "mode", "stream", "status", "http_status", "error_code")),
    *((name, name) for name in ("prompt_tokens", "completion_tokens", "total_tokens", "usage_estimated")),
    ("latency_ms", "latency_ms"),
    ("ttft_ms", "ttft_ms"),
)


class _Line:
    """csv.writer's file: hands back each line it writes."""

    def write(self, value: str) -> str:
        return value


def _cell(value: object) -> object:
    # A spreadsheet runs a cell that starts with one of these as a formula; key names and model names
    # are typed by project members. OWASP's advice: a leading quote makes it text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


CSV_CHUNK = 2000


def usage_csv(*, records: QuerySet[UsageRecord]) -> Iterator[str]:
    """The records (newest first, as `usage_records` orders them) as CSV text, a header first, then
    CSV_CHUNK records a piece. Each piece is one query of its own that starts where the last ended
    (created_at, id), so an export of a million records holds one piece in memory, and the pieces
    may be read on different threads (`ausage_csv`)."""
    writer = csv.writer(_Line())
    yield writer.writerow([header for header, _ in CSV_COLUMNS])
    rows = records.order_by("-created_at", "-pk").values_list("pk", *(field for _, field in CSV_COLUMNS))
    after: tuple[datetime, int] | None = None
    while True:
        page = (
            rows if after is None else rows.filter(Q(created_at__lt=after[0]) | Q(created_at=after[0], pk__lt=after[1]))
        )
        chunk = list(page[:CSV_CHUNK])
        if not chunk:
            return
        yield "".join(writer.writerow([created.isoformat(), *(_cell(v) for v in rest)]) for _, created, *rest in chunk)
        after = (chunk[-1][1], chunk[-1][0])


async def ausage_csv(*, pieces: Iterator[str]) -> AsyncIterator[str]:
    """`usage_csv`'s pieces for an ASGI server, which would otherwise read a synchronous iterator
    whole before sending a byte: each piece is read on a gateway database thread. Closed when the
    client goes away (Django closes this generator), so whatever `pieces` holds is let go."""
    try:
        while (piece := await run_db(next, pieces, None)) is not None:
            yield piece
    finally:
        close = getattr(pieces, "close", None)
        try:
            if close is not None:
                close()
        except ValueError:
            # Cancelled while its thread still reads a piece: once that read ends nothing refers to
            # the generator, and CPython closes it then.
            pass


# --- the usage dashboard ----------------------------------------------------------------------------
TOP_N = 10


@dataclass
class ModelUsage:
    """One model's calls over the dashboard's days (or every model's, named "")."""

    name: str
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None


@dataclass
class TopCaller:
    label: str
    requests: int
    tokens: int
    errors: int
    key_prefix: str = ""  # a key's: the usage log's filter for its calls


@dataclass
class UsageDashboard:
    since: date
    until: date
    days: list[date]
    total: ModelUsage
    models: list[ModelUsage]  # most requests first
    # Per model name, one value per day of `days`: requests, errors, prompt_tokens, completion_tokens.
    per_day: dict[str, dict[str, list[int]]]
    # Every model's latency_p50, latency_p95, ttft_p50, ttft_p95 per day of `days` (None: no call).
    percentiles_per_day: dict[str, list[float | None]]
    codes: list[tuple[str, int]]  # failed calls per error code, most first
    top_keys: list[TopCaller]
    top_users: list[TopCaller]


def usage_dashboard(*, project: Project, since: date, until: date) -> UsageDashboard:
    """The project's gateway calls on the days since..until (inclusive, TIME_ZONE), from the daily
    rollups only (`chat.rollups`): six queries whatever the number of records. Percentiles are the
    rollups' bucket estimates (within `rollups.MAX_RELATIVE_ERROR`)."""
    days = [since + timedelta(days=n) for n in range((until - since).days + 1)]
    index = {day: n for n, day in enumerate(days)}
    in_range = {"project": project, "day__gte": since, "day__lte": until}

    models: dict[str, ModelUsage] = {}
    per_day: dict[str, dict[str, list[int]]] = {}
    series = ("requests", "errors", "prompt_tokens", "completion_tokens")
    rows = UsageDaily.objects.filter(dimension=RollupDimension.MODEL, **in_range).values_list(
        "day", "name", "requests", "errors", "cancelled", "prompt_tokens", "completion_tokens"
    )
    for day, name, requests, errors, cancelled, prompt, completion in rows:
        usage = models.get(name) or models.setdefault(name, ModelUsage(name=name))
        usage.requests += requests
        usage.errors += errors
        usage.cancelled += cancelled
        usage.prompt_tokens += prompt
        usage.completion_tokens += completion
        lines = per_day.get(name) or per_day.setdefault(name, {s: [0] * len(days) for s in series})
        for s, value in zip(series, (requests, errors, prompt, completion), strict=True):
            lines[s][index[day]] += value

    buckets = UsageLatency.objects.filter(**in_range)
    by_model: dict[tuple[str, str], dict[int, int]] = {}
    for name, kind, bucket, count in (
        buckets.values("model_name", "kind", "bucket")
        .annotate(n=Sum("count"))
        .values_list("model_name", "kind", "bucket", "n")
    ):
        for who in (name, ""):
            counts = by_model.setdefault((who, kind), {})
            counts[bucket] = counts.get(bucket, 0) + count
    by_day: dict[tuple[date, str], dict[int, int]] = {}
    for day, kind, bucket, count in (
        buckets.values("day", "kind", "bucket").annotate(n=Sum("count")).values_list("day", "kind", "bucket", "n")
    ):
        by_day.setdefault((day, kind), {})[bucket] = count

    total = ModelUsage(name="")
    for usage in models.values():
        for f in ("requests", "errors", "cancelled", "prompt_tokens", "completion_tokens"):
            setattr(total, f, getattr(total, f) + getattr(usage, f))
    for usage in [total, *models.values()]:
        for kind in (rollups.LATENCY, rollups.TTFT):
            counts = by_model.get((usage.name, kind), {})
            setattr(usage, f"{kind}_p50", rollups.percentile(counts, 50))
            setattr(usage, f"{kind}_p95", rollups.percentile(counts, 95))
    percentiles_per_day = {
        f"{kind}_p{p}": [rollups.percentile(by_day.get((day, kind), {}), p) for day in days]
        for kind in (rollups.LATENCY, rollups.TTFT)
        for p in (50, 95)
    }

    sums = (
        UsageDaily.objects.filter(
            dimension__in=[RollupDimension.KEY, RollupDimension.USER, RollupDimension.CODE], **in_range
        )
        .exclude(name="")
        .values("dimension", "name")
        .annotate(n=Sum("requests"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")), failed=Sum("errors"))
        .values_list("dimension", "name", "n", "tokens", "failed")
    )
    grouped: dict[str, list[tuple[str, int, int, int]]] = {}
    for dimension, name, n, tokens, failed in sums:
        grouped.setdefault(dimension, []).append((name, n, tokens, failed))
    codes = sorted(((name, n) for name, n, _, _ in grouped.get(RollupDimension.CODE, [])), key=lambda c: (-c[1], c[0]))

    def top(dimension: str) -> list[tuple[int, int, int, int]]:
        ranked = sorted(grouped.get(dimension, []), key=lambda row: (-row[1], -row[2], row[0]))[:TOP_N]
        return [(int(name), n, tokens, failed) for name, n, tokens, failed in ranked]

    keys, users = top(RollupDimension.KEY), top(RollupDimension.USER)
    key_names = {
        pk: (name, prefix)
        for pk, name, prefix in ApiKey.objects.filter(pk__in=[k[0] for k in keys]).values_list("pk", "name", "prefix")
    }
    user_labels = dict(User.objects.filter(pk__in=[u[0] for u in users]).values_list("pk", "username"))
    return UsageDashboard(
        since=since,
        until=until,
        days=days,
        total=total,
        models=sorted(models.values(), key=lambda m: (-m.requests, m.name)),
        per_day=dict(sorted(per_day.items())),
        percentiles_per_day=percentiles_per_day,
        codes=codes,
        top_keys=[
            TopCaller(f"{key_names[pk][0]} ({key_names[pk][1]}…)", n, tokens, failed, key_prefix=key_names[pk][1])
            if pk in key_names
            else TopCaller(f"deleted key #{pk}", n, tokens, failed)
            for pk, n, tokens, failed in keys
        ],
        top_users=[
            TopCaller(user_labels.get(pk, f"deleted user #{pk}"), n, tokens, failed) for pk, n, tokens, failed in users
        ],
    )


@dataclass
class QuotaUse:
    provider: str
    period: str  # "total" or "YYYY-MM"
    quota: int
    used: int
    reserved: int
    # Of the month, for a monthly quota: what is left of the period, to set beside what is left of it.
    period_left: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.quota - self.used - self.reserved)

    @property
    def remaining_share(self) -> float:
        return self.remaining / self.quota if self.quota > 0 else 0.0


def quota_use(*, project: Project) -> list[QuotaUse]:
    """Each of the project's providers with a token quota: what its current period has used and
    holds reserved (two queries)."""
    providers = list(Provider.objects.filter(project=project, token_quota__isnull=False).order_by("name", "pk"))
    periods = {p.pk: quota.current_period(p) for p in providers}
    counters = {
        (c.provider_id, c.period): c
        for c in QuotaCounter.objects.filter(provider__in=providers, period__in=set(periods.values()))
    }
    now = timezone.now()  # a monthly period is a UTC month (`quota.current_period`)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    month_left = (next_month - now) / (next_month - month_start)
    found = []
    for p in providers:
        counter = counters.get((p.pk, periods[p.pk]))
        assert p.token_quota is not None
        found.append(
            QuotaUse(
                provider=p.name,
                period=periods[p.pk],
                quota=p.token_quota,
                used=counter.used if counter else 0,
                reserved=counter.reserved if counter else 0,
                period_left=month_left if p.quota_period == QuotaPeriod.MONTHLY else None,
            )
        )
    return found
