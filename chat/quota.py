"""Token quotas: reserve before the call, settle after, each one atomic UPDATE in the database."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from chat.models import QuotaCounter
from models_registry.models import Provider, QuotaPeriod


def current_period(provider: Provider) -> str:
    return timezone.now().strftime("%Y-%m") if provider.quota_period == QuotaPeriod.MONTHLY else "total"


def _counter_id(provider: Provider, period: str) -> int:
    counter = QuotaCounter.objects.filter(provider=provider, period=period).values_list("pk", flat=True).first()
    if counter is not None:
        return counter
    try:
        with transaction.atomic():
            return QuotaCounter.objects.create(provider=provider, period=period).pk
    except IntegrityError:  # another process created it first
        return QuotaCounter.objects.get(provider=provider, period=period).pk


def quota_reserve(*, provider: Provider, tokens: int) -> tuple[int, str] | None:
    """Reserve `tokens` if used + reserved + tokens stays within the quota; returns (counter, period).

    The condition and the increment are one UPDATE statement, so concurrent callers in any
    number of processes can never reserve past the quota."""
    assert provider.token_quota is not None
    period = current_period(provider)
    counter = _counter_id(provider, period)
    taken = (
        QuotaCounter.objects.filter(pk=counter)
        .alias(committed=F("used") + F("reserved"))
        .filter(committed__lte=provider.token_quota - tokens)
        .update(reserved=F("reserved") + tokens)
    )
    return (counter, period) if taken else None


def quota_settle(*, counter: int, reserved: int, spent: int) -> None:
    """Release a reservation and charge what the call really spent (never more than it reserved)."""
    QuotaCounter.objects.filter(pk=counter).update(
        reserved=F("reserved") - reserved, used=F("used") + max(0, min(spent, reserved))
    )
