"""Errors as the seeds spell them: unserved paths, bodies, auth, required parameters, deployments, quota."""

from __future__ import annotations

import httpx
import pytest
from pytest_django.fixtures import Settings

from chat.errors import Failure
from models_registry.models import Deployment
from tests.chat.conftest import World, post

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
NO_SUCH_API = "The API does not exist or has not been published in the environment."


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/deployments/abc/chat/completions"),  # project_id missing, the manual's own example
        ("POST", "/v1/p1/deployments/d1/chat/complete"),
        ("GET", "/v3/users"),
        ("POST", "/v1/p1/anything"),
        ("GET", "/v1"),
    ],
)
def test_unserved_pangu_paths_answer_apig_0101(world: World, method: str, path: str) -> None:
    response = httpx.request(method, world.url + path, headers=world.headers())
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error_code"] == "APIG.0101" and body["error_msg"].startswith(NO_SUCH_API)
    assert "project_id" in body["error_msg"] and "method" in body["error_msg"]


def test_wrong_method_on_a_pangu_path_answers_apig_0101(world: World) -> None:
    response = httpx.get(world.pangu_path(), headers=world.headers())
    assert response.status_code == 404 and response.json()["error_code"] == "APIG.0101"


def test_unserved_cloudbase_path_answers_a_listed_code(world: World) -> None:
    response = httpx.post(f"{world.url}/v1/ai/sim/v1/embeddings", json={}, headers=world.headers())
    assert response.status_code == 404
    assert response.json()["code"] == "AI_MODEL_NOT_FOUND" and response.json()["requestId"]


def test_unserved_openai_path_answers_openai_shape(world: World) -> None:
    response = httpx.post(f"{world.url}/v1/chat/complete", json={}, headers=world.headers())
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = httpx.delete(f"{world.url}/v1/models", headers=world.headers())
    assert response.status_code == 404 and "GET" in response.json()["error"]["message"]


def test_django_paths_are_still_django(world: World) -> None:
    assert httpx.get(f"{world.url}/healthz").status_code == 200
    response = httpx.get(f"{world.url}/no-such-page/")
    assert response.status_code == 404 and "json" not in response.headers["content-type"]


@pytest.mark.parametrize("dialect", ["openai", "cloudbase", "pangu"])
def test_body_over_the_limit_is_413(world: World, dialect: str, settings: Settings) -> None:
    settings.GATEWAY_MAX_BODY_BYTES = 100
    body = {**CHAT, "model": "sim-chat", "pad": "x" * 200}
    response = post(_url(world, dialect), body, world.headers())
    _assert(response, dialect, Failure.BODY_TOO_LARGE)


@pytest.mark.parametrize("dialect", ["openai", "cloudbase", "pangu"])
def test_non_json_content_type_is_415(world: World, dialect: str) -> None:
    headers = {**world.headers(), "Content-Type": "text/plain"}
    response = httpx.post(_url(world, dialect), content=b'{"messages": []}', headers=headers)
    _assert(response, dialect, Failure.UNSUPPORTED_MEDIA_TYPE)


def test_json_suffix_and_charset_are_json(world: World) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        headers = {**world.headers(), "Content-Type": content_type}
        response = httpx.post(world.pangu_path(), json=CHAT, headers=headers, timeout=15)
        assert response.status_code == 200, response.text


def _url(world: World, dialect: str) -> str:
    if dialect == "openai":
        return f"{world.url}/v1/chat/completions"
    if dialect == "cloudbase":
        return f"{world.url}/v1/ai/sim/v1/chat/completions"
    return world.pangu_path()


def _assert(response: httpx.Response, dialect: str, failure: Failure) -> None:
    spelling = failure.value
    assert response.status_code == spelling.status, response.text
    body = response.json()
    if dialect == "openai":
        assert body["error"]["code"] == spelling.openai_code
    elif dialect == "cloudbase":
        assert body["code"] == spelling.cloudbase
    else:
        assert body["error_code"] == spelling.pangu


