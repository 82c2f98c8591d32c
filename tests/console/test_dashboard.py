"""The operations dashboard (issue 14): every figure equals what plain Python sums from the records
the test wrote (through the usage writer's own database write, which keeps the rollups), the
percentiles within the documented bucket error of the exact ones, a pinned number of queries, the
CSV export byte for byte, and who may see what."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from chat import rollups, usage
from chat.models import QuotaCounter, UsageDaily, UsageLatency, UsageRecord
from console import services as console_services
from console.models import ApiKey
from forecasts.models import ForecastJob, JobState
from models_registry.models import QuotaPeriod
from tests.conftest import Persona
from tests.factories import add_member, make_user
from tests.models_registry.factories import make_provider

MODELS = ["gpt-a", "gpt-b", "pangu-c"]
CODES = ["QUOTA_EXCEEDED", "UPSTREAM_TIMEOUT", "MODEL_NOT_SUPPORTED"]


def local_day(at: datetime) -> date:
    return at.astimezone(ZoneInfo(timezone.get_default_timezone_name())).date()


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


@dataclass
class World:
    alice: Persona
    mia: User  # a member of alice's project
    keys: list[ApiKey]
    records: list[dict[str, Any]]  # alice's project's, as written
    since: date
    until: date

    def inside(self) -> list[dict[str, Any]]:
        return [r for r in self.records if self.since <= local_day(r["created_at"]) <= self.until]


def make_records(
    persona: Persona, keys: list[ApiKey], users: list[User], *, count: int, seed: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = timezone.now()
    records = []
    for n in range(count):
        # Key weights 6:3:1 and a share without key (the playground): distinct totals per key.
        key = rng.choices([*keys, None], weights=[*[6, 3, 1][: len(keys)], 2])[0]
        user = key.user if key is not None else rng.choice(users)
        status = rng.choices(["ok", "error", "cancelled"], weights=[80, 15, 5])[0]
        stream = rng.random() < 0.5
        prompt, completion = rng.randint(1, 900), rng.randint(0, 400) if status == "ok" else 0
        code = rng.choice(CODES) if status == "error" else ""
        records.append(
            {
                "project_id": persona.project.pk,
                "api_key_id": key.pk if key else None,
                "user_id": user.pk,
                "model_name": rng.choice(MODELS),
                "dialect": "playground" if key is None else rng.choice(["openai", "pangu", "cloudbase"]),
                "mode": "chat",
                "stream": stream,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "latency_ms": round(rng.uniform(5, 8000), 2),
                "ttft_ms": round(rng.uniform(2, 900), 2) if stream and status == "ok" else None,
                "status": status,
                "http_status": 200 if status != "error" else rng.choice([429, 504, 404]),
                "error_code": code,
                "request_id": f"req-{seed}-{n:05d}",
                # Over the last 8 days, so the range below leaves some out at both ends.
                "created_at": now - timedelta(seconds=rng.randint(0, 8 * 86400)),
            }
        )
    return records


def write(records: list[dict[str, Any]]) -> None:
    """The usage writer's database side: the records and their rollups, in batches as it writes them."""
    for start in range(0, len(records), usage.BATCH_SIZE):
        assert usage._write_records(records[start : start + usage.BATCH_SIZE]) == (0, [])


@pytest.fixture
def world(alice: Persona, bob: Persona) -> World:
    mia = make_user("mia")
    add_member(project=alice.project, user=mia)
    keys = [
        console_services.api_key_create(user=owner, project=alice.project, name=name)[0]
        for owner, name in ((alice.user, "ci-bot"), (mia, "notebook"), (alice.user, "=cmd|' /C calc'!A0"))
    ]
    records = make_records(alice, keys, [alice.user, mia], count=900, seed=14)
    write(records)
    # Bob's project's calls on the same days: never part of alice's figures.
    bob_key = console_services.api_key_create(user=bob.user, project=bob.project, name="bob-key")[0]
    write(make_records(bob, [bob_key], [bob.user], count=200, seed=15))
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    return World(alice, mia, keys, records, since=today - timedelta(days=5), until=today - timedelta(days=1))


def page(client: Client, query: str = "") -> Any:
    response = client.get(f"/operations/{query}")
    assert response.status_code == 200
    return response


