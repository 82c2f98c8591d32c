from __future__ import annotations

from playwright.sync_api import Page, expect

from console import services
from console.models import ApiKey
from tests.browser.conftest import log_in
from tests.factories import make_project, make_user


def test_log_in_see_dashboard_create_key_see_it_once(live_server, page: Page, transactional_db: None) -> None:  # type: ignore[no-untyped-def]
    alice = make_user("alice")
    project = make_project(name="alice-project", owner=alice)
    base = live_server.url

    log_in(page, base, "alice")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator(".stat").first).to_have_text("alice-project")
    expect(page.locator("#project-id")).to_have_text(project.id)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    page.fill("#id_api-name", "browser-key")
    page.select_option("#id_api-expires_in_days", "30")
    page.get_by_role("button", name="Create API key").click()

    secret = page.locator("#created-secret")
    expect(secret).to_be_visible()
    raw = secret.inner_text().strip()
    assert raw.startswith("lmc-")
    expect(page.get_by_text("it will not be shown again")).to_be_visible()
    key = services.api_key_authenticate(raw=raw)
    assert key is not None and key.name == "browser-key" and key.project_id == project.id

    page.reload()  # a GET: the secret is gone, the prefix stays
    expect(page.locator("#created-secret")).to_have_count(0)
    assert raw not in page.content()
    expect(page.locator("#api-keys")).to_contain_text(raw[:12])
    expect(page.locator("#api-keys")).to_contain_text("active")
    assert ApiKey.objects.count() == 1  # the reload did not create a second key

    page.locator("#api-keys").get_by_role("button", name="Revoke").click()
    expect(page.locator("#api-keys")).to_contain_text("revoked")
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None


def test_phone_width_navigation(live_server, browser, transactional_db: None) -> None:  # type: ignore[no-untyped-def]
    alice = make_user("alice")
    make_project(name="alice-project", owner=alice)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        log_in(page, live_server.url, "alice")
        nav = page.get_by_role("navigation", name="Main")
        expect(nav).to_be_hidden()
        page.click(".nav-toggle-label")
        expect(nav).to_be_visible()
        nav.get_by_role("link", name="API keys").click()
        expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
        # Nothing wider than the screen but the scrollable tables.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
    finally:
        context.close()
