"""The current project of a request: the one chosen in the session, else the user's first."""

from __future__ import annotations

from typing import cast

from django.contrib.auth.models import User
from django.http import HttpRequest

from console import selectors
from console.models import Membership


class AuthedRequest(HttpRequest):
    """A request to a view behind `login_required`: its user is signed in."""

    user: User


def signed_in(request: HttpRequest) -> AuthedRequest | None:
    """The request as a signed-in one, or None for an anonymous visitor (or no auth middleware)."""
    user = getattr(request, "user", None)
    return cast(AuthedRequest, request) if user is not None and user.is_authenticated else None


SESSION_KEY = "project_id"
_CACHE_ATTR = "_console_membership"


def current_membership(request: AuthedRequest) -> Membership | None:
    """Resolved once per request and only when asked, so pages that never need it cost no query."""
    if not hasattr(request, _CACHE_ATTR):
        user = request.user
        project_id = request.session.get(SESSION_KEY)
        membership = selectors.membership_for(user=user, project_id=project_id) if project_id else None
        setattr(request, _CACHE_ATTR, membership or selectors.default_membership(user=user))
    return getattr(request, _CACHE_ATTR)


def set_current_project(request: AuthedRequest, project_id: str) -> None:
    request.session[SESSION_KEY] = project_id
    if hasattr(request, _CACHE_ATTR):
        delattr(request, _CACHE_ATTR)


def require_current_membership(request: AuthedRequest) -> Membership:
    """The current membership, or a 404 page that says how to get one."""
    from django.http import Http404

    membership = current_membership(request)
    if membership is None:
        raise Http404("You are not a member of any project yet. Ask a project admin to add you.")
    return membership
