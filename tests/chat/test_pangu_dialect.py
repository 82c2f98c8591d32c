"""Pangu framing, IAM tokens and AK/SK signatures, byte for byte."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import httpx

from console import callers
from console import services as console_services
from console.lib import aksk, crypto
from console.models import IamToken
from tests.chat.conftest import World, post
from tests.factories import PASSWORD


def test_unary_shape(world: World) -> None:
    response = post(world.pangu_path(), {"messages": [{"content": "你好"}], "max_tokens": 3}, world.headers())
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"id", "created", "choices", "usage"}
    assert body["choices"][0]["message"]["content"] == "Hello from the"
    assert set(body["usage"]) == {"completion_tokens", "prompt_tokens", "total_tokens"}
    text = post(world.pangu_path("text/completions", world.text_deployment), {"prompt": "Once"}, world.headers())
    assert text.json()["choices"][0]["text"] == world.upstream.state.reply


def test_stream_framing_string_true(world: World) -> None:
    with httpx.stream(
        "POST",
        world.pangu_path(),
        json={"messages": [{"content": "hi"}], "stream": "true"},
        headers=world.headers(),
        timeout=15,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Accel-Buffering"] == "no"
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data:[DONE]"
    for event in events[:-1]:
        assert event.startswith("data:{")  # no space after the colon
        chunk = json.loads(event[len("data:") :])
        assert set(chunk) == {"id", "created", "choices"} and "content" in chunk["choices"][0]["message"]
    assert "".join(json.loads(e[5:])["choices"][0]["message"]["content"] for e in events[:-1]) == (
        world.upstream.state.reply
    )


def test_roleless_messages_alternate_and_system_persona(world: World) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"content": "a"},
            {"content": "b"},
            {"content": "c"},
        ]
    }
    assert post(world.pangu_path(), body, world.headers()).status_code == 200
    sent = world.upstream.state.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_iam_token_flow(world: World) -> None:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "alice", "password": PASSWORD, "domain": {"name": "alice"}}},
            },
            "scope": {"project": {"id": world.alice.project.id}},
        }
    }
    issued = httpx.post(f"{world.url}/v3/auth/tokens", json=body)
    assert issued.status_code == 201
    token = issued.headers["X-Subject-Token"]
    expires = datetime.fromisoformat(issued.json()["token"]["expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)
    assert not IamToken.objects.filter(token_hash=token).exists()  # stored hashed, not as issued
    assert IamToken.objects.filter(token_hash=crypto.sha256_hex(token)).exists()
    answer = post(world.pangu_path(), {"messages": [{"content": "hi"}]}, {"X-Auth-Token": token})
    assert answer.status_code == 200, answer.text
    projects = httpx.get(f"{world.url}/v3/projects", headers={"X-Auth-Token": token}).json()
    assert set(projects) == {"projects", "links"}
    project = projects["projects"][0]
    assert set(project) == {"domain_id", "is_domain", "parent_id", "name", "description", "links", "id", "enabled"}
    assert project["id"] == world.alice.project.id and project["enabled"] is True
    IamToken.objects.update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    # The gateway remembers a verified token until its expiry at most; the expiry moved by hand here.
    callers._token_cache.clear()
    expired = post(world.pangu_path(), {"messages": [{"content": "hi"}]}, {"X-Auth-Token": token})
    assert expired.status_code == 401 and expired.json()["error_code"] == "APIG.0301"
    wrong = httpx.post(
        f"{world.url}/v3/auth/tokens",
        json={
            **body,
            "auth": {
                **body["auth"],
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"name": "alice", "password": "nope", "domain": {"name": "x"}}},
                },
            },
        },
    )
    assert wrong.status_code == 401 and wrong.json()["error_code"] == "APIG.0301"


def test_iam_token_by_ak_sk(world: World) -> None:
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="sdk")
    body: dict[str, Any] = {
        "auth": {
            "identity": {
                "methods": ["hw_ak_sk"],
                "hw_ak_sk": {"access": {"key": key.access_key_id}, "secret": {"key": secret}},
            }
        }
    }
    assert httpx.post(f"{world.url}/v3/auth/tokens", json=body).status_code == 201
    body["auth"]["identity"]["hw_ak_sk"]["secret"]["key"] = "wrong"
    assert httpx.post(f"{world.url}/v3/auth/tokens", json=body).status_code == 401


def _signed(world: World, *, secret: str, access: str, now: datetime | None = None) -> httpx.Response:
    url = world.pangu_path()
    payload = json.dumps({"messages": [{"content": "hi"}]}).encode()
    parsed = urlparse(url)
    headers = {"Host": parsed.netloc, "Content-Type": "application/json"}
    headers.update(
        aksk.sign(
            access_key=access,
            secret_key=secret,
            method="POST",
            path=parsed.path,
            query="",
            headers=headers,
            body=payload,
            now=now,
        )
    )
    return httpx.post(url, content=payload, headers=headers)


def test_ak_sk_signature(world: World) -> None:
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="sdk")
    ok = _signed(world, secret=secret, access=key.access_key_id)
    assert ok.status_code == 200, ok.text
    wrong = _signed(world, secret="x" * 40, access=key.access_key_id)
    assert wrong.status_code == 401 and wrong.json()["error_code"] == "APIG.0301"
    stale = _signed(world, secret=secret, access=key.access_key_id, now=datetime.now(UTC) - timedelta(minutes=16))
    assert stale.status_code == 401 and "15 minutes" in stale.json()["error_msg"]
    unknown = _signed(world, secret=secret, access="AKNOTKNOWN0000000000")
    assert unknown.status_code == 401 and unknown.json()["error_code"] == "APIG.0301"
    # Tampering with the body after signing breaks the signature.
    url = world.pangu_path()
    parsed = urlparse(url)
    headers = {"Host": parsed.netloc, "Content-Type": "application/json"}
    headers.update(
        aksk.sign(
            access_key=key.access_key_id,
            secret_key=secret,
            method="POST",
            path=parsed.path,
            query="",
            headers=headers,
            body=b'{"messages": [{"content": "hi"}]}',
        )
    )
    tampered = httpx.post(url, content=b'{"messages": [{"content": "bye"}]}', headers=headers)
    assert tampered.status_code == 401


def test_canonical_request_matches_the_spec() -> None:
    """The documented construction, recomputed by hand for one request."""
    import hashlib
    import hmac

    headers = {"Host": "pangu.example", "X-Sdk-Date": "20260101T000000Z"}
    text = aksk.string_to_sign(
        method="POST",
        path="/v1/p/deployments/d/chat/completions",
        query="b=2&a=1",
        headers=headers,
        signed_headers=["host", "x-sdk-date"],
        body=b"{}",
        date="20260101T000000Z",
    )
    canonical = "\n".join(
        [
            "POST",
            "/v1/p/deployments/d/chat/completions/",
            "a=1&b=2",
            "host:pangu.example\nx-sdk-date:20260101T000000Z\n",
            "host;x-sdk-date",
            hashlib.sha256(b"{}").hexdigest(),
        ]
    )
    assert text == f"SDK-HMAC-SHA256\n20260101T000000Z\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    assert aksk.signature("sk", text) == hmac.new(b"sk", text.encode(), hashlib.sha256).hexdigest()
