"""Huawei IAM compatibility: `POST /v3/auth/tokens` issues a 24-hour token for a password or AK/SK
identity, in IAM's own request shape, so Pangu clients log in as they would at Huawei Cloud.
The token then authenticates as `X-Auth-Token` through `console.callers`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth import authenticate, get_user_model
from django.utils import timezone

from console import services as console_services
from console.callers import IAM_TOKEN_PREFIX, CallerRejected, Rejection
from console.lib import crypto
from console.models import IamToken, Membership, Project

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


def _scope_project(user: User, scope: object) -> Project:
    memberships = Membership.objects.select_related("project").filter(user=user)
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


def _identity_user(identity: dict[str, Any]) -> User | None:
    methods = identity["methods"]
    if "password" in methods:
        info = _dict(_dict(identity.get("password")).get("user"))
        name, password = info.get("name"), info.get("password")
        if not name or not password:
            raise CallerRejected(Rejection.MISSING, "auth.identity.password.user needs name and password.")
        if not isinstance(name, str) or not isinstance(password, str):
            raise IamRequestInvalid("name and password must be strings.", param="auth.identity.password.user")
        user = authenticate(username=name, password=password)
        return user if isinstance(user, get_user_model()) else None
    if "hw_ak_sk" in methods:
        info = _dict(identity.get("hw_ak_sk"))
        access = _dict(info.get("access")).get("key") or ""
        secret = _dict(info.get("secret")).get("key") or ""
        if not access or not secret:
            raise CallerRejected(Rejection.MISSING, "auth.identity.hw_ak_sk needs access.key and secret.key.")
        resolved = console_services.access_key_resolve(access_key_id=str(access))
        if resolved and crypto.constant_time_equals(resolved[1], str(secret)):
            return get_user_model().objects.filter(pk=resolved[0].user_id, is_active=True).first()
        return None
    raise IamRequestInvalid("Supported methods: password, hw_ak_sk.", param="auth.identity.methods")


def iam_token_issue(*, body: object) -> IssuedToken:
    """Check the identity in an IAM token request and store a new token's hash.

    Raises IamRequestInvalid for a body not in IAM's shape and CallerRejected for wrong or missing
    credentials (a wrong password and an unknown user are told apart nowhere)."""
    auth = _dict(body).get("auth")
    identity = _dict(auth).get("identity")
    if not isinstance(identity, dict) or not isinstance(identity.get("methods"), list):
        raise IamRequestInvalid("Body must be {auth: {identity: {methods: [...], ...}}}.", param="auth.identity")
    user = _identity_user(identity)
    if user is None:
        raise CallerRejected(Rejection.INVALID, "The username or password (or AK/SK) is incorrect.")
    project = _scope_project(user, _dict(auth).get("scope"))
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
