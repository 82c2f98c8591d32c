"""The two runtimes, chosen by environment, and the processes `make run` starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, VENV_BIN, ProcessGroup, embedded_env, free_port, manage, wait_for_http, wait_until

# What every entry point does: prepare DATA_DIR, then set Django up.
PROBE = (
    "from console.datadir import prepare_data_dir; prepare_data_dir(); "
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], 'broker': s.CELERY_BROKER_URL, "
    "'channels': s.CHANNEL_LAYERS['default']['BACKEND'], 'cache': s.CACHES['default']['BACKEND'], "
    "'debug': s.DEBUG, 'secret': s.SECRET_KEY}))"
)


def _probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "console.settings"},
        capture_output=True,
        text=True,
    )


def test_embedded_defaults(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    env.pop("SECRET_KEY", None)
    env.pop("DEBUG", None)
    first = _probe(env)
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)
    assert got["db"] == "django.db.backends.sqlite3"
    assert got["broker"] == "filesystem://"
    assert got["channels"] == "channels.layers.InMemoryChannelLayer"
    assert got["debug"] is False
    # The generated secret key is kept and reused, with owner-only permissions.
    key_file = tmp_path / "secret_key"
    assert key_file.read_text() == got["secret"] and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert json.loads(_probe(env).stdout)["secret"] == got["secret"]


def test_scaled_settings(tmp_path: Path) -> None:
    env = embedded_env(
        tmp_path, DATABASE_URL="postgres://u:p@db.internal:5432/console", REDIS_URL="redis://cache.internal:6379/1"
    )
    got = json.loads(_probe(env).stdout)
    assert got["db"] == "django.db.backends.postgresql"
    assert got["broker"] == "redis://cache.internal:6379/1"
    assert got["channels"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert got["cache"] == "django.core.cache.backends.redis.RedisCache"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PORT", "eighty"),
        ("DEBUG", "perhaps"),
        ("REDIS_URL", "http://nope"),
        ("CELERY_CONCURRENCY", "0"),
        ("HEALTH_WORKER_TIMEOUT", "soon"),
        # Malformed knobs of a part that is off still stop the start: every variable is read.
        ("SECURE_HSTS_SECONDS", "a year"),
        ("DB_POOL_SIZE", "0"),
        ("LOCAL_LLM_THREADS", "many"),
        ("LOCAL_LLM_INSTANCE_THREADS", "9999"),
        ("LOCAL_LLM_PRELOAD", "maybe"),
        ("TRUSTED_PROXIES", "the-proxy"),
        ("GATEWAY_MAX_BODY_BYTES", "two megabytes"),
        # HTTPS behind a proxy whose X-Forwarded-Proto nobody believes would redirect forever.
        ("HTTPS", "true"),
    ],
)
def test_malformed_values_fail_at_start_naming_the_variable(tmp_path: Path, var: str, value: str) -> None:
    result = _probe(embedded_env(tmp_path, **{var: value}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and var in result.stderr


def test_check_deploy_only_https_warnings(tmp_path: Path) -> None:
    result = manage("check", "--deploy", env=embedded_env(tmp_path), check=False)
    codes = set(__import__("re").findall(r"\(([a-z_]+\.[EW]\d+)\)", result.stdout + result.stderr))
    assert codes <= {"security.W004", "security.W008", "security.W012", "security.W016"}, result.stderr
    https_env = embedded_env(tmp_path, HTTPS="true", TRUSTED_PROXIES="127.0.0.1")
    https = manage("check", "--deploy", env=https_env, check=False)
    # Left: whether HSTS covers subdomains and the preload list, which only the operator can decide.
    codes = set(__import__("re").findall(r"\(([a-z_]+\.[EW]\d+)\)", https.stdout + https.stderr))
    assert codes <= {"security.W005", "security.W021"}, https.stderr


def test_procfile_processes_serve_and_stop_on_ctrl_c(tmp_path: Path) -> None:
    """What `make run` starts: honcho runs daphne and a worker; Ctrl-C stops them all."""
    port, llm_port = free_port(), free_port()
    env = embedded_env(
        tmp_path,
        PORT=str(port),
        CONSOLE_ADMIN_PASSWORD="pw-Admin-1234",
        CELERY_CONCURRENCY="1",
        LOCAL_LLM_PORT=str(llm_port),
    )
    manage("migrate", "--noinput", "-v0", env=env)
    assert "admin user 'admin' created" in manage("bootstrap", env=env).stdout
    manage("collectstatic", "--noinput", "-v0", env=env)
    log = (tmp_path / "honcho.log").open("wb")
    honcho = subprocess.Popen(
        [str(Path(sys.executable).parent / "honcho"), "start", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        # The embedded model server is one of the processes.
        wait_for_http(f"http://127.0.0.1:{llm_port}/health", timeout=90)
        deep = httpx.get(f"http://127.0.0.1:{port}/healthz?deep=1", timeout=30)
        assert deep.status_code == 200, deep.text
        checks = deep.json()["checks"]
        assert checks["database"]["ok"] and checks["broker"]["ok"] and checks["worker"]["ok"]
        # Static files come from the app itself (servestatic), hashed names included.
        page = httpx.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=10)
        css = __import__("re").search(r'href="(/static/css/console\.[0-9a-f]+\.css)"', page.text)
        assert css and httpx.get(f"http://127.0.0.1:{port}{css.group(1)}").status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            client.get("/accounts/login/")
            response = client.post(
                "/accounts/login/",
                data={
                    "username": "admin",
                    "password": "pw-Admin-1234",
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },
                headers={"Referer": f"http://127.0.0.1:{port}/accounts/login/"},
                follow_redirects=True,
            )
            assert response.status_code == 200 and "Dashboard" in response.text
    finally:
        os.killpg(honcho.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        started = time.monotonic()
        try:
            honcho.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            raise AssertionError("honcho did not stop within 20 s of Ctrl-C") from None
    assert time.monotonic() - started < 20

    # Nothing of the group is left running (polled: on a loaded machine a child may take a moment).
    def group() -> list[str]:
        return subprocess.run(["pgrep", "-g", str(honcho.pid)], capture_output=True, text=True).stdout.split()

    wait_until(lambda: not group(), timeout=5, every=0.1)
    alive = group()
    assert alive == [], f"left running: {alive}"


def test_deep_health_reports_missing_worker(tmp_path: Path, processes: ProcessGroup) -> None:
    port = free_port()
    env = embedded_env(tmp_path, PORT=str(port), HEALTH_WORKER_TIMEOUT="1")
    manage("migrate", "--noinput", "-v0", env=env)
    processes.start(
        ["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"], env=env, log=tmp_path / "web.log"
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz")
    response = httpx.get(f"http://127.0.0.1:{port}/healthz?deep=1", timeout=30)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["database"]["ok"]
    assert not body["checks"]["worker"]["ok"] and "no worker answered" in body["checks"]["worker"]["error"]


def _untracked() -> set[str]:
    """What `git status` lists as new in the checkout. A run that writes into it creates files there;
    edits to tracked files are left out, so a developer editing the checkout during the test does
    not fail it (on a clean checkout, as in CI, this is the whole of `git status --porcelain`)."""
    result = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {line for line in result.stdout.splitlines() if line.startswith("??")}


ROUND_TRIP = """
import json
from console.celery import app
from console.tasks import ping

