"""Reads of the forecast jobs: who sees which job, and a job in the seed's shape."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from console.models import Project, Role
from forecasts.models import ForecastJob, ProjectBucket


def _iso(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


def job_json(job: ForecastJob) -> dict[str, Any]:
    """The seed's answer: exactly {id, name, created_at, updated_at, state, input, output, config}."""
    return {
        "id": job.pk,
        "name": job.name,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "state": job.state,
        "input": job.input,
        "output": job.output,
        "config": job.config,
    }


def jobs_visible(*, project: Project) -> QuerySet[ForecastJob]:
    """Every role of a project watches all of its jobs (DESIGN.md's roles); none sees another's."""
    return ForecastJob.objects.filter(project=project)


def job_visible(*, project: Project, job_id: str) -> ForecastJob | None:
    if not isinstance(job_id, str) or "\x00" in job_id or len(job_id) > 64:
        return None
    return ForecastJob.objects.filter(project=project, pk=job_id).select_related("submitted_by").first()


def may_cancel(*, job: ForecastJob, user_id: int, role: str) -> bool:
    """Admins cancel any job of their project; members and operators their own."""
    return role == Role.ADMIN or job.submitted_by_id == user_id


def bucket_names(*, project: Project) -> list[str]:
    return list(ProjectBucket.objects.filter(project=project).values_list("name", flat=True))
