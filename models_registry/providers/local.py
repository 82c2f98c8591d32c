"""The embedded model server on loopback, reached like any OpenAI-compatible upstream.

Right after `make run` the server is still loading its models: its port stays closed until they are
in memory (a server that listens earlier answers 503 with the error code `model_loading`). A call in
that window waits up to LOCAL_LLM_WARMUP_WAIT seconds for the server, then fails as "unavailable"
with a Retry-After and words saying the local model is starting, which the gateway answers with its
dialect's "model starting" error rather than a generic upstream failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import httpx
from django.conf import settings

from console.lib.http import async_client, parse_retry_after
from models_registry.providers.base import Completion, InferenceRequest, StreamPiece, UpstreamError
from models_registry.providers.openai_compatible import OpenAICompatibleAdapter

STARTING_RETRY_AFTER = 5  # seconds a caller is told to wait when the server was not ready in time
LOADING_CODE = "model_loading"  # the OpenAI error code of a server that listens but is still loading
HEALTH_TIMEOUT = 3.0  # seconds /healthz?deep=1 gives the server to answer
_POLL = 0.2  # seconds between attempts while waiting: a refused connect on loopback costs nothing


class _NotReady(UpstreamError):
    """The server is not listening yet, or said it is loading: another attempt may succeed."""


def health_url(base_url: str) -> str:
    """The server's readiness endpoint, beside its OpenAI API (LOCAL_LLM_URL names the `/v1` API)."""
    return base_url.rstrip("/").removesuffix("/v1") + "/health"


async def local_server_problem(*, base_url: str, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None when the embedded server says it is ready (`/health` answers 200 `{"status": "ok"}`, which
    it only does once its models are loaded), else why not, in an operator's words. Never raises."""
    url = health_url(base_url)
    try:
        response = await async_client().get(url, timeout=timeout)
    except httpx.ConnectError:
        return f"the local model is starting: nothing listens on {url} yet (or the server is not running)"
    except httpx.TimeoutException:
        return f"the local model server did not answer {url} within {timeout:g} s"
    except httpx.HTTPError as exc:
        return f"the local model server could not be asked ({type(exc).__name__})"
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        status = None
    if response.status_code == 200 and status == "ok":
        return None
    if response.status_code == 503 or status == "loading":
        return "the local model is starting: the server is still loading its models"
    return f"the local model server answered {url} with HTTP {response.status_code}"


def _error_code(text: str) -> object:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error.get("code") if isinstance(error, dict) else None


class LocalAdapter(OpenAICompatibleAdapter):
    kind = "local"
    gives_logprobs = True  # the embedded server returns the sampled tokens' log-probabilities

    @property
    def base_url(self) -> str:
        return (self.provider.base_url or settings.LOCAL_LLM_URL).rstrip("/")

    def _failure(self, exc: httpx.HTTPError) -> UpstreamError:
        if isinstance(exc, httpx.ConnectError):
            if settings.LOCAL_LLM != "on":
                return UpstreamError(
                    "unavailable",
                    "cannot connect to the local model server, and the embedded one is off (LOCAL_LLM=off)",
                )
            # Nothing was sent (the connect failed), so trying again cannot run the call twice.
            return _NotReady("unavailable", "its server is not listening yet")
        return super()._failure(exc)

    def status_error(self, response: httpx.Response, text: str) -> UpstreamError:
        if response.status_code == 503 and _error_code(text) == LOADING_CODE:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return _NotReady(
                "unavailable", "its server is still loading the models", status=503, retry_after=retry_after
            )
        return super().status_error(response, text)

    async def _wait(self, not_ready: _NotReady, deadline: float) -> None:
        """Sleep before the next attempt, or raise the warm-up failure once the wait is spent."""
        left = deadline - time.monotonic()
        if left <= 0:
            wait = settings.LOCAL_LLM_WARMUP_WAIT
            raise UpstreamError(
                "unavailable",
                f"the local model is starting ({not_ready}) and was not ready within {wait:g} s",
                status=not_ready.status,
                retry_after=not_ready.retry_after or STARTING_RETRY_AFTER,
            ) from None
        await asyncio.sleep(min(_POLL, left))

    def _deadline(self) -> float:
        return time.monotonic() + settings.LOCAL_LLM_WARMUP_WAIT

    async def complete(self, request: InferenceRequest) -> Completion:
        deadline: float | None = None
        while True:
            try:
                return await super().complete(request)
            except _NotReady as exc:
                deadline = self._deadline() if deadline is None else deadline
                await self._wait(exc, deadline)

    async def stream(self, request: InferenceRequest) -> AsyncIterator[StreamPiece]:
        deadline: float | None = None
        while True:
            # Closing this generator closes the attempt's, and with it the upstream connection.
            attempt = cast(AsyncGenerator[StreamPiece, None], super().stream(request))
            async with contextlib.aclosing(attempt) as pieces:
                try:
                    first = await anext(pieces)
                except StopAsyncIteration:
                    return
                except _NotReady as exc:
                    # Only the connect or the status can say "not ready": nothing has been yielded yet.
                    deadline = self._deadline() if deadline is None else deadline
                    await self._wait(exc, deadline)
                    continue
                yield first
                async for piece in pieces:
                    yield piece
                return
