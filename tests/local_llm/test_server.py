"""The local model server with the real bundled models (SmolLM2-135M-Instruct for chat, Gemma 3 270M
for text completion), served by uvicorn in a thread of the test process, and once by daphne as
`python -m local_llm` runs it in production.

Generations are short (max_tokens 8-16) and greedy where the text matters, so the module runs in
well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from django.conf import settings

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -r requirements-llm.txt)")

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_types import ChatCompletionRequestMessage, CreateCompletionResponse

from local_llm import catalog
from local_llm.bundled import GEMMA3, SMOLLM2
from local_llm.config import LocalLlmConfig
from local_llm.server import LocalLlmServer, create_app
from tests.conftest import ProcessGroup, embedded_env, free_port, serve_in_thread, wait_for_http

CHAT = SMOLLM2.id
TEXT = GEMMA3.id
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def models_dir() -> Path:
    # The real models directory: prepared once, then every run only compares sizes.
    directory = Path(settings.DATA_DIR) / "models"
    catalog.prepare(directory)
    return directory


@pytest.fixture(scope="module")
def app(models_dir: Path) -> Iterator[LocalLlmServer]:
    config = replace(
        LocalLlmConfig.load(),
        threads=2,
        instance_threads=1,
        instances=2,
        queue=1,
        queue_timeout=30.0,
        n_ctx=2048,
        preload=True,
        models_dir=models_dir,
    )
    server = create_app(config, prepare=False)
    yield server
    server.pool.close()


@pytest.fixture(scope="module")
def url(app: LocalLlmServer) -> Iterator[str]:
    with serve_in_thread(app, start_timeout=20) as served:
        yield served


@pytest.fixture(autouse=True)
def _pool_idle_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "app" in request.fixturenames:
        # Every test leaves every instance back in the pool (a leak shows up here, not three tests later).
        app: LocalLlmServer = request.getfixturevalue("app")
        _wait_idle(app)


def _wait_idle(app: LocalLlmServer, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while any(s["busy"] for s in app.pool.stats().values()) or app.pool.waiting:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"pool still busy after {timeout}s: {app.pool.stats()}")
        time.sleep(0.02)
    return time.monotonic() - started


def post(url: str, path: str, body: Any, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1{path}", json=body, timeout=timeout)


def events(response: httpx.Response) -> list[Any]:
    """The SSE events of a finished stream: parsed chunks, and the literal "[DONE]"."""
    out: list[Any] = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"not an SSE data line: {line!r}"
    return out


def model_tokens(models_dir: Path, *, messages: list[dict[str, str]] | None = None, text: str = "") -> int:
    """Count with the model's own tokenizer, independently of the server (a vocabulary-only load)."""
    llm = Llama(model_path=str(models_dir / SMOLLM2.filename), vocab_only=True, verbose=False)
    try:
        if messages is None:
            return len(llm.tokenize(text.encode(), add_bos=False, special=True))
        formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
            bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
        )
        prompt = formatter(messages=cast("list[ChatCompletionRequestMessage]", messages)).prompt
        return len(llm.tokenize(prompt.encode(), add_bos=False, special=True))
    finally:
        llm.close()


# --- files -------------------------------------------------------------------------------------
def test_prepare_is_idempotent_and_lists_operator_models(models_dir: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in models_dir.glob("*.gguf")}
    assert {SMOLLM2.filename, GEMMA3.filename} <= set(before)
    started = time.monotonic()
    catalog.prepare(models_dir)
    assert time.monotonic() - started < 2, "a second prepare must only compare sizes"
    assert {p.name: p.stat().st_mtime_ns for p in models_dir.glob("*.gguf")} == before
    assert not list(models_dir.glob(".*.partial"))

    # An operator drops another GGUF in: it is listed under its stem with its own chat template.
    (tmp_path / "my-model.gguf").symlink_to(models_dir / SMOLLM2.filename)
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf")
    found = {m.id: m for m in catalog.discover(tmp_path)}
    assert set(found) == {"my-model"}
    assert found["my-model"].source == "operator"
    assert found["my-model"].chat_template and "<|im_start|>" in found["my-model"].chat_template

    bundled = {m.id: m for m in catalog.discover(models_dir)}
    assert bundled[CHAT].chat and not bundled[TEXT].chat
    assert bundled[CHAT].source.startswith(f"{SMOLLM2.package}==")


