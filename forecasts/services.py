"""Writes of the forecast jobs: submit (every check a job can fail before it runs), cancel, and the
state changes of runs as workers claim, advance and finish them (forecasts/tasks.py).

Every run state change is one conditional UPDATE, so two workers (or a worker and the reaper) racing
on one run cannot both win: the `attempt` a task carries must still be the run's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Avg, Count, F, Q
from django.utils import timezone

from console.models import Project
from console.services import audit_record
from forecasts import engines, inputs
from forecasts.config import ConfigError, Location, TaskSpec, feature_words, format_time
from forecasts.models import FINAL_STATES, ForecastJob, ForecastRun, JobEvent, JobState, ProjectBucket
from forecasts.storage import ObjectStore, StorageError, default_store
from models_registry.models import Deployment, DeploymentState

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def heartbeat_stale() -> timedelta:
    """How long a run's worker may stay silent before it is taken as dead (the worker renews its
    heartbeat every few seconds while the engine steps)."""
    return timedelta(seconds=settings.FORECAST_HEARTBEAT_STALE_SECONDS)


class JobRefused(Exception):
    """A submission or an action refused for a reason that is not the body's fields (the engine is not
    available, the deployment is stopped): plain words for the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def event(job: ForecastJob | str, message: str, level: str = JobEvent.Level.INFO) -> None:
    job_id = job.pk if isinstance(job, ForecastJob) else job
    JobEvent.objects.create(job_id=job_id, message=message, level=level)


# --- buckets ----------------------------------------------------------------------------------------
def bucket_create(*, project: Project, name: str, store: ObjectStore | None = None) -> ProjectBucket:
    """A bucket for the project, made in the store too. A name another project holds is refused."""
    from forecasts.storage import validate_bucket

    validate_bucket(name)
    if ProjectBucket.objects.filter(name=name).exclude(project=project).exists():
        raise JobRefused(f"The bucket name {name!r} is taken; bucket names are shared by every project.")
    store = store or default_store()
    if not store.bucket_exists(name):
        store.create_bucket(name)
    bucket, _ = ProjectBucket.objects.get_or_create(project=project, name=name)
    return bucket


def _check_buckets(project: Project, spec: TaskSpec) -> None:
    owned = set(ProjectBucket.objects.filter(project=project).values_list("name", flat=True))
    places: list[tuple[str, Location]] = [(f"input.data[{i}].bucket", loc) for i, loc in enumerate(spec.inputs)]
    places.append(("output.obs.bucket", spec.output))
    for field, location in places:
        if location.bucket not in owned:
            # The same words whether the bucket is another project's or does not exist.
            names = ", ".join(sorted(owned)) or "none yet"
            raise ConfigError(field, f"{location.bucket!r} is not a bucket of this project (its buckets: {names}).")


# --- submit -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputCheck:
    times: list[datetime]
    features: list[str]


def _read_locations(store: ObjectStore, spec: TaskSpec) -> InputCheck:
    """Which start times and features the input locations hold (a feature counts when every start
    time has it in one of the locations)."""
    times: set[datetime] = set()
    per_location: list[tuple[set[datetime], list[str]]] = []
    for i, location in enumerate(spec.inputs):
        where = f"input.data[{i}]"
        try:
            held = set(inputs.available_times(store, location.bucket, location.path))
            wanted = sorted(held & set(spec.start_times))
            names = inputs.available_features(store, location.bucket, location.path, wanted) if wanted else []
        except inputs.InputError as exc:
            raise ConfigError(where, str(exc)) from None
        except StorageError as exc:
            raise ConfigError(where, f"cannot be read: {exc}") from None
        times |= held
        per_location.append((held, names))
    missing = [t for t in spec.start_times if t not in times]
    if missing:
        have = ", ".join(format_time(t) for t in sorted(times)[:8]) or "no initial state at all"
        raise ConfigError(
            "config.start_time_begin",
            f"the input holds no initial state for {format_time(missing[0])}"
            f"{f' (and {len(missing) - 1} more start times)' if len(missing) > 1 else ''}; it has {have}.",
        )
    features: set[str] = set()
    for held_times, held_names in per_location:
        if set(spec.start_times) <= held_times:
            features |= set(held_names)
    return InputCheck(times=sorted(times), features=sorted(features))