def charts(response: Any) -> dict[str, Any]:
    found = re.search(r'<script id="operations-data" type="application/json">(.*?)</script>', response.content.decode())
    assert found is not None
    return json.loads(found.group(1))


def test_every_figure_equals_the_records_sums(world: World, client: Client) -> None:
    client.force_login(world.alice.user)
    response = page(client, f"?since={world.since}&until={world.until}")
    board, data = response.context["usage"], charts(response)
    inside = world.inside()
    assert 300 < len(inside) < len(world.records)  # the range leaves records out on both sides

    assert board.total.requests == len(inside)
    assert board.total.errors == sum(r["status"] == "error" for r in inside)
    assert board.total.cancelled == sum(r["status"] == "cancelled" for r in inside)
    assert board.total.prompt_tokens == sum(r["prompt_tokens"] for r in inside)
    assert board.total.completion_tokens == sum(r["completion_tokens"] for r in inside)
    assert f'id="total-requests">{len(inside)}<' in response.content.decode()

    days = [world.since + timedelta(days=n) for n in range(5)]
    assert data["days"] == [d.isoformat() for d in days]
    expected: dict[str, dict[str, list[int]]] = {}
    for name in MODELS:
        mine = [r for r in inside if r["model_name"] == name]
        expected[name] = {
            "requests": [sum(local_day(r["created_at"]) == d for r in mine) for d in days],
            "errors": [sum(local_day(r["created_at"]) == d and r["status"] == "error" for r in mine) for d in days],
            "prompt_tokens": [sum(r["prompt_tokens"] for r in mine if local_day(r["created_at"]) == d) for d in days],
            "completion_tokens": [
                sum(r["completion_tokens"] for r in mine if local_day(r["created_at"]) == d) for d in days
            ],
        }
    assert data["models"] == expected
    assert [(m.name, m.requests) for m in board.models] == sorted(
        ((n, sum(r["model_name"] == n for r in inside)) for n in MODELS), key=lambda item: (-item[1], item[0])
    )

    codes = Counter(r["error_code"] for r in inside if r["status"] == "error")
    assert data["codes"] == [[code, n] for code, n in sorted(codes.items(), key=lambda c: (-c[1], c[0]))]

    per_key: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    per_user: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in inside:
        for table, who in ((per_key, r["api_key_id"]), (per_user, r["user_id"])):
            if who is not None:
                table[who][0] += 1
                table[who][1] += r["prompt_tokens"] + r["completion_tokens"]
                table[who][2] += r["status"] == "error"
    labels = {k.pk: f"{k.name} ({k.prefix}…)" for k in world.keys}
    assert [(t.label, t.requests, t.tokens, t.errors) for t in board.top_keys] == [
        (labels[pk], *sums) for pk, sums in sorted(per_key.items(), key=lambda item: -item[1][0])
    ]
    names = {world.alice.user.pk: "alice", world.mia.pk: "mia"}
    assert [(t.label, t.requests, t.tokens, t.errors) for t in board.top_users] == [
        (names[pk], *sums) for pk, sums in sorted(per_user.items(), key=lambda item: -item[1][0])
    ]


def test_models_and_keys_link_to_their_calls_in_the_usage_log(world: World, client: Client) -> None:
    """Each model's and key's row links to the usage log filtered to it on the same days, where the
    count of calls is the dashboard's figure."""
    client.force_login(world.alice.user)
    days = f"since={world.since.isoformat()}&until={world.until.isoformat()}"
    response = page(client, f"?{days}")
    html = response.content.decode()
    inside = world.inside()
    for name in MODELS:
        link = f"/usage/?model={name}&{days}"
        assert f'href="{link.replace("&", "&amp;")}"' in html, name
        listed = client.get(link).context["page"].paginator
        assert listed.count == sum(r["model_name"] == name for r in inside), name
    for key in world.keys:
        link = f"/usage/?key={quote(key.prefix)}&{days}"
        assert f'href="{link.replace("&", "&amp;")}"' in html, key.name
        listed = client.get(link).context["page"].paginator
        assert listed.count == sum(r["api_key_id"] == key.pk for r in inside), key.name


