"""The operations dashboard with a million usage records (issue 14's benchmark).

1. Writes N usage records (default 1,000,000) over the last 30 days through the usage writer's
   database write (`chat.usage._write_records`: the records and their daily rollups in one
   transaction, BATCH_SIZE records a batch), for 8 models, 50 API keys, 20 users and 6 error codes.
2. The writer's price for the rollups: batches of calls of one second (as the writer meets them in
   service) written with and without them, alternating, in a project of their own (deleted
   afterwards): the ratio of the medians. (The million records of step 1 are spread over 30 days, so
   each of their batches touches some 30 times more rollup rows than in service.)
3. `/operations/` rendered by an admin through Django's whole stack (middleware, session, view,
   template) for the default range (30 days: every record) and the widest (366 days): p50 and p95
   of R renders. Goal: under 300 ms at a million records.
4. The baseline, in the same run: the same figures computed straight from the records (GROUP BY
   model and day, top keys and users, codes, and the percentiles from the sorted latencies), which
   is what the page would cost without rollups; and the percentiles' distance from the exact ones.
5. The usage log's first page and its model filter at that size, for the record.

    .venv/bin/python bench/dashboard.py                                  # SQLite, as `make run`
    .venv/bin/python bench/dashboard.py --database-url postgres://postgres@127.0.0.1:5432/bench_dashboard
    .venv/bin/python bench/dashboard.py --records 100000 --renders 10    # a quick look
    .venv/bin/python bench/dashboard.py --records 0                      # the writer's price alone

The PostgreSQL database named in the URL is dropped and created afresh.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["gpt-4o", "gpt-4o-mini", "pangu-nlp-n2", "pangu-nlp-n4", "hunyuan-lite", "hunyuan-pro", "qwen-local", "glm-4"]
CODES = ["QUOTA_EXCEEDED", "UPSTREAM_TIMEOUT", "UPSTREAM_ERROR", "RATE_LIMITED", "MODEL_NOT_SUPPORTED", "BAD_REQUEST"]
DAYS = 30


def fresh_postgres(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup(database_url: str | None) -> None:
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="bench-dashboard-")
    os.environ.pop("REDIS_URL", None)
    if database_url:
        fresh_postgres(database_url)
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    sys.path.insert(0, str(ROOT))
    from console import datadir

    datadir.prepare_data_dir()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # the page's hashed asset names, as `make run`


class Generator:
    """Records like the gateway's: weighted models, keys and users, 5 % failed, 2 % cancelled."""

    def __init__(
        self, project_id: str, keys: list[tuple[int, int]], users: list[int], seed: int, *, spread: bool = True
    ) -> None:
        from django.utils import timezone

        self.rng = random.Random(seed)
        self.project_id, self.keys, self.users = project_id, keys, users
        from console.lib.days import day_start

        self.now = timezone.now()
        # On the DAYS days that end today (TIME_ZONE): the dashboard's default range holds every record.
        first = day_start(timezone.localdate(timezone=timezone.get_default_timezone()) - timedelta(days=DAYS - 1))
        # Or within the last second, as the writer sees its batches in service.
        self.span = (self.now - first).total_seconds() if spread else 1.0
        self.model_weights = [2**-n for n in range(len(MODELS))]
        self.key_weights = [1 / (n + 1) for n in range(len(keys))] + [3.0]  # and playground calls
        self.n = 0

    def batch(self, size: int) -> list[dict[str, Any]]:
        rng, out = self.rng, []
        keys = rng.choices([*self.keys, None], weights=self.key_weights, k=size)
        models = rng.choices(MODELS, weights=self.model_weights, k=size)
        for key, model in zip(keys, models, strict=True):
            status = rng.choices(("ok", "error", "cancelled"), weights=(93, 5, 2))[0]
            stream = rng.random() < 0.6
            prompt = rng.randint(5, 2000)
            completion = rng.randint(1, 800) if status == "ok" else 0
            self.n += 1
            out.append(
                {
                    "project_id": self.project_id,
                    "api_key_id": key[0] if key else None,
                    "user_id": key[1] if key else rng.choice(self.users),
                    "model_name": model,
                    "dialect": "playground" if key is None else rng.choice(("openai", "pangu", "cloudbase")),
                    "mode": "chat",
                    "stream": stream,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "latency_ms": rng.lognormvariate(6.5, 0.8),
                    "ttft_ms": rng.lognormvariate(5.0, 0.6) if stream and status == "ok" else None,
                    "status": status,
                    "http_status": 200 if status != "error" else rng.choice((429, 502, 504, 400)),
                    "error_code": rng.choice(CODES) if status == "error" else "",
                    "request_id": f"bench-{self.n:07d}",
                    "created_at": self.now - timedelta(seconds=rng.uniform(0, self.span)),
                }
            )
        return out


