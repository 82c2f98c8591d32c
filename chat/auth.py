"""Who is calling the gateway: API keys, IAM tokens (Pangu's X-Auth-Token) or AK/SK signatures."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from chat.errors import Failure, GatewayError
from chat.models import IamToken
from console import services as console_services
from console.lib import aksk, crypto
from console.models import Membership, Project, Role

IAM_TOKEN_LIFETIME = timedelta(hours=24)
IAM_TOKEN_PREFIX = "MIIlmc"


@dataclass(frozen=True)
class Caller:
    user_id: int
    project: Project
    role: str
    api_key_id: int | None = None


@dataclass(frozen=True)
class RequestFacts:
    """What authentication needs from an HTTP request, captured before leaving the event loop."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def _membership_caller(user_id: int, project: Project, api_key_id: int | None = None) -> Caller:
    role = Membership.objects.filter(user_id=user_id, project=project).values_list("role", flat=True).first()
    if role is None:
        raise GatewayError(Failure.AUTH_FAILED, "The credentials are not valid for this project.")
    return Caller(user_id=user_id, project=project, role=role, api_key_id=api_key_id)


def _from_signature(facts: RequestFacts, authorization: str) -> Caller:
    parsed = aksk.parse_authorization(authorization)
    if parsed is None:
        raise GatewayError(Failure.IAM_AUTH_FAILED, "Malformed SDK-HMAC-SHA256 Authorization header.")
    resolved = console_services.access_key_resolve(access_key_id=parsed.access_key)
    if resolved is None:
        raise GatewayError(Failure.IAM_AUTH_FAILED, "verify aksk signature fail: unknown or revoked access key.")
    key, secret = resolved
    caller = Caller(user_id=key.user_id, project=key.project, role=key.role)  # type: ignore[attr-defined]
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
    except aksk.SignatureInvalid as exc:
        raise GatewayError(Failure.IAM_AUTH_FAILED, f"verify aksk signature fail: {exc}.") from None
    return caller


def _from_iam_token(token: str) -> Caller:
    record = (
        IamToken.objects.select_related("project")
        .filter(token_hash=crypto.sha256_hex(token), expires_at__gt=timezone.now())
        .first()
    )
    if record is None:
        raise GatewayError(
            Failure.IAM_AUTH_FAILED, "Incorrect IAM authentication information: token expired or unknown."
        )
    return _membership_caller(record.user_id, record.project)


# Recently verified API keys, by hash. A revoked key, an expired one or a removed member is refused
# at most KEY_CACHE_SECONDS later, which spares a busy key two queries on every call.
KEY_CACHE_SECONDS = 1.0
_key_cache: dict[str, tuple[float, Caller]] = {}
_key_cache_lock = threading.Lock()


def _from_api_key(token: str) -> Caller:
    digest = crypto.sha256_hex(token)
    now = time.monotonic()
    cached = _key_cache.get(digest)
    if cached is not None and cached[0] > now:
        return cached[1]
    key = console_services.api_key_authenticate(raw=token)
    if key is None:
        raise GatewayError(Failure.AUTH_FAILED, "Invalid, expired or revoked API key.")
    caller = Caller(user_id=key.user_id, project=key.project, role=key.role, api_key_id=key.pk)  # type: ignore[attr-defined]
    valid_until = now + KEY_CACHE_SECONDS
    if key.expires_at is not None:
        valid_until = min(valid_until, now + (key.expires_at - timezone.now()).total_seconds())
    with _key_cache_lock:
        if len(_key_cache) > 10_000:
            _key_cache.clear()
        _key_cache[digest] = (valid_until, caller)
    return caller


