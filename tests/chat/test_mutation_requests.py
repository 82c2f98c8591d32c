"""chat/requests.py's parameter checks, called directly: each refusal with its exact failure, message and
param, each limit on both sides of its boundary, and the accepted request compared field by field.
Written against the surviving mutants of `make mutation`; expected values are worked out by hand here.
"""

from __future__ import annotations

from typing import Any

import pytest

from chat.errors import Failure, GatewayError
from chat.requests import (
    check_name,
    check_text,
    estimate_tokens,
    parse_request,
    prompt_token_bound,
    request_text,
    reservation_size,
)
from models_registry.models import LlmModel
from models_registry.providers.base import InferenceRequest

HI = [{"role": "user", "content": "hi"}]


def _model(context_length: int = 100) -> LlmModel:
    return LlmModel(name="m-1", context_length=context_length)


def _parse(body: dict[str, Any], *, mode: str = "chat", pangu: bool = False, context: int = 100) -> InferenceRequest:
    return parse_request(body=body, mode=mode, pangu=pangu, model=_model(context))  # type: ignore[arg-type]


def _refusal(body: dict[str, Any], **kwargs: Any) -> tuple[Failure, str, str | None]:
    with pytest.raises(GatewayError) as caught:
        _parse(body, **kwargs)
    return caught.value.failure, caught.value.message, caught.value.param


def test_an_accepted_chat_request_field_by_field() -> None:
    body = {"messages": HI, "max_tokens": 5, "temperature": 1, "top_p": 0.5, "stop": "x", "n": 2}
    assert _parse(body) == InferenceRequest(
        mode="chat",
        model="m-1",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=1.0,
        top_p=0.5,
        stop=["x"],
        n=2,
        stream=False,
        logprobs=False,
    )
    request = _parse(body)
    assert type(request.temperature) is float and type(request.top_p) is float


def test_defaults_and_logprobs_only_for_pangu_unary() -> None:
    plain = _parse({"messages": HI})
    assert (plain.max_tokens, plain.temperature, plain.top_p, plain.stop, plain.n, plain.stream) == (
        None,
        None,
        None,
        None,
        1,
        False,
    )
    assert plain.logprobs is False
    assert _parse({"messages": HI}, pangu=True).logprobs is True
    assert _parse({"messages": HI, "stream": True}, pangu=True).logprobs is False


@pytest.mark.parametrize("value", [True, "true", "True", 1])
def test_stream_true_spellings(value: object) -> None:
    assert _parse({"messages": HI, "stream": value}).stream is True


@pytest.mark.parametrize("value", [None, False, "false", "False", 0])
def test_stream_false_spellings(value: object) -> None:
    assert _parse({"messages": HI, "stream": value}).stream is False


@pytest.mark.parametrize("value", ["yes", "TRUE", 2, "XXtrueXX"])
def test_stream_other_values_refused(value: object) -> None:
    assert _refusal({"messages": HI, "stream": value}) == (
        Failure.PARAM_INVALID,
        "stream must be true or false.",
        "stream",
    )


@pytest.mark.parametrize(
    ("name", "low", "high", "message"),
    [
        ("temperature", 0, 2, "temperature must be a number between 0 and 2."),
        ("top_p", 0, 1, "top_p must be a number between 0 and 1."),
    ],
)
def test_number_bounds(name: str, low: float, high: float, message: str) -> None:
    assert getattr(_parse({"messages": HI, name: low}), name) == 0.0
    assert getattr(_parse({"messages": HI, name: high}), name) == float(high)
    for bad in (low - 0.001, high + 0.001, True, "1", [1]):
        assert _refusal({"messages": HI, name: bad}) == (Failure.PARAM_INVALID, message, name)


def test_n_limits_per_dialect() -> None:
    four = "The parameter [n] can only be 1 to 4 when calling non-streaming."
    two = "The parameter [n] can only be 1 to 2 when calling non-streaming."
    streamed = "The parameter [n] can only be 1 when calling streaming."
    assert _parse({"messages": HI, "n": 4}).n == 4
    assert _parse({"messages": HI, "n": 1}).n == 1
    assert _refusal({"messages": HI, "n": 5}) == (Failure.PARAM_INVALID, four, "n")
    assert _refusal({"messages": HI, "n": 0}) == (Failure.PARAM_INVALID, four, "n")
    assert _parse({"messages": HI, "n": 2}, pangu=True).n == 2
    assert _refusal({"messages": HI, "n": 3}, pangu=True) == (Failure.N_UNARY_INVALID, two, "n")
    assert _refusal({"messages": HI, "n": 0}, pangu=True) == (Failure.N_UNARY_INVALID, two, "n")
    assert _parse({"messages": HI, "n": 1, "stream": True}).n == 1
    for n in (0, 2):
        assert _refusal({"messages": HI, "n": n, "stream": True}) == (Failure.N_STREAM_INVALID, streamed, "n")
    for bad in (True, 1.0, "1", None):
        assert _refusal({"messages": HI, "n": bad}) == (Failure.PARAM_INVALID, "n must be an integer.", "n")


