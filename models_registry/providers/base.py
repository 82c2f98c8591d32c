"""The one interface every upstream adapter implements. Adapters never touch the database:
callers hand them a provider whose credentials are already decrypted."""

from __future__ import annotations

import abc
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import httpx

from console.lib.http import async_client, parse_retry_after
from models_registry.models import Provider


@dataclass(frozen=True)
class ConnectionResult:
    ok: bool
    message: str
    latency_ms: float | None = None


Mode = Literal["chat", "text"]


@dataclass
class InferenceRequest:
    """A call in the gateway's own terms, whatever dialect it arrived in."""

    mode: Mode
    model: str  # the upstream model id
    messages: list[dict[str, str]] = field(default_factory=list)  # chat: [{role, content}]
    prompt: str = ""  # text completion
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    n: int = 1
    stream: bool = False
    # Ask for the answer's token log-probabilities, from upstreams known to give them, to compute
    # Pangu's `ppl` (set for non-stream Pangu calls only: no other answer carries it).
    logprobs: bool = False


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def parse_usage(data: Any) -> Usage | None:
    """An upstream's `usage` object, or None when it is missing or not the usual shape. The counts
    are the upstream's word, possibly negative or absurd: the gateway holds them to what the call
    could have cost before anything is charged or recorded."""
    if not isinstance(data, dict):
        return None
    try:
        return Usage(prompt_tokens=int(data["prompt_tokens"]), completion_tokens=int(data["completion_tokens"]))
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        return None


@dataclass
class Completion:
    texts: list[str]  # one per choice
    finish_reasons: list[str]
    usage: Usage | None  # None when the upstream did not say
    # Pangu's `ppl` per choice: the upstream's own value, or one computed from the token
    # log-probabilities it returned; None where it gave neither (never an invented number).
    ppls: list[float | None] = field(default_factory=list)

    def ppl(self, index: int) -> float | None:
        return self.ppls[index] if index < len(self.ppls) else None


