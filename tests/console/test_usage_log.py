"""The usage log (issue 14): a project's gateway calls, filterable and paginated; every call for the
project's admins, a member's own calls for a member, nothing for operators or other projects."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from chat.models import UsageRecord
from console import services as console_services
from console.lib import paging
from console.lib.days import day_start
from tests.conftest import Persona
from tests.factories import add_member, make_user


def _base() -> datetime:
    """Now, or ten minutes into today if it is earlier: the calls a few minutes before it fall on today
    whenever the test runs (at 00:02 they would be yesterday's)."""
    return max(timezone.now(), day_start(timezone.localdate()) + timedelta(minutes=10))


def _record(persona: Persona, n: int, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "project": persona.project,
        "user": persona.user,
        "model_name": "gpt-a",
        "dialect": "openai",
        "mode": "chat",
        "status": "ok",
        "request_id": f"req-{n:04d}",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "latency_ms": 120,
        "created_at": _base() - timedelta(minutes=n),
        **fields,
    }
    return UsageRecord.objects.create(**values)


def _shown(client: Client, query: str = "") -> list[str]:
    response = client.get(f"/usage/{query}")
    assert response.status_code == 200
    return re.findall(r"<code>(req-\d{4})</code>", response.content.decode())


@pytest.fixture
def calls(alice: Persona, bob: Persona) -> dict[str, Any]:
    member = make_user("mia")
    add_member(project=alice.project, user=member)
    mia = Persona(user=member, project=alice.project)
    key, _ = console_services.api_key_create(user=alice.user, project=alice.project, name="ci-bot")
    _record(alice, 1)
    _record(alice, 2, model_name="gpt-b", status="error", error_code="RATE_LIMITED", http_status=429)
    _record(alice, 3, dialect="pangu", api_key=key)
    _record(mia, 4, dialect="playground", stream=True, ttft_ms=33)
    _record(alice, 5, created_at=_base() - timedelta(days=3))
    _record(bob, 6)  # another project's
    return {"mia": mia, "key": key}


def test_an_admin_sees_every_call_of_the_project_newest_first(alice: Persona, calls: Any, client: Client) -> None:
    client.force_login(alice.user)
    assert _shown(client) == ["req-0001", "req-0002", "req-0003", "req-0004", "req-0005"]
    html = client.get("/usage/").content.decode()
    assert "RATE_LIMITED" in html and "HTTP 429" in html and "ci-bot" in html and "33 ms" in html
    assert 'href="/usage/"' in html  # in the navigation


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?model=gpt-b", ["req-0002"]),
        ("?status=error", ["req-0002"]),
        ("?dialect=pangu", ["req-0003"]),
        ("?dialect=playground", ["req-0004"]),
        ("?key=ci-bot", ["req-0003"]),
        ("?model=GPT-A&status=ok", ["req-0001", "req-0003", "req-0004", "req-0005"]),
        ("?since={old}&until={old}", ["req-0005"]),
        ("?since={today}", ["req-0001", "req-0002", "req-0003", "req-0004"]),
    ],
)
def test_filters(alice: Persona, calls: Any, client: Client, query: str, expected: list[str]) -> None:
    today = timezone.localdate()
    old = today - timedelta(days=3)
    client.force_login(alice.user)
    assert _shown(client, query.format(today=today.isoformat(), old=old.isoformat())) == expected


def test_the_key_filter_takes_its_prefix_too(alice: Persona, calls: Any, client: Client) -> None:
    client.force_login(alice.user)
    assert _shown(client, f"?key={calls['key'].prefix}") == ["req-0003"]


def test_a_bad_filter_says_so_and_shows_everything(alice: Persona, calls: Any, client: Client) -> None:
    client.force_login(alice.user)
    response = client.get("/usage/?since=2026-02-01&until=2026-01-01")
    assert response.status_code == 200
    assert "must be on or before" in response.content.decode()
    assert len(_shown(client, "?since=2026-02-01&until=2026-01-01")) == 5


def test_the_first_and_last_days_a_date_can_name_are_filters_like_any(
    alice: Persona, calls: Any, client: Client
) -> None:
    client.force_login(alice.user)
    assert _shown(client, "?since=0001-01-01&until=9999-12-31") == [f"req-{n:04d}" for n in range(1, 6)]


def test_pages_of_fifty_and_a_fixed_number_of_queries(
    alice: Persona, client: Client, django_assert_num_queries: Any
) -> None:
    for n in range(1, 121):
        _record(alice, n)
    client.force_login(alice.user)
    assert _shown(client) == [f"req-{n:04d}" for n in range(1, 51)]
    assert _shown(client, "?page=3") == [f"req-{n:04d}" for n in range(101, 121)]
    html = client.get("/usage/?page=2").content.decode()
    assert "Page 2 of 3 (120 calls)" in html
    client.get("/usage/")  # the session and membership warmed as on any page
    with django_assert_num_queries(6):
        client.get("/usage/?page=2")


def test_past_the_count_cap_the_pages_stop_and_say_more_than(
    alice: Persona, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cap keeps a filter's count bounded at a million records; 120 records past a cap of 100 show it.
    monkeypatch.setattr(paging, "COUNT_CAP", 100)
    for n in range(1, 121):
        _record(alice, n)
    client.force_login(alice.user)
    first = client.get("/usage/").content.decode()
    assert "Page 1 of 2 (more than 100 calls)" in first and 'id="pager-capped"' not in first
    last = client.get("/usage/?page=2").content.decode()
    assert _shown(client, "?page=2") == [f"req-{n:04d}" for n in range(51, 101)]
    assert "Page 2 of 2 (more than 100 calls)" in last and "Older" not in last
    assert "The list stops at the 100 newest calls" in last
    # Exactly at the cap nothing is hidden, and the page says so by not saying "more than".
    UsageRecord.objects.filter(request_id__in=[f"req-{n:04d}" for n in range(101, 121)]).delete()
    assert "Page 2 of 2 (100 calls)" in client.get("/usage/?page=2").content.decode()


def test_the_model_and_key_filters_read_their_indexes(alice: Persona, calls: Any) -> None:
    """The usage log's model filter is LOWER(model_name) = lower(value), the expression the
    usage_project_model index holds, and the key filter a subquery of the project's keys."""
    from chat.selectors import usage_records

    sql = str(usage_records(project=alice.project, model="GPT-A").query)
    assert 'LOWER("chat_usagerecord"."model_name") = gpt-a' in sql, sql
    sql = str(usage_records(project=alice.project, key="ci-bot").query)
    assert '"chat_usagerecord"."api_key_id" IN (SELECT' in sql, sql


def test_the_download_link_carries_the_filters(alice: Persona, calls: Any, client: Client) -> None:
    client.force_login(alice.user)
    html = client.get("/usage/?model=gpt-b&status=error&page=1").content.decode()
    assert 'id="usage-export" href="/usage/export.csv?model=gpt-b&amp;status=error"' in html
    response: Any = client.get("/usage/export.csv?model=gpt-b&status=error")
    rows = b"".join(response.streaming_content).decode().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["req-0002"]
    assert 'id="usage-export" href="/usage/export.csv"' in client.get("/usage/").content.decode()
