"""Scaled runtime: two daphne processes and two workers on PostgreSQL + Redis share data and work."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import httpx
import pytest
from celery import Celery

from tests.conftest import VENV_BIN, ProcessGroup, free_port, manage, services_configured, wait_for_http

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(not services_configured(), reason="needs DATABASE_URL and REDIS_URL (the services run)"),
]


def _login(base_url: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=30)
    client.get("/accounts/login/")
    response = client.post(
        "/accounts/login/",
        data={"username": "admin", "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
        headers={"Referer": f"{base_url}/accounts/login/"},
        follow_redirects=True,
    )
    assert "Dashboard" in response.text, response.text[:500]
    return client


def test_two_webs_two_workers_share_data_and_work(
    tmp_path: Path, scaled_database: str, processes: ProcessGroup
) -> None:
    queue = f"scaleout-{secrets.token_hex(4)}"
    password = "pw-Scale-" + secrets.token_hex(4)
    env = {
        **os.environ,
        "DATABASE_URL": scaled_database,
        "CELERY_QUEUE": queue,
        "SECRET_KEY": secrets.token_urlsafe(50),  # as on separate machines: shared by configuration
        "CONSOLE_ADMIN_PASSWORD": password,
        # No embedded model server runs here; with it on, deep health would rightly report it down.
        "LOCAL_LLM": "off",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
    }
    manage("migrate", "--noinput", "-v0", env=env)
    manage("bootstrap", env=env)
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        machine_env = {**env, "DATA_DIR": str(tmp_path / f"machine{i}"), "PORT": str(port)}
        manage("collectstatic", "--noinput", "-v0", env=machine_env)
        processes.start(
            ["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
            env=machine_env,
            log=tmp_path / f"web{i}.log",
        )
        processes.start(
            [
                "celery",
                "--app",
                "console",
                "worker",
                "--concurrency",
                "1",
                "--queues",
                queue,
                "--hostname",
                f"worker{i}@%h",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
            ],
            env=machine_env,
            log=tmp_path / f"worker{i}.log",
        )
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    for url in urls:
        wait_for_http(f"{url}/healthz")

    # A key created through one web process is listed by the other; a session from one works on the other.
    first = _login(urls[0], password)
    html = first.post(
        "/keys/",
        data={"kind": "api", "api-name": "made-on-web0", "csrfmiddlewaretoken": first.cookies["csrftoken"]},
        headers={"Referer": f"{urls[0]}/keys/"},
        follow_redirects=True,
    ).text
    raw = re.search(r'id="created-secret">(lmc-[A-Za-z0-9]+)<', html)
    assert raw is not None
    second = httpx.Client(base_url=urls[1], cookies=first.cookies, timeout=30)
    listed = second.get("/keys/").text
    assert "made-on-web0" in listed and raw.group(1)[:12] in listed and raw.group(1) not in listed

    # Both web processes reach a worker through Redis.
    for url in urls:
        deep = httpx.get(f"{url}/healthz?deep=1", timeout=30)
        assert deep.status_code == 200, deep.text
        assert deep.json()["runtime"] == "scaled"

    # Work spreads over both workers.
    app = Celery("probe", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
    app.conf.task_default_queue = queue
    results = [app.send_task("console.ping", kwargs={"delay": 0.3}, queue=queue) for _ in range(16)]
    workers = {r.get(timeout=60)["worker"] for r in results}
    assert workers == {f"worker0@{os.uname().nodename}", f"worker1@{os.uname().nodename}"}, workers
