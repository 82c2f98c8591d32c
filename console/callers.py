"""Who is calling: one caller type for every door of the console.

API keys (`Authorization: Bearer` or `X-Auth-Token`), IAM tokens from `POST /v3/auth/tokens`
(`X-Auth-Token`), Huawei AK/SK request signatures (`Authorization: SDK-HMAC-SHA256 ...`) and a
signed-in browser session all resolve to a `Caller`. The inference gateway (HTTP dialects and the
playground socket), the registry API and the forecast task API use this module and nothing else to
decide who is asking; each door only translates a `CallerRejected` into its own error shape.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Literal

from django.core.cache import cache
from django.utils import timezone

from console import services as console_services
from console.lib import aksk, crypto
from console.models import IamToken, Membership, Project, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import User

CredentialKind = Literal["api_key", "iam_token", "aksk", "session"]

# Tokens issued by POST /v3/auth/tokens start with this, the way Huawei's do with "MII..."; only a
# look, never how a token is recognised (see _from_token).
IAM_TOKEN_PREFIX = "MIIlmc"


@dataclass(frozen=True)
class Caller:
    """An authenticated user acting in one project with the role they hold there now."""

    user: User
    project: Project
    role: str
    via: CredentialKind
    api_key_id: int | None = None

    @property
    def user_id(self) -> int:
        return int(self.user.pk)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def uses_models(self) -> bool:
        """Operators submit and watch forecast jobs; only admins and members use models and the registry."""
        return self.role in {Role.ADMIN, Role.MEMBER}


class Rejection(Enum):
    MISSING = "missing"  # no credentials at all
    INVALID = "invalid"  # an unknown token, an expired or revoked API key, or no membership in the project
    IAM_INVALID = "iam_invalid"  # an expired IAM token, or an AK/SK signature that fails
    FORBIDDEN = "forbidden"  # a valid caller whose role may not use this door


class CallerRejected(Exception):
    def __init__(self, reason: Rejection, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RequestFacts:
    """What authentication needs from an HTTP request. Captured on the event loop, so the checks can
    run in any thread; `body` is needed only to verify an AK/SK signature."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # names in lower case
    body: bytes


# --- the four credentials --------------------------------------------------------------------------
def _membership_role(*, user_id: int, project: Project) -> str | None:
    return Membership.objects.filter(user_id=user_id, project=project).values_list("role", flat=True).first()


# One answer for an unknown, revoked or expired access key and for a signature that does not match:
# a different one would tell an attacker which access key ids exist.
SIGNATURE_REFUSED = "verify aksk signature fail: the access key or the signature is not valid."
# A verified signature is remembered this long (the clock-skew window either side, and a margin), so the
# same signed request cannot be sent twice while its date is still accepted.
_REPLAY_SECONDS = int(2 * aksk.MAX_CLOCK_SKEW.total_seconds()) + 60


def _from_signature(facts: RequestFacts, authorization: str) -> Caller:
    parsed = aksk.parse_authorization(authorization)
    if parsed is None:
        raise CallerRejected(
            Rejection.IAM_INVALID, "verify aksk signature fail: malformed SDK-HMAC-SHA256 Authorization header."
        )
    try:
        # What can be told without the key (date, signed headers) is told before the key is looked up,
        # so these answers too are the same whether the access key exists or not.
        aksk.check_signed_request(parsed=parsed, headers=facts.headers)
    except aksk.SignatureInvalid as exc:
        raise CallerRejected(Rejection.IAM_INVALID, f"verify aksk signature fail: {exc}.") from None
    resolved = console_services.access_key_resolve(access_key_id=parsed.access_key)
    if resolved is None:
        raise CallerRejected(Rejection.IAM_INVALID, SIGNATURE_REFUSED)
    key, secret = resolved
    try:
        aksk.verify(
            secret_key=secret,
            parsed=parsed,
            method=facts.method,
            path=facts.path,
            query=facts.query,
            headers=facts.headers,
            body=facts.body,
        )
    except aksk.SignatureInvalid:
        raise CallerRejected(Rejection.IAM_INVALID, SIGNATURE_REFUSED) from None
    # In the shared cache (Redis when configured), so a replay to another process is refused too.
    if not cache.add(f"aksk:seen:{parsed.access_key}:{parsed.signature}", 1, _REPLAY_SECONDS):
        raise CallerRejected(
            Rejection.IAM_INVALID, "verify aksk signature fail: this signed request was already used; sign it anew."
        )
    return Caller(user=key.user, project=key.project, role=key.role, via="aksk")  # type: ignore[attr-defined]


