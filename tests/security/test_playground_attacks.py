"""Attacks on the playground socket (`/ws/playground/`) by a signed-in user. The rest of the socket's
attacks (anonymous, foreign origin, another project, operators) are in tests/chat/test_playground.py."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.chat.conftest import World
from tests.chat.test_playground import _open, _run, _start

MAX_ON_ONE_SOCKET = 4  # a compare mode's worth, as docs/playground.md says


def test_one_socket_cannot_start_answers_without_bound(world: World) -> None:
    """Attacker: a signed-in member, in a model group with no max_concurrency set.

    1. Opens one socket and sends `start` five times, each a new conversation under its own request tag,
       without waiting: every answer is slow (0.2 s between tokens).
    2. The first four stream; the fifth gets `error` CONCURRENCY_EXCEEDED with `retry_after` 1 at once.
    3. The upstream sees exactly four calls."""
    world.faults.token_delay = 0.2

    async def scenario() -> list[dict[str, Any]]:
        ws = await _open(world.alice.user)
        for i in range(1, MAX_ON_ONE_SOCKET + 2):
            await ws.send_json_to(_start(f"flood {i}", request=f"r{i}"))
        events: list[dict[str, Any]] = []
        # Until the refusal and a first piece of each of the four admitted answers have arrived.
        while (
            not any(e["type"] == "error" for e in events)
            or len({e["request"] for e in events if e["type"] == "delta"}) < MAX_ON_ONE_SOCKET
        ):
            events.append(await ws.receive_json_from(timeout=10))
        await ws.send_json_to({"type": "stop"})
        await asyncio.sleep(0.3)
        await ws.disconnect()
        return events

    events = _run(world, scenario)
    [error] = [e for e in events if e["type"] == "error"]
    assert (error["code"], error["retry_after"], error["request"]) == ("CONCURRENCY_EXCEEDED", 1, "r5")
    assert len(world.upstream.state.requests) == MAX_ON_ONE_SOCKET
