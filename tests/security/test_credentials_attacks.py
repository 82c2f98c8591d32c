"""Attacks on the credential checks (issue 10): password floods on `POST /v3/auth/tokens` and the
sign-in page, wrong IAM body shapes, IAM tokens outliving or escaping the credential that issued them,
and AK/SK signatures replayed, unsigned for Host, or used as an oracle for valid access keys.

Signatures here are computed with hashlib and hmac (tests/chat/test_rules_aksk.py's `_sign`), never
with console/lib/aksk.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import urlparse

import httpx
import pytest
from django.contrib.auth.hashers import MD5PasswordHasher, PBKDF2PasswordHasher
from django.test import Client

from chat import db as chat_db
from console import callers, throttle
from console import services as console_services
from console.models import AuditEvent, Membership
from tests.chat.conftest import World, post
from tests.chat.test_rules_aksk import _sign
from tests.factories import PASSWORD, make_project, make_user

CHAT = {"messages": [{"content": "hi"}]}
CHAT_OPENAI = {"messages": [{"role": "user", "content": "hi"}]}
HASHES = {"count": 0}


class CountingHasher(MD5PasswordHasher):
    """MD5 (fast, as in every test) that counts each hash it computes: a check it refuses runs none."""

    algorithm = "counting_md5"

    def encode(self, password: str, salt: str) -> str:  # verify() calls this too
        HASHES["count"] += 1
        return super().encode(password, salt)


class SlowHasher(PBKDF2PasswordHasher):
    """PBKDF2 at a cost of tens of milliseconds a hash: enough that a flood of them fills a thread pool."""

    algorithm = "slow_pbkdf2"
    iterations = 60_000


COUNTING = f"{__name__}.CountingHasher"


def _password_body(username: str, password: str, scope: dict[str, object] | None = None) -> dict[str, object]:
    auth: dict[str, object] = {
        "identity": {"methods": ["password"], "password": {"user": {"name": username, "password": password}}}
    }
    if scope is not None:
        auth["scope"] = scope
    return {"auth": auth}


def _aksk_body(access: str, secret: str, scope: dict[str, object] | None = None) -> dict[str, object]:
    auth: dict[str, object] = {
        "identity": {"methods": ["hw_ak_sk"], "hw_ak_sk": {"access": {"key": access}, "secret": {"key": secret}}}
    }
    if scope is not None:
        auth["scope"] = scope
    return {"auth": auth}


# The throttle's windows are fixed (aligned to the epoch): its clock is held 100 s into a 300 s window,
# 1_000_000_200 being a multiple of 300, so no test straddles two windows and Retry-After is exactly 200.
FROZEN_NOW = 1_000_000_200 + 100
RETRY_AFTER = 200


@pytest.fixture(autouse=True)
def _frozen_throttle_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle, "time", SimpleNamespace(time=lambda: FROZEN_NOW))


def _counting(settings: object, *, per_user: int, per_ip: int) -> None:
    settings.PASSWORD_HASHERS = [COUNTING]  # type: ignore[attr-defined]
    settings.PASSWORD_THROTTLE_PER_USER = per_user  # type: ignore[attr-defined]
    settings.PASSWORD_THROTTLE_PER_IP = per_ip  # type: ignore[attr-defined]
    settings.PASSWORD_THROTTLE_WINDOW = 300  # type: ignore[attr-defined]


# --- password floods --------------------------------------------------------------------------------
def test_iam_password_flood_for_one_user_is_throttled_without_hashing(world: World, settings: object) -> None:
    """Attacker: anonymous. Sends 8 wrong passwords for alice to POST /v3/auth/tokens, then her real one.
    The first 5 (the per-user limit) are checked and refused (401 APIG.0301); the rest answer 429
    APIG.0308 with Retry-After and hash nothing, the right password included; one audit entry, not three."""
    _counting(settings, per_user=5, per_ip=100)
    world.alice.user.set_password(PASSWORD)
    world.alice.user.save()
    HASHES["count"] = 0
    url = f"{world.url}/v3/auth/tokens"
    answers = [httpx.post(url, json=_password_body("alice", f"guess-{i}")) for i in range(8)]
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 3
    assert {a.json()["error_code"] for a in answers[:5]} == {"APIG.0301"}
    assert {a.json()["error_code"] for a in answers[5:]} == {"APIG.0308"}
    assert [a.headers["Retry-After"] for a in answers[5:]] == [str(RETRY_AFTER)] * 3
    assert HASHES["count"] == 5
    right = httpx.post(url, json=_password_body("alice", PASSWORD))
    assert right.status_code == 429 and "X-Subject-Token" not in right.headers
    assert HASHES["count"] == 5
    # Another spelling of the name is the same account, and the same counter.
    assert httpx.post(url, json=_password_body("ALICE", "guess")).status_code == 429
    events = AuditEvent.objects.filter(action="auth.password_throttled", project=world.alice.project)
    assert events.count() == 1
    assert events.get().changes["limit"] == "user" and events.get().changes["attempts"] == 5


def test_iam_password_flood_from_one_address_is_throttled_across_usernames(world: World, settings: object) -> None:
    """Attacker: anonymous. Sprays one wrong password over many usernames from one address: after the
    per-address limit (4) every further attempt is 429 APIG.0308, whatever the name, and hashes nothing."""
    _counting(settings, per_user=100, per_ip=4)
    HASHES["count"] = 0
    url = f"{world.url}/v3/auth/tokens"
    statuses = [httpx.post(url, json=_password_body(f"user{i}", "password1")).status_code for i in range(7)]
    assert statuses == [401] * 4 + [429] * 3
    # Django hashes once for an unknown user too (its timing guard): 4 checks, 4 hashes.
    assert HASHES["count"] == 4
    assert httpx.post(url, json=_password_body("alice", PASSWORD)).status_code == 429


def test_a_successful_sign_in_does_not_use_up_attempts(world: World, settings: object) -> None:
    """A user signing in correctly again and again is never throttled: only failures accumulate."""
    _counting(settings, per_user=3, per_ip=3)
    world.alice.user.set_password(PASSWORD)
    world.alice.user.save()
    url = f"{world.url}/v3/auth/tokens"
    assert [httpx.post(url, json=_password_body("alice", PASSWORD)).status_code for _ in range(6)] == [201] * 6


def test_login_page_flood_is_throttled_with_429(db: None, settings: object) -> None:
    """Attacker: anonymous. Posts wrong passwords for alice to the sign-in page. After the per-user limit
    (3) the page answers 429 with Retry-After and says so, and the password is no longer hashed."""
    _counting(settings, per_user=3, per_ip=100)
    make_user("alice")
    HASHES["count"] = 0
    client = Client()
    answers = [client.post("/accounts/login/", {"username": "alice", "password": f"guess-{i}"}) for i in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert HASHES["count"] == 3
    assert answers[3]["Retry-After"] == str(RETRY_AFTER)
    assert b"Too many sign-in attempts" in answers[3].content
    right = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert right.status_code == 429 and "_auth_user_id" not in client.session
    assert HASHES["count"] == 3


_FLOOD = textwrap.dedent(
    """
    import json, sys, threading, httpx
    url, total, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lock, sent, statuses = threading.Lock(), [0], []
    ready = threading.Barrier(clients + 1)
    def run():
        with httpx.Client(timeout=60) as http:
            ready.wait()
            while True:
                with lock:
                    if sent[0] >= total:
                        return
                    sent[0] += 1
                    n = sent[0]
                body = {"auth": {"identity": {"methods": ["password"],
                        "password": {"user": {"name": "alice", "password": f"wrong-{n}"}}}}}
                statuses.append(http.post(url, json=body).status_code)
    threads = [threading.Thread(target=run) for _ in range(clients)]
    [t.start() for t in threads]
    print("ready", flush=True)  # imported and connected: what follows is the flood alone
    ready.wait()
    [t.join() for t in threads]
    print(json.dumps(statuses))
    """
)


SAMPLES = 200
IDLE_FLOOR = 0.030


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_login_flood_does_not_slow_inference(world: World, settings: object) -> None:
    """Attacker: anonymous, from another process. 16 clients send 240 wrong passwords for alice (hashed
    with a costly PBKDF2; throttling raised out of the way so every one is hashed) while alice makes
    chat calls to the OpenAI simulator: the calls' p99 stays under 3x their idle p99 (idle taken as at
    least 30 ms, see below), because the hashing has its own low-priority threads and the gateway's stay
    free for admission and usage."""
    settings.PASSWORD_HASHERS = [f"{__name__}.SlowHasher"]  # type: ignore[attr-defined]
    settings.PASSWORD_THROTTLE_PER_USER = 10_000  # type: ignore[attr-defined]
    settings.PASSWORD_THROTTLE_PER_IP = 10_000  # type: ignore[attr-defined]
    world.alice.user.set_password(PASSWORD)
    world.alice.user.save()
    url = world.url + "/v1/chat/completions"
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as http:

        def timed_call() -> float:
            started = time.perf_counter()
            answer = http.post(url, json=body, headers=world.headers())
            assert answer.status_code == 200, answer.text
            return time.perf_counter() - started

        for _ in range(5):
            timed_call()  # warm the connection, the caller cache and the upstream client
        # ... and the password threads (started on first use, each opening its database connection).
        assert httpx.post(f"{world.url}/v3/auth/tokens", json=_password_body("alice", "warm-up")).status_code == 401
        # Idle is measured on both sides of the flood, so both figures see this machine's other load alike.
        idle = [timed_call() for _ in range(SAMPLES // 2)]
        flood = subprocess.Popen(
            [sys.executable, "-c", _FLOOD, f"{world.url}/v3/auth/tokens", "240", "16"],
            stdout=subprocess.PIPE,
            text=True,
            # The attacker's client is on this machine only because the test is: at a lower priority its
            # own CPU (16 threads of HTTP client) takes less from the server, as another host's would not.
            preexec_fn=lambda: os.nice(10),
        )
        assert flood.stdout is not None and flood.stdout.readline().strip() == "ready"
        attacked: list[float] = []
        while len(attacked) < SAMPLES and flood.poll() is None:  # only calls made during the flood
            attacked.append(timed_call())
        out, _ = flood.communicate(timeout=120)
        idle += [timed_call() for _ in range(SAMPLES // 2)]
    statuses = json.loads(out)
    assert len(statuses) == 240 and set(statuses) <= {401, 429}
    assert statuses.count(401) >= 100, "the flood must mostly be hashed, not refused for a full queue"
    assert len(attacked) >= 20
    idle_p99, attacked_p99 = _p99(idle), _p99(attacked)
    # In this harness the client, the console and the upstream share one process (one GIL) on a small
    # shared machine, and an idle call takes ~10 ms (the issue measured ~50 ms against a served console):
    # there, scheduling noise alone moves a p99 by tens of milliseconds, so idle counts as at least
    # IDLE_FLOOR. With the hashing on the gateway's threads this flood puts the p99 at 150-1300 ms.
    bound = 3 * max(idle_p99, IDLE_FLOOR)
    assert attacked_p99 < bound, f"p99 {attacked_p99 * 1000:.0f} ms under the flood, {idle_p99 * 1000:.0f} idle"


class BlockingHasher(MD5PasswordHasher):
    """Holds each hash until the test lets it go: the password threads stay busy for as long as needed."""

    algorithm = "blocking_md5"
    release = threading.Event()

    def encode(self, password: str, salt: str) -> str:
        assert self.release.wait(timeout=30)
        return super().encode(password, salt)


def test_password_checks_beyond_the_queue_are_refused_at_once(world: World, settings: object) -> None:
    """Attacker: anonymous, with more concurrent password attempts than the password threads and their
    queue hold (here 1 thread, no queue): while one check hashes, each further attempt is refused at
    once with 429 APIG.0308 and Retry-After: 1 instead of waiting (or taking a gateway thread)."""
    settings.PASSWORD_HASHERS = [f"{__name__}.BlockingHasher"]  # type: ignore[attr-defined]
    settings.IAM_PASSWORD_QUEUE = 0  # type: ignore[attr-defined]
    url = f"{world.url}/v3/auth/tokens"
    BlockingHasher.release.clear()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # An unknown user: Django still hashes once (its timing guard), with the one hasher installed.
        first = pool.submit(httpx.post, url, json=_password_body("nobody", "guess-0"), timeout=30)
        deadline = time.monotonic() + 10
        while chat_db._password_pending == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = [httpx.post(url, json=_password_body("alice", f"guess-{i}"), timeout=5) for i in (1, 2, 3)]
        # The gateway is not held up meanwhile.
        assert (
            post(world.url + "/v1/chat/completions", {"model": "sim-chat", **CHAT_OPENAI}, world.headers()).status_code
            == 200
        )
        BlockingHasher.release.set()
        assert first.result().status_code == 401
    assert [(r.status_code, r.json()["error_code"], r.headers["Retry-After"]) for r in refused] == [
        (429, "APIG.0308", "1")
    ] * 3


# --- wrong shapes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "identity",
    [
        {"methods": ["password"], "password": "x"},
        {"methods": ["password"], "password": {"user": "x"}},
        {"methods": ["password"], "password": {"user": {"name": ["alice"], "password": "x"}}},
        {"methods": ["hw_ak_sk"], "hw_ak_sk": "x"},
        {"methods": ["hw_ak_sk"], "hw_ak_sk": {"access": "AK", "secret": {"key": "x"}}},
        {"methods": ["hw_ak_sk"], "hw_ak_sk": {"access": {"key": 1}, "secret": {"key": "x"}}},
        {"methods": "password"},
    ],
)
def test_wrong_shapes_in_iam_bodies_are_400_parameter_errors(world: World, identity: dict[str, object]) -> None:
    """Attacker: anonymous. Sends IAM bodies with a string where an object belongs (`"password": "x"`)
    and other wrong shapes: each is 400 PANGU.0010 naming the part, never a 401 or a 500."""
    answer = httpx.post(f"{world.url}/v3/auth/tokens", json={"auth": {"identity": identity}})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "PANGU.0010"


# --- IAM tokens bound to what issued them --------------------------------------------------------------
def _issue(world: World, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{world.url}/v3/auth/tokens", json=body)


def test_an_access_key_cannot_mint_a_token_for_another_project(world: World) -> None:
    """Attacker: holder of alice's access key for project A. alice is also admin of project B; the key
    holder asks POST /v3/auth/tokens for a token scoped to B: refused (401), no token. Unscoped, the
    token is A's."""
    other = make_project(name="alice-other", owner=world.alice.user)
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="a")
    scopes: list[dict[str, object]] = [{"project": {"id": other.pk}}, {"project": {"name": "alice-other"}}]
    for scope in scopes:
        refused = _issue(world, _aksk_body(key.access_key_id, secret, scope))
        assert refused.status_code == 401 and "X-Subject-Token" not in refused.headers, refused.text
        assert refused.json()["error_code"] == "APIG.0301"
    unscoped = _issue(world, _aksk_body(key.access_key_id, secret))
    assert unscoped.status_code == 201 and unscoped.json()["token"]["project"]["id"] == world.alice.project.pk
    # Her password still reaches B: it is her, not a key bound to A.
    assert _issue(world, _password_body("alice", PASSWORD, {"project": {"id": other.pk}})).status_code == 201


