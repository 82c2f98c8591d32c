"""Forecast jobs as they run in production: `bootstrap` (the built-in engine, the demo bucket and its
ERA5 inputs), a daphne web process, real Celery workers on the runtime's broker (the filesystem broker
embedded; Redis with PostgreSQL in the services run), the task API with an API key, and the outputs
read back from the object store (folders, or a real S3 server). A worker killed mid-job (SIGKILL)
and restarted: the job still ends, SUCCEEDED, its run handed to the new worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, ProcessGroup, embedded_env, free_port, manage, services_configured, wait_for_http
from tests.s3server import S3Server, s3_server  # noqa: F401 (a fixture)

SETUP = """
import django; django.setup()
from console.models import Project
from console import services as cs
from django.contrib.auth import get_user_model
from models_registry.models import Deployment
project = Project.objects.get(name="default")
key = cs.api_key_create(user=get_user_model().objects.get(username="admin"), project=project, name="t")[1]
deployment = Deployment.objects.get(project=project, model__name="builtin-spectral")
print(project.pk, deployment.pk, key)
"""


@dataclass
class Console:
    url: str
    project: str
    deployment: str
    key: str
    env: dict[str, str]
    tmp: Path
    processes: ProcessGroup
    workers: list[subprocess.Popen[bytes]]

    def tasks(self, suffix: str = "") -> str:
        return f"{self.url}/v1/{self.project}/deployments/{self.deployment}/tasks{suffix}"

    def submit(self, config: dict[str, Any], name: str = "e2e") -> dict[str, Any]:
        body = {
            "name": name,
            "input": {"type": "obs", "data": [{"bucket": "demo", "path": "era5/"}]},
            "output": {"obs": {"bucket": "demo", "path": "results/"}},
            "config": config,
        }
        response = httpx.post(self.tasks(), json=body, headers={"X-Auth-Token": self.key}, timeout=60)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def get(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(self.tasks(f"/{job_id}"), headers={"X-Auth-Token": self.key}, timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while not until(job):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stuck: {job}\n{self.logs()}")
            time.sleep(0.5)
            job = self.get(job_id)
        return job

    def start_worker(self, name: str, **extra: str) -> subprocess.Popen[bytes]:
        env = {**self.env, **extra}
        worker = self.processes.start(
            [
                str(Path(sys.executable).parent / "celery"),
                "--app",
                "console",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "1",
                "--hostname",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            log=self.tmp / f"{name}.log",
        )
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))

    def python(self, code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, check=True, cwd=ROOT
        )
        return done.stdout


def _console(tmp: Path, request: pytest.FixtureRequest, processes: ProcessGroup, **extra: str) -> Console:
    env = embedded_env(tmp / "data", DJANGO_SETTINGS_MODULE="console.settings", **extra)
    if services_configured():
        env.update(DATABASE_URL=request.getfixturevalue("scaled_database"), REDIS_URL=os.environ["REDIS_URL"])
        # A queue of its own: nothing else on this Redis consumes these messages.
        env["CELERY_QUEUE"] = f"forecast-e2e-{os.getpid()}-{free_port()}"
    manage("migrate", "--noinput", "-v0", env=env)
    out = manage("bootstrap", env=env)
    assert "demo inputs" in out.stdout, out.stdout + out.stderr
    project, deployment, key = subprocess.run(
        [sys.executable, "-c", SETUP], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    port = free_port()
    processes.start(
        ["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"], env=env, log=tmp / "web.log"
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/healthz")
    return Console(url, project, deployment, key, env, tmp, processes, [])


READ_BACK = """
import django, json, sys; django.setup()
from forecasts.storage import default_store
from forecasts import inputs
store = default_store()
keys = store.list_keys("demo", sys.argv[1])
times = inputs.available_times(store, "demo", sys.argv[1] + "2017010100/")
feats = inputs.available_features(store, "demo", sys.argv[1] + "2017010100/")
print(json.dumps({"keys": keys, "times": [t.strftime("%Y%m%d%H") for t in times], "features": feats}))
"""


def _check_job(console: Console, job: dict[str, Any], figures: bool) -> None:
    found = json.loads(console.python(READ_BACK.replace("sys.argv[1]", repr(f"results/{job['id']}/"))))
    names = {k.rsplit("/", 1)[-1] for k in found["keys"]}
    assert "manifest.json" in names and "forecast.nc" in names
    # Every output step of a 24 h forecast (6, 12, 18, 24 h) of the 2017010100 start, readable as an input.
    assert found["times"] == ["2017010106", "2017010112", "2017010118", "2017010200"]
    assert set(found["features"]) >= {"500:Z", "850:T"}
    if figures:
        assert {"500_Z_024h.png", "850_T_024h.png", "area_means.png"} <= names
    else:
        assert not any(n.endswith(".png") for n in names)


CONFIG = {
    "start_time_begin": "2017010100",
    "start_time_end": "2017010112",
    "start_time_interval_hours": 12,
    "forecast_lead_hours": 24,
    "forecast_features": "500:Z;850:T",
    "draw_figures": "true",
}


def test_a_job_runs_through_real_workers(
    tmp_path: Path, request: pytest.FixtureRequest, processes: ProcessGroup
) -> None:
    console = _console(tmp_path, request, processes)
    console.start_worker("w1")
    job = console.submit(CONFIG)
    assert job["state"] == "PENDING"
    done = console.wait(job["id"], lambda j: j["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"})
    assert done["state"] == "SUCCEEDED", console.logs()
    _check_job(console, done, figures=True)


def test_a_job_against_the_s3_server(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    processes: ProcessGroup,
    s3_server: S3Server,  # noqa: F811
) -> None:
    console = _console(
        tmp_path,
        request,
        processes,
        OBS_ENDPOINT=s3_server.endpoint,
        OBS_ACCESS_KEY_ID=s3_server.access_key_id,
        OBS_SECRET_ACCESS_KEY=s3_server.secret_access_key,
        OBS_REGION=s3_server.region,
    )
    console.start_worker("w1")
    job = console.submit({**CONFIG, "start_time_end": "2017010100", "draw_figures": "false"})
    done = console.wait(job["id"], lambda j: j["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"})
    assert done["state"] == "SUCCEEDED", console.logs()
    _check_job(console, done, figures=False)
    assert not (tmp_path / "data" / "obs" / "demo").exists()  # everything went to S3


def test_a_worker_killed_mid_job_hands_its_run_to_another(
    tmp_path: Path, request: pytest.FixtureRequest, processes: ProcessGroup
) -> None:
    # A new worker takes over a silent run after 5 s, looking every second.
    console = _console(tmp_path, request, processes, FORECAST_HEARTBEAT_STALE_SECONDS="5", FORECAST_REAP_SECONDS="1")
    first = console.start_worker("doomed")
    job = console.submit(
        {**CONFIG, "start_time_end": "2017010100", "forecast_lead_hours": 168, "draw_figures": "false"}
    )
    console.wait(job["id"], lambda j: j["state"] == "RUNNING", timeout=60)
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool child, mid-forecast
    first.wait()
    console.start_worker("rescuer")
    done = console.wait(job["id"], lambda j: j["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert done["state"] == "SUCCEEDED", console.logs()
    timeline = json.loads(
        console.python(
            "import django, json; django.setup()\n"
            "from forecasts.models import JobEvent, ForecastRun\n"
            f"print(json.dumps({{'events': list(JobEvent.objects.filter(job_id={job['id']!r})"
            ".values_list('message', flat=True)), 'attempts': list(ForecastRun.objects.filter("
            f"job_id={job['id']!r}).values_list('attempt', 'worker'))}}))"
        )
    )
    assert any("stopped answering" in e and "attempt 2 of 3" in e for e in timeline["events"]), timeline
    [(attempt, worker)] = timeline["attempts"]
    assert attempt == 1 and worker.startswith("rescuer@")
