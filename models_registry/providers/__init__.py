"""One adapter module per upstream kind; adding a provider touches its own file and ADAPTERS."""

from __future__ import annotations

from models_registry.models import Provider, ProviderKind
from models_registry.providers.base import ConnectionResult, ProviderAdapter
from models_registry.providers.local import LocalAdapter
from models_registry.providers.openai_compatible import OpenAICompatibleAdapter
from models_registry.providers.pangu import PanguAdapter

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    ProviderKind.OPENAI_COMPATIBLE: OpenAICompatibleAdapter,
    ProviderKind.PANGU: PanguAdapter,
    ProviderKind.LOCAL: LocalAdapter,
}


def adapter_for(provider: Provider) -> ProviderAdapter:
    return ADAPTERS[provider.kind](provider)


__all__ = ["ADAPTERS", "ConnectionResult", "ProviderAdapter", "adapter_for"]