def test_percentiles_are_within_the_buckets_error_of_the_exact_ones(world: World, client: Client) -> None:
    client.force_login(world.alice.user)
    response = page(client, f"?since={world.since}&until={world.until}")
    board, data = response.context["usage"], charts(response)
    inside = world.inside()
    bound = 2 ** (1 / 16) - 1
    assert rollups.MAX_RELATIVE_ERROR == pytest.approx(bound)

    checked = 0
    for who, rows in [("", inside), *((m, [r for r in inside if r["model_name"] == m]) for m in MODELS)]:
        row = board.total if who == "" else next(m for m in board.models if m.name == who)
        latencies = [r["latency_ms"] for r in rows]
        ttfts = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
        for estimate, values, p in (
            (row.latency_p50, latencies, 50),
            (row.latency_p95, latencies, 95),
            (row.ttft_p50, ttfts, 50),
            (row.ttft_p95, ttfts, 95),
        ):
            exact = nearest_rank(values, p)
            assert abs(estimate / exact - 1) <= bound, (who, p, estimate, exact)
            checked += 1
    assert checked == 16
    for n, day in enumerate(world.since + timedelta(days=d) for d in range(5)):
        latencies = [r["latency_ms"] for r in inside if local_day(r["created_at"]) == day]
        assert abs(data["percentiles"]["latency_p95"][n] / nearest_rank(latencies, 95) - 1) <= bound


def test_the_bucket_estimate_at_its_edges() -> None:
    # Hand-worked: with 8 buckets per doubling, 100 ms lies in bucket 1 + floor(8 * log2(100)) = 54,
    # [2^(53/8), 2^(54/8)) = [98.70, 107.63) ms, reported as 2^(53.5/8) = 103.07 ms.
    assert rollups.bucket_of(100.0) == 54
    assert rollups.bucket_value(54) == pytest.approx(103.07, abs=0.01)
    assert rollups.bucket_of(0.4) == 0 and rollups.bucket_value(0) == 0.5
    assert rollups.bucket_of(float("nan")) == 0
    assert rollups.bucket_of(1e12) == rollups.LAST_BUCKET
    # Nearest rank: of 20 calls, p95 is the 19th; p50 the 10th.
    counts = {10: 9, 20: 1, 30: 9, 40: 1}
    assert rollups.percentile(counts, 50) == rollups.bucket_value(20)
    assert rollups.percentile(counts, 95) == rollups.bucket_value(30)
    assert rollups.percentile({}, 50) is None


def test_the_query_count_does_not_grow_with_the_records(
    world: World, client: Client, django_assert_num_queries: Any
) -> None:
    client.force_login(world.alice.user)
    query = f"?since={world.since}&until={world.until}"
    # Session and user, membership, navigation's projects; model rows, latency by model and by day,
    # keys/users/codes, key labels, user labels; providers, quota counters; forecast jobs.
    with django_assert_num_queries(12):
        page(client, query)
    write(make_records(world.alice, world.keys, [world.mia], count=600, seed=16))
    with django_assert_num_queries(12):
        page(client, query)


def test_days_are_counted_in_the_server_time_zone(alice: Persona, client: Client, settings: Any) -> None:
    settings.TIME_ZONE = "Asia/Shanghai"  # UTC+8
    late = datetime(2026, 3, 1, 17, 30, tzinfo=UTC)  # 01:30 on 2 March in Shanghai
    early = datetime(2026, 3, 1, 15, 30, tzinfo=UTC)  # 23:30 on 1 March
    base = {"project_id": alice.project.pk, "model_name": "m", "dialect": "openai", "mode": "chat", "status": "ok"}
    write(
        [
            {**base, "request_id": "a", "created_at": late, "prompt_tokens": 5, "latency_ms": 10.0},
            {**base, "request_id": "b", "created_at": early, "prompt_tokens": 7, "latency_ms": 10.0},
        ]
    )
    client.force_login(alice.user)
    data = charts(page(client, "?since=2026-03-01&until=2026-03-02"))
    assert data["models"]["m"]["prompt_tokens"] == [7, 5]


