"""Daily rollups of the usage records, kept by the usage writer so the dashboard never reads the records.

Each batch of records the writer inserts is summed here, per project and day, into `UsageDaily`
(one row per model, API key, user and error code) and `UsageLatency` (per model, how many calls fell
in each latency and time-to-first-token bucket), by one upsert per table that adds to the rows:
`INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n`, in the records' own transaction. Two
processes adding to the same row therefore never lose a count, on SQLite and PostgreSQL alike, and
the rollups can never count a record that was not written (or miss one that was).

Percentiles come from the buckets: bucket 0 holds [0, 1) ms, bucket k >= 1 holds [R^(k-1), R^k) ms
with R = 2^(1/8), the last one everything above. The nearest-rank percentile (the value of rank
ceil(p/100 * n) in ascending order) is reported as its bucket's geometric middle R^(k-1/2), so it is
within a factor 2^(1/16) of the exact one: 4.4 % at most (0.5 ms at most below 1 ms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.db import connection
from django.db.models import Model
from django.utils import timezone

# Buckets per doubling: a finer one halves the error and doubles the rows.
STEPS_PER_DOUBLING = 8
RATIO = 2.0 ** (1 / STEPS_PER_DOUBLING)
# 2^24 ms is 4.7 hours: longer than any call may last (GATEWAY_MAX_CALL_SECONDS).
LAST_BUCKET = 24 * STEPS_PER_DOUBLING + 1
# The largest relative error of a percentile at or above 1 ms.
MAX_RELATIVE_ERROR = 2.0 ** (1 / (2 * STEPS_PER_DOUBLING)) - 1

LATENCY = "latency"
TTFT = "ttft"

DailyKey = tuple[str, date, str, str]  # project, day, dimension, name
LatencyKey = tuple[str, date, str, str, int]  # project, day, model, kind, bucket


def bucket_of(ms: float) -> int:
    if not ms >= 1.0:  # also NaN
        return 0
    return min(LAST_BUCKET, 1 + math.floor(math.log2(ms) * STEPS_PER_DOUBLING))


def bucket_value(bucket: int) -> float:
    """The value a percentile falling in `bucket` is reported as (ms)."""
    if bucket <= 0:
        return 0.5
    return RATIO ** (bucket - 0.5)


def percentile(counts: Mapping[int, int], p: float) -> float | None:
    """The nearest-rank `p`th percentile of the calls counted per bucket, None without calls."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return bucket_value(bucket)
    raise AssertionError("unreachable: the ranks add up to the total")


def local_day(at: datetime) -> date:
    """The day a call counts on: its date in TIME_ZONE (whatever zone a request activated)."""
    return timezone.localtime(at, timezone.get_default_timezone()).date()


@dataclass
class Sums:
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms_sum: float = 0.0

    def add(self, record: Mapping[str, Any]) -> None:
        self.requests += 1
        self.errors += record["status"] == "error"
        self.cancelled += record["status"] == "cancelled"
        self.prompt_tokens += record["prompt_tokens"] or 0
        self.completion_tokens += record["completion_tokens"] or 0
        self.latency_ms_sum += record["latency_ms"] or 0.0


@dataclass
class Deltas:
    """What a set of records adds to the rollups."""

    daily: dict[DailyKey, Sums] = field(default_factory=dict)
    latency: dict[LatencyKey, int] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one record, given as its field values by attribute name (project_id, ...,
        created_at)."""
        project, day = record["project_id"], local_day(record["created_at"])
        names = [
            ("model", record["model_name"] or ""),
            ("key", _id(record.get("api_key_id"))),
            ("user", _id(record.get("user_id"))),
        ]
        if record["status"] == "error":
            names.append(("code", record["error_code"] or f"HTTP {record['http_status']}"))
        for dimension, name in names:
            sums = self.daily.get((project, day, dimension, name))
            if sums is None:
                sums = self.daily[(project, day, dimension, name)] = Sums()
            sums.add(record)
        model = record["model_name"] or ""
        for kind, ms in ((LATENCY, record["latency_ms"]), (TTFT, record.get("ttft_ms"))):
            if ms is None:
                continue
            key = (project, day, model, kind, bucket_of(ms))
            self.latency[key] = self.latency.get(key, 0) + 1


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def deltas_of(records: Iterable[Mapping[str, Any]]) -> Deltas:
    deltas = Deltas()
    for record in records:
        deltas.add(record)
    return deltas


# Rows per INSERT: well under SQLite's 32766 bound variables with 10 columns.
CHUNK = 1000


def apply(deltas: Deltas, *, daily_model: type[Model], latency_model: type[Model]) -> None:
    """Add the deltas to the rollup tables. Run it inside the transaction that writes the records.
    The models are parameters so the migration's backfill can pass its historical ones.

    The rows go in key order: two PostgreSQL transactions adding to the same rows lock them in the
    same order, so they wait for each other instead of deadlocking."""
    daily_rows = [
        (project, day, dimension, name, s.requests, s.errors, s.cancelled, s.prompt_tokens, s.completion_tokens,
         s.latency_ms_sum)
        for (project, day, dimension, name), s in sorted(deltas.daily.items(), key=lambda item: item[0])
    ]  # fmt: skip
    _upsert(
        daily_model._meta.db_table,
        ["project_id", "day", "dimension", "name"],
        ["requests", "errors", "cancelled", "prompt_tokens", "completion_tokens", "latency_ms_sum"],
        daily_rows,
    )
    latency_rows = [(*key, count) for key, count in sorted(deltas.latency.items())]
    _upsert(
        latency_model._meta.db_table, ["project_id", "day", "model_name", "kind", "bucket"], ["count"], latency_rows
    )


def _upsert(table: str, keys: list[str], sums: list[str], rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in keys + sums)
    conflict = ", ".join(quote(c) for c in keys)
    # The table's own name qualifies the old value (PostgreSQL would find a bare name ambiguous).
    update = ", ".join(f"{quote(c)} = {quote(table)}.{quote(c)} + excluded.{quote(c)}" for c in sums)
    width = len(keys) + len(sums)
    # Only the values are the caller's, and they travel as parameters.
    with connection.cursor() as cursor:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            values = ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * len(chunk))
            cursor.execute(
                f"INSERT INTO {quote(table)} ({columns}) VALUES {values} "
                f"ON CONFLICT ({conflict}) DO UPDATE SET {update}",
                [value for row in chunk for value in row],
            )


def rollup_records(records: Iterable[Mapping[str, Any]]) -> None:
    """Add these (just written) records to the rollups."""
    from chat.models import UsageDaily, UsageLatency

    apply(deltas_of(records), daily_model=UsageDaily, latency_model=UsageLatency)


# Fields a record contributes to the rollups (its `values()` for the backfill).
FIELDS = (
    "project_id",
    "created_at",
    "model_name",
    "api_key_id",
    "user_id",
    "status",
    "error_code",
    "http_status",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
)


def backfill(*, record_model: type[Model], daily_model: type[Model], latency_model: type[Model], batch: int) -> int:
    """Rebuild the rollups from every record, `batch` records at a time in primary-key order (each
    batch's sums added in one transaction of its own). The rollup tables must be empty. Returns the
    records counted."""
    from django.db import transaction

    last, counted = 0, 0
    manager = record_model._default_manager
    while True:
        rows = list(manager.filter(pk__gt=last).order_by("pk").values("pk", *FIELDS)[:batch])
        if not rows:
            return counted
        with transaction.atomic():
            apply(deltas_of(rows), daily_model=daily_model, latency_model=latency_model)
        last, counted = rows[-1]["pk"], counted + len(rows)
