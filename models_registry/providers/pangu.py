"""Huawei Pangu: IAM token (password flow), AK/SK signing or a ready-made token; project-scoped inference paths.

Calls go to `POST {base_url}/v1/{project_id}/deployments/{deployment_id}/chat/completions` (or
`/text/completions`), where `base_url` is the Pangu endpoint without any path.

Which upstream deployment: a model whose `name` is a deployment id (a UUID, with or without hyphens)
is called through that deployment; any other model goes through the group's `deployment_id` setting.
So one group can hold several deployments named by id, or friendly model names sharing one default.

Credentials, in the order they are tried when several are set:
1. IAM password (`iam_endpoint`, `iam_username`, `iam_domain`, secret `iam_password`, optional
   `iam_project` as scope): a token is fetched from `POST {iam_endpoint}/v3/auth/tokens` and cached per
   process (see TokenCache); sent as X-Auth-Token. Preferred because it renews itself.
2. AK/SK (`access_key`, secret `secret_key`): each request signed with SDK-HMAC-SHA256.
3. A ready-made token (secret `api_key`), sent as X-Auth-Token as is; it dies after 24 h.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import EventSource

from console.lib import aksk
from console.lib.http import parse_retry_after
from models_registry.models import PANGU_CREDENTIALS_NEEDED, PanguAuthMode, pangu_auth_mode
from models_registry.providers.base import (
    Completion,
    ConnectionCheckFailed,
    InferenceRequest,
    ProviderAdapter,
    StreamPiece,
    UpstreamError,
    UpstreamFailure,
    describe_status,
    error_for_status,
    pangu_ppl,
    parse_usage,
    sampling_params,
)

TOKEN_LIFETIME = 24 * 3600.0  # IAM tokens are valid 24 h
REFRESH_MARGIN = 3600.0  # renew once less than this remains, so no call ever carries a dying token

_DEPLOYMENT_ID = re.compile(
    r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$", re.IGNORECASE
)

# What each documented code means for the gateway; the code says more than the HTTP status
# (the platform sends QPS limits and backend timeouts with varying statuses).
_CODE_KINDS: dict[str, UpstreamFailure] = {
    "APIG.0301": "auth",  # token invalid or expired, AK/SK signature wrong, no X-Auth-Token
    "PANGU.0011": "auth",
    "PANGU.0012": "auth",
    "PANGU.3305": "auth",
    "PANGU.3307": "auth",  # the account has not opened this API
    "PANGU.3315": "auth",
    "PANGU.3319": "auth",
    "APIG.0308": "rate_limited",
    "PANGU.3267": "rate_limited",
    "APIG.0201": "timeout",
    "PANGU.0001": "unavailable",
    "PANGU.0031": "unavailable",
    "PANGU.3259": "unavailable",  # the deployment is not running
    "PANGU.3316": "unavailable",
    "APIG.0101": "rejected",
    "PANGU.0010": "rejected",
    "PANGU.3254": "rejected",  # no such project or deployment
    "PANGU.3278": "rejected",
    "PANGU.3308": "rejected",
    "PANGU.3317": "rejected",
    "PANGU.3318": "rejected",
    "PANGU.3320": "rejected",
    "PANGU.3321": "rejected",
}


# --- the IAM token cache -------------------------------------------------------------------------
CacheKey = tuple[int | None, str]  # (provider pk, fingerprint of the IAM credentials)


@dataclass(frozen=True)
class CachedToken:
    value: str
    expires_at: float  # epoch seconds

    def usable(self, now: float) -> bool:
        return self.expires_at - now > REFRESH_MARGIN


class TokenCache:
    """IAM tokens shared by every adapter of the process (the gateway builds one adapter per call).

    A login is an extra round trip and IAM throttles logins, so one token serves every call until
    less than REFRESH_MARGIN of its life remains. The key holds a fingerprint of the credentials, so
    editing them takes effect at once. Concurrent callers of one key wait on one lock (per event loop,
    as asyncio locks are) and reuse the single login it guards."""

    def __init__(self) -> None:
        self._tokens: dict[CacheKey, CachedToken] = {}
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[CacheKey, asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )
        self._guard = threading.Lock()

    def get(self, key: CacheKey) -> CachedToken | None:
        return self._tokens.get(key)

    def put(self, key: CacheKey, token: CachedToken) -> None:
        with self._guard:
            # Tokens of the provider's previous credentials are dead weight now.
            for old in [k for k in self._tokens if k[0] == key[0] and k != key]:
                del self._tokens[old]
            self._tokens[key] = token

    def discard(self, key: CacheKey, value: str) -> None:
        """Forget a token the upstream refused, unless another call has already replaced it."""
        with self._guard:
            current = self._tokens.get(key)
            if current is not None and current.value == value:
                del self._tokens[key]

    def clear(self) -> None:
        with self._guard:
            self._tokens.clear()

    def lock(self, key: CacheKey) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._guard:
            return self._locks.setdefault(loop, {}).setdefault(key, asyncio.Lock())


TOKENS = TokenCache()


# --- wire helpers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outgoing:
    url: str
    headers: dict[str, str]
    content: bytes
    token: str | None  # the cached IAM token sent, when a refusal should trigger one fresh login


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _choice_text(choice: Any) -> str:
    # Chat answers carry message.content (also in stream pieces), text completions `text`;
    # delta.content is accepted too in case a deployment answers in OpenAI's streaming shape.
    if not isinstance(choice, dict):
        return ""
    for holder in (choice.get("message"), choice.get("delta")):
        if isinstance(holder, dict) and holder.get("content") is not None:
            return str(holder["content"])
    return str(choice.get("text") or "")


def _pangu_message(message: dict[str, str]) -> dict[str, str]:
    return {**message, "role": "system"} if message.get("role") == "developer" else dict(message)


class PanguAdapter(ProviderAdapter):
    kind = "pangu"

    @property
    def base_url(self) -> str:
        return self.provider.base_url.rstrip("/")

    def auth_mode(self) -> PanguAuthMode | None:
        return pangu_auth_mode(self.config, self.secrets)

    # --- IAM ---------------------------------------------------------------------------------------
    def iam_password_body(self) -> dict[str, object]:
        scope_name = self.config.get("iam_project", "")
        return {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.config.get("iam_username", ""),
                            "password": self.secrets.get("iam_password", ""),
                            "domain": {"name": self.config.get("iam_domain", "")},
                        }
                    },
                },
                "scope": {"project": {"name": scope_name}}
                if scope_name
                else {"domain": {"name": self.config.get("iam_domain", "")}},
            }
        }

    def token_cache_key(self) -> CacheKey:
        parts = [self.config.get(k, "") for k in ("iam_endpoint", "iam_username", "iam_domain", "iam_project")]
        # The base URL is where the token is sent: a token cached for one host never goes to another.
        parts += [self.base_url, self.secrets.get("iam_password", "")]
        # Hashed, so the cache never holds the password itself.
        return (self.provider.pk, hashlib.sha256("\0".join(parts).encode()).hexdigest())

    async def fetch_token(self) -> CachedToken:
        """Log in to IAM. Transport errors propagate as httpx errors (check() and callers classify them)."""
        endpoint = self.config.get("iam_endpoint", "").rstrip("/")
        # Count the lifetime from before the request, so clock skew with IAM can only make it shorter.
        started = time.time()
        response = await self.client.post(
            f"{endpoint}/v3/auth/tokens", json=self.iam_password_body(), timeout=self.timeout
        )
        token = response.headers.get("X-Subject-Token")
        status = response.status_code
        if status == 201 and token:
            return CachedToken(value=token, expires_at=started + TOKEN_LIFETIME)
        message = f"IAM login failed: {describe_status(response)}"
        if status == 201:
            raise UpstreamError("bad_response", "IAM login answered 201 without X-Subject-Token", status=status)
        if status == 429:
            raise UpstreamError(
                "rate_limited",
                message,
                status=status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            raise UpstreamError("unavailable", message, status=status)
        raise UpstreamError("auth", message, status=status)

    async def iam_token(self) -> tuple[str, bool]:
        """A usable IAM token and whether this call fetched it (a fresh one is not worth retrying)."""
        key = self.token_cache_key()
        cached = TOKENS.get(key)
        if cached is not None and cached.usable(time.time()):
            return cached.value, False
        async with TOKENS.lock(key):
            cached = TOKENS.get(key)  # another call may have logged in while this one waited
            if cached is not None and cached.usable(time.time()):
                return cached.value, False
            try:
                fresh = await self.fetch_token()
            except (UpstreamError, httpx.HTTPError):
                # Renewal is early on purpose: while the old token still has a minute, keep serving.
                if cached is not None and cached.expires_at - time.time() > 60:
                    return cached.value, False
                raise
            TOKENS.put(key, fresh)
            return fresh.value, True

    # --- requests ----------------------------------------------------------------------------------
    def deployment_id(self, model: str) -> str:
        if _DEPLOYMENT_ID.match(model):
            return model
        if default := self.config.get("deployment_id", ""):
            return str(default)
        raise UpstreamError(
            "rejected",
            f"model {model[:100]!r} names no Pangu deployment: name the model by its deployment id, "
            "or set the group's deployment id",
        )

    def url(self, request: InferenceRequest) -> str:
        if not self.base_url:
            raise UpstreamError("rejected", "no base URL (the Pangu endpoint) is set")
        project = self.config.get("project_id", "")
        if not project:
            raise UpstreamError("rejected", "no project id is set: Pangu inference URLs need one")
        deployment = quote(self.deployment_id(request.model), safe="")
        path = "chat/completions" if request.mode == "chat" else "text/completions"
        return f"{self.base_url}/v1/{quote(project, safe='')}/deployments/{deployment}/{path}"

    def payload(self, request: InferenceRequest) -> dict[str, Any]:
        body: dict[str, Any]
        if request.mode == "chat":
            # As given: Pangu takes role-less turns (they alternate user/assistant) and `system`. Its
            # manual knows no `developer` role, OpenAI's newer name for the system persona.
            body = {"messages": [_pangu_message(m) for m in request.messages]}
        else:
            body = {"prompt": request.prompt}
        body.update(sampling_params(request))
        if request.stream:
            # The manual's examples send the string "true"; the field is a boolean and both are accepted.
            body["stream"] = True
        return body

    async def outgoing(self, request: InferenceRequest) -> Outgoing:
        url = self.url(request)
        content = json.dumps(self.payload(request), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        mode = self.auth_mode()
        if mode == "iam":
            token, fresh = await self.iam_token()
            headers["X-Auth-Token"] = token
            return Outgoing(url, headers, content, token=None if fresh else token)
        if mode == "aksk":
            target = httpx.URL(url)
            # Host is signed, so send exactly the value that was signed.
            headers["Host"] = target.netloc.decode()
            headers |= aksk.sign(
                access_key=self.config["access_key"],
                secret_key=self.secrets["secret_key"],
                method="POST",
                path=target.path,
                query=target.query.decode(),
                headers=headers,
                body=content,
            )
            return Outgoing(url, headers, content, token=None)
        if mode == "token":
            headers["X-Auth-Token"] = self.secrets["api_key"]
            return Outgoing(url, headers, content, token=None)
        raise UpstreamError("auth", f"no credentials: set {PANGU_CREDENTIALS_NEEDED}")

    def forget(self, out: Outgoing) -> None:
        if out.token:
            TOKENS.discard(self.token_cache_key(), out.token)

    # --- errors ------------------------------------------------------------------------------------
    def known_secrets(self) -> list[str]:
        cached = TOKENS.get(self.token_cache_key())
        return [*super().known_secrets(), cached.value if cached else ""]

    def coded_error(self, data: dict[str, Any], response: httpx.Response) -> UpstreamError:
        code = str(data.get("error_code"))[:40]
        status = response.status_code
        if code in _CODE_KINDS:
            kind = _CODE_KINDS[code]
        else:
            # An error inside a 200 is the upstream failing, as with the OpenAI-format adapter.
            kind = "unavailable" if status == 200 else error_for_status(response).kind
        where = "inside an HTTP 200" if status == 200 else f"(HTTP {status})"
        message = f"upstream answered {code} {where}: {self.excerpt(str(data.get('error_msg') or ''))}"
        retry = parse_retry_after(response.headers.get("Retry-After")) if kind == "rate_limited" else None
        return UpstreamError(kind, message, status=None if status == 200 else status, retry_after=retry)

    def status_error(self, response: httpx.Response, text: str) -> UpstreamError:
        data = _json(text)
        if isinstance(data, dict) and data.get("error_code"):
            return self.coded_error(data, response)
        return error_for_status(response, self.excerpt(text))

    # --- the two call shapes -----------------------------------------------------------------------
    async def _post(self, request: InferenceRequest) -> httpx.Response:
        out = await self.outgoing(request)
        response = await self.client.post(out.url, content=out.content, headers=out.headers, timeout=self.timeout)
        if out.token and response.status_code == 401:
            # The cached token was refused (expired early, revoked): log in once more and retry once.
            self.forget(out)
            out = await self.outgoing(request)
            response = await self.client.post(out.url, content=out.content, headers=out.headers, timeout=self.timeout)
        return response

    async def complete(self, request: InferenceRequest) -> Completion:
        try:
            response = await self._post(request)
        except httpx.HTTPError as exc:
            raise self._failure(exc) from None
        if response.status_code != 200:
            raise self.status_error(response, response.text)
        data = _json(response.text)
        if not isinstance(data, dict):
            raise UpstreamError("bad_response", "upstream answered 200 with a body that is not a JSON object")
        if data.get("error_code"):
            raise self.coded_error(data, response)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UpstreamError("bad_response", "upstream answer has no choices")
        texts = [_choice_text(choice) for choice in choices]
        # Pangu gives no finish reason; an answer that ended is a stop.
        reasons = [str((c.get("finish_reason") if isinstance(c, dict) else None) or "stop") for c in choices]
        ppls = [pangu_ppl(c.get("ppl")) if isinstance(c, dict) else None for c in choices]
        return Completion(texts=texts, finish_reasons=reasons, usage=parse_usage(data.get("usage")), ppls=ppls)

    async def stream(self, request: InferenceRequest) -> AsyncIterator[StreamPiece]:
        try:
            for retried in (False, True):
                out = await self.outgoing(request)
                async with self.client.stream(
                    "POST", out.url, content=out.content, headers=out.headers, timeout=self.timeout
                ) as response:
                    if response.status_code != 200:
                        text = (await response.aread()).decode(errors="replace")
                        if out.token and response.status_code == 401 and not retried:
                            self.forget(out)  # as in _post: one fresh login, one retry
                            continue
                        raise self.status_error(response, text)
                    async for piece in self._pieces(response):
                        yield piece
                    return
        except httpx.HTTPError as exc:
            raise self._failure(exc) from None

    async def _pieces(self, response: httpx.Response) -> AsyncIterator[StreamPiece]:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            data = _json((await response.aread()).decode(errors="replace"))
            if isinstance(data, dict) and data.get("error_code"):
                raise self.coded_error(data, response)
            raise UpstreamError("bad_response", "upstream did not answer with an event stream")
        finished = False
        async for event in EventSource(response).aiter_sse():
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                if not finished:
                    # Pangu's pieces carry no finish reason; say where the answer ended for the dialects.
                    yield StreamPiece(finish_reason="stop")
                return
            chunk = _json(data)
            if not isinstance(chunk, dict):
                raise UpstreamError("bad_response", "upstream sent a malformed stream event")
            if chunk.get("error_code"):
                raise self.coded_error(chunk, response)
            usage = parse_usage(chunk.get("usage"))
            choices = chunk.get("choices") or []
            if not choices and usage:
                yield StreamPiece(usage=usage)
            for choice in choices:
                reason = choice.get("finish_reason") if isinstance(choice, dict) else None
                finished = finished or bool(reason)
                yield StreamPiece(text=_choice_text(choice), finish_reason=reason, usage=usage)
        raise UpstreamError("dropped", "upstream ended the stream without data:[DONE]")

    # --- connection check --------------------------------------------------------------------------
    async def _probe(self) -> str:
        if not self.base_url:
            raise ConnectionCheckFailed("No base URL (the Pangu endpoint) is set.")
        if not self.config.get("project_id"):
            raise ConnectionCheckFailed("No project id is set: Pangu inference URLs need one.")
        mode = self.auth_mode()
        if mode is None:
            raise ConnectionCheckFailed(f"No credentials: set {PANGU_CREDENTIALS_NEEDED}.")
        parts = []
        if mode == "iam":
            try:
                token = await self.fetch_token()
            except UpstreamError as exc:
                raise ConnectionCheckFailed(f"{exc}.") from None
            TOKENS.put(self.token_cache_key(), token)  # a fresh login is as good for calls as any
            parts.append("IAM token obtained")
        response = await self.client.get(self.base_url + "/", timeout=self.timeout)
        if response.status_code >= 500:
            raise ConnectionCheckFailed(f"The endpoint is unhealthy: {describe_status(response)}.")
        parts.append(f"endpoint reachable (HTTP {response.status_code})")
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + "."  # not capitalize(): it would lowercase "IAM" and "HTTP"
