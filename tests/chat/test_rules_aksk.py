"""AK/SK signatures as docs/api.md (Credentials) describes them, computed here with hashlib and hmac alone,
independently of console/lib/aksk.py: a known answer, a signed call accepted, an unsigned X-Sdk-Date refused,
and the 15-minute window held on both sides of the server's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import httpx

from console import services as console_services
from console.lib import aksk
from tests.chat.conftest import World


def _sign(
    *, secret: str, method: str, path: str, query: str, headers: dict[str, str], signed: list[str], body: bytes
) -> str:
    """The documented algorithm, written out: canonical request = method, URI with a trailing "/", the
    sorted query, each signed header as "name:value\\n", the signed-header list, sha256(body); string to
    sign = "SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<sha256 hex of the canonical request>"; signature = hex
    HMAC-SHA256 with the secret."""
    lowered = {k.lower(): v for k, v in headers.items()}
    uri = path if path.endswith("/") else path + "/"
    sorted_query = "&".join(sorted(query.split("&"))) if query else ""
    canonical = "\n".join(
        [
            method,
            uri,
            sorted_query,
            "".join(f"{name}:{lowered[name]}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = "\n".join(["SDK-HMAC-SHA256", lowered["x-sdk-date"], hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


# One request signed by hand once (computed with `_sign` above and, separately, with sha256sum and
# `openssl dgst -sha256 -hmac`, then pinned): the console's signer must produce exactly this signature.
KNOWN = {
    "secret": "Nn3PkWvX8qL2mT5yR7bZ1cD4fG6hJ9kA0sE2uI8o",
    "method": "POST",
    "path": "/v1/proj-1/deployments/dep-1/chat/completions",
    "query": "b=2&a=1",
    "headers": {"Host": "pangu.example", "Content-Type": "application/json", "X-Sdk-Date": "20260101T120000Z"},
    "signed": ["content-type", "host", "x-sdk-date"],
    "body": b'{"messages": [{"content": "hi"}]}',
}
KNOWN_SIGNATURE = "fa74f1f3df67cfd54d0ed984ac7b485650976c00064cfd8ecd05abae22abfe8c"


def test_known_answer() -> None:
    assert _sign(**KNOWN) == KNOWN_SIGNATURE  # type: ignore[arg-type]
    headers = aksk.sign(
        access_key="AKKNOWNANSWER0000000",
        secret_key=str(KNOWN["secret"]),
        method="POST",
        path=str(KNOWN["path"]),
        query=str(KNOWN["query"]),
        headers={"Host": "pangu.example", "Content-Type": "application/json"},
        body=KNOWN["body"],  # type: ignore[arg-type]
        now=datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC),
    )
    assert headers == {
        "X-Sdk-Date": "20260101T120000Z",
        "Authorization": "SDK-HMAC-SHA256 Access=AKKNOWNANSWER0000000, SignedHeaders=content-type;host;x-sdk-date, "
        f"Signature={KNOWN_SIGNATURE}",
    }


def _call(world: World, *, offset: timedelta = timedelta(0), signed: list[str] | None = None) -> httpx.Response:
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="sdk")
    url = world.pangu_path()
    parsed = urlparse(url)
    body = json.dumps({"messages": [{"content": "hi"}]}).encode()
    date = (datetime.now(UTC) + offset).strftime("%Y%m%dT%H%M%SZ")
    headers = {"Host": parsed.netloc, "Content-Type": "application/json", "X-Sdk-Date": date}
    names = signed or ["content-type", "host", "x-sdk-date"]
    signature = _sign(
        secret=secret, method="POST", path=parsed.path, query="", headers=headers, signed=names, body=body
    )
    headers["Authorization"] = (
        f"SDK-HMAC-SHA256 Access={key.access_key_id}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return httpx.post(url, content=body, headers=headers, timeout=15)


def test_a_request_signed_by_the_documented_algorithm_is_accepted(world: World) -> None:
    response = _call(world)
    assert response.status_code == 200, response.text
    assert len(world.upstream.state.requests) == 1


def test_an_unsigned_x_sdk_date_is_refused(world: World) -> None:
    # A valid signature over host and content-type only: the date could be replayed at will.
    response = _call(world, signed=["content-type", "host"])
    assert response.status_code == 401, response.text
    assert world.upstream.state.requests == []


def test_the_15_minute_window_on_both_sides(world: World) -> None:
    for minutes, status in ((14, 200), (-14, 200), (16, 401), (-16, 401)):
        response = _call(world, offset=timedelta(minutes=minutes))
        assert response.status_code == status, (minutes, response.text)
    assert len(world.upstream.state.requests) == 2