def people(project: Any, admin: Any, *, users: int, keys: int) -> tuple[list[tuple[int, int]], list[int]]:
    from console import services
    from tests.factories import add_member, make_user

    members = [admin]
    for n in range(users - 1):
        user = make_user(f"{project.name}-user{n}")
        add_member(project=project, user=user)
        members.append(user)
    made = []
    for n in range(keys):
        owner = members[n % len(members)]
        key = services.api_key_create(user=owner, project=project, name=f"key-{n}")[0]
        made.append((key.pk, owner.pk))
    return made, [m.pk for m in members]


def write_records(generator: Generator, count: int) -> float:
    from chat import usage

    started = time.perf_counter()
    left = count
    while left > 0:
        size = min(usage.BATCH_SIZE, left)
        assert usage._write_records(generator.batch(size)) == (0, [])
        left -= size
        if (count - left) % 100_000 == 0:
            rate = (count - left) / (time.perf_counter() - started)
            print(f"  {count - left:>9,} records written ({rate:,.0f}/s)", flush=True)
    return time.perf_counter() - started


def writer_overhead(batches: int, keys: list[tuple[int, int]]) -> tuple[float, float]:
    """Median seconds per BATCH_SIZE batch: plain bulk insert, and the writer's (with rollups)."""
    from django.db import transaction

    from chat import usage
    from chat.models import UsageRecord
    from console.models import Project
    from tests.factories import make_user

    user = make_user("overhead-admin")
    project = Project.objects.create(name="overhead")
    # A batch as the writer meets it in service: calls of the same second, so few rollup rows.
    generator = Generator(project.pk, keys, [user.pk], seed=2, spread=False)
    plain, rolled = [], []
    for n in range(2 * batches):
        records = generator.batch(usage.BATCH_SIZE)
        started = time.perf_counter()
        if n % 2:
            usage._write_records(records)
            rolled.append(time.perf_counter() - started)
        else:
            with transaction.atomic():
                UsageRecord.objects.bulk_create([UsageRecord(**fields) for fields in records])
            plain.append(time.perf_counter() - started)
    project.delete()
    return statistics.median(plain), statistics.median(rolled)


