"""The bootstrapped Pangu catalogue equals the seed's two tables, cell by cell."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from console.models import Project
from models_registry.models import Deployment, LlmModel, Provider

# Transcribed from seeds/README.md (tables 1 and 2 of the Pangu manual), independently of the code.
#  name, context, deployable lengths, category, pretrain, finetune, evaluate, compress, infer
SEED = [
    ("盘古-NLP-N1-基础功能模型-32K", 32768, [4096, 32768], "base_function", "-", "✓", "-", "✓", "✓"),
    ("盘古-NLP-N2-基础功能模型-4K", 4096, [4096], "base_function", "-", "✓", "✓", "✓", "✓"),
    ("盘古-NLP-N2-基础功能模型-32K", 32768, [32768], "base_function", "-", "✓", "✓", "-", "✓"),
    ("盘古-NLP-N4-基础功能模型-4K", 4096, [4096], "base_function", "-", "✓", "-", "✓", "✓"),
    ("盘古-NLP-BI专业大模型-4K", 4096, [4096], "professional", "-", "-", "-", "-", "✓"),
    ("盘古-NLP-BI专业大模型-32K", 32768, [32768], "professional", "-", "-", "-", "-", "✓"),
    ("盘古-NLP-N2单场景模型-4K", 4096, [4096], "single_scenario", "-", "-", "-", "-", "✓"),
    ("盘古-NLP-N2单场景模型-32K", 32768, [32768], "single_scenario", "-", "-", "-", "-", "✓"),
]
CAPS = ["pretrain", "finetune", "evaluate", "compress", "infer"]


@pytest.fixture
def bootstrapped(db: None, settings: object) -> Project:
    settings.CONSOLE_ADMIN_PASSWORD = "pw-Admin-1234"  # type: ignore[attr-defined]
    call_command("bootstrap", stdout=StringIO())
    return Project.objects.get(name="default")


def test_catalogue_equals_seed_cell_by_cell(bootstrapped: Project) -> None:
    provider = Provider.objects.get(project=bootstrapped, slug="pangu")
    assert provider.kind == "pangu" and not provider.is_configured
    models = list(LlmModel.objects.filter(provider=provider).order_by("pk"))
    assert [m.name for m in models] == [row[0] for row in SEED]
    for model, (name, context, lengths, category, *matrix) in zip(models, SEED, strict=True):
        assert model.display_name == name
        assert model.context_length == context, name
        assert model.allowed_context_lengths == lengths, name
        assert model.category == category, name
        got = ["✓" if model.capabilities[c] else "-" for c in CAPS]
        assert got == matrix, name
        assert model.enabled and not model.fine_tuned
        # The manual's rule: evaluation only after SFT.
        assert model.evaluation_available is False


def test_every_model_has_a_running_deployment(bootstrapped: Project) -> None:
    deployments = Deployment.objects.filter(project=bootstrapped, model__provider__slug="pangu")
    assert deployments.count() == 8
    assert {d.state for d in deployments} == {"running"}
    assert all(len(d.id) == 36 for d in deployments)


def test_bootstrap_is_idempotent_and_keeps_admin_changes(bootstrapped: Project) -> None:
    LlmModel.objects.filter(name="盘古-NLP-N4-基础功能模型-4K").update(enabled=False)
    call_command("bootstrap", stdout=StringIO())
    call_command("bootstrap", stdout=StringIO())
    assert Provider.objects.filter(slug="pangu").count() == 1
    # Pangu, the local models and the two forecast engines (built-in, Pangu-Weather: listed even without
    # its files, its availability saying why it cannot run).
    assert LlmModel.objects.count() == 8 + 2 + 2 and Deployment.objects.count() == 8 + 2 + 2
    assert set(LlmModel.objects.filter(provider__slug="weather").values_list("name", flat=True)) == {
        "builtin-spectral",
        "pangu-weather",
    }
    assert LlmModel.objects.get(name="盘古-NLP-N4-基础功能模型-4K").enabled is False


def test_api_lists_the_catalogue(bootstrapped: Project, client: Client) -> None:
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.get(username="admin"))
    body = client.get("/api/registry/models?provider=pangu").json()
    assert body["count"] == 8
    for item, (name, context, _lengths, category, *matrix) in zip(body["items"], SEED, strict=True):
        assert item["name"] == name and item["provider"] == "pangu"
        assert item["context_length"] == context and item["category"] == category
        assert ["✓" if item["capabilities"][c] else "-" for c in CAPS] == matrix


def test_local_models_are_registered(bootstrapped: Project) -> None:
    local = Provider.objects.get(project=bootstrapped, slug="local")
    assert local.kind == "local" and local.is_configured
    chat, text = (LlmModel.objects.get(provider=local, name=n) for n in ("smollm2-135m-instruct", "gemma-3-270m"))
    assert chat.supports_chat and chat.supports_completions and chat.cap_infer and chat.enabled
    # Gemma 3 270M is the base model: no chat template, so completion only.
    assert not text.supports_chat and text.supports_completions
    assert Deployment.objects.filter(model__provider=local, state="running").count() == 2