# --- the API -----------------------------------------------------------------------------------
def test_models_and_health(url: str) -> None:
    listed = httpx.get(f"{url}/v1/models").json()
    cards = {m["id"]: m for m in listed["data"]}
    assert listed["object"] == "list"
    assert cards[CHAT]["capabilities"] == {"chat": True, "completions": True}
    assert cards[TEXT]["capabilities"] == {"chat": False, "completions": True}
    assert cards[CHAT]["object"] == "model" and cards[CHAT]["owned_by"] == "local"
    assert httpx.get(f"{url}/v1/models/{TEXT}").json()["id"] == TEXT
    assert httpx.get(f"{url}/v1/models/nope").status_code == 404
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_chat_unary(url: str, models_dir: Path) -> None:
    response = post(url, "/chat/completions", {"model": CHAT, "messages": QUESTION, "max_tokens": 16, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == CHAT
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] == model_tokens(models_dir, messages=QUESTION)
    assert 1 <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_stream_is_openai_sse(url: str, models_dir: Path) -> None:
    body = {
        "model": CHAT,
        "messages": QUESTION,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        response.read()
    chunks = events(response)
    assert chunks[-1] == "[DONE]"
    *chunks, usage_chunk, _ = chunks
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:]]
    assert len([p for p in pieces if p]) >= 2, "tokens stream one by one, not in one block"
    text = "".join(pieces)
    assert "Paris" in text
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == model_tokens(models_dir, messages=QUESTION)
    assert usage_chunk["usage"]["completion_tokens"] == model_tokens(models_dir, text=text)


