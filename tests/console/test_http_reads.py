"""Upstream reads time out by one timer per connection (console.lib.http.TimedReads), not httpcore's
cancel scope per read: a read that waits longer than its timeout still fails with ReadTimeout, at
that timeout, and nothing else changes. Driven with an in-memory anyio byte stream whose reads answer
when the test says so."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import anyio.abc
import httpcore
import pytest

from console.lib.http import GuardedBackend, TimedReads


class Pipe(anyio.abc.ByteStream):
    """Reads return what `feed` puts in, after `delay` seconds each."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False

    def feed(self, data: bytes) -> None:
        self.chunks.put_nowait(data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.delay:
            await asyncio.sleep(self.delay)
        data = await self.chunks.get()
        if not data:
            raise anyio.EndOfStream
        return data

    # The timed reader under test only reads: a write reaching this fake is a bug in it.
    async def send(self, item: bytes) -> None:
        raise AssertionError("TimedReads must not write to the stream")

    async def send_eof(self) -> None:
        raise AssertionError("TimedReads must not close the stream for writing")

    async def aclose(self) -> None:
        self.closed = True


class Inner(httpcore.AsyncNetworkStream):
    """Stands for httpcore's anyio stream: the byte stream it reads is `_stream`."""

    def __init__(self, pipe: Pipe) -> None:
        self._stream = pipe

    async def aclose(self) -> None:
        await self._stream.aclose()

    def get_extra_info(self, info: str) -> Any:
        return ("203.0.113.7", 443) if info == "server_addr" else None


def _timed(delay: float = 0.0) -> tuple[TimedReads, Pipe]:
    pipe = Pipe(delay)
    stream = TimedReads.wrap(Inner(pipe))
    assert isinstance(stream, TimedReads)
    return stream, pipe


def test_a_read_waiting_past_its_timeout_fails_with_read_timeout_at_that_timeout() -> None:
    async def scenario() -> float:
        stream, _ = _timed()
        began = time.perf_counter()
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.2)
        return time.perf_counter() - began

    assert 0.19 <= asyncio.run(scenario()) < 0.35


def test_reads_each_within_the_timeout_never_time_out_however_long_the_stream() -> None:
    """Ten reads of 60 ms each under a 150 ms timeout: 600 ms in all, four timeouts' worth; the one
    timer armed by the first read is moved on, not fired at a read."""

    async def scenario() -> list[bytes]:
        stream, pipe = _timed(delay=0.06)
        for i in range(10):
            pipe.feed(b"piece%d" % i)
        return [await stream.read(100, timeout=0.15) for _ in range(10)]

    assert asyncio.run(scenario()) == [b"piece%d" % i for i in range(10)]


def test_a_shorter_timeout_after_a_longer_one_is_kept() -> None:
    """A pooled connection serves providers with different timeouts: a 0.1 s read after a 30 s one
    times out after 0.1 s, not when the first read's timer would have fired."""

    async def scenario() -> float:
        stream, pipe = _timed()
        pipe.feed(b"first")
        assert await stream.read(100, timeout=30) == b"first"
        began = time.perf_counter()
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.1)
        return time.perf_counter() - began

    assert asyncio.run(scenario()) < 0.3


def test_a_cancellation_from_outside_stays_a_cancellation_and_the_end_of_stream_is_empty() -> None:
    async def scenario() -> tuple[bool, bytes, bool]:
        stream, pipe = _timed()
        reader = asyncio.ensure_future(stream.read(100, timeout=5))
        await asyncio.sleep(0.05)
        reader.cancel()  # the client left: not a timeout
        await asyncio.wait([reader])
        pipe.feed(b"")
        end = await stream.read(100, timeout=5)
        await stream.aclose()
        return reader.cancelled(), end, pipe.closed

    assert asyncio.run(scenario()) == (True, b"", True)


def test_no_timeout_waits_as_long_as_it_takes_and_extra_info_is_the_connections() -> None:
    async def scenario() -> tuple[bytes, Any]:
        stream, pipe = _timed()
        asyncio.get_running_loop().call_later(0.3, pipe.feed, b"late")
        return await stream.read(100, timeout=None), stream.get_extra_info("server_addr")

    assert asyncio.run(scenario()) == (b"late", ("203.0.113.7", 443))


def test_the_guarded_backends_connections_are_timed_this_way() -> None:
    """The upstream pools' backend hands out TimedReads over httpcore's own anyio stream: without
    the wrap the per-read cancel scope would be back, and nothing else would tell."""

    async def scenario() -> tuple[bool, bytes]:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stream = await GuardedBackend(httpcore.AnyIOBackend()).connect_tcp("127.0.0.1", port, timeout=5)
        data = await stream.read(100, timeout=5)
        await stream.aclose()
        server.close()
        await server.wait_closed()
        return isinstance(stream, TimedReads), data

    assert asyncio.run(scenario()) == (True, b"hello")
