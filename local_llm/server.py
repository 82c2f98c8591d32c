"""A lean ASGI app speaking the OpenAI API for the pool's models. No framework: four routes, JSON in,
JSON or server-sent events out. Served by daphne (see `asgi.py`) or any ASGI server.

Each token goes to the client as soon as llama.cpp yields it: the worker thread hands pieces to the
event loop with `call_soon_threadsafe`, and the handler writes one SSE event per piece. A client that
goes away sets the cancel flag the worker checks between tokens; the instance returns to the pool
when the worker thread is out of llama.cpp, never before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from console.lib.asgi import (
    SSE_HEADERS,
    BodyTooLarge,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    read_body,
    run_until_disconnect,
    send_json,
)
from local_llm import catalog, engine
from local_llm.config import LocalLlmConfig
from local_llm.pool import Instance, Pool, PoolBusy
from local_llm.wire import (
    ApiError,
    Envelope,
    GenerationRequest,
    Mode,
    TokenLogprob,
    parse_body,
    parse_request,
    sse,
)

logger = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024


class LocalLlmServer:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.started = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._route(scope, receive, tracked)
        except ApiError as exc:
            if not started:
                with contextlib.suppress(ClientGone):
                    await self._json(send, exc.status, exc.body(), exc.headers)
        except ClientGone:
            pass
        except Exception:
            # A bug, not a bad request: still an OpenAI error object, and the server stays up.
            logger.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                error = ApiError(500, "The local model server failed.", type="server_error", code="internal_error")
                with contextlib.suppress(ClientGone):
                    await self._json(send, 500, error.body())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        routes: dict[str, tuple[str, Callable[[], Awaitable[None]]]] = {
            "/health": ("GET", lambda: self._json(send, 200, self.health())),
            "/v1/models": ("GET", lambda: self._json(send, 200, self.list_models())),
            "/v1/chat/completions": ("POST", lambda: self._generate("chat", receive, send)),
            "/v1/completions": ("POST", lambda: self._generate("text", receive, send)),
        }
        if path.startswith("/v1/models/") and method == "GET":
            await self._json(send, 200, self.model_card(path.removeprefix("/v1/models/")))
            return
        if path not in routes:
            raise ApiError(404, f"Unknown path {path}.", code="not_found")
        allowed, handler = routes[path]
        if method != allowed:
            raise ApiError(
                405, f"{path} accepts {allowed} only.", code="method_not_allowed", headers={"allow": allowed}
            )
        await handler()

    # --- plain routes ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "waiting": self.pool.waiting, "models": self.pool.stats()}

    def _card(self, model_id: str) -> dict[str, Any]:
        model = self.pool.models[model_id]
        return {
            "id": model.id,
            "object": "model",
            "created": self.started,
            "owned_by": "local",
            # Beyond OpenAI's card: what the console needs to register the model.
            "capabilities": {"chat": model.chat, "completions": True},
            "context_length": min(self.pool.config.n_ctx, model.n_ctx_train or self.pool.config.n_ctx),
            "source": model.source,
        }

    def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(mid) for mid in self.pool.models]}

    def model_card(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.pool.models:
            raise _unknown_model(model_id)
        return self._card(model_id)

    # --- generation -----------------------------------------------------------------------------
    async def _generate(self, mode: Mode, receive: Receive, send: Send) -> None:
        request = parse_request(mode, parse_body(await _read_body(receive)))
        model = self.pool.models.get(request.model)
        if model is None:
            raise _unknown_model(request.model)
        if mode == "chat" and not model.chat:
            raise ApiError(
                400,
                f"`{model.id}` is a text completion model without a chat template; use /v1/completions.",
                param="model",
                code="model_not_supported",
            )
        cancelled = threading.Event()
        try:
            # A client that leaves (while queued or mid-answer) cancels the answer; there is nobody
            # to tell, and the worker stops itself at the flag between two tokens.
            await run_until_disconnect(receive, self._serve(request, send, cancelled))
        finally:
            cancelled.set()

    async def _serve(self, request: GenerationRequest, send: Send, cancelled: threading.Event) -> None:
        try:
            instance = await self.pool.acquire(request.model)
        except PoolBusy as exc:
            raise ApiError(
                429,
                str(exc),
                type="rate_limit_exceeded",
                code="concurrency_limit_exceeded",
                headers={"retry-after": "1"},
            ) from None
        except Exception as exc:
            logger.exception("loading %s failed", request.model)
            raise ApiError(
                503, f"The model could not be loaded: {exc}", type="server_error", code="model_load_failed"
            ) from exc
        events = self._start(instance, request, cancelled)
        envelope = Envelope(request.mode, request.model)
        first = await events.get()
        if isinstance(first, BaseException):
            raise _as_api_error(first)
        if not isinstance(first, engine.Started):
            raise ClientGone()  # the worker never ran: the executor is shutting down
        if request.stream:
            await self._stream(send, envelope, request, first.prompt_tokens, events)
        else:
            await self._unary(send, envelope, request, first.prompt_tokens, events)

    def _start(
        self, instance: Instance, request: GenerationRequest, cancelled: threading.Event
    ) -> asyncio.Queue[engine.Event | BaseException | None]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[engine.Event | BaseException | None] = asyncio.Queue()

        def emit(event: engine.Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        work = self.pool.run_on(instance, engine.generate, instance, request, emit, cancelled)

        def finished(future: asyncio.Future[None]) -> None:
            # Queued behind every emit: wrap_future completes through call_soon_threadsafe as well.
            if future.cancelled():
                events.put_nowait(None)
            else:
                events.put_nowait(future.exception())

        work.add_done_callback(finished)
        return events

    async def _unary(
        self,
        send: Send,
        envelope: Envelope,
        request: GenerationRequest,
        prompt_tokens: int,
        events: asyncio.Queue[engine.Event | BaseException | None],
    ) -> None:
        texts, reasons = [""] * request.n, ["stop"] * request.n
        logprobs: list[list[TokenLogprob]] | None = [[] for _ in range(request.n)] if request.logprobs else None
        completion_tokens = 0
        while (event := await events.get()) is not None:
            if isinstance(event, BaseException):
                raise _as_api_error(event)
            if isinstance(event, engine.Piece):
                texts[event.index] += event.text
                reasons[event.index] = event.finish_reason or reasons[event.index]
                if logprobs is not None and event.logprobs:
                    logprobs[event.index].extend(event.logprobs)
            elif isinstance(event, engine.Finished):
                completion_tokens = event.completion_tokens
        await self._json(send, 200, envelope.answer(texts, reasons, prompt_tokens, completion_tokens, logprobs))

    async def _stream(
        self,
        send: Send,
        envelope: Envelope,
        request: GenerationRequest,
        prompt_tokens: int,
        events: asyncio.Queue[engine.Event | BaseException | None],
    ) -> None:
        await _send(send, {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

        async def write(data: dict[str, Any] | str) -> None:
            if isinstance(data, dict) and request.include_usage and "usage" not in data:
                data["usage"] = None  # as OpenAI: every chunk has the key, only the last a value
            await _send(send, {"type": "http.response.body", "body": sse(data), "more_body": True})

        if request.mode == "chat":
            for index in range(request.n):
                await write(envelope.chunk(index, role=True, text=""))
        while (event := await events.get()) is not None:
            if isinstance(event, BaseException):
                # Headers are gone; an error object in the stream is what OpenAI clients recognise.
                await write(_as_api_error(event).body())
                await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})
                return
            if isinstance(event, engine.Piece):
                if event.text:
                    await write(envelope.chunk(event.index, text=event.text))
                if event.finish_reason:
                    text = None if request.mode == "chat" else ""
                    await write(envelope.chunk(event.index, text=text, finish_reason=event.finish_reason))
            elif isinstance(event, engine.Finished) and request.include_usage:
                await write(envelope.usage_chunk(prompt_tokens, event.completion_tokens))
        await _send(send, {"type": "http.response.body", "body": sse("[DONE]"), "more_body": True})
        await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _json(self, send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        await send_json(send, status, body, headers)


async def _send(send: Send, message: Message) -> None:
    try:
        await send(message)
    except OSError as exc:  # uvicorn raises ClientDisconnected (an OSError) once the peer is gone
        raise ClientGone() from exc


async def _read_body(receive: Receive) -> bytes:
    try:
        return await read_body(receive, limit=MAX_BODY)
    except BodyTooLarge as exc:
        raise ApiError(413, str(exc), code="request_too_large") from None


def _unknown_model(model_id: str) -> ApiError:
    return ApiError(404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found")


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    logger.error("generation failed", exc_info=exc)
    return ApiError(500, f"The model failed to generate: {exc}", type="server_error", code="internal_error")


def create_app(config: LocalLlmConfig | None = None, *, prepare: bool = True) -> LocalLlmServer:
    """The app over every model in the models directory. Blocking (it may assemble files and load
    models): call it before serving, as `asgi.py` does at import."""
    config = config or LocalLlmConfig.load()
    if prepare:
        catalog.prepare(config.models_dir)
    models = catalog.discover(config.models_dir)
    if not models:
        logger.warning("no GGUF model in %s; the server lists none", config.models_dir)
    pool = Pool(models, config)
    if config.preload:
        pool.preload()
    return LocalLlmServer(pool)