def timed(fn: Callable[[], Any], times: int) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def baseline(project: Any, since: date, until: date) -> dict[str, Any]:
    """The dashboard's figures straight from the records (what a page without rollups would run)."""
    from django.db.models import Count, F, Q, Sum
    from django.db.models.functions import TruncDate
    from django.utils import timezone

    from chat.models import UsageRecord
    from console.lib.days import day_start

    records = UsageRecord.objects.filter(
        project=project, created_at__gte=day_start(since), created_at__lt=day_start(until, after=True)
    )
    tz = timezone.get_default_timezone()
    per_day = list(
        records.annotate(day=TruncDate("created_at", tzinfo=tz))
        .values("day", "model_name")
        .annotate(
            n=Count("pk"),
            failed=Count("pk", filter=Q(status="error")),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
        )
    )
    keys = list(
        records.exclude(api_key=None)
        .values("api_key")
        .annotate(n=Count("pk"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("-n")[:10]
    )
    users = list(records.exclude(user=None).values("user").annotate(n=Count("pk")).order_by("-n")[:10])
    codes = list(records.filter(status="error").values("error_code").annotate(n=Count("pk")))
    latencies = list(records.values_list("latency_ms", flat=True))
    ttfts = [ms for ms in records.exclude(ttft_ms=None).values_list("ttft_ms", flat=True) if ms is not None]
    return {
        "requests": sum(row["n"] for row in per_day),
        "per_day": per_day,
        "keys": keys,
        "users": users,
        "codes": codes,
        "latency_p50": p(latencies, 50),
        "latency_p95": p(latencies, 95),
        "ttft_p50": p(ttfts, 50),
        "ttft_p95": p(ttfts, 95),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--overhead-batches", type=int, default=40)
    parser.add_argument("--database-url", default=None, help="a PostgreSQL URL (default: SQLite in a new DATA_DIR)")
    args = parser.parse_args()

    setup(args.database_url)
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from chat import usage
    from chat.models import UsageDaily, UsageLatency, UsageRecord
    from chat.selectors import usage_dashboard
    from console.models import Project
    from tests.factories import add_member, make_user

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    print(f"database: {connection.vendor}, {args.records:,} records over {DAYS} days", flush=True)
    admin = make_user("bench-admin")
    project = Project.objects.create(name="bench")
    add_member(project=project, user=admin, role="admin")
    keys, users = people(project, admin, users=20, keys=50)

    plain, rolled = writer_overhead(args.overhead_batches, keys)
    print(
        f"writer, per {usage.BATCH_SIZE}-record batch: plain insert {plain * 1000:.1f} ms, "
        f"with rollups {rolled * 1000:.1f} ms ({rolled / plain:.2f}x)",
        flush=True,
    )

    if args.records == 0:
        return 0
    took = write_records(Generator(project.pk, keys, users, seed=1), args.records)
    print(f"wrote {args.records:,} records in {took:.0f} s ({args.records / took:,.0f}/s, records and rollups)")
    print(
        f"rollup rows: {UsageDaily.objects.filter(project=project).count():,} daily, "
        f"{UsageLatency.objects.filter(project=project).count():,} latency buckets"
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    client = Client()
    client.force_login(admin)
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    ranges = {
        "30 days (default)": (today - timedelta(days=DAYS - 1), today),
        "366 days": (today - timedelta(days=365), today),
    }
    results: dict[str, list[float]] = {}
    for label, (since, until) in ranges.items():
        url = f"/operations/?since={since.isoformat()}&until={until.isoformat()}"

        def render(url: str = url) -> None:
            response = client.get(url)
            assert response.status_code == 200, response.status_code

        render()  # warm: templates compiled, the session read once
        results[label] = timed(render, args.renders)
    since, until = ranges["30 days (default)"]
    board = usage_dashboard(project=project, since=since, until=until)
    base_times = timed(lambda: baseline(project, since, until), args.baseline_runs)
    exact = baseline(project, since, until)
    # The rollups count what the records hold (every record, unless the run crossed a midnight).
    assert board.total.requests == exact["requests"], (board.total.requests, exact["requests"])
    written = UsageRecord.objects.filter(project=project).count()

    log_queries = {
        "first page": "",
        "page 100": "?page=100",
        "a common model": "?model=gpt-4o",
        "a rare model": "?model=glm-4",
        "no such model": "?model=none-such",
        "the busiest key": "?key=key-0",
        "failed calls": "?status=error",
        "one door": "?dialect=pangu",
        "one day": f"?since={today.isoformat()}&until={today.isoformat()}",
    }
    log_times = {label: timed(partial(client.get, f"/usage/{query}"), 3) for label, query in log_queries.items()}

    print(f"\n{exact['requests']:,} of the {written:,} records on the default range's days")
    print(f"{'':28} {'p50':>9} {'p95':>9}")
    for label, times in results.items():
        print(f"/operations/ {label:15} {p(times, 50) * 1000:7.0f} ms {p(times, 95) * 1000:7.0f} ms")
    base = statistics.median(base_times)
    print(f"baseline from the records    {base * 1000:7.0f} ms (median of {len(base_times)})")
    default = p(results["30 days (default)"], 50)
    print(f"rollups vs records: {base / default:.0f}x faster; goal < 300 ms: {'met' if default < 0.3 else 'NOT met'}")
    for kind in ("latency", "ttft"):
        for q in (50, 95):
            got, want = getattr(board.total, f"{kind}_p{q}"), exact[f"{kind}_p{q}"]
            print(f"{kind} p{q}: dashboard {got:.1f} ms, exact {want:.1f} ms ({(got / want - 1) * 100:+.2f} %)")
    print(
        "usage log (/usage/), median of 3: "
        + ", ".join(f"{label} {statistics.median(times) * 1000:.0f} ms" for label, times in log_times.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
