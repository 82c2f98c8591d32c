"""Token quotas: reserve before the call, settle after, each one atomic UPDATE in the database.

Each web process's usage writer also journals, per counter and window of time, the tokens its calls
hold (`QuotaHold`), in its batches (no statement of its own per call). Every call ends within
GATEWAY_MAX_CALL_SECONDS and settles on its way out, so tokens still held in a window that ended
longer ago than that (plus SETTLE_GRACE_SECONDS for the settlement to reach the database) belong to
calls that died with their process: `quota_reconcile` releases them.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from chat.models import QuotaCounter, QuotaHold
from models_registry.models import Provider, QuotaPeriod

logger = logging.getLogger(__name__)

HOLD_WINDOW_SECONDS = 60
# Time for a settlement to travel from a call's end to the database (the writer's batches, retried
# through a short outage), on top of the longest call.
SETTLE_GRACE_SECONDS = 300.0
# How often each web process runs the reconcile.
RECONCILE_SECONDS = 60.0


def hold_window(at: float | None = None) -> int:
    return int((time.time() if at is None else at) // HOLD_WINDOW_SECONDS)


def stale_before(*, margin: float = 0.0) -> int:
    """The first window whose holds may still belong to a live call (or a settlement on its way);
    with a margin, the first such window for a clock `margin` seconds ahead."""
    return hold_window(time.time() - settings.GATEWAY_MAX_CALL_SECONDS - SETTLE_GRACE_SECONDS + margin)


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


def quota_reconcile() -> int:
    """Release the tokens still held in windows before `stale_before()`, and forget those holds.
    Returns the tokens released. One transaction: the holds are locked (PostgreSQL; SQLite writes
    one transaction at a time), so processes reconciling together release each hold once."""
    cutoff = stale_before()
    if not QuotaHold.objects.filter(window__lt=cutoff).exists():  # the usual answer, without a write lock
        return 0
    with transaction.atomic():
        stale = QuotaHold.objects.select_for_update(skip_locked=True).filter(window__lt=cutoff)
        ids = list(stale.values_list("pk", flat=True))
        held = (
            QuotaHold.objects.filter(pk__in=ids, tokens__gt=0)
            .values("counter")
            .annotate(held=Sum("tokens"))
            .values_list("counter", "held")
        )
        released = 0
        for counter, tokens in held:
            QuotaCounter.objects.filter(pk=counter).update(reserved=F("reserved") - tokens)
            released += tokens
        QuotaHold.objects.filter(pk__in=ids).delete()
    if released:
        logger.warning(
            "released %d quota tokens still reserved by calls older than %g s (their process ended "
            "without settling them)",
            released,
            settings.GATEWAY_MAX_CALL_SECONDS,
        )
    return released