def engine_for(deployment: Deployment) -> engines.Engine:
    engine = engines.get_engine(deployment.model.name)
    if engine is None:
        raise JobRefused(
            f"Deployment {deployment.pk} serves {deployment.model.name!r}, which is not a forecast engine."
        )
    usable, reason = engine.availability()
    if not usable:
        raise JobRefused(f"The {engine.title} is not available: {reason}")
    return engine


def job_submit(
    *, project: Project, deployment: Deployment, user: User | None, spec: TaskSpec, store: ObjectStore | None = None
) -> ForecastJob:
    """Check everything a job could fail on before it runs, then store it and queue its runs.

    Raises ConfigError (a field of the body: a bucket not the project's, a start time the input lacks,
    a feature the engine cannot produce from it) or JobRefused (the deployment or its engine)."""
    if deployment.project_id != project.pk:
        raise JobRefused("No such deployment in this project.")
    if deployment.state != DeploymentState.RUNNING:
        raise JobRefused(f"Deployment {deployment.pk} is {deployment.state}; start it on Models → Deployments.")
    engine = engine_for(deployment)
    _check_buckets(project, spec)
    store = store or default_store()
    held = _read_locations(store, spec)
    producible = engine.producible(held.features)
    wanted = list(spec.features) + [
        f for f in (spec.ensemble.features if spec.ensemble else ()) if f not in spec.features
    ]
    for feature in wanted:
        if feature not in producible:
            field = "config.forecast_features" if feature in spec.features else "config.ensemble_forecast_features"
            can = ", ".join(sorted(producible)) or "nothing"
            # An engine that needs a whole state (Pangu-Weather) says what the input lacks.
            lacks: Callable[[list[str]], str] | None = getattr(engine, "missing_inputs", None)
            gap = lacks(held.features) if lacks is not None else ""
            raise ConfigError(
                field,
                f"{feature} ({feature_words(feature)}) cannot be produced by the {engine.title} from this input "
                f"(it can produce: {can}){f'; the input lacks {gap}' if gap else ''}.",
            )
    if spec.ensemble is not None and spec.ensemble.method == "cnop":
        if spec.ensemble.cnop_candidates < spec.ensemble.members:
            # Each member starts from a different candidate (forecasts/cnop.py).
            raise ConfigError(
                "config.ensemble_cnop_initial_quantity",
                f"must be at least the number of members ({spec.ensemble.members}): each member starts from "
                f"one of the candidates, and {spec.ensemble.cnop_candidates} cannot give {spec.ensemble.members}.",
            )
    members = spec.ensemble.members if spec.ensemble else 0
    with transaction.atomic():
        job = ForecastJob.objects.create(
            project=project,
            deployment=deployment,
            submitted_by=user,
            name=spec.name,
            engine=engine.name,
            input={"type": "obs", "data": [loc.as_json() for loc in spec.inputs]},
            output={"obs": spec.output.as_json()},
            config=spec.config_json(),
            features=list(spec.features),
            ensemble_features=list(spec.ensemble.features) if spec.ensemble else [],
        )
        ForecastRun.objects.bulk_create(
            ForecastRun(job=job, start_time=when, member=member)
            for when in spec.start_times
            for member in range(members + 1)
        )
        starts = len(spec.start_times)
        words = f"{starts} forecast start{'s' if starts != 1 else ''} × {spec.lead_hours} h"
        if members:
            words += f", {members} ensemble members each"
        event(job, f"Submitted by {user.get_username() if user else 'the API'}: {words}, engine {engine.title}.")
        audit_record(
            project=project,
            actor=user,
            action="job.submit",
            target=job,
            changes={"deployment": deployment.pk, "engine": engine.name, "runs": starts * (members + 1)},
        )
        transaction.on_commit(lambda: _enqueue_all(job.pk))
    return job


def _enqueue_all(job_id: str) -> None:
    from forecasts import tasks

    for run_id, attempt in ForecastRun.objects.filter(job_id=job_id, state=JobState.PENDING).values_list(
        "pk", "attempt"
    ):
        tasks.enqueue_run(run_id, attempt)


