"""Deep health includes the embedded model server when it is on: while the server loads (its port is
still closed, or it says "loading"), /healthz?deep=1 answers 503 naming it; once ready, 200."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from tests.conftest import ProcessGroup, embedded_env, free_port, manage, wait_for_http
from tests.upstreams.base import SimulatorServer
from tests.upstreams.local_llm import serve

Deep = Callable[[], tuple[int, dict[str, Any]]]  # /healthz?deep=1 in-process: status and JSON


@pytest.fixture
def deep(client: Client, db: None, settings: Settings) -> Deep:
    # No worker runs in-process: its probe fails fast, and the local_llm check is what is looked at.
    settings.HEALTH_WORKER_TIMEOUT = 0.3
    settings.LOCAL_LLM = "on"

    def get() -> tuple[int, dict[str, Any]]:
        response = client.get("/healthz?deep=1")
        return response.status_code, response.json()

    return get


def test_names_the_model_server_while_nothing_listens(deep: Deep, settings: Settings) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings.LOCAL_LLM_URL = f"{url}/v1"
    status, body = deep()
    assert status == 503 and body["status"] == "unavailable"
    check = body["checks"]["local_llm"]
    assert check["ok"] is False
    assert "local model is starting" in check["error"] and f"{url}/health" in check["error"]


def test_names_the_model_server_while_it_says_loading(
    deep: Deep, settings: Settings, servers: list[SimulatorServer]
) -> None:
    servers.append(server := serve(loading=True))
    settings.LOCAL_LLM_URL = f"{server.url}/v1"
    status, body = deep()
    assert status == 503
    assert body["checks"]["local_llm"] == {
        "ok": False,
        "error": "the local model is starting: the server is still loading its models",
    }


def test_the_model_server_is_up_once_ready(deep: Deep, settings: Settings, servers: list[SimulatorServer]) -> None:
    servers.append(server := serve())
    settings.LOCAL_LLM_URL = f"{server.url}/v1"
    _, body = deep()
    assert body["checks"]["local_llm"]["ok"] is True and "latency_ms" in body["checks"]["local_llm"]
    assert [(r.method, r.path) for r in server.state.requests] == [("GET", "/health")]


def test_no_model_server_check_when_it_is_off(deep: Deep, settings: Settings) -> None:
    settings.LOCAL_LLM = "off"
    settings.LOCAL_LLM_URL = f"http://127.0.0.1:{free_port()}/v1"
    _, body = deep()
    assert "local_llm" not in body["checks"]


def test_deep_health_turns_200_when_the_model_server_is_ready(
    tmp_path: Path, processes: ProcessGroup, servers: list[SimulatorServer]
) -> None:
    """The defect as `make run` showed it: web and worker up, model server still loading."""
    port, llm_port = free_port(), free_port()
    env = embedded_env(
        tmp_path,
        PORT=str(port),
        LOCAL_LLM="on",
        LOCAL_LLM_URL=f"http://127.0.0.1:{llm_port}/v1",
        CELERY_CONCURRENCY="1",
    )
    manage("migrate", "--noinput", "-v0", env=env)
    processes.start(
        ["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"], env=env, log=tmp_path / "web.log"
    )
    processes.start(
        ["celery", "--app", "console", "worker", "--concurrency", "1", "--without-mingle", "--without-gossip"],
        env=env,
        log=tmp_path / "worker.log",
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz")
    deadline = time.monotonic() + 60
    while True:  # until the worker answers, so only the model server is missing
        loading = httpx.get(f"http://127.0.0.1:{port}/healthz?deep=1", timeout=30)
        if loading.json()["checks"]["worker"]["ok"] or time.monotonic() > deadline:
            break
    assert loading.status_code == 503
    checks = loading.json()["checks"]
    assert [name for name, check in checks.items() if not check["ok"]] == ["local_llm"]
    assert "local model is starting" in checks["local_llm"]["error"]

    servers.append(serve(port=llm_port))
    ready = httpx.get(f"http://127.0.0.1:{port}/healthz?deep=1", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["local_llm"]["ok"] is True
