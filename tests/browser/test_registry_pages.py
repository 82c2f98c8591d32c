from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from models_registry import services
from models_registry.models import LlmModel
from tests.browser.conftest import log_in
from tests.factories import make_project, make_user


def test_filter_the_matrix_and_switch_a_model_off_and_on(live_server, page: Page, transactional_db: None) -> None:  # type: ignore[no-untyped-def]
    alice = make_user("alice")
    project = make_project(name="alice-project", owner=alice)
    provider = services.provider_create(
        project=project, by=alice, fields={"slug": "vllm", "name": "vLLM", "kind": "openai_compatible"}
    )
    qwen = services.model_create(
        provider=provider, by=alice, fields={"name": "qwen-7b", "display_name": "Qwen 7B", "cap_finetune": True}
    )
    services.model_create(provider=provider, by=alice, fields={"name": "qwen-72b", "display_name": "Qwen 72B"})
    services.model_create(
        provider=provider, by=alice, fields={"name": "llama-8b", "display_name": "Llama 8B", "cap_finetune": True}
    )

    log_in(page, live_server.url, "alice")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    rows = page.locator("#model-matrix tbody tr[data-model-id]")
    expect(rows).to_have_count(3)

    page.get_by_label("Capability").select_option("finetune")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(2)
    expect(page.locator("#model-count")).to_contain_text("2 models")
    page.get_by_label("Search").fill("qwen")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(r"capability=finetune.*q=qwen"))

    row = page.locator(f'tr[data-model-id="{qwen.pk}"]')
    expect(row.locator("[data-state]")).to_have_text("enabled")
    url_before = page.url
    page.get_by_role("switch", name="Disable Qwen 7B").click()
    expect(row.locator("[data-state]")).to_have_text("disabled")
    expect(page.get_by_role("switch", name="Enable Qwen 7B")).to_have_attribute("aria-checked", "false")
    assert page.url == url_before  # no navigation: the row changed in place
    assert LlmModel.objects.get(pk=qwen.pk).enabled is False

    page.reload()
    expect(row.locator("[data-state]")).to_have_text("disabled")
    page.get_by_role("switch", name="Enable Qwen 7B").click()
    expect(row.locator("[data-state]")).to_have_text("enabled")
    expect(page.get_by_role("switch", name="Disable Qwen 7B")).to_be_visible()
    assert LlmModel.objects.get(pk=qwen.pk).enabled is True

    page.get_by_role("link", name="Reset").click()
    expect(rows).to_have_count(3)


def test_provider_form_shows_pangu_fields_by_kind(live_server, page: Page, transactional_db: None) -> None:  # type: ignore[no-untyped-def]
    alice = make_user("alice")
    make_project(name="alice-project", owner=alice)
    log_in(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/models/providers/")
    page.get_by_role("link", name="New provider").click()
    pangu = page.locator("#pangu-settings")
    expect(pangu).to_be_hidden()
    page.get_by_label("Kind").select_option("pangu")
    expect(pangu).to_be_visible()
    page.get_by_label("Kind").select_option("openai_compatible")
    expect(pangu).to_be_hidden()


def test_matrix_scrolls_inside_its_box_on_a_phone(live_server, browser, transactional_db: None) -> None:  # type: ignore[no-untyped-def]
    alice = make_user("alice")
    project = make_project(name="alice-project", owner=alice)
    provider = services.provider_create(
        project=project, by=alice, fields={"slug": "local", "name": "Local", "kind": "local"}
    )
    services.model_create(provider=provider, by=alice, fields={"name": "a-rather-long-model-name-for-a-phone"})
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        log_in(page, live_server.url, "alice")
        page.goto(f"{live_server.url}/models/")
        expect(page.locator("#model-matrix")).to_be_attached()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        wrap_scrolls = page.evaluate(
            "(() => { const w = document.querySelector('.table-wrap'); return w.scrollWidth > w.clientWidth; })()"
        )
        assert wrap_scrolls
    finally:
        context.close()