def test_a_record_the_database_refuses_is_not_counted(alice: Persona) -> None:
    base = {"project_id": alice.project.pk, "model_name": "m", "dialect": "openai", "mode": "chat", "status": "ok"}
    left_out, refused = usage._write_records(
        [
            {**base, "request_id": "a", "prompt_tokens": 3, "latency_ms": 20.0},
            {**base, "request_id": "b", "prompt_tokens": -1, "latency_ms": 20.0},  # a CHECK refuses it
            {**base, "request_id": "c", "prompt_tokens": 4, "latency_ms": 20.0},
        ]
    )
    assert (left_out, [r["request_id"] for r in refused]) == (0, ["b"])
    row = UsageDaily.objects.get(project=alice.project, dimension="model", name="m")
    assert (row.requests, row.prompt_tokens) == (2, 7)
    assert sum(UsageLatency.objects.filter(project=alice.project, kind="latency").values_list("count", flat=True)) == 2


def test_the_backfill_rebuilds_what_the_writer_keeps(world: World) -> None:
    def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        daily = UsageDaily.objects.order_by("project", "day", "dimension", "name").values_list(
            "project",
            "day",
            "dimension",
            "name",
            "requests",
            "errors",
            "cancelled",
            "prompt_tokens",
            "completion_tokens",
        )
        latency = UsageLatency.objects.order_by("project", "day", "model_name", "kind", "bucket").values_list(
            "project", "day", "model_name", "kind", "bucket", "count"
        )
        return list(daily), list(latency)

    kept = snapshot()
    UsageDaily.objects.all().delete()
    UsageLatency.objects.all().delete()
    counted = rollups.backfill(record_model=UsageRecord, daily_model=UsageDaily, latency_model=UsageLatency, batch=97)
    assert counted == UsageRecord.objects.count() == 1100
    assert snapshot() == kept


def test_quota_bars_show_the_current_period(alice: Persona, bob: Persona, client: Client) -> None:
    monthly = make_provider(
        project=alice.project, slug="monthly", name="Monthly", token_quota=10_000, quota_period=QuotaPeriod.MONTHLY
    )
    make_provider(project=alice.project, slug="total", name="Total", token_quota=500)
    make_provider(project=alice.project, slug="free", name="Unlimited")  # no quota: no bar
    make_provider(project=bob.project, slug="bobs", name="Bob's", token_quota=99)
    month = timezone.now().strftime("%Y-%m")
    QuotaCounter.objects.create(provider=monthly, period=month, used=2_500, reserved=500)
    QuotaCounter.objects.create(provider=monthly, period="2001-01", used=9_999)  # a past month
    client.force_login(alice.user)
    data = charts(page(client))
    assert data["quotas"] == [
        {"provider": "Monthly", "period": month, "used": 2500, "reserved": 500, "left": 7000},
        {"provider": "Total", "period": "total", "used": 0, "reserved": 0, "left": 500},
    ]
    assert "7000 of 10000 (70 %)" in page(client).content.decode()


def test_forecast_jobs_by_state_and_their_durations(alice: Persona, client: Client) -> None:
    start = timezone.now() - timedelta(days=2)

    def job(state: str, waited: float | None, ran: float | None, *, created: datetime = start) -> None:
        started = created + timedelta(seconds=waited) if waited is not None else None
        finished = started + timedelta(seconds=ran) if started is not None and ran is not None else None
        ForecastJob.objects.create(
            project=alice.project, name="j", engine="e", state=state, input={}, output={}, config={},
            created_at=created, started_at=started, finished_at=finished,
        )  # fmt: skip

    for waited, ran in ((10, 100), (20, 300), (30, 200), (5, 50)):
        job(JobState.SUCCEEDED, waited, ran)
    job(JobState.FAILED, 40, 7)
    job(JobState.RUNNING, 15, None)
    job(JobState.PENDING, None, None)
    job(JobState.SUCCEEDED, 1, 1, created=start - timedelta(days=60))  # outside the range
    client.force_login(alice.user)
    jobs = page(client).context["jobs"]
    assert jobs.by_state == [
        ("PENDING", "Waiting for a worker", 1),
        ("RUNNING", "Running", 1),
        ("SUCCEEDED", "Finished", 4),
        ("FAILED", "Failed", 1),
        ("CANCELLED", "Cancelled", 0),
    ]
    rows = [(d.label, d.count, d.p50, d.p95, d.longest) for d in jobs.durations]
    # Waits 5, 10, 15, 20, 30, 40: p50 is the 3rd (15), p95 the 6th (40).
    assert rows == [
        ("Waiting for a worker", 6, 15.0, 40.0, 40.0),
        ("Running, then finished", 4, 100.0, 300.0, 300.0),
        ("Running, then failed", 1, 7.0, 7.0, 7.0),
        ("Running, then cancelled", 0, None, None, None),
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?since=2026-05-02&until=2026-05-01", "“From” must be on or before “To”."),
        ("?since=2020-01-01&until=2026-01-01", "Pick at most 366 days."),
        ("?since=9999-12-01&until=9999-12-31", "Pick a day before the year 9999 ends."),
        ("?since=yesterday", "Enter a valid date."),
    ],
)
def test_a_bad_range_is_said_and_the_last_30_days_shown(
    alice: Persona, client: Client, query: str, message: str
) -> None:
    client.force_login(alice.user)
    response = page(client, query)
    assert message in response.content.decode()
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    assert (response.context["since"], response.context["until"]) == (today - timedelta(days=29), today)


