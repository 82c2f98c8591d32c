"""/metrics (issue 14): the gateway's counters and histograms after known calls, equal to what the
usage records say; streams in flight; forecast jobs by state and the queue's depth read at scrape
time; who may scrape (loopback by default, a bearer token when METRICS_TOKEN is set, nobody when
METRICS_ENABLED is false); and the answer parses with prometheus_client's own text parser."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from console import metrics
from console.models import Role
from tests.chat.conftest import World, _fresh_limiter, console_url, post, upstream, usage_records, world
from tests.factories import add_member, make_user

__all__ = ["_fresh_limiter", "console_url", "upstream", "world"]  # the gateway's test world, as tests/chat's

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client: Client | None = None, **extra: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scrape as {(sample name, sorted labels): value}, parsed by prometheus_client's text parser."""
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


# --- the gateway's figures -------------------------------------------------------------------------------
def test_three_good_calls_and_two_failures_are_counted_exactly(world: World) -> None:
    name = world.model.name
    requests = "llmconsole_gateway_requests_total"
    before: dict[str, Any] = {
        "ok": sample(requests, dialect="openai", mode="chat", model=name, status="ok"),
        "error": sample(requests, dialect="openai", mode="chat", model=name, status="error"),
        "limited": sample("llmconsole_gateway_errors_total", code="UPSTREAM_RATE_LIMITED", http_status="429"),
        "failed": sample("llmconsole_gateway_errors_total", code="UPSTREAM_ERROR", http_status="502"),
        "prompt": sample("llmconsole_gateway_tokens_total", model=name, kind="prompt"),
        "completion": sample("llmconsole_gateway_tokens_total", model=name, kind="completion"),
        "latency_count": sample("llmconsole_gateway_latency_seconds_count", dialect="openai", stream="false"),
        "buckets": {
            le: sample("llmconsole_gateway_latency_seconds_bucket", dialect="openai", stream="false", le=str(le))
            for le in metrics.LATENCY_BUCKETS
        },
    }
    body = {**CHAT, "model": name}
    for _ in range(3):
        assert post(f"{world.url}/v1/chat/completions", body, world.headers()).status_code == 200
    world.faults.status = 429
    assert post(f"{world.url}/v1/chat/completions", body, world.headers()).status_code == 429
    world.faults.status = 500
    assert post(f"{world.url}/v1/chat/completions", body, world.headers()).status_code == 502
    records = usage_records(5)
    assert [r.error_code for r in records] == ["", "", "", "UPSTREAM_RATE_LIMITED", "UPSTREAM_ERROR"]

    assert sample(requests, dialect="openai", mode="chat", model=name, status="ok") - before["ok"] == 3
    assert sample(requests, dialect="openai", mode="chat", model=name, status="error") - before["error"] == 2
    limited = sample("llmconsole_gateway_errors_total", code="UPSTREAM_RATE_LIMITED", http_status="429")
    failed = sample("llmconsole_gateway_errors_total", code="UPSTREAM_ERROR", http_status="502")
    assert (limited - before["limited"], failed - before["failed"]) == (1, 1)
    prompt = sample("llmconsole_gateway_tokens_total", model=name, kind="prompt") - before["prompt"]
    completion = sample("llmconsole_gateway_tokens_total", model=name, kind="completion") - before["completion"]
    assert prompt == sum(r.prompt_tokens for r in records) and prompt > 0
    assert completion == sum(r.completion_tokens for r in records) and completion > 0
    count = sample("llmconsole_gateway_latency_seconds_count", dialect="openai", stream="false")
    assert count - before["latency_count"] == 5
    for le in metrics.LATENCY_BUCKETS:  # cumulative buckets: each holds the calls at most `le` seconds long
        got = sample("llmconsole_gateway_latency_seconds_bucket", dialect="openai", stream="false", le=str(le))
        assert got - before["buckets"][le] == sum(1 for r in records if r.latency_ms / 1000 <= le), le
    # The same figures in the scrape, through prometheus_client's parser.
    scraped = scrape()
    key = (
        "llmconsole_gateway_requests_total",
        (("dialect", "openai"), ("mode", "chat"), ("model", name), ("status", "ok")),
    )
    assert scraped[key] == sample(requests, dialect="openai", mode="chat", model=name, status="ok")


