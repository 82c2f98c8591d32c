"""A Huawei Pangu upstream on loopback: IAM token issue, project listing and the two inference paths.

Speaks the manual's wire format exactly, including its quirks, so the adapter is tested against them:
streamed lines are `data:{...}` with no space after the colon and end with `data:[DONE]`; `stream`
may be JSON true or the string "true"; role-less messages are accepted; every error is
`{"error_code", "error_msg", "request_id"}` with a PANGU.* or APIG.* code.

The IAM endpoint lives on the same server, so a test points both `iam_endpoint` and `base_url` at it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from console.lib import aksk
from tests.upstreams.base import SimulatorHandler, SimulatorServer, SimulatorState

TOKEN_LIFETIME = timedelta(hours=24)
_INFERENCE = re.compile(r"^/v1/(?P<project>[^/]+)/deployments/(?P<deployment>[^/]+)/(?P<mode>chat|text)/completions$")

# The manual's code for each simulated HTTP status (appendix "错误码").
_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("PANGU.0010", "parameter illegal."),
    401: ("APIG.0301", "Incorrect IAM authentication information: decrypt token fail"),
    403: ("PANGU.3319", "Private service permission error."),
    404: ("PANGU.3254", "The requested resource does not exist."),
    429: ("APIG.0308", "The throttling threshold has been reached: policy user over ratelimit,limit:60,time:1 minute"),
    500: ("PANGU.0031", "Inner service exception."),
    503: ("PANGU.3259", "NLP service status is not running or have been deleted."),
    504: ("APIG.0201", "Backend timeout."),
}


@dataclass
class PanguState(SimulatorState):
    token: str | None = None  # a ready-made X-Auth-Token the simulator accepts
    access_key: str | None = None
    secret_key: str | None = None
    iam_user: str | None = None
    iam_password: str | None = None
    project_id: str = "0c5b1e9a7f3d4e2b8a6c4d2e0f1a3b5c"
    project_name: str = "cn-southwest-2"
    issued: dict[str, datetime] = field(default_factory=dict)  # IAM token -> expiry
    tokens_issued: int = 0

    @property
    def open(self) -> bool:
        """No credential configured: every call is let in (like the OpenAI simulator without a key)."""
        return not (self.token or self.access_key or self.iam_user)

    def issue_token(self) -> tuple[str, datetime]:
        token = "MIIsim" + secrets.token_urlsafe(24)
        expires = datetime.now(UTC) + TOKEN_LIFETIME
        with self.lock:
            self.issued[token] = expires
            self.tokens_issued += 1
        return token, expires

    def expire_tokens(self) -> None:
        """Age every issued IAM token past its expiry, as 24 hours would."""
        past = datetime.now(UTC) - timedelta(seconds=1)
        with self.lock:
            self.issued = dict.fromkeys(self.issued, past)


def _request_id() -> str:
    return uuid.uuid4().hex


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"completion_tokens": completion, "prompt_tokens": prompt, "total_tokens": prompt + completion}


class PanguHandler(SimulatorHandler):
    server: SimulatorServer

    @property
    def pangu(self) -> PanguState:
        state = self.server.state
        assert isinstance(state, PanguState)
        return state

    def send_error_code(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.send_json(status, {"error_code": code, "error_msg": message, "request_id": _request_id()}, headers)

    # --- auth ----------------------------------------------------------------------------------
    def _authorized(self, raw: bytes) -> bool:
        state = self.pangu
        if state.open:
            return True
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith(aksk.ALGORITHM):
            return self._aksk_ok(authorization, raw)
        token = self.headers.get("X-Auth-Token")
        if not token:
            reason = "x-auth-token not found"
        elif state.token and secrets.compare_digest(token.encode(), state.token.encode()):
            return True
        elif token in state.issued:
            if state.issued[token] > datetime.now(UTC):
                return True
            reason = f"token expires, expires_at:{state.issued[token].strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
        else:
            reason = "decrypt token fail"
        self.send_error_code(401, "APIG.0301", f"Incorrect IAM authentication information: {reason}")
        return False

    def _aksk_ok(self, authorization: str, raw: bytes) -> bool:
        state = self.pangu
        parsed = aksk.parse_authorization(authorization)
        if parsed is None or not state.access_key or parsed.access_key != state.access_key:
            self.send_error_code(401, "APIG.0301", "Incorrect IAM authentication information: ak not found")
            return False
        url = urlsplit(self.path)
        try:
            aksk.verify(
                secret_key=state.secret_key or "",
                parsed=parsed,
                method=self.command,
                path=url.path,
                query=url.query,
                headers=dict(self.headers.items()),
                body=raw,
            )
        except aksk.SignatureInvalid:
            self.send_error_code(
                401, "APIG.0301", "Incorrect IAM authentication information: verify aksk signature fail"
            )
            return False
        return True

    # --- faults --------------------------------------------------------------------------------
    def _fault(self) -> bool:
        faults = self.state.faults
        if faults.status:
            code, message = _STATUS_ERRORS.get(faults.status, ("PANGU.0001", "unknown error."))
            headers = {"Retry-After": str(faults.retry_after)} if faults.status == 429 else None
            self.send_error_code(faults.status, code, message, headers)
            return True
        if faults.error_in_200:
            self.send_error_code(200, "PANGU.0031", "Inner service exception.")
            return True
        return False

    # --- routes --------------------------------------------------------------------------------
    def do_GET(self) -> None:
        raw, _ = self.read_raw()
        if urlsplit(self.path).path.rstrip("/") == "/v3/projects":
            if not self._authorized(raw):
                return
            self._projects()
            return
        self.send_error_code(404, "APIG.0101", "The API does not exist or has not been published in the environment")

    def do_POST(self) -> None:
        raw, body = self.read_raw()
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/v3/auth/tokens":
            self._login(body)
            return
        match = _INFERENCE.match(path)
        if not match:
            self.send_error_code(
                404, "APIG.0101", "The API does not exist or has not been published in the environment"
            )
            return
        if not self._authorized(raw):
            return
        self.first_token_wait()
        if self._fault():
            return
        body = body if isinstance(body, dict) else {}
        chat = match.group("mode") == "chat"
        if not self._valid(body, chat=chat):
            return
        if body.get("stream") in (True, "true"):
            self._stream(body, chat=chat)
        else:
            self._unary(body, chat=chat)

    def _login(self, body: Any) -> None:
        state = self.pangu
        try:
            identity = body["auth"]["identity"]
            user = identity["password"]["user"]
            ok = "password" in identity["methods"] and user["name"] == state.iam_user
            ok = ok and secrets.compare_digest(str(user["password"]).encode(), (state.iam_password or "").encode())
        except (KeyError, TypeError):
            self.send_json(
                400, {"error": {"code": 400, "message": "The request body is invalid.", "title": "Bad Request"}}
            )
            return
        if not ok:
            # IAM's own error shape, not Pangu's: this is a different service.
            self.send_json(
                401, {"error": {"code": 401, "message": "The username or password is wrong.", "title": "Unauthorized"}}
            )
            return
        token, expires = state.issue_token()
        now = datetime.now(UTC)
        self.send_json(
            201,
            {
                "token": {
                    "methods": ["password"],
                    "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "user": {"name": state.iam_user, "domain": user.get("domain", {})},
                    "project": {"id": state.project_id, "name": state.project_name},
                }
            },
            {"X-Subject-Token": token},
        )

    def _projects(self) -> None:
        state = self.pangu
        self.send_json(
            200,
            {
                "projects": [
                    {
                        "domain_id": "65382450e8f64ac0870cd180d14e684b",
                        "is_domain": False,
                        "parent_id": "65382450e8f64ac0870cd180d14e684b",
                        "name": state.project_name,
                        "description": "",
                        "links": {"next": None, "previous": None, "self": f"/v3/projects/{state.project_id}"},
                        "id": state.project_id,
                        "enabled": True,
                    }
                ],
                "links": {"next": None, "previous": None, "self": "/v3/projects"},
            },
        )

    # --- inference -----------------------------------------------------------------------------
    def _valid(self, body: dict[str, Any], *, chat: bool) -> bool:
        stream = body.get("stream") in (True, "true")
        n = body.get("n", 1)
        if stream and n != 1:
            self.send_error_code(400, "PANGU.3321", "The parameter [n] can only be 1 when calling streaming.")
            return False
        if not stream and n not in (1, 2):
            self.send_error_code(400, "PANGU.3320", "The parameter [n] can only be 1 or 2 when calling non-streaming.")
            return False
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            self.send_error_code(400, "PANGU.3317", "max tokens Number Illegal.")
            return False
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                self.send_error_code(400, "PANGU.3278", "required api parameter is not present.")
                return False
            if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
                self.send_error_code(400, "PANGU.0010", "parameter illegal.")
                return False
        elif not isinstance(body.get("prompt"), str) or not body["prompt"]:
            self.send_error_code(400, "PANGU.3278", "required api parameter is not present.")
            return False
        return True

    def _unary(self, body: dict[str, Any], *, chat: bool) -> None:
        pieces = self.limited(body)
        text = "".join(pieces)
        n = body.get("n", 1)
        choices = [
            # The manual's answers carry role null and a perplexity score per choice.
            {"index": i, "message": {"role": None, "content": text}, "ppl": 8.468677045693822e-11}
            if chat
            else {"index": i, "text": text, "ppl": 1.77809815678146e-36}
            for i in range(n)
        ]
        self.send_json(
            200,
            {
                "id": str(uuid.uuid4()),
                "created": int(time.time()),
                "choices": choices,
                "usage": _usage(self.prompt_tokens(body, chat), len(pieces) * n),
            },
        )

    def _stream(self, body: dict[str, Any], *, chat: bool) -> None:
        faults = self.state.faults
        ident = str(uuid.uuid4())
        self.start_stream()
        try:
            for i, piece in enumerate(self.limited(body)):
                if faults.drop_after is not None and i >= faults.drop_after:
                    self.close_connection, self._stream_open = True, False  # no last chunk: the body is cut
                    self.connection.shutdown(2)
                    return
                if faults.malformed_sse and i == 1:
                    self.write_event("data:{not json\n\n")
                    continue
                choice = {"message": {"content": piece}} if chat else {"text": piece}
                chunk = {"id": ident, "created": int(time.time()), "choices": [choice]}
                self.write_event("data:" + json.dumps(chunk, ensure_ascii=False) + "\n\n")
                if faults.token_delay:
                    time.sleep(faults.token_delay)
            self.write_event("data:[DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            with self.state.lock:
                self.state.disconnects += 1  # the client went away: a cancelled upstream call


def serve(
    *,
    token: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    iam_user: str | None = None,
    iam_password: str | None = None,
    port: int = 0,
) -> SimulatorServer:
    """Start a Pangu simulator on loopback; `server.state` is a PanguState whose `faults` switch its faults.

    With no credential set, inference calls are let in unauthenticated; otherwise each must carry the
    token, an IAM token this server issued (and that has not expired), or a valid AK/SK signature."""
    state = PanguState(
        token=token, access_key=access_key, secret_key=secret_key, iam_user=iam_user, iam_password=iam_password
    )
    return SimulatorServer(PanguHandler, state, port=port).start()