def _expire_verified_callers() -> None:
    """The verified-caller cache keeps a caller for TOKEN_CACHE_SECONDS: the documented staleness bound."""
    time.sleep(callers.TOKEN_CACHE_SECONDS + 0.2)


def _chat_with(world: World, token: str) -> httpx.Response:
    return post(world.pangu_path(), CHAT, {"X-Auth-Token": token})


def test_an_iam_token_ends_with_the_access_key_that_issued_it(world: World) -> None:
    """Attacker: someone who kept an IAM token minted with an access key that alice then revoked. Within
    TOKEN_CACHE_SECONDS of the revocation the token is refused (401 APIG.0301) and the upstream is not
    called."""
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="a")
    token = _issue(world, _aksk_body(key.access_key_id, secret)).headers["X-Subject-Token"]
    assert _chat_with(world, token).status_code == 200
    console_services.access_key_revoke(key=key, by=world.alice.user)
    _expire_verified_callers()
    refused = _chat_with(world, token)
    assert refused.status_code == 401 and refused.json()["error_code"] == "APIG.0301"
    assert len(world.upstream.state.requests) == 1


@pytest.mark.parametrize("change", ["deactivate", "remove_membership"])
def test_an_iam_token_ends_with_its_user_or_membership(world: World, change: str) -> None:
    """Attacker: dave, a member whose account is deactivated or who is removed from alice's project,
    still holding an IAM token he got with his password: refused within TOKEN_CACHE_SECONDS."""
    dave = make_user("dave")
    Membership.objects.create(project=world.alice.project, user=dave, role="member")
    token = _issue(world, _password_body("dave", PASSWORD)).headers["X-Subject-Token"]
    assert _chat_with(world, token).status_code == 200
    if change == "deactivate":
        dave.is_active = False
        dave.save()
    else:
        Membership.objects.filter(project=world.alice.project, user=dave).delete()
    _expire_verified_callers()
    refused = _chat_with(world, token)
    assert refused.status_code == 401 and refused.json()["error_code"] == "APIG.0301"
    assert len(world.upstream.state.requests) == 1


