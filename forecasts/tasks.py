"""Celery tasks of the forecast jobs: one per run (a forecast start time, and an ensemble member),
then one that finalises the job.

Delivery is at-least-once (`acks_late`): a message may arrive twice, or after its worker died. Every
task is idempotent through the run's `attempt` (services.run_claim): a message for an attempt that is
no longer the run's does nothing. A worker that dies mid-run leaves its run RUNNING with a heartbeat
that stops; every worker's reaper (started with the worker) hands such runs to a worker again, up to
services.MAX_ATTEMPTS times, then fails them with the reason. That covers the embedded filesystem
broker too, which cannot redeliver a message whose worker was killed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections

from forecasts import engines, inputs, pipeline, services
from forecasts.models import ForecastJob, ForecastRun, JobState
from forecasts.storage import NotFound, StorageError, default_store, join_key

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 2.0  # seconds between progress writes (and cancel checks) of a running forecast


def enqueue_run(run_id: int, attempt: int) -> None:
    result = run_forecast.apply_async(args=(run_id, attempt))
    ForecastRun.objects.filter(pk=run_id, attempt=attempt).update(celery_task_id=result.id)


def enqueue_finalise(job_id: str) -> None:
    finalise_job.apply_async(args=(job_id,))


def revoke_job(job_id: str) -> None:
    """Drop the queued messages of a cancelled job's runs (a run under way stops by itself at its
    next heartbeat; with brokers that cannot revoke, the message is stale when it arrives)."""
    from console.celery import app

    ids = [i for i in ForecastRun.objects.filter(job_id=job_id).values_list("celery_task_id", flat=True) if i]
    if ids:
        try:
            app.control.revoke(ids)
        except Exception:  # the broadcast is an optimisation; the attempt check is the guarantee
            logger.warning("could not revoke the tasks of job %s", job_id, exc_info=True)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_forecast(run_id: int, attempt: int) -> None:
    from celery import current_task

    worker = getattr(current_task.request, "hostname", "") or "worker"
    run = services.run_claim(run_id=run_id, attempt=attempt, worker=worker)
    if run is None:
        return  # stale, finished or cancelled: nothing to do
    job = run.job
    # The heartbeat beats on its own thread, so a long stretch without engine steps (writing the file,
    # drawing many maps) never looks like a dead worker; it also learns of a cancel or a lost claim.
    beat = _Heartbeat(run)
    beat.start()
    try:
        result = pipeline.execute(job=job, run=run, store=default_store(), keep_going=beat.keep_going)
    except pipeline.Stopped:
        job.refresh_from_db(fields=["cancel_requested"])
        if job.cancel_requested:
            services.run_finish(run=run, state=JobState.CANCELLED, error="cancelled")
        return
    except (inputs.InputError, engines.EngineError, NotFound) as exc:
        services.run_finish(run=run, state=JobState.FAILED, error=str(exc))
        return
    except StorageError as exc:
        # The store may be back in a moment (a network fault): the run goes to a worker again.
        again = services.run_retry(run=run, reason=f"the object store failed: {exc}")
        if again is not None:
            enqueue_run(run.pk, again)
        return
    except MemoryError:
        services.run_finish(run=run, state=JobState.FAILED, error="the worker ran out of memory")
        return
    except Exception as exc:
        logger.exception("forecast run %s failed", run_id)
        services.run_finish(run=run, state=JobState.FAILED, error=f"internal error ({type(exc).__name__}: {exc})")
        return
    finally:
        beat.stop()
    services.run_finish(run=run, state=JobState.SUCCEEDED, outputs=result.outputs, engine_seconds=result.engine_seconds)


class _Heartbeat:
    """Renews a running forecast's heartbeat every HEARTBEAT_EVERY seconds with its latest progress,
    until stopped or until the run is no longer this worker's to run (cancelled, or reaped)."""

    def __init__(self, run: ForecastRun) -> None:
        self.run = run
        self.progress = 0.0
        self.alive = threading.Event()
        self.alive.set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run.pk}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def keep_going(self, fraction: float) -> bool:
        self.progress = fraction
        return self.alive.is_set()

    def _loop(self) -> None:
        try:
            while not self._done.wait(HEARTBEAT_EVERY):
                try:
                    if not services.run_heartbeat(run=self.run, progress=self.progress):
                        self.alive.clear()
                        return
                except Exception:  # a busy database: the next beat tries again
                    logger.warning("heartbeat of forecast run %s failed", self.run.pk, exc_info=True)
        finally:
            close_old_connections()
            from django.db import connections

            connections.close_all()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=30)


