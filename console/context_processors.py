from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from console import selectors
from console.current import current_membership, signed_in
from console.models import Role

# (label, url name). A section appears once its app serves the URL, so the
# navigation never links to a page that is not there.
NAV_ITEMS: list[tuple[str, str]] = [
    ("Dashboard", "console:dashboard"),
    ("Models", "models_registry:model_list"),
    ("Playground", "chat:playground"),
    ("Forecasts", "forecasts:job_list"),
    ("API keys", "console:keys"),
    ("Operations", "console:operations"),
    ("Usage log", "console:usage"),
    ("Audit log", "console:audit"),
]


# Sections outside an operator's role (forecast jobs and their own keys): their pages answer 403, so
# the navigation does not offer them.
NOT_FOR_OPERATORS = frozenset({"models_registry:model_list", "chat:playground", "console:usage"})
# Sections for a project's admins only (their pages answer 403 to anyone else).
ADMINS_ONLY = frozenset({"console:audit", "console:operations"})


def _nav(request: HttpRequest, role: str | None) -> list[dict[str, Any]]:
    items = []
    for label, name in NAV_ITEMS:
        if role == Role.OPERATOR and name in NOT_FOR_OPERATORS:
            continue
        if name in ADMINS_ONLY and role != Role.ADMIN:
            continue
        try:
            url = reverse(name)
        except NoReverseMatch:
            continue
        active = request.path == url or (url != "/" and request.path.startswith(url))
        items.append({"label": label, "url": url, "active": active})
    return items


def navigation(request: HttpRequest) -> dict[str, Any]:
    authed = signed_in(request)
    if authed is None:
        return {}
    membership = current_membership(authed)
    return {
        "nav_items": _nav(authed, membership.role if membership is not None else None),
        "current_membership": membership,
        "my_projects": list(selectors.projects_for_user(user=authed.user)),
    }
