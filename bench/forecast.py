"""Forecast jobs on the built-in engine, end to end through real Celery workers (issue 12's benchmark).

1. A default job: one start, 168 h, 6 h steps, 8 features, figures on; its wall time (submission to
   SUCCEEDED) and the share of it spent outside the engine (queueing, reading the input, writing the
   NetCDF file, drawing the maps, the store). Goal: under 60 s, under 20 % outside the engine.
2. A 4-start job (the demo's four initial states) with one worker and with two (each worker one
   process): the speed-up. Goal: at least 1.7x. Both measured in the same run, alternating, so the
   shared machine's noise hits both.

Each run starts the console as `make run` does (a fresh DATA_DIR, migrate, bootstrap: the demo ERA5
input and the engine's deployment), daphne, and the workers; jobs go through the task API.

    .venv/bin/python bench/forecast.py              # both parts, 2 rounds of the scaling part
    .venv/bin/python bench/forecast.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FEATURES = "500:Z;850:Z;500:T;850:T;500:U;500:V;850:U;850:V"

SETUP = """
import django; django.setup()
from console.models import Project
from console import services as cs
from django.contrib.auth import get_user_model
from models_registry.models import Deployment
project = Project.objects.get(name="default")
key = cs.api_key_create(user=get_user_model().objects.get(username="admin"), project=project, name="bench")[1]
deployment = Deployment.objects.get(project=project, model__name="builtin-spectral")
print(project.pk, deployment.pk, key)
"""

RUNS = """
import django, json, sys; django.setup()
from forecasts.models import ForecastJob
job = ForecastJob.objects.get(pk=sys.argv[1])
runs = [{"id": r.pk, "engine": r.engine_seconds, "seconds": (r.finished_at - r.started_at).total_seconds()}
        for r in job.runs.all()]
print(json.dumps({"wall": (job.finished_at - job.created_at).total_seconds(), "runs": runs}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
        self.env.update(DATA_DIR=str(work / "data"), DJANGO_SETTINGS_MODULE="console.settings", LOCAL_LLM="off")
        self.env["PATH"] = f"{BIN}:{self.env.get('PATH', '')}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def run(self, *argv: str) -> str:
        done = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        fh = (self.work / log).open("wb")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        py = str(BIN / "python")
        self.run(py, "manage.py", "migrate", "--noinput", "-v0")
        self.run(py, "manage.py", "bootstrap")
        self.project, self.deployment, self.key = self.run(py, "-c", SETUP).split()
        port = free_port()
        self.start([str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"], "web.log")
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the console did not start")
            time.sleep(0.2)

    def set_workers(self, count: int) -> None:
        while len(self.workers) > count:
            proc = self.workers.pop()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        while len(self.workers) < count:
            n = len(self.workers) + 1
            argv = [str(BIN / "celery"), "--app", "console", "worker", "--concurrency", "1", "--loglevel", "INFO",
                    "--hostname", f"bench{n}@%h", "--without-mingle", "--without-gossip"]  # fmt: skip
            self.workers.append(self.start(argv, f"worker{n}.log"))
        time.sleep(3 if count else 0)  # a worker is consuming a couple of seconds after it starts

    def job(self, config: dict[str, Any]) -> dict[str, Any]:
        body = {
            "name": "bench",
            "input": {"type": "obs", "data": [{"bucket": "demo", "path": "era5/"}]},
            "output": {"obs": {"bucket": "demo", "path": "bench/"}},
            "config": config,
        }
        tasks = f"{self.url}/v1/{self.project}/deployments/{self.deployment}/tasks"
        headers = {"X-Auth-Token": self.key}
        answer = httpx.post(tasks, json=body, headers=headers, timeout=60)
        if answer.status_code != 200:
            raise SystemExit(f"submission refused: {answer.text}")
        job_id = answer.json()["id"]
        while True:
            state = httpx.get(f"{tasks}/{job_id}", headers=headers, timeout=30).json()["state"]
            if state in {"SUCCEEDED", "FAILED", "CANCELLED"}:
                break
            time.sleep(0.1)
        if state != "SUCCEEDED":
            raise SystemExit(f"job {job_id} ended {state}; see {self.work}")
        return dict(json.loads(self.run(str(BIN / "python"), "-c", RUNS, job_id)))

    def phases(self, run_id: int) -> dict[str, float]:
        """The phase timings the worker logged for a run (forecasts.pipeline), in seconds."""
        pattern = re.compile(rf"forecast run {run_id} timings: (.*), total ([0-9.]+) s")
        for log in sorted(self.work.glob("worker*.log")):
            for line in log.read_text(errors="replace").splitlines():
                found = pattern.search(line)
                if found:
                    parts = (item.rsplit(" ", 2) for item in found.group(1).split(", "))
                    return {name: float(seconds) for name, seconds, _ in parts} | {"total": float(found.group(2))}
        return {}

    def worker_cpu(self) -> float:
        """CPU seconds used so far by the workers' processes (each worker's process group: the Celery
        main process and its pool process), from /proc."""
        groups = {proc.pid for proc in self.workers}
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # the process ended meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) in groups:  # the process group
                total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the one- and two-worker 4-start job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-forecast-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.up()
            stack.set_workers(1)
            default = {
                "start_time_begin": "2017010100",
                "start_time_end": "2017010100",
                "forecast_lead_hours": 168,
                "forecast_features": FEATURES,
                "draw_figures": "true",
            }
            stack.job({**default, "forecast_lead_hours": 6})  # warm the worker (imports, caches)
            single = stack.job(default)
            engine = single["runs"][0]["engine"]
            outside = 1 - engine / single["wall"]
            print("Default job (1 start x 168 h, 6 h steps, 8 features, figures on), one worker:")
            print(f"  wall time {single['wall']:.2f} s (goal < 60 s); engine {engine:.2f} s; "
                  f"outside the engine {outside:.1%} (goal < 20 %)")  # fmt: skip
            run = single["runs"][0]
            phases = stack.phases(run["id"])
            if phases:
                print("  in the run: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items()))
                print(f"  outside the run (queue, claim, database, finalise): {single['wall'] - run['seconds']:.2f} s")
            # The demo holds four initial states, 12 h apart.
            four = {**default, "start_time_end": "2017010212", "start_time_interval_hours": 12}
            walls: dict[int, list[float]] = {1: [], 2: []}
            cores: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for workers in (1, 2):
                    stack.set_workers(workers)
                    cpu = stack.worker_cpu()
                    wall = stack.job(four)["wall"]
                    walls[workers].append(wall)
                    # How many cores the workers actually got: on a shared machine two workers may not.
                    cores[workers].append(round((stack.worker_cpu() - cpu) / wall, 2))
            one, two = statistics.median(walls[1]), statistics.median(walls[2])
            print("4-start job (4 x 168 h), medians of", args.rounds, "rounds:")
            print(f"  one worker {one:.2f} s {walls[1]}; two workers {two:.2f} s {walls[2]}")
            print(f"  speed-up {one / two:.2f}x (goal >= 1.7x)")
            print(f"  cores the workers used (CPU seconds / wall): one worker {cores[1]}, two workers {cores[2]}")
            print(f"load average: {os.getloadavg()}")
        finally:
            stack.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