# --- AK/SK signatures -------------------------------------------------------------------------------
def _signed_headers(
    world: World,
    *,
    access: str,
    secret: str,
    body: bytes,
    signed: tuple[str, ...] = ("content-type", "host", "x-sdk-date"),
) -> dict[str, str]:
    parsed = urlparse(world.pangu_path())
    headers = {
        "Host": parsed.netloc,
        "Content-Type": "application/json",
        "X-Sdk-Date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
    }
    names = list(signed)
    signature = _sign(
        secret=secret, method="POST", path=parsed.path, query="", headers=headers, signed=names, body=body
    )
    headers["Authorization"] = (
        f"SDK-HMAC-SHA256 Access={access}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


def _signed_call(world: World, headers: dict[str, str], body: bytes) -> httpx.Response:
    return httpx.post(world.pangu_path(), content=body, headers=headers, timeout=15)


def test_a_signed_request_cannot_be_replayed(world: World) -> None:
    """Attacker: on the path between alice and the console, records one signed call and sends it again
    (within the 15-minute window): the copy is refused with 401 APIG.0301 and never reaches the upstream."""
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="a")
    body = json.dumps(CHAT).encode()
    headers = _signed_headers(world, access=key.access_key_id, secret=secret, body=body)
    assert _signed_call(world, headers, body).status_code == 200
    replayed = _signed_call(world, headers, body)
    assert replayed.status_code == 401 and replayed.json()["error_code"] == "APIG.0301"
    assert len(world.upstream.state.requests) == 1


