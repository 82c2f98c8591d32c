"""The forecast pages with Django's test client: the form's defaults and refusals (the same rules as
the API), submission, the list's status feed, the detail page, downloads and who may cancel."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from console.models import Role
from forecasts import services
from forecasts.config import parse_task
from forecasts.models import ForecastJob, ForecastRun, JobState
from forecasts.samples import DEMO_BUCKET
from models_registry.models import Deployment
from tests.conftest import Persona
from tests.factories import PASSWORD, add_member, make_user

FORM = {
    "name": "week-ahead",
    "input_bucket": DEMO_BUCKET,
    "input_path": "era5/",
    "output_bucket": DEMO_BUCKET,
    "output_path": "out/",
    "start_time_begin": "2017-01-01T00:00",
    "start_time_end": "2017-01-01T12:00",
    "start_time_interval_hours": "12",
    "forecast_lead_hours": "24",
    "forecast_features": ["500:Z", "850:T"],
    "draw_figures": "on",
}


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_the_form_is_prefilled_with_the_demo_and_the_seeds_defaults(alice: Persona, weather: Any) -> None:
    response = _client("alice").get("/forecasts/new/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="start_time_interval_hours" value="6"' in html
    assert 'name="forecast_lead_hours" value="168"' in html
    assert 'value="2017-01-01T00:00"' in html
    assert "From 1 to 24; default 6." in html
    for feature in ("500:Z", "850:Z", "500:T", "850:T", "500:U", "500:V"):
        assert re.search(rf'value="{feature}"[^>]*checked', html), feature
    assert not re.search(r'value="1000:T"[^>]*checked', html)
    form = response.context["form"]
    assert form.initial["input_bucket"] == DEMO_BUCKET and form.initial["input_path"] == "era5/"


def test_a_valid_form_submits_the_job_the_api_would(
    alice: Persona, carol: Persona, weather: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = _client("carol").post("/forecasts/new/", FORM)  # an operator
    job = ForecastJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/forecasts/{job.pk}/"
    api_body = {
        "name": "week-ahead",
        "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": "era5/"}]},
        "output": {"obs": {"bucket": DEMO_BUCKET, "path": "out/"}},
        "config": {
            "start_time_begin": "2017010100",
            "start_time_end": "2017010112",
            "start_time_interval_hours": 12,
            "forecast_lead_hours": 24,
            "forecast_features": "500:Z;850:T",
            "draw_figures": "true",
        },
    }
    assert job.config == parse_task(api_body).config_json()
    assert (job.submitted_by, job.input, job.output) == (carol.user, api_body["input"], api_body["output"])
    assert len(weather) == 2


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"start_time_interval_hours": "0"}, "start_time_interval_hours", "from 1 to 24"),
        ({"start_time_interval_hours": "25"}, "start_time_interval_hours", "from 1 to 24"),
        ({"forecast_lead_hours": "721"}, "forecast_lead_hours", "from 1 to 720"),
        ({"start_time_end": "2016-12-31T00:00"}, "start_time_end", "must not be before start_time_begin"),
        ({"num_ensembles": "11"}, "num_ensembles", "from 2 to 10"),
        ({"num_ensembles": "2", "ensemble_noise_perlin_scale": "0.5"}, "ensemble_noise_perlin_scale", "less than 0.5"),
        ({"forecast_features": ["Surface:P"]}, "forecast_features", "cannot be produced"),
        ({"output_bucket": "elsewhere"}, "output_bucket", "Select a valid choice"),
    ],
)
def test_refusals_land_on_their_field(
    alice: Persona, weather: Any, change: dict[str, Any], field: str, words: str
) -> None:
    response = _client("alice").post("/forecasts/new/", {**FORM, **change})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert ForecastJob.objects.count() == 0


def _job(alice: Persona, user: Any) -> ForecastJob:
    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    spec = parse_task(
        {
            "name": "j",
            "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": "era5/"}]},
            "output": {"obs": {"bucket": DEMO_BUCKET, "path": "out/"}},
            "config": {"start_time_begin": "2017010100", "start_time_end": "2017010100", "forecast_lead_hours": 6},
        }
    )
    return services.job_submit(project=alice.project, deployment=deployment, user=user, spec=spec)


def test_list_status_feed_and_detail(alice: Persona, dave: Persona, weather: Any) -> None:
    job = _job(alice, dave.user)
    ForecastRun.objects.filter(job=job).update(progress=0.5)
    ForecastJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING, progress=50.0)
    client = _client("dave")
    assert job.pk.encode() in client.get("/forecasts/").content
    status = client.get("/forecasts/status/", {"id": [job.pk, "0" * 32]}).json()
    assert status["jobs"] == [
        {
            "id": job.pk,
            "state": "RUNNING",
            "state_label": "Running",
            "progress": 50.0,
            "eta_seconds": None,
            "reason": "",
            "updated_at": status["jobs"][0]["updated_at"],
        }
    ]
    detail = client.get(f"/forecasts/{job.pk}/")
    assert detail.status_code == 200 and b"Submitted by dave" in detail.content
    assert detail.context["can_cancel"] is True


def test_cancel_is_for_the_submitter_and_admins(alice: Persona, dave: Persona, weather: Any) -> None:
    job = _job(alice, alice.user)
    other = make_user("erin")
    add_member(project=alice.project, user=other, role=Role.MEMBER)
    assert _client("erin").post(f"/forecasts/{job.pk}/cancel/").status_code == 403
    assert ForecastJob.objects.get(pk=job.pk).state == JobState.PENDING
    response = _client("alice").post(f"/forecasts/{job.pk}/cancel/")
    assert response.status_code == 302
    assert ForecastJob.objects.get(pk=job.pk).state == JobState.CANCELLED
