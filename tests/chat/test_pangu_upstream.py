"""The whole chain to a Pangu upstream: any dialect in, the Pangu wire format out, with IAM login."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from models_registry import services as registry_services
from tests.chat.conftest import World, post
from tests.upstreams.base import SimulatorServer
from tests.upstreams.pangu import PanguState, serve

UPSTREAM_DEPLOYMENT = "6f1c0b7e-3a2d-4a8e-9b1f-2c3d4e5f6a7b"


@pytest.fixture
def pangu_upstream() -> Iterator[SimulatorServer]:
    server = serve(iam_user="svc", iam_password="svc-password")
    yield server
    server.stop()


def test_openai_client_reaches_a_pangu_model(world: World, pangu_upstream: SimulatorServer) -> None:
    provider = registry_services.provider_create(
        project=world.alice.project,
        by=None,
        fields={"slug": "pangu-up", "name": "Pangu", "kind": "pangu", "base_url": pangu_upstream.url},
        config={
            "iam_endpoint": pangu_upstream.url,
            "iam_username": "svc",
            "iam_domain": "d",
            "iam_project": "cn-southwest-2",
            "project_id": "p" * 32,
            "deployment_id": UPSTREAM_DEPLOYMENT,
        },
        secrets={"iam_password": "svc-password"},
    )
    registry_services.model_create(provider=provider, by=None, fields={"name": "pangu-n2", "context_length": 4096})
    client = openai.OpenAI(base_url=world.url + "/v1/ai/pangu-up/v1", api_key=world.key, max_retries=0)
    for _ in range(3):
        answer = client.chat.completions.create(model="pangu-n2", messages=[{"role": "user", "content": "你好"}])
        assert answer.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="pangu-n2", messages=[{"role": "user", "content": "你好"}], stream=True
        )
        if c.choices
    )
    assert streamed == answer.choices[0].message.content
    sent = [r for r in pangu_upstream.state.requests if "/deployments/" in r.path]
    assert all(r.path == f"/v1/{'p' * 32}/deployments/{UPSTREAM_DEPLOYMENT}/chat/completions" for r in sent)
    assert isinstance(pangu_upstream.state, PanguState)
    assert pangu_upstream.state.tokens_issued == 1  # one IAM login, reused
    assert all(r.headers.get("X-Auth-Token") for r in sent)
    # A 500 from Pangu reaches the caller as the caller's dialect error.
    pangu_upstream.state.faults.status = 500
    response = post(
        f"{world.url}/v1/ai/pangu-up/v1/chat/completions",
        {"model": "pangu-n2", "messages": [{"role": "user", "content": "x"}]},
        world.headers(),
    )
    assert response.status_code == 502 and response.json()["code"] == "AI_MODEL_DISABLED"
