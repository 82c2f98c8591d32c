"""The operations dashboard in Chromium: its charts are drawn, with the figures the test wrote (issue 14)."""

from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime, time, timedelta
from typing import Any

from playwright.sync_api import Page, expect

from chat import usage
from chat.models import QuotaCounter
from console import services as console_services
from forecasts.models import ForecastJob, JobState
from models_registry.models import QuotaPeriod
from tests.browser.conftest import log_in
from tests.factories import make_project, make_user
from tests.models_registry.factories import make_provider

TZ_NOON = time(12, 0)


def _at(day: date, minute: int) -> datetime:
    from django.utils import timezone

    return timezone.make_aware(datetime.combine(day, TZ_NOON), timezone.get_default_timezone()) + timedelta(
        minutes=minute
    )


def _call(project_id: str, n: int, day: date, model: str, **fields: Any) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "model_name": model,
        "dialect": "openai",
        "mode": "chat",
        "status": "ok",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "latency_ms": 100.0,
        "request_id": f"b-{n:03d}",
        "created_at": _at(day, n),
        **fields,
    }


def _chart(page: Page, chart: str) -> dict[str, Any]:
    """A drawn chart's labels and datasets, and whether its canvas holds any drawn pixel."""
    return page.evaluate(
        """(id) => {
            const chart = window.operationsCharts[id];
            const canvas = chart.canvas;
            const blank = document.createElement("canvas");
            blank.width = canvas.width; blank.height = canvas.height;
            return {
                labels: chart.data.labels,
                sets: Object.fromEntries(chart.data.datasets.map((d) => [d.label, d.data])),
                drawn: canvas.width > 0 && canvas.height > 0 && canvas.toDataURL() !== blank.toDataURL(),
                bars: chart.getDatasetMeta(0).data.length,
            };
        }""",
        chart,
    )


def test_the_dashboard_draws_its_charts_with_the_calls_and_narrows_to_a_range(
    live_server: Any, page: Page, transactional_db: None
) -> None:
    from django.utils import timezone

    alice = make_user("alice")
    project = make_project(name="ops", owner=alice)
    key = console_services.api_key_create(user=alice, project=project, name="ci-bot")[0]
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    d0, d1, d2 = today - timedelta(days=2), today - timedelta(days=1), today
    # Per day: gpt-a 3, 1, 2 calls; pangu-b 0, 2, 1 (one of them refused with QUOTA_EXCEEDED, two
    # failed upstream); every call 10 + 5 tokens, the failed ones none.
    calls = [
        _call(project.pk, 1, d0, "gpt-a", api_key_id=key.pk, user_id=alice.pk),
        _call(project.pk, 2, d0, "gpt-a", api_key_id=key.pk, user_id=alice.pk),
        _call(project.pk, 3, d0, "gpt-a", user_id=alice.pk, dialect="playground"),
        _call(project.pk, 4, d1, "gpt-a", api_key_id=key.pk, user_id=alice.pk),
        _call(project.pk, 5, d1, "pangu-b", api_key_id=key.pk, user_id=alice.pk),
        _call(
            project.pk, 6, d1, "pangu-b", api_key_id=key.pk, user_id=alice.pk, status="error", http_status=429,
            error_code="QUOTA_EXCEEDED", prompt_tokens=0, completion_tokens=0, total_tokens=0,
        ),
        _call(
            project.pk, 7, d2, "pangu-b", api_key_id=key.pk, user_id=alice.pk, status="error", http_status=502,
            error_code="UPSTREAM_ERROR", prompt_tokens=0, completion_tokens=0, total_tokens=0,
        ),
        _call(project.pk, 8, d2, "gpt-a", api_key_id=key.pk, user_id=alice.pk),
        _call(
            project.pk, 9, d2, "gpt-a", api_key_id=key.pk, user_id=alice.pk, status="error", http_status=504,
            error_code="UPSTREAM_ERROR", prompt_tokens=0, completion_tokens=0, total_tokens=0,
        ),
    ]  # fmt: skip
    assert usage._write_records(calls) == (0, [])
    monthly = make_provider(
        project=project, slug="monthly", name="Monthly", token_quota=1000, quota_period=QuotaPeriod.MONTHLY
    )
    QuotaCounter.objects.create(provider=monthly, period=timezone.now().strftime("%Y-%m"), used=300, reserved=100)
    for state in (JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED):
        ForecastJob.objects.create(
            project=project, name="j", engine="e", state=state, input={}, output={}, config={}, created_at=_at(d1, 0)
        )

    log_in(page, live_server.url, "alice")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Operations").click()
    expect(page.get_by_role("heading", name="Operations")).to_be_visible()
    page.wait_for_function("() => window.operationsCharts && window.operationsCharts['chart-jobs']")
    expect(page.locator("#total-requests")).to_have_text("9")
    expect(page.locator("#total-errors")).to_have_text("3")

    # The default range is the last 30 days: the three days with calls are its last three.
    requests = _chart(page, "chart-requests")
    assert len(requests["labels"]) == 30 and requests["labels"][-3:] == [d.isoformat() for d in (d0, d1, d2)]
    assert requests["sets"]["gpt-a"][-3:] == [3, 1, 2] and requests["sets"]["pangu-b"][-3:] == [0, 2, 1]
    assert sum(requests["sets"]["gpt-a"]) == 6 and sum(requests["sets"]["pangu-b"]) == 3
    assert requests["drawn"] and requests["bars"] == 30
    errors = _chart(page, "chart-errors")
    assert errors["sets"]["gpt-a"][-3:] == [0, 0, 1] and errors["sets"]["pangu-b"][-3:] == [0, 1, 1]
    tokens = _chart(page, "chart-tokens")
    assert tokens["sets"]["gpt-a prompt"][-3:] == [30, 10, 10] and tokens["sets"]["gpt-a completion"][-3:] == [15, 5, 5]
    assert tokens["sets"]["pangu-b prompt"][-3:] == [0, 10, 0]
    codes = _chart(page, "chart-codes")
    assert codes["labels"] == ["UPSTREAM_ERROR", "QUOTA_EXCEEDED"] and codes["sets"]["failed calls"] == [2, 1]
    quotas = _chart(page, "chart-quotas")
    assert quotas["labels"] == [f"Monthly ({timezone.now():%Y-%m})"]
    assert (quotas["sets"]["used"], quotas["sets"]["reserved"], quotas["sets"]["left"]) == ([300], [100], [600])
    jobs = _chart(page, "chart-jobs")
    assert jobs["sets"]["jobs"] == [0, 0, 2, 1, 0]
    latency = _chart(page, "chart-latency")
    # Every call took 100 ms: its bucket [2^(53/8), 2^(54/8)) = [98.7, 107.6) ms is reported as 2^(53.5/8) = 103.1 ms.
    assert [round(v, 1) for v in latency["sets"]["latency p50"][-3:]] == [103.1, 103.1, 103.1]
    for chart in ("chart-errors", "chart-tokens", "chart-codes", "chart-quotas", "chart-jobs", "chart-latency"):
        assert _chart(page, chart)["drawn"], chart

    # A narrower range with the picker: the last two days only.
    page.fill("#id_since", d1.isoformat())
    page.fill("#id_until", d2.isoformat())
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#total-requests")).to_have_text("6")
    page.wait_for_function("() => window.operationsCharts && window.operationsCharts['chart-jobs']")
    requests = _chart(page, "chart-requests")
    assert requests["labels"] == [d1.isoformat(), d2.isoformat()]
    assert requests["sets"] == {"gpt-a": [1, 2], "pangu-b": [2, 1]}

    # The CSV of these days: the six calls, newest first.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download these calls (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert [r["request_id"] for r in rows] == ["b-009", "b-008", "b-007", "b-006", "b-005", "b-004"]
    assert [r["error_code"] for r in rows] == ["UPSTREAM_ERROR", "", "UPSTREAM_ERROR", "QUOTA_EXCEEDED", "", ""]


