"""The forecast engines as models of the registry: each engine is a scientific-computing model of the
`weather` group with a running deployment, so the task API's deployment path resolves to it."""

from __future__ import annotations

from console.models import Project
from forecasts import engines
from forecasts.models import ProjectBucket
from models_registry import services
from models_registry.models import Category, Deployment, LlmModel, Provider, ProviderKind

WEATHER_SLUG = "weather"


def forecast_catalogue_load(*, project: Project) -> Provider:
    """Idempotent, like the other catalogues: rows that exist keep an admin's switches."""
    provider = Provider.objects.filter(project=project, slug=WEATHER_SLUG).first()
    if provider is None:
        # Kind "local": the engines run inside the console's own workers, no upstream to configure.
        provider = services.provider_create(
            project=project,
            by=None,
            fields={"slug": WEATHER_SLUG, "name": "Built-in forecast engines", "kind": ProviderKind.LOCAL},
        )
    for engine in engines.engines():
        model = LlmModel.objects.filter(provider=provider, name=engine.name).first()
        if model is None:
            model = services.model_create(
                provider=provider,
                by=None,
                fields={
                    "name": engine.name,
                    "display_name": engine.title,
                    "category": Category.SCIENTIFIC,
                    "context_length": 1,
                    "description": engine.title,
                    "cap_infer": True,
                    # A weather model answers forecast tasks, never chat or text completions.
                    "supports_chat": False,
                    "supports_completions": False,
                },
            )
        if not Deployment.objects.filter(project=project, model=model).exists():
            services.deployment_create(project=project, model=model, by=None, context_length=1, name=engine.title)
    return provider


def bucket_register(*, project: Project, name: str) -> None:
    """The bucket belongs to the project (bootstrap: the demo bucket to the default project), unless
    another project holds it already."""
    if not ProjectBucket.objects.filter(name=name).exists():
        ProjectBucket.objects.create(project=project, name=name)
