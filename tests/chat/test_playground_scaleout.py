"""Live sharing of a playground conversation across two daphne processes on PostgreSQL + Redis.

The owner streams on process A; a project member watching on process B receives the very same
events, in order, through the Redis channel layer; a user of another project, also on B, is told the
conversation does not exist and receives nothing. Real sockets (the `websockets` client), real session
cookies, an allowed Origin: what a browser on another machine behind the same load balancer does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import ROOT, ProcessGroup, embedded_env, free_port, manage, services_configured, wait_for_http
from tests.upstreams.base import SimulatorServer
from tests.upstreams.openai import serve

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(not services_configured(), reason="needs DATABASE_URL and REDIS_URL (the services run)"),
]

# Sessions are made the way a login makes them (django.test.Client.force_login saves one through the
# configured session engine), in the processes' own database.
SETUP = """
import json
import django; django.setup()
from django.conf import settings
from django.test import Client
from console.models import Project, Role
from models_registry import services
from tests.factories import add_member, make_project, make_user
project = Project.objects.get(name="default")
provider = services.provider_create(project=project, by=None, fields={{
    "slug": "sim", "name": "Sim", "kind": "openai_compatible", "base_url": "{url}/v1"}}, secrets={{"api_key": "k"}})
services.model_create(provider=provider, by=None, fields={{"name": "sim-chat", "context_length": 8192}})
alice, dave, bob = make_user("alice"), make_user("dave"), make_user("bob")
add_member(project=project, user=alice, role=Role.ADMIN)
add_member(project=project, user=dave, role=Role.MEMBER)
make_project(name="bob-project", owner=bob)
cookies = {{}}
for user in (alice, dave, bob):
    client = Client()
    client.force_login(user)
    cookies[user.username] = client.cookies[settings.SESSION_COOKIE_NAME].value