def test_the_dashboard_fits_a_phone(live_server: Any, browser: Any, transactional_db: None) -> None:
    alice = make_user("alice")
    make_project(name="ops", owner=alice)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        log_in(page, live_server.url, "alice")
        page.goto(live_server.url + "/operations/")
        page.wait_for_function("() => window.operationsCharts && window.operationsCharts['chart-jobs']")
        # Nothing wider than the screen but the scrollable tables; each chart as wide as the column.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        width = page.evaluate("window.operationsCharts['chart-requests'].width")
        assert 250 <= width <= 390, width
    finally:
        context.close()


def test_the_usage_and_audit_logs_filter_and_page_in_a_browser(
    live_server: Any, page: Page, transactional_db: None
) -> None:
    from django.utils import timezone

    alice = make_user("alice")
    project = make_project(name="ops", owner=alice)
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    # 60 answered calls of gpt-a (b-001 oldest), then 3 failed calls of pangu-b (the newest).
    calls = [_call(project.pk, n, today, "gpt-a", user_id=alice.pk) for n in range(1, 61)]
    calls += [
        _call(project.pk, n, today, "pangu-b", user_id=alice.pk, status="error", http_status=429,
              error_code="QUOTA_EXCEEDED", prompt_tokens=0, completion_tokens=0, total_tokens=0)
        for n in range(61, 64)
    ]  # fmt: skip
    assert usage._write_records(calls) == (0, [])

    log_in(page, live_server.url, "alice")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage log").click()
    rows = page.locator("#usage-records tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("b-063")
    expect(page.locator(".pager")).to_contain_text("Page 1 of 2 (63 calls)")
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(13)
    expect(rows.last).to_contain_text("b-001")

    # The filters by hand: a model in another case, and an outcome.
    page.fill("#id_model", "PANGU-B")
    page.select_option("#id_status", "error")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("QUOTA_EXCEEDED")
    expect(page.locator("#usage-export")).to_have_attribute("href", re.compile(r"\?model=PANGU-B&.*status=error"))
    with page.expect_download() as download:
        page.locator("#usage-export").click()
    exported = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert [r["request_id"] for r in exported] == ["b-063", "b-062", "b-061"]

    # The sign-in and the download are in the audit log; filtering by action keeps the download alone.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    entries = page.locator("#audit-events tbody tr")
    expect(entries).to_have_count(2)
    page.select_option("#id_action", "usage.export")
    page.get_by_role("button", name="Filter").click()
    expect(entries).to_have_count(1)
    expect(entries.first).to_contain_text("alice downloaded the usage records of project")