def authenticate_request(facts: RequestFacts, *, allow_operator: bool = False) -> Caller:
    """Raise GatewayError (AUTH_MISSING, AUTH_FAILED, IAM_AUTH_FAILED, FORBIDDEN) or return the caller."""
    headers = {k.lower(): v for k, v in facts.headers.items()}
    authorization = headers.get("authorization", "").strip()
    if authorization.startswith(aksk.ALGORITHM):
        caller = _from_signature(facts, authorization)
    else:
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        token = token or headers.get("x-auth-token", "").strip()
        if not token:
            raise GatewayError(
                Failure.AUTH_MISSING, "No credentials: send Authorization: Bearer <API key> or X-Auth-Token."
            )
        if token.startswith(IAM_TOKEN_PREFIX):
            caller = _from_iam_token(token)
        else:
            caller = _from_api_key(token)
    if caller.role == Role.OPERATOR and not allow_operator:
        raise GatewayError(Failure.FORBIDDEN, "Operators may only submit and watch forecast jobs.")
    return caller


# --- IAM compatibility: POST /v3/auth/tokens -------------------------------------------------------
@dataclass(frozen=True)
class IssuedToken:
    token: str
    user: AbstractBaseUser
    project: Project
    issued_at: datetime
    expires_at: datetime


def _scope_project(user: AbstractBaseUser, scope: object) -> Project:
    memberships = Membership.objects.select_related("project").filter(user=user)
    wanted = scope.get("project") if isinstance(scope, dict) else None
    if isinstance(wanted, dict) and (wanted.get("id") or wanted.get("name")):
        if wanted.get("id"):
            memberships = memberships.filter(project_id=str(wanted["id"]))
        else:
            memberships = memberships.filter(project__name=str(wanted["name"]))
    membership = memberships.order_by("created_at").first()
    if membership is None:
        raise GatewayError(Failure.AUTH_FAILED, "The user has no access to the requested project scope.")
    return membership.project


def iam_token_issue(body: object) -> IssuedToken:
    """Issue a 24-hour token for a password or AK/SK identity, in Huawei IAM's request shape."""
    auth = body.get("auth") if isinstance(body, dict) else None
    identity = auth.get("identity") if isinstance(auth, dict) else None
    if not isinstance(identity, dict) or not isinstance(identity.get("methods"), list):
        raise GatewayError(
            Failure.PARAM_INVALID, "Body must be {auth: {identity: {methods: [...], ...}}}.", param="auth.identity"
        )
    methods = identity["methods"]
    user: AbstractBaseUser | None = None
    if "password" in methods:
        info = (identity.get("password") or {}).get("user") or {}
        if not info.get("name") or not info.get("password"):
            raise GatewayError(Failure.AUTH_MISSING, "auth.identity.password.user needs name and password.")
        user = authenticate(username=str(info["name"]), password=str(info["password"]))
    elif "hw_ak_sk" in methods:
        info = identity.get("hw_ak_sk") or {}
        access = str((info.get("access") or {}).get("key") or "")
        secret = str((info.get("secret") or {}).get("key") or "")
        if not access or not secret:
            raise GatewayError(Failure.AUTH_MISSING, "auth.identity.hw_ak_sk needs access.key and secret.key.")
        resolved = console_services.access_key_resolve(access_key_id=access)
        if resolved and crypto.constant_time_equals(resolved[1], secret):
            user = get_user_model().objects.filter(pk=resolved[0].user_id, is_active=True).first()
    else:
        raise GatewayError(Failure.PARAM_INVALID, "Supported methods: password, hw_ak_sk.", param="methods")
    if user is None:
        raise GatewayError(Failure.AUTH_FAILED, "The username or password (or AK/SK) is incorrect.")
    project = _scope_project(user, auth.get("scope"))
    token = IAM_TOKEN_PREFIX + secrets.token_urlsafe(48)
    now = timezone.now()
    IamToken.objects.create(
        token_hash=crypto.sha256_hex(token),
        user=user,
        project=project,
        issued_at=now,
        expires_at=now + IAM_TOKEN_LIFETIME,
    )
    return IssuedToken(token=token, user=user, project=project, issued_at=now, expires_at=now + IAM_TOKEN_LIFETIME)
