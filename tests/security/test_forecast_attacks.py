"""Attacks on the forecast jobs: another project's user with job ids and bucket names, and path tricks
on the download view. The task API's own tenancy checks are in tests/forecasts/test_task_api.py."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from forecasts import services
from forecasts.catalogue import bucket_register
from forecasts.config import ConfigError, parse_task
from forecasts.models import ForecastJob, ForecastRun, JobState
from forecasts.samples import DEMO_BUCKET
from forecasts.storage import default_store
from models_registry.models import Deployment
from tests.conftest import Persona
from tests.factories import PASSWORD


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def _body(bucket_in: str = DEMO_BUCKET, bucket_out: str = DEMO_BUCKET) -> dict[str, Any]:
    return {
        "name": "j",
        "input": {"type": "obs", "data": [{"bucket": bucket_in, "path": "era5/"}]},
        "output": {"obs": {"bucket": bucket_out, "path": "out/"}},
        "config": {"start_time_begin": "2017010100", "start_time_end": "2017010100", "forecast_lead_hours": 6},
    }


def _job(alice: Persona, user: Any) -> ForecastJob:
    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    return services.job_submit(project=alice.project, deployment=deployment, user=user, spec=parse_task(_body()))


def test_a_job_cannot_read_or_write_another_projects_bucket(
    alice: Persona, bob: Persona, weather: list[tuple[int, int]]
) -> None:
    """Attacker: alice, a member of her project, who knows the name of bob's project's bucket.

    1. Submits a job whose input is bob's bucket (to read his data), then one whose output is it (to
       overwrite his files).
    2. Both are refused at submission, naming the field, in the same words as for a bucket that does not
       exist; no job is stored and nothing is queued."""
    bucket_register(project=bob.project, name="bob-data")
    default_store().create_bucket("bob-data")
    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    for body, field in (
        (_body(bucket_in="bob-data"), "input.data[0].bucket"),
        (_body(bucket_out="bob-data"), "output.obs.bucket"),
    ):
        with pytest.raises(ConfigError) as caught:
            services.job_submit(project=alice.project, deployment=deployment, user=alice.user, spec=parse_task(body))
        assert caught.value.field == field
        assert caught.value.message == "'bob-data' is not a bucket of this project (its buckets: demo)."
    assert ForecastJob.objects.count() == 0 and weather == []


def test_downloads_serve_only_the_jobs_own_outputs(alice: Persona, weather: Any) -> None:
    """Attacker: a member of the project who can see a job and wants other objects of its bucket.

    1. Asks the job's download view for the bucket's inputs, for a path with `..`, and for a key in the
       job's folder that the job never recorded.
    2. Each is 404: the view serves only keys the job's runs recorded as their outputs."""
    job = _job(alice, alice.user)
    store = default_store()
    store.write_bytes(DEMO_BUCKET, f"out/{job.pk}/2017010100/forecast.nc", b"CDF\x01")
    ForecastRun.objects.filter(job=job).update(outputs=[f"out/{job.pk}/2017010100/forecast.nc"])
    client = _client("alice")
    got = client.get(f"/forecasts/{job.pk}/files/out/{job.pk}/2017010100/forecast.nc?download=1")
    assert got.status_code == 200 and got.content == b"CDF\x01"
    assert got["Content-Type"] == "application/x-netcdf"
    assert got["Content-Disposition"] == f'attachment; filename="{job.pk}-forecast.nc"'
    # Any other key of the bucket (the inputs, another job's outputs) is not this job's to serve.
    for key in ("era5/era5-z-t-2017010100-2017010212.nc", "../../etc/passwd", f"out/{job.pk}/manifest.json"):
        assert client.get(f"/forecasts/{job.pk}/files/{key}").status_code == 404


def test_another_projects_user_gets_404_everywhere(alice: Persona, bob: Persona, weather: Any) -> None:
    """Attacker: bob, signed in to another project, with the id of alice's job.

    1. Opens its page and a download, posts a cancel, and asks the status feed for it.
    2. Every answer is the 404 of a job that does not exist (the status feed lists nothing); the job
       goes on untouched."""
    job = _job(alice, alice.user)
    client = _client("bob")
    for url in (f"/forecasts/{job.pk}/", f"/forecasts/{job.pk}/files/out/x.nc"):
        assert client.get(url).status_code == 404
    assert client.post(f"/forecasts/{job.pk}/cancel/").status_code == 404
    assert client.get("/forecasts/status/", {"id": job.pk}).json() == {"jobs": []}
    assert ForecastJob.objects.get(pk=job.pk).state == JobState.PENDING
