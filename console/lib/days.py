"""Days as the console counts them: dates in TIME_ZONE (the usage log, the audit log, the dashboard's
rollups), whatever time zone a request may have activated."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, TypeVar

from django.db.models import QuerySet
from django.utils import timezone

Q = TypeVar("Q", bound=QuerySet[Any])


def today() -> date:
    """Today in TIME_ZONE."""
    return timezone.localdate(timezone=timezone.get_default_timezone())


def day_start(day: date, *, after: bool = False) -> datetime:
    """The first moment of `day` (of the day after it, with `after`) in TIME_ZONE."""
    if after:
        day += timedelta(days=1)
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


def on_days(items: Q, *, since: date | None, until: date | None, field: str = "created_at") -> Q:
    """`items` whose `field` falls on the days since..until, both included (either may be open)."""
    if since is not None:
        items = items.filter(**{f"{field}__gte": day_start(since)})
    if until is not None and until < date.max:  # the last day a date can name has no day after it
        items = items.filter(**{f"{field}__lt": day_start(until, after=True)})
    return items
