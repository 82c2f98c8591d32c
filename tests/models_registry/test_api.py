"""The registry JSON API: CRUD, auth, permissions (alice admin, bob elsewhere, carol operator), 400s."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from console import services as console_services
from console.models import AuditEvent
from models_registry import selectors
from models_registry.models import LlmModel, Provider
from tests.conftest import Persona
from tests.models_registry.factories import make_deployment, make_model, make_provider


class Api:
    def __init__(self, client: Client, key: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {key}"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        response = getattr(self.client, method)(f"/api/registry{path}", **kwargs)
        return response.status_code, (response.json() if response.content else None)


def api_for(persona: Persona, client: Client) -> Api:
    _, raw = console_services.api_key_create(user=persona.user, project=persona.project, name="t")
    return Api(client, raw)


def test_provider_crud_and_secret_is_write_only(alice: Persona, client: Client) -> None:
    api = api_for(alice, client)
    status, body = api.call(
        "post",
        "/providers",
        {
            "slug": "deepseek",
            "name": "DeepSeek",
            "kind": "openai_compatible",
            "base_url": "https://ds.example/v1",
            "api_key": "sk-very-secret-value",
            "limits": {"token_quota": 1000, "quota_period": "monthly", "max_concurrency": 4, "rps": 2.5},
        },
    )
    assert status == 201, body
    assert body["configured"] is True and "sk-very-secret-value" not in json.dumps(body)
    assert body["limits"] == {"token_quota": 1000, "quota_period": "monthly", "max_concurrency": 4, "rps": 2.5}
    pid = body["id"]
    status, listed = api.call("get", "/providers")
    assert status == 200 and listed["count"] == 1 and "sk-very-secret-value" not in json.dumps(listed)
    status, body = api.call("patch", f"/providers/{pid}", {"name": "DeepSeek V3", "limits": {"rps": 5}})
    assert status == 200 and body["name"] == "DeepSeek V3" and body["limits"]["rps"] == 5
    assert body["limits"]["token_quota"] == 1000  # untouched fields stay
    assert Provider.objects.get(pk=pid).secrets() == {"api_key": "sk-very-secret-value"}
    status, body = api.call("patch", f"/providers/{pid}", {"api_key": ""})
    assert status == 200 and body["configured"] is False
    status, _ = api.call("delete", f"/providers/{pid}")
    assert status == 204 and not Provider.objects.filter(pk=pid).exists()


def test_provider_without_credentials_is_listed_not_configured(alice: Persona, client: Client) -> None:
    api = api_for(alice, client)
    status, body = api.call("post", "/providers", {"slug": "hunyuan", "kind": "openai_compatible"})
    assert status == 201 and body["configured"] is False


def test_pangu_credentials(alice: Persona, client: Client) -> None:
    api = api_for(alice, client)
    status, body = api.call(
        "post",
        "/providers",
        {
            "slug": "pangu2",
            "kind": "pangu",
            "base_url": "https://pangu.example",
            "pangu": {
                "iam_endpoint": "https://iam.example",
                "iam_username": "u",
                "iam_password": "iam-pw-secret",
                "iam_domain": "d",
                "iam_project": "cn-southwest-2",
                "project_id": "p" * 32,
            },
        },
    )
    assert status == 201, body
    assert body["configured"] is True and body["secrets_set"] == ["iam_password"]
    assert body["config"]["iam_username"] == "u" and "iam-pw-secret" not in json.dumps(body)


def test_model_crud_matrix_and_enable_switch(alice: Persona, client: Client) -> None:
    make_provider(project=alice.project, slug="ds")
    api = api_for(alice, client)
    status, body = api.call(
        "post",
        "/models",
        {
            "name": "deepseek-chat",
            "provider": "ds",
            "context_length": 65536,
            "capabilities": {"finetune": True, "evaluate": True, "infer": True},
        },
    )
    assert status == 201, body
    mid = body["id"]
    assert body["capabilities"] == {
        "pretrain": False,
        "finetune": True,
        "evaluate": True,
        "compress": False,
        "infer": True,
    }
    assert body["evaluation_available"] is False
    status, body = api.call("patch", f"/models/{mid}", {"fine_tuned": True})
    assert status == 200 and body["evaluation_available"] is True

    status, body = api.call("patch", f"/models/{mid}", {"enabled": False})
    assert status == 200 and body["enabled"] is False
    resolved = selectors.model_resolve(project=alice.project, group="ds", name="deepseek-chat")
    assert resolved is not None and resolved.enabled is False
    event = AuditEvent.objects.filter(action="model.disable").get()
    assert event.actor == alice.user and event.changes == {"enabled": [True, False]}
    status, body = api.call("get", "/models?enabled=false")
    assert [m["id"] for m in body["items"]] == [mid]
    status, body = api.call("get", "/models?capability=finetune&provider=ds&q=deepseek")
    assert body["count"] == 1
    status, _ = api.call("delete", f"/models/{mid}")
    assert status == 204


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "ds"}, "name"),
        ({"name": "x", "provider": "nope"}, "provider"),
        ({"name": "x", "provider": "ds", "context_length": 0}, "context_length"),
        ({"name": "x", "provider": "ds", "context_length": "long"}, "context_length"),
        ({"name": "x", "provider": "ds", "category": "magic"}, "category"),
        ({"name": "x", "provider": "ds", "capabilities": {"teleport": True}}, "capabilities.teleport"),
        ({"name": "x", "provider": "ds", "fine_tuned": True}, "fine_tuned"),
        ({"name": "x", "provider": "ds", "deploy_context_lengths": [4096, -1]}, "deploy_context_lengths"),
        ({"name": "x", "provider": "ds", "colour": "red"}, "colour"),
    ],
)
def test_invalid_model_input_is_400_naming_the_field(alice: Persona, client: Client, body: Any, field: str) -> None:
    make_provider(project=alice.project, slug="ds")
    status, answer = api_for(alice, client).call("post", "/models", body)
    assert status == 400, answer
    assert field in answer["errors"], answer
    assert LlmModel.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "openai_compatible"}, "slug"),
        ({"slug": "a b", "kind": "openai_compatible"}, "slug"),
        ({"slug": "x", "kind": "grpc"}, "kind"),
        ({"slug": "x", "kind": "openai_compatible", "base_url": "ftp://x"}, "base_url"),
        ({"slug": "x", "kind": "openai_compatible", "timeout": 0}, "timeout"),
        ({"slug": "x", "kind": "openai_compatible", "limits": {"max_concurrency": 0}}, "limits.max_concurrency"),
        ({"slug": "x", "kind": "openai_compatible", "limits": {"quota_period": "weekly"}}, "limits.quota_period"),
        ({"slug": "x", "kind": "local", "api_key": "k"}, "api_key"),
    ],
)
def test_invalid_provider_input_is_400_naming_the_field(alice: Persona, client: Client, body: Any, field: str) -> None:
    status, answer = api_for(alice, client).call("post", "/providers", body)
    assert status == 400, answer
    assert field in answer["errors"], answer
    assert Provider.objects.count() == 0


def test_duplicate_slug_is_400(alice: Persona, client: Client) -> None:
    make_provider(project=alice.project, slug="ds")
    status, answer = api_for(alice, client).call("post", "/providers", {"slug": "ds", "kind": "openai_compatible"})
    assert status == 400 and answer["errors"]


def test_malformed_json_is_400(alice: Persona, client: Client) -> None:
    api = api_for(alice, client)
    response = client.post(
        "/api/registry/providers", data="{nope", content_type="application/json", headers=api.headers
    )
    assert response.status_code == 400


def test_deployments(alice: Persona, client: Client) -> None:
    provider = make_provider(project=alice.project, slug="ds")
    model = make_model(provider=provider, name="m", context_length=4096, deploy_context_lengths=[4096, 32768])
    api = api_for(alice, client)
    status, body = api.call("post", "/deployments", {"model": model.pk, "context_length": 32768})
    assert status == 201, body
    assert body["project_id"] == alice.project.id and body["model"] == model.pk and body["state"] == "running"
    did = body["id"]
    status, body = api.call("post", "/deployments", {"model": model.pk, "context_length": 8192})
    assert status == 400 and "context_length" in body["errors"]
    status, body = api.call("patch", f"/deployments/{did}", {"state": "stopped"})
    assert status == 200 and body["state"] == "stopped"
    status, body = api.call("patch", f"/deployments/{did}", {"state": "paused"})
    assert status == 400 and "state" in body["errors"]
    status, body = api.call("get", "/deployments")
    assert body["count"] == 1 and body["items"][0]["id"] == did
    assert api.call("delete", f"/deployments/{did}")[0] == 204


def test_no_auth_is_401(db: None, client: Client) -> None:
    assert client.get("/api/registry/models").status_code == 401
    bad = client.get("/api/registry/models", HTTP_AUTHORIZATION="Bearer lmc-" + "x" * 48)
    assert bad.status_code == 401


def test_x_auth_token_header_works(alice: Persona, client: Client) -> None:
    _, raw = console_services.api_key_create(user=alice.user, project=alice.project, name="t")
    assert client.get("/api/registry/models", HTTP_X_AUTH_TOKEN=raw).status_code == 200


def test_members_read_operators_see_nothing_neither_changes(
    alice: Persona, carol: Persona, dave: Persona, client: Client
) -> None:
    provider = make_provider(project=alice.project, slug="ds")
    model = make_model(provider=provider)
    for persona in (carol, dave):
        api = api_for(persona, client)
        # An operator's role is forecast jobs: no registry reads (tests/security/test_tenancy_attacks.py).
        status, body = api.call("get", "/models")
        if persona is carol:
            assert (status, body) == (403, {"detail": "Operators may only submit and watch forecast jobs."})
        else:
            assert status == 200 and body["count"] == 1
        status, body = api.call("patch", f"/models/{model.pk}", {"enabled": False})
        assert status == 403, body
        assert api.call("post", "/providers", {"slug": "x", "kind": "openai_compatible"})[0] == 403
        assert api.call("delete", f"/providers/{provider.pk}")[0] == 403
    assert LlmModel.objects.get(pk=model.pk).enabled is True


def test_bob_cannot_see_or_touch_alice_registry(alice: Persona, bob: Persona, client: Client) -> None:
    provider = make_provider(project=alice.project, slug="ds", secrets={"api_key": "alice-secret"})
    model = make_model(provider=provider)
    deployment = make_deployment(model=model)
    api = api_for(bob, client)
    assert api.call("get", "/models")[1]["count"] == 0
    assert api.call("get", "/providers")[1]["count"] == 0
    assert api.call("get", f"/models/{model.pk}")[0] == 404
    assert api.call("patch", f"/models/{model.pk}", {"enabled": False})[0] == 404
    assert api.call("get", f"/providers/{provider.pk}")[0] == 404
    assert api.call("delete", f"/deployments/{deployment.pk}")[0] == 404
    # bob cannot deploy alice's model into his own project either.
    status, body = api.call("post", "/deployments", {"model": model.pk})
    assert status == 400 and "model" in body["errors"]


def test_session_auth_needs_csrf_for_writes(alice: Persona) -> None:
    model = make_model(provider=make_provider(project=alice.project, slug="ds"))
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice.user)
    assert client.get("/api/registry/models").status_code == 200
    no_token = client.patch(
        f"/api/registry/models/{model.pk}", data='{"enabled": false}', content_type="application/json"
    )
    assert no_token.status_code in (401, 403)
    client.get("/models/" if False else "/keys/")  # any page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    ok = client.patch(
        f"/api/registry/models/{model.pk}",
        data='{"enabled": false}',
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert ok.status_code == 200 and ok.json()["enabled"] is False


def test_openapi_schema_is_served(db: None, client: Client) -> None:
    schema = client.get("/api/registry/openapi.json").json()
    for path in ("/api/registry/providers", "/api/registry/models/{model_id}", "/api/registry/deployments"):
        assert path in schema["paths"]
    assert "patch" in schema["paths"]["/api/registry/models/{model_id}"]
