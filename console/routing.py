"""Websocket routes of every app, gathered for asgi.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from chat.consumers import PlaygroundConsumer

websocket_urlpatterns: list[URLPattern | URLResolver] = [
    path("ws/playground/", PlaygroundConsumer.as_asgi()),
]
