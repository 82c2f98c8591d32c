"""The one interface every upstream adapter implements. Adapters never touch the database:
callers hand them a provider whose credentials are already decrypted."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import ClassVar

import httpx

from console.lib.http import async_client
from models_registry.models import Provider


@dataclass(frozen=True)
class ConnectionResult:
    ok: bool
    message: str
    latency_ms: float | None = None


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
        """Reach the upstream with the stored credentials; report latency or a clear reason."""
        started = time.perf_counter()
        try:
            message = await self._probe()
        except ConnectionCheckFailed as exc:
            return ConnectionResult(ok=False, message=str(exc))
        except httpx.TimeoutException:
            return ConnectionResult(ok=False, message=f"No answer within {self.provider.timeout_seconds:g} s.")
        except httpx.ConnectError as exc:
            return ConnectionResult(ok=False, message=f"Cannot connect: {exc or 'connection refused'}.")
        except httpx.HTTPError as exc:
            return ConnectionResult(ok=False, message=f"HTTP error: {type(exc).__name__}: {exc}.")
        return ConnectionResult(ok=True, message=message, latency_ms=round((time.perf_counter() - started) * 1000, 1))

    @abc.abstractmethod
    async def _probe(self) -> str:
        """Make the cheapest authenticated call the upstream offers; return what it showed."""


class ConnectionCheckFailed(Exception):
    """The upstream answered, and the answer says the configuration does not work."""


def describe_status(response: httpx.Response) -> str:
    if response.status_code in (401, 403):
        return f"the upstream rejected the credentials (HTTP {response.status_code})"
    if response.status_code == 404:
        return "the upstream has no such path (HTTP 404): check the base URL"
    if response.status_code == 429:
        return "the upstream is throttling (HTTP 429)"
    return f"the upstream answered HTTP {response.status_code}"