print(json.dumps(cookies))
"""
SHARE = """
import django; django.setup()
from chat import services
from chat.models import Conversation
services.conversation_set_shared(conversation=Conversation.objects.get(pk={conversation!r}), shared=True)
"""
# Known here, not read back from the code under test: what the watcher must see, piece by piece.
LIVE_REPLY = "Streamed on process A and watched live on process B in the same order"
LIVE_PIECES = [w if i == 0 else " " + w for i, w in enumerate(LIVE_REPLY.split(" "))]
SPACING = 0.05  # seconds between the simulator's pieces: the answer takes ~0.7 s to stream
# A watcher waits while the owner types: longer than the 5 s after which redis-py 8's default socket
# timeout crashed an idle consumer (close 1011) under the list-based layer's blocking pop.
IDLE = 6.0
TERMINAL = {"done", "stopped", "error"}


def _python(script: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()


@pytest.fixture
def upstream() -> Iterator[SimulatorServer]:
    server = serve(api_key="k")
    yield server
    server.stop()


@pytest.fixture
def two_consoles(
    tmp_path: Path, scaled_database: str, upstream: SimulatorServer, processes: ProcessGroup
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Two daphne processes on one PostgreSQL database and one Redis; the session cookies of alice
    (owner), dave (member of her project) and bob (another project's)."""
    env = embedded_env(
        tmp_path,
        CONSOLE_ADMIN_PASSWORD="pw-Admin-1234",
        DJANGO_SETTINGS_MODULE="console.settings",
        DATABASE_URL=scaled_database,
        REDIS_URL=os.environ["REDIS_URL"],
    )
    manage("migrate", "--noinput", "-v0", env=env)
    manage("bootstrap", env=env)
    cookies = json.loads(_python(SETUP.format(url=upstream.url), env))
    urls = []
    for i in range(2):
        port = free_port()
        processes.start(
            ["daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
            env=env,
            log=tmp_path / f"web{i}.log",
        )
        urls.append(f"127.0.0.1:{port}")
    for url in urls:
        wait_for_http(f"http://{url}/healthz")
    return urls, cookies, env


def _open(host: str, cookie: str) -> connect:
    return connect(
        f"ws://{host}/ws/playground/",
        origin=f"http://{host}",  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={cookie}"},
        proxy=None,
        open_timeout=10,
    )


async def _receive(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def _until_end(ws: ClientConnection, request: str) -> list[tuple[float, dict[str, Any]]]:
    """Every event up to the request's terminal one, each with its arrival time."""
    events = []
    while True:
        event = await _receive(ws)
        events.append((time.monotonic(), event))
        if event["type"] in TERMINAL and event.get("request") == request:
            return events


def _start(content: str, request: str, **extra: Any) -> str:
    return json.dumps({"type": "start", "request": request, "model": "sim-chat", "content": content, **extra})


def test_a_member_on_another_process_watches_the_answer_grow_and_an_outsider_is_told_not_found(
    two_consoles: tuple[list[str], dict[str, str], dict[str, str]], upstream: SimulatorServer
) -> None:
    (a, b), cookies, env = two_consoles

    async def first_turn() -> str:
        async with _open(a, cookies["alice"]) as owner:
            await owner.send(_start("hi", "r0"))
            *_, (_, done) = await _until_end(owner, "r0")
        assert done["type"] == "done", done
        return str(done["conversation"])

    conversation = asyncio.run(first_turn())
    _python(SHARE.format(conversation=conversation), env)
    upstream.state.reply = LIVE_REPLY
    upstream.state.faults.token_delay = SPACING

    async def live_turn() -> tuple[Any, ...]:
        async with (
            _open(a, cookies["alice"]) as owner,
            _open(b, cookies["dave"]) as member,
            _open(b, cookies["bob"]) as outsider,
        ):
            await member.send(json.dumps({"type": "subscribe", "conversation": conversation}))
            subscribed = await _receive(member)
            await outsider.send(json.dumps({"type": "subscribe", "conversation": conversation}))
            refused = await _receive(outsider)
            await asyncio.sleep(IDLE)
            await owner.send(_start("again", "r1", conversation=conversation))
            seen_by_owner, seen_by_member = await asyncio.gather(_until_end(owner, "r1"), _until_end(member, "r1"))
            # Whatever reached the group has reached the member by now; nothing may have reached bob.
            try:
                leaked: Any = await _receive(outsider, timeout=0.5)
            except TimeoutError:
                leaked = None
        return subscribed, refused, seen_by_owner, seen_by_member, leaked

    subscribed, refused, seen_by_owner, seen_by_member, leaked = asyncio.run(live_turn())
    assert subscribed == {"type": "subscribed", "conversation": conversation}
    assert (refused["type"], refused.get("code"), refused.get("message")) == (
        "error",
        "NOT_FOUND",
        "No such conversation.",
    ), refused
    assert leaked is None

    owner_events = [event for _, event in seen_by_owner]
    member_events = [event for _, event in seen_by_member]
    assert [e["type"] for e in member_events] == ["started"] + ["delta"] * len(LIVE_PIECES) + ["done"]
    assert [e["text"] for e in member_events[1:-1]] == LIVE_PIECES
    assert "".join(e["text"] for e in member_events[1:-1]) == LIVE_REPLY
    # The very events the owner's socket got: started (with its request id), each delta, done (usage, turn).
    assert member_events == owner_events
    assert {e["conversation"] for e in member_events} == {conversation}
    assert member_events[-1]["finish_reason"] == "stop"
    assert member_events[-1]["usage"]["completion_tokens"] == len(LIVE_PIECES)
    # Live, not replayed at the end: on B the pieces arrived spread over the stream, as A sent them.
    arrivals = [at for at, event in seen_by_member if event["type"] == "delta"]
    assert arrivals[-1] - arrivals[0] >= (len(LIVE_PIECES) - 1) * SPACING * 0.8, arrivals


def test_the_redis_layer_serves_event_loops_of_one_process_at_once(scaled_database: str) -> None:
    """One process may run several event loops: the test suite's in-thread servers beside its own, a
    worker thread's loop beside the web one. The list-based Redis layer allowed one receiving loop
    per process ("Two event loops are trying to receive() on one channel layer at once!"), and one
    stuck receive in a finished loop refused every later one; the Pub/Sub layer keeps one layer per loop."""
    import threading

    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    ready, got = threading.Event(), {}

    async def waiting_elsewhere() -> None:
        name = await layer.new_channel()
        got["name"] = name
        ready.set()
        got["there"] = await asyncio.wait_for(layer.receive(name), 10)

    elsewhere = threading.Thread(target=asyncio.run, args=(waiting_elsewhere(),))
    elsewhere.start()
    assert ready.wait(10)

    async def here() -> dict[str, Any]:
        name = await layer.new_channel()
        receiving = asyncio.ensure_future(layer.receive(name))
        await asyncio.sleep(0.2)  # both loops are now waiting on the layer
        await layer.send(name, {"type": "x.here", "n": 1})
        await layer.send(got["name"], {"type": "x.there", "n": 2})
        return await asyncio.wait_for(receiving, 10)

    assert asyncio.run(here()) == {"type": "x.here", "n": 1}
    elsewhere.join(10)
    assert got["there"] == {"type": "x.there", "n": 2}
