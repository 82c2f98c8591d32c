from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from console import selectors
from console.current import current_membership

# (label, url name). A section appears once its app serves the URL, so the
# navigation never links to a page that is not there.
NAV_ITEMS: list[tuple[str, str]] = [
    ("Dashboard", "console:dashboard"),
    ("Models", "models_registry:model_list"),
    ("Playground", "chat:playground"),
    ("Forecasts", "forecasts:job_list"),
    ("API keys", "console:keys"),
]


def _nav(request: HttpRequest) -> list[dict[str, Any]]:
    items = []
    for label, name in NAV_ITEMS:
        try:
            url = reverse(name)
        except NoReverseMatch:
            continue
        active = request.path == url or (url != "/" and request.path.startswith(url))
        items.append({"label": label, "url": url, "active": active})
    return items


def navigation(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    membership = current_membership(request)
    return {
        "nav_items": _nav(request),
        "current_membership": membership,
        "my_projects": list(selectors.projects_for_user(user=user)),
    }
