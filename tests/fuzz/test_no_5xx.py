"""The fuzz run: schemathesis generates requests from OpenAPI schemas and sends them, with valid
credentials for a project that has a model group, models and deployments, to a console served on
loopback whose upstream is the OpenAI-format simulator (tests/upstreams/). No answer may be a 5xx, and
every refusal must come in its door's error shape.

Schemas: the registry API's own (served at /api/registry/openapi.json by django-ninja) and the
hand-written ones under tests/fuzz/schemas/ for the gateway's three dialects and the IAM endpoints.
Each operation gets FUZZ_EXAMPLES positive and as many negative examples (schema-breaking bodies,
parameters and types), derandomized so every run sends the same requests; path parameters name the
project's own objects half of the time, so generated bodies get past the 404s to the parameter checks,
the admission and the upstream call. About one body in eight carries a lone surrogate or a NUL in one of its strings.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from console.lib import netpolicy
from tests.chat.conftest import World
from tests.factories import PASSWORD

SCHEMAS = Path(__file__).parent / "schemas"
# Examples per operation and generation mode: the whole run stays near a minute on a 2-core machine.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)

# Text as an attacker may send it, with a lone surrogate (legal as a JSON escape, unencodable once decoded)
# or a NUL (which PostgreSQL's text cannot hold): in about one request of eight it replaces one string of
# the generated body. Slipped in after generation
# because schemathesis's schema validator cannot hold such strings, and built from a list because
# st.text() leaves surrogates out.
_TAINT = st.one_of(
    [st.none()] * 7
    + [
        st.lists(
            st.one_of(st.characters(codec="utf-8"), st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\x00"])),
            min_size=1,
            max_size=20,
        )
        .map("".join)
        .filter(lambda text: any("\ud800" <= ch <= "\udfff" or ch == "\x00" for ch in text))
    ]
)


def _taint(body: Any, text: str, pick: int) -> bool:
    """Replace one string value of a JSON body (the pick-th, cyclically) with `text`; False if it has none."""
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, str):
                slots.append((node, key))
            else:
                walk(value)

    walk(body)
    if not slots:
        return False
    node, key = slots[pick % len(slots)]
    node[key] = text
    return True


@dataclass
class Tally:
    """What one schema's run sent and got."""

    examples: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    waited: float = 0.0  # seconds spent waiting for answers, the rest is generating requests
    tainted: int = 0  # requests whose body carried a lone surrogate or a NUL

    def report(self, name: str, seconds: float) -> str:
        lines = [
            f"fuzz {name}: {sum(self.examples.values())} requests in {seconds:.1f} s "
            f"({self.waited:.1f} s waiting for answers; {self.tainted} with a lone surrogate or NUL)"
        ]
        lines += [f"  {count:4d}  {label}" for label, count in sorted(self.examples.items())]
        lines.append(f"  statuses: {dict(sorted(self.statuses.items()))}")
        return "\n".join(lines)


# The error shape of each door, for every 4xx.
def _openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("code"), str)


def _cloudbase_error(body: Any) -> bool:
    code = str(body.get("code", "")) if isinstance(body, dict) else ""
    return code.startswith(("AI_MODEL_", "EXCEED_")) and isinstance(body.get("message"), str)


def _pangu_error(body: Any) -> bool:
    code = str(body.get("error_code", "")) if isinstance(body, dict) else ""
    return code.startswith(("PANGU.", "APIG.")) and isinstance(body.get("error_msg"), str)


def _registry_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("detail"), str)


def _gateway_shape(path: str) -> Callable[[Any], bool]:
    if path.startswith("/v1/ai/"):
        return _cloudbase_error
    if path in {"/v1/chat/completions", "/v1/completions", "/v1/models"}:
        return _openai_error
    return _pangu_error


def _fuzz(
    schema: Any,
    *,
    base_url: str,
    headers: Callable[[str], dict[str, str]],
    path_parameters: Callable[[str], dict[str, Any]],
    shape: Callable[[str], Callable[[Any], bool]],
) -> Tally:
    """Send each operation's examples (DELETEs last, so the other operations meet the objects they
    name); every 5xx or error in the wrong shape is collected, not raised, so one run lists them all."""
    tally = Tally()
    session = requests.Session()

    def send(case: Any, label: str, taint: str | None, pick: int) -> None:
        tally.examples[label] += 1
        request = case.as_transport_kwargs(base_url=base_url, headers=headers(label))
        if taint is not None and "json" in request and _taint(request["json"], taint, pick):
            tally.tainted += 1
        started = time.monotonic()
        response = session.request(**request, timeout=30)
        tally.waited += time.monotonic() - started
        tally.statuses[response.status_code] += 1
        sent = f"{case.method} {case.formatted_path} query={case.query} body={request.get('json', case.body)!r}"[:400]
        if response.status_code >= 500:
            tally.failures.append(f"{response.status_code} for {sent}: {response.text[:300]}")
        elif response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not shape(case.operation.path)(body):
                tally.failures.append(f"{response.status_code} off-shape for {sent}: {response.text[:300]}")

    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    for operation in operations:
        own = path_parameters(operation.path)
        for mode in MODES:
            strategy = operation.as_strategy(generation_mode=mode)
            if own:
                strategy = st.one_of(operation.as_strategy(generation_mode=mode, path_parameters=own), strategy)
            _examples(strategy, f"{operation.method.upper()} {operation.path} ({mode.value})", send)
    session.close()
    return tally


