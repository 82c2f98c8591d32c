"""Attacks on the usage log, its CSV export and the operations dashboard (issue 14): reading calls
without the role, reading another project's, smuggling spreadsheet formulas into the export, and
query parameters that try to break the pages."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Generator, Iterator
from typing import Any, cast

import httpx
import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from chat import selectors as chat_selectors
from chat import usage
from chat.models import UsageRecord
from console import services as console_services
from console.models import ApiKey, AuditEvent
from console.throttle import ExportSlot
from tests.conftest import Persona, wait_until
from tests.factories import add_member, make_user

PAGES = ("/usage/", "/usage/export.csv", "/operations/")


def _call(persona: Persona, request_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "project_id": persona.project.pk,
        "user_id": persona.user.pk,
        "model_name": "gpt-a",
        "dialect": "openai",
        "mode": "chat",
        "status": "ok",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "latency_ms": 120.0,
        "request_id": request_id,
        "created_at": timezone.now(),
        **fields,
    }


@pytest.fixture
def calls(alice: Persona, bob: Persona) -> dict[str, Any]:
    """Alice's project: her calls with her key "ci-bot" on the model "secret-model", a member's (mia)
    one call; bob's project: one call of his own."""
    mia = make_user("mia")
    add_member(project=alice.project, user=mia)
    key = console_services.api_key_create(user=alice.user, project=alice.project, name="ci-bot")[0]
    mias = Persona(user=mia, project=alice.project)
    records = [
        _call(alice, "alice-1", api_key_id=key.pk, model_name="secret-model"),
        _call(alice, "alice-2", api_key_id=key.pk, model_name="secret-model", status="error", error_code="X"),
        _call(mias, "mia-1"),
        _call(bob, "bob-1"),
    ]
    assert usage._write_records(records) == (0, [])
    return {"mia": mia, "key": key}


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _csv_ids(response: Any) -> list[str]:
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    return [row["request_id"] for row in csv.DictReader(io.StringIO(body))]


def _log_ids(response: Any) -> list[str]:
    assert response.status_code == 200
    return [r.request_id for r in response.context["page"]]


def test_a_member_reads_and_exports_only_their_own_calls_whatever_the_filters(calls: dict[str, Any]) -> None:
    client = _client(calls["mia"])
    key = calls["key"]
    # A filter naming alice's key or model finds nothing; a parameter naming alice is no filter at all.
    for query, expected in (
        ("", ["mia-1"]),
        ("?key=ci-bot", []),
        (f"?key={key.prefix}", []),
        ("?model=secret-model", []),
        (f"?user={key.user_id}", ["mia-1"]),
        (f"?user_id={key.user_id}&api_key={key.pk}", ["mia-1"]),
    ):
        assert _log_ids(client.get(f"/usage/{query}")) == expected, query
        assert _csv_ids(client.get(f"/usage/export.csv{query}")) == expected, query
    response = client.get("/operations/")
    assert response.status_code == 403
    assert "secret-model" not in response.content.decode()


def test_operators_get_403_on_the_log_the_export_and_the_dashboard(alice: Persona, calls: dict[str, Any]) -> None:
    operator = make_user("otto")
    add_member(project=alice.project, user=operator, role="operator")
    client = _client(operator)
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 403, path
        assert "alice-1" not in response.content.decode() and "secret-model" not in response.content.decode()
    nav = client.get("/forecasts/").content.decode()
    assert 'href="/usage/"' not in nav and 'href="/operations/"' not in nav


