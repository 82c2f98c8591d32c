"""console/lib/aksk.py piece by piece against known answers: each canonical form written out by hand,
each signature computed here with hashlib and hmac over that hand-written text, the clock window at its
exact edges, and each refusal's reason. Written against the surviving mutants of `make mutation`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import pytest

from console.lib import aksk

SECRET = "sk-Known-Answer-9"
DATE = "20260101T000000Z"
AT = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
BODY_SHA = hashlib.sha256(b"{}").hexdigest()


def _hex_hmac(text: str) -> str:
    return hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()


def _to_sign(canonical: str) -> str:
    return f"SDK-HMAC-SHA256\n{DATE}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def test_canonical_uri() -> None:
    assert aksk.canonical_uri("/v1/p") == "/v1/p/"
    assert aksk.canonical_uri("/v1/p/") == "/v1/p/"
    assert aksk.canonical_uri("/a b/c%2Fd") == "/a%20b/c%2Fd/"
    assert aksk.canonical_uri("/x~y/é") == "/x~y/%C3%A9/"
    assert aksk.canonical_uri("") == "/"


def test_canonical_query() -> None:
    assert aksk.canonical_query("") == ""
    assert aksk.canonical_query("b=2&a=1&a=0&c=&d e=f/g~") == "a=0&a=1&b=2&c=&d%20e=f%2Fg~"


def test_string_to_sign_known_answer() -> None:
    canonical = (
        "POST\n/v1/p/\na=1&b=2\n"
        "content-type:application/json\nhost:h.example\nx-sdk-date:20260101T000000Z\nx-missing:\n\n"
        f"content-type;host;x-sdk-date;x-missing\n{BODY_SHA}"
    )
    text = aksk.string_to_sign(
        method="post",
        path="/v1/p",
        query="b=2&a=1",
        headers={"Content-Type": "application/json", "HOST": "  h.example ", "X-Sdk-Date": DATE},
        signed_headers=["content-type", "host", "x-sdk-date", "x-missing"],
        body=b"{}",
        date=DATE,
    )
    assert text == _to_sign(canonical)
    assert aksk.signature(SECRET, text) == _hex_hmac(_to_sign(canonical))


def test_sign_signs_host_date_and_content_type_only() -> None:
    canonical = f"GET\n/v3/x/\n\nhost:h.example\nx-sdk-date:{DATE}\n\nhost;x-sdk-date\n{BODY_SHA}"
    headers = aksk.sign(
        access_key="AK1",
        secret_key=SECRET,
        method="GET",
        path="/v3/x",
        query="",
        headers={"Host": "h.example", "X-Other": "not signed"},
        body=b"{}",
        now=AT,
    )
    assert headers == {
        "X-Sdk-Date": DATE,
        "Authorization": f"SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host;x-sdk-date, "
        f"Signature={_hex_hmac(_to_sign(canonical))}",
    }


def test_sign_without_now_uses_the_clock() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    date = aksk.sign(
        access_key="AK1", secret_key=SECRET, method="GET", path="/", query="", headers={"Host": "h"}, body=b""
    )["X-Sdk-Date"]
    signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= signed_at <= datetime.now(UTC)


def test_sign_dates_in_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # A signer on a machine set to UTC+8 must still send UTC, as the verifier reads it.
    monkeypatch.setenv("TZ", "Etc/GMT-8")
    time.tzset()
    try:
        date = aksk.sign(
            access_key="AK1", secret_key=SECRET, method="GET", path="/", query="", headers={"Host": "h"}, body=b""
        )["X-Sdk-Date"]
    finally:
        monkeypatch.undo()
        time.tzset()
    signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - signed_at) < timedelta(minutes=1)


def test_parse_authorization() -> None:
    parsed = aksk.parse_authorization(
        "  SDK-HMAC-SHA256 Access=AK9, SignedHeaders=Host;X-Sdk-Date, Signature=ABCdef01 "
    )
    assert parsed == aksk.ParsedAuthorization("AK9", ["host", "x-sdk-date"], "abcdef01")
    assert aksk.parse_authorization("SDK-HMAC-SHA256  Access=AK9,SignedHeaders=host,Signature=0a") == (
        aksk.ParsedAuthorization("AK9", ["host"], "0a")
    )
    for bad in (
        "SDK-HMAC-SHA1 Access=AK9, SignedHeaders=host, Signature=0a",
        "SDK-HMAC-SHA256 Access=AK9, SignedHeaders=host, Signature=xyz",
        "SDK-HMAC-SHA256 Access=AK9, SignedHeaders=host",
        "Bearer abc",
        "",
    ):
        assert aksk.parse_authorization(bad) is None, bad


def _parsed(*names: str) -> aksk.ParsedAuthorization:
    return aksk.ParsedAuthorization("AK1", list(names), "00")


def _reason(headers: dict[str, str], parsed: aksk.ParsedAuthorization, now: datetime = AT) -> str:
    with pytest.raises(aksk.SignatureInvalid) as caught:
        aksk.check_signed_request(parsed=parsed, headers=headers, now=now)
    return str(caught.value)


def test_the_clock_window_at_its_edges() -> None:
    both = _parsed("host", "x-sdk-date")
    headers = {"X-SDK-DATE": DATE}
    for edge in (timedelta(minutes=15), -timedelta(minutes=15), timedelta(0)):
        assert aksk.check_signed_request(parsed=both, headers=headers, now=AT + edge) == AT
    far = "X-Sdk-Date is more than 15 minutes away from the server's clock"
    for past_edge in (timedelta(minutes=15, seconds=1), -timedelta(minutes=15, seconds=1)):
        assert _reason(headers, both, AT + past_edge) == far


def test_the_clock_window_without_now_uses_the_clock() -> None:
    both = _parsed("host", "x-sdk-date")
    fresh = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    assert aksk.check_signed_request(parsed=both, headers={"x-sdk-date": fresh})
    with pytest.raises(aksk.SignatureInvalid):
        aksk.check_signed_request(parsed=both, headers={"x-sdk-date": DATE})


def test_refusal_reasons() -> None:
    malformed = "X-Sdk-Date is missing or not in YYYYMMDDTHHMMSSZ form"
    assert _reason({}, _parsed("host", "x-sdk-date")) == malformed
    assert _reason({"X-Sdk-Date": "2026-01-01T00:00:00Z"}, _parsed("host", "x-sdk-date")) == malformed
    assert _reason({"X-Sdk-Date": DATE}, _parsed("host")) == "x-sdk-date must be among the signed headers"
    assert _reason({"X-Sdk-Date": DATE}, _parsed("x-sdk-date")) == "host must be among the signed headers"
    assert _reason({"X-Sdk-Date": DATE}, _parsed("content-type")) == "x-sdk-date must be among the signed headers"


def test_verify_known_answer_and_mismatch() -> None:
    canonical = (
        f"PUT\n/a/\nq=1\nhost:h.example\nx-sdk-date:{DATE}\n\nhost;x-sdk-date\n{hashlib.sha256(b'body').hexdigest()}"
    )
    good = _hex_hmac(_to_sign(canonical))
    headers = {"Host": "h.example", "X-Sdk-Date": DATE}
    kwargs = {"method": "PUT", "path": "/a", "query": "q=1", "headers": headers, "body": b"body", "now": AT}
    parsed = aksk.ParsedAuthorization("AK1", ["host", "x-sdk-date"], good)
    aksk.verify(secret_key=SECRET, parsed=parsed, **kwargs)  # type: ignore[arg-type]
    for secret, sig, body in ((SECRET + "x", good, b"body"), (SECRET, good, b"bodx"), (SECRET, "0" * 64, b"body")):
        wrong = aksk.ParsedAuthorization("AK1", ["host", "x-sdk-date"], sig)
        with pytest.raises(aksk.SignatureInvalid) as caught:
            aksk.verify(secret_key=secret, parsed=wrong, **{**kwargs, "body": body})  # type: ignore[arg-type]
        assert str(caught.value) == "signature does not match"
    # The clock is checked first, whatever the signature.
    with pytest.raises(aksk.SignatureInvalid) as caught:
        aksk.verify(secret_key=SECRET, parsed=parsed, **{**kwargs, "now": AT + timedelta(hours=1)})  # type: ignore[arg-type]
    assert str(caught.value) == "X-Sdk-Date is more than 15 minutes away from the server's clock"
