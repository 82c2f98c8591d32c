"""The OpenAI wire format: request bodies checked into a `GenerationRequest`, errors, and the
response and chunk shapes. Every bad input becomes a 400 with an OpenAI error object, never a 500."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["chat", "text"]
MAX_N = 8  # choices are generated one after another on one instance; keep one call bounded
MAX_STOP = 4  # as OpenAI
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = "invalid_parameter",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def invalid(message: str, param: str | None, code: str = "invalid_parameter") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class GenerationRequest:
    mode: Mode
    model: str
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stream: bool = False
    include_usage: bool = False
    # The sampled tokens' log-probabilities (OpenAI's `logprobs`); the alternatives (`top_logprobs`) are
    # not offered: nothing in the console needs them, and they cost a sort of the vocabulary per token.
    logprobs: bool = False


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token: its bytes (a token may hold part of a UTF-8 character) and log-probability."""

    token: bytes
    logprob: float


def _int(body: dict[str, Any], name: str, *, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    # JSON has one number type; 16.0 is an integer, True is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"`{name}` must be an integer.", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid(f"`{name}` must be {bound}, not {value}.", name)
    return value


def _float(body: dict[str, Any], name: str, *, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"`{name}` must be a number.", name)
    if not low <= value <= high:
        raise invalid(f"`{name}` must be between {low:g} and {high:g}, not {value}.", name)
    return float(value)


def _content(value: Any, index: int) -> str:
    """A message's content: a string, or a list of text parts (what newer SDKs send)."""
    param = f"messages[{index}].content"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("Only text content parts are supported by local models.", param)
            texts.append(part["text"])
        return "".join(texts)
    raise invalid("A message's `content` must be a string or a list of text parts.", param)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid("`messages` must be a non-empty array.", "messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise invalid(f"`messages[{i}]` must be an object.", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"`messages[{i}].role` must be one of {', '.join(sorted(ROLES))}.", f"messages[{i}].role")
        # Most small-model templates know no `developer` role; it means `system` to them.
        messages.append(
            {"role": "system" if role == "developer" else role, "content": _content(message.get("content"), i)}
        )
    return messages


def _prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and len(value) > 1:
        raise invalid("Batched prompts are not supported; send one prompt per call.", "prompt")
    raise invalid("`prompt` must be a string.", "prompt")


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("`stop` must be a non-empty string or an array of them.", "stop")
    if len(stops) > MAX_STOP:
        raise invalid(f"`stop` takes at most {MAX_STOP} sequences.", "stop")
    return stops


def _logprobs(mode: Mode, body: dict[str, Any]) -> bool:
    """Chat asks with `logprobs: true` (and `top_logprobs`), text completion with `logprobs: <int>`, the
    number of alternatives per token; 0 asks for the sampled tokens alone."""
    value = body.get("logprobs")
    if mode == "chat":
        if value is not None and not isinstance(value, bool):
            raise invalid("`logprobs` must be a boolean.", "logprobs")
        if _int(body, "top_logprobs", low=0, high=20):
            raise invalid("Local models do not return `top_logprobs`; leave it out or send 0.", "top_logprobs")
        return bool(value)
    if _int(body, "logprobs", low=0, high=5):
        raise invalid("Local models return the sampled tokens' log-probabilities only: send `logprobs: 0`.", "logprobs")
    return value is not None


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid("The request body is not valid JSON.", None, code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None, code="invalid_json")
    return body


def parse_request(mode: Mode, body: dict[str, Any]) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("`model` is required.", "model", code="model_required")
    request = GenerationRequest(mode=mode, model=model)
    if mode == "chat":
        request.messages = _messages(body.get("messages"))
    else:
        if "prompt" not in body:
            raise invalid("`prompt` is required.", "prompt")
        request.prompt = _prompt(body["prompt"])
    max_tokens = _int(body, "max_completion_tokens", low=1)
    request.max_tokens = max_tokens if max_tokens is not None else _int(body, "max_tokens", low=1)
    request.temperature = _float(body, "temperature", low=0.0, high=2.0)
    request.top_p = _float(body, "top_p", low=0.0, high=1.0)
    request.frequency_penalty = _float(body, "frequency_penalty", low=-2.0, high=2.0) or 0.0
    request.presence_penalty = _float(body, "presence_penalty", low=-2.0, high=2.0) or 0.0
    request.stop = _stop(body.get("stop"))
    request.n = _int(body, "n", low=1, high=MAX_N) or 1
    request.seed = _int(body, "seed", low=0, high=2**32 - 1)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid("`stream` must be a boolean.", "stream")
    request.stream = bool(stream)
    request.logprobs = _logprobs(mode, body)
    if request.logprobs and request.stream:
        raise invalid("Local models return `logprobs` only without `stream`.", "logprobs")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid("`stream_options` must be an object with a boolean `include_usage`.", "stream_options")
        request.include_usage = request.stream and bool(options.get("include_usage"))
    return request


# --- responses ---------------------------------------------------------------------------------
def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's `logprobs`, as OpenAI spells it."""
    content = [
        {
            "token": t.token.decode("utf-8", "replace"),
            "logprob": t.logprob,
            "bytes": list(t.token),
            "top_logprobs": [],
        }
        for t in tokens
    ]
    return {"content": content, "refusal": None}


def text_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """A text completion choice's `logprobs`: parallel lists, as OpenAI's legacy completions spell them."""
    offsets, offset = [], 0
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token.decode("utf-8", "replace"))
    return {
        "tokens": [t.token.decode("utf-8", "replace") for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": None,
        "text_offset": offsets,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Envelope:
    """What every chunk and answer of one call shares."""

    mode: Mode
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = self.id or ("chatcmpl-" if self.mode == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = self.created or int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def answer(
        self,
        texts: list[str],
        reasons: list[str],
        prompt_tokens: int,
        completion_tokens: int,
        logprobs: list[list[TokenLogprob]] | None = None,
    ) -> dict[str, Any]:
        if self.mode == "chat":
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None if logprobs is None else chat_logprobs(logprobs[i]),
                    "finish_reason": reason,
                }
                for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
            ]
            return {
                **self._head("chat.completion"),
                "choices": choices,
                "usage": usage(prompt_tokens, completion_tokens),
            }
        choices = [
            {
                "index": i,
                "text": text,
                "logprobs": None if logprobs is None else text_logprobs(logprobs[i]),
                "finish_reason": reason,
            }
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        return {**self._head("text_completion"), "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(
        self, index: int, *, text: str | None = None, role: bool = False, finish_reason: str | None = None
    ) -> dict[str, Any]:
        if self.mode == "chat":
            delta: dict[str, str] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.mode == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode()
