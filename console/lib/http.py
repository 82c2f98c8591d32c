"""HTTP helpers shared by every upstream call: pooled httpx.AsyncClients per event loop, and
Retry-After parsing.

Several small pools instead of one big one: httpcore looks over every pooled connection for
each request, so one pool of 64+ busy connections costs more per call than eight of eight.

Every new connection of these pools goes through the address policy (`console.lib.netpolicy`): the
name is resolved here, each address checked, and the connection made to the checked address itself,
so a name that resolves elsewhere later (DNS rebinding) reaches nothing new. The check costs once
per connection, not per request: pooled keep-alive connections are reused as before.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import itertools
import math
import re
import socket
import ssl
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import httpcore
import httpx
from httpcore import SOCKET_OPTION

from console.lib import netpolicy

SHARDS = 8
# Per-request timeouts are set by each call from its provider's settings; these are the pools'.
# Every connection a shard may open may also stay open for the next call: with fewer kept alive, a
# load of a few hundred concurrent streams (the playground's bench: 200) closed a third of its
# connections after each answer and opened new ones for the next (TCP connect, address policy, a
# new httpcore connection; about a fifth of a turn's CPU). An idle one costs a socket, kept 30 s.
_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30)


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building a TLS context loads the CA bundle (~30 ms): once per process, shared by every pool.
    return httpx.create_ssl_context()


async def resolve(host: str, port: int) -> list[netpolicy.IPAddress]:
    """The addresses a connection to host may use, in the resolver's order (tests replace this to
    play a rebinding DNS server)."""
    literal = netpolicy.parse_ip(host)
    if literal is not None:
        return [literal]
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[netpolicy.IPAddress] = []
    for info in infos:
        ip = netpolicy.parse_ip(str(info[4][0]))
        if ip is not None and ip not in found:
            found.append(ip)
    return found


class TimedReads(httpcore.AsyncNetworkStream):
    """A connection whose reads time out by one timer per connection, not a cancel scope per read.

    httpcore arms an anyio cancel scope (`fail_after`) around every socket read, and a streamed answer
    reads once a piece: in the playground benchmark that scope was 13 % of the CPU a relayed piece
    costs. Here a read only notes its deadline; one timer, re-armed when it fires before the deadline
    of the read under way, cancels a read still waiting past it, and that read raises ReadTimeout as
    httpcore's would. Writes and TLS set-up are httpcore's own (once per request, not per piece)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, raw: anyio.abc.ByteStream) -> None:
        self._inner = inner
        self._raw = raw
        self._reader: asyncio.Task[object] | None = None
        self._until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    @classmethod
    def wrap(cls, stream: httpcore.AsyncNetworkStream) -> httpcore.AsyncNetworkStream:
        # httpcore's anyio stream (the one used on asyncio) keeps the anyio byte stream it reads from.
        raw = getattr(stream, "_stream", None)
        return cls(stream, raw) if isinstance(raw, anyio.abc.ByteStream) else stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        task = None
        if timeout is not None:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            self._reader, self._until = task, loop.time() + timeout
            if self._timer is None or self._timer.when() > self._until:
                if self._timer is not None:
                    self._timer.cancel()  # a shorter timeout than the pending timer's
                self._timer = loop.call_at(self._until, self._check)
        try:
            return await self._raw.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
        except asyncio.CancelledError:
            # Ours alone (nobody else asked to cancel the task): the timeout, not a cancellation.
            if self._expired and task is not None and task.uncancel() == 0:
                raise httpcore.ReadTimeout(f"no data within {timeout} s") from None
            raise
        finally:
            self._reader, self._expired = None, False

    def _check(self) -> None:
        self._timer = None
        reader = self._reader
        if reader is None:
            return  # no read waiting: the next one arms a timer
        loop = asyncio.get_running_loop()
        if loop.time() < self._until:
            self._timer = loop.call_at(self._until, self._check)  # a later read moved the deadline
            return
        self._expired = True
        reader.cancel()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return TimedReads.wrap(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address policy in front of every TCP connect."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        # Any refused address refuses the name: one that answers both public and metadata is an attack.
        for ip in addresses:
            if problem := netpolicy.address_problem(ip, port):
                raise httpcore.ConnectError(f"refused: {problem}")
        failure: httpcore.ConnectError = httpcore.ConnectError(f"{host} resolves to no address")
        for ip in addresses:
            try:
                stream = await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            peer = stream.get_extra_info("server_addr")
            connected = netpolicy.parse_ip(str(peer[0])) if isinstance(peer, tuple) and peer else None
            if connected is not None and netpolicy.address_problem(connected, port):
                await stream.aclose()
                raise httpcore.ConnectError("refused: the connected address is not allowed")
            return TimedReads.wrap(stream)
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("upstreams are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _Shards:
    def __init__(self) -> None:
        self.clients = [self._new() for _ in range(SHARDS)]
        self.turn = itertools.cycle(range(SHARDS))

    @staticmethod
    def _new() -> httpx.AsyncClient:
        # retries=2 re-tries only failed connects, when nothing has reached the upstream yet: safe.
        transport = httpx.AsyncHTTPTransport(retries=2, limits=_LIMITS, verify=_tls())
        # httpx passes no network backend through; the httpcore pool it built takes one, so wrap that pool's.
        pool = transport._pool
        pool._network_backend = GuardedBackend(pool._network_backend)
        return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60.0), follow_redirects=False)

    def next(self) -> httpx.AsyncClient:
        index = next(self.turn)
        client = self.clients[index]
        if client.is_closed:
            client = self.clients[index] = self._new()
        return client


_shards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shards] = weakref.WeakKeyDictionary()


def async_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    shards = _shards.get(loop)
    if shards is None:
        shards = _shards[loop] = _Shards()
    return shards.next()


# Beyond an hour a caller is better served by asking again than by sleeping on one answer; the cap
# also keeps a hostile or broken upstream from parking clients for days.
RETRY_AFTER_CAP = 3600
_DELAY_SECONDS = re.compile(r"[0-9]+")  # 1*DIGIT, ASCII only: str.isdigit() also accepts "²"


def parse_retry_after(value: str | None, *, now: datetime | None = None, cap: int = RETRY_AFTER_CAP) -> int | None:
    """Whole seconds to wait from a Retry-After value (RFC 9110 §10.2.3): delay-seconds, or an
    HTTP-date in any of its three forms, rounded up; a date already past is 0; at most `cap`.
    None when the value is missing or not a valid Retry-After (then the header is ignored)."""
    text = (value or "").strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        # Python refuses to turn more than 4300 digits into an int; anything past 10 is over the cap anyway.
        return cap if len(text) > 10 else min(int(text), cap)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # the asctime form carries no zone; HTTP-dates are GMT
    wait = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0, math.ceil(wait)), cap)