# --- cancel -----------------------------------------------------------------------------------------
def job_cancel(*, job: ForecastJob, by: User | None) -> ForecastJob:
    """Cancel at once: the job is CANCELLED, its waiting runs never start, and a run under way stops at
    its next step (the worker checks between steps); its queued Celery messages are revoked."""
    if job.is_final:
        return job
    now = timezone.now()
    with transaction.atomic():
        updated = (
            ForecastJob.objects.filter(pk=job.pk)
            .exclude(state__in=FINAL_STATES)
            .update(
                state=JobState.CANCELLED,
                cancel_requested=True,
                reason=f"Cancelled by {by.get_username() if by else 'the API'}.",
                finished_at=now,
                updated_at=now,
            )
        )
        if updated:
            ForecastRun.objects.filter(job=job, state=JobState.PENDING).update(
                state=JobState.CANCELLED, finished_at=now
            )
            event(job, f"Cancelled by {by.get_username() if by else 'the API'}.", JobEvent.Level.WARNING)
            audit_record(project=job.project, actor=by, action="job.cancel", target=job)
    from forecasts import tasks

    transaction.on_commit(lambda: tasks.revoke_job(job.pk))
    job.refresh_from_db()
    return job


# --- runs, as workers move them ---------------------------------------------------------------------
def run_claim(*, run_id: int, attempt: int, worker: str) -> ForecastRun | None:
    """The run for this worker, or None when the message is stale (a later attempt exists, the run
    is finished or cancelled, or another worker holds it with a live heartbeat)."""
    now = timezone.now()
    stale = now - heartbeat_stale()
    claimable = Q(state=JobState.PENDING) | Q(state=JobState.RUNNING, heartbeat_at__lt=stale)
    updated = ForecastRun.objects.filter(claimable, pk=run_id, attempt=attempt, job__cancel_requested=False).update(
        state=JobState.RUNNING, worker=worker[:200], heartbeat_at=now, started_at=now, progress=0.0
    )
    if not updated:
        return None
    run = ForecastRun.objects.select_related("job").get(pk=run_id)
    jobs = ForecastJob.objects.filter(pk=run.job_id, state=JobState.PENDING)
    if jobs.update(state=JobState.RUNNING, started_at=now, updated_at=now):
        event(run.job_id, "A worker started the job.")
    return run


def run_heartbeat(*, run: ForecastRun, progress: float) -> bool:
    """Record progress (0 to 1) and renew the heartbeat; False when the job was cancelled meanwhile
    or the run was taken from this worker (a newer attempt): the worker stops then."""
    now = timezone.now()
    alive = ForecastRun.objects.filter(
        pk=run.pk, attempt=run.attempt, state=JobState.RUNNING, job__cancel_requested=False
    ).update(progress=min(max(progress, 0.0), 1.0), heartbeat_at=now)
    if alive:
        _job_progress(run.job_id)
    return bool(alive)


def _job_progress(job_id: str) -> None:
    totals = ForecastRun.objects.filter(job_id=job_id).aggregate(mean=Avg("progress"), n=Count("id"))
    fraction = totals["mean"] or 0.0
    job = ForecastJob.objects.filter(pk=job_id).values("started_at").first()
    eta = None
    if job and job["started_at"] and fraction > 0.01:
        elapsed = (timezone.now() - job["started_at"]).total_seconds()
        eta = max(0.0, elapsed / fraction * (1 - fraction))
    ForecastJob.objects.filter(pk=job_id, state=JobState.RUNNING).update(
        progress=round(fraction * 100, 2), eta_seconds=eta, updated_at=timezone.now()
    )


def run_finish(
    *,
    run: ForecastRun,
    state: str,
    error: str = "",
    outputs: Sequence[str] = (),
    engine_seconds: float = 0.0,
) -> bool:
    """A run's end, recorded once for its attempt; then the job is finalised if it was its last."""
    now = timezone.now()
    done = ForecastRun.objects.filter(pk=run.pk, attempt=run.attempt, state=JobState.RUNNING).update(
        state=state,
        error=error,
        outputs=list(outputs),
        engine_seconds=engine_seconds,
        finished_at=now,
        progress=1.0 if state == JobState.SUCCEEDED else F("progress"),
    )
    if not done:
        return False
    label = f"The forecast from {format_time(run.start_time)}" + (f" (member {run.member})" if run.member else "")
    if state == JobState.SUCCEEDED:
        seconds = (now - run.started_at).total_seconds() if run.started_at else 0.0
        event(run.job_id, f"{label} finished in {seconds:.1f} s.")
    elif state == JobState.FAILED:
        event(run.job_id, f"{label} failed: {error}", JobEvent.Level.ERROR)
    _job_progress(run.job_id)
    job_finalise_if_done(job_id=run.job_id)
    return True


