"""The registry API takes every credential of the shared caller authentication: API keys, IAM tokens
(Bearer or X-Auth-Token), AK/SK signatures, and the session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.test import Client

from console import services as console_services
from console.iam import iam_token_issue
from console.lib import aksk
from console.models import IamToken
from tests.conftest import Persona
from tests.factories import PASSWORD
from tests.models_registry.factories import make_model, make_provider

MODELS = "/api/registry/models"


def _iam_token(persona: Persona) -> str:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": persona.user.username, "password": PASSWORD}},
            },
            "scope": {"project": {"id": persona.project.pk}},
        }
    }
    return iam_token_issue(body=body).token


def test_iam_token_reads_the_registry(alice: Persona, bob: Persona, client: Client) -> None:
    make_model(provider=make_provider(project=alice.project, slug="ds"))
    token = _iam_token(alice)
    for headers in ({"X-Auth-Token": token}, {"Authorization": f"Bearer {token}"}):
        answer = client.get(MODELS, headers=headers)
        assert answer.status_code == 200, answer.content
        assert answer.json()["count"] == 1
    # bob's token sees bob's project only.
    assert client.get(MODELS, HTTP_X_AUTH_TOKEN=_iam_token(bob)).json()["count"] == 0


def test_expired_or_unknown_iam_token_is_401(alice: Persona, client: Client) -> None:
    token = _iam_token(alice)
    IamToken.objects.update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    expired = client.get(MODELS, HTTP_X_AUTH_TOKEN=token)
    assert expired.status_code == 401
    assert expired.json()["detail"].startswith("token expires, expires_at:")
    assert client.get(MODELS, HTTP_X_AUTH_TOKEN="MIIlmc" + "x" * 64).status_code == 401


def test_aksk_signature_reads_the_registry_and_a_bad_one_is_401(alice: Persona, client: Client) -> None:
    make_model(provider=make_provider(project=alice.project, slug="ds"))
    key, secret = console_services.access_key_create(user=alice.user, project=alice.project, name="sdk")
    signed = aksk.sign(
        access_key=key.access_key_id,
        secret_key=secret,
        method="GET",
        path=MODELS,
        query="",
        headers={"host": "testserver"},
        body=b"",
    )
    # Django's test client sends no Host header of its own; every real client does.
    headers = {"Host": "testserver", "X-Sdk-Date": signed["X-Sdk-Date"], "Authorization": signed["Authorization"]}
    answer = client.get(MODELS, headers=headers)
    assert answer.status_code == 200, answer.content
    assert answer.json()["count"] == 1
    forged = signed["Authorization"][:-4] + ("0000" if not signed["Authorization"].endswith("0000") else "1111")
    assert client.get(MODELS, headers={**headers, "Authorization": forged}).status_code == 401
