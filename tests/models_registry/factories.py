from __future__ import annotations

from typing import Any

from console.models import Project
from models_registry import services
from models_registry.models import Deployment, LlmModel, Provider


def make_provider(*, project: Project, slug: str = "ds", kind: str = "openai_compatible", **fields: Any) -> Provider:
    secrets = fields.pop("secrets", None)
    config = fields.pop("config", None)
    base = {"slug": slug, "name": slug.upper(), "kind": kind, "base_url": "http://127.0.0.1:9/v1"}
    return services.provider_create(project=project, by=None, fields={**base, **fields}, secrets=secrets, config=config)


def make_model(*, provider: Provider, name: str = "chat-1", **fields: Any) -> LlmModel:
    return services.model_create(provider=provider, by=None, fields={"name": name, **fields})


def make_deployment(*, model: LlmModel, **kwargs: Any) -> Deployment:
    return services.deployment_create(project=model.provider.project, model=model, by=None, **kwargs)