def test_the_navigation_offers_the_dashboard_to_admins_only(world: World, client: Client) -> None:
    client.force_login(world.alice.user)
    assert 'href="/operations/"' in client.get("/").content.decode()
    client.force_login(world.mia)
    assert 'href="/operations/"' not in client.get("/").content.decode()


# --- the CSV export ---------------------------------------------------------------------------------
def streamed(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


def test_the_csv_export_exactly(alice: Persona, client: Client) -> None:
    key = console_services.api_key_create(user=alice.user, project=alice.project, name="=HYPERLINK(1)")[0]
    at = datetime(2026, 4, 2, 10, 0, 0, 123456, tzinfo=UTC)
    base = {"project_id": alice.project.pk, "dialect": "openai", "mode": "chat"}
    r1 = {"request_id": "r1", "created_at": at, "model_name": "gpt-a", "api_key_id": key.pk, "user_id": alice.user.pk}
    r2 = {"request_id": "r2", "created_at": at + timedelta(minutes=1), "model_name": "", "user_id": alice.user.pk}
    r3 = {"request_id": "r3", "created_at": at + timedelta(days=1), "model_name": "gpt-a"}
    write(
        [
            {**base, **r1, "stream": True, "status": "ok", "prompt_tokens": 12, "completion_tokens": 30,
             "total_tokens": 42, "latency_ms": 812.5, "ttft_ms": 95.25},
            {**base, **r2, "dialect": "playground", "status": "error", "http_status": 429,
             "error_code": "QUOTA_EXCEEDED", "usage_estimated": True, "latency_ms": 3.0},
            {**base, **r3, "status": "ok", "latency_ms": 1.0},
        ]
    )  # fmt: skip
    client.force_login(alice.user)
    response = client.get("/usage/export.csv?since=2026-04-02&until=2026-04-02")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="usage-{alice.project.pk}.csv"'
    body = streamed(response)
    assert body == (
        "created_at,request_id,model,api_key,api_key_prefix,user,dialect,mode,stream,status,http_status,error_code,"
        "prompt_tokens,completion_tokens,total_tokens,usage_estimated,latency_ms,ttft_ms\r\n"
        "2026-04-02T10:01:00.123456+00:00,r2,,,,alice,playground,chat,False,error,429,QUOTA_EXCEEDED,0,0,0,True,3.0,\r\n"
        f"2026-04-02T10:00:00.123456+00:00,r1,gpt-a,'=HYPERLINK(1),{key.prefix},alice,openai,chat,True,ok,200,,"
        "12,30,42,False,812.5,95.25\r\n"
    )


def test_the_csv_export_pages_through_every_record_once(world: World, client: Client, monkeypatch: Any) -> None:
    from chat import selectors

    monkeypatch.setattr(selectors, "CSV_CHUNK", 7)  # many pieces, and records sharing a created_at below
    same = world.records[0]["created_at"]
    base = {
        "project_id": world.alice.project.pk,
        "model_name": "m",
        "dialect": "openai",
        "mode": "chat",
        "status": "ok",
    }
    write([{**base, "request_id": f"same-{n}", "created_at": same, "latency_ms": 1.0} for n in range(10)])
    client.force_login(world.alice.user)
    rows = list(csv.DictReader(io.StringIO(streamed(client.get("/usage/export.csv")))))
    assert sorted(r["request_id"] for r in rows) == sorted(
        [r["request_id"] for r in world.records] + [f"same-{n}" for n in range(10)]
    )
    # A member exports their own calls only, with the usage log's filters.
    client.force_login(world.mia)
    rows = list(csv.DictReader(io.StringIO(streamed(client.get("/usage/export.csv?status=error")))))
    assert sorted(r["request_id"] for r in rows) == sorted(
        r["request_id"] for r in world.records if r["user_id"] == world.mia.pk and r["status"] == "error"
    )


def test_the_csv_export_refuses_bad_filters_in_words(alice: Persona, client: Client) -> None:
    client.force_login(alice.user)
    response = client.get("/usage/export.csv?since=2026-05-02&until=2026-05-01")
    assert response.status_code == 400
    assert response.content.decode() == "The filters are not valid: “From” must be on or before “To”."


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_browser_whose_export_is_refused_gets_a_page_with_the_way_back(alice: Persona, client: Client) -> None:
    """The CSV link opens in the browser's tab: a refusal there is a console page with the reason and
    a link back to the usage log with the same filters; a script (no text/html asked for) gets the
    sentence alone, as above."""
    from console.throttle import ExportSlot

    client.force_login(alice.user)
    bad = client.get("/usage/export.csv?since=2026-05-02&until=2026-05-01&status=error", headers=BROWSER)
    assert (bad.status_code, bad["Content-Type"]) == (400, "text/html; charset=utf-8")
    html = bad.content.decode()
    assert '<p id="export-refused">The filters are not valid: “From” must be on or before “To”.</p>' in html
    assert '<a href="/usage/?since=2026-05-02&amp;until=2026-05-01&amp;status=error">Back to the usage log</a>' in html
    under_way = ExportSlot.take(user_id=alice.user.pk)
    busy = client.get("/usage/export.csv", headers=BROWSER)
    under_way.release()
    assert (busy.status_code, busy["Retry-After"], busy["Content-Type"]) == (429, "5", "text/html; charset=utf-8")
    html = busy.content.decode()
    assert (
        '<p id="export-refused">An export of yours is still being downloaded. Wait until it has finished, then try'
        " again.</p>" in html
    )
    assert '<a href="/usage/">Back to the usage log</a>' in html


def test_the_last_day_there_is_is_no_error(alice: Persona, client: Client) -> None:
    client.force_login(alice.user)
    assert client.get("/usage/?until=9999-12-31").status_code == 200
    assert client.get("/usage/export.csv?until=9999-12-31").status_code == 200


def test_writers_in_parallel_lose_no_count(transactional_db: None) -> None:
    """Two writers (as two web processes have) adding the same rollup rows at once: the upsert adds
    in the database, so the sums are every record's (a read-then-write would lose updates)."""
    import threading

    from django.db import connection

    from tests.factories import make_project

    owner = make_user("olga")
    project = make_project(name="parallel", owner=owner)
    at = timezone.now()
    base = {"project_id": project.pk, "user_id": owner.pk, "model_name": "m", "dialect": "openai", "mode": "chat",
            "status": "ok", "prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "latency_ms": 10.0,
            "created_at": at}  # fmt: skip
    failures: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for batch in range(10):
                records = [{**base, "request_id": f"{name}-{batch}-{n}"} for n in range(50)]
                assert usage._write_records(records) == (0, [])
        except BaseException as exc:  # reported below: a thread's exception would vanish
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert UsageRecord.objects.filter(project=project).count() == 1500
    model = UsageDaily.objects.get(project=project, dimension="model", name="m")
    assert (model.requests, model.prompt_tokens, model.completion_tokens) == (1500, 3000, 4500)
    assert UsageDaily.objects.get(project=project, dimension="user", name=str(owner.pk)).requests == 1500
    buckets = UsageLatency.objects.filter(project=project, kind="latency")
    assert [(b.bucket, b.count) for b in buckets] == [(rollups.bucket_of(10.0), 1500)]
