"""The Pangu dialect's answers in the exact shape of the platform manual's examples (../shared/seeds):
non-streamed `{id, created, choices: [{index, message: {role: null, content}, ppl}], usage}` with a
hyphenated UUID id; streamed `data:{id, created, choices: [{message: {content}}]}` pieces, then
`data:[DONE]`, nothing else."""

from __future__ import annotations

import json
import math
import re
import uuid

import httpx

from models_registry import services as registry_services
from models_registry.providers.base import pangu_ppl, sequence_probability
from tests.chat.conftest import World, post
from tests.upstreams.pangu import serve

UUID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The simulator's reply, word by word: ten pieces.
PIECES = ["Hello", " from", " the", " simulator.", " This", " answer", " streams", " word", " by", " word."]


def test_unary_chat_answer_has_the_manuals_shape(world: World) -> None:
    answer = post(world.pangu_path(), {"messages": [{"content": "介绍下长江"}]}, world.headers())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"id", "created", "choices", "usage"}
    assert UUID_FORM.match(body["id"]) and uuid.UUID(body["id"]).hex == answer.headers["X-Request-Id"]
    # An OpenAI-format upstream that sends no log-probabilities: ppl is null, not invented.
    assert body["choices"] == [{"index": 0, "message": {"role": None, "content": "".join(PIECES)}, "ppl": None}]
    assert set(body["usage"]) == {"completion_tokens", "prompt_tokens", "total_tokens"}


def test_unary_text_answer_has_the_manuals_shape(world: World) -> None:
    answer = post(world.pangu_path("text/completions", world.text_deployment), {"prompt": "Once"}, world.headers())
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"] == [{"index": 0, "text": "".join(PIECES), "ppl": None}]


def test_stream_sends_exactly_the_pieces_then_done(world: World) -> None:
    body = {"messages": [{"content": "五岳分别是哪些山"}], "stream": "true"}
    with httpx.stream("POST", world.pangu_path(), json=body, headers=world.headers(), timeout=15) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data:[DONE]"
    chunks = [json.loads(e.removeprefix("data:")) for e in events[:-2]]
    assert all(e.startswith("data:{") for e in events[:-2])  # no space after the colon
    assert [c["choices"] for c in chunks] == [[{"message": {"content": piece}}] for piece in PIECES]
    assert {tuple(c) for c in chunks} == {("id", "created", "choices")}
    assert len({c["id"] for c in chunks}) == 1 and UUID_FORM.match(chunks[0]["id"])


def test_a_pangu_upstreams_ppl_passes_through(world: World) -> None:
    upstream = serve(token="token")
    try:
        provider = registry_services.provider_create(
            project=world.alice.project,
            by=None,
            fields={"slug": "pangu-up", "name": "Pangu", "kind": "pangu", "base_url": upstream.url},
            config={"project_id": "p" * 32, "deployment_id": "d1"},
            secrets={"api_key": "token"},
        )
        model = registry_services.model_create(provider=provider, by=None, fields={"name": "pangu-n2"})
        deployment = registry_services.deployment_create(project=world.alice.project, model=model, by=None)
        answer = post(world.pangu_path(deployment=deployment), {"messages": [{"content": "hi"}]}, world.headers())
    finally:
        upstream.stop()
    assert answer.status_code == 200, answer.text
    # The simulator answers with the manual's first example value.
    assert answer.json()["choices"][0]["ppl"] == 8.468677045693822e-11


def test_ppl_from_token_log_probabilities() -> None:
    assert sequence_probability([{"logprob": -0.5}, {"logprob": -0.25}]) == math.exp(-0.75)
    assert sequence_probability([{"logprob": 0}]) == 1.0
    # Anything short of a log-probability for every token gives no number at all.
    assert sequence_probability([{"logprob": -0.5}, {"token": "x"}]) is None
    assert sequence_probability([{"logprob": 0.1}]) is None
    assert sequence_probability([]) is None and sequence_probability(None) is None
    assert pangu_ppl(1.5e-36) == 1.5e-36 and pangu_ppl("1") is None and pangu_ppl(math.nan) is None
