"""SIGTERM to the web process under load loses no usage and leaves no quota reservation open.

The real thing: daphne as the Procfile starts it, a provider with a token quota in front of the
OpenAI upstream simulator, a client keeping calls in flight, and SIGTERM in the middle of it."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, ProcessGroup, embedded_env, free_port, manage, services_configured, wait_for_http
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
    "slug": "sim", "name": "Sim", "kind": "openai_compatible", "base_url": "{url}/v1",
    "token_quota": 100000000}}, secrets={{"api_key": "k"}})
services.model_create(provider=provider, by=None, fields={{"name": "sim-chat", "context_length": 8192}})
print(cs.api_key_create(user=get_user_model().objects.get(username="admin"), project=project, name="t")[1])
"""
READ = """
import django, json; django.setup()
from chat.models import QuotaCounter, UsageRecord
print(json.dumps({
    "records": list(UsageRecord.objects.values_list("request_id", "status", "total_tokens")),
    "counters": list(QuotaCounter.objects.values_list("reserved", "used")),
}))
"""
CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 64}
CLIENTS = 12


@pytest.fixture
def upstream() -> Iterator[SimulatorServer]:
    server = serve(api_key="k")
    yield server
    server.stop()


def _python(script: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=ROOT, timeout=120
    )
    return done.stdout.strip()


@dataclass
class Load:
    answered: dict[str, int] = field(default_factory=dict)  # request id -> total tokens, per 200 answer
    refused: list[int] = field(default_factory=list)  # the statuses of other answers
    cut_off: int = 0  # sent, and the connection ended without an answer
    stop: bool = False
    sigterm_at: float | None = None  # time.monotonic() when SIGTERM was sent
    answered_after_sigterm: int = 0  # in flight at SIGTERM, and answered during the drain


async def _client(url: str, key: str, load: Load) -> None:
    # A connection per call, as many separate clients would make.
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not load.stop:
            try:
                response = await client.post(url, json=CHAT, headers={"Authorization": f"Bearer {key}"})
            except httpx.ConnectError:
                return  # the server is gone: nothing more to send
            except httpx.TransportError:
                load.cut_off += 1
                continue
            if response.status_code == 200:
                load.answered[response.headers["X-Request-Id"]] = response.json()["usage"]["total_tokens"]
                if load.sigterm_at is not None and time.monotonic() > load.sigterm_at:
                    load.answered_after_sigterm += 1
            else:
                load.refused.append(response.status_code)


async def _load_then_sigterm(url: str, key: str, web: subprocess.Popen[bytes]) -> tuple[Load, float]:
    load = Load()
    clients = [asyncio.create_task(_client(url, key, load)) for _ in range(CLIENTS)]
    deadline = time.monotonic() + 20
    while len(load.answered) < 3 * CLIENTS and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    os.kill(web.pid, signal.SIGTERM)  # mid-load: the clients have calls in flight
    sent = load.sigterm_at = time.monotonic()
    _, pending = await asyncio.wait(clients, timeout=30)
    load.stop = True
    for task in pending:
        task.cancel()
    while web.poll() is None and time.monotonic() - sent < 30:
        await asyncio.sleep(0.05)
    return load, time.monotonic() - sent


def test_sigterm_under_load_records_every_answered_call_and_settles_every_reservation(
    tmp_path: Path, request: pytest.FixtureRequest, upstream: SimulatorServer, processes: ProcessGroup
) -> None:
    env = embedded_env(tmp_path, CONSOLE_ADMIN_PASSWORD="pw-Admin-1234", DJANGO_SETTINGS_MODULE="console.settings")
    if services_configured():
        env.update(DATABASE_URL=request.getfixturevalue("scaled_database"), REDIS_URL=os.environ["REDIS_URL"])
    manage("migrate", "--noinput", "-v0", env=env)
    manage("bootstrap", env=env)
    key = _python(SETUP.format(url=upstream.url), env)
    # Calls stay in flight long enough for SIGTERM to find some, short enough for many to finish.
    upstream.state.faults.first_token_delay = 0.5
    port = free_port()
    log = tmp_path / "web.log"
    web = processes.start(["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"], env=env, log=log)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz")

    load, stopping = asyncio.run(_load_then_sigterm(f"{base}/v1/chat/completions", key, web))

    assert web.poll() is not None, "daphne did not exit after SIGTERM"
    assert stopping < 15, f"shutdown took {stopping:.1f} s"
    # Calls that came while it shut down were turned away, to retry elsewhere.
    assert set(load.refused) <= {429}, load.refused
    assert len(load.answered) >= 3 * CLIENTS
    killed = [
        int(n) for n in re.findall(r"Killed (\d+) pending application instances", log.read_text(errors="replace"))
    ]
    # Calls in flight at SIGTERM either finished during the drain (answered after it), or were cut
    # off when daphne gave up on them; with none of either, the test did not test shutdown under load.
    in_flight = load.answered_after_sigterm + load.cut_off + sum(killed)
    assert in_flight, "SIGTERM found no call in flight: the test did not test shutdown under load"

    found = json.loads(_python(READ, env))
    records = found["records"]
    per_request = collections.Counter(request_id for request_id, _, _ in records)
    assert [rid for rid, n in per_request.items() if n > 1] == []
    ok = {request_id: tokens for request_id, status, tokens in records if status == "ok"}
    # One record per answered call, with the usage the client was told.
    missing = sorted(set(load.answered) - set(ok))
    assert not missing, f"{len(missing)} of {len(load.answered)} answered calls have no usage record"
    assert {rid: ok[rid] for rid in load.answered} == load.answered
    # No reservation left open, and exactly what the recorded calls spent is charged.
    [(reserved, used)] = found["counters"]
    assert reserved == 0
    assert used == sum(tokens for _, _, tokens in records)
