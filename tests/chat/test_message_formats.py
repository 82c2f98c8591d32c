"""The OpenAI chat format as real clients send it: content as a list of parts, the `developer` role."""

from __future__ import annotations

from tests.chat.conftest import World, post

URL = "/v1/chat/completions"


def test_text_parts_and_developer_role_reach_the_upstream_as_text(world: World) -> None:
    body = {
        "model": "sim-chat",
        "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        ],
    }
    answer = post(world.url + URL, body, world.headers())
    assert answer.status_code == 200, answer.text
    [sent] = world.upstream.state.requests
    assert sent.body["messages"] == [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": "first\nsecond"},
    ]


def test_an_image_part_is_refused_by_name_and_never_sent(world: World) -> None:
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    answer = post(
        world.url + URL, {"model": "sim-chat", "messages": [{"role": "user", "content": parts}]}, world.headers()
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_parameter", "messages")
    assert error["message"].startswith("messages[0].content[1] is a 'image_url' part")
    assert world.upstream.state.requests == []


def test_an_unknown_role_names_every_allowed_one(world: World) -> None:
    body = {"model": "sim-chat", "messages": [{"role": "robot", "content": "hi"}]}
    answer = post(world.url + URL, body, world.headers())
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "messages[0].role must be system, developer, user, assistant or tool."


def test_a_tool_turn_is_accepted(world: World) -> None:
    body = {
        "model": "sim-chat",
        "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42", "tool_call_id": "c1"}],
    }
    assert post(world.url + URL, body, world.headers()).status_code == 200
    assert world.upstream.state.requests[0].body["messages"][1] == {"role": "tool", "content": "42"}
