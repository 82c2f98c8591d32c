"""The embedded model server as the console sees it while it starts: the OpenAI simulator plus the
server's `/health`, with a switch for a loading phase.

The real server (`python -m local_llm`) only opens its port once its models are loaded, so
its warm-up looks like a refused connection: a test gets that by starting this simulator late.
`loading` stands for a server that listens before it is ready and says so: `/health` answers 503
`{"status": "loading"}` and every call 503 with the OpenAI error code `model_loading` and a
Retry-After, the answers the console waits through.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.upstreams.base import SimulatorServer, SimulatorState
from tests.upstreams.openai import OpenAIHandler


@dataclass
class LocalLlmState(SimulatorState):
    loading: bool = False
    loading_retry_after: int = 3  # the Retry-After of a loading answer


class LocalLlmHandler(OpenAIHandler):
    @property
    def local(self) -> LocalLlmState:
        assert isinstance(self.state, LocalLlmState)
        return self.state

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/health":
            super().do_GET()
            return
        self.read_json()
        if self.local.loading:
            self.send_json(503, {"status": "loading"}, {"Retry-After": str(self.local.loading_retry_after)})
        else:
            # The real server's shape: readiness, the pool's queue, and per-model instances.
            self.send_json(200, {"status": "ok", "waiting": 0, "models": {}})

    def do_POST(self) -> None:
        if not self.local.loading:
            super().do_POST()
            return
        self.read_json()
        self.send_json(
            503,
            {
                "error": {
                    "message": "The local model server is loading its models.",
                    "type": "server_error",
                    "code": "model_loading",
                    "param": None,
                }
            },
            {"Retry-After": str(self.local.loading_retry_after)},
        )


def serve(*, port: int = 0, loading: bool = False) -> SimulatorServer:
    """Start the stand-in on loopback; `server.state.loading` switches the loading phase."""
    return SimulatorServer(LocalLlmHandler, LocalLlmState(loading=loading), port=port).start()
