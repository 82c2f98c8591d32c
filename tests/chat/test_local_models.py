"""The real embedded chat model through every dialect of the gateway, and the text-only model."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -r requirements-llm.txt)")

from local_llm import catalog
from local_llm.bundled import GEMMA3, SMOLLM2
from models_registry.catalogue import local_catalogue_load
from models_registry.models import Deployment, Provider
from tests.chat.conftest import World, post
from tests.conftest import local_model_server

QUESTION: Any = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def local_server() -> Iterator[str]:
    directory = Path(settings.DATA_DIR) / "local-models-test"
    directory.mkdir(exist_ok=True)
    catalog.prepare(directory)
    # An operator's own file: any GGUF copied into the folder is served under its file name.
    dropped = directory / "operator-chat.gguf"
    if not dropped.exists():
        os.link(directory / SMOLLM2.filename, dropped)
    with local_model_server(directory) as url:
        yield url


@pytest.fixture
def local(world: World, local_server: str) -> World:
    provider = local_catalogue_load(project=world.alice.project, context_length=2048)
    Provider.objects.filter(pk=provider.pk).update(base_url=local_server + "/v1")
    return world


def _direct_usage(local_server: str, body: dict) -> dict:
    return httpx.post(f"{local_server}/v1/chat/completions", json=body, timeout=60).json()["usage"]


def test_chat_model_in_every_dialect(local: World, local_server: str) -> None:
    body: dict[str, Any] = {"model": SMOLLM2.id, "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    for base in ("/v1", "/v1/ai/local/v1"):
        client = openai.OpenAI(base_url=local.url + base, api_key=local.key, max_retries=0)
        answer = client.chat.completions.create(**body)
        assert answer.choices[0].message.content.strip()
        # Usage is the model's own count, the same as the model server reports for the same call.
        assert answer.usage is not None and answer.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
            k: v for k, v in _direct_usage(local_server, body).items() if k in {"prompt_tokens", "completion_tokens"}
        }
        pieces, usage = [], None
        for chunk in client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            usage = chunk.usage or usage
        assert "".join(pieces).strip() and usage is not None and usage.completion_tokens >= 1
    deployment = Deployment.objects.get(model__name=SMOLLM2.id, project=local.alice.project)
    pangu = post(
        local.pangu_path(deployment=deployment),
        {"messages": [{"content": QUESTION[0]["content"]}], "max_tokens": 12},
        local.headers(),
        timeout=60,
    )
    assert pangu.status_code == 200 and pangu.json()["choices"][0]["message"]["content"].strip()
    assert pangu.json()["usage"]["prompt_tokens"] > 10
    with httpx.stream(
        "POST",
        local.pangu_path(deployment=deployment),
        headers=local.headers(),
        timeout=60,
        json={"messages": [{"content": QUESTION[0]["content"]}], "max_tokens": 12, "stream": "true"},
    ) as r:
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data:[DONE]"
    assert "".join(json.loads(e[5:])["choices"][0]["message"]["content"] for e in events[:-1]).strip()


def test_pangu_ppl_is_the_answers_probability_under_the_embedded_model(local: World, local_server: str) -> None:
    """Pangu's `ppl` from the embedded model: exp of the sum of the answer's token log-probabilities,
    the same the model server reports for the same greedy call; chat and text alike, never invented."""
    deployment = Deployment.objects.get(model__name=SMOLLM2.id, project=local.alice.project)
    body = {"messages": [{"content": QUESTION[0]["content"]}], "max_tokens": 12, "temperature": 0}
    answer = post(local.pangu_path(deployment=deployment), body, local.headers(), timeout=60)
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    direct = httpx.post(
        f"{local_server}/v1/chat/completions",
        json={"model": SMOLLM2.id, "messages": QUESTION, "max_tokens": 12, "temperature": 0, "logprobs": True},
        timeout=60,
    ).json()["choices"][0]
    assert direct["message"]["content"] == choice["message"]["content"]
    expected = math.exp(sum(token["logprob"] for token in direct["logprobs"]["content"]))
    assert 0 < expected < 1
    assert choice["ppl"] == pytest.approx(expected, rel=1e-9)

    text_deployment = Deployment.objects.get(model__name=GEMMA3.id, project=local.alice.project)
    prompt = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
    text = post(local.pangu_path("text/completions", text_deployment), prompt, local.headers(), timeout=60).json()
    reference = httpx.post(
        f"{local_server}/v1/completions", json={"model": GEMMA3.id, **prompt, "logprobs": 0}, timeout=60
    ).json()["choices"][0]
    assert text["choices"][0]["text"] == reference["text"]
    assert text["choices"][0]["ppl"] == pytest.approx(math.exp(sum(reference["logprobs"]["token_logprobs"])), rel=1e-9)


def test_text_model_completes_but_does_not_chat(local: World) -> None:
    client = openai.OpenAI(base_url=local.url + "/v1", api_key=local.key, max_retries=0)
    answer = client.completions.create(model=GEMMA3.id, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert answer.choices[0].text.strip() and answer.usage is not None and answer.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=GEMMA3.id, messages=QUESTION)
    assert refused.value.code == "model_not_supported" and "/completions" in str(refused.value)
    deployment = Deployment.objects.get(model__name=GEMMA3.id, project=local.alice.project)
    text = post(
        local.pangu_path("text/completions", deployment),
        {"prompt": "Once upon a time", "max_tokens": 8},
        local.headers(),
        timeout=60,
    )
    assert text.status_code == 200 and text.json()["choices"][0]["text"]
    chat = post(local.pangu_path("chat/completions", deployment), {"messages": [{"content": "hi"}]}, local.headers())
    assert chat.status_code == 400 and chat.json()["error_code"] == "PANGU.3308"


def test_operator_registers_a_dropped_gguf_from_the_provider_page(local: World) -> None:
    from django.test import Client

    provider = Provider.objects.get(project=local.alice.project, slug="local")
    client = Client()
    client.force_login(local.alice.user)
    page = client.get(f"/models/providers/{provider.pk}/local-models/")
    assert page.status_code == 200 and b"operator-chat" in page.content
    assert SMOLLM2.id.encode() in page.content and b"registered" in page.content
    response = client.post(
        f"/models/providers/{provider.pk}/local-models/", {"name": "operator-chat", "interface": "chat"}, follow=True
    )
    assert b"registered with a deployment" in response.content
    answer = post(
        f"{local.url}/v1/ai/local/v1/chat/completions",
        {"model": "operator-chat", "messages": QUESTION, "max_tokens": 8},
        local.headers(),
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"].strip()