def test_another_projects_admin_sees_nothing_of_this_project(
    alice: Persona, bob: Persona, calls: dict[str, Any]
) -> None:
    client = _client(bob.user)
    key = calls["key"]
    # Alice's key and model named in the filters, and her project named in the query: bob's own only.
    for query in (f"?key={key.prefix}", "?key=ci-bot", "?model=secret-model", f"?project={alice.project.pk}"):
        expected = ["bob-1"] if query.startswith("?project") else []
        assert _log_ids(client.get(f"/usage/{query}")) == expected, query
        assert _csv_ids(client.get(f"/usage/export.csv{query}")) == expected, query
    response = client.get(f"/operations/?project={alice.project.pk}")
    assert response.status_code == 200
    assert response.context["usage"].total.requests == 1  # bob's one call
    assert [m.name for m in response.context["usage"].models] == ["gpt-a"]
    assert "secret-model" not in response.content.decode() and "ci-bot" not in response.content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(calls: dict[str, Any]) -> None:
    client = Client()
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/accounts/login/"), path


@pytest.mark.parametrize("name", ['=HYPERLINK("http://evil")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_come_out_of_the_export_as_text(alice: Persona, name: str) -> None:
    """A model name an API caller sent and a key name a member typed reach an admin's spreadsheet as
    text: a leading quote stops a formula from running (OWASP's CSV injection advice)."""
    key = console_services.api_key_create(user=alice.user, project=alice.project, name=name)[0]
    stored = ApiKey.objects.get(pk=key.pk).name  # the form strips surrounding blanks ("\tx" is "x")
    assert usage._write_records([_call(alice, "f-1", api_key_id=key.pk, model_name=name)]) == (0, [])
    response: Any = _client(alice.user).get("/usage/export.csv")
    row = next(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert row["model"] == "'" + name
    assert row["api_key"] == (stored if stored == "x" else "'" + stored)


LONG = "x" * 10_000


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize(
    "query",
    [
        "?since=99999-01-01",
        "?since=0000-00-00&until=",
        "?until=9999-12-31",
        "?since=0001-01-01&until=9999-12-31",
        "?page=-1",
        "?page=abc",
        "?page=99999999999999999999999",
        f"?model={LONG}",
        f"?key={LONG}",
        "?key=%00",
        "?model=%00",
        "?status=pwned&dialect=../../etc",
        "?since=2026-01-01&since=2026-02-01",
    ],
)
def test_garbage_in_the_query_is_a_clear_answer_not_a_500(alice: Persona, calls: Any, path: str, query: str) -> None:
    response = _client(alice.user).get(path + query)
    assert response.status_code in (200, 400), (path, query, response.status_code)
    if path == "/usage/export.csv" and response.status_code == 400:
        assert response.content.decode().startswith("The filters are not valid:")


@pytest.mark.parametrize("path", PAGES)
def test_other_methods_and_bodies_are_refused(alice: Persona, calls: Any, path: str) -> None:
    """The pages only read: a POST, PUT or DELETE with a body of garbage sends an anonymous client to
    sign in and gets a signed-in one 405, and the records stay as they were."""
    before = UsageRecord.objects.count()
    for client, status in ((Client(), 302), (_client(alice.user), 405)):
        for method in ("post", "put", "delete"):
            response = getattr(client, method)(path, data=b"\x00\xff" * 1000, content_type="application/json")
            assert response.status_code == status, (path, method, response.status_code)
    assert UsageRecord.objects.count() == before == 4


@pytest.mark.parametrize(
    "query",
    [
        '?since="><script>alert(1)</script>',
        "?model=%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E&since=bad",
        "?since=2026-05-02&until=2026-05-01&next=https://evil.example/",
        "?until=javascript:alert(1)",
    ],
)
def test_the_refusal_page_reflects_the_query_only_escaped_and_links_only_to_the_usage_log(
    alice: Persona, calls: Any, query: str
) -> None:
    """Attacker: a link to an export with a crafted query, sent to a signed-in user, hoping the page
    that explains the refusal echoes it as markup or turns its link into a redirect elsewhere. The
    page shows the query only URL-encoded and HTML-escaped, and its one link goes to the usage log."""
    response = _client(alice.user).get("/usage/export.csv" + query, headers={"Accept": "text/html"})
    assert (response.status_code, response["Content-Type"]) == (400, "text/html; charset=utf-8")
    html = response.content.decode()
    assert "<script>alert" not in html and "<img src=x" not in html and 'href="javascript' not in html
    back = re.findall(r'<a href="([^"]*)">Back to the usage log</a>', html)
    assert len(back) == 1 and back[0].startswith("/usage/?"), back


BUSY = "An export of yours is still being downloaded. Wait until it has finished, then try again."


def test_one_export_at_a_time_per_user(alice: Persona, calls: dict[str, Any]) -> None:
    """Attacker: a signed-in user who starts export after export, each a read of their whole reach
    (a million records is some 500 queries), to spend the database's time. Before the fix every one
    ran at once. Now, while an export of theirs is under way (in any web process: the slot is in the
    shared cache), another is a 429 with Retry-After and no audit entry; another user's export is not
    held up; the slot is free again once the download has finished. The served path (two downloads
    at once, and a client that hangs up mid-stream) is the test below."""
    admin = _client(alice.user)
    under_way = ExportSlot.take(user_id=alice.user.pk)
    for query in ("", "?model=gpt-a", "?status=error"):
        refused = admin.get("/usage/export.csv" + query)
        assert (refused.status_code, refused["Retry-After"], refused.content.decode()) == (429, "5", BUSY)
    assert AuditEvent.objects.filter(action="usage.export").count() == 0
    assert _csv_ids(_client(calls["mia"]).get("/usage/export.csv")) == ["mia-1"]  # another user's goes ahead
    under_way.release()
    assert sorted(_csv_ids(admin.get("/usage/export.csv"))) == ["alice-1", "alice-2", "mia-1"]
    assert len(_csv_ids(admin.get("/usage/export.csv"))) == 3  # a finished download let the slot go
    assert AuditEvent.objects.filter(action="usage.export", actor=alice.user).count() == 2


def test_an_export_abandoned_mid_stream_frees_the_slot_on_the_asgi_server(
    transactional_db: None, console_url: str, alice: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The served path: the export streams from a database thread, and a client that hangs up mid-way
    must not keep its user's slot (nor the thread) busy. A slow endless export stands in for a
    million records."""
    real = chat_selectors.usage_csv
    pieces_read: list[int] = []

    def endless(*, records: Any) -> Iterator[str]:
        yield "header\n"
        for n in range(400):  # twenty seconds at most, should the hang-up go unnoticed
            time.sleep(0.05)
            pieces_read.append(n)
            yield f"row {n}\n"

    monkeypatch.setattr(chat_selectors, "usage_csv", endless)
    admin = _client(alice.user)
    cookies = {settings.SESSION_COOKIE_NAME: admin.cookies[settings.SESSION_COOKIE_NAME].value}
    with httpx.Client(base_url=console_url, cookies=cookies, timeout=10) as http:
        with http.stream("GET", "/usage/export.csv") as first:
            assert first.status_code == 200
            # Kept referenced: a dropped line iterator is closed at once, and closing it hangs up the
            # connection (httpcore closes a half-read response), which frees the slot, rightly.
            lines = cast(Generator[str, None, None], first.iter_lines())
            assert next(lines) == "header"
            refused = http.get("/usage/export.csv")
            assert (refused.status_code, refused.headers["Retry-After"], refused.text) == (429, "5", BUSY)
            assert next(lines).startswith("row ")  # the first download goes on meanwhile
            lines.close()  # the client hangs up mid-stream
        monkeypatch.setattr(chat_selectors, "usage_csv", real)

        def export_once_free() -> httpx.Response | None:
            answer = http.get("/usage/export.csv")
            return None if answer.status_code == 429 else answer

        again = wait_until(export_once_free, timeout=5, every=0.05)
        assert again is not None, "the slot was not freed within 5 s of the hang-up"
        assert (again.status_code, again.text.splitlines()[0].split(",")[0]) == (200, "created_at")
    settled = len(pieces_read)
    time.sleep(0.3)
    assert len(pieces_read) == settled < 400  # the abandoned export stopped reading
