"""The forecast job pages: list (live progress), the form, a job's detail (timeline, figures,
downloads) and cancel. Thin: parse, call services and selectors, render."""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from console.current import AuthedRequest, require_current_membership
from forecasts import selectors, services
from forecasts.config import ConfigError, feature_words, format_time
from forecasts.forms import JobForm
from forecasts.models import ForecastJob, JobState
from forecasts.samples import DEMO_BUCKET, DEMO_PATH
from forecasts.storage import StorageError, default_store


def _job(request: AuthedRequest, job_id: str) -> ForecastJob:
    membership = require_current_membership(request)
    job = selectors.job_visible(project=membership.project, job_id=job_id)
    if job is None:
        raise Http404("No such forecast job.")
    return job


def _progress(job: ForecastJob) -> dict[str, Any]:
    return {
        "id": job.pk,
        "state": job.state,
        "state_label": JobState(job.state).label,
        "progress": round(job.progress, 1),
        "eta_seconds": round(job.eta_seconds) if job.eta_seconds is not None else None,
        "reason": job.reason,
        "updated_at": job.updated_at.isoformat(),
    }


@login_required
@require_GET
def job_list(request: AuthedRequest) -> HttpResponse:
    membership = require_current_membership(request)
    jobs = selectors.jobs_visible(project=membership.project).select_related("submitted_by")[:200]
    return render(request, "forecasts/job_list.html", {"jobs": jobs, "membership": membership})


@login_required
@require_GET
def job_status(request: AuthedRequest) -> JsonResponse:
    """What the list and detail pages poll: each listed job's state and progress."""
    membership = require_current_membership(request)
    ids = [i for i in request.GET.getlist("id") if i][:200]
    jobs = selectors.jobs_visible(project=membership.project).filter(pk__in=ids)
    return JsonResponse({"jobs": [_progress(j) for j in jobs]})


def _chosen_engine(choices: list[selectors.EngineChoice], wanted: str) -> selectors.EngineChoice | None:
    """The deployment the form names, else the first engine that can run, else the first."""
    return (
        next((c for c in choices if c.deployment.pk == wanted), None)
        or next((c for c in choices if c.usable), None)
        or (choices[0] if choices else None)
    )


@login_required
def job_new(request: AuthedRequest) -> HttpResponse:
    membership = require_current_membership(request)
    project = membership.project
    buckets = selectors.bucket_names(project=project)
    choices = selectors.engine_choices(project=project)
    chosen = _chosen_engine(choices, request.POST.get("deployment") or request.GET.get("deployment") or "")
    deployment = chosen.deployment if chosen is not None else None
    initial = _initial(buckets)
    form = JobForm(request.POST or None, buckets=buckets, initial=initial)
    if request.method == "POST" and form.is_valid() and form.spec is not None and deployment is not None:
        try:
            job = services.job_submit(project=project, deployment=deployment, user=request.user, spec=form.spec)
        except services.JobRefused as exc:
            form.add_error(None, exc.message)
        except ConfigError as exc:
            form.add_config_error(exc)
        else:
            messages.success(request, f"Job “{job.name}” submitted. Its progress shows below.")
            return redirect("forecasts:job_detail", job_id=job.pk)
    return render(
        request,
        "forecasts/job_form.html",
        {
            "form": form,
            "deployment": deployment,
            "engines": choices,
            "buckets": buckets,
            "folders": _folders(buckets),
        },
    )


def _initial(buckets: list[str]) -> dict[str, Any]:
    """The demo input when the project has it: its first start time, so a first job works as is."""
    initial: dict[str, Any] = {"name": "my-forecast"}
    if DEMO_BUCKET in buckets:
        begin = datetime(2017, 1, 1, 0, tzinfo=UTC)
        initial.update(
            input_bucket=DEMO_BUCKET,
            input_path=f"{DEMO_PATH}/",
            output_bucket=DEMO_BUCKET,
            output_path="forecasts/",
            start_time_begin=begin.replace(tzinfo=None),
            start_time_end=(begin + timedelta(hours=0)).replace(tzinfo=None),
        )
    return initial