def run_retry(*, run: ForecastRun, reason: str) -> int | None:
    """Hand the run to a worker again after a transient fault: its new attempt, or None when it has
    had its tries (it fails then, with the reason)."""
    if run.attempt + 1 >= MAX_ATTEMPTS:
        run_finish(run=run, state=JobState.FAILED, error=f"{reason} (tried {MAX_ATTEMPTS} times)")
        return None
    moved = ForecastRun.objects.filter(pk=run.pk, attempt=run.attempt, state=JobState.RUNNING).update(
        state=JobState.PENDING, attempt=F("attempt") + 1, heartbeat_at=None, progress=0.0
    )
    if not moved:
        return None
    event(
        run.job_id,
        f"The forecast from {format_time(run.start_time)} hit a passing fault ({reason}); it runs again "
        f"(attempt {run.attempt + 2} of {MAX_ATTEMPTS}).",
        JobEvent.Level.WARNING,
    )
    return run.attempt + 1


def job_finalise_if_done(*, job_id: str) -> None:
    """Queue the finalising task once every run has ended (at most once: a conditional update)."""
    if ForecastRun.objects.filter(job_id=job_id).exclude(state__in=FINAL_STATES).exists():
        return
    from forecasts import tasks

    transaction.on_commit(lambda: tasks.enqueue_finalise(job_id))


def job_complete(*, job_id: str, manifest_key: str | None) -> ForecastJob | None:
    """The job's final state from its runs: SUCCEEDED when every run did, else FAILED with the first
    run's reason (a cancelled job stays CANCELLED)."""
    now = timezone.now()
    runs = list(ForecastRun.objects.filter(job_id=job_id).order_by("start_time", "member"))
    failed = [r for r in runs if r.state == JobState.FAILED]
    if failed:
        first = failed[0]
        reason = f"The forecast from {format_time(first.start_time)} failed: {first.error}"
        if len(failed) > 1:
            reason += f" ({len(failed)} of {len(runs)} forecasts failed.)"
        state = JobState.FAILED
    else:
        reason, state = "", JobState.SUCCEEDED
    updated = ForecastJob.objects.filter(pk=job_id, state__in=[JobState.PENDING, JobState.RUNNING]).update(
        state=state, reason=reason, finished_at=now, updated_at=now, progress=100.0 if not failed else F("progress"),
        eta_seconds=None,
    )  # fmt: skip
    if updated:
        if state == JobState.SUCCEEDED:
            event(job_id, f"Finished: {len(runs)} forecast{'s' if len(runs) != 1 else ''} written.")
        else:
            event(job_id, f"Failed. {reason}", JobEvent.Level.ERROR)
    return ForecastJob.objects.filter(pk=job_id).first()


def runs_recover(*, now: datetime | None = None) -> list[tuple[int, int]]:
    """Runs whose worker died (no heartbeat for heartbeat_stale()): each goes back to the queue with a
    new attempt, or fails with the reason after MAX_ATTEMPTS. Returns (run id, attempt) to enqueue.
    Safe to call from every worker at once: each run moves in one conditional update."""
    now = now or timezone.now()
    requeue: list[tuple[int, int]] = []
    for run in ForecastRun.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=now - heartbeat_stale()):
        if run.attempt + 1 >= MAX_ATTEMPTS:
            error = (
                f"the worker running it stopped (killed or crashed) {MAX_ATTEMPTS} times; "
                "check the workers' logs and memory"
            )
            run_finish(run=run, state=JobState.FAILED, error=error)
            continue
        moved = ForecastRun.objects.filter(pk=run.pk, attempt=run.attempt, state=JobState.RUNNING).update(
            state=JobState.PENDING, attempt=F("attempt") + 1, heartbeat_at=None, progress=0.0
        )
        if moved:
            event(
                run.job_id,
                f"The worker running the forecast from {format_time(run.start_time)} stopped answering "
                f"({run.worker or 'unknown worker'}); it runs again (attempt {run.attempt + 2} of {MAX_ATTEMPTS}).",
                JobEvent.Level.WARNING,
            )
            requeue.append((run.pk, run.attempt + 1))
    return requeue
