"""Bad input against every door that takes text: each gets the door's parameter error (400) naming the
problem, never a 500. The attacker is anyone who can reach the port; most attacks carry a valid API key,
because most of the code that could trip sits behind authentication."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from django.test import Client

from console import services as console_services
from models_registry.models import LlmModel, Provider
from tests.chat.conftest import World
from tests.conftest import Persona
from tests.factories import PASSWORD
from tests.models_registry.factories import make_deployment, make_model, make_provider

# json.dumps escapes a lone surrogate as the six characters \ud800, which is valid JSON; Python's json
# decodes it back into a str that no UTF-8 encoder (SQLite, httpx, the usage writer) can encode.
SURROGATE = "\ud800"


def _raw_post(url: str, body: object, headers: dict[str, str]) -> httpx.Response:
    content = json.dumps(body).encode()
    assert b"\\ud800" in content or SURROGATE not in json.dumps(body, ensure_ascii=False)
    return httpx.post(url, content=content, headers={"Content-Type": "application/json", **headers}, timeout=15)


def post_json(url: str, body: object, world: World) -> httpx.Response:
    return httpx.post(url, json=body, headers=world.headers(), timeout=15)


# --- lone surrogates ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("openai-chat", "messages"),
        ("openai-text", "prompt"),
        ("cloudbase-chat", "messages"),
        ("cloudbase-text", "prompt"),
        ("pangu-chat", "messages"),
        ("pangu-text", "prompt"),
    ],
)
def test_lone_surrogate_in_the_text_is_a_parameter_error(world: World, kind: str, field: str) -> None:
    """An attacker with a valid key sends `"content": "\\ud800"` (a lone UTF-16 surrogate, legal as a JSON
    escape) in a chat message or a text prompt, in each dialect; the text cannot be encoded for the
    upstream, the usage record or the database, which used to answer 500 with a traceback."""
    dialect, mode = kind.split("-")
    text = f"hello {SURROGATE} there"
    body: dict[str, object] = {"model": world.model.name if mode == "chat" else world.text_model.name}
    if mode == "chat":
        body["messages"] = [{"role": "user", "content": "fine"}, {"role": "assistant", "content": text}]
    else:
        body["prompt"] = text
    path = "chat/completions" if mode == "chat" else "completions"
    if dialect == "openai":
        url = f"{world.url}/v1/{path}"
    elif dialect == "cloudbase":
        url = f"{world.url}/v1/ai/{world.provider.slug}/v1/{path}"
    else:
        deployment = world.deployment if mode == "chat" else world.text_deployment
        url = world.pangu_path("chat/completions" if mode == "chat" else "text/completions", deployment)
    answer = _raw_post(url, body, world.headers())
    assert answer.status_code == 400, answer.text
    payload = answer.json()
    expected_field = "messages[1].content" if mode == "chat" else "prompt"
    if dialect == "openai":
        assert payload["error"]["code"] == "invalid_parameter"
        assert payload["error"]["param"] == field
        message = payload["error"]["message"]
    elif dialect == "cloudbase":
        assert payload["code"] == "AI_MODEL_PARAM_INVALID"
        message = payload["message"]
    else:
        assert payload["error_code"] == "PANGU.0010"
        message = payload["error_msg"]
    assert expected_field in message and "surrogate" in message, message
    assert world.upstream.state.requests == []


def test_lone_surrogate_in_the_model_name_is_a_parameter_error(world: World) -> None:
    """An attacker with a valid key names the model `"sim\\ud800"`: the name is looked up in the database,
    whose driver cannot encode it."""
    answer = _raw_post(
        f"{world.url}/v1/chat/completions",
        {"model": f"sim{SURROGATE}", "messages": [{"role": "user", "content": "hi"}]},
        world.headers(),
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_parameter" and error["param"] == "model" and "surrogate" in error["message"]
    assert world.upstream.state.requests == []


def test_lone_surrogate_in_a_stop_sequence_or_a_content_part_is_a_parameter_error(world: World) -> None:
    """An attacker with a valid key hides the surrogate in a stop sequence, or in a text part of a message
    in the list form of `content`: both are relayed upstream."""
    bodies: dict[str, dict[str, object]] = {
        "stop[1]": {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", SURROGATE]},
        "messages[0].content[1].text": {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": SURROGATE}]}
            ]
        },
    }
    for name, body in bodies.items():
        answer = _raw_post(f"{world.url}/v1/chat/completions", {"model": "sim-chat", **body}, world.headers())
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "invalid_parameter" and error["param"] == name.split("[")[0], error
        assert error["message"].startswith(f"{name} is not valid Unicode: it holds a lone surrogate"), error
    assert world.upstream.state.requests == []


def test_a_surrogate_pair_is_text_like_any_other(world: World) -> None:
    """The refusal is of lone surrogates only: an emoji sent as the JSON escape pair \\ud83d\\ude00 (one
    character once decoded) reaches the upstream unchanged."""
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": "smile \U0001f600"}]}
    content = json.dumps(body).encode()
    assert b"\\ud83d\\ude00" in content
    answer = httpx.post(
        f"{world.url}/v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **world.headers()},
        timeout=15,
    )
    assert answer.status_code == 200, answer.text
    assert world.upstream.state.requests[0].body["messages"][0]["content"] == "smile \U0001f600"


def test_lone_surrogate_in_registry_names_is_a_parameter_error(alice: Persona, client: Client) -> None:
    """An attacker with a valid key creates a provider (and a model, and a deployment) whose name holds a
    lone surrogate: the database driver cannot encode it."""
    _, key = console_services.api_key_create(user=alice.user, project=alice.project, name="t")
    headers = {"Authorization": f"Bearer {key}"}
    provider = {"slug": "sim", "name": f"x{SURROGATE}", "kind": "openai_compatible", "base_url": "http://a.test/v1"}
    answer = client.post(
        "/api/registry/providers", data=json.dumps(provider), content_type="application/json", headers=headers
    )
    assert answer.status_code == 400, answer.content
    assert answer.json()["errors"] == {
        "name": ["Input should be a valid string, unable to parse raw data as a unicode string"]
    }
    assert not Provider.objects.exists()


# --- deep JSON ---------------------------------------------------------------------------------------
DEEP = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_is_a_parameter_error_in_every_dialect(world: World) -> None:
    """An attacker sends a body of 100,000 nested arrays to each door: json raises RecursionError (not a
    ValueError), which used to escape as a 500."""
    urls = {
        f"{world.url}/v1/chat/completions": ("openai", "invalid_parameter"),
        f"{world.url}/v1/completions": ("openai", "invalid_parameter"),
        f"{world.url}/v1/ai/{world.provider.slug}/v1/chat/completions": ("cloudbase", "AI_MODEL_PARAM_INVALID"),
        world.pangu_path(): ("pangu", "PANGU.0010"),
        world.pangu_path("text/completions", world.text_deployment): ("pangu", "PANGU.0010"),
        f"{world.url}/v3/auth/tokens": ("pangu", "PANGU.0010"),
    }
    for url, (dialect, code) in urls.items():
        headers = {"Content-Type": "application/json", **world.headers()}
        answer = httpx.post(url, content=DEEP, headers=headers, timeout=15)
        assert answer.status_code == 400, (url, answer.text)
        payload = answer.json()
        found = {
            "openai": lambda p: p["error"]["code"],
            "cloudbase": lambda p: p["code"],
            "pangu": lambda p: p["error_code"],
        }[dialect](payload)
        assert found == code, (url, payload)
        assert "nested too deeply" in json.dumps(payload)
    assert world.upstream.state.requests == []


def test_deeply_nested_json_is_a_parameter_error_in_the_registry_api(alice: Persona, client: Client) -> None:
    """An attacker with a valid key sends 100,000 nested arrays to the registry API."""
    _, key = console_services.api_key_create(user=alice.user, project=alice.project, name="t")
    answer = client.post(
        "/api/registry/providers",
        data=DEEP,
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 400, answer.content[:300]


# --- IAM bodies --------------------------------------------------------------------------------------
def test_iam_password_given_as_a_string_is_a_parameter_error(world: World) -> None:
    """An anonymous attacker posts `{"auth": {"identity": {"methods": ["password"], "password": "x"}}}` to
    POST /v3/auth/tokens: a string where IAM's shape has an object, which used to answer 500."""
    body = {"auth": {"identity": {"methods": ["password"], "password": "x"}}}
    answer = httpx.post(f"{world.url}/v3/auth/tokens", json=body, timeout=15)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "PANGU.0010"
    assert "auth.identity.password" in answer.json()["error_msg"]
    assert "X-Subject-Token" not in answer.headers