# --- auth: APIG.0301 with the manual's message, whatever the token looks like -------------------------
IAM_MESSAGE = "Incorrect IAM authentication information: "


def _pangu_auth(world: World, headers: dict[str, str]) -> dict[str, str]:
    response = post(world.pangu_path(), CHAT, headers)
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error_code"] == "APIG.0301", body
    return body


@pytest.mark.parametrize(
    "token",
    [
        "MIINRwYJKoZIhvcNAQcCoIINODCCDTQCAQExDTALBglghkgBZQMEAgEwgguVBgkqhkiG9w0BBwGgg",  # the manual's example
        "MIIlmc-unknown",
        "lmc-" + "x" * 48,
        "not a token at all",
    ],
)
def test_unknown_tokens_are_apig_0301_decrypt_token_fail(world: World, token: str) -> None:
    body = _pangu_auth(world, {"X-Auth-Token": token})
    assert body["error_msg"].startswith(IAM_MESSAGE + "decrypt token fail")


def test_missing_token_is_apig_0301_not_found(world: World) -> None:
    body = _pangu_auth(world, {})
    assert body["error_msg"].startswith(IAM_MESSAGE + "x-auth-token not found")


def test_expired_iam_token_says_when(world: World) -> None:
    from datetime import UTC, datetime, timedelta

    from console import callers
    from console.lib import crypto
    from console.models import IamToken

    token = "MIINRw" + "e" * 40  # an IAM token need not carry the console's prefix
    expired = datetime(2023, 6, 29, 2, 16, 41, 581000, tzinfo=UTC)
    IamToken.objects.create(
        token_hash=crypto.sha256_hex(token),
        user=world.alice.user,
        project=world.alice.project,
        expires_at=expired,
        issued_at=expired - timedelta(hours=24),
    )
    callers._token_cache.clear()
    body = _pangu_auth(world, {"X-Auth-Token": token})
    assert body["error_msg"] == IAM_MESSAGE + "token expires, expires_at:2023-06-29T02:16:41.581000Z"
    IamToken.objects.update(expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert post(world.pangu_path(), CHAT, {"X-Auth-Token": token}).status_code == 200


def test_failed_signature_is_apig_0301(world: World) -> None:
    headers = {
        "Authorization": "SDK-HMAC-SHA256 Access=NOSUCHKEY, SignedHeaders=host;x-sdk-date, Signature=00",
        "X-Sdk-Date": "20260101T000000Z",
    }
    body = _pangu_auth(world, headers)
    assert body["error_msg"].startswith(IAM_MESSAGE + "verify aksk signature fail")


@pytest.mark.parametrize("dialect", ["openai", "cloudbase"])
def test_other_dialects_keep_their_401s(world: World, dialect: str) -> None:
    for headers, failure in (({}, Failure.AUTH_MISSING), ({"X-Auth-Token": "MIINRw-x"}, Failure.AUTH_FAILED)):
        response = post(_url(world, dialect), {**CHAT, "model": "sim-chat"}, headers)
        _assert(response, dialect, failure)
        assert IAM_MESSAGE not in response.text


# --- required parameters, deleted and stopped deployments --------------------------------------------
@pytest.mark.parametrize("dialect", ["openai", "cloudbase", "pangu"])
@pytest.mark.parametrize("mode", ["chat", "text"])
def test_missing_messages_or_prompt_is_param_required(world: World, dialect: str, mode: str) -> None:
    if dialect == "pangu":
        url = world.pangu_path("chat/completions" if mode == "chat" else "text/completions", _deployment(world, mode))
    else:
        url = (
            _url(world, dialect) if mode == "chat" else _url(world, dialect).replace("chat/completions", "completions")
        )
    body = {"model": "sim-chat" if mode == "chat" else "sim-text", "temperature": 0.5}
    response = post(url, body, world.headers())
    _assert(response, dialect, Failure.PARAM_REQUIRED)
    assert ("messages" if mode == "chat" else "prompt") in response.text
    if dialect == "pangu":
        assert response.json()["error_code"] == "PANGU.3278"


def test_empty_messages_are_still_invalid_not_missing(world: World) -> None:
    response = post(world.pangu_path(), {"messages": []}, world.headers())
    assert response.json()["error_code"] == "PANGU.0010"


def _deployment(world: World, mode: str) -> Deployment:
    return world.deployment if mode == "chat" else world.text_deployment


def test_deleted_and_stopped_deployments_are_told_apart(world: World) -> None:
    from models_registry.models import DeploymentState

    world.text_deployment.state = DeploymentState.STOPPED
    world.text_deployment.save()
    stopped = post(world.pangu_path("text/completions", world.text_deployment), {"prompt": "hi"}, world.headers())
    assert stopped.status_code == 403 and stopped.json()["error_code"] == "PANGU.3259"
    assert stopped.json()["error_msg"].startswith("NLP service status is not running or have been deleted")
    assert "stopped" in stopped.json()["error_msg"]
    url = world.pangu_path()
    world.deployment.delete()
    deleted = post(url, CHAT, world.headers())
    assert deleted.status_code == 404 and deleted.json()["error_code"] == "PANGU.3254"
    assert deleted.json()["error_msg"].startswith("The requested resource does not exist")
    assert "deleted" in deleted.json()["error_msg"] and "stopped" not in deleted.json()["error_msg"]


# --- quota, and CloudBase's eight codes --------------------------------------------------------------
# Copied by hand from the seed's table (cloudbase-ai-model-access), not from chat/errors.py.
CLOUDBASE_CODES = {
    "AI_MODEL_CONFIG_MISSING",
    "AI_MODEL_PARAM_INVALID",
    "AI_MODEL_DISABLED",
    "AI_MODEL_NOT_SUPPORTED",
    "AI_MODEL_PARAM_REQUIRED",
    "AI_MODEL_NOT_FOUND",
    "EXCEED_CONCURRENT_REQUEST_LIMIT",
    "EXCEED_TOKEN_QUOTA_LIMIT",
}


@pytest.mark.parametrize("failure", list(Failure), ids=lambda f: f.name)
def test_cloudbase_sees_only_its_eight_codes(failure: Failure) -> None:
    assert failure.value.cloudbase in CLOUDBASE_CODES


def test_used_up_quota_is_not_throttling(world: World) -> None:
    world.provider.token_quota = 1
    world.provider.save()
    pangu = post(world.pangu_path(), CHAT, world.headers())
    assert pangu.status_code == 429 and "Retry-After" not in pangu.headers
    body = pangu.json()
    assert body["error_code"] == "PANGU.3307" and "quota" in body["error_msg"]
    assert body["error_code"] not in {"APIG.0308", "PANGU.3267"}
    cloudbase = post(_url(world, "cloudbase"), {**CHAT, "model": "sim-chat"}, world.headers())
    assert cloudbase.json()["code"] == "EXCEED_TOKEN_QUOTA_LIMIT" and "Retry-After" not in cloudbase.headers
    openai = post(_url(world, "openai"), {**CHAT, "model": "sim-chat"}, world.headers())
    assert openai.json()["error"]["code"] == "insufficient_quota"


# --- GET /v3/projects?name= -----------------------------------------------------------------------------
def test_projects_filter_by_exact_name(world: World) -> None:
    from tests.factories import make_project

    make_project(name="alice-project-2", owner=world.alice.user)
    url = f"{world.url}/v3/projects"
    everything = httpx.get(url, headers=world.headers()).json()["projects"]
    assert {p["name"] for p in everything} >= {"alice-project", "alice-project-2"}
    (found,) = httpx.get(url, params={"name": "alice-project"}, headers=world.headers()).json()["projects"]
    assert found["id"] == world.alice.project.id and found["name"] == "alice-project"
    assert httpx.get(url, params={"name": "alice"}, headers=world.headers()).json()["projects"] == []
