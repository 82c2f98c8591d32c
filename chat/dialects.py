"""The three wire dialects: how a call's answer, stream pieces and errors are spelled in each."""

from __future__ import annotations

import abc
import json
import time
import uuid
from typing import Any, ClassVar, Literal

from chat.errors import GatewayError
from models_registry.providers.base import Completion, Mode, Usage


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


DialectName = Literal["openai", "cloudbase", "pangu"]


class Dialect(abc.ABC):
    name: ClassVar[DialectName]
    done: ClassVar[bytes]

    @abc.abstractmethod
    def error_body(self, error: GatewayError, request_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def answer(
        self, *, mode: Mode, completion: Completion, usage: Usage, model: str, request_id: str
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    def chunk(
        self, *, mode: Mode, text: str, finish_reason: str | None, first: bool, model: str, request_id: str
    ) -> bytes | None:
        """One streamed piece as the dialect frames it, or None when the dialect sends nothing for it."""

    def usage_chunk(self, *, usage: Usage, model: str, request_id: str) -> bytes | None:
        return None

    def stream_error(self, error: GatewayError, request_id: str) -> bytes:
        return self.event(self.error_body(error, request_id))

    @abc.abstractmethod
    def event(self, payload: dict[str, Any]) -> bytes: ...


class OpenAIDialect(Dialect):
    name: ClassVar[DialectName] = "openai"
    done = b"data: [DONE]\n\n"

    def error_body(self, error: GatewayError, request_id: str) -> dict[str, Any]:
        spelling = error.failure.value
        return {
            "error": {
                "message": error.message,
                "type": spelling.openai_type,
                "code": spelling.openai_code,
                "param": error.param,
            }
        }

    def event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

    def answer(
        self, *, mode: Mode, completion: Completion, usage: Usage, model: str, request_id: str
    ) -> dict[str, Any]:
        created = int(time.time())
        if mode == "chat":
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": reason,
                }
                for i, (text, reason) in enumerate(zip(completion.texts, completion.finish_reasons, strict=True))
            ]
            obj = "chat.completion"
        else:
            choices = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                for i, (text, reason) in enumerate(zip(completion.texts, completion.finish_reasons, strict=True))
            ]
            obj = "text_completion"
        return {
            "id": request_id,
            "object": obj,
            "created": created,
            "model": model,
            "choices": choices,
            "usage": _usage(usage),
        }

    def chunk(
        self, *, mode: Mode, text: str, finish_reason: str | None, first: bool, model: str, request_id: str
    ) -> bytes:
        if mode == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            if finish_reason and not text:
                delta = {}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        return self.event(
            {"id": request_id, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
        )

    def usage_chunk(self, *, usage: Usage, model: str, request_id: str) -> bytes | None:
        return self.event(
            {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": _usage(usage),
            }
        )


class CloudBaseDialect(OpenAIDialect):
    """OpenAI's wire format (the OpenAI SDK works with base URL .../v1/ai/{group}/v1), CloudBase's errors."""

    name = "cloudbase"

    def error_body(self, error: GatewayError, request_id: str) -> dict[str, Any]:
        return {"code": error.failure.value.cloudbase, "message": error.message, "requestId": request_id}


class PanguDialect(Dialect):
    name = "pangu"
    done = b"data:[DONE]\n\n"

    def error_body(self, error: GatewayError, request_id: str) -> dict[str, Any]:
        return {"error_code": error.failure.value.pangu, "error_msg": error.message, "request_id": request_id}

    def event(self, payload: dict[str, Any]) -> bytes:
        # The platform frames events as `data:{...}` with no space after the colon.
        return b"data:" + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

    def answer(
        self, *, mode: Mode, completion: Completion, usage: Usage, model: str, request_id: str
    ) -> dict[str, Any]:
        # As every example of the manual: `message.role` is null, each choice carries `ppl` (null when
        # the upstream gave no value and no log-probabilities to compute one from).
        choices: list[dict[str, Any]]
        if mode == "chat":
            choices = [
                {"index": i, "message": {"role": None, "content": text}, "ppl": completion.ppl(i)}
                for i, text in enumerate(completion.texts)
            ]
        else:
            choices = [{"index": i, "text": text, "ppl": completion.ppl(i)} for i, text in enumerate(completion.texts)]
        return {"id": _pangu_id(request_id), "created": int(time.time()), "choices": choices, "usage": _usage(usage)}

    def chunk(
        self, *, mode: Mode, text: str, finish_reason: str | None, first: bool, model: str, request_id: str
    ) -> bytes | None:
        if not text:
            return None  # the platform streams pieces of text only, then [DONE]: no empty closing chunk
        choice: dict[str, Any] = {"message": {"content": text}} if mode == "chat" else {"text": text}
        return self.event({"id": _pangu_id(request_id), "created": int(time.time()), "choices": [choice]})


def _pangu_id(request_id: str) -> str:
    """The answer id in the manual's form (a hyphenated UUID); the same id as X-Request-Id, spelled so."""
    try:
        return str(uuid.UUID(hex=request_id))
    except ValueError:
        return request_id


OPENAI = OpenAIDialect()
CLOUDBASE = CloudBaseDialect()
PANGU = PanguDialect()
