"""Retry-After as RFC 9110 §10.2.3 defines it (delay-seconds or an HTTP-date), with values worked by hand."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

import httpx
import pytest

from console.lib.http import RETRY_AFTER_CAP, parse_retry_after
from models_registry.models import Provider
from models_registry.providers.base import error_for_status
from models_registry.providers.pangu import PanguAdapter

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120),
        ("0", 0),
        (" 7 ", 7),  # optional whitespace around a field value is not part of it
        ("3600", 3600),
        ("3601", 3600),  # absurd waits are capped
        ("86400", 3600),
        ("9" * 5000, 3600),  # longer than Python will turn into an int: still the cap, never a crash
        # IMF-fixdate, the preferred form: 07:30:00 is 120 s after NOW.
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0),  # exactly now
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0),  # in the past: retry at once
        ("Fri, 01 Jan 2100 00:00:00 GMT", 3600),
        # The two obsolete forms recipients must still accept.
        ("Wednesday, 21-Oct-15 07:29:30 GMT", 90),  # RFC 850
        ("Wed Oct 21 07:38:00 2015", 600),  # asctime, which carries no zone: GMT
    ],
)
def test_parses(value: str, seconds: int) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_a_part_second_is_rounded_up() -> None:
    # 07:28:00 seen from 07:27:59.5 is half a second away; retrying after 0 s would be too early.
    half_a_second_before = datetime(2015, 10, 21, 7, 27, 59, 500000, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=half_a_second_before) == 1


@pytest.mark.parametrize(
    "value", [None, "", "  ", "-5", "1.5", "+3", "12 s", "soon", "²", "0x10", "Wed, 32 Oct 2015 07:28:00 GMT"]
)
def test_ignores_what_is_not_a_retry_after(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_cap_is_an_hour() -> None:
    assert RETRY_AFTER_CAP == 3600


def _throttled(value: str | bytes) -> httpx.Response:
    headers = httpx.Headers({"Retry-After": value} if isinstance(value, str) else {b"Retry-After": value})
    return httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://upstream/v1"))


def _in_two_minutes() -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(int(time.time()) + 120, UTC), usegmt=True)


def test_adapters_read_an_http_date() -> None:
    error = error_for_status(_throttled(_in_two_minutes()))
    assert error.kind == "rate_limited" and error.retry_after in {119, 120}


def test_pangu_reads_an_http_date() -> None:
    adapter = PanguAdapter(Provider(kind="pangu", base_url="http://upstream"))
    error = adapter.coded_error({"error_code": "APIG.0308", "error_msg": "too many"}, _throttled(_in_two_minutes()))
    assert error.kind == "rate_limited" and error.retry_after in {119, 120}


def test_adapters_survive_a_non_ascii_digit() -> None:
    # "²".isdigit() is True, and int("²") raises: the header must be ignored, not crash the call.
    error = error_for_status(_throttled("²".encode("latin-1")))  # as it arrives on the wire
    assert error.kind == "rate_limited" and error.retry_after is None
