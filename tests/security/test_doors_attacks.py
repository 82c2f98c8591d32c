"""Attacks on the gateway's HTTP door and the deployment defaults (hardening issue, "doors"): bodies sent
before credentials, a Host the console does not serve, forged X-Forwarded-* headers, and the deep health
check. Each test names its attacker and spells out the steps in its docstring."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from console import health
from console import services as console_services
from console.lib import aksk
from console.lib.asgi import TrustedProxies, client_ip
from tests.chat.conftest import World
from tests.conftest import ROOT
from tests.factories import make_user

MIB = 1024 * 1024
DEFAULT_LIMIT = 2 * MIB  # the documented default of GATEWAY_MAX_BODY_BYTES
CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


# --- raw HTTP/1.1, so a test decides exactly which bytes are sent and when --------------------------
def _connect(world: World, timeout: float = 5.0) -> socket.socket:
    parsed = urlparse(world.url)
    sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 80), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _head(world: World, path: str, headers: dict[str, str]) -> bytes:
    host = urlparse(world.url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the one response on `sock`; raises socket.timeout when none comes."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return status, json.loads(rest[:length])


# --- 1. bodies before credentials ---------------------------------------------------------------------
# The attackers run in a process of their own, so their Python work does not share the console's
# interpreter lock (the console under test runs in a thread of this process). Standard library only.
# Protocol: one probe round (the first MiB, then wait for the answer), "ready"; then per "go" line ten
# bodies sent whole at once, "firing" as they start and their statuses when all are answered.
ATTACKERS = r"""
import json, socket, sys, threading

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
MIB = 1024 * 1024
prefix, suffix = b'{"model": "sim-chat", "messages": [{"role": "user", "content": "', b'"}]}'
body = prefix + b"x" * (6 * MIB - len(prefix) - len(suffix)) + suffix

def chunk(data):
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"