def test_max_tokens_limits() -> None:
    message = "max_tokens must be an integer from 1 to the model's context length (100)."
    assert _parse({"prompt": "a", "max_tokens": 1}, mode="text").max_tokens == 1
    assert _parse({"prompt": "a", "max_tokens": 99}, mode="text").max_tokens == 99
    # max_tokens equal to the context passes its own check; the one-token prompt then overflows the context.
    assert _refusal({"prompt": "a", "max_tokens": 100}, mode="text")[0] == Failure.CONTENT_TOO_LONG
    for bad in (0, 101, True, "5", 5.0):
        assert _refusal({"prompt": "a", "max_tokens": bad}, mode="text") == (
            Failure.MAX_TOKENS_INVALID,
            message,
            "max_tokens",
        )


def test_stop_limits() -> None:
    message = "stop must be a string or a list of up to 4 strings."
    assert _parse({"messages": HI, "stop": ["a", "b", "c", "d"]}).stop == ["a", "b", "c", "d"]
    assert _parse({"messages": HI, "stop": "é"}).stop == ["é"]
    for bad in (["a", "b", "c", "d", "e"], ["a", 1], 7, {"a": 1}):
        assert _refusal({"messages": HI, "stop": bad}) == (Failure.PARAM_INVALID, message, "stop")
    assert _refusal({"messages": HI, "stop": ["a", "b\ud800"]}) == (
        Failure.PARAM_INVALID,
        "stop[1] is not valid Unicode: it holds a lone surrogate (\\ud800 at character 1); send UTF-8 text.",
        "stop",
    )


def test_required_parameter_per_mode() -> None:
    assert _refusal({}) == (Failure.PARAM_REQUIRED, "required api parameter is not present: messages.", "messages")
    assert _refusal({"messages": HI}, mode="text") == (
        Failure.PARAM_REQUIRED,
        "required api parameter is not present: prompt.",
        "prompt",
    )


def test_messages_shape() -> None:
    empty = (Failure.PARAM_INVALID, "messages must be a non-empty list.", "messages")
    assert _refusal({"messages": []}) == empty
    assert _refusal({"messages": {"role": "user"}}) == empty
    assert _refusal({"messages": [*HI, "hi"]}) == (Failure.PARAM_INVALID, "messages[1] must be an object.", "messages")
    roles = "messages[0].role must be system, developer, user, assistant or tool."
    assert _refusal({"messages": [{"role": "bot", "content": "x"}]}) == (Failure.PARAM_INVALID, roles, "messages")
    assert _refusal({"messages": [{"content": "x"}]}) == (Failure.PARAM_INVALID, roles, "messages")
    for role in ("system", "developer", "user", "assistant", "tool"):
        assert _parse({"messages": [{"role": role, "content": "x"}]}).messages == [{"role": role, "content": "x"}]


def test_pangu_role_less_turns_alternate() -> None:
    raw = [{"content": "a"}, {"content": "b"}, {"role": "system", "content": "s"}, {"content": "c"}]
    assert _parse({"messages": raw}, pangu=True).messages == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": "s"},
        {"role": "user", "content": "c"},
    ]


def test_content_parts() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert _parse({"messages": [{"role": "user", "content": parts}]}).messages[0]["content"] == "one\ntwo"
    shape = "messages[0].content must be a string or a non-empty list of text parts."
    contents: tuple[object, ...] = ([], None, 5)
    for bad in contents:
        assert _refusal({"messages": [{"role": "user", "content": bad}]}) == (Failure.PARAM_INVALID, shape, "messages")
    image = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]
    assert _refusal({"messages": [{"role": "user", "content": image}]}) == (
        Failure.PARAM_INVALID,
        "messages[0].content[1] is a 'image_url' part: only text parts "
        '({"type": "text", "text": "..."}) are supported.',
        "messages",
    )
    assert _refusal({"messages": [{"role": "user", "content": ["a"]}]})[1].startswith(
        "messages[0].content[0] is a 'str' part"
    )
    assert _refusal({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]})[1].startswith(
        "messages[0].content[0] is a 'text' part"
    )
    assert _refusal({"messages": [{"role": "user", "content": [{"type": "text", "text": "ok\udfff"}]}]}) == (
        Failure.PARAM_INVALID,
        "messages[0].content[0].text is not valid Unicode: it holds a lone surrogate (\\udfff at character 2); "
        "send UTF-8 text.",
        "messages",
    )
    assert _refusal({"messages": [{"role": "user", "content": "\ud800"}]}) == (
        Failure.PARAM_INVALID,
        "messages[0].content is not valid Unicode: it holds a lone surrogate (\\ud800 at character 0); "
        "send UTF-8 text.",
        "messages",
    )


