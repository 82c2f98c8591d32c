"""Reads of the forecast jobs: who sees which job, and a job in the seed's shape."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from console.models import Project, Role
from forecasts.models import FINAL_STATES, ForecastJob, JobState, ProjectBucket


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


def job_ensemble(*, job: ForecastJob) -> list[dict[str, Any]]:
    """The ensemble files (forecasts/ensemble_outputs.py) the job's manifest lists, grouped by start."""
    from forecasts.ensemble_outputs import gallery, stored_keys
    from forecasts.storage import default_store

    return gallery(stored_keys(job, default_store()))


def job_verification(*, job: ForecastJob) -> dict[str, Any] | None:
    """The job's stored scores (forecasts/verification.py) for the page, numbers to 4 significant
    digits; None when the job has none stored."""
    from forecasts.storage import default_store
    from forecasts.verification import read_report

    report = read_report(job, default_store())
    if report is None:
        return None
    try:
        return _verification_view(report)
    except (KeyError, TypeError, AttributeError, ValueError):  # the bucket is the operators' to write in
        return {"features": [], "reason": "The stored verification.json cannot be read; it was changed by hand?"}


def _verification_view(report: dict[str, Any]) -> dict[str, Any]:
    from forecasts.config import feature_words

    def shown(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, int | float) else "–"

    names = ("rmse", "persistence_rmse", "acc", "crps", "spread", "ensemble_mean_rmse", "spread_skill")
    features = []
    for feature, scored in report.get("features", {}).items():
        rows = []
        for r in scored["rows"]:
            starts = r["starts"] or r.get("ensemble_starts", 0)  # a members-only feature has no control
            rows.append({"lead": r["lead"], "starts": starts, **{n: shown(r.get(n)) for n in names}})
        ensemble = any(r.get("crps") is not None for r in scored["rows"])
        features.append(
            {
                "feature": feature,
                "words": feature_words(feature),
                "units": scored["units"],
                "rows": rows,
                "ensemble": ensemble,
                "has_acc": any(r.get("acc") is not None for r in scored["rows"]),
            }
        )
    return {
        "features": features,
        "ensemble": any(f["ensemble"] for f in features),
        "members": max((r.get("members") or 0 for s in report["features"].values() for r in s["rows"]), default=0),
        "reason": report.get("reason", ""),
        "acc": report.get("acc", ""),
        "spread_skill_note": report.get("spread_skill_note", ""),
        "truth": report.get("truth", []),
        "skipped": report.get("skipped", []),
        "figure": str((report.get("files") or {}).get("figure") or ""),
        "computed_at": report.get("computed_at", ""),
    }


@dataclass(frozen=True)
class EngineChoice:
    deployment: Any  # models_registry.models.Deployment
    title: str
    usable: bool
    reason: str  # why not, when it is not usable


def engine_choices(*, project: Project) -> list[EngineChoice]:
    """The project's running weather deployments, oldest first, each with whether its engine can run
    now and why not (Pangu-Weather without its model files, say)."""
    from forecasts import engines
    from models_registry.models import Category, Deployment, DeploymentState

    choices = []
    deployments = (
        Deployment.objects.select_related("model")
        .filter(project=project, model__category=Category.SCIENTIFIC, state=DeploymentState.RUNNING)
        .order_by("created_at")
    )
    for deployment in deployments:
        engine = engines.get_engine(deployment.model.name)
        usable, reason = engine.availability() if engine is not None else (False, "not a forecast engine")
        title = deployment.model.display_name or deployment.model.name
        choices.append(EngineChoice(deployment=deployment, title=title, usable=usable, reason=reason))
    return choices


@dataclass
class DurationStats:
    label: str
    count: int
    p50: float | None  # seconds
    p95: float | None
    longest: float | None


@dataclass
class JobStats:
    by_state: list[tuple[str, str, int]]  # (state, its label, jobs), in JobState's order
    durations: list[DurationStats]  # waiting for a worker, then running to each final state


def _nearest_rank(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _stats(label: str, values: list[float]) -> DurationStats:
    return DurationStats(
        label, len(values), _nearest_rank(values, 50), _nearest_rank(values, 95), max(values, default=None)
    )


def job_stats(*, project: Project, since: datetime, before: datetime) -> JobStats:
    """The project's forecast jobs submitted in [since, before): how many are in each state, how long
    they waited for a worker and how long the finished ones ran (exact nearest-rank percentiles, one
    query: a project submits far fewer jobs than calls)."""
    rows = ForecastJob.objects.filter(project=project, created_at__gte=since, created_at__lt=before).values_list(
        "state", "created_at", "started_at", "finished_at"
    )
    counts = dict.fromkeys(JobState.values, 0)
    waited: list[float] = []
    ran: dict[str, list[float]] = {state: [] for state in FINAL_STATES}
    for state, created, started, finished in rows:
        counts[state] = counts.get(state, 0) + 1
        if started is not None:
            waited.append((started - created).total_seconds())
            if finished is not None and state in ran:
                ran[state].append((finished - started).total_seconds())
    labels = dict(JobState.choices)
    return JobStats(
        by_state=[(state, labels.get(state, state), n) for state, n in counts.items()],
        durations=[
            _stats("Waiting for a worker", waited),
            *(_stats(f"Running, then {labels[s].lower()}", ran[s]) for s in JobState.values if s in FINAL_STATES),
        ],
    )
