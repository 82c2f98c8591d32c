"""`/metrics` in Prometheus's text format, with the maintained `prometheus_client`.

Gateway figures (requests, errors by code, latency and time-to-first-token histograms, tokens) are
counted from each call's usage record as the gateway queues it (`chat.usage.UsageWriter.submit`):
every call passes there exactly once, on the event loop, after it has answered, so counting costs
the call a few dictionary look-ups and no I/O. Streams in flight are counted by the gateway's stream
as it opens and ends. Forecast jobs by state and the queue's depth are read from the database when
Prometheus scrapes, so they are right in every process whichever served the jobs.

Counters live in the process that counts them: with several daphne processes each exposes its own
(scrape each process's port; see docs/operations.md), as Prometheus expects of any service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# METRICS_ENABLED=false also spares the gateway the counting (read once, when the gateway imports this).
COUNTING: bool = settings.METRICS_ENABLED
PREFIX = "llmconsole"
# Seconds. Model calls run from tens of milliseconds (a cached short answer) to minutes (a long
# stream), so the buckets reach further than prometheus_client's default 10 s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Not auto-described: describing the database collector would query the database at import.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # resident memory, CPU seconds, open files of this process
PlatformCollector(registry=REGISTRY)

REQUESTS = Counter(
    f"{PREFIX}_gateway_requests",
    "Calls to the inference gateway, by dialect, mode, model and outcome (ok, error, cancelled).",
    ["dialect", "mode", "model", "status"],
    registry=REGISTRY,
)
ERRORS = Counter(
    f"{PREFIX}_gateway_errors",
    "Gateway calls that failed, by the gateway's error code and the HTTP status answered.",
    ["code", "http_status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    f"{PREFIX}_gateway_latency_seconds",
    "Whole-call latency of gateway calls (to the last byte of a stream), by dialect and streaming.",
    ["dialect", "stream"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TTFT = Histogram(
    f"{PREFIX}_gateway_ttft_seconds",
    "Time to the first streamed piece of gateway streams, by dialect.",
    ["dialect"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    f"{PREFIX}_gateway_tokens",
    "Tokens of gateway calls, by model and kind (prompt, completion).",
    ["model", "kind"],
    registry=REGISTRY,
)
STREAMS = Gauge(
    f"{PREFIX}_gateway_streams_in_flight",
    "Gateway streams open now in this process (HTTP streams and the playground's).",
    registry=REGISTRY,
)
# Children by label values, so the hot path skips prometheus_client's label validation after the
# first call of each combination. Only the event loop's thread adds to them.
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def observe_call(record: Mapping[str, Any]) -> None:
    """Count one gateway call from its usage record (chat.gateway builds it)."""
    dialect, model, status = record["dialect"], record["model_name"], record["status"]
    _child(REQUESTS, dialect, record["mode"], model, status).inc()
    if status == "error":
        _child(ERRORS, record["error_code"], str(record["http_status"])).inc()
    _child(LATENCY, dialect, "true" if record["stream"] else "false").observe(record["latency_ms"] / 1000)
    ttft = record["ttft_ms"]
    if ttft is not None:
        _child(TTFT, dialect).observe(ttft / 1000)
    if record["prompt_tokens"]:
        _child(TOKENS, model, "prompt").inc(record["prompt_tokens"])
    if record["completion_tokens"]:
        _child(TOKENS, model, "completion").inc(record["completion_tokens"])


def stream_opened() -> None:
    STREAMS.inc()


def stream_ended() -> None:
    STREAMS.dec()


class DatabaseCollector(Collector):
    """Figures read from the database at scrape time: forecast jobs by state, and the queue's depth
    (runs waiting for a worker), over every project."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db.models import Count

        from forecasts.models import ForecastJob, ForecastRun, JobState

        jobs = GaugeMetricFamily(f"{PREFIX}_forecast_jobs", "Forecast jobs by state.", labels=["state"])
        counts = dict(ForecastJob.objects.order_by().values_list("state").annotate(n=Count("pk")))
        for state in JobState.values:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        queued = ForecastRun.objects.filter(state=JobState.PENDING).count()
        yield GaugeMetricFamily(
            f"{PREFIX}_forecast_queue_depth", "Forecast runs waiting for a worker (state PENDING).", value=queued
        )


REGISTRY.register(DatabaseCollector())


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