def test_prompt_shapes() -> None:
    assert _parse({"prompt": ["only"]}, mode="text").prompt == "only"
    assert _parse({"prompt": "é"}, mode="text").prompt == "é"
    message = (Failure.PARAM_INVALID, "prompt must be a non-empty string.", "prompt")
    for bad in ("", ["a", "b"], [1], 5, []):
        assert _refusal({"prompt": bad}, mode="text") == message
    assert _refusal({"prompt": "x\ud800"}, mode="text") == (
        Failure.PARAM_INVALID,
        "prompt is not valid Unicode: it holds a lone surrogate (\\ud800 at character 1); send UTF-8 text.",
        "prompt",
    )


def test_content_and_max_tokens_against_the_context() -> None:
    # "a" * 8 estimates 2 tokens: 2 + 8 == 10 fits a context of 10 exactly, 2 + 9 does not.
    assert _parse({"prompt": "a" * 8, "max_tokens": 8}, mode="text", context=10).max_tokens == 8
    assert _refusal({"prompt": "a" * 8, "max_tokens": 9}, mode="text", context=10) == (
        Failure.CONTENT_TOO_LONG,
        "The content and max_tokens exceed the model's context length (10 tokens).",
        "prompt",
    )
    # Without max_tokens only the content counts: 44 characters estimate 11 tokens.
    assert _parse({"messages": [{"role": "user", "content": "a" * 40}]}, context=10).messages
    assert _refusal({"messages": [{"role": "user", "content": "a" * 41}]}, context=10) == (
        Failure.CONTENT_TOO_LONG,
        "The content and max_tokens exceed the model's context length (10 tokens).",
        "messages",
    )


def test_estimate_tokens_at_the_cjk_range_edges() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    # Each edge of both ranges counts one token per character; each neighbour outside, a quarter.
    for inside in ("\u3400", "\u9fff", "\uf900", "\ufaff", "\u4e2d"):
        assert estimate_tokens(inside * 5) == 5, hex(ord(inside))
    for outside in ("\u33ff", "\ua000", "\uf8ff", "\ufb00"):
        assert estimate_tokens(outside * 5) == 2, hex(ord(outside))
    assert estimate_tokens("中文ab") == 3


def test_request_text_bound_and_reservation() -> None:
    chat = InferenceRequest(
        mode="chat", model="m", messages=[{"role": "user", "content": "ab"}, {"role": "user", "content": "é"}]
    )
    assert request_text(chat) == "abé"
    # 4 bytes ("ab" + the two bytes of "é") + 8 per message.
    assert prompt_token_bound(chat) == 4 + 16
    text = InferenceRequest(mode="text", model="m", prompt="abc", messages=[{"role": "user", "content": "zz"}])
    assert request_text(text) == "abc"
    assert prompt_token_bound(InferenceRequest(mode="text", model="m", prompt="abc")) == 3 + 8
    text.messages = []
    assert reservation_size(text, _model(100)) == 3 + 8 + 100
    assert reservation_size(text, _model(5000)) == 3 + 8 + 1024
    text.max_tokens, text.n = 7, 3
    assert reservation_size(text, _model(5000)) == 3 + 8 + 21


def test_check_text() -> None:
    assert check_text("plain", "x") == "plain"
    assert check_text("é", "x") == "é"
    with pytest.raises(GatewayError) as caught:
        check_text("ab\ud800", "field")
    assert (caught.value.failure, caught.value.param) == (Failure.PARAM_INVALID, "field")
    assert caught.value.message == (
        "field is not valid Unicode: it holds a lone surrogate (\\ud800 at character 2); send UTF-8 text."
    )


def test_check_name() -> None:
    assert check_name("model-1", "model") == "model-1"
    assert check_name("é", "model") == "é"
    for bad, message in (
        ("a\x00b", "model must not contain NUL (\\u0000) characters."),
        ("\x00", "model must not contain NUL (\\u0000) characters."),
        ("x\ud800", "model is not valid Unicode: it holds a lone surrogate (\\ud800 at character 1); send UTF-8 text."),
    ):
        with pytest.raises(GatewayError) as caught:
            check_name(bad, "model")
        assert (caught.value.failure, caught.value.message, caught.value.param) == (
            Failure.PARAM_INVALID,
            message,
            "model",
        )
