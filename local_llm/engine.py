"""One generation on one llama.cpp instance. Runs in a pool thread; talks to the event loop only
through `emit`, and stops within a token of `cancelled` being set."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from local_llm.pool import Instance
from local_llm.wire import ApiError, GenerationRequest, TokenLogprob, invalid

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp.llama_types import (
        ChatCompletionRequestMessage,
        CreateCompletionResponse,
        CreateCompletionStreamResponse,
    )

# llama-cpp-python's own defaults for each entry point, tuned for small local models (OpenAI's
# temperature 1.0 makes a 135M model ramble). A caller's value always wins.
DEFAULTS: dict[str, dict[str, float]] = {
    "chat": {"temperature": 0.2, "top_p": 0.95, "repeat_penalty": 1.1},
    "text": {"temperature": 0.8, "top_p": 0.95, "repeat_penalty": 1.0},
}


@dataclass(frozen=True)
class Started:
    prompt_tokens: int


@dataclass(frozen=True)
class Piece:
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # the answer's tokens, when the request asked


@dataclass(frozen=True)
class Finished:
    completion_tokens: int


Event = Started | Piece | Finished


def prompt_tokens(instance: Instance, request: GenerationRequest) -> tuple[list[int], list[str]]:
    """The prompt as the model's own tokens, and the stop strings to add (the template's end-of-turn)."""
    llm = instance.llm
    if request.mode == "chat":
        if instance.formatter is None:  # the server checks first; this guards direct callers
            raise invalid(f"`{instance.model.id}` is not a chat model.", "model", code="model_not_supported")
        try:
            # wire.py checked each message's role and text: the shapes llama.cpp's types spell out.
            formatted = instance.formatter(messages=cast("list[ChatCompletionRequestMessage]", request.messages))
        except Exception as exc:  # jinja2 errors and templates' own raise_exception(): a bad conversation
            raise invalid(f"The model's chat template rejected these messages: {exc}", "messages") from None
        tokens = llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)
        extra = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        return tokens, [s for s in extra if s]
    if request.prompt:
        # add_bos is honoured only when the model's vocabulary asks for a BOS (llama.cpp decides).
        return llm.tokenize(request.prompt.encode(), add_bos=True, special=True), []
    bos = llm.token_bos()
    if bos == -1:
        raise invalid("`prompt` must not be empty for this model.", "prompt")
    return [bos], []


class LogprobTap:
    """The log-probability the model gave each token it sampled, with llama.cpp's default context
    (`logits_all=False`, which keeps no logits after a step: asking llama-cpp-python for `logprobs`
    would need `logits_all=True`, an n_ctx-by-vocabulary array, 2 GiB for Gemma 3 at 2,048 tokens).

    A logits processor is the first stage of the sampler chain, so it sees each step's raw logits over
    the whole vocabulary, before penalties and temperature: the model's own distribution. It keeps the
    log-softmax of that step; a wrapper around the instance's `generate` then sees which token the
    chain picked and looks its log-probability up."""

    def __init__(self, instance: Instance, prompt: list[int]) -> None:
        import numpy  # llama-cpp-python's own dependency; the server imports without it for `--help`

        self.np = numpy
        self.llm = instance.llm
        self.prompt = prompt
        self.step: np.ndarray | None = None
        self.tokens: list[int] = []
        self.logprobs: list[float] = []

    def processor(self, _input_ids: Any, logits: Any) -> Any:
        np = self.np
        step = np.asarray(logits, dtype=np.float64)
        peak = step.max()
        self.step = step - (peak + np.log(np.exp(step - peak).sum()))
        return logits

    def sampled(self, token: int) -> None:
        if self.step is not None and 0 <= token < len(self.step):
            self.tokens.append(token)
            self.logprobs.append(float(self.step[token]))
        self.step = None

    @contextlib.contextmanager
    def tapping(self) -> Iterator[None]:
        original = self.llm.generate

        def generate(*args: Any, **kwargs: Any) -> Iterator[int]:
            tokens = original(*args, **kwargs)
            try:
                for token in tokens:
                    self.sampled(int(token))
                    yield token
            finally:
                tokens.close()

        # An attribute of this instance only, for this call: the instance serves one call at a time.
        self.llm.generate = generate  # type: ignore[method-assign, assignment]
        try:
            yield
        finally:
            del self.llm.generate

    def answer(self, text: str) -> tuple[TokenLogprob, ...]:
        """The tokens that produced `text`: end-of-generation tokens and those after a stop string's
        start are dropped; a token whose bytes straddle the cut is kept (it made part of the text)."""
        want = len(text.encode())
        made, context = 0, list(self.prompt)
        kept: list[TokenLogprob] = []
        for token, logprob in zip(self.tokens, self.logprobs, strict=True):
            if made >= want:
                break
            piece = self.llm.detokenize([token], prev_tokens=context)
            context.append(token)
            made += len(piece)
            kept.append(TokenLogprob(token=piece, logprob=logprob))
        return tuple(kept)


def generate(
    instance: Instance, request: GenerationRequest, emit: Callable[[Event], None], cancelled: threading.Event
) -> None:
    llm = instance.llm
    tokens, template_stops = prompt_tokens(instance, request)
    param = "messages" if request.mode == "chat" else "prompt"
    if len(tokens) >= instance.n_ctx:
        raise ApiError(
            400,
            f"This model's maximum context length is {instance.n_ctx} tokens; the {param} is {len(tokens)}.",
            param=param,
            code="context_length_exceeded",
        )
    if request.max_tokens is not None and len(tokens) + request.max_tokens > instance.n_ctx:
        raise ApiError(
            400,
            f"This model's maximum context length is {instance.n_ctx} tokens; you requested "
            f"{len(tokens) + request.max_tokens} ({len(tokens)} in the {param}, {request.max_tokens} to generate).",
            param="max_tokens",
            code="context_length_exceeded",
        )
    emit(Started(prompt_tokens=len(tokens)))

    from llama_cpp import LogitsProcessorList, StoppingCriteriaList

    def stop_when_cancelled(_ids: Any, _logits: Any) -> bool:
        # Checked after every sampled token, including those held back while a stop string may be
        # forming: a gone client frees the instance within one token.
        return cancelled.is_set()

    defaults = DEFAULTS[request.mode]
    completion_tokens = 0
    for index in range(request.n):
        if cancelled.is_set():
            return
        kwargs: dict[str, Any] = {
            "prompt": tokens,
            "max_tokens": request.max_tokens,  # None: until the context is full
            "temperature": defaults["temperature"] if request.temperature is None else request.temperature,
            "top_p": defaults["top_p"] if request.top_p is None else request.top_p,
            "repeat_penalty": defaults["repeat_penalty"],
            "frequency_penalty": request.frequency_penalty,
            "presence_penalty": request.presence_penalty,
            "stop": request.stop + template_stops,
            # n choices from one seed must still differ.
            "seed": None if request.seed is None else (request.seed + index) % 2**32,
            "stopping_criteria": StoppingCriteriaList([stop_when_cancelled]),
            "model": instance.model.id,
        }
        if not request.stream:
            tap = LogprobTap(instance, tokens) if request.logprobs else None
            with tap.tapping() if tap else contextlib.nullcontext():
                if tap:
                    kwargs["logits_processor"] = LogitsProcessorList([tap.processor])
                # create_completion's return type is a union over `stream`; this call's half is known.
                result = cast("CreateCompletionResponse", llm.create_completion(**kwargs, stream=False))
            choice = result["choices"][0]
            completion_tokens += int(result["usage"]["completion_tokens"])
            logprobs = tap.answer(choice["text"]) if tap else None
            emit(Piece(index, choice["text"], choice["finish_reason"] or "stop", logprobs))
            continue
        pieces: list[str] = []
        finish_reason = "stop"
        stream = cast("Iterator[CreateCompletionStreamResponse]", llm.create_completion(**kwargs, stream=True))
        for chunk in stream:
            choice = chunk["choices"][0]
            if choice["text"]:
                pieces.append(choice["text"])
                emit(Piece(index, choice["text"]))
            if choice["finish_reason"]:
                finish_reason = choice["finish_reason"]
            if cancelled.is_set():
                return
        # llama-cpp-python reports no usage for streams: count the answer with the model's tokenizer.
        text = "".join(pieces)
        completion_tokens += len(llm.tokenize(text.encode(), add_bos=False, special=True)) if text else 0
        emit(Piece(index, "", finish_reason))
    emit(Finished(completion_tokens=completion_tokens))
