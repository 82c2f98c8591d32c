"""The gateway as it runs in production: daphne processes, streaming without buffering, disconnects,
and limits that hold across processes (Redis in the services run)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ProcessGroup, embedded_env, free_port, manage, services_configured, wait_for_http
from tests.upstreams.base import SimulatorServer
from tests.upstreams.openai import serve

SETUP = """
import django; django.setup()
from console.models import Project
from console import services as cs
from django.contrib.auth import get_user_model
from models_registry import services
project = Project.objects.get(name="default")
provider = services.provider_create(project=project, by=None, fields={{
    "slug": "sim", "name": "Sim", "kind": "openai_compatible", "base_url": "{url}/v1", "max_concurrency": 3}},
    secrets={{"api_key": "k"}})
services.model_create(provider=provider, by=None, fields={{"name": "sim-chat", "context_length": 8192}})
print(cs.api_key_create(user=get_user_model().objects.get(username="admin"), project=project, name="t")[1])
"""
CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[SimulatorServer]:
    server = serve(api_key="k")
    yield server
    server.stop()


@pytest.fixture
def consoles(
    tmp_path: Path, request: pytest.FixtureRequest, upstream: SimulatorServer, processes: ProcessGroup
) -> tuple[list[str], str]:
    env = embedded_env(tmp_path, CONSOLE_ADMIN_PASSWORD="pw-Admin-1234", DJANGO_SETTINGS_MODULE="console.settings")
    if services_configured():
        env.update(DATABASE_URL=request.getfixturevalue("scaled_database"), REDIS_URL=os.environ["REDIS_URL"])
    manage("migrate", "--noinput", "-v0", env=env)
    manage("bootstrap", env=env)
    import subprocess
    import sys

    key = subprocess.run(
        [sys.executable, "-c", SETUP.format(url=upstream.url)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()
    # Two web processes share limits only through Redis; the embedded runtime runs one.
    count = 2 if services_configured() else 1
    urls = []
    for i in range(count):
        port = free_port()
        processes.start(
            ["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
            env=env,
            log=tmp_path / f"web{i}.log",
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_for_http(f"{url}/healthz")
    return urls, key


def test_pieces_are_relayed_as_they_arrive(consoles: tuple[list[str], str], upstream: SimulatorServer) -> None:
    urls, key = consoles
    upstream.state.faults.token_delay = 0.25
    arrivals = []
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{urls[0]}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.headers["X-Accel-Buffering"] == "no"
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 10
    # Not buffered: the first piece came long before the last (10 pieces, 0.25 s apart).
    assert arrivals[0] < 1.0 and arrivals[-2] - arrivals[0] > 1.5


def test_disconnect_cancels_upstream_under_daphne(consoles: tuple[list[str], str], upstream: SimulatorServer) -> None:
    urls, key = consoles
    upstream.state.faults.token_delay = 0.2
    with httpx.stream(
        "POST",
        f"{urls[0]}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        lines = response.iter_lines()  # held: a dropped iterator would close the connection early
        next(lines)
        response.close()
    gone = time.monotonic()
    while not upstream.state.disconnects and time.monotonic() - gone < 1.0:
        time.sleep(0.02)
    assert upstream.state.disconnects == 1
    # The slot is free again: a full burst of 3 is admitted.
    upstream.state.faults.token_delay = 0
    upstream.state.faults.first_token_delay = 0.5
    codes = asyncio.run(_burst(urls, key, 3))
    assert codes == [200, 200, 200]


async def _burst(urls: list[str], key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *[
                client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
                )
                for i in range(n)
            ]
        )
    return sorted(r.status_code for r in responses)


def test_concurrency_limit_across_processes(consoles: tuple[list[str], str], upstream: SimulatorServer) -> None:
    urls, key = consoles
    upstream.state.faults.first_token_delay = 0.8
    codes = asyncio.run(_burst(urls, key, 10))
    assert codes == [200] * 3 + [429] * 7, codes
