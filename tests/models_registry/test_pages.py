"""The registry pages: model matrix, providers, deployments, and who may change what."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from models_registry import services
from models_registry.models import Deployment, LlmModel, Provider
from tests.conftest import Persona
from tests.models_registry import factories

SECRET = "sk-very-secret-4f9c2a7e1d"
IAM_SECRET = "iam-pass-8d7c6b5a"
SK_SECRET = "sk-pair-secret-0a1b2c3d"


def make_provider(persona: Persona, slug: str = "vllm", **fields: Any) -> Provider:
    return factories.make_provider(project=persona.project, slug=slug, secrets={"api_key": SECRET}, **fields)


def make_model(provider: Provider, name: str, **fields: Any) -> LlmModel:
    return factories.make_model(provider=provider, name=name, **fields)


@pytest.fixture
def client_for(client: Client) -> Callable[[Persona], Client]:
    def login(persona: Persona) -> Client:
        client.force_login(persona.user)
        return client

    return login


def _row(html: str, model: LlmModel) -> str:
    match = re.search(rf'<tr data-model-id="{model.pk}".*?</tr>', html, re.S)
    assert match is not None, f"no row for {model}"
    return match.group(0)


def _cells(row: str) -> list[str]:
    """The five capability cells of a row as ✓ / ✓ after SFT / —."""
    cells = re.findall(r'<td class="cap (yes|no)">(.*?)</td>', row, re.S)
    return [("✓ after SFT" if "after SFT" in body else "✓") if kind == "yes" else "—" for kind, body in cells]


def _listed(client: Client, **params: str) -> set[str]:
    html = client.get(reverse("models_registry:model_list"), params).content.decode()
    return set(re.findall(r'<tr data-model-id="\d+"[^>]*>\s*<td><a href="[^"]+">([^<]+)</a>', html))


# --- the matrix ------------------------------------------------------------------------------------
def test_matrix_shows_capabilities_as_ticks_and_dashes(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    provider = make_provider(alice)
    base = make_model(
        provider, "base-4k", display_name="Base 4K", cap_finetune=True, cap_evaluate=True, cap_compress=True
    )
    tuned = make_model(
        provider, "tuned", cap_pretrain=True, cap_finetune=True, cap_evaluate=True, fine_tuned=True, cap_infer=False
    )
    plain = make_model(provider, "plain", context_length=32768)
    html = client_for(alice).get(reverse("models_registry:model_list")).content.decode()

    for label in ("Pre-train", "Fine-tune", "Evaluate", "Compress", "Infer"):
        assert f'<th class="cap">{label}</th>' in html
    assert _cells(_row(html, base)) == ["—", "✓", "✓ after SFT", "✓", "✓"]
    assert _cells(_row(html, tuned)) == ["✓", "✓", "✓", "—", "—"]
    assert _cells(_row(html, plain)) == ["—", "—", "—", "—", "✓"]
    assert "Base 4K" in _row(html, base) and "32768" in _row(html, plain)
    assert 'title="Evaluation is offered only after supervised fine-tuning (SFT)"' in _row(html, base)
    assert "3 models" in html
    assert '<div class="table-wrap">' in html
    # the nav links to the matrix, and the sub-navigation to its siblings
    assert 'href="/models/"' in html and 'href="/models/providers/"' in html and 'href="/models/deployments/"' in html


def test_matrix_filters(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    vllm, ollama = make_provider(alice, "vllm"), make_provider(alice, "ollama")
    make_model(vllm, "qwen-7b", display_name="Qwen 7B", cap_finetune=True, description="chat in Chinese")
    make_model(vllm, "llama-8b", display_name="Llama 8B", enabled=False)
    make_model(ollama, "phi-3", display_name="Phi 3", cap_compress=True)
    client = client_for(alice)

    assert _listed(client) == {"Qwen 7B", "Llama 8B", "Phi 3"}
    assert _listed(client, provider="ollama") == {"Phi 3"}
    assert _listed(client, capability="finetune") == {"Qwen 7B"}
    assert _listed(client, capability="compress", provider="vllm") == set()
    assert _listed(client, state="disabled") == {"Llama 8B"}
    assert _listed(client, state="enabled") == {"Qwen 7B", "Phi 3"}
    assert _listed(client, q="llama") == {"Llama 8B"}
    assert _listed(client, q="chinese") == {"Qwen 7B"}  # the description counts too
    # The filter form keeps its values.
    html = client.get(reverse("models_registry:model_list"), {"provider": "ollama", "q": "ph"}).content.decode()
    assert '<option value="ollama" selected>' in html and 'value="ph"' in html


def test_matrix_empty_state_and_stale_filters(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    make_model(make_provider(alice), "qwen")
    client = client_for(alice)
    response = client.get(reverse("models_registry:model_list"), {"q": "no-such-model"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "No models match these filters" in html and "0 models" in html
    assert re.search(r'<a href="/models/">Reset the filters</a>', html)
    # Values no select offers (an old bookmark, a hand-edited URL) drop that filter, never a 500.
    response = client.get(reverse("models_registry:model_list"), {"provider": "gone", "capability": "x", "state": "?"})
    assert response.status_code == 200 and "1 model" in response.content.decode()


def test_matrix_query_count_does_not_grow_with_models(  # type: ignore[no-untyped-def]
    alice: Persona, client_for, django_assert_max_num_queries
) -> None:
    client = client_for(alice)
    provider = make_provider(alice)
    make_model(provider, "first")
    # session, user, membership, the provider filter's options, the models, the project switcher
    with django_assert_max_num_queries(6):
        assert client.get(reverse("models_registry:model_list")).status_code == 200
    other = make_provider(alice, "other")
    for i in range(10):
        make_model(other if i % 2 else provider, f"model-{i}", cap_finetune=True, cap_evaluate=True)
    with django_assert_max_num_queries(6):
        response = client.get(reverse("models_registry:model_list"))
    assert response.content.decode().count("data-model-id=") == 11


# --- the enable switch -----------------------------------------------------------------------------
def test_admin_toggles_with_a_form_and_goes_back_to_the_filtered_list(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    model = make_model(make_provider(alice), "qwen", display_name="Qwen")
    client = client_for(alice)
    html = client.get(reverse("models_registry:model_list")).content.decode()
    row = _row(html, model)
    assert 'role="switch"' in row and 'aria-label="Disable Qwen"' in row and ">enabled<" in row

    back = "/models/?capability=infer&q=qw"
    response = client.post(reverse("models_registry:model_toggle", args=[model.pk]), {"enabled": "0", "next": back})
    assert response.status_code == 302 and response["Location"] == back
    model.refresh_from_db()
    assert model.enabled is False
    row = _row(client.get(back).content.decode(), model)
    assert 'aria-label="Enable Qwen"' in row and ">disabled<" in row and 'aria-checked="false"' in row

    # `next` must stay on this site.
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example/"):
        response = client.post(reverse("models_registry:model_toggle", args=[model.pk]), {"enabled": "1", "next": evil})
        assert response["Location"] == reverse("models_registry:model_list")
    model.refresh_from_db()
    assert model.enabled is True


def test_admin_toggles_with_fetch_and_gets_json(alice: Persona) -> None:
    model = make_model(make_provider(alice), "qwen")
    client = Client(enforce_csrf_checks=True)  # as the browser: the token comes from the cookie, in a header
    client.force_login(alice.user)
    client.get(reverse("models_registry:model_list"))
    token = client.cookies["csrftoken"].value
    url = reverse("models_registry:model_toggle", args=[model.pk])

    response = client.post(url, {"enabled": "0"}, HTTP_ACCEPT="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert response.json() == {"id": model.pk, "enabled": False}
    assert LlmModel.objects.get(pk=model.pk).enabled is False

    response = client.post(url, {"enabled": "maybe"}, HTTP_ACCEPT="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 400 and "enabled=1" in response.json()["detail"]
    assert client.post(url, {"enabled": "1"}, HTTP_ACCEPT="application/json").status_code == 403  # no token
    response = client.post(url, {"enabled": "1"}, HTTP_ACCEPT="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.json() == {"id": model.pk, "enabled": True}


@pytest.mark.parametrize("who", ["carol", "dave"])
def test_members_read_operators_see_nothing_neither_changes(who: str, request, client_for) -> None:  # type: ignore[no-untyped-def]
    persona: Persona = request.getfixturevalue(who)
    alice: Persona = request.getfixturevalue("alice")
    provider = make_provider(alice)
    model = make_model(provider, "qwen", display_name="Qwen", cap_finetune=True)
    deployment = services.deployment_create(project=alice.project, model=model, by=alice.user)
    client = client_for(persona)

    if who == "carol":  # an operator's role is forecast jobs: every registry page is 403
        pages = ["model_list", "provider_list", "deployment_list"]
        for url in [reverse(f"models_registry:{name}") for name in pages] + [
            reverse("models_registry:model_detail", args=[model.pk])
        ]:
            assert client.get(url).status_code == 403, url
    else:
        _member_reads(client, model, deployment)
    _nothing_changes(client, provider, model, deployment, alice)


def _member_reads(client: Client, model: LlmModel, deployment: Deployment) -> None:
    html = client.get(reverse("models_registry:model_list")).content.decode()
    assert "Qwen" in html and ">enabled<" in html
    assert 'role="switch"' not in html and '<form method="post" action="/models/' not in html
    html = client.get(reverse("models_registry:model_detail", args=[model.pk])).content.decode()
    assert "Qwen" in html and 'role="switch"' not in html and 'id="model-edit"' not in html
    html = client.get(reverse("models_registry:provider_list")).content.decode()
    assert "vllm" in html and "New provider" not in html and "/edit/" not in html
    html = client.get(reverse("models_registry:deployment_list")).content.decode()
    assert deployment.id in html and "Deploy a model" not in html and "Stop</button>" not in html


def _nothing_changes(
    client: Client, provider: Provider, model: LlmModel, deployment: Deployment, alice: Persona
) -> None:
    forbidden = [
        (reverse("models_registry:model_toggle", args=[model.pk]), {"enabled": "0"}),
        (reverse("models_registry:model_detail", args=[model.pk]), {"display_name": "Mine", "category": "custom"}),
        (reverse("models_registry:provider_create"), {"slug": "x", "kind": "local", "timeout_seconds": "60"}),
        (reverse("models_registry:provider_edit", args=[provider.pk]), {"slug": "x"}),
        (reverse("models_registry:provider_test", args=[provider.pk]), {}),
        (reverse("models_registry:deployment_list"), {"model": str(model.pk)}),
        (reverse("models_registry:deployment_state", args=[deployment.id]), {"state": "stopped"}),
        (reverse("models_registry:deployment_delete", args=[deployment.id]), {}),
    ]
    for url, data in forbidden:
        assert client.post(url, data).status_code == 403, url
    assert client.get(reverse("models_registry:provider_create")).status_code == 403
    model.refresh_from_db()
    assert model.enabled is True and model.display_name == "Qwen"
    assert Deployment.objects.get(pk=deployment.pk).state == "running"
    assert Provider.objects.filter(project=alice.project).count() == 1


def test_other_projects_objects_are_404(alice: Persona, bob: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    provider = make_provider(alice)
    model = make_model(provider, "qwen", display_name="Alice's Qwen")
    deployment = services.deployment_create(project=alice.project, model=model, by=alice.user)
    client = client_for(bob)
    for url in (
        reverse("models_registry:model_detail", args=[model.pk]),
        reverse("models_registry:provider_edit", args=[provider.pk]),
    ):
        assert client.get(url).status_code == 404, url
    for url, data in (
        (reverse("models_registry:model_toggle", args=[model.pk]), {"enabled": "0"}),
        (reverse("models_registry:model_detail", args=[model.pk]), {"display_name": "Bob's"}),
        (reverse("models_registry:provider_edit", args=[provider.pk]), {"slug": "mine"}),
        (reverse("models_registry:provider_test", args=[provider.pk]), {}),
        (reverse("models_registry:deployment_state", args=[deployment.id]), {"state": "stopped"}),
        (reverse("models_registry:deployment_delete", args=[deployment.id]), {}),
    ):
        assert client.post(url, data).status_code == 404, url
    assert "Alice's Qwen" not in client.get(reverse("models_registry:model_list")).content.decode()
    assert deployment.id not in client.get(reverse("models_registry:deployment_list")).content.decode()
    # Bob cannot deploy alice's model into his project either.
    response = client.post(reverse("models_registry:deployment_list"), {"model": str(model.pk)})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert Deployment.objects.count() == 1


def test_pages_need_a_login_and_a_project(db: None, client: Client) -> None:
    from tests.factories import make_user

    assert client.get(reverse("models_registry:model_list")).status_code == 302
    client.force_login(make_user("loner"))
    assert client.get(reverse("models_registry:model_list")).status_code == 404


# --- model detail ----------------------------------------------------------------------------------
def test_model_detail_shows_everything_and_admin_edits(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    model = make_model(
        make_provider(alice),
        "pangu-n2",
        display_name="N2 4K",
        category="base_function",
        context_length=4096,
        deploy_context_lengths=[4096, 32768],
        description="Base function model.",
        cap_finetune=True,
        cap_evaluate=True,
    )
    deployment = services.deployment_create(project=alice.project, model=model, by=alice.user, name="prod")
    client = client_for(alice)
    url = reverse("models_registry:model_detail", args=[model.pk])
    html = client.get(url).content.decode()
    for text in ("N2 4K", "pangu-n2", "Base function", "4096, 32768", "Base function model.", deployment.id, "prod"):
        assert text in html, text
    assert "Evaluation is offered only after supervised fine-tuning (SFT)" in html
    assert "available after SFT" in html and 'aria-label="Disable N2 4K"' in html
    assert 'value="4096, 32768"' in html  # the edit form is prefilled

    data = {
        "display_name": "N2 tuned",
        "category": "professional",
        "context_length": "4096",
        "deploy_context_lengths": "4096, 8192",
        "description": "After SFT.",
        "cap_finetune": "on",
        "cap_evaluate": "on",
        "cap_infer": "on",
        "supports_chat": "on",
        "supports_completions": "on",
        "fine_tuned": "on",
        "enabled": "on",
    }
    response = client.post(url, data)
    assert response.status_code == 302
    model.refresh_from_db()
    assert model.display_name == "N2 tuned" and model.fine_tuned and model.evaluation_available
    assert model.deploy_context_lengths == [4096, 8192] and model.category == "professional"
    assert model.cap_compress is False
    assert "Evaluation</dt><dd>available</dd>" in client.get(url).content.decode()


def test_model_edit_errors_are_shown_not_500(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    model = make_model(make_provider(alice), "qwen")
    client = client_for(alice)
    url = reverse("models_registry:model_detail", args=[model.pk])
    base = {
        "display_name": "Qwen",
        "category": "custom",
        "context_length": "4096",
        "cap_infer": "on",
        "supports_chat": "on",
    }
    cases = [
        ({"context_length": "lots"}, "Enter a whole number"),
        ({"context_length": "0"}, "greater than or equal to 1"),
        ({"deploy_context_lengths": "4096, x"}, "Give whole numbers of tokens"),
        ({"deploy_context_lengths": "-5"}, "Give whole numbers of tokens"),
        ({"category": "weather"}, "Select a valid choice"),
        # the service's rule, shown on its field
        ({"fine_tuned": "on"}, "Only a model that supports fine-tuning can be marked fine-tuned."),
    ]
    for change, message in cases:
        response = client.post(url, {**base, **change})
        assert response.status_code == 200, change
        assert message in response.content.decode(), change
    model.refresh_from_db()
    assert model.fine_tuned is False
    assert client.get("/models/999999/").status_code == 404
    assert client.get("/models/abc/").status_code == 404
    assert client.post("/models/999999/toggle/", {"enabled": "0"}).status_code == 404
    assert client.get(reverse("models_registry:model_toggle", args=[model.pk])).status_code == 405


# --- providers -------------------------------------------------------------------------------------
def _provider_form(**overrides: str) -> dict[str, str]:
    return {
        "slug": "deepseek",
        "name": "DeepSeek",
        "kind": "openai_compatible",
        "base_url": "https://api.deepseek.example/v1",
        "timeout_seconds": "30",
        "token_quota": "",
        "quota_period": "total",
        "max_concurrency": "",
        "rps": "",
        "enabled": "on",
        **overrides,
    }


def _all_pages(client: Client, provider: Provider) -> str:
    urls = [
        reverse("models_registry:model_list"),
        reverse("models_registry:provider_list"),
        reverse("models_registry:provider_edit", args=[provider.pk]),
        reverse("models_registry:deployment_list"),
        "/",
    ]
    urls += [reverse("models_registry:model_detail", args=[m.pk]) for m in provider.models.all()]
    return "".join(client.get(url).content.decode() for url in urls)


def test_provider_create_and_edit_keep_secrets_secret(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(alice)
    html = client.get(reverse("models_registry:provider_list")).content.decode()
    assert 'href="/models/providers/new/"' in html and "New provider" in html

    response = client.post(
        reverse("models_registry:provider_create"),
        _provider_form(api_key=SECRET, token_quota="1000000", quota_period="monthly", max_concurrency="4", rps="2.5"),
    )
    assert response.status_code == 302
    provider = Provider.objects.get(project=alice.project, slug="deepseek")
    assert response["Location"] == reverse("models_registry:provider_edit", args=[provider.pk])
    assert provider.secrets() == {"api_key": SECRET}
    assert SECRET not in provider.secrets_encrypted and provider.is_configured
    assert (provider.token_quota, provider.quota_period, provider.max_concurrency, provider.rps) == (
        1_000_000,
        "monthly",
        4,
        2.5,
    )
    make_model(provider, "deepseek-chat")

    html = client.get(reverse("models_registry:provider_list")).content.decode()
    assert "configured" in html and "not configured" not in html
    assert "1000000 tokens (monthly)" in html and "4 concurrent" in html and "2.5 req/s" in html
    edit = client.get(reverse("models_registry:provider_edit", args=[provider.pk])).content.decode()
    assert re.search(r'<input type="password" name="api_key"[^>]*>', edit)
    assert not re.search(r'<input type="password" name="api_key"[^>]*value=', edit)  # never prefilled
    assert 'id="api_key-set">set</span>' in edit and "leave empty to keep" in edit
    assert 'name="clear_api_key"' in edit
    assert SECRET not in _all_pages(client, provider)

    # Empty keeps the key.
    url = reverse("models_registry:provider_edit", args=[provider.pk])
    assert client.post(url, _provider_form(name="DeepSeek V3", api_key="")).status_code == 302
    provider.refresh_from_db()
    assert provider.name == "DeepSeek V3" and provider.secrets() == {"api_key": SECRET}
    # A form error never echoes a typed secret.
    response = client.post(url, _provider_form(api_key="sk-typed-but-rejected", timeout_seconds="0"))
    assert response.status_code == 200 and "sk-typed-but-rejected" not in response.content.decode()
    response = client.post(url, _provider_form(api_key="sk-both", clear_api_key="on"))
    assert "Type a new value or tick clear, not both." in response.content.decode()
    # A new value replaces it; "clear" removes it.
    assert client.post(url, _provider_form(api_key="sk-rotated-1234")).status_code == 302
    provider.refresh_from_db()
    assert provider.secrets() == {"api_key": "sk-rotated-1234"}
    assert client.post(url, _provider_form(clear_api_key="on")).status_code == 302
    provider.refresh_from_db()
    assert provider.secrets() == {} and not provider.is_configured
    html = client.get(url).content.decode()
    assert 'id="api_key-set"' not in html and 'name="clear_api_key"' not in html
    assert "not configured" in client.get(reverse("models_registry:provider_list")).content.decode()


def test_pangu_provider_credentials(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(alice)
    form = _provider_form(
        slug="pangu",
        name="Pangu",
        kind="pangu",
        base_url="https://pangu.example/v1",
        project_id="0a1b2c",
        iam_endpoint="https://iam.example/v3",
        iam_username="svc",
        iam_password=IAM_SECRET,
        iam_domain="corp",
        access_key="AKID123",
        secret_key=SK_SECRET,
    )
    html = client.get(reverse("models_registry:provider_create")).content.decode()
    assert 'fieldset data-kind="pangu"' in html and 'name="iam_password"' in html  # there without JS
    assert client.post(reverse("models_registry:provider_create"), form).status_code == 302
    provider = Provider.objects.get(slug="pangu")
    assert provider.secrets() == {"iam_password": IAM_SECRET, "secret_key": SK_SECRET}
    assert provider.config == {
        "project_id": "0a1b2c",
        "iam_endpoint": "https://iam.example/v3",
        "iam_username": "svc",
        "iam_domain": "corp",
        "access_key": "AKID123",
    }
    assert provider.is_configured
    url = reverse("models_registry:provider_edit", args=[provider.pk])
    edit = client.get(url).content.decode()
    assert 'value="AKID123"' in edit and 'value="svc"' in edit  # non-secret settings are prefilled
    assert 'id="iam_password-set">set</span>' in edit and 'id="secret_key-set">set</span>' in edit
    assert 'id="api_key-set"' not in edit
    pages = _all_pages(client, provider)
    assert IAM_SECRET not in pages and SK_SECRET not in pages

    # Keep the password, clear the SK, drop the AK.
    keep = {k: v for k, v in form.items() if k not in {"iam_password", "secret_key"}}
    response = client.post(url, {**keep, "access_key": "", "clear_secret_key": "on"})
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.secrets() == {"iam_password": IAM_SECRET}
    assert "access_key" not in provider.config and provider.is_configured  # by IAM password


def test_provider_form_rejects_bad_input_without_500(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    existing = make_provider(alice, "vllm")
    client = client_for(alice)
    url = reverse("models_registry:provider_create")
    cases = [
        ({"slug": "no spaces please"}, "Enter a valid “slug”"),
        ({"slug": "vllm"}, "Another provider of this project has this slug."),
        ({"kind": "quantum"}, "Select a valid choice"),
        ({"base_url": "ftp://files.example"}, "Enter an http:// or https:// URL."),
        ({"timeout_seconds": "soon"}, "Enter a number"),
        ({"timeout_seconds": "9999"}, "less than or equal to 600"),
        ({"token_quota": "many"}, "Enter a whole number"),
        ({"token_quota": "99999999999999999999999"}, "less than or equal to"),
        ({"max_concurrency": "0"}, "greater than or equal to 1"),
        ({"rps": "nan"}, "Enter a number"),
        ({"kind": "local", "api_key": SECRET}, "takes no api_key"),
    ]
    for change, message in cases:
        response = client.post(url, _provider_form(**change))
        assert response.status_code == 200, change
        html = response.content.decode()
        assert message in html, (change, html[html.find("errorlist") - 200 : html.find("errorlist") + 300])
        assert SECRET not in html
    assert Provider.objects.filter(project=alice.project).count() == 1
    # Renaming onto another provider's slug is an error too; its own slug is fine.
    make_provider(alice, "ollama")
    edit = reverse("models_registry:provider_edit", args=[existing.pk])
    assert "has this slug" in client.post(edit, _provider_form(slug="ollama")).content.decode()
    # (at its own base URL: moving it elsewhere would need its API key typed again)
    assert client.post(edit, _provider_form(slug="vllm", base_url="http://127.0.0.1:9/v1")).status_code == 302
    assert client.get("/models/providers/999999/edit/").status_code == 404


def test_test_connection_reports_an_unreachable_upstream(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    provider = make_provider(alice)
    client = client_for(alice)
    url = reverse("models_registry:provider_test", args=[provider.pk])
    edit = client.get(reverse("models_registry:provider_edit", args=[provider.pk])).content.decode()
    assert f'action="{url}"' in edit and "Test connection" in edit

    response = client.post(url, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="msg-error">Connection failed: Cannot connect' in html
    assert SECRET not in html

    response = client.post(url, HTTP_ACCEPT="application/json")
    data = response.json()
    assert data["ok"] is False and data["message"].startswith("Cannot connect") and data["latency_ms"] is None
    assert client.get(url).status_code == 405
    assert client.post("/models/providers/999999/test/").status_code == 404


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback server speaking the OpenAI `GET /v1/models` answer; records the requests' headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
            body = json.dumps({"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def test_test_connection_reports_success_with_latency(alice: Persona, client_for, upstream) -> None:  # type: ignore[no-untyped-def]
    base_url, seen = upstream
    provider = make_provider(alice, base_url=base_url)
    client = client_for(alice)
    response = client.post(reverse("models_registry:provider_test", args=[provider.pk]), follow=True)
    html = response.content.decode()
    assert re.search(r'class="msg-success">OK — Connected; the upstream lists 2 model\(s\)\. \([0-9.]+ ms\)<', html)
    assert seen == [{"path": "/v1/models", "authorization": f"Bearer {SECRET}"}]
    assert SECRET not in html


def test_test_connection_is_an_async_view() -> None:
    # The upstream may take its whole timeout: that wait must not hold a worker thread.
    from asgiref.sync import iscoroutinefunction

    from models_registry import views

    assert iscoroutinefunction(views.provider_test)


# --- deployments -----------------------------------------------------------------------------------
def test_deployments_page_shows_ids_and_admin_manages_them(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    model = make_model(
        make_provider(alice), "n1-32k", display_name="N1 32K", context_length=32768, deploy_context_lengths=[4096]
    )
    client = client_for(alice)
    url = reverse("models_registry:deployment_list")

    response = client.post(url, {"model": str(model.pk), "context_length": "4096", "name": "edge"})
    assert response.status_code == 302
    deployment = Deployment.objects.get(project=alice.project)
    assert (deployment.model_id, deployment.context_length, deployment.name, deployment.state) == (
        model.pk,
        4096,
        "edge",
        "running",
    )

    html = client.get(url).content.decode()
    project_id = alice.project.id
    assert f'<code id="project-id">{project_id}</code>' in html and 'data-copy="#project-id"' in html
    assert f'<code id="dep-{deployment.id}">{deployment.id}</code>' in html
    assert f'data-copy="#dep-{deployment.id}"' in html
    assert f"/v1/{project_id}/deployments/{deployment.id}/chat/completions" in html
    assert "N1 32K" in html and "edge" in html and ">running<" in html and "data-confirm=" in html

    state = reverse("models_registry:deployment_state", args=[deployment.id])
    assert client.post(state, {"state": "stopped"}).status_code == 302
    assert Deployment.objects.get(pk=deployment.pk).state == "stopped"
    assert ">stopped<" in client.get(url).content.decode()
    response = client.post(state, {"state": "paused"}, follow=True)
    assert "Send state=running or state=stopped." in response.content.decode()
    assert client.post(state, {"state": "running"}).status_code == 302
    assert Deployment.objects.get(pk=deployment.pk).state == "running"

    assert client.post(reverse("models_registry:deployment_delete", args=[deployment.id])).status_code == 302
    assert not Deployment.objects.exists()
    assert client.post(reverse("models_registry:deployment_delete", args=["no-such-id"])).status_code == 404
    assert client.post(reverse("models_registry:deployment_state", args=["nope"]), {"state": "x"}).status_code == 404


def test_deployment_create_errors_are_shown_not_500(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    model = make_model(make_provider(alice), "qwen", context_length=8192, deploy_context_lengths=[4096])
    client = client_for(alice)
    url = reverse("models_registry:deployment_list")
    cases = [
        ({"model": str(model.pk), "context_length": "2048"}, "can be deployed with 4096, 8192 tokens"),
        ({"model": str(model.pk), "context_length": "big"}, "Enter a whole number"),
        ({"model": "999999"}, "Select a valid choice"),
        ({"model": "abc"}, "Select a valid choice"),
        ({}, "This field is required"),
        ({"model": str(model.pk), "name": "x" * 101}, "at most 100 characters"),
    ]
    for data, message in cases:
        response = client.post(url, data)
        assert response.status_code == 200, data
        assert message in response.content.decode(), data
    assert not Deployment.objects.exists()
    # An empty context length means the model's own.
    assert client.post(url, {"model": str(model.pk)}).status_code == 302
    assert Deployment.objects.get().context_length == 8192


def test_admin_deletes_model_and_provider_others_cannot(  # type: ignore[no-untyped-def]
    alice: Persona, dave: Persona, bob: Persona, client_for
) -> None:

    provider = make_provider(alice)
    model = make_model(provider, "to-delete")
    services.deployment_create(project=alice.project, model=model, by=None)
    other = make_model(provider, "kept")
    member = client_for(dave)
    assert member.post(reverse("models_registry:model_delete", args=[model.pk])).status_code == 403
    outsider = client_for(bob)
    assert outsider.post(reverse("models_registry:provider_delete", args=[provider.pk])).status_code == 404
    admin = client_for(alice)
    assert b"Delete model" in admin.get(reverse("models_registry:model_detail", args=[model.pk])).content
    response = admin.post(reverse("models_registry:model_delete", args=[model.pk]), follow=True)
    assert b"deleted" in response.content
    assert not LlmModel.objects.filter(pk=model.pk).exists() and not Deployment.objects.filter(model_id=model.pk)
    assert admin.get(reverse("models_registry:model_delete", args=[other.pk])).status_code == 405
    response = admin.post(reverse("models_registry:provider_delete", args=[provider.pk]), follow=True)
    assert b"deleted" in response.content and not Provider.objects.filter(pk=provider.pk).exists()