def test_text_completion_on_gemma(url: str) -> None:
    body = {"model": TEXT, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    response = post(url, "/completions", body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"].strip()
    assert data["usage"]["completion_tokens"] == 8 or data["choices"][0]["finish_reason"] == "stop"

    streamed = post(url, "/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    chunks = events(streamed)
    assert chunks[-1] == "[DONE]" and chunks[-2]["usage"]["prompt_tokens"] == data["usage"]["prompt_tokens"]
    # Greedy decoding: the stream says what the unary call said.
    assert "".join(c["choices"][0]["text"] for c in chunks[:-2]) == data["choices"][0]["text"]


def test_stop_sequences_and_n(url: str) -> None:
    body = {"model": TEXT, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 16, "temperature": 0, "stop": [" 8"]}
    choice = post(url, "/completions", body).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"].startswith(" 6, 7,") and "8" not in choice["text"]

    two = post(url, "/chat/completions", {"model": CHAT, "messages": QUESTION, "max_tokens": 8, "n": 2, "seed": 1})
    assert [c["index"] for c in two.json()["choices"]] == [0, 1]


def _reference_logprobs(models_dir: Path, prompt: str, max_tokens: int) -> tuple[list[str], list[float]]:
    """llama-cpp-python's own `logprobs`, which need `logits_all=True` (every position's logits kept):
    affordable for SmolLM2 with a 128-token context, and computed without the server's tap."""
    llm = Llama(model_path=str(models_dir / SMOLLM2.filename), n_ctx=128, logits_all=True, n_threads=1, verbose=False)
    try:
        result = cast(
            "CreateCompletionResponse",
            llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, logprobs=0, repeat_penalty=1.0),
        )
        logprobs = result["choices"][0]["logprobs"]
        assert logprobs is not None
        return list(logprobs["tokens"]), [float(v) for v in logprobs["token_logprobs"] if v is not None]
    finally:
        llm.close()


def test_logprobs_are_the_models_own(url: str, models_dir: Path) -> None:
    """Text completion with `logprobs: 0`: each sampled token with the log-probability the model gave it,
    equal (to float32 rounding) to what llama-cpp-python computes from a context that keeps all logits."""
    prompt = "The capital of France is"
    body = {"model": CHAT, "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 0}
    choice = post(url, "/completions", body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(6)]

    tokens, expected = _reference_logprobs(models_dir, prompt, 6)
    assert logprobs["tokens"] == tokens
    assert logprobs["token_logprobs"] == pytest.approx(expected, abs=1e-3)
    assert all(v <= 0 for v in logprobs["token_logprobs"])


def test_chat_logprobs_cover_the_answer_and_stop_at_its_end(url: str) -> None:
    body = {"model": CHAT, "messages": QUESTION, "max_tokens": 24, "temperature": 0, "logprobs": True}
    choice = post(url, "/chat/completions", body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    # The end-of-turn token that closed the answer is not part of it.
    assert choice["finish_reason"] == "stop"
    assert b"".join(bytes(t["bytes"]) for t in content).decode() == choice["message"]["content"]
    assert all(t["top_logprobs"] == [] and t["logprob"] <= 0 for t in content)

    plain = post(url, "/chat/completions", {**body, "logprobs": False}).json()["choices"][0]
    assert plain["logprobs"] is None and plain["message"]["content"] == choice["message"]["content"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"logprobs": True, "top_logprobs": 2}, "top_logprobs"),
        ("/chat/completions", {"logprobs": "yes"}, "logprobs"),
        ("/chat/completions", {"logprobs": True, "stream": True}, "logprobs"),
        ("/completions", {"logprobs": 3}, "logprobs"),
    ],
)
def test_logprobs_the_server_cannot_give_are_400(url: str, path: str, body: dict[str, Any], param: str) -> None:
    base: dict[str, Any] = {"model": CHAT, "max_tokens": 2}
    base.update({"messages": QUESTION} if path == "/chat/completions" else {"prompt": "Hi"})
    response = post(url, path, {**base, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_chat_on_a_completion_model_is_400(url: str) -> None:
    response = post(url, "/chat/completions", {"model": TEXT, "messages": QUESTION, "max_tokens": 8})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and error["type"] == "invalid_request_error"
    assert error["code"] == "model_not_supported"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": CHAT, "messages": []}, "messages"),
        ({"model": CHAT, "messages": QUESTION, "temperature": 5}, "temperature"),
        ({"model": CHAT, "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"model": CHAT, "messages": QUESTION, "max_tokens": "8"}, "max_tokens"),
        ({"model": CHAT, "messages": QUESTION, "n": 99}, "n"),
        ({"model": CHAT, "messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": CHAT, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": CHAT, "messages": QUESTION, "max_tokens": 5000}, "max_tokens"),
        ({"messages": QUESTION}, "model"),
        ([1, 2], None),
    ],
)
def test_bad_requests_are_openai_400s(url: str, body: Any, param: str | None) -> None:
    response = post(url, "/chat/completions", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_bad_json_unknown_model_and_path(url: str) -> None:
    response = httpx.post(f"{url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    missing = post(url, "/completions", {"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{url}/v1/nowhere").status_code == 404
    assert httpx.get(f"{url}/v1/completions").status_code == 405


# --- the pool ----------------------------------------------------------------------------------
def test_two_concurrent_streams_both_complete(url: str) -> None:
    async def stream(client: httpx.AsyncClient, marks: list[tuple[float, str]]) -> str:
        messages = [{"role": "user", "content": "Describe Paris in three sentences."}]
        body = {"model": CHAT, "messages": messages, "max_tokens": 32, "temperature": 0, "stream": True}
        text = ""
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    marks.append((time.monotonic(), "chunk"))
                    text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                elif line == "data: [DONE]":
                    marks.append((time.monotonic(), "done"))
        return text

    async def main() -> tuple[list[str], list[list[tuple[float, str]]]]:
        marks: list[list[tuple[float, str]]] = [[], []]
        async with httpx.AsyncClient(timeout=60) as client:
            texts = await asyncio.gather(stream(client, marks[0]), stream(client, marks[1]))
        return list(texts), marks

    texts, marks = asyncio.run(main())
    assert all(t.strip() for t in texts)
    # Served side by side by two instances, not one after the other.
    first_a, done_a = marks[0][1][0], marks[0][-1][0]
    first_b, done_b = marks[1][1][0], marks[1][-1][0]
    assert first_a < done_b and first_b < done_a


def test_burst_beyond_the_queue_gets_429_and_the_server_stays_up(url: str) -> None:
    # 2 instances + 1 queue place: of 6 simultaneous calls, 3 are served and 3 answered 429 at once.
    async def call(client: httpx.AsyncClient) -> httpx.Response:
        body = {"model": CHAT, "messages": QUESTION, "max_tokens": 32, "stream": True}
        return await client.post(f"{url}/v1/chat/completions", json=body)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(await asyncio.gather(*(call(client) for _ in range(6))))

    responses = asyncio.run(main())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 429, 429, 429]
    for response in responses:
        if response.status_code == 429:
            assert response.json() == {
                "error": {
                    "message": response.json()["error"]["message"],
                    "type": "rate_limit_exceeded",
                    "code": "concurrency_limit_exceeded",
                    "param": None,
                }
            }
            assert response.headers["retry-after"] == "1"
        else:
            assert events(response)[-1] == "[DONE]"
    assert httpx.get(f"{url}/health").status_code == 200
    assert post(url, "/chat/completions", {"model": CHAT, "messages": QUESTION, "max_tokens": 4}).status_code == 200


def _start_and_drop(url: str, body: dict[str, Any], chunks: int = 3) -> None:
    """Open a stream, read a few chunks, and hang up."""
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen += 1
                if seen >= chunks:
                    break


# A base model counting: it goes on for the whole max_tokens (~20 s on this box) unless stopped.
COUNTING = {"model": TEXT, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 1000, "temperature": 0, "stream": True}


def test_disconnect_mid_stream_frees_the_instance(url: str, app: LocalLlmServer) -> None:
    # Both instances of the model busy with long answers, then both clients hang up.
    threads = [threading.Thread(target=_start_and_drop, args=(url, COUNTING)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert _wait_idle(app, timeout=5) < 2, "the workers stop within a token of the hang-up"
    started = time.monotonic()
    response = post(url, "/completions", {"model": TEXT, "prompt": "Hello", "max_tokens": 4}, timeout=10)
    assert response.status_code == 200
    assert time.monotonic() - started < 3


def test_disconnect_while_queued_leaves_the_queue(url: str, app: LocalLlmServer) -> None:
    holders = [threading.Thread(target=_start_and_drop, args=(url, COUNTING, 40)) for _ in range(2)]
    for thread in holders:
        thread.start()
    deadline = time.monotonic() + 10
    while app.pool.stats()[TEXT]["busy"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    # A third caller queues, then gives up before an instance frees.
    with pytest.raises(httpx.ReadTimeout):
        post(url, "/completions", {"model": TEXT, "prompt": "Hi", "max_tokens": 4}, timeout=0.5)
    deadline = time.monotonic() + 5
    while app.pool.waiting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.pool.waiting == 0
    for thread in holders:
        thread.join(timeout=30)


def test_the_gateway_adapter_reads_this_server(url: str) -> None:
    """The console's own `local` adapter against this server: the wire format it parses is the one
    this server writes."""
    from models_registry.models import Provider
    from models_registry.providers.base import InferenceRequest
    from models_registry.providers.local import LocalAdapter

    adapter = LocalAdapter(Provider(kind="local", base_url=f"{url}/v1", timeout_seconds=60))

    async def main() -> None:
        assert (await adapter.check()).ok
        chat = InferenceRequest(mode="chat", model=CHAT, messages=QUESTION, max_tokens=8, temperature=0)
        unary = await adapter.complete(chat)
        assert unary.texts[0] and unary.usage and unary.usage.completion_tokens >= 1
        pieces = [p async for p in adapter.stream(replace(chat, stream=True))]
        assert "".join(p.text for p in pieces) == unary.texts[0]
        assert any(p.usage for p in pieces) and any(p.finish_reason for p in pieces)
        text = InferenceRequest(mode="text", model=TEXT, prompt="Once upon a time", max_tokens=8, stream=True)
        assert "".join([p.text async for p in adapter.stream(text)]).strip()

    asyncio.run(main())


# --- as production runs it ---------------------------------------------------------------------
def test_python_m_local_llm_serves_under_daphne(models_dir: Path, tmp_path: Path, processes: ProcessGroup) -> None:
    port = free_port()
    env = embedded_env(
        Path(settings.DATA_DIR),
        LOCAL_LLM_PORT=str(port),
        LOCAL_LLM_INSTANCES="1",
        LOCAL_LLM_QUEUE="0",
        DJANGO_SETTINGS_MODULE="console.settings",
    )
    processes.start([sys.executable, "-m", "local_llm"], env=env, log=tmp_path / "llm.log")
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", timeout=60)
    body = {"model": CHAT, "messages": QUESTION, "max_tokens": 8, "stream": True}
    chunks = events(post(url, "/chat/completions", body))
    assert chunks[-1] == "[DONE]" and "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    # One instance, no queue: a second call while a long one runs is refused; a hang-up frees it.
    holder = threading.Thread(target=_start_and_drop, args=(url, COUNTING, 20))
    holder.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["models"][TEXT]["busy"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = post(url, "/completions", {"model": TEXT, "prompt": "Hi", "max_tokens": 4})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    holder.join(timeout=30)
    deadline = time.monotonic() + 5
    while httpx.get(f"{url}/health").json()["models"][TEXT]["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert post(url, "/completions", {"model": TEXT, "prompt": "Hi", "max_tokens": 4}).status_code == 200
