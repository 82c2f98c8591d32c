"""A threaded HTTP/1.1 server with switchable faults, shared by the OpenAI and Pangu simulators.

Threads, not asyncio: each connection gets its own thread, so a slow first token on one
stream never delays another, and the simulator needs nothing beyond the standard library.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Faults:
    """Switches a test flips on a running simulator."""

    first_token_delay: float = 0.0  # seconds before the first byte of an answer
    token_delay: float = 0.0  # seconds between streamed pieces
    status: int | None = None  # answer every call with this HTTP status (500, 503, 429, ...)
    error_in_200: bool = False  # HTTP 200 whose body is an error object
    malformed_sse: bool = False  # a stream line that is not JSON
    drop_after: int | None = None  # close the connection after this many streamed pieces
    retry_after: int = 1  # Retry-After for 429
    usage: dict[str, Any] | None = None  # fields that replace the reported usage's (prompt_tokens: -5, ...)
    bad_shape: bool = False  # HTTP 200 whose answer (or each stream event) has choices that are not objects


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class SimulatorState:
    faults: Faults = field(default_factory=Faults)
    requests: list[Recorded] = field(default_factory=list)
    api_key: str | None = None  # when set, calls must present it
    reply: str = "Hello from the simulator. This answer streams word by word."
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Streams whose client went away before the end: how a cancelled upstream call looks from here.
    disconnects: int = 0
    # Benchmarks: each streamed piece ends with "@" and the time.monotonic() it was written at (the
    # machine's CLOCK_MONOTONIC, the same in every process), so a client can tell what a relay added.
    stamp_pieces: bool = False

    def record(self, item: Recorded) -> None:
        with self.lock:
            self.requests.append(item)


class SimulatorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SimulatorServer
    # Headers and body go out in separate writes; without this, Nagle's algorithm holds the body
    # back ~40 ms on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests and benchmarks read the recorded requests instead

    @property
    def state(self) -> SimulatorState:
        return self.server.state

    def read_raw(self) -> tuple[bytes, Any]:
        """The body's exact bytes (a signature covers them) and its JSON; the request is recorded."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.state.record(Recorded(self.command, self.path, dict(self.headers.items()), body))
        return raw, body

    def read_json(self) -> Any:
        return self.read_raw()[1]

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # Streams go out as the providers send them: HTTP/1.1 chunked transfer encoding on a connection
    # kept alive for the next call (the gateway's pools reuse it, as they do with the real services;
    # a close-delimited stream would make every streamed call open a new connection). A drop before
    # the last chunk is then an incomplete body, as a real provider's dropped stream is.
    _stream_open = False

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._stream_open = True

    def write_event(self, line: str) -> None:
        data = line.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def handle_one_request(self) -> None:
        self._stream_open = False
        super().handle_one_request()
        if self._stream_open:
            # The handler returned: its stream is complete, and the last chunk says so.
            self._stream_open = False
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:  # dropped on purpose (a fault), or the client went away
                self.close_connection = True

    def first_token_wait(self) -> None:
        if self.state.faults.first_token_delay:
            time.sleep(self.state.faults.first_token_delay)

    def prompt_tokens(self, body: dict[str, Any], chat: bool) -> int:
        """A word count stands in for a tokenizer: simulators only need stable, checkable numbers."""
        if chat:
            messages = body.get("messages", [])
            return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        return len(str(body.get("prompt", "")).split())

    def limited(self, body: dict[str, Any]) -> list[str]:
        """The reply's pieces, cut at max_tokens (one piece per token)."""
        pieces = self.pieces()
        limit = body.get("max_tokens")
        return pieces[:limit] if isinstance(limit, int) and limit > 0 else pieces

    def reported(self, usage: dict[str, int]) -> dict[str, Any]:
        """The usage object as sent: the simulator's own count, with any fields a fault replaces."""
        return {**usage, **self.state.faults.usage} if self.state.faults.usage else usage

    def pieces(self) -> list[str]:
        words = self.state.reply.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Bursts of hundreds of connections must queue, not be reset (the stdlib default is 5).
    request_queue_size = 1024

    def __init__(self, handler: type[SimulatorHandler], state: SimulatorState, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.state = state
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(target=self.serve_forever, name="simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
