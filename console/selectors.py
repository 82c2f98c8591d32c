"""Reads for accounts, projects and credentials, always scoped to what the caller may see."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet

from console.lib.days import on_days
from console.models import AccessKey, ApiKey, AuditEvent, Membership, Project, Role

if TYPE_CHECKING:  # the dashboard's parts are other apps' reads
    from chat.selectors import QuotaUse, UsageDashboard
    from forecasts.selectors import JobStats


def projects_for_user(*, user: User) -> QuerySet[Project]:
    return Project.objects.filter(memberships__user=user).annotate(member_count=Count("memberships"))


def membership_for(*, user: User, project_id: str) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.select_related("project").filter(user=user, project_id=project_id).first()


def default_membership(*, user: User) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.select_related("project").filter(user=user).order_by("created_at", "pk").first()


def project_members(*, project: Project) -> QuerySet[Membership]:
    return Membership.objects.select_related("user").filter(project=project).order_by("user__username")


def api_keys_visible(*, user: User, membership: Membership) -> QuerySet[ApiKey]:
    """A project admin sees every key of the project; anyone else only their own."""
    keys = ApiKey.objects.select_related("user").filter(project=membership.project)
    return keys if membership.role == Role.ADMIN else keys.filter(user=user)


def access_keys_visible(*, user: User, membership: Membership) -> QuerySet[AccessKey]:
    keys = AccessKey.objects.select_related("user").filter(project=membership.project)
    return keys if membership.role == Role.ADMIN else keys.filter(user=user)


def audit_events(
    *,
    project: Project,
    action: str = "",
    user: str = "",
    since: date | None = None,
    until: date | None = None,
    text: str = "",
) -> QuerySet[AuditEvent]:
    """A project's audit entries, newest first, filtered: `action` exactly, `user` by username (the
    actor's, or the one tried in a failed sign-in), the days `since`..`until` inclusive (the server's
    time zone), `text` anywhere in the summary, target, address or user agent."""
    events = AuditEvent.objects.filter(project=project)
    if action:
        events = events.filter(action=action)
    if user:
        events = events.filter(actor_name__iexact=user)
    events = on_days(events, since=since, until=until)
    if text:
        events = events.filter(
            Q(summary__icontains=text)
            | Q(target_label__icontains=text)
            | Q(target_id=text)
            | Q(user_agent__icontains=text)
            | Q(via__icontains=text)
        )
    return events.order_by("-created_at", "-pk")


def dashboard_chart_data(*, usage: UsageDashboard, quotas: list[QuotaUse], jobs: JobStats) -> dict[str, Any]:
    """What the operations dashboard's charts draw (static/js/operations.js), as JSON-ready values."""
    return {
        "days": [day.isoformat() for day in usage.days],
        "models": usage.per_day,
        "percentiles": usage.percentiles_per_day,
        "codes": usage.codes,
        "quotas": [
            {"provider": q.provider, "period": q.period, "used": q.used, "reserved": q.reserved, "left": q.remaining}
            for q in quotas
        ],
        "jobs": [[label, n] for _, label, n in jobs.by_state],
    }
