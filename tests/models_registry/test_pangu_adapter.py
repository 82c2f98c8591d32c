"""The Pangu adapter against the Pangu simulator on loopback: wire format, the three auth modes, faults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

import httpx
import pytest

from console.models import Project
from models_registry.models import Provider
from models_registry.providers import pangu
from models_registry.providers.base import InferenceRequest, StreamPiece, UpstreamError
from models_registry.providers.pangu import PanguAdapter
from tests.conftest import Persona, run_adapter
from tests.models_registry.factories import make_provider
from tests.upstreams.base import Recorded, SimulatorServer
from tests.upstreams.pangu import PanguState, serve

TOKEN = "MIIready-made-token-5e1f0b"
AK = "AKSIMULATOR00000001"
SK = "sk-the-secret-key-9a7c41"
IAM_USER = "pangu-user"
IAM_DOMAIN = "pangu-domain"
IAM_SCOPE = "cn-southwest-2"
IAM_PASSWORD = "iam-password-3c2d88"
PROJECT = "0c5b1e9a7f3d4e2b8a6c4d2e0f1a3b5c"
DEPLOYMENT = "3f2a7219-f97b-426d-84ba-b7b11c58942a"  # a model named by its deployment id
DEFAULT_DEPLOYMENT = "9d4e6b20-1c3a-4f5e-8b7d-0a2c4e6f8b1d"  # the group's deployment_id
SECRETS = (TOKEN, SK, IAM_PASSWORD)

Auth = Literal["token", "iam", "aksk"]


def state(server: SimulatorServer) -> PanguState:
    assert isinstance(server.state, PanguState)
    return server.state


def inference_calls(server: SimulatorServer) -> list[Recorded]:
    return [r for r in server.state.requests if r.path.startswith("/v1/")]


def logins(server: SimulatorServer) -> list[Recorded]:
    return [r for r in server.state.requests if r.path == "/v3/auth/tokens"]


def words(server: SimulatorServer) -> list[str]:
    """The simulator's reply as the pieces it streams (one word each, spaces leading)."""
    return [w if i == 0 else " " + w for i, w in enumerate(server.state.reply.split(" "))]


def make_pangu(
    project: Project,
    server: SimulatorServer,
    *,
    auth: Auth,
    slug: str = "pangu",
    timeout: float = 10.0,
    **secrets: str,
) -> Provider:
    config = {"project_id": PROJECT, "deployment_id": DEFAULT_DEPLOYMENT}
    if auth == "token":
        values = {"api_key": TOKEN}
    elif auth == "iam":
        config |= {
            "iam_endpoint": server.url,
            "iam_username": IAM_USER,
            "iam_domain": IAM_DOMAIN,
            "iam_project": IAM_SCOPE,
        }
        values = {"iam_password": IAM_PASSWORD}
    else:
        config["access_key"] = AK
        values = {"secret_key": SK}
    return make_provider(
        project=project,
        slug=slug,
        kind="pangu",
        base_url=server.url,
        config=config,
        secrets=values | secrets,
        timeout_seconds=timeout,
    )


def chat(**fields: Any) -> InferenceRequest:
    return InferenceRequest(mode="chat", model=fields.pop("model", "pangu-n2"), messages=[{"content": "hi"}], **fields)


async def collect(adapter: PanguAdapter, request: InferenceRequest) -> list[StreamPiece]:
    return [piece async for piece in adapter.stream(request)]


async def collect_until_error(
    adapter: PanguAdapter, request: InferenceRequest
) -> tuple[list[StreamPiece], UpstreamError]:
    pieces: list[StreamPiece] = []
    try:
        async for piece in adapter.stream(request):
            pieces.append(piece)
    except UpstreamError as exc:
        return pieces, exc
    raise AssertionError(f"the stream ended without an error after {len(pieces)} pieces")