@shared_task(acks_late=True, ignore_result=True)
def finalise_job(job_id: str) -> None:
    """Write the job's manifest (every output and how each run ended) and set its final state."""
    import json

    job = ForecastJob.objects.filter(pk=job_id).first()
    if job is None:
        return
    runs = list(job.runs.order_by("start_time", "member"))
    manifest: dict[str, Any] = {
        "id": job.pk,
        "name": job.name,
        "engine": job.engine,
        "config": job.config,
        "runs": [
            {
                "start_time": r.start_time.strftime("%Y%m%d%H"),
                "member": r.member,
                "state": r.state,
                "error": r.error,
                "outputs": r.outputs,
                "engine_seconds": round(r.engine_seconds, 3),
            }
            for r in runs
        ],
    }
    key = None
    if job.state != JobState.CANCELLED:
        manifest["verification"] = _verify(job)
        if any(r.member > 0 for r in runs):
            manifest["ensemble"] = _ensembles(job)
        obs = job.output["obs"]
        key = join_key(*[p for p in (obs.get("path", "").strip("/"), job.pk, "manifest.json") if p])
        try:
            default_store().write_bytes(obs["bucket"], key, json.dumps(manifest, indent=2).encode())
        except StorageError as exc:
            services.event(job, f"The manifest could not be written: {exc}", "warning")
            key = None
    services.job_complete(job_id=job_id, manifest_key=key)


def _verify(job: ForecastJob) -> dict[str, Any] | None:
    """Scores against truth where the inputs hold the valid times (forecasts/verification.py): the keys
    written and why nothing was scored, if so. A failure here is a warning on the job, never its end."""
    from forecasts import verification

    try:
        report = verification.verify_job(job, default_store())
    except StorageError as exc:
        services.event(job, f"The verification could not be written: {exc}", "warning")
        return None
    except Exception as exc:  # a job's forecasts are its result; a scoring fault must not lose them
        logger.exception("verification of job %s failed", job.pk)
        services.event(job, f"The verification failed ({type(exc).__name__}: {exc}).", "warning")
        return None
    if report["features"]:
        services.event(job, f"Verified against truth: {', '.join(report['features'])}.")
    return {"files": report["files"], "reason": report["reason"]}


def _ensembles(job: ForecastJob) -> dict[str, Any] | None:
    """Each start's members, mean and spread in one ensemble.nc (forecasts/ensemble_outputs.py). Like
    the verification, a failure here is a warning on the job, never its end."""
    from forecasts import ensemble_outputs

    try:
        result = ensemble_outputs.write_ensembles(job, default_store())
    except StorageError as exc:
        services.event(job, f"The ensemble outputs could not be written: {exc}", "warning")
        return None
    except Exception as exc:  # the members' own forecasts are the result; combining them must not lose it
        logger.exception("ensemble outputs of job %s failed", job.pk)
        services.event(job, f"The ensemble outputs failed ({type(exc).__name__}: {exc}).", "warning")
        return None
    for note in result["notes"]:
        services.event(job, note, "warning")
    return result


# --- the reaper: every worker checks for runs whose worker died ---------------------------------------
_reaper_stop = threading.Event()


def reap_once() -> int:
    requeue = services.runs_recover()
    for run_id, attempt in requeue:
        enqueue_run(run_id, attempt)
    return len(requeue)


def _reaper() -> None:
    while not _reaper_stop.wait(settings.FORECAST_REAP_SECONDS):
        try:
            close_old_connections()
            reap_once()
        except Exception:
            logger.exception("forecast reaper failed")
        finally:
            close_old_connections()


@worker_ready.connect
def _start_reaper(**kwargs: Any) -> None:
    # Once at start (runs a killed worker left behind get back to work at once), then periodically.
    try:
        reap_once()
    except Exception:
        logger.exception("forecast reaper failed at worker start")
    finally:
        close_old_connections()
    threading.Thread(target=_reaper, name="forecast-reaper", daemon=True).start()


@worker_shutdown.connect
def _stop_reaper(**kwargs: Any) -> None:
    _reaper_stop.set()


@worker_process_init.connect
def _warm_up(**kwargs: Any) -> None:
    # Each pool process imports matplotlib and cartopy and reads the coastline once, at start, rather
    # than in the first job it runs (about a second).
    from forecasts import figures

    try:
        figures.warm_up()
    except Exception:
        logger.exception("forecast figures could not be prepared; maps will fail with the reason")
