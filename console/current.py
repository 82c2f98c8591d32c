"""The current project of a request: the one chosen in the session, else the user's first."""

from __future__ import annotations

from django.http import HttpRequest

from console import selectors
from console.models import Membership

SESSION_KEY = "project_id"
_CACHE_ATTR = "_console_membership"


def current_membership(request: HttpRequest) -> Membership | None:
    """Resolved once per request and only when asked, so pages that never need it cost no query."""
    if not hasattr(request, _CACHE_ATTR):
        user = request.user
        project_id = request.session.get(SESSION_KEY)
        membership = selectors.membership_for(user=user, project_id=project_id) if project_id else None
        setattr(request, _CACHE_ATTR, membership or selectors.default_membership(user=user))
    return getattr(request, _CACHE_ATTR)


def set_current_project(request: HttpRequest, project_id: str) -> None:
    request.session[SESSION_KEY] = project_id
    if hasattr(request, _CACHE_ATTR):
        delattr(request, _CACHE_ATTR)


def require_current_membership(request: HttpRequest) -> Membership:
    """The current membership, or a 404 page that says how to get one."""
    from django.http import Http404

    membership = current_membership(request)
    if membership is None:
        raise Http404("You are not a member of any project yet. Ask a project admin to add you.")
    return membership