@pytest.fixture
def upstream() -> Iterator[SimulatorServer]:
    server = serve(token=TOKEN, access_key=AK, secret_key=SK, iam_user=IAM_USER, iam_password=IAM_PASSWORD)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _empty_token_cache() -> Iterator[None]:
    # Provider pks repeat across tests (rolled-back transactions); a token must never leak between them.
    pangu.TOKENS.clear()
    yield
    pangu.TOKENS.clear()


# --- the simulator alone: the wire format the adapter must read ------------------------------------
def test_simulator_streams_pangu_framing(upstream: SimulatorServer) -> None:
    url = f"{upstream.url}/v1/{PROJECT}/deployments/{DEPLOYMENT}/chat/completions"
    body = {"messages": [{"content": "五岳分别是哪些山"}], "temperature": 0.9, "max_tokens": 600, "stream": "true"}
    with httpx.stream("POST", url, json=body, headers={"X-Auth-Token": TOKEN}, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        text = response.read().decode()
    lines = [line for line in text.split("\n") if line]
    assert all(line.startswith("data:") and not line.startswith("data: ") for line in lines)
    assert lines[-1] == "data:[DONE]" and text.endswith("data:[DONE]\n\n")
    chunks = [json.loads(line.removeprefix("data:")) for line in lines[:-1]]
    assert set(chunks[0]) == {"id", "created", "choices"}
    assert chunks[0]["choices"] == [{"message": {"content": "Hello"}}]
    assert "".join(c["choices"][0]["message"]["content"] for c in chunks) == upstream.state.reply


def test_simulator_unary_errors_and_iam(upstream: SimulatorServer) -> None:
    base = f"{upstream.url}/v1/{PROJECT}/deployments/{DEPLOYMENT}"
    answer = httpx.post(
        f"{base}/chat/completions", json={"messages": [{"content": "hi"}]}, headers={"X-Auth-Token": TOKEN}
    )
    data = answer.json()
    assert answer.status_code == 200 and set(data) == {"id", "created", "choices", "usage"}
    assert data["choices"][0]["message"] == {"role": None, "content": upstream.state.reply}
    assert "ppl" in data["choices"][0] and set(data["usage"]) == {"completion_tokens", "prompt_tokens", "total_tokens"}
    text = httpx.post(f"{base}/text/completions", json={"prompt": "Once"}, headers={"X-Auth-Token": TOKEN}).json()
    assert text["choices"][0]["text"] == upstream.state.reply

    missing = httpx.post(f"{base}/chat/completions", json={"messages": [{"content": "hi"}]})
    assert missing.status_code == 401 and missing.json()["error_code"] == "APIG.0301"
    assert set(missing.json()) == {"error_code", "error_msg", "request_id"}
    n3 = httpx.post(
        f"{base}/chat/completions", json={"messages": [{"content": "hi"}], "n": 3}, headers={"X-Auth-Token": TOKEN}
    )
    assert n3.status_code == 400 and n3.json()["error_code"] == "PANGU.3320"
    n2 = httpx.post(
        f"{base}/chat/completions",
        json={"messages": [{"content": "hi"}], "n": 2, "stream": True},
        headers={"X-Auth-Token": TOKEN},
    )
    assert n2.status_code == 400 and n2.json()["error_code"] == "PANGU.3321"

    upstream.state.faults.status = 429
    upstream.state.faults.retry_after = 7
    throttled = httpx.post(
        f"{base}/chat/completions", json={"messages": [{"content": "hi"}]}, headers={"X-Auth-Token": TOKEN}
    )
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    assert throttled.json()["error_code"] == "APIG.0308"
    upstream.state.faults.status = None
    upstream.state.faults.error_in_200 = True
    inside = httpx.post(
        f"{base}/chat/completions", json={"messages": [{"content": "hi"}]}, headers={"X-Auth-Token": TOKEN}
    )
    assert inside.status_code == 200 and inside.json()["error_code"] == "PANGU.0031"

    login = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": IAM_USER, "password": IAM_PASSWORD, "domain": {"name": IAM_DOMAIN}}},
            },
            "scope": {"project": {"name": IAM_SCOPE}},
        }
    }
    issued = httpx.post(f"{upstream.url}/v3/auth/tokens", json=login)
    assert issued.status_code == 201 and issued.headers["X-Subject-Token"]
    assert state(upstream).tokens_issued == 1
    login["auth"]["identity"]["password"]["user"]["password"] = "wrong"  # type: ignore[index]
    refused = httpx.post(f"{upstream.url}/v3/auth/tokens", json=login)
    assert refused.status_code == 401 and "X-Subject-Token" not in refused.headers
    assert state(upstream).tokens_issued == 1


