from __future__ import annotations

from typing import Any

from console.models import Project
from models_registry.models import LlmModel


def models_listing(*, project: Project, group: str | None) -> list[dict[str, Any]]:
    """Models a caller can use now: enabled, with inference, in an enabled group."""
    qs = LlmModel.objects.select_related("provider").filter(
        provider__project=project, enabled=True, cap_infer=True, provider__enabled=True
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
