"""Huawei IAM compatibility: `POST /v3/auth/tokens` issues a 24-hour token for a password or AK/SK
identity, in IAM's own request shape, so Pangu clients log in as they would at Huawei Cloud.
The token then authenticates as `X-Auth-Token` through `console.callers`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from console import services as console_services
from console.audit import USER_AGENT_LENGTH, AuditOrigin, origin_scope
from console.callers import IAM_TOKEN_PREFIX, CallerRejected, Rejection
from console.lib import crypto
from console.models import AccessKey, IamToken, Membership, Project
from console.throttle import password_check

if TYPE_CHECKING:
    from django.contrib.auth.models import User

IAM_TOKEN_LIFETIME = timedelta(hours=24)


class IamRequestInvalid(ValueError):
    """The body is not in IAM's shape; `param` names the offending part."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class IssuedToken:
    token: str
    user: User
    project: Project
    issued_at: datetime
    expires_at: datetime


def _scope_project(user: User, scope: object, *, access_key: AccessKey | None) -> Project:
    memberships = Membership.objects.select_related("project").filter(user=user)
    if access_key is not None:
        # An access key acts in its own project only: it cannot mint a token for the user's others.
        memberships = memberships.filter(project_id=access_key.project_id)
    wanted = scope.get("project") if isinstance(scope, dict) else None
    if isinstance(wanted, dict) and (wanted.get("id") or wanted.get("name")):
        if wanted.get("id"):
            memberships = memberships.filter(project_id=str(wanted["id"]))
        else:
            memberships = memberships.filter(project__name=str(wanted["name"]))
    membership = memberships.order_by("created_at").first()
    if membership is None:
        raise CallerRejected(Rejection.INVALID, "The user has no access to the requested project scope.")
    return membership.project


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _object(value: object, param: str) -> dict[str, Any]:
    """An object where IAM's shape has one; absent is empty (the missing fields are named later),
    anything else ("password": "x") is a parameter error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise IamRequestInvalid(f"{param} must be an object.", param=param)
    return value


def _identity_user(identity: dict[str, Any], *, client_ip: str) -> tuple[User | None, AccessKey | None]:
    """The user the identity proves, and the access key that proved it (None for a password)."""
    methods = identity["methods"]
    if "password" in methods:
        info = _object(
            _object(identity.get("password"), "auth.identity.password").get("user"), "auth.identity.password.user"
        )
        name, password = info.get("name"), info.get("password")
        if not name or not password:
            raise CallerRejected(Rejection.MISSING, "auth.identity.password.user needs name and password.")
        if not isinstance(name, str) or not isinstance(password, str):
            raise IamRequestInvalid("name and password must be strings.", param="auth.identity.password.user")
        return password_check(username=name, password=password, client_ip=client_ip), None
    if "hw_ak_sk" in methods:
        info = _object(identity.get("hw_ak_sk"), "auth.identity.hw_ak_sk")
        access = _object(info.get("access"), "auth.identity.hw_ak_sk.access").get("key") or ""
        secret = _object(info.get("secret"), "auth.identity.hw_ak_sk.secret").get("key") or ""
        if not isinstance(access, str) or not isinstance(secret, str):
            raise IamRequestInvalid("access.key and secret.key must be strings.", param="auth.identity.hw_ak_sk")
        if not access or not secret:
            raise CallerRejected(Rejection.MISSING, "auth.identity.hw_ak_sk needs access.key and secret.key.")
        resolved = console_services.access_key_resolve(access_key_id=str(access))
        if resolved and crypto.constant_time_equals(resolved[1], str(secret)):
            user = get_user_model().objects.filter(pk=resolved[0].user_id, is_active=True).first()
            return user, resolved[0]
        return None, None
    raise IamRequestInvalid("Supported methods: password, hw_ak_sk.", param="auth.identity.methods")


def _check_text(value: object, path: str = "") -> None:
    """Refuse, naming where, a string no database can look up: JSON escapes let a body carry a lone
    surrogate ("\\ud800"), which is not UTF-8, or a NUL ("\\u0000"), which PostgreSQL's text cannot hold."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise IamRequestInvalid(f"{path or 'body'} holds a lone surrogate: send UTF-8 text.", param=path) from None
        if "\x00" in value:
            raise IamRequestInvalid(f"{path or 'body'} holds a NUL (\\u0000) character.", param=path)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _check_text(item, f"{path}.{key}" if path else str(key))


def _identity(body: object) -> dict[str, Any]:
    identity = _dict(_dict(body).get("auth")).get("identity")
    if not isinstance(identity, dict) or not isinstance(identity.get("methods"), list):
        raise IamRequestInvalid("Body must be {auth: {identity: {methods: [...], ...}}}.", param="auth.identity")
    return identity


def iam_request_checks_password(body: object) -> bool:
    """Whether issuing this request's token hashes a password (the door runs those on their own
    threads). Never raises: a malformed body is iam_token_issue's to refuse."""
    try:
        return "password" in _identity(body)["methods"]
    except IamRequestInvalid:
        return False


def iam_token_issue(*, body: object, client_ip: str = "", user_agent: str = "") -> IssuedToken:
    """Check the identity in an IAM token request and store a new token's hash.

    Raises IamRequestInvalid for a body not in IAM's shape, CallerRejected for wrong or missing
    credentials (a wrong password and an unknown user are told apart nowhere) and
    console.throttle.PasswordThrottled when `client_ip` or the username is out of password attempts.
    A token issued for an access key is bound to the key's project and remembers the key, so it ends
    when the key does."""
    identity = _identity(body)
    _check_text(body)
    # A failed password check is audited by the sign-in signal, which has no request to say where from.
    with origin_scope(AuditOrigin(ip=client_ip, user_agent=user_agent[:USER_AGENT_LENGTH], via="iam password")):
        user, access_key = _identity_user(identity, client_ip=client_ip)
    if user is None:
        raise CallerRejected(Rejection.INVALID, "The username or password (or AK/SK) is incorrect.")
    project = _scope_project(user, _dict(_dict(body).get("auth")).get("scope"), access_key=access_key)
    token = IAM_TOKEN_PREFIX + secrets.token_urlsafe(48)
    now = timezone.now()
    via = f"iam aksk {access_key.access_key_id}" if access_key is not None else "iam password"
    with transaction.atomic():
        record = IamToken.objects.create(
            token_hash=crypto.sha256_hex(token),
            user=user,
            project=project,
            access_key=access_key,
            issued_at=now,
            expires_at=now + IAM_TOKEN_LIFETIME,
        )
        console_services.audit_record(
            project=project,
            actor=user,
            action="iam.token_issue",
            target=project,
            changes={"token_id": record.pk, "expires_at": record.expires_at.isoformat()},
            origin=AuditOrigin(ip=client_ip, user_agent=user_agent[:USER_AGENT_LENGTH], via=via),
        )
    return IssuedToken(token=token, user=user, project=project, issued_at=now, expires_at=now + IAM_TOKEN_LIFETIME)
