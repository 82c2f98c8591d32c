"""Any server speaking the OpenAI wire format: OpenAI, vLLM, Ollama, DeepSeek, Hunyuan, ...

`base_url` includes the version prefix, as with the OpenAI SDK: https://api.example.com/v1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from httpx_sse import EventSource

from models_registry.providers.base import (
    Completion,
    ConnectionCheckFailed,
    InferenceRequest,
    ProviderAdapter,
    StreamPiece,
    UpstreamError,
    describe_status,
    error_for_status,
    parse_usage,
    sampling_params,
    sequence_probability,
)


def _error_in_body(data: Any, excerpt: Callable[[str], str]) -> UpstreamError | None:
    """Some upstreams report failures inside a 200 body; recognise them rather than relay them."""
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        return UpstreamError("unavailable", f"upstream reported an error: {excerpt(str(message))}")
    return None


class OpenAICompatibleAdapter(ProviderAdapter):
    kind = "openai_compatible"
    # Whether to ask for token log-probabilities when a call wants them: not every OpenAI-compatible
    # server accepts `logprobs`, and one that refuses it would fail the whole call.
    gives_logprobs = False

    def headers(self) -> dict[str, str]:
        key = self.secrets.get("api_key", "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def base_url(self) -> str:
        return self.provider.base_url.rstrip("/")

    async def _probe(self) -> str:
        if not self.base_url:
            raise ConnectionCheckFailed("No base URL is set.")
        response = await self.client.get(f"{self.base_url}/models", headers=self.headers(), timeout=self.timeout)
        if response.status_code != 200:
            raise ConnectionCheckFailed(describe_status(response).capitalize() + ".")
        try:
            models = response.json().get("data", [])
        except ValueError:
            raise ConnectionCheckFailed("The upstream answered 200 but not with JSON.") from None
        return f"Connected; the upstream lists {len(models)} model(s)."

    def status_error(self, response: httpx.Response, text: str) -> UpstreamError:
        """A non-200 answer, classified; a subclass may recognise answers of its own server first."""
        return error_for_status(response, self.excerpt(text))

    def url(self, request: InferenceRequest) -> str:
        return f"{self.base_url}/chat/completions" if request.mode == "chat" else f"{self.base_url}/completions"

    def payload(self, request: InferenceRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model}
        if request.mode == "chat":
            body["messages"] = request.messages
        else:
            body["prompt"] = request.prompt
        body.update(sampling_params(request))
        if request.logprobs and self.gives_logprobs:
            body["logprobs"] = True if request.mode == "chat" else 0
        if request.stream:
            body["stream"] = True
            # Ask for usage in the last chunk; servers that ignore it are counted by the gateway.
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, request: InferenceRequest) -> Completion:
        try:
            response = await self.client.post(
                self.url(request), json=self.payload(request), headers=self.headers(), timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise self._failure(exc) from None
        if response.status_code != 200:
            raise self.status_error(response, response.text)
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError("bad_response", "upstream answered 200 with a body that is not JSON") from None
        if error := _error_in_body(data, self.excerpt):
            raise error
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise UpstreamError("bad_response", "upstream answer has no choices")
        texts, reasons, ppls = [], [], []
        for choice in choices:
            # Token log-probabilities, when the upstream sent them.
            ppls.append(sequence_probability(choice.get("logprobs")))
            if request.mode == "chat":
                texts.append(str(((choice.get("message") or {}).get("content")) or ""))
            else:
                texts.append(str(choice.get("text") or ""))
            reasons.append(str(choice.get("finish_reason") or "stop"))
        return Completion(texts=texts, finish_reasons=reasons, usage=parse_usage(data.get("usage")), ppls=ppls)

    async def stream(self, request: InferenceRequest) -> AsyncIterator[StreamPiece]:
        try:
            async with self.client.stream(
                "POST", self.url(request), json=self.payload(request), headers=self.headers(), timeout=self.timeout
            ) as response:
                if response.status_code != 200:
                    raise self.status_error(response, (await response.aread()).decode(errors="replace"))
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    body = (await response.aread()).decode(errors="replace")
                    try:
                        error = _error_in_body(json.loads(body), self.excerpt)
                    except ValueError:
                        error = None
                    raise error or UpstreamError("bad_response", "upstream did not answer with an event stream")
                async for event in EventSource(response).aiter_sse():
                    if event.data.strip() == "[DONE]":
                        return
                    try:
                        chunk = json.loads(event.data)
                    except ValueError:
                        raise UpstreamError("bad_response", "upstream sent a malformed stream event") from None
                    if error := _error_in_body(chunk, self.excerpt):
                        raise error
                    usage = parse_usage(chunk.get("usage"))
                    choices = chunk.get("choices") or []
                    if not choices and usage:
                        yield StreamPiece(usage=usage)
                    for choice in choices:
                        if request.mode == "chat":
                            text = str((choice.get("delta") or {}).get("content") or "")
                        else:
                            text = str(choice.get("text") or "")
                        yield StreamPiece(text=text, finish_reason=choice.get("finish_reason"), usage=usage)
                raise UpstreamError("dropped", "upstream ended the stream without [DONE]")
        except httpx.HTTPError as exc:
            raise self._failure(exc) from None
