"""An OpenAI wire-format upstream: /v1/models, /v1/chat/completions, /v1/completions (unary and SSE)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tests.upstreams.base import Faults, SimulatorHandler, SimulatorServer, SimulatorState


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class OpenAIHandler(SimulatorHandler):
    def _authorized(self) -> bool:
        key = self.state.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self.send_json(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "param": None,
                    }
                },
            )
            return False
        return True

    def _fault(self) -> bool:
        faults = self.state.faults
        if faults.status:
            headers = {"Retry-After": str(faults.retry_after)} if faults.status == 429 else None
            self.send_json(
                faults.status,
                {
                    "error": {
                        "message": f"simulated {faults.status}",
                        "type": "server_error",
                        "code": None,
                        "param": None,
                    }
                },
                headers,
            )
            return True
        if faults.error_in_200:
            self.send_json(
                200,
                {
                    "error": {
                        "message": "simulated error inside a 200",
                        "type": "server_error",
                        "code": "internal_error",
                        "param": None,
                    }
                },
            )
            return True
        return False

    def do_GET(self) -> None:
        self.read_json()
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/models":
            self.first_token_wait()
            if self._fault():
                return
            self.send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": "sim-chat", "object": "model", "created": 0, "owned_by": "simulator"},
                        {"id": "sim-text", "object": "model", "created": 0, "owned_by": "simulator"},
                    ],
                },
            )
        else:
            self.send_json(
                404, {"error": {"message": "not found", "type": "invalid_request_error", "code": None, "param": None}}
            )

    def do_POST(self) -> None:
        body = self.read_json()
        if not self._authorized():
            return
        path = self.path.rstrip("/")
        if path not in {"/v1/chat/completions", "/v1/completions"}:
            self.send_json(
                404, {"error": {"message": "not found", "type": "invalid_request_error", "code": None, "param": None}}
            )
            return
        self.first_token_wait()
        if self._fault():
            return
        body = body if isinstance(body, dict) else {}
        chat = path.endswith("chat/completions")
        if self.state.faults.bad_shape:
            self._bad_shape(stream=body.get("stream") in (True, "true"))
            return
        if body.get("stream") in (True, "true"):
            self._stream(body, chat=chat)
        else:
            self._unary(body, chat=chat)

    def _unary(self, body: dict[str, Any], *, chat: bool) -> None:
        pieces = self.limited(body)
        text = "".join(pieces)
        requested = body.get("n")
        n = requested if isinstance(requested, int) else 1
        choice_of = (
            (lambda i: {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
            if chat
            else (lambda i: {"index": i, "text": text, "finish_reason": "stop"})
        )
        self.send_json(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": body.get("model", "sim-chat"),
                "choices": [choice_of(i) for i in range(max(1, n))],
                "usage": self.reported(_usage(self.prompt_tokens(body, chat), len(pieces) * max(1, n))),
            },
        )

    def _stream(self, body: dict[str, Any], *, chat: bool) -> None:
        import json

        faults: Faults = self.state.faults
        pieces = self.limited(body)
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.start_stream()
        try:
            for i, piece in enumerate(pieces):
                if faults.drop_after is not None and i >= faults.drop_after:
                    self.close_connection, self._stream_open = True, False  # no last chunk: the body is cut
                    self.connection.shutdown(2)
                    return
                if faults.malformed_sse and i == 1:
                    self.write_event("data: {not json\n\n")
                    continue
                if self.state.stamp_pieces:
                    piece = f"{piece}@{time.monotonic():.6f}"
                choice = (
                    {
                        "index": 0,
                        "delta": {"content": piece} if i else {"role": "assistant", "content": piece},
                        "finish_reason": None,
                    }
                    if chat
                    else {"index": 0, "text": piece, "finish_reason": None}
                )
                chunk = {
                    "id": ident,
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": body.get("model", "sim-chat"),
                    "choices": [choice],
                }
                self.write_event(f"data: {json.dumps(chunk)}\n\n")
                if faults.token_delay:
                    time.sleep(faults.token_delay)
            final = {
                "id": ident,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()),
                "model": body.get("model", "sim-chat"),
                "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "stop"}
                    if chat
                    else {"index": 0, "text": "", "finish_reason": "stop"}
                ],
            }
            if (body.get("stream_options") or {}).get("include_usage"):
                final["usage"] = self.reported(_usage(self.prompt_tokens(body, chat), len(pieces)))
            self.write_event(f"data: {json.dumps(final)}\n\n")
            self.write_event("data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            with self.state.lock:
                self.state.disconnects += 1

    def _bad_shape(self, *, stream: bool) -> None:
        """Valid JSON, wrong shape: what a misconfigured proxy or a half-compatible server sends."""
        answer = {"id": "chatcmpl-bad", "choices": ["not an object"], "usage": "many"}
        if not stream:
            self.send_json(200, answer)
            return
        self.start_stream()
        self.write_event(f"data: {json.dumps(answer)}\n\n")
        self.write_event("data: [DONE]\n\n")


def serve(*, api_key: str | None = None, port: int = 0) -> SimulatorServer:
    """Start an OpenAI simulator on loopback; `server.state.faults` switches its faults."""
    return SimulatorServer(OpenAIHandler, SimulatorState(api_key=api_key), port=port).start()
