"""A provider secret never leaves the server: not in answers, not in logs, not in plaintext at rest."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client
from pytest_django.fixtures import Settings

from console import services as console_services
from models_registry import services
from models_registry.models import Provider
from tests.conftest import Persona
from tests.models_registry.factories import make_provider
from tests.upstreams.base import SimulatorServer
from tests.upstreams.openai import serve

SECRET = "sk-the-one-secret-4f9c2e7a"
IAM_PASSWORD = "iam-password-8d1b"


@pytest.fixture
def upstream() -> Iterator[SimulatorServer]:
    server = serve(api_key=SECRET)
    yield server
    server.stop()


def test_secret_absent_from_api_logs_and_raw_row(
    alice: Persona, client: Client, caplog: pytest.LogCaptureFixture, settings: Settings
) -> None:
    settings.DEBUG = True  # the noisiest logging the console has, SQL included
    _, raw = console_services.api_key_create(user=alice.user, project=alice.project, name="t")
    auth = {"Authorization": f"Bearer {raw}"}
    caplog.set_level(logging.DEBUG)
    answers = []
    response = client.post(
        "/api/registry/providers",
        data=json.dumps(
            {"slug": "ds", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "api_key": SECRET}
        ),
        content_type="application/json",
        headers=auth,
    )
    answers.append(response.content.decode())
    pid = response.json()["id"]
    response = client.post(
        "/api/registry/providers",
        data=json.dumps(
            {
                "slug": "pg",
                "kind": "pangu",
                "base_url": "https://pangu.example",
                "pangu": {"iam_password": IAM_PASSWORD, "project_id": "x"},
            }
        ),
        content_type="application/json",
        headers=auth,
    )
    answers.append(response.content.decode())
    for path in ("/api/registry/providers", f"/api/registry/providers/{pid}", "/api/registry/openapi.json"):
        answers.append(client.get(path, headers=auth).content.decode())
    answers.append(
        client.patch(
            f"/api/registry/providers/{pid}",
            data=json.dumps({"api_key": SECRET + "2"}),
            content_type="application/json",
            headers=auth,
        ).content.decode()
    )
    for text in answers:
        assert SECRET not in text and IAM_PASSWORD not in text
    for record in caplog.records:
        line = record.getMessage() + " " + str(record.args)
        assert SECRET not in line and IAM_PASSWORD not in line
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM models_registry_provider")
        rows = " ".join(str(v) for row in cursor.fetchall() for v in row)
        cursor.execute("SELECT * FROM console_auditevent")
        rows += " ".join(str(v) for row in cursor.fetchall() for v in row)
    assert SECRET not in rows and IAM_PASSWORD not in rows
    assert Provider.objects.get(pk=pid).secrets()["api_key"] == SECRET + "2"


def test_test_connection_reports_latency(alice: Persona, upstream: SimulatorServer) -> None:
    provider = make_provider(project=alice.project, base_url=upstream.url + "/v1", secrets={"api_key": SECRET})
    result = asyncio.run(services.provider_test_connection(provider=provider))
    assert result.ok and result.latency_ms is not None and "2 model" in result.message
    sent = upstream.state.requests[-1]
    assert sent.path == "/v1/models" and sent.headers["Authorization"] == f"Bearer {SECRET}"


def test_test_connection_clear_errors(alice: Persona, upstream: SimulatorServer) -> None:
    wrong = make_provider(
        project=alice.project, slug="wrong", base_url=upstream.url + "/v1", secrets={"api_key": "nope"}
    )
    result = asyncio.run(services.provider_test_connection(provider=wrong))
    assert not result.ok and "rejected the credentials" in result.message and SECRET not in result.message
    down = make_provider(project=alice.project, slug="down", base_url="http://127.0.0.1:9/v1", secrets={"api_key": "k"})
    result = asyncio.run(services.provider_test_connection(provider=down))
    assert not result.ok and result.message.startswith("Cannot connect")
    upstream.state.faults.first_token_delay = 2
    slow = make_provider(
        project=alice.project,
        slug="slow",
        base_url=upstream.url + "/v1",
        secrets={"api_key": SECRET},
        timeout_seconds=0.5,
    )
    result = asyncio.run(services.provider_test_connection(provider=slow))
    assert not result.ok and result.message == "No answer within 0.5 s."
    upstream.state.faults.first_token_delay = 0
    upstream.state.faults.status = 503
    result = asyncio.run(services.provider_test_connection(provider=slow))
    assert not result.ok and "503" in result.message
