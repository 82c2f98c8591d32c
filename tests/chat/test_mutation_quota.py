"""chat/quota.py called directly on the database: reservations exactly up to the quota (`<=`) and not one
token past it, settlements clamped to the reservation, periods, hold windows, and the reconcile of holds
left by dead processes. Figures are worked out by hand. Written against the surviving mutants of
`make mutation`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db.models import QuerySet
from pytest_django.fixtures import Settings as SettingsWrapper

from chat import quota
from chat.models import QuotaCounter, QuotaHold
from models_registry.models import Provider, QuotaPeriod
from tests.factories import make_project, make_user

pytestmark = pytest.mark.django_db


def _provider(quota_tokens: int | None = 100, period: str = QuotaPeriod.TOTAL) -> Provider:
    project = make_project(name="quota-project", owner=make_user("quota-owner"))
    return Provider.objects.create(
        project=project, slug="g", name="G", kind="openai_compatible", token_quota=quota_tokens, quota_period=period
    )


def _counter(pk: int) -> tuple[int, int]:
    row = QuotaCounter.objects.get(pk=pk)
    return row.used, row.reserved


def test_hold_window() -> None:
    assert quota.hold_window(125.0) == 2
    assert quota.hold_window(120.0) == 2
    assert quota.hold_window(119.9) == 1
    assert type(quota.hold_window(119.9)) is int


def test_hold_window_and_stale_before_read_the_clock(
    monkeypatch: pytest.MonkeyPatch, settings: SettingsWrapper
) -> None:
    monkeypatch.setattr(quota.time, "time", lambda: 10_000.0)
    settings.GATEWAY_MAX_CALL_SECONDS = 100.0
    assert quota.hold_window() == 166  # 10000 // 60
    # 10000 - 100 (longest call) - 300 (settlement grace) = 9600 = window 160 exactly.
    assert quota.stale_before() == 160
    assert quota.stale_before(margin=59.0) == 160
    assert quota.stale_before(margin=60.0) == 161
    assert (quota.HOLD_WINDOW_SECONDS, quota.SETTLE_GRACE_SECONDS) == (60, 300.0)
    # One second earlier, 9599 falls in window 159: no margin unless asked for.
    monkeypatch.setattr(quota.time, "time", lambda: 9_999.0)
    assert quota.stale_before() == 159
    assert quota.stale_before(margin=1.0) == 160


def test_current_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota.timezone, "now", lambda: datetime(2026, 3, 9, 12, 0, tzinfo=UTC))
    assert quota.current_period(_provider(period=QuotaPeriod.MONTHLY)) == "2026-03"
    assert quota.current_period(Provider(quota_period=QuotaPeriod.TOTAL)) == "total"


def test_reserve_exactly_up_to_the_quota_then_settle_clamped() -> None:
    provider = _provider(100)
    first = quota.quota_reserve(provider=provider, tokens=60)
    assert first is not None and first[1] == "total"
    counter = first[0]
    assert _counter(counter) == (0, 60)
    # 60 + 40 == 100: the last token of the quota is still reservable.
    assert quota.quota_reserve(provider=provider, tokens=40) == (counter, "total")
    assert quota.quota_reserve(provider=provider, tokens=1) is None
    assert _counter(counter) == (0, 100)
    # A call that spent more than it reserved is charged its reservation, no more.
    quota.quota_settle(counter=counter, reserved=60, spent=70)
    assert _counter(counter) == (60, 40)
    # A negative spend charges nothing.
    quota.quota_settle(counter=counter, reserved=40, spent=-5)
    assert _counter(counter) == (60, 0)
    quota.quota_settle(counter=counter, reserved=0, spent=0)
    assert _counter(counter) == (60, 0)
    assert quota.quota_reserve(provider=provider, tokens=41) is None
    assert quota.quota_reserve(provider=provider, tokens=40) == (counter, "total")
    quota.quota_settle(counter=counter, reserved=40, spent=15)
    assert _counter(counter) == (75, 0)
    assert QuotaCounter.objects.count() == 1


def test_quota_over_reservation_calls_exactly() -> None:
    provider = _provider(1000)
    taken = [quota.quota_reserve(provider=provider, tokens=20) for _ in range(51)]
    assert sum(t is not None for t in taken) == 1000 // 20 == 50
    assert taken[-1] is None


def test_a_monthly_quota_counts_per_month(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = _provider(10, QuotaPeriod.MONTHLY)
    monkeypatch.setattr(quota.timezone, "now", lambda: datetime(2026, 3, 31, tzinfo=UTC))
    march = quota.quota_reserve(provider=provider, tokens=10)
    assert march is not None and march[1] == "2026-03"
    assert quota.quota_reserve(provider=provider, tokens=1) is None
    monkeypatch.setattr(quota.timezone, "now", lambda: datetime(2026, 4, 1, tzinfo=UTC))
    april = quota.quota_reserve(provider=provider, tokens=10)
    assert april is not None and april[1] == "2026-04" and april[0] != march[0]


def test_counter_created_once_per_period(django_assert_num_queries: Any) -> None:
    provider = _provider()
    total = quota._counter_id(provider, "total")
    # An existing counter is found by its provider and period: one SELECT, no insert attempted.
    with django_assert_num_queries(1):
        assert quota._counter_id(provider, "total") == total
    assert QuotaCounter.objects.get(pk=total).period == "total"
    other = quota._counter_id(provider, "2026-01")
    assert other != total and QuotaCounter.objects.get(pk=other).period == "2026-01"
    # Another group's counter for the same period is its own.
    second = Provider.objects.create(project=provider.project, slug="g2", name="G2", kind="openai_compatible")
    mine = quota._counter_id(second, "total")
    assert mine not in (total, other)
    assert QuotaCounter.objects.get(pk=mine).provider_id == second.pk
    assert quota._counter_id(provider, "total") == total


def test_counter_created_by_another_process_first(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = _provider()
    existing = QuotaCounter.objects.create(provider=provider, period="total", used=7).pk
    # Neighbours the lookup must not pick: the same group's other period, another group's same period.
    QuotaCounter.objects.create(provider=provider, period="2026-01")
    second = Provider.objects.create(project=provider.project, slug="g2", name="G2", kind="openai_compatible")
    QuotaCounter.objects.create(provider=second, period="total")
    real_filter = QuotaCounter.objects.filter
    misses = iter([True])

    def stale_filter(*args: object, **kwargs: object) -> QuerySet[QuotaCounter]:
        # The first lookup misses the row, as one racing another process's insert would.
        if next(misses, False):
            return QuotaCounter.objects.none()
        return real_filter(*args, **kwargs)

    monkeypatch.setattr(QuotaCounter.objects, "filter", stale_filter)
    assert quota._counter_id(provider, "total") == existing
    assert QuotaCounter.objects.count() == 3


def test_reconcile_releases_only_stale_holds(
    monkeypatch: pytest.MonkeyPatch, settings: SettingsWrapper, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(quota.time, "time", lambda: 10_000.0)
    settings.GATEWAY_MAX_CALL_SECONDS = 100.0  # stale_before() == 160
    provider = _provider(1000)
    a = QuotaCounter.objects.create(provider=provider, period="total", reserved=100).pk
    b = QuotaCounter.objects.create(provider=provider, period="2026-01", reserved=50).pk
    QuotaHold.objects.create(counter_id=a, window=150, tokens=10)
    QuotaHold.objects.create(counter_id=a, window=159, tokens=20)
    QuotaHold.objects.create(counter_id=a, window=160, tokens=40)  # may still be live: kept
    QuotaHold.objects.create(counter_id=b, window=100, tokens=5)
    QuotaHold.objects.create(counter_id=b, window=101, tokens=0)
    QuotaHold.objects.create(counter_id=b, window=102, tokens=1)
    with caplog.at_level(logging.WARNING, logger="chat.quota"):
        assert quota.quota_reconcile() == 36
    assert _counter(a) == (0, 70)
    assert _counter(b) == (0, 44)
    assert list(QuotaHold.objects.values_list("counter_id", "window", "tokens")) == [(a, 160, 40)]
    assert [r.getMessage() for r in caplog.records] == [
        "released 36 quota tokens still reserved by calls older than 100 s (their process ended without settling them)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chat.quota"):
        assert quota.quota_reconcile() == 0
    assert caplog.records == []
    assert _counter(a) == (0, 70)


def test_reconcile_of_empty_holds_only_forgets_them(caplog: pytest.LogCaptureFixture) -> None:
    provider = _provider(1000)
    a = QuotaCounter.objects.create(provider=provider, period="total", reserved=9).pk
    QuotaHold.objects.create(counter_id=a, window=1, tokens=0)
    with caplog.at_level(logging.WARNING, logger="chat.quota"):
        assert quota.quota_reconcile() == 0
    assert caplog.records == []
    assert QuotaHold.objects.count() == 0
    assert _counter(a) == (0, 9)
