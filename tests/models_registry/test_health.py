"""Provider health on the provider list (issue 14): each provider's last "Test connection" and the share
of its gateway calls that failed in the last hour, from one aggregate over the usage records."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from chat.models import UsageRecord
from console.models import Project
from models_registry import selectors
from models_registry.models import Provider
from tests.conftest import Persona
from tests.models_registry.factories import make_provider


def _calls(project: Project, provider: Provider | None, statuses: list[str], *, minutes_ago: float = 5) -> None:
    at = timezone.now() - timedelta(minutes=minutes_ago)
    UsageRecord.objects.bulk_create(
        UsageRecord(
            project=project,
            provider=provider,
            dialect="openai",
            mode="chat",
            status=status,
            http_status=200 if status != "error" else 502,
            error_code="UPSTREAM_ERROR" if status == "error" else "",
            request_id=f"r-{provider.pk if provider else 0}-{i}-{minutes_ago}",
            created_at=at,
        )
        for i, status in enumerate(statuses)
    )


@pytest.fixture
def providers(alice: Persona, bob: Persona) -> dict[str, Provider]:
    busy = make_provider(project=alice.project, slug="busy")
    idle = make_provider(project=alice.project, slug="idle")
    # busy: 6 calls in the last hour, 2 failed and 1 cancelled (not a failure) -> 2 of 6, 33 %.
    _calls(alice.project, busy, ["ok", "ok", "error", "cancelled", "error", "ok"])
    # Older than the hour: not counted, however many failed.
    _calls(alice.project, busy, ["error", "error", "error"], minutes_ago=61)
    # Another project's provider: its calls are its own.
    theirs = make_provider(project=bob.project, slug="busy")
    _calls(bob.project, theirs, ["error"] * 4)
    return {"busy": busy, "idle": idle}


def test_recent_calls_per_provider_in_two_queries(
    alice: Persona, providers: dict[str, Provider], django_assert_num_queries: object
) -> None:
    with django_assert_num_queries(2):  # type: ignore[operator]
        listed = selectors.providers_with_health(project=alice.project)
    recent = {p.slug: (p.recent.calls, p.recent.errors, p.recent.error_rate) for p in listed}  # type: ignore[attr-defined]
    assert recent == {"busy": (6, 2, 2 / 6), "idle": (0, 0, None)}


def test_the_query_count_does_not_grow_with_the_list(
    alice: Persona, providers: dict[str, Provider], django_assert_num_queries: object
) -> None:
    for i in range(5):
        _calls(alice.project, make_provider(project=alice.project, slug=f"more{i}"), ["ok", "error"])
    with django_assert_num_queries(2):  # type: ignore[operator]
        assert len(selectors.providers_with_health(project=alice.project)) == 7


def test_the_page_shows_each_providers_last_check_and_error_rate(
    alice: Persona, providers: dict[str, Provider]
) -> None:
    client = Client()
    client.force_login(alice.user)
    # Test connection on "idle": its upstream (port 9) refuses connections, so the check fails.
    assert client.post(f"/models/providers/{providers['idle'].pk}/test/").status_code == 302
    idle = Provider.objects.get(pk=providers["idle"].pk)
    assert idle.last_check_ok is False and idle.last_check_message.startswith("Cannot connect")
    assert idle.last_checked_at is not None and timezone.now() - idle.last_checked_at < timedelta(minutes=1)

    html = client.get("/models/providers/").content.decode()
    assert "in the last 60 minutes" in html and "Errors (last 60 min)" in html
    rows = {
        slug: row
        for slug, row in re.findall(r'<tr data-provider-id="\d+">\s*<td><code>([^<]+)</code>(.*?)</tr>', html, re.S)
    }
    busy_rate = re.search(r'class="error-rate">([^<]*)<small class="muted">\(([^)]*)\)', rows["busy"])
    assert busy_rate is not None and busy_rate.groups() == ("33 % ", "2 of 6 calls")
    assert "never checked" in rows["busy"]
    assert "no calls" in rows["idle"]
    assert 'class="badge bad">failed</span>' in rows["idle"] and "Cannot connect" in rows["idle"]
    assert f'datetime="{idle.last_checked_at.isoformat()}"' in rows["idle"]
