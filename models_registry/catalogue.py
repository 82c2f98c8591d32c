"""The Pangu NLP catalogue exactly as the platform manual's two tables give it (seeds/README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from console.models import Project
from local_llm.bundled import BUNDLED
from models_registry import services
from models_registry.models import Category, Deployment, LlmModel, Provider, ProviderKind

PANGU_SLUG = "pangu"


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    context_length: int
    deploy_context_lengths: tuple[int, ...]
    category: str
    # pre-train, fine-tune, evaluate, compress, infer
    matrix: tuple[bool, bool, bool, bool, bool]
    description: str


_ = False
Y = True

# fmt: off
PANGU_CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry(
        "盘古-NLP-N1-基础功能模型-32K", 32768, (4096, 32768), Category.BASE, (_, Y, _, Y, Y),
        "基于NLP-N1-基模型训练的基础功能模型,具备文案生成、多轮对话、实体抽取、翻译、知识问答等大模型通用能力,"
        "具有32K上下文能力,可外推至128K。部署可选4096、32768。",
    ),
    CatalogueEntry(
        "盘古-NLP-N2-基础功能模型-4K", 4096, (4096,), Category.BASE, (_, Y, Y, Y, Y),
        "基于NLP-N2-基模型训练的基础功能模型,具备文案生成、多轮对话、实体抽取、翻译、知识问答等大模型通用能力。",
    ),
    CatalogueEntry(
        "盘古-NLP-N2-基础功能模型-32K", 32768, (32768,), Category.BASE, (_, Y, Y, _, Y),
        "基于NLP-N2-基模型训练的基础功能模型,具备文案生成、多轮对话、实体抽取、翻译、知识问答等大模型通用能力。",
    ),
    CatalogueEntry(
        "盘古-NLP-N4-基础功能模型-4K", 4096, (4096,), Category.BASE, (_, Y, _, Y, Y),
        "基于NLP-N4-基模型训练的基础功能模型,具备文案生成、多轮对话、实体抽取、翻译、知识问答等大模型通用能力,"
        "具有4K上下文能力。",
    ),
    CatalogueEntry(
        "盘古-NLP-BI专业大模型-4K", 4096, (4096,), Category.PROFESSIONAL, (_, _, _, _, Y),
        "基于NLP-N2-基础功能模型运用特定专业代码数据训练后的BI专业大模型,具有4K上下文能力。支持模型推理,不支持模型训练。",
    ),
    CatalogueEntry(
        "盘古-NLP-BI专业大模型-32K", 32768, (32768,), Category.PROFESSIONAL, (_, _, _, _, Y),
        "基于NLP-N2-基础功能模型运用特定专业代码数据训练后的BI专业大模型,具有32K上下文能力。支持模型推理,不支持模型训练。",
    ),
    CatalogueEntry(
        "盘古-NLP-N2单场景模型-4K", 4096, (4096,), Category.SINGLE_SCENARIO, (_, _, _, _, Y),
        "基于NLP-N2-基模型训练的单场景模型,可支持选择一个场景进行推理,如:搜索RAG方案等,具有4K上下文能力。",
    ),
    CatalogueEntry(
        "盘古-NLP-N2单场景模型-32K", 32768, (32768,), Category.SINGLE_SCENARIO, (_, _, _, _, Y),
        "基于NLP-N2-基模型训练的单场景模型,可支持选择一个场景进行推理,如:搜索RAG方案等,具有32K上下文能力。",
    ),
)
# fmt: on


@transaction.atomic
def pangu_catalogue_load(*, project: Project) -> Provider:
    """Create the `pangu` group, its 8 models and one running deployment each. Idempotent: rows
    that exist are left as they are, so an admin's switches survive later bootstraps."""
    provider = Provider.objects.filter(project=project, slug=PANGU_SLUG).first()
    if provider is None:
        provider = services.provider_create(
            project=project,
            by=None,
            fields={"slug": PANGU_SLUG, "name": "Huawei Pangu", "kind": ProviderKind.PANGU},
        )
    for entry in PANGU_CATALOGUE:
        model = LlmModel.objects.filter(provider=provider, name=entry.name).first()
        if model is None:
            pretrain, finetune, evaluate, compress, infer = entry.matrix
            model = services.model_create(
                provider=provider,
                by=None,
                fields={
                    "name": entry.name,
                    "display_name": entry.name,
                    "category": entry.category,
                    "context_length": entry.context_length,
                    "deploy_context_lengths": list(entry.deploy_context_lengths),
                    "description": entry.description,
                    "cap_pretrain": pretrain,
                    "cap_finetune": finetune,
                    "cap_evaluate": evaluate,
                    "cap_compress": compress,
                    "cap_infer": infer,
                },
            )
        if not Deployment.objects.filter(project=project, model=model).exists():
            services.deployment_create(project=project, model=model, by=None, name=entry.name)
    return provider


LOCAL_SLUG = "local"


@transaction.atomic
def local_catalogue_load(*, project: Project, context_length: int) -> Provider:
    """Create the `local` group (the embedded model server), a model for each bundled one (under the id
    the server serves it as) and a deployment each. Idempotent like the Pangu catalogue."""
    provider = Provider.objects.filter(project=project, slug=LOCAL_SLUG).first()
    if provider is None:
        provider = services.provider_create(
            project=project,
            by=None,
            # The server runs one call per instance (two) and queues eight more; past that it answers 429 itself.
            fields={
                "slug": LOCAL_SLUG,
                "name": "Embedded local models",
                "kind": ProviderKind.LOCAL,
                "timeout_seconds": 120,
                "max_concurrency": 10,
            },
        )
    for bundled in BUNDLED:
        model = LlmModel.objects.filter(provider=provider, name=bundled.id).first()
        if model is None:
            model = services.model_create(
                provider=provider,
                by=None,
                fields={
                    "name": bundled.id,
                    "display_name": bundled.display_name,
                    "category": Category.CUSTOM,
                    "context_length": context_length,
                    "description": bundled.description,
                    "cap_infer": True,
                    "supports_chat": bundled.chat,
                    "supports_completions": True,
                },
            )
        if not Deployment.objects.filter(project=project, model=model).exists():
            services.deployment_create(project=project, model=model, by=None, name=bundled.display_name)
    return provider
