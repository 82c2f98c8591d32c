"""Huawei Cloud's SDK-HMAC-SHA256 request signing, both to sign (calling Pangu) and to verify (callers).

canonical request = method \\n URI with a trailing "/" \\n sorted query \\n "name:value\\n" per
signed header \\n signed-header list \\n sha256(body); string to sign = "SDK-HMAC-SHA256" \\n
X-Sdk-Date \\n sha256(canonical request); signature = hex HMAC-SHA256(secret, string to sign).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote, unquote

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW = timedelta(minutes=15)
_HEADER = re.compile(r"^SDK-HMAC-SHA256\s+Access=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-fA-F]+)\s*$")


def _encode(value: str) -> str:
    return quote(value, safe="~")


def canonical_uri(path: str) -> str:
    segments = [_encode(unquote(s)) for s in path.split("/")]
    uri = "/".join(segments)
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(query: str) -> str:
    pairs = sorted((_encode(k), _encode(v)) for k, v in parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{k}={v}" for k, v in pairs)


def string_to_sign(
    *, method: str, path: str, query: str, headers: Mapping[str, str], signed_headers: list[str], body: bytes, date: str
) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    canonical_headers = "".join(f"{name}:{lowered.get(name, '').strip()}\n" for name in signed_headers)
    canonical = "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers,
            ";".join(signed_headers),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    return f"{ALGORITHM}\n{date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def signature(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def sign(
    *,
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    now: datetime | None = None,
) -> dict[str, str]:
    """Return the headers (X-Sdk-Date, Authorization) that sign this request. `headers` must hold Host."""
    date = (now or datetime.now(UTC)).strftime(DATE_FORMAT)
    all_headers = {**headers, "X-Sdk-Date": date}
    signed = sorted({k.lower() for k in all_headers} & {"host", "x-sdk-date", "content-type"})
    text = string_to_sign(
        method=method, path=path, query=query, headers=all_headers, signed_headers=signed, body=body, date=date
    )
    auth = f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(signed)}, Signature={signature(secret_key, text)}"
    return {"X-Sdk-Date": date, "Authorization": auth}


@dataclass(frozen=True)
class ParsedAuthorization:
    access_key: str
    signed_headers: list[str]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization | None:
    match = _HEADER.match(value.strip())
    if not match:
        return None
    return ParsedAuthorization(match.group(1), match.group(2).lower().split(";"), match.group(3).lower())


class SignatureInvalid(Exception):
    pass


def check_signed_request(
    *, parsed: ParsedAuthorization, headers: Mapping[str, str], now: datetime | None = None
) -> datetime:
    """Raise SignatureInvalid unless the request says when it was signed, within 15 minutes of now,
    and signs both that date and its Host (an unsigned Host would let a signature made for another
    service be replayed here). Needs no secret: checked before the access key is looked up."""
    lowered = {k.lower(): v for k, v in headers.items()}
    date = lowered.get("x-sdk-date", "")
    try:
        signed_at = datetime.strptime(date, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureInvalid("X-Sdk-Date is missing or not in YYYYMMDDTHHMMSSZ form") from None
    if abs((now or datetime.now(UTC)) - signed_at) > MAX_CLOCK_SKEW:
        raise SignatureInvalid("X-Sdk-Date is more than 15 minutes away from the server's clock")
    for required in ("x-sdk-date", "host"):
        if required not in parsed.signed_headers:
            raise SignatureInvalid(f"{required} must be among the signed headers")
    return signed_at


def verify(
    *,
    secret_key: str,
    parsed: ParsedAuthorization,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> None:
    """Raise SignatureInvalid unless the request was signed with this secret within 15 minutes,
    its date and Host among the signed headers."""
    check_signed_request(parsed=parsed, headers=headers, now=now)
    lowered = {k.lower(): v for k, v in headers.items()}
    text = string_to_sign(
        method=method,
        path=path,
        query=query,
        headers=lowered,
        signed_headers=parsed.signed_headers,
        body=body,
        date=lowered.get("x-sdk-date", ""),
    )
    if not hmac.compare_digest(signature(secret_key, text), parsed.signature):
        raise SignatureInvalid("signature does not match")
