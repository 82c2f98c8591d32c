"""Pages of long lists (the usage log, the audit log) whose count stays cheap at a million rows."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.utils.functional import cached_property

# Counting every match of a filter is a scan of all of them (seconds at a million records on SQLite);
# counting up to here is bounded. 200 pages of 50 is more than anyone reads: past it, filters help.
COUNT_CAP = 10_000


class CappedPaginator(Paginator):
    """A Paginator that counts at most `cap` items: past the cap it says `capped`, and its pages stop
    at the cap (the page then says "more than" and suggests narrower filters)."""

    def __init__(self, object_list: QuerySet[Any], per_page: int, *, cap: int | None = None) -> None:
        super().__init__(object_list, per_page)
        self.queryset, self.cap = object_list, COUNT_CAP if cap is None else cap

    @cached_property
    def found(self) -> int:
        """The matches, counted up to cap + 1: COUNT(*) over a subquery with LIMIT, so the database
        stops there."""
        return self.queryset[: self.cap + 1].count()

    @cached_property
    def count(self) -> int:
        return min(self.found, self.cap)

    @property
    def capped(self) -> bool:
        return self.found > self.cap
