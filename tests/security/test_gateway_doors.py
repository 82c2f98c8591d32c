"""Attacks on the doors this change added or reshaped: the gateway's shared caller authentication
(API keys, IAM tokens, AK/SK), the registry API's new credentials, the IAM endpoints and the unrouted
paths. Each test names the attacker: an anonymous client, or a signed-in user of another project."""

from __future__ import annotations

import json

import httpx
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from console import services as console_services
from console.callers import RequestFacts, caller_authenticate
from console.iam import iam_token_issue
from tests.chat.conftest import World, post
from tests.factories import PASSWORD, make_project, make_user
from tests.models_registry.factories import make_model, make_provider

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


def _iam_token(username: str, project_id: str) -> str:
    body = {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": username, "password": PASSWORD}}},
            "scope": {"project": {"id": project_id}},
        }
    }
    return iam_token_issue(body=body).token


# --- a signed-in user of another project -------------------------------------------------------------
def test_another_projects_iam_token_reaches_neither_deployment_nor_upstream(world: World) -> None:
    bob = make_user("bob")
    bobs = make_project(name="bob-project", owner=bob)
    token = _iam_token("bob", bobs.pk)
    # bob names alice's project and deployment in the Pangu path.
    answer = post(world.pangu_path(), {"messages": [{"content": "hi"}]}, {"X-Auth-Token": token})
    assert answer.status_code == 404 and answer.json()["error_code"] == "PANGU.3254"
    # ... or alice's model by name through the OpenAI dialect.
    answer = post(world.url + "/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert world.upstream.state.requests == []


def test_another_projects_iam_token_sees_nothing_of_the_registry(alice: object, client: Client) -> None:
    from tests.conftest import Persona

    assert isinstance(alice, Persona)
    provider = make_provider(project=alice.project, slug="ds", secrets={"api_key": "alice-secret"})
    model = make_model(provider=provider)
    bob = make_user("bob")
    token = _iam_token("bob", make_project(name="bob-project", owner=bob).pk)
    headers = {"X-Auth-Token": token}
    assert client.get("/api/registry/models", headers=headers).json()["count"] == 0
    assert client.get(f"/api/registry/models/{model.pk}", headers=headers).status_code == 404
    changed = client.patch(
        f"/api/registry/providers/{provider.pk}", data='{"name": "x"}', content_type="application/json", headers=headers
    )
    assert changed.status_code == 404
    assert b"alice-secret" not in changed.content


def test_iam_token_cannot_be_scoped_to_a_project_the_user_is_not_in(world: World) -> None:
    make_user("bob")
    body = {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": "bob", "password": PASSWORD}}},
            "scope": {"project": {"id": world.alice.project.pk}},
        }
    }
    refused = httpx.post(f"{world.url}/v3/auth/tokens", json=body)
    assert refused.status_code == 401 and "X-Subject-Token" not in refused.headers


# --- an anonymous client -------------------------------------------------------------------------------
def test_malformed_iam_bodies_get_4xx_never_500(world: World) -> None:
    bodies: list[object] = [
        {"auth": {"identity": {"methods": ["password"], "password": "x"}}},
        {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": ["a"], "password": 1}}}}},
        {"auth": {"identity": {"methods": "password"}}},
        {"auth": "x"},
        [],
    ]
    for body in bodies:
        answer = httpx.post(f"{world.url}/v3/auth/tokens", json=body)
        assert answer.status_code in (400, 401), (body, answer.text)
        assert answer.json()["error_code"] in {"PANGU.0010", "APIG.0301"}


def test_deeply_nested_json_is_a_parameter_error(world: World) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for url in (world.url + "/v1/chat/completions", world.pangu_path(), f"{world.url}/v3/auth/tokens"):
        headers = {"Content-Type": "application/json", **world.headers()}
        answer = httpx.post(url, content=deep, headers=headers, timeout=15)
        assert answer.status_code == 400, (url, answer.text)
    assert world.upstream.state.requests == []


def test_unrouted_gateway_paths_never_reach_django_or_the_database(world: World) -> None:
    # A flood of made-up paths costs a JSON 404 on the event loop: no query, no HTML, no credentials needed.
    with CaptureQueriesContext(connection) as queries:
        for path in ("/v1/x", "/v1/ai/g/v2/chat", "/v3/users", "/v1/p/deployments/d/../../admin/"):
            answer = httpx.post(world.url + path, json={})
            assert answer.status_code == 404 and answer.headers["content-type"] == "application/json"
    assert len(queries) == 0


def test_forged_tokens_are_refused_and_not_remembered(world: World) -> None:
    from console import callers

    for token in ("MIIlmc" + "A" * 64, "MIINRwYJKoZIhvcNAQcCoIINODCCDTQCAQEx", "lmc-" + "x" * 48):
        answer = post(world.pangu_path(), {"messages": [{"content": "hi"}]}, {"X-Auth-Token": token})
        assert answer.status_code == 401 and answer.json()["error_code"] == "APIG.0301"
    assert callers._token_cache == {}  # only verified callers are cached
    assert world.upstream.state.requests == []


def test_an_api_key_is_checked_without_looking_among_iam_tokens(world: World) -> None:
    # The console's own key form skips the IAM-token lookup: one query fewer on every key's first call.
    facts = RequestFacts(method="POST", path="/", query="", headers={"authorization": f"Bearer {world.key}"}, body=b"")
    with CaptureQueriesContext(connection) as queries:
        assert caller_authenticate(facts).via == "api_key"
    assert not any("iamtoken" in q["sql"].lower() for q in queries.captured_queries)
    _, other = console_services.api_key_create(user=world.alice.user, project=world.alice.project, name="x")
    assert json.dumps(other).startswith('"lmc-')
