"""Every check, in order, with its code in every dialect."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from chat.errors import Failure, Spelling
from models_registry.models import LlmModel, Provider
from tests.chat.conftest import World, operator_key, post, usage_records

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


def _call(
    world: World, dialect: str, body: dict, headers: dict | None = None, group: str = "sim", mode: str = "chat"
) -> httpx.Response:
    headers = world.headers() if headers is None else headers
    if dialect == "openai":
        url = f"{world.url}/v1/{'chat/completions' if mode == 'chat' else 'completions'}"
    elif dialect == "cloudbase":
        url = f"{world.url}/v1/ai/{group}/v1/{'chat/completions' if mode == 'chat' else 'completions'}"
    else:
        body = {k: v for k, v in body.items() if k != "model"}
        deployment = world.deployment if mode == "chat" else world.text_deployment
        url = world.pangu_path("chat/completions" if mode == "chat" else "text/completions", deployment)
    return post(url, body, headers)


def assert_failure(response: httpx.Response, dialect: str, failure: Failure) -> None:
    spelling = failure.value
    assert response.status_code == spelling.status, response.text
    body = response.json()
    if dialect == "openai":
        assert body["error"]["code"] == spelling.openai_code and body["error"]["type"] == spelling.openai_type
        assert body["error"]["message"]
    elif dialect == "cloudbase":
        assert body["code"] == spelling.cloudbase and body["message"] and body["requestId"]
    else:
        assert body["error_code"] == spelling.pangu and body["error_msg"] and body["request_id"]
        assert response.headers["X-Request-Id"] == body["request_id"]


DIALECTS = ["openai", "cloudbase", "pangu"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_auth_missing_and_failed(world: World, dialect: str) -> None:
    assert_failure(_call(world, dialect, CHAT, headers={}), dialect, Failure.AUTH_MISSING)
    bad = {"Authorization": "Bearer lmc-" + "x" * 48}
    assert_failure(_call(world, dialect, CHAT, headers=bad), dialect, Failure.AUTH_FAILED)
    assert_failure(
        _call(world, dialect, CHAT, headers={"X-Auth-Token": "MIIlmc-unknown"}), dialect, Failure.AUTH_FAILED
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_operator_cannot_infer(world: World, dialect: str) -> None:
    key = operator_key(world)
    assert_failure(_call(world, dialect, CHAT, headers={"Authorization": f"Bearer {key}"}), dialect, Failure.FORBIDDEN)


def test_group_not_found(world: World) -> None:
    assert_failure(_call(world, "cloudbase", CHAT, group="nope"), "cloudbase", Failure.GROUP_NOT_FOUND)
    wrong_project = post(
        f"{world.url}/v1/{'0' * 32}/deployments/{world.deployment.id}/chat/completions",
        {"messages": [{"content": "hi"}]},
        world.headers(),
    )
    assert_failure(wrong_project, "pangu", Failure.GROUP_NOT_FOUND)
    wrong_deployment = post(
        f"{world.url}/v1/{world.alice.project.id}/deployments/nope/chat/completions",
        {"messages": [{"content": "hi"}]},
        world.headers(),
    )
    assert_failure(wrong_deployment, "pangu", Failure.GROUP_NOT_FOUND)


@pytest.mark.parametrize("dialect", ["openai", "cloudbase"])
def test_model_required_and_unknown(world: World, dialect: str) -> None:
    assert_failure(_call(world, dialect, {"messages": CHAT["messages"]}), dialect, Failure.MODEL_REQUIRED)
    assert_failure(_call(world, dialect, {**CHAT, "model": "gpt-9"}), dialect, Failure.MODEL_NOT_SUPPORTED)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_disabled_no_inference_and_config_missing(world: World, dialect: str) -> None:
    LlmModel.objects.filter(pk=world.model.pk).update(enabled=False)
    assert_failure(_call(world, dialect, CHAT), dialect, Failure.MODEL_DISABLED)
    LlmModel.objects.filter(pk=world.model.pk).update(enabled=True, cap_infer=False)
    assert_failure(_call(world, dialect, CHAT), dialect, Failure.NO_INFERENCE)
    LlmModel.objects.filter(pk=world.model.pk).update(cap_infer=True)
    provider = Provider.objects.get(pk=world.provider.pk)
    provider.set_secrets({})
    provider.save()
    assert_failure(_call(world, dialect, CHAT), dialect, Failure.CONFIG_MISSING)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("change", "failure"),
    [
        (lambda b: {**b, "messages": []}, Failure.PARAM_INVALID),
        (lambda b: {**b, "messages": [{"role": "user"}]}, Failure.PARAM_INVALID),
        (lambda b: {**b, "temperature": 7}, Failure.PARAM_INVALID),
        (lambda b: {**b, "top_p": "high"}, Failure.PARAM_INVALID),
        (lambda b: {**b, "stream": "maybe"}, Failure.PARAM_INVALID),
        (lambda b: {**b, "stop": [1]}, Failure.PARAM_INVALID),
        (lambda b: {**b, "max_tokens": 0}, Failure.MAX_TOKENS_INVALID),
        (lambda b: {**b, "max_tokens": 9000}, Failure.MAX_TOKENS_INVALID),
        (lambda b: {**b, "messages": [{"role": "user", "content": "字" * 9000}]}, Failure.CONTENT_TOO_LONG),
    ],
)
def test_invalid_parameters(world: World, dialect: str, change: Callable[[dict], dict], failure: Failure) -> None:
    response = _call(world, dialect, change(dict(CHAT)))
    if dialect != "pangu" and failure in (Failure.MAX_TOKENS_INVALID, Failure.CONTENT_TOO_LONG):
        assert response.status_code == 400
        return
    assert_failure(response, dialect, failure)
    assert world.upstream.state.requests == []  # nothing bad reaches the upstream


def test_pangu_n_rules(world: World) -> None:
    body = {"messages": [{"content": "hi"}]}
    assert_failure(_call(world, "pangu", {**body, "n": 3}), "pangu", Failure.N_UNARY_INVALID)
    assert_failure(_call(world, "pangu", {**body, "n": 0}), "pangu", Failure.N_UNARY_INVALID)
    assert_failure(_call(world, "pangu", {**body, "n": 2, "stream": "true"}), "pangu", Failure.N_STREAM_INVALID)
    ok = _call(world, "pangu", {**body, "n": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_malformed_json_is_param_invalid(world: World, dialect: str) -> None:
    url = {
        "openai": f"{world.url}/v1/chat/completions",
        "cloudbase": f"{world.url}/v1/ai/sim/v1/chat/completions",
        "pangu": world.pangu_path(),
    }[dialect]
    response = httpx.post(url, content=b"{nope", headers={**world.headers(), "Content-Type": "application/json"})
    assert_failure(response, dialect, Failure.PARAM_INVALID)


def test_checks_run_in_order(world: World) -> None:
    """With several faults at once, the earliest check answers."""
    LlmModel.objects.filter(pk=world.model.pk).update(enabled=False)
    # Unknown group beats a disabled model; a missing model beats a bad parameter.
    assert_failure(
        _call(world, "cloudbase", {**CHAT, "temperature": 9}, group="nope"), "cloudbase", Failure.GROUP_NOT_FOUND
    )
    assert_failure(_call(world, "cloudbase", {"messages": [], "temperature": 9}), "cloudbase", Failure.MODEL_REQUIRED)
    assert_failure(_call(world, "cloudbase", {**CHAT, "temperature": 9}), "cloudbase", Failure.MODEL_DISABLED)


def test_refusals_are_recorded(world: World) -> None:
    _call(world, "openai", {**CHAT, "model": "gpt-9"})
    (record,) = usage_records(1)
    assert record.status == "error" and record.error_code == "MODEL_NOT_SUPPORTED" and record.http_status == 404


def test_get_is_refused_cleanly(world: World) -> None:
    response = httpx.get(f"{world.url}/v1/chat/completions", headers=world.headers())
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def _documented_failures() -> dict[str, Spelling]:
    """The rows of docs/api.md's error table, parsed: name → spelling."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = doc.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\| `(\w+)` \| (\d+) \| `([^`]+)` / `([^`]+)` \| `([^`]+)` \| `([^`]+)` \|$")
    rows: dict[str, Spelling] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            found = row.match(line)
            assert found, f"docs/api.md has a malformed error row: {line}"
            name, status, openai_type, openai_code, cloudbase, pangu = found.groups()
            assert name not in rows, f"docs/api.md lists {name} twice"
            rows[name] = Spelling(int(status), openai_type, openai_code, cloudbase, pangu)
    return rows


def test_docs_error_table_is_the_failures_both_ways() -> None:
    documented = _documented_failures()
    actual = {failure.name: failure.value for failure in Failure}
    assert set(actual) - set(documented) == set(), "failures missing from docs/api.md"
    assert set(documented) - set(actual) == set(), "docs/api.md rows that are no Failure"
    for name, spelling in actual.items():
        assert documented[name] == spelling, f"docs/api.md misstates {name}"