def test_a_stream_is_in_flight_from_its_first_piece_to_its_end(world: World) -> None:
    gauge = "llmconsole_gateway_streams_in_flight"
    before = sample(gauge)
    world.faults.token_delay = 0.3
    started, release = threading.Event(), threading.Event()
    seen: list[float] = []

    def stream() -> None:
        headers = world.headers()
        with httpx.stream(
            "POST",
            f"{world.url}/v1/chat/completions",
            json={**CHAT, "model": world.model.name, "stream": True},
            headers=headers,
        ) as r:
            for _ in r.iter_lines():
                if not started.is_set():
                    started.set()
                    release.wait(10)

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(15)
    seen.append(sample(gauge))
    release.set()
    thread.join(30)
    assert [r.status for r in usage_records(1, stream=True)] == ["ok"]
    assert seen == [before + 1]
    assert sample(gauge) == before
    assert sample("llmconsole_gateway_ttft_seconds_count", dialect="openai") >= 1


# --- figures read at scrape time -------------------------------------------------------------------------
def test_forecast_jobs_by_state_and_queue_depth(alice: Any, weather: list[tuple[int, int]]) -> None:
    from forecasts import services
    from forecasts.config import parse_task
    from forecasts.models import ForecastJob, JobState
    from models_registry.models import Deployment
    from tests.forecasts.test_task_api import BODY

    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    jobs = [
        services.job_submit(project=alice.project, deployment=deployment, user=alice.user, spec=parse_task(BODY))
        for _ in range(3)
    ]
    services.job_cancel(job=jobs[0], by=alice.user)
    ForecastJob.objects.filter(pk=jobs[1].pk).update(state=JobState.RUNNING)
    scraped = scrape()
    by_state = {state: scraped[("llmconsole_forecast_jobs", (("state", state),))] for state in JobState.values}
    assert by_state == {"PENDING": 1, "RUNNING": 1, "SUCCEEDED": 0, "FAILED": 0, "CANCELLED": 1}
    # Each job has two runs (two start times); the cancelled job's runs left the queue.
    assert scraped[("llmconsole_forecast_queue_depth", ())] == 4


# --- who may scrape --------------------------------------------------------------------------------------
def test_loopback_scrapes_without_a_token_and_nobody_else_does(db: None) -> None:
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    for address in ("203.0.113.7", "10.0.0.5", "192.168.1.2"):
        refused = Client(REMOTE_ADDR=address).get("/metrics")
        assert refused.status_code == 403 and b"llmconsole" not in refused.content


def test_a_forwarded_loopback_address_from_an_untrusted_peer_does_not_pass(db: None) -> None:
    """X-Forwarded-For is believed only from TRUSTED_PROXIES (console.lib.asgi.TrustedProxies)."""
    from console.lib.asgi import TrustedProxies

    app = TrustedProxies(lambda *a: None, networks=[])  # type: ignore[arg-type]
    scope = {"type": "http", "client": ("203.0.113.7", 1), "headers": [(b"x-forwarded-for", b"127.0.0.1")]}
    resolved = app.resolve(scope)
    assert resolved["client"] == ("203.0.113.7", 1) and resolved["headers"] == []
    assert metrics.is_loopback("203.0.113.7") is False


def test_with_a_token_every_scrape_needs_it(db: None, settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-secret"
    for client in (Client(REMOTE_ADDR="127.0.0.1"), Client(REMOTE_ADDR="203.0.113.7")):
        missing = client.get("/metrics")
        assert missing.status_code == 401 and missing["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-secret").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200


def test_turned_off_it_is_not_there(db: None, settings: Any) -> None:
    settings.METRICS_ENABLED = False
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 404


def test_signed_in_admins_from_elsewhere_get_nothing_either(alice: Any) -> None:
    """A console session is not a scrape credential: the figures cover every project."""
    client = Client(REMOTE_ADDR="203.0.113.7")
    client.force_login(alice.user)
    assert client.get("/metrics").status_code == 403
    other = make_user("erin")
    add_member(project=alice.project, user=other, role=Role.ADMIN)
    client.force_login(other)
    assert client.get("/metrics").status_code == 403


def test_the_scrape_parses_and_names_every_family(db: None) -> None:
    families = {f.name for f in text_string_to_metric_families(Client().get("/metrics").content.decode())}
    assert {
        "llmconsole_gateway_requests",
        "llmconsole_gateway_errors",
        "llmconsole_gateway_latency_seconds",
        "llmconsole_gateway_ttft_seconds",
        "llmconsole_gateway_tokens",
        "llmconsole_gateway_streams_in_flight",
        "llmconsole_forecast_jobs",
        "llmconsole_forecast_queue_depth",
        "process_resident_memory_bytes",
    } <= families
