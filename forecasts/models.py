"""Forecast jobs (the seed's scientific-computing tasks), the runs Celery executes for them, their
timeline, and the object-store buckets a project may read and write."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from console.models import Project
from models_registry.models import Deployment


def new_job_id() -> str:
    # The seed's ids are 32 hex characters ("baabcb565bb611eb8a0dfa163e3ddba1").
    return uuid.uuid4().hex


class JobState(models.TextChoices):
    PENDING = "PENDING", "Waiting for a worker"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Finished"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class ProjectBucket(models.Model):
    """A bucket of the object store that belongs to a project: its jobs read inputs from and write
    outputs to its own buckets only (a bucket name is global in the store, as in S3 and OBS)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="buckets")
    name = models.CharField(max_length=63, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ForecastJob(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_job_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="forecast_jobs")
    deployment = models.ForeignKey(Deployment, on_delete=models.SET_NULL, null=True, related_name="forecast_jobs")
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="forecast_jobs"
    )
    name = models.CharField(max_length=64)
    engine = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING, db_index=True)
    # The seed's objects as answered: {"type": "obs", "data": [...]}, {"obs": {...}} and the config.
    input = models.JSONField()
    output = models.JSONField()
    config = models.JSONField()
    # The features to write, as parsed (config echoes what the caller sent): deterministic and ensemble.
    features = models.JSONField(default=list)
    ensemble_features = models.JSONField(default=list, blank=True)
    progress = models.FloatField(default=0.0)  # percent, 0 to 100
    eta_seconds = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True)  # why it failed or was cancelled, in plain words
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.pk})"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


class ForecastRun(models.Model):
    """One forecast from one start time (and, for an ensemble, one member): one Celery task.

    `attempt` grows each time the run is handed to a worker again (a retry, or a worker that died);
    a task carrying an older attempt finds it stale and does nothing, so a redelivered message never
    runs a forecast twice at once. `heartbeat_at` is renewed while a worker runs it."""

    job = models.ForeignKey(ForecastJob, on_delete=models.CASCADE, related_name="runs")
    start_time = models.DateTimeField()
    member = models.PositiveSmallIntegerField(default=0)  # 0: the deterministic forecast
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    progress = models.FloatField(default=0.0)  # fraction, 0 to 1
    attempt = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    engine_seconds = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    outputs = models.JSONField(default=list, blank=True)  # keys written in the output bucket

    class Meta:
        ordering = ["start_time", "member"]
        constraints = [
            models.UniqueConstraint(fields=["job", "start_time", "member"], name="forecast_run_unique_start_member")
        ]
        indexes = [models.Index(fields=["state", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.job_id} {self.start_time:%Y%m%d%H} m{self.member} {self.state}"


class JobEvent(models.Model):
    """A line of a job's timeline, in plain words ("Forecast from 2017010100 finished in 12 s")."""

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    job = models.ForeignKey(ForecastJob, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.TextField()

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.message}"
