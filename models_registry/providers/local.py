"""The embedded model server on loopback, reached like any OpenAI-compatible upstream."""

from __future__ import annotations

from django.conf import settings

from models_registry.providers.openai_compatible import OpenAICompatibleAdapter


class LocalAdapter(OpenAICompatibleAdapter):
    kind = "local"

    @property
    def base_url(self) -> str:
        return (self.provider.base_url or settings.LOCAL_LLM_URL).rstrip("/")