answer = ping.delay().get(timeout=60)
replies = []
for _ in range(10):
    replies = app.control.ping(timeout=1.0)
    if replies:
        break
print(json.dumps({"task": answer, "control": replies}))
"""


def test_embedded_celery_round_trip_writes_only_under_data_dir(tmp_path: Path, processes: ProcessGroup) -> None:
    """A task and a broadcast through kombu's filesystem transport, from the repository as working
    directory (where honcho runs the processes). kombu keeps its exchange tables in `control/` of the
    working directory unless told otherwise: they belong under DATA_DIR, and the checkout stays clean."""
    before = _untracked()
    # Not prepared beforehand: the worker's Celery app prepares it before it reads the settings.
    data_dir = tmp_path / "data"
    env = embedded_env(data_dir)
    processes.start(
        [
            str(VENV_BIN / "celery"),
            "--app",
            "console",
            "worker",
            "--concurrency",
            "1",
            "--queues",
            "console",
            "--hostname",
            "roundtrip@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        env=env,
        log=tmp_path / "worker.log",
    )
    client = manage("shell", "-c", ROUND_TRIP, env=env, check=False)
    assert client.returncode == 0, client.stderr + (tmp_path / "worker.log").read_text()
    got = json.loads(client.stdout.strip().splitlines()[-1])
    assert got["task"]["pong"] is True and got["task"]["worker"].startswith("roundtrip@")
    assert any(name.startswith("roundtrip@") for reply in got["control"] for name in reply)

    tables = {path.name for path in (data_dir / "broker" / "control").iterdir()}
    assert {"console.exchange", "celery.pidbox.exchange"} <= tables
    assert not (ROOT / "control").exists()
    assert _untracked() - before == set(), "the run wrote into the checkout"