def _examples(strategy: st.SearchStrategy[Any], label: str, send: Callable[[Any, str, str | None, int], None]) -> None:
    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, taint=_TAINT, pick=st.integers(min_value=0, max_value=1000))
    def run(case: Any, taint: str | None, pick: int) -> None:
        send(case, label, taint, pick)

    try:
        run()
    except Unsatisfiable:
        # Negative mode has nothing to break in an operation without parameters or body.
        if not label.endswith("(negative)"):
            raise


def _load(name: str) -> Any:
    schema = schemathesis.openapi.from_dict(yaml.safe_load((SCHEMAS / name).read_text()))
    # Credentials are given, not generated: the point is to get past them.
    schema.config.generation.update(with_security_parameters=False)
    return schema


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Generated provider URLs name made-up hosts: the address policy's save-time lookup must not send
    them to the machine's resolver. Literal addresses are still checked; any name resolves nowhere,
    which the policy accepts (as it does any name that does not resolve from here)."""

    def resolve(host: str, port: int) -> list[netpolicy.IPAddress]:
        literal = netpolicy.parse_ip(host)
        return [literal] if literal is not None else []

    monkeypatch.setattr(netpolicy, "resolve", resolve)
    yield


def _iam_token(world: World) -> str:
    from console.iam import iam_token_issue

    body = {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": "alice", "password": PASSWORD}}},
            "scope": {"project": {"id": world.alice.project.pk}},
        }
    }
    return iam_token_issue(body=body).token


def _run(name: str, run: Callable[[], Tally], capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    tally = run()
    with capsys.disabled():
        print("\n" + tally.report(name, time.monotonic() - started))
    assert sum(tally.examples.values()) > 0
    assert tally.failures == [], "\n".join(tally.failures[:20])


def test_gateway_dialects_never_answer_5xx(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    token = _iam_token(world)
    project = world.alice.project.pk
    own = {
        "/v1/ai/{group}/v1/chat/completions": {"group": world.provider.slug},
        "/v1/ai/{group}/v1/completions": {"group": world.provider.slug},
        "/v1/ai/{group}/v1/models": {"group": world.provider.slug},
        "/v1/{project_id}/deployments/{deployment_id}/chat/completions": {
            "project_id": project,
            "deployment_id": world.deployment.pk,
        },
        "/v1/{project_id}/deployments/{deployment_id}/text/completions": {
            "project_id": project,
            "deployment_id": world.text_deployment.pk,
        },
    }

    def headers(label: str) -> dict[str, str]:
        # Pangu callers log in through IAM; the others use an API key.
        return {"X-Auth-Token": token} if "/deployments/" in label else world.headers()

    _run(
        "gateway",
        lambda: _fuzz(
            _load("gateway.yaml"),
            base_url=world.url,
            headers=headers,
            path_parameters=lambda path: own.get(path, {}),
            shape=_gateway_shape,
        ),
        capsys,
    )
    assert world.upstream.state.requests, "no generated call reached the upstream"


def test_iam_endpoints_never_answer_5xx(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    token = _iam_token(world)
    _run(
        "iam",
        lambda: _fuzz(
            _load("iam.yaml"),
            base_url=world.url,
            headers=lambda label: {"X-Auth-Token": token} if label.startswith("GET") else {},
            path_parameters=lambda path: {},
            shape=lambda path: _pangu_error,
        ),
        capsys,
    )


def test_registry_api_never_answers_5xx(world: World, no_dns: None, capsys: pytest.CaptureFixture[str]) -> None:
    served = requests.get(world.url + "/api/registry/openapi.json", timeout=15)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    schema.config.generation.update(with_security_parameters=False)
    own = {
        "provider_id": world.provider.pk,
        "model_id": world.model.pk,
        "deployment_id": world.deployment.pk,
    }

    def path_parameters(path: str) -> dict[str, Any]:
        return {name: value for name, value in own.items() if "{" + name + "}" in path}

    _run(
        "registry",
        lambda: _fuzz(
            schema,
            base_url=world.url,
            headers=lambda label: world.headers(),
            path_parameters=path_parameters,
            shape=lambda path: _registry_error,
        ),
        capsys,
    )
    assert json.dumps(served.json()).count('"operationId"') >= 15