def _folders(buckets: list[str]) -> dict[str, list[str]]:
    """Each bucket's top folders, for the location pickers (an unreachable store offers none)."""
    store = default_store()
    found: dict[str, list[str]] = {}
    for bucket in buckets:
        try:
            found[bucket] = store.list_folders(bucket)[:100]
        except StorageError:
            found[bucket] = []
    return found


@login_required
@require_GET
def job_detail(request: AuthedRequest, job_id: str) -> HttpResponse:
    membership = require_current_membership(request)
    job = _job(request, job_id)
    runs = list(job.runs.order_by("start_time", "member"))
    figures: dict[str, dict[str, list[dict[str, str]]]] = {}
    downloads = []
    for run in runs:
        label = format_time(run.start_time) + (f" member {run.member}" if run.member else "")
        for key in run.outputs:
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".png") and name != "area_means.png":
                feature, _, lead = name[:-4].rpartition("_")
                feature = feature.replace("_", ":", 1)
                lead_hours = str(int(lead.rstrip("h")))  # "024h" -> "24"
                figures.setdefault(label, {}).setdefault(feature, []).append({"key": key, "lead": lead_hours})
            else:
                downloads.append({"run": label, "name": name, "key": key})
    gallery: list[dict[str, Any]] = [
        {
            "run": run_label,
            "features": [
                {"feature": f, "words": feature_words(f), "frames": sorted(frames, key=lambda x: int(x["lead"]))}
                for f, frames in per_feature.items()
            ],
        }
        for run_label, per_feature in figures.items()
    ]
    context = {
        "job": job,
        "runs": runs,
        "events": list(job.events.all()[:500]),
        "gallery": gallery,
        "downloads": downloads,
        "can_cancel": not job.is_final and selectors.may_cancel(job=job, user_id=request.user.pk, role=membership.role),
        "progress": _progress(job),
        "verification": selectors.job_verification(job=job) if job.is_final else None,
        "ensemble": selectors.job_ensemble(job=job) if job.is_final else [],
    }
    return render(request, "forecasts/job_detail.html", context)


@login_required
@require_POST
def job_cancel(request: AuthedRequest, job_id: str) -> HttpResponse:
    membership = require_current_membership(request)
    job = _job(request, job_id)
    if not selectors.may_cancel(job=job, user_id=request.user.pk, role=membership.role):
        raise PermissionDenied("Only the job's submitter or a project admin can cancel it.")
    services.job_cancel(job=job, by=request.user)
    messages.success(request, "Job cancelled.")
    return redirect("forecasts:job_detail", job_id=job.pk)


@login_required
@require_GET
def job_file(request: AuthedRequest, job_id: str, key: str) -> HttpResponse:
    """An output of the job (NetCDF, figure, manifest): only keys the job recorded as its own."""
    job = _job(request, job_id)
    owned = {k for outputs in job.runs.values_list("outputs", flat=True) for k in outputs}
    from forecasts.verification import verification_keys

    owned |= set(verification_keys(job).values())  # written by the job's finalising, beside its runs
    if key.rsplit("/", 1)[-1].startswith("ensemble") or "/ensemble-" in key:  # finalising's, per its manifest
        from forecasts.ensemble_outputs import stored_keys

        owned |= set(stored_keys(job, default_store()))
    if key not in owned:
        raise Http404("No such file in this job's outputs.")
    try:
        data = default_store().read_bytes(job.output["obs"]["bucket"], key)
    except StorageError as exc:
        raise Http404(f"The file cannot be read: {exc}") from None
    name = key.rsplit("/", 1)[-1]
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".nc"):
        content_type = "application/x-netcdf"
    response = HttpResponse(data, content_type=content_type)
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="{job.pk}-{name}"'
    return response
