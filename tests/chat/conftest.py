"""A real ASGI server in a thread of the test process (so tests share its database), a real
OpenAI-format upstream on loopback, and a project wired to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from chat import limits
from chat.models import UsageRecord
from console import services as console_services
from console.models import Role
from models_registry import services as registry_services
from models_registry.models import Deployment, LlmModel, Provider
from tests.conftest import Persona, serve_in_thread
from tests.factories import add_member, make_project, make_user
from tests.upstreams.base import Faults, SimulatorServer
from tests.upstreams.openai import serve

UPSTREAM_KEY = "upstream-secret-key"


@pytest.fixture(scope="session")
def console_url() -> Iterator[str]:
    from console.asgi import application

    with serve_in_thread(application) as url:
        yield url


@pytest.fixture
def upstream() -> Iterator[SimulatorServer]:
    server = serve(api_key=UPSTREAM_KEY)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_limiter() -> None:
    # Limits are per process; each test starts with no slots or buckets held.
    limits._limiter = None


@dataclass
class World:
    alice: Persona
    key: str
    provider: Provider
    model: LlmModel
    text_model: LlmModel
    deployment: Deployment
    text_deployment: Deployment
    url: str
    upstream: SimulatorServer

    @property
    def faults(self) -> Faults:
        return self.upstream.state.faults

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def pangu_path(self, kind: str = "chat/completions", deployment: Deployment | None = None) -> str:
        d = deployment or self.deployment
        return f"{self.url}/v1/{self.alice.project.id}/deployments/{d.id}/{kind}"


@pytest.fixture
def world(transactional_db: None, console_url: str, upstream: SimulatorServer) -> World:
    user = make_user("alice")
    project = make_project(name="alice-project", owner=user)
    alice = Persona(user=user, project=project)
    _, key = console_services.api_key_create(user=user, project=project, name="gateway-tests")
    provider = registry_services.provider_create(
        project=project,
        by=None,
        fields={
            "slug": "sim",
            "name": "Simulator",
            "kind": "openai_compatible",
            "base_url": upstream.url + "/v1",
            "timeout_seconds": 5,
        },
        secrets={"api_key": UPSTREAM_KEY},
    )
    model = registry_services.model_create(
        provider=provider, by=None, fields={"name": "sim-chat", "context_length": 8192}
    )
    text_model = registry_services.model_create(
        provider=provider, by=None, fields={"name": "sim-text", "context_length": 2048}
    )
    deployment = registry_services.deployment_create(project=project, model=model, by=None)
    text_deployment = registry_services.deployment_create(project=project, model=text_model, by=None)
    return World(alice, key, provider, model, text_model, deployment, text_deployment, console_url, upstream)


def operator_key(world: World) -> str:
    carol = make_user("carol")
    add_member(project=world.alice.project, user=carol, role=Role.OPERATOR)
    return console_services.api_key_create(user=carol, project=world.alice.project, name="op")[1]


def post(url: str, body: object, headers: dict[str, str], timeout: float = 15) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers, timeout=timeout)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def usage_records(count: int, timeout: float = 3.0, **filters: object) -> list[UsageRecord]:
    """The usage records once `count` exist: the gateway answers first and records just after."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(UsageRecord.objects.filter(**filters).order_by("created_at"))
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)
