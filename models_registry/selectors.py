"""Reads of the registry, always scoped to one project."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from console.models import Project
from models_registry.models import CAPABILITIES, Deployment, LlmModel, Provider


def providers_for(*, project: Project) -> QuerySet[Provider]:
    return Provider.objects.filter(project=project).annotate(model_count=Count("models"))


# The provider list's "recent error rate" covers the gateway's calls of this long before the page.
HEALTH_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class RecentCalls:
    """A provider's gateway calls in the health window: how many, and how many failed (a call the
    client cancelled is not a failure)."""

    calls: int
    errors: int

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


def providers_with_health(*, project: Project, now: datetime | None = None) -> list[Provider]:
    """The project's providers, each with `recent` (RecentCalls over HEALTH_WINDOW) beside its last
    check: two queries for the whole list (the providers, and one aggregate over the usage records)."""
    from chat.models import UsageRecord

    since = (now or timezone.now()) - HEALTH_WINDOW
    rows = (
        UsageRecord.objects.filter(project=project, created_at__gte=since, provider__isnull=False)
        .order_by()
        .values("provider_id")
        .annotate(calls=Count("pk"), errors=Count("pk", filter=Q(status="error")))
    )
    recent = {row["provider_id"]: RecentCalls(calls=row["calls"], errors=row["errors"]) for row in rows}
    providers = list(providers_for(project=project))
    for provider in providers:
        provider.recent = recent.get(provider.pk, RecentCalls(calls=0, errors=0))  # type: ignore[attr-defined]
    return providers


def provider_get(*, project: Project, provider_id: int) -> Provider | None:
    return Provider.objects.filter(project=project, pk=provider_id).first()


def provider_by_slug(*, project: Project, slug: str) -> Provider | None:
    return Provider.objects.filter(project=project, slug=slug).first()


@dataclass(frozen=True)
class ModelFilter:
    provider: str = ""  # slug
    capability: str = ""  # one of CAPABILITIES' keys
    state: str = ""  # "enabled" | "disabled"
    q: str = ""


def models_for(*, project: Project, filters: ModelFilter | None = None) -> QuerySet[LlmModel]:
    qs = LlmModel.objects.select_related("provider").filter(provider__project=project)
    f = filters or ModelFilter()
    if f.provider:
        qs = qs.filter(provider__slug=f.provider)
    if f.capability in {key for key, _ in CAPABILITIES}:
        qs = qs.filter(**{f"cap_{f.capability}": True})
    if f.state == "enabled":
        qs = qs.filter(enabled=True)
    elif f.state == "disabled":
        qs = qs.filter(enabled=False)
    if f.q:
        qs = qs.filter(Q(name__icontains=f.q) | Q(display_name__icontains=f.q) | Q(description__icontains=f.q))
    return qs.order_by("provider__slug", "pk")


def model_get(*, project: Project, model_id: int) -> LlmModel | None:
    return LlmModel.objects.select_related("provider").filter(provider__project=project, pk=model_id).first()


def model_resolve(*, project: Project, group: str | None, name: str) -> LlmModel | None:
    """The model a request names, read from the database on every call (no cache): a switch made
    in any process is in force on the next request everywhere."""
    qs = LlmModel.objects.select_related("provider").filter(provider__project=project, name=name)
    if group is not None:
        qs = qs.filter(provider__slug=group)
    return qs.order_by("provider__slug").first()


def deployments_for(*, project: Project) -> QuerySet[Deployment]:
    return Deployment.objects.select_related("model__provider").filter(project=project)


def deployment_get(*, project_id: str, deployment_id: str) -> Deployment | None:
    return (
        Deployment.objects.select_related("model__provider", "project")
        .filter(project_id=project_id, pk=deployment_id)
        .first()
    )


# The same lookups for pages and the API, where "not in your project" must read as "does not exist".
def provider_get_or_404(*, project: Project, provider_id: int) -> Provider:
    provider = provider_get(project=project, provider_id=provider_id)
    if provider is None:
        raise Http404("No such provider in this project.")
    return provider


def model_get_or_404(*, project: Project, model_id: int) -> LlmModel:
    model = model_get(project=project, model_id=model_id)
    if model is None:
        raise Http404("No such model in this project.")
    return model


def deployment_get_or_404(*, project: Project, deployment_id: str) -> Deployment:
    deployment = deployment_get(project_id=project.pk, deployment_id=deployment_id)
    if deployment is None:
        raise Http404("No such deployment in this project.")
    return deployment
