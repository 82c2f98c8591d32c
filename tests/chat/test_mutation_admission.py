"""The gateway's admission (chat/gateway.py `_resolve`, `_check_model`, `_admit`, `_take_slot_and_rate`)
called directly: each refusal with its exact failure, message and param, one case per neighbouring pair
of checks (a call failing both is refused by the earlier), what the call has learnt when refused, and the
quota reservation's exact size. Expected figures are worked out by hand. Written against the surviving
mutants of `make mutation`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat import gateway, quota
from chat.errors import Failure, GatewayError
from chat.gateway import Route, _admit, _Call, _check_model, _resolve, _take_slot_and_rate
from chat.models import QuotaCounter
from console.callers import Caller, caller_for_session
from models_registry.models import Deployment, DeploymentState, LlmModel, Provider
from tests.factories import make_project, make_user

pytestmark = pytest.mark.django_db

OPENAI = Route(entry="openai", mode="chat")
HI = [{"role": "user", "content": "hi"}]


class Setup:
    def __init__(self) -> None:
        owner = make_user("owner")
        self.project = make_project(name="p", owner=owner)
        self.caller: Caller = caller_for_session(user=owner, project=self.project)
        self.sim = Provider.objects.create(project=self.project, slug="sim", name="Sim", kind="local")
        self.beta = Provider.objects.create(project=self.project, slug="beta", name="Beta", kind="local")
        self.chat = LlmModel.objects.create(provider=self.sim, name="m", context_length=8192)
        self.beta_m = LlmModel.objects.create(provider=self.beta, name="m", context_length=8192)
        self.only_beta = LlmModel.objects.create(provider=self.beta, name="b-only", context_length=600)
        self.deployment = Deployment.objects.create(project=self.project, model=self.chat, context_length=8192)
        elsewhere = make_project(name="q", owner=make_user("stranger"))
        other = Provider.objects.create(project=elsewhere, slug="sim", name="Sim", kind="local")
        self.foreign = LlmModel.objects.create(provider=other, name="foreign", context_length=8192)
        self.foreign_deployment = Deployment.objects.create(project=elsewhere, model=self.foreign, context_length=10)
        theirs = Provider.objects.create(project=elsewhere, slug="theirs", name="Theirs", kind="local")
        LlmModel.objects.create(provider=theirs, name="m", context_length=8192)

    def pangu(self, deployment_id: str, project_id: object = None) -> Route:
        return Route(
            entry="pangu",
            mode="chat",
            project_id=self.project.pk if project_id is None else project_id,  # type: ignore[arg-type]
            deployment_id=deployment_id,
        )

    def call(self, route: Route = OPENAI) -> _Call:
        return _Call(caller=self.caller, route=route, request_id="r", started=0.0)


@pytest.fixture
def s() -> Setup:
    return Setup()


def _refused(fn: Any, *args: Any) -> tuple[Failure, str, str | None]:
    with pytest.raises(GatewayError) as caught:
        fn(*args)
    return caught.value.failure, caught.value.message, caught.value.param


# --- _resolve ---------------------------------------------------------------------------------------
def test_resolve_a_deployment(s: Setup) -> None:
    assert _resolve(s.caller, s.pangu(s.deployment.pk), {}) == (s.sim, s.chat)
    assert _refused(_resolve, s.caller, s.pangu(s.deployment.pk, project_id="other-project"), {}) == (
        Failure.GROUP_NOT_FOUND,
        "The requested resource does not exist: check project_id.",
        None,
    )
    missing = (
        Failure.GROUP_NOT_FOUND,
        "The requested resource does not exist: no deployment 'gone' in this project (deleted, or never "
        "created); check project_id and deployment_id.",
        None,
    )
    assert _refused(_resolve, s.caller, s.pangu("gone"), {}) == missing
    foreign = s.foreign_deployment.pk
    assert _refused(_resolve, s.caller, s.pangu(foreign), {})[1].startswith(
        f"The requested resource does not exist: no deployment {foreign!r} in this project"
    )
    Deployment.objects.filter(pk=s.deployment.pk).update(state=DeploymentState.STOPPED)
    assert _refused(_resolve, s.caller, s.pangu(s.deployment.pk), {}) == (
        Failure.MODEL_DISABLED,
        f"NLP service status is not running or have been deleted: deployment {s.deployment.pk!r} exists but is "
        "stopped; start it on Models → Deployments.",
        None,
    )


def test_resolve_by_name(s: Setup) -> None:
    # Two groups serve "m": without a group the first by slug ("beta" before "sim").
    assert _resolve(s.caller, OPENAI, {"model": "m"}) == (s.beta, s.beta_m)
    assert _resolve(s.caller, Route(entry="cloudbase", mode="chat", group="sim"), {"model": "m"}) == (s.sim, s.chat)
    assert _resolve(s.caller, OPENAI, {"model": "sim/m"}) == (s.sim, s.chat)
    assert _resolve(s.caller, OPENAI, {"model": "beta/m"}) == (s.beta, s.beta_m)
    assert _resolve(s.caller, OPENAI, {"model": "b-only"}) == (s.beta, s.only_beta)
    # Only the first "/" splits off the group: the rest is the model's name, slashes and all.
    nested = LlmModel.objects.create(provider=s.beta, name="org/tiny", context_length=10)
    assert _resolve(s.caller, OPENAI, {"model": "beta/org/tiny"}) == (s.beta, nested)
    # A model whose own name holds a "/" is found by that name first.
    slashed = LlmModel.objects.create(provider=s.sim, name="beta/m", context_length=10)
    assert _resolve(s.caller, OPENAI, {"model": "beta/m"}) == (s.sim, slashed)


def test_resolve_refusals(s: Setup) -> None:
    required = (Failure.MODEL_REQUIRED, "The model parameter is required.", "model")
    assert _refused(_resolve, s.caller, OPENAI, {}) == required
    assert _refused(_resolve, s.caller, OPENAI, {"model": None}) == required
    assert _refused(_resolve, s.caller, OPENAI, {"model": ""}) == required
    for bad in (5, ["m"], False):
        assert _refused(_resolve, s.caller, OPENAI, {"model": bad}) == (
            Failure.PARAM_INVALID,
            "model must be a string.",
            "model",
        )
    assert _refused(_resolve, s.caller, OPENAI, {"model": "m\x00"}) == (
        Failure.PARAM_INVALID,
        "model must not contain NUL (\\u0000) characters.",
        "model",
    )
    assert _refused(_resolve, s.caller, Route(entry="cloudbase", mode="chat", group="nope"), {"model": "m"}) == (
        Failure.GROUP_NOT_FOUND,
        "Model group 'nope' was not found.",
        None,
    )
    unknown = (Failure.MODEL_NOT_SUPPORTED, "Model 'foreign' is not supported here.", "model")
    assert _refused(_resolve, s.caller, OPENAI, {"model": "foreign"}) == unknown
    # Within a group, another group's model is not there.
    assert _refused(_resolve, s.caller, Route(entry="cloudbase", mode="chat", group="sim"), {"model": "b-only"}) == (
        Failure.MODEL_NOT_SUPPORTED,
        "Model 'b-only' is not supported here.",
        "model",
    )
    assert _refused(_resolve, s.caller, OPENAI, {"model": "sim/b-only"}) == (
        Failure.MODEL_NOT_SUPPORTED,
        "Model 'b-only' is not supported here.",
        "model",
    )


def test_another_projects_group_is_not_found(s: Setup) -> None:
    assert _refused(_resolve, s.caller, Route(entry="cloudbase", mode="chat", group="theirs"), {"model": "m"}) == (
        Failure.GROUP_NOT_FOUND,
        "Model group 'theirs' was not found.",
        None,
    )
    assert _refused(_resolve, s.caller, OPENAI, {"model": "theirs/m"}) == (
        Failure.MODEL_NOT_SUPPORTED,
        "Model 'm' is not supported here.",
        "model",
    )


def test_resolve_group_before_model(s: Setup) -> None:
    # A missing group and a missing model name: the group is checked first.
    assert _refused(_resolve, s.caller, Route(entry="cloudbase", mode="chat", group="nope"), {})[0] == (
        Failure.GROUP_NOT_FOUND
    )


# --- _check_model -----------------------------------------------------------------------------------
def _check(s: Setup, mode: str = "chat", provider: dict[str, Any] | None = None, **model: Any) -> Any:
    p = Provider(**{"slug": "g", "kind": "local", **(provider or {})})
    m = LlmModel(name="m", context_length=10, **model)
    with pytest.raises(GatewayError) as caught:
        _check_model(p, m, mode)  # type: ignore[arg-type]
    return caught.value.failure, caught.value.message, caught.value.param


def test_check_model_refusals(s: Setup) -> None:
    disabled = (Failure.MODEL_DISABLED, "Model 'm' is disabled. Enable it in the console.", "model")
    assert _check(s, enabled=False) == disabled
    assert _check(s, provider={"enabled": False}) == disabled
    assert _check(s, cap_infer=False) == (Failure.NO_INFERENCE, "Model 'm' does not offer inference.", "model")
    assert _check(s, supports_chat=False) == (
        Failure.NO_INFERENCE,
        "Model 'm' is a text-completion model without a chat template: call /completions.",
        "model",
    )
    assert _check(s, "text", supports_completions=False) == (
        Failure.NO_INFERENCE,
        "Model 'm' serves chat only: call /chat/completions.",
        "model",
    )
    assert _check(s, provider={"kind": "openai_compatible", "base_url": ""}) == (
        Failure.CONFIG_MISSING,
        "Model group 'g' lacks the API key or configuration it needs.",
        None,
    )


def test_check_model_passes(s: Setup) -> None:
    _check_model(Provider(slug="g", kind="local"), LlmModel(name="m", supports_completions=False), "chat")
    _check_model(Provider(slug="g", kind="local"), LlmModel(name="m", supports_chat=False), "text")


def test_check_model_order_one_case_per_neighbouring_pair(s: Setup) -> None:
    assert _check(s, enabled=False, cap_infer=False)[0] == Failure.MODEL_DISABLED
    assert _check(s, provider={"enabled": False}, cap_infer=False)[0] == Failure.MODEL_DISABLED
    assert _check(s, cap_infer=False, supports_chat=False)[1] == "Model 'm' does not offer inference."
    assert _check(s, "text", cap_infer=False, supports_completions=False)[1] == "Model 'm' does not offer inference."
    assert _check(s, supports_chat=False, provider={"kind": "openai_compatible"})[0] == Failure.NO_INFERENCE
    assert _check(s, "text", supports_completions=False, provider={"kind": "openai_compatible"})[0] == (
        Failure.NO_INFERENCE
    )


# --- _admit -----------------------------------------------------------------------------------------
def test_admit_records_what_it_learnt_before_each_refusal(s: Setup) -> None:
    call = s.call()
    assert _refused(_admit, call, {"model": "nope", "messages": HI})[0] == Failure.MODEL_NOT_SUPPORTED
    assert (call.provider, call.model, call.request) == (None, None, None)
    LlmModel.objects.filter(pk=s.chat.pk).update(enabled=False)
    call = s.call()
    # Disabled and a bad n: the model check comes first, and the call knows its group and model.
    assert _refused(_admit, call, {"model": "sim/m", "messages": HI, "n": 99})[0] == Failure.MODEL_DISABLED
    assert (call.provider, call.model, call.request) == (s.sim, LlmModel.objects.get(pk=s.chat.pk), None)
    call = s.call()
    assert _refused(_admit, call, {"model": "beta/m", "messages": HI, "n": 99})[0] == Failure.PARAM_INVALID
    assert (call.provider, call.model, call.request) == (s.beta, s.beta_m, None)


def test_admit_without_a_quota(s: Setup) -> None:
    call = s.call()
    _admit(call, {"model": "beta/m", "messages": HI})
    assert call.request is not None and call.request.max_tokens is None and call.request.model == "m"
    assert (call.reservation, call.window) == (None, None)
    assert QuotaCounter.objects.count() == 0


def test_admit_reserves_exactly_under_a_quota(s: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota.time, "time", lambda: 6000.0)
    Provider.objects.filter(pk=s.beta.pk).update(token_quota=1034 + 610 + 36)
    call = s.call()
    _admit(call, {"model": "beta/m", "messages": HI})
    # "hi": 2 bytes + 8 for its message + the default cap of 1024, which is then sent upstream.
    assert call.request is not None and call.request.max_tokens == 1024
    counter = QuotaCounter.objects.get(provider=s.beta)
    assert (call.reservation, call.window) == ((counter.pk, 1034), 100)
    assert (counter.used, counter.reserved) == (0, 1034)
    # A model with a smaller context than the default cap: the context is the cap.
    call = s.call()
    _admit(call, {"model": "b-only", "messages": HI})
    assert call.request is not None and call.request.max_tokens == 600
    assert call.reservation == (counter.pk, 2 + 8 + 600)
    # The caller's own cap times n: 2 + 8 + 9 * 3 == 37, one token more than is left.
    call = s.call()
    assert _refused(_admit, call, {"model": "beta/m", "messages": HI, "max_tokens": 9, "n": 3}) == (
        Failure.QUOTA_EXCEEDED,
        "Model group 'beta' has used up its token quota.",
        None,
    )
    assert call.request is not None and call.request.max_tokens == 9
    assert (call.reservation, call.window) == (None, None)
    # One token given back: 37 now fills the quota exactly, and is admitted.
    QuotaCounter.objects.filter(pk=counter.pk).update(reserved=1034 + 610 - 1)
    call = s.call()
    _admit(call, {"model": "beta/m", "messages": HI, "max_tokens": 9, "n": 3})
    assert call.reservation == (counter.pk, 37)
    assert QuotaCounter.objects.get(pk=counter.pk).reserved == 1034 + 610 + 36


# --- _take_slot_and_rate ----------------------------------------------------------------------------
class FakeLimiter:
    def __init__(self, slot: str | None = "slot-1", wait: float = 0.0) -> None:
        self.slot, self.wait = slot, wait
        self.asked: list[tuple[Any, ...]] = []

    async def acquire_slot(self, provider_id: int, limit: int, lease_seconds: float) -> str | None:
        self.asked.append(("slot", provider_id, limit, lease_seconds))
        return self.slot

    async def take_rate(self, provider_id: int, rps: float) -> float:
        self.asked.append(("rate", provider_id, rps))
        return self.wait


def _limits(limiter: FakeLimiter, **fields: Any) -> tuple[_Call, GatewayError | None]:
    call = _Call(caller=None, route=OPENAI, request_id="r", started=0.0)  # type: ignore[arg-type]
    provider = Provider(pk=42, slug="g", **fields)
    try:
        asyncio.run(_take_slot_and_rate(call, provider, limiter))  # type: ignore[arg-type]
    except GatewayError as error:
        return call, error
    return call, None


def test_no_limits_asks_nothing() -> None:
    limiter = FakeLimiter()
    call, error = _limits(limiter)
    assert (error, call.slot, limiter.asked) == (None, None, [])


def test_a_slot_then_the_rate() -> None:
    limiter = FakeLimiter()
    call, error = _limits(limiter, max_concurrency=3, rps=2.5)
    assert (error, call.slot) == (None, "slot-1")
    assert limiter.asked == [("slot", 42, 3, gateway.limits.LEASE_SECONDS), ("rate", 42, 2.5)]


def test_no_free_slot_is_refused_before_the_rate() -> None:
    limiter = FakeLimiter(slot=None, wait=5.0)
    call, error = _limits(limiter, max_concurrency=1, rps=0.5)
    assert error is not None and call.slot is None
    assert (error.failure, error.message, error.retry_after) == (
        Failure.CONCURRENCY_EXCEEDED,
        "Model group 'g' is at its limit of 1 concurrent requests.",
        1,
    )
    assert limiter.asked == [("slot", 42, 1, gateway.limits.LEASE_SECONDS)]


@pytest.mark.parametrize(("wait", "retry_after"), [(0.001, 1), (1.0, 1), (1.2, 2), (7.0, 7)])
def test_over_the_rate_keeps_the_slot_for_release(wait: float, retry_after: int) -> None:
    call, error = _limits(FakeLimiter(wait=wait), max_concurrency=2, rps=0.5)
    assert call.slot == "slot-1"
    assert error is not None
    assert (error.failure, error.message, error.retry_after) == (
        Failure.RATE_EXCEEDED,
        "Model group 'g' allows 0.5 requests per second.",
        retry_after,
    )


def test_rate_only() -> None:
    limiter = FakeLimiter(wait=0.0)
    call, error = _limits(limiter, rps=3.0)
    assert (error, call.slot, limiter.asked) == (None, None, [("rate", 42, 3.0)])


def test_a_deployment_costs_one_query_and_a_nul_id_none(s: Setup, django_assert_num_queries: Any) -> None:
    # The deployment comes with its model and group in one query (the admission runs on every call).
    with django_assert_num_queries(1):
        provider, model = _resolve(s.caller, s.pangu(s.deployment.pk), {})
        assert (provider.slug, model.name) == ("sim", "m")
    # A NUL is in no stored id, and PostgreSQL refuses a query holding one: it never reaches the database.
    with django_assert_num_queries(0):
        assert _refused(_resolve, s.caller, s.pangu(s.deployment.pk + "\x00"), {})[0] == Failure.GROUP_NOT_FOUND


def test_lookups_by_name_cost_a_query_each(s: Setup, django_assert_num_queries: Any) -> None:
    # The model comes with its group: one query by name, two with a "group/" prefix (is there a model
    # named so? no: then by group and name), two through a group's path (the group, then its model).
    with django_assert_num_queries(1):
        assert [x.slug for x in _resolve(s.caller, OPENAI, {"model": "m"})[:1]] == ["beta"]
    with django_assert_num_queries(2):
        assert _resolve(s.caller, OPENAI, {"model": "sim/m"})[0].slug == "sim"
    with django_assert_num_queries(2):
        assert _resolve(s.caller, Route(entry="cloudbase", mode="chat", group="sim"), {"model": "m"})[0].slug == "sim"
    # A NUL in a group's name never reaches the database either.
    with django_assert_num_queries(0):
        assert _refused(_resolve, s.caller, Route(entry="cloudbase", mode="chat", group="si\x00m"), {"model": "m"}) == (
            Failure.GROUP_NOT_FOUND,
            "Model group 'si\\x00m' was not found.",
            None,
        )