def sequence_probability(logprobs: object) -> float | None:
    """exp(sum of the token log-probabilities): the probability of the whole answer, which is what
    Pangu's `ppl` holds (its examples: 1.78e-36 for a 365-token answer, about -0.23 nats a token).
    Takes a choice's `logprobs` as OpenAI spells it in either API: chat's `{"content": [{"logprob"}]}`
    or completions' `{"token_logprobs": [...]}`. None unless every token has a numeric log-probability."""
    if isinstance(logprobs, dict) and isinstance(logprobs.get("token_logprobs"), list):
        logprobs = [{"logprob": value} for value in logprobs["token_logprobs"]]
    elif isinstance(logprobs, dict):
        logprobs = logprobs.get("content")
    if not isinstance(logprobs, list) or not logprobs:
        return None
    total = 0.0
    for item in logprobs:
        value = item.get("logprob") if isinstance(item, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or value > 0:
            return None
        total += float(value)
    return math.exp(total)


def pangu_ppl(value: object) -> float | None:
    """A `ppl` as an upstream sent it: a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class StreamPiece:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None  # set on the piece that carries the upstream's usage, if it sends one


UpstreamFailure = Literal["timeout", "unavailable", "rate_limited", "rejected", "auth", "bad_response", "dropped"]


class UpstreamError(Exception):
    """An upstream failure, already classified; the gateway renders it in the caller's dialect.
    The message never carries credentials or the raw upstream body beyond a short excerpt."""

    def __init__(
        self, kind: UpstreamFailure, message: str, *, status: int | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


def sampling_params(request: InferenceRequest) -> dict[str, object]:
    """The generation settings every upstream takes under the same names (only those that are set)."""
    params: dict[str, object] = {
        name: getattr(request, name)
        for name in ("max_tokens", "temperature", "top_p", "stop")
        if getattr(request, name) is not None
    }
    if request.n != 1:
        params["n"] = request.n
    return params


class ProviderAdapter(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.secrets = provider.secrets()
        self.config = dict(provider.config or {})
        self.timeout = httpx.Timeout(provider.timeout_seconds, connect=min(10.0, provider.timeout_seconds))

    @property
    def client(self) -> httpx.AsyncClient:
        return async_client()

    async def check(self) -> ConnectionResult:
        """Reach the upstream with the stored credentials; report latency or a clear reason.

        Whatever kept the connection from being made (refused by the address policy, a closed port,
        a silent host, a name that does not resolve) reads the same: told apart, they would map the
        console's network for whoever may set a provider URL."""
        started = time.perf_counter()
        try:
            message = await self._probe()
        except ConnectionCheckFailed as exc:
            return ConnectionResult(ok=False, message=self.excerpt(str(exc), limit=500))
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return ConnectionResult(ok=False, message=CANNOT_CONNECT)
        except httpx.TimeoutException:
            return ConnectionResult(ok=False, message=f"No answer within {self.provider.timeout_seconds:g} s.")
        except httpx.HTTPError:
            # Never the exception's text: a non-HTTP service's banner ends up in it.
            return ConnectionResult(ok=False, message="The upstream did not answer in HTTP.")
        return ConnectionResult(ok=True, message=message, latency_ms=round((time.perf_counter() - started) * 1000, 1))

    def known_secrets(self) -> list[str]:
        """Every credential this adapter may send, for masking upstream text."""
        return [self.secrets.get(name, "") for name in ("api_key", "iam_password", "secret_key")]

    def excerpt(self, text: str, *, limit: int = 200) -> str:
        """At most `limit` characters of upstream text, with any of the provider's credentials masked
        (before cutting, so no secret survives in part at the edge). An upstream may echo the key it
        was sent, and these excerpts are relayed to API callers who must never learn it."""
        for secret in self.known_secrets():
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text[:limit]

    def _failure(self, exc: httpx.HTTPError) -> UpstreamError:
        """Classify a transport failure (nothing, or not all, came back from the upstream)."""
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError("timeout", f"upstream did not answer within {self.provider.timeout_seconds:g} s")
        if isinstance(exc, httpx.ConnectError):
            return UpstreamError("unavailable", "cannot connect to the upstream")
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return UpstreamError("dropped", "upstream closed the connection before it finished")
        return UpstreamError("unavailable", f"upstream transport error ({type(exc).__name__})")

    @abc.abstractmethod
    async def _probe(self) -> str:
        """Make the cheapest authenticated call the upstream offers; return what it showed."""

    @abc.abstractmethod
    async def complete(self, request: InferenceRequest) -> Completion:
        """One unary call. Raises UpstreamError."""

    @abc.abstractmethod
    def stream(self, request: InferenceRequest) -> AsyncIterator[StreamPiece]:
        """Yield each upstream piece as it arrives. Raises UpstreamError; closing the iterator
        closes the upstream connection (that is how a client disconnect cancels the call)."""


CANNOT_CONNECT = "Cannot connect: the address is refused or unreachable."


class ConnectionCheckFailed(Exception):
    """The upstream answered, and the answer says the configuration does not work."""


def error_for_status(response: httpx.Response, excerpt: str = "") -> UpstreamError:
    status = response.status_code
    detail = f": {excerpt[:200]}" if excerpt else ""
    if status == 429:
        return UpstreamError(
            "rate_limited",
            f"upstream is throttling (HTTP 429){detail}",
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in (401, 403):
        return UpstreamError("auth", f"upstream rejected the provider's credentials (HTTP {status})", status=status)
    if status >= 500:
        return UpstreamError("unavailable", f"upstream failed (HTTP {status}){detail}", status=status)
    return UpstreamError("rejected", f"upstream refused the call (HTTP {status}){detail}", status=status)


def describe_status(response: httpx.Response) -> str:
    if response.status_code in (401, 403):
        return f"the upstream rejected the credentials (HTTP {response.status_code})"
    if response.status_code == 404:
        return "the upstream has no such path (HTTP 404): check the base URL"
    if response.status_code == 429:
        return "the upstream is throttling (HTTP 429)"
    return f"the upstream answered HTTP {response.status_code}"