def _iso_utc(moment: datetime) -> str:
    """The form of the manual's example: 2023-06-29T02:16:41.581000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _from_token(token: str, digest: str) -> tuple[Caller, datetime | None]:
    """An IAM token or an API key. IAM tokens are told apart by what is stored, not by how they look
    (the platform's own start "MIINRw...", so a prefix proves nothing about them); a token in the
    console's own API-key form skips that lookup, which spares every key's first call a query. An IAM
    token that has expired says when; anything else unknown cannot be read ("decrypt token fail")."""
    record = None
    if not token.startswith(console_services.API_KEY_PREFIX):
        record = (
            IamToken.objects.select_related("project", "user", "access_key")
            .filter(token_hash=digest, user__is_active=True)
            .first()
        )
    if record is None:
        key = console_services.api_key_authenticate(raw=token)
        if key is None:
            raise CallerRejected(
                Rejection.INVALID,
                "decrypt token fail: the token is neither a valid API key nor a valid IAM token "
                "(unknown, expired or revoked).",
            )
        role: str = key.role  # type: ignore[attr-defined]  # set by api_key_authenticate
        return Caller(user=key.user, project=key.project, role=role, via="api_key", api_key_id=key.pk), key.expires_at
    now = timezone.now()
    if record.expires_at <= now:
        raise CallerRejected(Rejection.IAM_INVALID, f"token expires, expires_at:{_iso_utc(record.expires_at)}")
    if record.access_key is not None and not record.access_key.is_active(now):
        # Issued for an access key since revoked or expired: the token ends with it.
        raise CallerRejected(Rejection.INVALID, "The credentials are not valid for this project.")
    member_role = _membership_role(user_id=record.user_id, project=record.project)
    if member_role is None:
        raise CallerRejected(Rejection.INVALID, "The credentials are not valid for this project.")
    return Caller(user=record.user, project=record.project, role=member_role, via="iam_token"), record.expires_at


# Recently verified bearer tokens (API keys and IAM tokens), by hash. A revoked or expired one, or a
# removed member, is refused at most TOKEN_CACHE_SECONDS later; a busy key is spared its queries and
# the gateway's thread hop on every call.
TOKEN_CACHE_SECONDS = 1.0
_token_cache: dict[str, tuple[float, Caller]] = {}
_token_cache_lock = threading.Lock()


def _bearer_token(headers: dict[str, str]) -> str:
    authorization = headers.get("authorization", "").strip()
    token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return token or headers.get("x-auth-token", "").strip()


def _check_role(caller: Caller, *, allow_operator: bool) -> Caller:
    if not allow_operator and not caller.uses_models:
        raise CallerRejected(Rejection.FORBIDDEN, "Operators may only submit and watch forecast jobs.")
    return caller


def _cached(digest: str) -> Caller | None:
    cached = _token_cache.get(digest)
    return None if cached is None or cached[0] <= time.monotonic() else cached[1]


def caller_from_cache(facts: RequestFacts, *, allow_operator: bool = False) -> Caller | None:
    """The caller of a bearer token verified within the last second, without touching the database
    (so an event loop may call it); None when the token must be checked afresh."""
    token = _bearer_token(facts.headers)
    if not token or facts.headers.get("authorization", "").startswith(aksk.ALGORITHM):
        return None
    cached = _cached(crypto.sha256_hex(token))
    return None if cached is None else _check_role(cached, allow_operator=allow_operator)


def _remember(digest: str, caller: Caller, expires_at: datetime | None) -> None:
    now = time.monotonic()
    valid_until = now + TOKEN_CACHE_SECONDS
    if expires_at is not None:
        valid_until = min(valid_until, now + (expires_at - timezone.now()).total_seconds())
    with _token_cache_lock:
        if len(_token_cache) > 10_000:
            _token_cache.clear()
        _token_cache[digest] = (valid_until, caller)


def credentials_need_body(headers: dict[str, str]) -> bool:
    """Whether checking these credentials needs the request body: only an AK/SK signature hashes it.
    Any other credential can be checked, and refused, before a byte of the body is read."""
    return headers.get("authorization", "").strip().startswith(aksk.ALGORITHM)


def caller_authenticate(facts: RequestFacts, *, allow_operator: bool = False) -> Caller:
    """Resolve a request's credentials to a caller, or raise CallerRejected.

    Runs queries: call it from a thread, not an event loop. `allow_operator` admits operators
    (the forecast task API and IAM project listing); every other door refuses them."""
    authorization = facts.headers.get("authorization", "").strip()
    if authorization.startswith(aksk.ALGORITHM):
        return _check_role(_from_signature(facts, authorization), allow_operator=allow_operator)
    token = _bearer_token(facts.headers)
    if not token:
        raise CallerRejected(
            Rejection.MISSING, "x-auth-token not found: send X-Auth-Token or Authorization: Bearer <API key>."
        )
    digest = crypto.sha256_hex(token)  # hashed once: the cache and the stored tokens are keyed by it
    if (cached := _cached(digest)) is not None:
        return _check_role(cached, allow_operator=allow_operator)
    caller, expires_at = _from_token(token, digest)
    _remember(digest, caller, expires_at)
    return _check_role(caller, allow_operator=allow_operator)


# --- a signed-in session ----------------------------------------------------------------------------
# The playground socket remembers a session's caller in the same cache as the bearer tokens, for the
# same TOKEN_CACHE_SECONDS: a member removed, or given a role that may not use models, is refused at
# most that long after, as with an API key; each turn in between is spared the membership query.
def _session_key(user_id: int, project_id: str) -> str:
    return f"session:{user_id}:{project_id}"  # never a token digest (hex only)


def session_caller_from_cache(*, user: User, project_id: str, allow_operator: bool = False) -> Caller | None:
    """The caller remembered for this user and project within the last second, without touching the
    database (so an event loop may call it); None when it must be looked up (`session_caller`).
    Raises CallerRejected (FORBIDDEN) for a role that may not use the door."""
    if not user.is_authenticated or not user.is_active:
        return None
    cached = _cached(_session_key(int(user.pk), project_id))
    return None if cached is None else _check_role(cached, allow_operator=allow_operator)


def session_caller(*, user: User, project_id: str, allow_operator: bool = False) -> Caller:
    """A signed-in user acting in a project, looked up in one query (the membership with its
    project) unless remembered, then remembered for TOKEN_CACHE_SECONDS. Raises CallerRejected:
    INVALID when they are not a member, FORBIDDEN for a role that may not use the door."""
    if not user.is_authenticated or not user.is_active:
        raise CallerRejected(Rejection.MISSING, "Sign in first.")
    key = _session_key(int(user.pk), project_id)
    if (cached := _cached(key)) is not None:
        return _check_role(cached, allow_operator=allow_operator)
    membership = (
        None
        if "\x00" in project_id  # in no stored id, and PostgreSQL refuses the query that would look for one
        else Membership.objects.select_related("project").filter(user_id=user.pk, project_id=project_id).first()
    )
    if membership is None:
        raise CallerRejected(Rejection.INVALID, "You are not a member of this project.")
    caller = Caller(user=user, project=membership.project, role=membership.role, via="session")
    _remember(key, caller, None)
    return _check_role(caller, allow_operator=allow_operator)


def caller_for_session(*, user: User, project: Project, allow_operator: bool = False) -> Caller:
    """A signed-in user acting in a project, looked up afresh (the registry API from the browser;
    the playground socket uses `session_caller`). Raises CallerRejected when they are not a member
    or their role may not use the door."""
    if not user.is_authenticated or not user.is_active:
        raise CallerRejected(Rejection.MISSING, "Sign in first.")
    role = _membership_role(user_id=user.pk, project=project)
    if role is None:
        raise CallerRejected(Rejection.INVALID, "You are not a member of this project.")
    return _check_role(Caller(user=user, project=project, role=role, via="session"), allow_operator=allow_operator)
