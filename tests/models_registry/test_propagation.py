"""A switch made through one web process is in force on the next request served by another."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ProcessGroup, embedded_env, free_port, manage, services_configured, wait_for_http


@pytest.fixture
def shared_env(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """Two web processes' environment: a shared SQLite file, or PostgreSQL + Redis in the services run."""
    env = embedded_env(tmp_path, CONSOLE_ADMIN_PASSWORD="pw-Admin-1234")
    if services_configured():
        import os

        env.update(DATABASE_URL=request.getfixturevalue("scaled_database"), REDIS_URL=os.environ["REDIS_URL"])
    manage("migrate", "--noinput", "-v0", env=env)
    manage("bootstrap", env=env)
    manage("collectstatic", "--noinput", "-v0", env=env)
    return env


def test_toggle_propagates_across_processes(
    shared_env: dict[str, str], processes: ProcessGroup, tmp_path: Path
) -> None:
    key = manage("create_api_key", "admin", env=shared_env).stdout.strip()
    urls = []
    for i in range(2):
        port = free_port()
        processes.start(
            ["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
            env=shared_env,
            log=tmp_path / f"web{i}.log",
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_for_http(f"{url}/healthz")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=10) as a, httpx.Client(headers=headers, timeout=10) as b:
        model = a.get(f"{urls[0]}/api/registry/models?limit=1").json()["items"][0]
        assert b.get(f"{urls[1]}/api/registry/models/{model['id']}").json()["enabled"] is True
        for enabled in (False, True, False):
            switched = a.patch(f"{urls[0]}/api/registry/models/{model['id']}", json={"enabled": enabled})
            assert switched.status_code == 200 and switched.json()["enabled"] is enabled
            started = time.monotonic()
            # The very next request to the other process already sees it; no cache to wait out.
            seen = b.get(f"{urls[1]}/api/registry/models/{model['id']}").json()["enabled"]
            assert seen is enabled
            assert time.monotonic() - started < 1.0
            listed = b.get(f"{urls[1]}/api/registry/models", params={"enabled": str(enabled).lower()}).json()
            assert model["id"] in [m["id"] for m in listed["items"]]