def answer(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("closed before an answer")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(l.split(":", 1)[1]) for l in lines[1:] if l.lower().startswith("content-length:"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split(" ")[1]), json.loads(rest[:length])

def attack(i, probe):
    chunked = i % 2 == 1
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    if i % 4 < 2:
        lines.append(f"Authorization: Bearer lmc-made-up-{i}")
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    payload = chunk(body) + b"0\r\n\r\n" if chunked else body
    with socket.create_connection((host, port), timeout=5) as sock:
        if probe:  # the first MiB, then wait: the answer must come before the other 5 MB are sent
            sock.sendall(head + payload[:MIB])
            result = answer(sock)
            rest = payload[MIB:]
        else:
            sock.sendall(head)
            rest = payload
        try:
            sock.sendall(rest)
        except OSError:
            pass  # the console closed the connection rather than read the rest
        return result if probe else answer(sock)

def round_of_ten(probe):
    results = [None] * 10
    def run(i):
        try:
            results[i] = attack(i, probe)
        except Exception as exc:
            results[i] = repr(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    if not probe:
        print("firing", flush=True)
    for t in threads:
        t.join()
    return results

probe = round_of_ten(True)
print("ready", flush=True)
rounds = []
while sys.stdin.readline().strip() == "go":
    rounds.append(round_of_ten(False))
    print("done", flush=True)
print(json.dumps({"probe": probe, "rounds": rounds}), flush=True)
"""


def test_unauthenticated_6mb_bodies_are_refused_unread_and_do_not_stall_a_valid_call(world: World) -> None:
    """Attacker: anonymous, ten connections at once.

    1. Each opens a connection and starts a ~6 MB JSON chat body to /v1/chat/completions: five announce
       it with Content-Length, five send it chunked (no length); half give a made-up key, half none.
    2. Each sends the headers and the first MiB only, then waits for the answer: it must come now
       (413 for an announced length over the 2 MiB default, 401 for the chunked ones, whose credentials
       are checked before the body is read), not after the console has read the body.
    3. Five times: all ten send a whole 6 MB body at once while alice makes a valid call. Each gets 401
       or 413; alice's median latency stays under 3x her idle median measured just before; the
       upstream sees only alice's calls."""
    parsed = urlparse(world.url)
    with httpx.Client(headers=world.headers(), timeout=15) as alice:

        def valid_call() -> float:
            started = time.perf_counter()
            answer = alice.post(world.url + "/v1/chat/completions", json=CHAT)
            assert answer.status_code == 200, answer.text
            return time.perf_counter() - started

        valid_call()  # connections and caches warm
        # Counted as at least 30 ms: on this shared 2-core machine a loopback call's own time swings
        # by tens of ms with the neighbours' load. The stall this test guards against was 1.4 s.
        idle = max(statistics.median(valid_call() for _ in range(5)), 0.03)
        attackers = subprocess.Popen(
            [sys.executable, "-c", ATTACKERS, parsed.hostname or "", str(parsed.port), "/v1/chat/completions"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert attackers.stdin is not None and attackers.stdout is not None
        latencies = []
        try:
            assert attackers.stdout.readline().strip() == "ready"
            for _ in range(5):
                attackers.stdin.write("go\n")
                attackers.stdin.flush()
                assert attackers.stdout.readline().strip() == "firing"
                latencies.append(valid_call())
                assert attackers.stdout.readline().strip() == "done"
            attackers.stdin.write("stop\n")
            attackers.stdin.flush()
            report = json.loads(attackers.stdout.readline())
        finally:
            attackers.kill()
            attackers.wait()

    for i, result in enumerate(report["probe"]):
        assert isinstance(result, list), f"attacker {i} got no answer before sending its body: {result}"
    for results in [report["probe"], *report["rounds"]]:
        for i, result in enumerate(results):
            assert isinstance(result, list), (i, result)
            status, error = result
            if i % 2 == 0:
                assert (status, error["error"]["code"]) == (413, "request_too_large"), (i, error)
            else:
                code = "invalid_api_key" if i % 4 < 2 else "missing_api_key"
                assert (status, error["error"]["code"]) == (401, code), (i, error)
    # Alice's 1 + 5 + 5 calls, nothing of the attackers'.
    assert len(world.upstream.state.requests) == 11
    attacked = statistics.median(latencies)
    assert attacked < 3 * idle, f"valid calls took {attacked * 1000:.0f} ms under attack, {idle * 1000:.0f} ms idle"


def test_announced_length_over_the_limit_is_refused_before_any_byte(world: World) -> None:
    """Attacker: anyone, even with a valid key. Steps: announce Content-Length of the limit + 1 on the Pangu
    path and send no body at all. The 413 comes at once, in Pangu's shape; the upstream is never called."""
    with _connect(world) as sock:
        headers = {**world.headers(), "Content-Length": str(DEFAULT_LIMIT + 1)}
        sock.sendall(_head(world, urlparse(world.pangu_path()).path, headers))
        status, error = _read_response(sock)
    assert status == 413 and error["error_code"] == "PANGU.0010", error
    assert world.upstream.state.requests == []
    # The limit itself is allowed: a body of exactly DEFAULT_LIMIT bytes is read and parsed (off the loop).
    pad = DEFAULT_LIMIT - len(json.dumps({**CHAT, "pad": ""}).encode())
    exact = json.dumps({**CHAT, "pad": "x" * pad}).encode()
    assert len(exact) == DEFAULT_LIMIT
    answer = httpx.post(world.url + "/v1/chat/completions", content=exact, headers=world.headers(), timeout=15)
    assert answer.status_code == 200, answer.text


def test_chunked_body_is_cut_off_at_the_limit(world: World, settings: Settings) -> None:
    """Attacker: a caller with a valid key and no Content-Length. Steps: with the limit at 64 KiB, send a
    chunked body 16 KiB at a time and stop as soon as 80 KiB are out, then wait: the 413 arrives without
    the chunked body ever ending, so the console counted the bytes and stopped reading at the limit."""
    settings.GATEWAY_MAX_BODY_BYTES = 64 * 1024
    with _connect(world) as sock:
        sock.sendall(_head(world, "/v1/chat/completions", {**world.headers(), "Transfer-Encoding": "chunked"}))
        for _ in range(5):
            sock.sendall(_chunk(b" " * 16 * 1024))
        status, error = _read_response(sock)
    assert (status, error["error"]["code"]) == (413, "request_too_large"), error
    assert "65536 bytes" in error["error"]["message"]
    assert world.upstream.state.requests == []


def _signed_headers(world: World, body: bytes, *, chunked: bool = False) -> dict[str, str]:
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="sdk")
    parsed = urlparse(world.pangu_path())
    headers = {"Host": parsed.netloc, "Content-Type": "application/json"}
    headers |= aksk.sign(
        access_key=key.access_key_id,
        secret_key=secret,
        method="POST",
        path=parsed.path,
        query="",
        headers=headers,
        body=body,
        now=datetime.now(UTC),
    )
    return headers


def test_aksk_body_is_read_bounded_then_verified(world: World, settings: Settings) -> None:
    """Attacker: a holder of a valid AK/SK pair (the signature hashes the body, so it is read first).
    Steps: (a) sign a body larger than the limit and send it chunked: 413 once the limit is passed,
    never read whole; (b) a signed 100 KB body within the limit is read, verified and parsed off the
    event loop: 200; (c) the same signature over a changed body: 401."""
    settings.GATEWAY_MAX_BODY_BYTES = 128 * 1024
    big = json.dumps({"messages": [{"content": "hi"}], "pad": "x" * (200 * 1024)}).encode()

    def chunks() -> Any:
        for start in range(0, len(big), 16 * 1024):
            yield big[start : start + 16 * 1024]

    refused = httpx.post(world.pangu_path(), content=chunks(), headers=_signed_headers(world, big), timeout=15)
    assert refused.status_code == 413 and refused.json()["error_code"] == "PANGU.0010", refused.text

    fits = json.dumps({"messages": [{"content": "hi"}], "pad": "x" * (100 * 1024)}).encode()
    headers = _signed_headers(world, fits)
    accepted = httpx.post(world.pangu_path(), content=fits, headers=headers, timeout=15)
    assert accepted.status_code == 200, accepted.text
    tampered = httpx.post(world.pangu_path(), content=fits.replace(b'"hi"', b'"ho"'), headers=headers, timeout=15)
    assert tampered.status_code == 401 and tampered.json()["error_code"] == "APIG.0301", tampered.text
    assert len(world.upstream.state.requests) == 1


def test_large_bodies_are_parsed_off_the_event_loop(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacker: a caller with a valid key sending bodies near the limit, so that each json.loads holds the
    event loop (and every other call on it). Steps: send a 1.5 MB body and a small one; the large one is
    parsed in another thread than the event loop's, the small one on the loop (a thread hop would cost
    it more than the parse)."""
    from chat import asgi

    threads: list[tuple[int, bool]] = []
    parse = asgi._body_json

    def recording(raw: bytes) -> dict[str, Any]:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        threads.append((len(raw), on_loop))
        return parse(raw)

    monkeypatch.setattr(asgi, "_body_json", recording)
    large = json.dumps({**CHAT, "pad": "x" * (1536 * 1024)}).encode()
    small = json.dumps(CHAT).encode()
    for body in (large, small):
        answer = httpx.post(world.url + "/v1/chat/completions", content=body, headers=world.headers(), timeout=15)
        assert answer.status_code == 200, answer.text
    assert threads == [(len(large), False), (len(small), True)]


# --- 2. ALLOWED_HOSTS on the fast path ----------------------------------------------------------------
def test_a_host_not_allowed_is_refused_on_the_gateway_paths(world: World) -> None:
    """Attacker: anyone pointing a name the console does not serve at it (DNS rebinding, cache poisoning
    through a Host the operator never listed). Steps: call each dialect's path, and an unrouted gateway
    path, with a valid key and `Host: evil.example`: 400 in each dialect's shape, nothing reaches the
    upstream. Django's own pages refuse it too (400)."""
    bad = {**world.headers(), "Host": "evil.example"}
    openai = httpx.post(world.url + "/v1/chat/completions", json=CHAT, headers=bad)
    assert openai.status_code == 400 and openai.json()["error"]["code"] == "invalid_parameter", openai.text
    assert "evil.example" in openai.json()["error"]["message"]
    cloudbase = httpx.post(world.url + "/v1/ai/sim/v1/chat/completions", json=CHAT, headers=bad)
    assert cloudbase.status_code == 400 and cloudbase.json()["code"] == "AI_MODEL_PARAM_INVALID", cloudbase.text
    pangu = httpx.post(world.pangu_path(), json={"messages": [{"content": "hi"}]}, headers=bad)
    assert pangu.status_code == 400 and pangu.json()["error_code"] == "PANGU.0010", pangu.text
    models = httpx.get(world.url + "/v1/models", headers=bad)
    assert models.status_code == 400
    unrouted = httpx.post(world.url + "/v1/no/such/thing", json={}, headers=bad)
    assert unrouted.status_code == 400 and unrouted.json()["error_code"] == "PANGU.0010"
    assert httpx.get(world.url + "/healthz", headers={"Host": "evil.example"}).status_code == 400
    assert world.upstream.state.requests == []
    # The served name still works, with or without its port.
    assert httpx.post(world.url + "/v1/chat/completions", json=CHAT, headers=world.headers()).status_code == 200
    answer = httpx.post(world.url + "/v1/chat/completions", json=CHAT, headers={**world.headers(), "Host": "localhost"})
    assert answer.status_code == 200, answer.text


# --- 3. forwarded headers -----------------------------------------------------------------------------
def _through(app: TrustedProxies, peer: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    app.app = inner
    scope = {"type": "http", "scheme": "http", "client": (peer, 40000), "headers": headers, "path": "/"}
    asyncio.run(app(scope, None, None))  # type: ignore[arg-type]
    return seen


def test_forwarded_headers_from_anyone_else_are_dropped() -> None:
    """Attacker: a client talking to daphne directly (no proxy configured). Steps: send
    `X-Forwarded-For: 127.0.0.1` (to pass for the machine itself, or to dodge a per-address throttle)
    and `X-Forwarded-Proto: https`. The client address stays the socket's, the scheme stays http, and the
    headers are gone before Django or the gateway read them."""
    import ipaddress

    forged = [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"https"), (b"x-real-ip", b"10.0.0.1")]
    seen = _through(TrustedProxies(None, networks=()), "203.0.113.7", [*forged, (b"accept", b"*/*")])  # type: ignore[arg-type]
    assert client_ip(seen) == "203.0.113.7" and seen["scheme"] == "http"
    assert seen["headers"] == [(b"accept", b"*/*")]
    # The same from a peer that is not in TRUSTED_PROXIES while another address is.
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    seen = _through(TrustedProxies(None, networks=proxies), "203.0.113.7", forged)  # type: ignore[arg-type]
    assert client_ip(seen) == "203.0.113.7" and seen["scheme"] == "http" and seen["headers"] == []


def test_forwarded_headers_from_a_trusted_proxy_name_the_client() -> None:
    """Attacker: a client behind the operator's proxy who prepends a forged address to X-Forwarded-For.
    Steps: the proxy (10.0.0.2, trusted) appends the real peer, so the header reads
    `127.0.0.1, 198.51.100.4, 10.0.0.3` (forged, real client, an inner trusted proxy). The client is the
    rightmost address that is not a trusted proxy: 198.51.100.4; the scheme is the proxy's."""
    import ipaddress

    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    headers = [(b"x-forwarded-for", b"127.0.0.1, 198.51.100.4, 10.0.0.3"), (b"x-forwarded-proto", b"https")]
    seen = _through(TrustedProxies(None, networks=proxies), "10.0.0.2", headers)  # type: ignore[arg-type]
    assert client_ip(seen) == "198.51.100.4" and seen["scheme"] == "https"
    # Garbage in the chain is not believed: the last trusted hop is the client.
    headers = [(b"x-forwarded-for", b"not-an-address, 10.0.0.3")]
    seen = _through(TrustedProxies(None, networks=proxies), "10.0.0.2", headers)  # type: ignore[arg-type]
    assert client_ip(seen) == "10.0.0.3"


def test_daphne_is_not_told_to_believe_forwarded_headers(settings: Settings) -> None:
    """Attacker: anyone, against the default deployment. Steps: none needed if daphne ran with
    --proxy-headers (it believes X-Forwarded-For from every peer). The Procfile no longer passes it, the
    application applies TrustedProxies, and TRUSTED_PROXIES is empty by default."""
    from console.asgi import application

    procfile = (ROOT / "Procfile").read_text()
    assert "daphne" in procfile and "proxy-headers" not in procfile
    assert isinstance(application, TrustedProxies) and application.networks == ()
    assert settings.TRUSTED_PROXIES == [] and settings.TRUSTED_PROXY_NETWORKS == ()
    assert Path(ROOT / ".env.example").read_text().count("\nTRUSTED_PROXIES=\n") == 1


def test_forged_forwarded_for_does_not_open_deep_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacker: anonymous, remote (203.0.113.7), through the whole application. Steps: GET
    /healthz?deep=1 with `X-Forwarded-For: 127.0.0.1` to pass for the machine itself: the shallow answer,
    and the worker probe (which enqueues a task) never runs."""
    from console.asgi import application

    probes: list[str] = []

    def worker() -> str:
        probes.append("worker")
        return "w"

    monkeypatch.setattr(health, "_worker", worker)
    sent: list[dict[str, Any]] = []

    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays: Django stops listening once it has answered
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"deep=1",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"x-forwarded-for", b"127.0.0.1")],
        "client": ("203.0.113.7", 40000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(application(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 200
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["checks"] == {} and probes == []


# --- 4. deep health -----------------------------------------------------------------------------------
@pytest.fixture
def failing_database(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The database check fails with a detail no stranger should read; the worker probe is counted."""

    def database() -> None:
        raise RuntimeError("could not connect to server at db.internal:5432 as console")

    probes: list[str] = []

    def worker() -> str:
        probes.append("worker")
        return "console@test"

    monkeypatch.setattr(health, "_database", database)
    monkeypatch.setattr(health, "_worker", worker)
    return probes


def test_deep_health_is_shallow_for_a_remote_stranger(client: Client, db: None, failing_database: list[str]) -> None:
    """Attacker: anonymous, remote. Steps: GET /healthz?deep=1 (as often as they like, to fill the queue
    with ping tasks and to read the database's error text). They get the shallow answer: 200, no checks,
    no error text, and no task enqueued."""
    answer = client.get("/healthz?deep=1", REMOTE_ADDR="203.0.113.7")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "runtime": health.runtime_name(), "checks": {}}
    assert b"db.internal" not in answer.content and failing_database == []
    # A signed-in user who is not staff is a stranger too.
    client.force_login(make_user("mallory"))
    answer = client.get("/healthz?deep=1", REMOTE_ADDR="203.0.113.7")
    assert answer.json()["checks"] == {} and failing_database == []


def test_deep_health_keeps_its_details_for_loopback_and_staff(
    client: Client, db: None, failing_database: list[str]
) -> None:
    """Who may still see it: the machine itself (monitoring, the scale-out probes) and signed-in staff,
    from anywhere. Each gets every check with the database's error text, and the worker probe runs."""
    local = client.get("/healthz?deep=1", REMOTE_ADDR="127.0.0.1")
    assert local.status_code == 503
    assert "db.internal:5432" in local.json()["checks"]["database"]["error"]
    assert local.json()["checks"]["worker"]["worker"] == "console@test" and failing_database == ["worker"]
    client.force_login(make_user("sam", is_staff=True))
    staff = client.get("/healthz?deep=1", REMOTE_ADDR="203.0.113.7")
    assert staff.status_code == 503 and "db.internal:5432" in staff.json()["checks"]["database"]["error"]
    assert failing_database == ["worker", "worker"]
