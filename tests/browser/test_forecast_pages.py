"""An operator who has never seen the seed submits a forecast job from the form alone, watches it
progress on the list without reloading, and opens a map: Chromium against the console served in a
thread, and a real Celery worker in another thread of the test process (sharing its database)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from playwright.sync_api import Page, expect

from console.models import Role
from forecasts.catalogue import bucket_register, forecast_catalogue_load
from forecasts.models import ForecastJob, JobState
from forecasts.samples import DEMO_BUCKET, install_demo
from forecasts.storage import default_store
from tests.browser.conftest import log_in
from tests.conftest import serve_in_thread
from tests.factories import add_member, make_project, make_user


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    from console.asgi import application

    with serve_in_thread(ASGIStaticFilesHandler(application)) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture
def worker(transactional_db: None) -> Iterator[None]:
    from console.celery import app

    # The solo pool: tasks run in the worker's thread, in this process, on the test database.
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        yield


def test_an_operator_submits_from_the_form_watches_progress_and_opens_a_map(
    site: str, worker: None, page: Page
) -> None:
    admin = make_user("alice")
    project = make_project(name="weather-team", owner=admin)
    forecast_catalogue_load(project=project)
    bucket_register(project=project, name=DEMO_BUCKET)
    install_demo(default_store())
    olga = make_user("olga")
    add_member(project=project, user=olga, role=Role.OPERATOR)

    log_in(page, site, "olga")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Playground")).to_have_count(0)  # not an operator's
    nav.get_by_role("link", name="Forecasts").click()
    page.get_by_role("link", name="Submit your first job").click()

    # Everything is prefilled with the demo data; the summary says what the job will do.
    expect(page.get_by_label("Input bucket")).to_have_value("demo")
    expect(page.get_by_label("First forecast start (UTC)")).to_have_value("2017-01-01T00:00")
    expect(page.locator("#job-summary")).to_contain_text("1 forecast start × 168 h")
    page.get_by_label("Job name").fill("first-forecast")
    page.get_by_label("Last forecast start (UTC)").fill("2017-01-01T12:00")
    page.get_by_label("Hours between forecast starts").fill("25")  # out of range: the form says so
    page.get_by_label("Forecast length (hours)").fill("48")
    expect(page.locator("#job-summary")).to_contain_text("1 forecast start × 48 h")
    page.get_by_role("button", name="Submit job").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Hours between forecast starts: must be a whole number of hours from 1 to 24"
    )
    assert ForecastJob.objects.count() == 0

    page.get_by_label("Hours between forecast starts").fill("12")
    expect(page.locator("#job-summary")).to_contain_text("2 forecast starts × 48 h, 8 result times each, 6 features")
    page.get_by_role("button", name="Submit job").click()
    expect(page).to_have_url(re.compile(r"/forecasts/[0-9a-f]{32}/$"))
    job = ForecastJob.objects.get()
    assert (job.submitted_by, job.config["start_time_interval_hours"]) == (olga, 12)

    # The list shows it moving without a reload, then finished.
    page.get_by_role("link", name="Forecast jobs").click()
    row = page.locator(f"tr[data-job='{job.pk}']")
    expect(row.locator("[data-field=state]")).to_have_text("Finished", timeout=120_000)
    expect(row.locator("[data-field=progress-text]")).to_have_text("100 %")
    assert ForecastJob.objects.get().state == JobState.SUCCEEDED

    row.get_by_role("link", name="first-forecast").click()
    expect(page.locator("#timeline")).to_contain_text("Finished: 2 forecasts written.")
    figure = page.locator("figure.frames[data-feature='500:Z']").first
    image = figure.locator("img")
    expect(image).to_have_attribute("alt", re.compile(r"lead 24 h"))
    figure.get_by_label(re.compile("Lead time")).fill("1")
    expect(image).to_have_attribute("alt", re.compile(r"lead 48 h"))
    response = page.request.get(site + (image.get_attribute("src") or ""))
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    assert response.body()[:8] == b"\x89PNG\r\n\x1a\n"
