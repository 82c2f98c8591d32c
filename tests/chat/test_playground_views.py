"""The playground's HTTP side (chat/views.py): the page, and rename, share, delete and export of a
stored conversation. Owners change their conversations; project members read shared ones; anyone
else gets the 404 of a conversation that does not exist."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from chat import services
from chat.models import Conversation, Turn, TurnRole, TurnStatus
from console.current import SESSION_KEY
from models_registry import services as registry_services
from tests.conftest import Persona
from tests.factories import PASSWORD


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


@pytest.fixture
def conversation(alice: Persona) -> Conversation:
    c = services.conversation_create(
        owner=alice.user, project=alice.project, model_name="m", system="Be brief.", title="Rivers of China"
    )
    services.turn_append(conversation=c, role=TurnRole.USER, content="介绍下长江")
    services.turn_append(
        conversation=c,
        role=TurnRole.ASSISTANT,
        content="The **Yangtze**.",
        model_name="m",
        prompt_tokens=5,
        completion_tokens=4,
        total_tokens=9,
        status=TurnStatus.OK,
    )
    return c


def test_the_page_lists_models_by_provider_with_context_and_base_models_text_only(alice: Persona) -> None:
    local = registry_services.provider_create(
        project=alice.project, by=None, fields={"slug": "local", "name": "Local", "kind": "local"}
    )
    registry_services.model_create(provider=local, by=None, fields={"name": "chatty", "context_length": 2048})
    registry_services.model_create(
        provider=local, by=None, fields={"name": "base-270m", "context_length": 8192, "supports_chat": False}
    )
    registry_services.model_create(provider=local, by=None, fields={"name": "off", "enabled": False})
    registry_services.model_create(provider=local, by=None, fields={"name": "no-infer", "cap_infer": False})
    other = registry_services.provider_create(
        project=alice.project, by=None, fields={"slug": "vllm", "name": "vLLM", "kind": "openai_compatible"}
    )
    registry_services.model_create(provider=other, by=None, fields={"name": "chatty", "context_length": 4096})

    response = _client("alice").get("/playground/")
    assert response.status_code == 200
    groups = response.context["model_groups"]
    assert [(g["provider"], g["configured"]) for g in groups] == [("Local", True), ("vLLM", False)]
    assert groups[0]["models"] == [
        {"value": "base-270m", "label": "base-270m", "context_length": 8192, "chat": False, "text": True},
        {"value": "local/chatty", "label": "chatty", "context_length": 2048, "chat": True, "text": True},
    ]
    # The same name in two providers: each is qualified by its provider, as the gateway resolves it.
    assert groups[1]["models"][0]["value"] == "vllm/chatty"
    html = response.content.decode()
    assert "base-270m · 8192 tokens · text only" in html
    assert '<optgroup label="vLLM (not configured)">' in html
    # The persona presets include the Pangu manual's kindergarten teacher, word for word.
    assert "你的名字叫智子,是一名幼儿园老师" in html
    assert 'id="temperature" min="0" max="2" step="0.1" value="0.7"' in html


def test_operators_get_403_and_anonymous_visitors_the_login_page(alice: Persona, carol: Persona) -> None:
    assert _client("carol").get("/playground/").status_code == 403
    response = Client().get("/playground/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_stored_conversation_opens_with_its_turns(alice: Persona, conversation: Conversation) -> None:
    response = _client("alice").get(f"/playground/c/{conversation.pk}/")
    assert response.status_code == 200
    data = response.context["page_data"]["conversation"]
    assert [(t["role"], t["content"]) for t in data["turns"]] == [
        ("user", "介绍下长江"),
        ("assistant", "The **Yangtze**."),
    ]
    assert response.context["read_only"] is False


def test_rename_share_and_delete_by_the_owner(alice: Persona, conversation: Conversation) -> None:
    client = _client("alice")
    url = f"/playground/c/{conversation.pk}/"
    assert client.post(url + "rename/", {"title": "  Yangtze  "}).status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "Yangtze"
    client.post(url + "rename/", {"title": "   "})  # refused: a title cannot be empty
    conversation.refresh_from_db()
    assert conversation.title == "Yangtze"

    client.post(url + "share/", {"shared": "on"})
    conversation.refresh_from_db()
    assert conversation.shared is True
    client.post(url + "share/", {"shared": "off"})
    conversation.refresh_from_db()
    assert conversation.shared is False

    response = client.post(url + "delete/")
    assert response.status_code == 302 and response["Location"] == "/playground/"
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Turn.objects.filter(conversation_id=conversation.pk).exists()
    assert client.get(url).status_code == 404


def test_exports_as_markdown_and_json(alice: Persona, conversation: Conversation) -> None:
    client = _client("alice")
    md = client.get(f"/playground/c/{conversation.pk}/export.md")
    assert md.status_code == 200
    assert md["Content-Disposition"] == 'attachment; filename="rivers-of-china.md"'
    assert md.content.decode() == (
        "# Rivers of China\n\nModel: `m` (chat)\n\n## System\n\nBe brief.\n\n## User\n\n介绍下长江\n\n"
        "## Assistant (m)\n\nThe **Yangtze**.\n"
    )
    js = client.get(f"/playground/c/{conversation.pk}/export.json")
    assert js["Content-Disposition"] == 'attachment; filename="rivers-of-china.json"'
    data = json.loads(js.content)
    assert (data["title"], data["system"], len(data["turns"])) == ("Rivers of China", "Be brief.", 2)
    assert data["turns"][1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert client.get(f"/playground/c/{conversation.pk}/export.txt").status_code == 404


def test_a_member_reads_a_shared_conversation_and_changes_nothing(dave: Persona, conversation: Conversation) -> None:
    client = _client("dave")
    url = f"/playground/c/{conversation.pk}/"
    assert client.get(url).status_code == 404  # not shared yet: as if it did not exist
    services.conversation_set_shared(conversation=conversation, shared=True)
    response = client.get(url)
    assert response.status_code == 200 and response.context["read_only"] is True
    assert b"Shared by alice: read-only" in response.content
    assert b'id="composer"' not in response.content
    assert client.get(url + "export.md").status_code == 200
    for action, body in (("rename/", {"title": "mine now"}), ("share/", {"shared": "off"}), ("delete/", {})):
        assert client.post(url + action, body).status_code == 403
    conversation.refresh_from_db()
    assert (conversation.title, conversation.shared) == ("Rivers of China", True)


def test_the_session_project_decides_where_a_new_chat_goes(alice: Persona, conversation: Conversation) -> None:
    client = _client("alice")
    session = client.session
    session[SESSION_KEY] = alice.project.pk
    session.save()
    response = client.get("/playground/")
    assert response.context["page_data"]["project"] == alice.project.pk
    assert [c.pk for c in response.context["conversations"]] == [conversation.pk]