# --- the registry API: values its columns cannot hold ------------------------------------------------
def _registry(persona: Persona, client: Client) -> Callable[..., tuple[int, Any]]:
    _, key = console_services.api_key_create(user=persona.user, project=persona.project, name="t")

    def call(method: str, path: str, body: object = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {key}"}}
        if body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        answer = getattr(client, method)(f"/api/registry{path}", **kwargs)
        return answer.status_code, answer.json()

    return call


def test_registry_patch_with_null_for_a_required_field_is_a_parameter_error(alice: Persona, client: Client) -> None:
    """An attacker with a valid key (an admin of their own project) PATCHes a provider, a model or a
    deployment with `null` for a field whose column cannot be empty (`{"timeout": null}`): the update
    used to reach the database and fail its NOT NULL constraint, a 500."""
    provider = make_provider(project=alice.project, slug="ds")
    model = make_model(provider=provider)
    deployment = make_deployment(model=model)
    call = _registry(alice, client)
    cases = [
        (f"/providers/{provider.pk}", "timeout"),
        (f"/providers/{provider.pk}", "name"),
        (f"/providers/{provider.pk}", "enabled"),
        (f"/models/{model.pk}", "context_length"),
        (f"/models/{model.pk}", "description"),
        (f"/deployments/{deployment.pk}", "name"),
        (f"/deployments/{deployment.pk}", "state"),
    ]
    for path, name in cases:
        status, body = call("patch", path, {name: None})
        assert status == 400, (path, name, body)
        assert body["errors"] == {name: ["Value error, may not be null: leave the field out to keep its value"]}
    status, body = call("patch", f"/providers/{provider.pk}", {"limits": {"quota_period": None}})
    assert status == 400 and list(body["errors"]) == ["limits.quota_period"], body
    # null keeps its meaning where it has one: no quota, no limit.
    status, body = call("patch", f"/providers/{provider.pk}", {"limits": {"token_quota": None, "rps": None}})
    assert status == 200 and body["limits"]["token_quota"] is None, body


def test_registry_numbers_beyond_their_columns_are_parameter_errors(alice: Persona, client: Client) -> None:
    """An attacker with a valid key sends integers larger than any database column (`offset=2**70`,
    `"token_quota": 2**70`): the driver's overflow used to escape as a 500."""
    provider = make_provider(project=alice.project, slug="ds")
    model = make_model(provider=provider)
    call = _registry(alice, client)
    huge = 2**70
    for path in ("/providers", "/models", "/deployments"):
        status, body = call("get", f"{path}?offset={huge}")
        assert status == 400 and list(body["errors"]) == ["offset"], (path, body)
    bodies: list[tuple[str, str, dict[str, Any], str]] = [
        ("patch", f"/providers/{provider.pk}", {"limits": {"token_quota": huge}}, "limits.token_quota"),
        ("patch", f"/providers/{provider.pk}", {"limits": {"max_concurrency": huge}}, "limits.max_concurrency"),
        ("patch", f"/providers/{provider.pk}", {"limits": {"rps": float("inf")}}, "limits.rps"),
        ("post", "/deployments", {"model": huge}, "model"),
        ("post", "/deployments", {"model": model.pk, "context_length": huge}, "context_length"),
        ("patch", f"/models/{model.pk}", {"deploy_context_lengths": [huge]}, "deploy_context_lengths"),
    ]
    for method, path, payload, field_name in bodies:
        status, body = call(method, path, payload)
        assert status == 400 and list(body["errors"]) == [field_name], (path, payload, body)
    assert call("get", f"/providers?offset={2**31 - 1}") == (200, {"count": 1, "items": []})


def test_lone_surrogate_in_an_iam_login_is_refused_without_a_500(world: World) -> None:
    """An anonymous attacker puts a lone surrogate in the user name, the password, the AK, the scope's
    project id or name, or the `?name=` of GET /v3/projects: each is looked up in the database, whose
    driver cannot encode it."""

    def login(user: dict[str, str], scope: dict[str, str] | None = None) -> dict[str, Any]:
        auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": user}}}
        if scope is not None:
            auth["scope"] = {"project": scope}
        return {"auth": auth}

    bodies = [
        login({"name": f"alice{SURROGATE}", "password": PASSWORD}),
        login({"name": "alice", "password": f"{PASSWORD}{SURROGATE}"}),
        login({"name": "alice", "password": PASSWORD}, {"id": SURROGATE}),
        login({"name": "alice", "password": PASSWORD}, {"name": SURROGATE}),
        {
            "auth": {
                "identity": {
                    "methods": ["hw_ak_sk"],
                    "hw_ak_sk": {"access": {"key": SURROGATE}, "secret": {"key": "s"}},
                }
            }
        },
    ]
    for body in bodies:
        answer = _raw_post(f"{world.url}/v3/auth/tokens", body, {})
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error_code"] == "PANGU.0010" and "surrogate" in answer.json()["error_msg"], answer.text
        assert "X-Subject-Token" not in answer.headers


# --- NUL characters: legal text, but no PostgreSQL text column holds one ------------------------------
def test_nul_in_a_looked_up_gateway_name_is_refused_without_a_500(world: World) -> None:
    """An attacker with a valid key puts a NUL (`\\u0000`, or `%00` in a path) in the model name, the
    CloudBase group, the Pangu deployment id or `GET /v3/projects?name=`: each is looked up in the
    database, and PostgreSQL refuses a query whose text holds a NUL (a 500 under CI's scaled run)."""
    answer = post_json(
        f"{world.url}/v1/chat/completions", {"model": "sim\x00chat", "messages": [{"content": "hi"}]}, world
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "model" and "NUL" in answer.json()["error"]["message"]
    answer = post_json(f"{world.url}/v1/ai/sim%00/v1/chat/completions", {"model": "sim-chat", "messages": []}, world)
    assert answer.status_code == 404 and answer.json()["code"] == "AI_MODEL_NOT_FOUND", answer.text
    path = world.pangu_path().replace(world.deployment.pk, world.deployment.pk + "%00")
    answer = post_json(path, {"messages": [{"content": "hi"}]}, world)
    assert answer.status_code == 404 and answer.json()["error_code"] == "PANGU.3254", answer.text
    listed = httpx.get(f"{world.url}/v3/projects?name=alice-project%00", headers=world.headers(), timeout=15)
    assert listed.status_code == 200 and listed.json()["projects"] == [], listed.text
    assert world.upstream.state.requests == []


def test_nul_in_an_iam_login_is_a_parameter_error(world: World) -> None:
    """An anonymous attacker logs in as `"alice\\u0000"`: the name is looked up in the database."""
    body = {
        "auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "alice\x00", "password": "x"}}}}
    }
    answer = httpx.post(f"{world.url}/v3/auth/tokens", json=body, timeout=15)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "PANGU.0010"
    assert answer.json()["error_msg"].startswith("auth.identity.password.user.name holds a NUL")


def test_nul_in_a_registry_lookup_is_a_parameter_error(alice: Persona, client: Client) -> None:
    """An attacker with a valid key searches the registry for `?q=%00` or `?provider=%00`, or asks for
    deployment `x%00`: each is looked up as it stands."""
    provider = make_provider(project=alice.project, slug="ds")
    deployment = make_deployment(model=make_model(provider=provider))
    call = _registry(alice, client)
    for query in ("q", "provider"):
        status, body = call("get", f"/models?{query}=a%00b")
        assert status == 400 and body["errors"] == {query: ["Value error, must not contain NUL (\\u0000) characters"]}
    for method in ("get", "patch", "delete"):
        status, body = call(method, f"/deployments/{deployment.pk}%00", {} if method == "patch" else None)
        assert status == 400 and list(body["errors"]) == ["deployment_id"], (method, body)


def test_nul_in_registry_text_is_a_parameter_error(alice: Persona, client: Client) -> None:
    """An attacker with a valid key (an admin of their own project) names a provider or a model
    `"a\\u0000b"`, or puts a NUL in a Pangu setting: PostgreSQL's text and JSON columns cannot hold it,
    which answered 500 in CI's scaled run."""
    provider = make_provider(project=alice.project, slug="ds")
    call = _registry(alice, client)
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("patch", f"/providers/{provider.pk}", {"name": "a\x00b"}, "name"),
        ("patch", f"/providers/{provider.pk}", {"kind": "pangu", "pangu": {"project_id": "x\x00"}}, "pangu.project_id"),
        ("post", "/providers", {"slug": "x", "kind": "pangu", "pangu": {"iam_domain": "a\x00"}}, "pangu.iam_domain"),
        ("post", "/models", {"name": "m\x00", "provider": "ds"}, "name"),
    ]
    for method, path, payload, field_name in cases:
        status, body = call(method, path, payload)
        assert status == 400, (path, payload, body)
        assert body["errors"] == {field_name: ["Value error, must not contain NUL (\\u0000) characters"]}
    assert Provider.objects.get(pk=provider.pk).name == provider.name
    assert not LlmModel.objects.exists()