def test_host_must_be_signed(world: World) -> None:
    """Attacker: holds a request alice signed without Host (for another service) and points it here: a
    correct signature over content-type and x-sdk-date only is refused (401 APIG.0301)."""
    key, secret = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="a")
    body = json.dumps(CHAT).encode()
    headers = _signed_headers(
        world, access=key.access_key_id, secret=secret, body=body, signed=("content-type", "x-sdk-date")
    )
    refused = _signed_call(world, headers, body)
    assert refused.status_code == 401 and refused.json()["error_code"] == "APIG.0301"
    assert world.upstream.state.requests == []


def test_an_unknown_access_key_and_a_bad_signature_get_the_same_answer(world: World) -> None:
    """Attacker: anonymous, probing access key ids. A made-up id and alice's real id with a wrong
    secret get the same status and the same body (but for the request id): no oracle."""
    key, _ = console_services.access_key_create(user=world.alice.user, project=world.alice.project, name="a")
    body = json.dumps(CHAT).encode()
    answers = []
    for access in ("AKNOSUCHKEY000000000", key.access_key_id):
        answer = _signed_call(world, _signed_headers(world, access=access, secret="wrong-secret", body=body), body)
        payload = answer.json()
        payload.pop("request_id", None)
        answers.append((answer.status_code, payload))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and answers[0][1]["error_code"] == "APIG.0301"
    assert world.upstream.state.requests == []
