"""A call's body checked and turned into the gateway's own request: pure functions, no database.

The limits a body is checked against live here, named once: the gateway, its tests and its docs
read them from this module.
"""

from __future__ import annotations

import math
from typing import Any

from chat.errors import Failure, GatewayError
from models_registry.models import LlmModel
from models_registry.providers.base import InferenceRequest, Mode

# max_tokens reserved against a token quota when the caller sets none.
DEFAULT_MAX_TOKENS = 1024
# Choices per non-streamed call (Pangu's own rule, 1 or 2, is stricter: PANGU.3320).
MAX_N = 4
PANGU_MAX_N = 2
MAX_STOP_SEQUENCES = 4
# Roles of the OpenAI chat format; `developer` is the newer name for `system`. Tool turns pass as
# text (the console does not run tools itself).
ROLES = ("system", "developer", "user", "assistant", "tool")
_ROLE_LIST = ", ".join(ROLES[:-1]) + " or " + ROLES[-1]


def estimate_tokens(text: str) -> int:
    """An upper-leaning estimate: one token per CJK character, one per 4 other characters."""
    cjk = sum(1 for ch in text if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")
    return cjk + math.ceil((len(text) - cjk) / 4)


def request_text(request: InferenceRequest) -> str:
    """Everything the caller sends the model, for token estimates and quota bounds."""
    return "".join(m["content"] for m in request.messages) if request.mode == "chat" else request.prompt


def check_text(value: str, name: str, *, param: str | None = None) -> str:
    """`value`, refused by name when it cannot be encoded as UTF-8. JSON's escapes let a body carry a lone
    UTF-16 surrogate ("\\ud800"), which Python decodes into a str that neither the upstream's JSON body,
    the database nor the usage writer can encode."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise GatewayError(
            Failure.PARAM_INVALID,
            f"{name} is not valid Unicode: it holds a lone surrogate (\\u{ord(value[exc.start]):04x} at "
            f"character {exc.start}); send UTF-8 text.",
            param=param or name,
        ) from None
    return value


def check_name(value: str, name: str) -> str:
    """A name the gateway looks up in the database: valid text without NUL, which PostgreSQL's text
    columns cannot hold (the driver refuses the query; no stored name has one)."""
    check_text(value, name)
    if "\x00" in value:
        raise GatewayError(Failure.PARAM_INVALID, f"{name} must not contain NUL (\\u0000) characters.", param=name)
    return value


def _bool(value: Any, name: str) -> bool:
    if value in (True, "true", "True", 1):
        return True
    if value in (None, False, "false", "False", 0):
        return False
    raise GatewayError(Failure.PARAM_INVALID, f"{name} must be true or false.", param=name)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise GatewayError(Failure.PARAM_INVALID, f"{name} must be a number between {low:g} and {high:g}.", param=name)
    return float(value)


def _content(value: Any, i: int) -> str:
    """A message's content: a string, or the OpenAI format's list of parts, of which the text parts
    are joined with newlines (as OpenAI-compatible servers do). Other parts are refused by name."""
    if isinstance(value, str):
        return check_text(value, f"messages[{i}].content", param="messages")
    if not isinstance(value, list) or not value:
        raise GatewayError(
            Failure.PARAM_INVALID,
            f"messages[{i}].content must be a string or a non-empty list of text parts.",
            param="messages",
        )
    texts: list[str] = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            shown = kind if isinstance(kind, str) else type(part).__name__
            raise GatewayError(
                Failure.PARAM_INVALID,
                f"messages[{i}].content[{j}] is a {shown!r} part: only text parts "
                '({"type": "text", "text": "..."}) are supported.',
                param="messages",
            )
        texts.append(check_text(part["text"], f"messages[{i}].content[{j}].text", param="messages"))
    return "\n".join(texts)


def _messages(raw: Any, *, pangu: bool) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise GatewayError(Failure.PARAM_INVALID, "messages must be a non-empty list.", param="messages")
    messages: list[dict[str, str]] = []
    turn = "user"
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise GatewayError(Failure.PARAM_INVALID, f"messages[{i}] must be an object.", param="messages")
        content = _content(item.get("content"), i)
        role = item.get("role")
        if role is None and pangu:
            # Pangu: role-less turns alternate user/assistant.
            role, turn = turn, ("assistant" if turn == "user" else "user")
        if role not in ROLES:
            raise GatewayError(Failure.PARAM_INVALID, f"messages[{i}].role must be {_ROLE_LIST}.", param="messages")
        messages.append({"role": str(role), "content": content})
    return messages


def _n(body: dict[str, Any], *, stream: bool, pangu: bool) -> int:
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int):
        raise GatewayError(Failure.PARAM_INVALID, "n must be an integer.", param="n")
    if stream and n != 1:
        raise GatewayError(
            Failure.N_STREAM_INVALID, "The parameter [n] can only be 1 when calling streaming.", param="n"
        )
    high = PANGU_MAX_N if pangu else MAX_N
    if not stream and not 1 <= n <= high:
        failure = Failure.N_UNARY_INVALID if pangu else Failure.PARAM_INVALID
        raise GatewayError(failure, f"The parameter [n] can only be 1 to {high} when calling non-streaming.", param="n")
    return n


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stop)
    ):
        raise GatewayError(
            Failure.PARAM_INVALID,
            f"stop must be a string or a list of up to {MAX_STOP_SEQUENCES} strings.",
            param="stop",
        )
    for i, sequence in enumerate(stop or ()):
        check_text(sequence, f"stop[{i}]", param="stop")
    return stop


def parse_request(*, body: dict[str, Any], mode: Mode, pangu: bool, model: LlmModel) -> InferenceRequest:
    """Check a call's parameters against the model; raise GatewayError naming the first bad one."""
    stream = _bool(body.get("stream"), "stream")
    n = _n(body, stream=stream, pangu=pangu)
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= model.context_length
    ):
        raise GatewayError(
            Failure.MAX_TOKENS_INVALID,
            f"max_tokens must be an integer from 1 to the model's context length ({model.context_length}).",
            param="max_tokens",
        )
    request = InferenceRequest(
        mode=mode,
        model=model.name,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        stop=_stop(body),
        n=n,
        stream=stream,
        logprobs=pangu and not stream,  # for `ppl`, which only Pangu's non-stream answers carry
    )
    required = "messages" if mode == "chat" else "prompt"
    if body.get(required) is None:
        raise GatewayError(
            Failure.PARAM_REQUIRED, f"required api parameter is not present: {required}.", param=required
        )
    if mode == "chat":
        request.messages = _messages(body.get("messages"), pangu=pangu)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise GatewayError(Failure.PARAM_INVALID, "prompt must be a non-empty string.", param="prompt")
        request.prompt = check_text(prompt, "prompt")
    if estimate_tokens(request_text(request)) + (max_tokens or 0) > model.context_length:
        raise GatewayError(
            Failure.CONTENT_TOO_LONG,
            f"The content and max_tokens exceed the model's context length ({model.context_length} tokens).",
            param="messages" if mode == "chat" else "prompt",
        )
    return request


def prompt_token_bound(request: InferenceRequest) -> int:
    """The most prompt tokens a call can cost: no tokenizer makes more tokens than bytes, and chat
    templates add a few per message."""
    return len(request_text(request).encode()) + 8 * max(1, len(request.messages))


def reservation_size(request: InferenceRequest, model: LlmModel) -> int:
    """An upper bound of what a call can spend: every prompt byte a token, plus the completion cap."""
    return (
        prompt_token_bound(request) + (request.max_tokens or min(DEFAULT_MAX_TOKENS, model.context_length)) * request.n
    )
