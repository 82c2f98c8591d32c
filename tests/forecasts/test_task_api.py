"""The forecast task API (forecasts/api.py) at the gateway's door, in the seed's shape: create, get,
list, cancel; 400 PANGU.0010 naming the field; operators submit and watch; only the submitter or an
admin cancels; another project's jobs are 404. Celery is not run here: queued runs are recorded."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from console import services as console_services
from console.models import Role
from forecasts import tasks
from forecasts.catalogue import bucket_register, forecast_catalogue_load
from forecasts.models import ForecastJob, ForecastRun, JobEvent, JobState
from forecasts.samples import DEMO_BUCKET, install_demo
from forecasts.storage import default_store
from models_registry.models import Deployment, DeploymentState
from tests.conftest import Persona
from tests.factories import add_member, make_project, make_user

BODY: dict[str, Any] = {
    "name": "demo-task",
    "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": "era5/"}]},
    "output": {"obs": {"bucket": DEMO_BUCKET, "path": "out/"}},
    "config": {
        "start_time_begin": "2017010100",
        "start_time_end": "2017010112",
        "start_time_interval_hours": 12,
        "forecast_lead_hours": 24,
        "forecast_features": "500:Z;850:T",
        "draw_figures": "false",
    },
}


@pytest.fixture(scope="module")
def console_url() -> Iterator[str]:
    from console.asgi import application
    from tests.conftest import serve_in_thread

    with serve_in_thread(application) as url:
        yield url


@dataclass
class Site:
    url: str
    admin: Persona
    deployment: Deployment
    keys: dict[str, str]
    queued: list[tuple[int, int]]

    def path(self, suffix: str = "", deployment: str | None = None, project: str | None = None) -> str:
        p = project or self.admin.project.pk
        d = deployment or self.deployment.pk
        return f"{self.url}/v1/{p}/deployments/{d}/tasks{suffix}"

    def call(self, method: str, who: str, suffix: str = "", body: Any = None, **kw: Any) -> httpx.Response:
        headers = {"X-Auth-Token": self.keys[who]}
        return httpx.request(method, self.path(suffix, **kw), json=body, headers=headers, timeout=30)


@pytest.fixture
def site(transactional_db: None, console_url: str, monkeypatch: pytest.MonkeyPatch) -> Site:
    queued: list[tuple[int, int]] = []
    monkeypatch.setattr(tasks, "enqueue_run", lambda run_id, attempt: queued.append((run_id, attempt)))
    user = make_user("alice")
    project = make_project(name="alice-project", owner=user)
    forecast_catalogue_load(project=project)
    bucket_register(project=project, name=DEMO_BUCKET)
    install_demo(default_store())
    deployment = Deployment.objects.get(project=project, model__name="builtin-spectral")
    keys = {"alice": console_services.api_key_create(user=user, project=project, name="k")[1]}
    for name, role in (("olga", Role.OPERATOR), ("mike", Role.MEMBER)):
        member = make_user(name)
        add_member(project=project, user=member, role=role)
        keys[name] = console_services.api_key_create(user=member, project=project, name="k")[1]
    bob = make_user("bob")
    bob_project = make_project(name="bob-project", owner=bob)
    keys["bob"] = console_services.api_key_create(user=bob, project=bob_project, name="k")[1]
    return Site(console_url, Persona(user, project), deployment, keys, queued)


def test_create_answers_the_seeds_shape_and_queues_one_run_per_start(site: Site) -> None:
    response = site.call("POST", "olga", body=BODY)  # an operator submits
    assert response.status_code == 200, response.text
    job = response.json()
    assert set(job) == {"id", "name", "created_at", "updated_at", "state", "input", "output", "config"}
    assert re.fullmatch(r"[0-9a-f]{32}", job["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", job["created_at"])
    assert (job["name"], job["state"]) == ("demo-task", "PENDING")
    assert job["input"] == BODY["input"] and job["output"] == BODY["output"]
    assert job["config"] == {
        "start_time_begin": "2017010100",
        "start_time_end": "2017010112",
        "start_time_interval_hours": 12,
        "forecast_lead_hours": 24,
        "draw_figures": "false",
        "forecast_features": "500:Z;850:T",
    }
    runs = list(ForecastRun.objects.filter(job_id=job["id"]).order_by("start_time"))
    assert [r.start_time.strftime("%Y%m%d%H") for r in runs] == ["2017010100", "2017010112"]
    assert sorted(site.queued) == sorted((r.pk, 0) for r in runs)
    assert JobEvent.objects.filter(job_id=job["id"]).count() == 1

    got = site.call("GET", "mike", f"/{job['id']}")  # a member watches it
    assert got.status_code == 200 and got.json() == {**job, "updated_at": got.json()["updated_at"]}
    listed = site.call("GET", "alice")
    assert [t["id"] for t in listed.json()["tasks"]] == [job["id"]]


def _error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error_code"], body["error_msg"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"start_time_interval_hours": 25}, "config.start_time_interval_hours"),
        ({"start_time_interval_hours": 0}, "config.start_time_interval_hours"),
        ({"start_time_end": "2016123100"}, "config.start_time_end"),
        ({"forecast_features": "500:X"}, "config.forecast_features"),
        ({"num_ensembles": 11}, "config.num_ensembles"),
        ({"ensemble_noise_perlin_scale": 0.5, "num_ensembles": 2}, "config.ensemble_noise_perlin_scale"),
    ],
)
def test_an_invalid_body_is_400_pangu_0010_naming_the_field(site: Site, change: dict[str, Any], field: str) -> None:
    body = copy.deepcopy(BODY)
    body["config"].update(change)
    status, code, message = _error(site.call("POST", "alice", body=body))
    assert (status, code) == (400, "PANGU.0010") and message.startswith(field + ":"), message
    assert ForecastJob.objects.count() == 0 and site.queued == []


def test_what_the_input_cannot_give_is_refused_at_submission(site: Site) -> None:
    body = copy.deepcopy(BODY)
    body["config"]["forecast_features"] = "500:Z;Surface:P"
    status, code, message = _error(site.call("POST", "alice", body=body))
    assert (status, code) == (400, "PANGU.0010")
    assert message.startswith("config.forecast_features: Surface:P (mean sea-level pressure) cannot be produced")
    body = copy.deepcopy(BODY)
    body["config"]["start_time_end"] = "2017010300"  # the demo holds 2017010100 to 2017010212
    status, _, message = _error(site.call("POST", "alice", body=body))
    assert status == 400 and message.startswith(
        "config.start_time_begin: the input holds no initial state for 2017010300"
    )
    body = copy.deepcopy(BODY)
    body["output"]["obs"]["bucket"] = "someone-elses"
    status, _, message = _error(site.call("POST", "alice", body=body))
    assert status == 400 and message.startswith("output.obs.bucket: 'someone-elses' is not a bucket of this project")
    assert ForecastJob.objects.count() == 0 and site.queued == []


def test_a_stopped_deployment_and_a_foreign_one_are_refused(site: Site) -> None:
    Deployment.objects.filter(pk=site.deployment.pk).update(state=DeploymentState.STOPPED)
    status, code, _ = _error(site.call("POST", "alice", body=BODY))
    assert (status, code) == (403, "PANGU.3259")
    status, code, _ = _error(site.call("POST", "alice", body=BODY, deployment="0" * 36))
    assert (status, code) == (404, "PANGU.3254")


def test_only_the_submitter_or_an_admin_cancels(site: Site) -> None:
    job = site.call("POST", "olga", body=BODY).json()
    status, code, _ = _error(site.call("DELETE", "mike", f"/{job['id']}"))
    assert (status, code) == (403, "PANGU.3319")
    assert ForecastJob.objects.get(pk=job["id"]).state == JobState.PENDING
    cancelled = site.call("DELETE", "olga", f"/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    assert set(ForecastRun.objects.filter(job_id=job["id"]).values_list("state", flat=True)) == {"CANCELLED"}
    other = site.call("POST", "mike", body=BODY).json()
    assert site.call("DELETE", "alice", f"/{other['id']}").json()["state"] == "CANCELLED"  # the admin


def test_another_projects_caller_sees_nothing(site: Site) -> None:
    job = site.call("POST", "alice", body=BODY).json()
    bob_project = make_project(name="third", owner=make_user("carl"))
    for method, suffix in (("GET", f"/{job['id']}"), ("DELETE", f"/{job['id']}"), ("GET", "")):
        # Bob's key is bound to his project: alice's project id in the path is not his.
        status, code, _ = _error(site.call(method, "bob", suffix))
        assert (status, code) == (404, "PANGU.3254")
    assert bob_project.pk != site.admin.project.pk
    assert ForecastJob.objects.get(pk=job["id"]).state == JobState.PENDING


def test_unknown_methods_and_missing_credentials(site: Site) -> None:
    response = httpx.put(site.path(), json=BODY, headers={"X-Auth-Token": site.keys["alice"]})
    assert response.status_code == 404 and response.json()["error_code"] == "APIG.0101"
    response = httpx.post(site.path(), json=BODY)
    assert response.status_code == 401 and response.json()["error_code"] == "APIG.0301"