# --- calls with a ready-made token ---------------------------------------------------------------
def test_unary_chat_sends_pangu_payload(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    messages = [{"content": "介绍下长江"}, {"content": "长江是中国第一大河。"}, {"role": "user", "content": "鱼呢"}]
    request = InferenceRequest(
        mode="chat", model="pangu-n2", messages=messages, temperature=0.9, max_tokens=5, top_p=0.8, stop=["\n"], n=2
    )
    completion = run_adapter(adapter.complete(request))
    expected = "".join(words(upstream)[:5])  # max_tokens=5 pieces
    assert completion.texts == [expected, expected]
    assert completion.finish_reasons == ["stop", "stop"]
    assert completion.usage is not None and completion.usage.completion_tokens == 10
    (sent,) = inference_calls(upstream)
    assert sent.method == "POST"
    assert sent.path == f"/v1/{PROJECT}/deployments/{DEFAULT_DEPLOYMENT}/chat/completions"
    assert sent.headers["X-Auth-Token"] == TOKEN and sent.headers["Content-Type"] == "application/json"
    # Role-less turns go out as given: Pangu alternates them itself.
    assert sent.body == {
        "messages": messages,
        "temperature": 0.9,
        "max_tokens": 5,
        "top_p": 0.8,
        "stop": ["\n"],
        "n": 2,
    }


def test_unary_text_completion_uses_model_deployment(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    completion = run_adapter(
        adapter.complete(InferenceRequest(mode="text", model=DEPLOYMENT, prompt="Once upon a time"))
    )
    assert completion.texts == [upstream.state.reply]
    assert completion.usage is not None and completion.usage.prompt_tokens == 4
    (sent,) = inference_calls(upstream)
    assert sent.path == f"/v1/{PROJECT}/deployments/{DEPLOYMENT}/text/completions"
    assert sent.body == {"prompt": "Once upon a time"}


def test_stream_pieces_arrive_in_order_as_sent(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    upstream.state.faults.token_delay = 0.1

    async def timed() -> list[tuple[float, StreamPiece]]:
        return [(time.monotonic(), piece) async for piece in adapter.stream(chat(stream=True, temperature=0.5))]

    arrivals = run_adapter(timed())
    pieces = [piece for _, piece in arrivals]
    assert [p.text for p in pieces[:-1]] == words(upstream)
    assert all(p.finish_reason is None for p in pieces[:-1])
    assert pieces[-1].text == "" and pieces[-1].finish_reason == "stop"
    # Relayed as they come, not buffered: the pieces are spread over the simulator's delays.
    count = len(words(upstream))
    assert arrivals[count - 1][0] - arrivals[0][0] >= 0.1 * (count - 1) * 0.8
    (sent,) = inference_calls(upstream)
    assert sent.body["stream"] is True  # JSON true, not the manual's string "true"
    assert sent.body == {"messages": [{"content": "hi"}], "temperature": 0.5, "stream": True}


def test_stream_text_completion(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    pieces = run_adapter(collect(adapter, InferenceRequest(mode="text", model=DEPLOYMENT, prompt="Once", stream=True)))
    assert "".join(p.text for p in pieces) == upstream.state.reply
    assert inference_calls(upstream)[0].path.endswith(f"/deployments/{DEPLOYMENT}/text/completions")


def test_deployment_id_from_model_name_or_group_default(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="token")
    adapter = PanguAdapter(provider)
    assert adapter.deployment_id(DEPLOYMENT) == DEPLOYMENT
    assert adapter.deployment_id(DEPLOYMENT.replace("-", "").upper()) == DEPLOYMENT.replace("-", "").upper()
    assert adapter.deployment_id("盘古-NLP-N2-基础功能模型-4K") == DEFAULT_DEPLOYMENT
    provider.config = {k: v for k, v in provider.config.items() if k != "deployment_id"}
    without_default = PanguAdapter(provider)
    with pytest.raises(UpstreamError) as caught:
        run_adapter(without_default.complete(chat()))
    assert caught.value.kind == "rejected" and "deployment id" in str(caught.value)
    assert inference_calls(upstream) == []  # refused before any call went out
    run_adapter(without_default.complete(chat(model=DEPLOYMENT)))
    assert inference_calls(upstream)[0].path == f"/v1/{PROJECT}/deployments/{DEPLOYMENT}/chat/completions"


def test_wrong_token_is_auth_without_the_token(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token", api_key="MIIwrong-token-0000"))
    for call in (adapter.complete(chat()), collect(adapter, chat(stream=True))):
        with pytest.raises(UpstreamError) as caught:
            run_adapter(call)
        assert caught.value.kind == "auth" and caught.value.status == 401
        assert "APIG.0301" in str(caught.value) and "MIIwrong-token-0000" not in str(caught.value)
    assert len(inference_calls(upstream)) == 2  # a ready-made token is never retried


def test_excerpt_masks_credentials(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    assert adapter.excerpt(f"token {TOKEN} refused; " + "x" * 400) == "token *** refused; " + "x" * 181


# --- IAM password flow ---------------------------------------------------------------------------
def test_iam_token_fetched_once_and_reused(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="iam")
    # A new adapter per call, as the gateway makes them, and a new event loop for the last two.
    run_adapter(PanguAdapter(provider).complete(chat()))

    async def two_more() -> None:
        await PanguAdapter(provider).complete(chat())
        await collect(PanguAdapter(provider), chat(stream=True))

    run_adapter(two_more())
    assert state(upstream).tokens_issued == 1
    (login,) = logins(upstream)
    assert login.body == {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": IAM_USER, "password": IAM_PASSWORD, "domain": {"name": IAM_DOMAIN}}},
            },
            "scope": {"project": {"name": IAM_SCOPE}},
        }
    }
    issued = pangu.TOKENS.get(PanguAdapter(provider).token_cache_key())
    assert issued is not None
    assert [r.headers["X-Auth-Token"] for r in inference_calls(upstream)] == [issued.value] * 3
    assert 23 * 3600 < issued.expires_at - time.time() <= 24 * 3600


def test_concurrent_calls_share_one_login(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="iam")
    upstream.state.faults.first_token_delay = 0.1  # keep the calls overlapping

    async def five() -> None:
        await asyncio.gather(*(PanguAdapter(provider).complete(chat()) for _ in range(5)))

    run_adapter(five())
    assert state(upstream).tokens_issued == 1 and len(inference_calls(upstream)) == 5


def test_iam_token_refreshed_when_near_expiry(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="iam")
    adapter = PanguAdapter(provider)
    key = adapter.token_cache_key()
    run_adapter(adapter.complete(chat()))
    first = pangu.TOKENS.get(key)
    assert first is not None
    # Two hours left: still used.
    pangu.TOKENS.put(key, replace(first, expires_at=time.time() + 2 * 3600))
    run_adapter(PanguAdapter(provider).complete(chat()))
    assert state(upstream).tokens_issued == 1
    # Half an hour left: renewed before use.
    pangu.TOKENS.put(key, replace(first, expires_at=time.time() + 1800))
    run_adapter(PanguAdapter(provider).complete(chat()))
    second = pangu.TOKENS.get(key)
    assert state(upstream).tokens_issued == 2 and second is not None and second.value != first.value
    assert inference_calls(upstream)[-1].headers["X-Auth-Token"] == second.value


def test_iam_refresh_failure_keeps_a_still_valid_token(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="iam")
    key = PanguAdapter(provider).token_cache_key()
    run_adapter(PanguAdapter(provider).complete(chat()))
    first = pangu.TOKENS.get(key)
    assert first is not None
    pangu.TOKENS.put(key, replace(first, expires_at=time.time() + 1800))
    state(upstream).iam_password = "rotated"  # the login now fails, the old token still works
    run_adapter(PanguAdapter(provider).complete(chat()))
    assert inference_calls(upstream)[-1].headers["X-Auth-Token"] == first.value
    assert len(logins(upstream)) == 2


def test_iam_token_refused_upstream_logs_in_once_more(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="iam")
    run_adapter(PanguAdapter(provider).complete(chat()))
    state(upstream).expire_tokens()  # the cache still thinks it has 23 h: the upstream says APIG.0301
    completion = run_adapter(PanguAdapter(provider).complete(chat()))
    assert completion.texts == [upstream.state.reply]
    assert state(upstream).tokens_issued == 2
    first, refused, retried = (r.headers["X-Auth-Token"] for r in inference_calls(upstream))
    assert first == refused != retried
    state(upstream).expire_tokens()
    pieces = run_adapter(collect(PanguAdapter(provider), chat(stream=True)))
    assert "".join(p.text for p in pieces) == upstream.state.reply
    assert state(upstream).tokens_issued == 3
    assert len(inference_calls(upstream)) == 5  # two refused, three answered: never more than one retry


def test_iam_wrong_password_is_auth(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="iam", iam_password="not-the-password")
    with pytest.raises(UpstreamError) as caught:
        run_adapter(PanguAdapter(provider).complete(chat()))
    assert caught.value.kind == "auth" and "IAM login failed" in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    assert inference_calls(upstream) == [] and pangu.TOKENS.get(PanguAdapter(provider).token_cache_key()) is None


def test_connection_check_logs_in_and_seeds_the_cache(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="iam")
    result = run_adapter(PanguAdapter(provider).check())
    assert result.ok and result.message == "IAM token obtained; endpoint reachable (HTTP 404)."
    run_adapter(PanguAdapter(provider).complete(chat()))
    assert state(upstream).tokens_issued == 1
    wrong = make_pangu(alice.project, upstream, auth="iam", slug="wrong", iam_password="nope-nope")
    result = run_adapter(PanguAdapter(wrong).check())
    assert not result.ok and result.message == "IAM login failed: the upstream rejected the credentials (HTTP 401)."


# --- AK/SK signing -------------------------------------------------------------------------------
def test_aksk_signature_passes_verification(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="aksk"))
    completion = run_adapter(adapter.complete(chat()))
    assert completion.texts == [upstream.state.reply]
    pieces = run_adapter(collect(adapter, chat(stream=True)))
    assert "".join(p.text for p in pieces) == upstream.state.reply
    for sent in inference_calls(upstream):
        assert sent.headers["Authorization"].startswith(
            f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host;x-sdk-date, Signature="
        )
        assert sent.headers["Host"] == upstream.url.removeprefix("http://")
        assert sent.headers["X-Sdk-Date"] and "X-Auth-Token" not in sent.headers


def test_aksk_wrong_secret_is_auth(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="aksk", secret_key="sk-wrong-secret-0000"))
    with pytest.raises(UpstreamError) as caught:
        run_adapter(adapter.complete(chat()))
    assert caught.value.kind == "auth" and caught.value.status == 401
    assert "verify aksk signature fail" in str(caught.value)
    assert "sk-wrong-secret-0000" not in str(caught.value) and SK not in str(caught.value)


# --- faults --------------------------------------------------------------------------------------
FAULTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("500", {"status": 500}, "unavailable", "PANGU.0031"),
    ("503", {"status": 503}, "unavailable", "PANGU.3259"),
    ("504", {"status": 504}, "timeout", "APIG.0201"),
    ("400", {"status": 400}, "rejected", "PANGU.0010"),
    ("403", {"status": 403}, "auth", "PANGU.3319"),
    ("404", {"status": 404}, "rejected", "PANGU.3254"),
    ("401", {"status": 401}, "auth", "APIG.0301"),
    ("429", {"status": 429, "retry_after": 7}, "rate_limited", "APIG.0308"),
    ("error_in_200", {"error_in_200": True}, "unavailable", "PANGU.0031"),
    ("first_token_delay", {"first_token_delay": 1.5}, "timeout", ""),
]


@pytest.mark.parametrize("shape", ["complete", "stream"])
@pytest.mark.parametrize(("name", "switches", "kind", "code"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_gives_the_right_kind(
    alice: Persona,
    upstream: SimulatorServer,
    shape: str,
    name: str,
    switches: dict[str, Any],
    kind: str,
    code: str,
) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token", timeout=0.5))
    for switch, value in switches.items():
        setattr(upstream.state.faults, switch, value)
    call = adapter.complete(chat()) if shape == "complete" else collect(adapter, chat(stream=True))
    with pytest.raises(UpstreamError) as caught:
        run_adapter(call)
    assert caught.value.kind == kind
    assert code in str(caught.value)
    if kind == "rate_limited":
        assert caught.value.retry_after == 7
    assert all(secret not in str(caught.value) for secret in SECRETS)


def test_malformed_event_is_bad_response(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    upstream.state.faults.malformed_sse = True
    pieces, error = run_adapter(collect_until_error(adapter, chat(stream=True)))
    assert error.kind == "bad_response" and [p.text for p in pieces] == ["Hello"]


def test_dropped_stream_is_dropped(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    upstream.state.faults.drop_after = 2
    pieces, error = run_adapter(collect_until_error(adapter, chat(stream=True)))
    assert error.kind == "dropped" and [p.text for p in pieces] == ["Hello", " from"]


def test_stalled_stream_is_timeout(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token", timeout=0.5))
    upstream.state.faults.token_delay = 1.5
    pieces, error = run_adapter(collect_until_error(adapter, chat(stream=True)))
    assert error.kind == "timeout" and [p.text for p in pieces] == ["Hello"]


def test_n_rules_are_rejected(alice: Persona, upstream: SimulatorServer) -> None:
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    with pytest.raises(UpstreamError) as unary:
        run_adapter(adapter.complete(chat(n=3)))
    assert unary.value.kind == "rejected" and "PANGU.3320" in str(unary.value) and unary.value.status == 400
    with pytest.raises(UpstreamError) as streamed:
        run_adapter(collect(adapter, chat(n=2, stream=True)))
    assert streamed.value.kind == "rejected" and "PANGU.3321" in str(streamed.value)
    assert [r.body.get("n") for r in inference_calls(upstream)] == [3, 2]


def test_unreachable_upstream_is_unavailable(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_pangu(alice.project, upstream, auth="token")
    provider.base_url = "http://127.0.0.1:9"
    with pytest.raises(UpstreamError) as caught:
        run_adapter(PanguAdapter(provider).complete(chat()))
    assert caught.value.kind == "unavailable"


def test_developer_role_goes_to_pangu_as_system(alice: Persona, upstream: SimulatorServer) -> None:
    # Pangu's manual knows system, user and assistant; OpenAI clients may send the persona as developer.
    adapter = PanguAdapter(make_pangu(alice.project, upstream, auth="token"))
    messages = [{"role": "developer", "content": "你是幼儿园老师"}, {"role": "user", "content": "你好"}]
    run_adapter(adapter.complete(InferenceRequest(mode="chat", model="pangu-n2", messages=messages)))
    (sent,) = inference_calls(upstream)
    assert sent.body["messages"] == [
        {"role": "system", "content": "你是幼儿园老师"},
        {"role": "user", "content": "你好"},
    ]
    assert messages[0]["role"] == "developer"  # the caller's request is not changed
