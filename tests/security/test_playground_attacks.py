"""Attacks on the playground socket (`/ws/playground/`) by a signed-in user. The rest of the socket's
attacks (anonymous, foreign origin, another project, operators) are in tests/chat/test_playground.py."""

from __future__ import annotations

import asyncio
from typing import Any

from django.test import Client

from chat import services
from tests.chat.conftest import World
from tests.chat.test_playground import _open, _run, _start
from tests.conftest import Persona
from tests.factories import PASSWORD

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


def test_another_projects_user_cannot_open_change_or_export_a_conversation_by_its_link(
    alice: Persona, bob: Persona
) -> None:
    """Attacker: bob, signed in, a member of another project, who learned the link of alice's shared
    conversation (or guesses ids).

    1. Opens the page, both exports, and posts rename, share and delete to it.
    2. Every request gets 404, the answer for an id that never existed; nothing changes.
    3. Alice's colleagues who may see it still can."""
    conversation = services.conversation_create(
        owner=alice.user, project=alice.project, model_name="m", title="Secret plans"
    )
    services.conversation_set_shared(conversation=conversation, shared=True)
    client = Client()
    assert client.login(username="bob", password=PASSWORD)
    for url in (f"/playground/c/{conversation.pk}/", f"/playground/c/{'0' * 32}/"):
        assert client.get(url).status_code == 404
        assert client.get(url + "export.md").status_code == 404
        assert client.get(url + "export.json").status_code == 404
        assert client.post(url + "rename/", {"title": "pwned"}).status_code == 404
        assert client.post(url + "share/", {"shared": "off"}).status_code == 404
        assert client.post(url + "delete/").status_code == 404
    conversation.refresh_from_db()
    assert (conversation.title, conversation.shared) == ("Secret plans", True)


def test_the_change_actions_refuse_get_and_a_cross_site_post(alice: Persona) -> None:
    """Attacker: a page on another site that alice visits while signed in.

    1. Links or auto-submits a form to delete or unshare alice's conversation.
    2. A GET changes nothing (405); a POST without the CSRF token is refused (403)."""
    conversation = services.conversation_create(owner=alice.user, project=alice.project, model_name="m", title="t")
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="alice", password=PASSWORD)
    url = f"/playground/c/{conversation.pk}/"
    assert client.get(url + "delete/").status_code == 405
    assert client.post(url + "delete/").status_code == 403
    assert client.post(url + "share/", {"shared": "on"}).status_code == 403
    conversation.refresh_from_db()
    assert conversation.shared is False
