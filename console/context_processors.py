from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from console import selectors
from console.current import current_membership, signed_in

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
    authed = signed_in(request)
    if authed is None:
        return {}
    membership = current_membership(authed)
    return {
        "nav_items": _nav(authed),
        "current_membership": membership,
        "my_projects": list(selectors.projects_for_user(user=authed.user)),
    }
