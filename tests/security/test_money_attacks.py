"""Attacks on the money: usage records, token quotas and concurrency limits.

The attacker is a provider that lies about what a call cost, a client that leaves at the worst moment,
an upstream that answers in the wrong shape, a Redis that goes away, a stream that outlasts its
concurrency lease, or a web process that dies holding reservations. Each test asserts the exact quota
counter (nothing left reserved, exactly what was spent charged) and the exact usage record, computed
here from the request rather than read back from the code under test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection

from chat import limits, quota, usage
from chat.gateway import Route, Stream, gateway_call
from chat.models import QuotaCounter, QuotaHold, UsageRecord
from console import services as console_services
from console.callers import caller_for_session
from models_registry.models import Provider
from tests.chat.conftest import World, post, usage_records
from tests.conftest import free_port, wait_until
from tests.factories import make_project, make_user
from tests.models_registry.factories import make_model, make_provider
from tests.upstreams.base import SimulatorServer
from tests.upstreams.openai import serve

QUOTA = 1_000_000
REPLY_WORDS = 10  # the simulator's reply: "Hello from the simulator. This answer streams word by word."


def _prompt_estimate(text: str) -> int:
    """The gateway's own prompt estimate for ASCII text: one token per four characters."""
    return math.ceil(len(text) / 4)


def _reservation(text: str, max_tokens: int) -> int:
    """What a one-message call reserves: every prompt byte a token, 8 for the message, the completion cap."""
    return len(text.encode()) + 8 + max_tokens


def _with_quota(provider: Provider, **fields: object) -> None:
    Provider.objects.filter(pk=provider.pk).update(token_quota=QUOTA, **fields)


def _counter(provider: Provider) -> tuple[int, int]:
    row = QuotaCounter.objects.get(provider=provider)
    return row.reserved, row.used


def _settled(provider: Provider, used: int, timeout: float = 3.0) -> tuple[int, int]:
    """The counter once nothing is reserved and `used` is charged (the writer settles just after the answer)."""
    deadline = time.monotonic() + timeout
    while (found := _counter(provider)) != (0, used) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def _body(text: str, max_tokens: int, **extra: object) -> dict[str, object]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, **extra}


# --- a provider that lies about usage ------------------------------------------------------------------
@dataclass
class Tenant:
    key: str
    provider: Provider


@pytest.fixture
def bob_upstream() -> Iterator[SimulatorServer]:
    server = serve(api_key="bob-upstream-key")
    yield server
    server.stop()


@pytest.fixture
def bob(world: World, bob_upstream: SimulatorServer) -> Tenant:
    """Another project with an honest upstream of its own, calling through the same console."""
    user = make_user("bob")
    project = make_project(name="bob-project", owner=user)
    provider = make_provider(
        project=project,
        slug="sim",
        base_url=bob_upstream.url + "/v1",
        timeout_seconds=5,
        token_quota=QUOTA,
        secrets={"api_key": "bob-upstream-key"},
    )
    make_model(provider=provider, name="sim-chat", context_length=8192)
    _, key = console_services.api_key_create(user=user, project=project, name="bob")
    return Tenant(key=key, provider=provider)


def test_a_provider_reporting_impossible_usage_takes_no_other_projects_usage_down(world: World, bob: Tenant) -> None:
    """Attacker: alice's provider (or whoever controls its upstream) reports `prompt_tokens: -5` and
    `completion_tokens: 10**12` for a call.
    1. alice calls through that provider; bob, in another project, calls his own honest upstream at the
       same moment, so their usage records and quota settlements share the writer's batches.
    2. Before the fix the -5 failed the usage table's CHECK, the whole batch with bob's records and
       settlements was rolled back and retried forever, and bob's reservations grew until he was refused.
    Now alice's record is held to what her call could cost, and bob's records and counter are exact."""
    _with_quota(world.provider)
    world.faults.usage = {"prompt_tokens": -5, "completion_tokens": 10**12, "total_tokens": 10**12 - 5}
    alice_text, bob_text = "one two three", "hi"
    bob_calls = 6

    def alice_call() -> httpx.Response:
        return post(f"{world.url}/v1/chat/completions", _body(alice_text, 5), world.headers())

    def bob_call() -> httpx.Response:
        return post(f"{world.url}/v1/chat/completions", _body(bob_text, 10), {"Authorization": f"Bearer {bob.key}"})

    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(alice_call)] + [pool.submit(bob_call) for _ in range(bob_calls // 2)]
        later = [pool.submit(bob_call) for _ in range(bob_calls - bob_calls // 2)]
        answers = [f.result() for f in first + later]
    assert [a.status_code for a in answers] == [200] * (1 + bob_calls)

    # bob: his upstream's word count ("hi" = 1 prompt token, ten one-word pieces), every call recorded.
    assert _settled(bob.provider, bob_calls * (1 + REPLY_WORDS)) == (0, bob_calls * (1 + REPLY_WORDS))
    bobs = usage_records(bob_calls, provider=bob.provider)
    assert [(r.status, r.prompt_tokens, r.completion_tokens, r.usage_estimated) for r in bobs] == [
        ("ok", 1, REPLY_WORDS, False)
    ] * bob_calls
    # alice: the negative prompt replaced by the gateway's estimate, the completion cut to max_tokens.
    expected_alice = _prompt_estimate(alice_text) + 5
    assert _settled(world.provider, expected_alice) == (0, expected_alice)
    (record,) = usage_records(1, provider=world.provider)
    assert (record.status, record.prompt_tokens, record.completion_tokens, record.total_tokens) == (
        "ok",
        _prompt_estimate(alice_text),
        5,
        expected_alice,
    )
    assert record.usage_estimated is True
    # The caller sees the same held figures it is charged for.
    assert answers[0].json()["usage"] == {
        "prompt_tokens": _prompt_estimate(alice_text),
        "completion_tokens": 5,
        "total_tokens": expected_alice,
    }


def test_a_huge_reported_prompt_is_cut_to_the_prompts_bytes(world: World) -> None:
    """Attacker: an upstream reports 10**12 prompt tokens for a three-word prompt (and a streamed
    one). The record holds at most one token per prompt byte plus 8 for the message, never a number
    the usage table cannot hold; the quota is charged the same."""
    _with_quota(world.provider)
    world.faults.usage = {"prompt_tokens": 10**12, "completion_tokens": 3}
    text = "one two three"
    answer = post(
        f"{world.url}/v1/chat/completions",
        _body(text, 3, stream=True, stream_options={"include_usage": True}),
        world.headers(),
    )
    assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n")
    expected = len(text.encode()) + 8 + 3
    assert _settled(world.provider, expected) == (0, expected)
    (record,) = usage_records(1, provider=world.provider)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_estimated) == (
        len(text.encode()) + 8,
        3,
        True,
    )


def test_a_record_the_database_refuses_is_given_up_alone(
    world: World, bob: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """Attacker: any way at all of getting one record the database refuses (here a negative count, as
    a gateway without the usage bounds would have written) into a batch with other projects' records.
    The writer writes the settlements apart from the records, finds the refused record by writing the
    batch one record at a time, logs it and gives it up: every other record and settlement is written."""
    reserved = 50
    counters = {}
    for provider in (world.provider, bob.provider):
        _with_quota(provider)
        taken = quota.quota_reserve(provider=Provider.objects.get(pk=provider.pk), tokens=reserved)
        assert taken is not None
        counters[provider.pk] = taken[0]

    def record(provider: Provider, request_id: str, prompt: int) -> usage.RecordFields:
        return {
            "project_id": provider.project_id,
            "provider_id": provider.pk,
            "model_name": "sim-chat",
            "dialect": "openai",
            "mode": "chat",
            "prompt_tokens": prompt,
            "total_tokens": max(prompt, 0),
            "status": "ok",
            "request_id": request_id,
        }

    async def scenario() -> None:
        writer = usage.writer()
        writer.submit(record=record(bob.provider, "bob-before", 7), settle=None)
        writer.submit(record=record(world.provider, "alice-bad", -5), settle=(counters[world.provider.pk], reserved, 0))
        writer.submit(record=record(bob.provider, "bob-after", 9), settle=(counters[bob.provider.pk], reserved, 9))
        assert await usage.flush_all(timeout=5)

    with caplog.at_level(logging.ERROR, logger="chat.usage"):
        asyncio.run(scenario())

    assert sorted(UsageRecord.objects.values_list("request_id", "prompt_tokens")) == [
        ("bob-after", 9),
        ("bob-before", 7),
    ]
    assert _counter(world.provider) == (0, 0) and _counter(bob.provider) == (0, 9)
    refused = [r.getMessage() for r in caplog.records if "refused this usage record" in r.getMessage()]
    assert len(refused) == 1 and "'alice-bad'" in refused[0]


# --- every way a call can end ---------------------------------------------------------------------------
def test_a_client_gone_before_the_first_token_is_charged_its_prompt_and_holds_nothing(world: World) -> None:
    """Attacker: a client starts streamed calls and hangs up before the first token, again and
    again, so the upstream processes prompts nobody pays for (before the fix such a call was charged
    nothing). Now: the slot and the reservation are given back, the prompt that went out is charged
    (the gateway's estimate), and the call is recorded cancelled with exactly that."""
    _with_quota(world.provider, max_concurrency=1)
    world.faults.first_token_delay = 2.0
    text = "please think about this for a while"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{world.url}/v1/chat/completions",
            json=_body(text, 20, stream=True),
            headers=world.headers(),
            timeout=httpx.Timeout(10, read=0.4),
        )
    prompt = _prompt_estimate(text)
    assert _settled(world.provider, prompt) == (0, prompt)
    (record,) = usage_records(1, provider=world.provider)
    assert (record.status, record.stream, record.error_code, record.ttft_ms) == ("cancelled", True, "", None)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_estimated) == (prompt, 0, True)
    assert len(world.upstream.state.requests) == 1


def _wait_until_upstream(world: World, count: int) -> None:
    """Until the upstream has seen `count` calls: a call that reached it holds its slot. A fixed
    sleep is not enough: on a loaded CI machine admission took longer than 0.3 s, and the step meant
    to come after the call's admission came before it."""
    wait_until(lambda: len(world.upstream.state.requests) >= count, timeout=10, every=0.01)
    assert len(world.upstream.state.requests) == count, "the call never reached the upstream"


def test_a_call_refused_at_the_limit_gives_its_reservation_back(world: World) -> None:
    """Attacker: a client that floods a group at its concurrency limit. Each refused call reserved
    its tokens before the limit refused it: it gives them back, is charged nothing and is recorded;
    the call holding the slot is charged exactly what its upstream reported."""
    _with_quota(world.provider, max_concurrency=1)
    world.faults.first_token_delay = 1.5
    holder = ThreadPoolExecutor(1).submit(
        post, f"{world.url}/v1/chat/completions", _body("hold the slot", 10), world.headers()
    )
    _wait_until_upstream(world, 1)
    refused = post(f"{world.url}/v1/chat/completions", _body("no slot for me", 10), world.headers())
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert holder.result().status_code == 200
    expected = 3 + REPLY_WORDS  # "hold the slot": three words to the simulator, ten pieces
    assert _settled(world.provider, expected) == (0, expected)
    refused_record = UsageRecord.objects.get(error_code="CONCURRENCY_EXCEEDED")
    assert (refused_record.status, refused_record.total_tokens, refused_record.http_status) == ("error", 0, 429)
    assert len(world.upstream.state.requests) == 1


def test_a_redis_that_cannot_be_reached_refuses_the_call_and_settles_it(world: World) -> None:
    """Attacker: whoever can make Redis unreachable (a full network, a restart) while calls come in.
    Before the fix the Redis error escaped the gateway as a 500 and the call was recorded as if
    cancelled. Now: refused like a call at the limit (429 concurrency_limit_exceeded, Retry-After 1),
    the upstream never called, the reservation given back, the refusal recorded."""
    _with_quota(world.provider, max_concurrency=2)
    limits._limiter = limits.RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    answer = post(f"{world.url}/v1/chat/completions", _body("hi", 10), world.headers())
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "concurrency_limit_exceeded" and answer.headers["Retry-After"] == "1"
    assert world.upstream.state.requests == []
    assert _settled(world.provider, 0) == (0, 0)
    (record,) = usage_records(1, provider=world.provider)
    assert (record.status, record.error_code, record.http_status, record.total_tokens) == (
        "error",
        "CONCURRENCY_EXCEEDED",
        429,
        0,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_an_upstream_answer_of_the_wrong_shape_is_a_502_and_settles(world: World, stream: bool) -> None:
    """Attacker: an upstream (or a proxy in front of it) answering 200 with valid JSON of the wrong
    shape: choices that are not objects, a usage that is a string. Before the fix the adapter's
    exception escaped as a 500 and the call was recorded as if cancelled. Now: the dialect's upstream
    error (502 upstream_error), the reservation given back, nothing charged, the failure recorded."""
    _with_quota(world.provider, max_concurrency=1)
    world.faults.bad_shape = True
    answer = post(f"{world.url}/v1/chat/completions", _body("hi", 10, stream=stream), world.headers())
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_error"
    assert _settled(world.provider, 0) == (0, 0)
    (record,) = usage_records(1, provider=world.provider)
    assert (record.status, record.error_code, record.http_status, record.total_tokens) == (
        "error",
        "UPSTREAM_ERROR",
        502,
        0,
    )
    # The slot was freed: the next call, to a healthy upstream, is served.
    world.faults.bad_shape = False
    assert post(f"{world.url}/v1/chat/completions", _body("hi", 10), world.headers()).status_code == 200


def test_a_stream_past_the_longest_call_ends_as_a_timeout_and_settles(world: World, settings: object) -> None:
    """Attacker: an upstream that never stops streaming (one piece just inside each read timeout)
    would hold its slot and reservation forever. The call ends at GATEWAY_MAX_CALL_SECONDS with the
    dialect's timeout event, charged its prompt and the pieces it relayed."""
    settings.GATEWAY_MAX_CALL_SECONDS = 1.0  # type: ignore[attr-defined]
    _with_quota(world.provider)
    world.faults.token_delay = 0.4  # ten pieces: four seconds
    text = "tell me a long story"
    started = time.monotonic()
    answer = post(f"{world.url}/v1/chat/completions", _body(text, 50, stream=True), world.headers())
    assert answer.status_code == 200 and time.monotonic() - started < 2.5
    assert answer.text.rstrip().splitlines()[-1].startswith("data: {") and '"upstream_timeout"' in answer.text
    (record,) = usage_records(1, provider=world.provider)
    assert (record.status, record.error_code) == ("error", "UPSTREAM_TIMEOUT")
    assert record.prompt_tokens == _prompt_estimate(text) and 1 <= record.completion_tokens <= 3
    assert _settled(world.provider, record.total_tokens) == (0, record.total_tokens)


def test_an_answer_slower_than_the_longest_call_is_a_504_and_settles(world: World, settings: object) -> None:
    """Attacker: an upstream that trickles its answer (each byte inside the read timeout) would hold
    a unary call's slot and reservation as long as it likes. The call ends at GATEWAY_MAX_CALL_SECONDS
    with the dialect's timeout (504 upstream_timeout), nothing charged, nothing held."""
    settings.GATEWAY_MAX_CALL_SECONDS = 1.0  # type: ignore[attr-defined]
    _with_quota(world.provider, max_concurrency=1)
    world.faults.first_token_delay = 3.0
    started = time.monotonic()
    answer = post(f"{world.url}/v1/chat/completions", _body("hi", 10), world.headers())
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.0
    assert _settled(world.provider, 0) == (0, 0)
    (record,) = usage_records(1, provider=world.provider)
    assert (record.status, record.error_code, record.http_status) == ("error", "UPSTREAM_TIMEOUT", 504)


# --- a web process that dies holding reservations ---------------------------------------------------------
def test_reservations_of_a_dead_process_are_released_by_the_reconcile(
    world: World, settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attacker: anything that kills a web process mid-call (OOM, SIGKILL, a crash). Its calls never
    run their close path, so their reservations would stay forever and the group be refused once they
    fill its quota. The writer journals each reservation in its batches; the reconcile that every
    writer runs from its start releases what is still held once no call could still be running. A
    settlement that arrives after the reconcile (a writer that was cut off meanwhile) does not
    release the reservation a second time."""
    settings.GATEWAY_MAX_CALL_SECONDS = 1.0  # type: ignore[attr-defined]
    monkeypatch.setattr(quota, "SETTLE_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(quota, "HOLD_WINDOW_SECONDS", 1)
    _with_quota(world.provider)
    world.faults.first_token_delay = 0
    caller = caller_for_session(user=User.objects.get(pk=world.alice.user.pk), project=world.alice.project)
    text = "one two three"
    size = _reservation(text, 10)

    async def dies_mid_call() -> int:
        # The process dies between the first piece and the end: nothing closes the call.
        stream = await gateway_call(
            caller=caller, route=Route(entry="openai", mode="chat"), body=_body(text, 10, stream=True)
        )
        assert isinstance(stream, Stream)
        window = stream._call.window
        assert window is not None
        await usage.writer().drain()  # the journal reached the database, as it does within milliseconds
        return window

    window = asyncio.run(dies_mid_call())
    counter_id = QuotaCounter.objects.get(provider=world.provider).pk
    assert _counter(world.provider) == (size, 0)
    assert list(QuotaHold.objects.values_list("window", "tokens")) == [(window, size)]

    time.sleep(2.2)  # longer than the longest call, past the end of its window

    async def a_new_process() -> None:
        writer = usage.writer()  # its reconcile runs at once
        assert writer.reconciler is not None
        deadline = time.monotonic() + 5
        while await asyncio.to_thread(_counter_closing, world.provider) != (0, 0):
            assert time.monotonic() < deadline, "the reconcile did not release the dead call's reservation"
            await asyncio.sleep(0.05)
        # The dead call's settlement turns up late: charged, but not released twice.
        writer.submit(record=None, settle=usage.Settlement(counter_id, size, 7, window))
        await writer.drain()

    asyncio.run(a_new_process())
    assert _counter(world.provider) == (0, 7)
    assert QuotaHold.objects.count() == 0


def _counter_closing(provider: Provider) -> tuple[int, int]:
    try:
        return _counter(provider)
    finally:
        connection.close()


# --- a stream that outlives its concurrency lease (scaled runtime) ----------------------------------------
def _redis_url() -> str:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=2).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {url} is unreachable (CI runs it: a lease test must not be skipped)")
        pytest.skip(f"Redis at {url} is unreachable")
    return url


def test_a_stream_longer_than_its_lease_keeps_its_slot(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacker: a user of a group with max_concurrency 1 in the scaled runtime (Redis slots are
    leases, so a process that dies frees them).
    1. Start a stream that lasts longer than a lease (a slow upstream, or a long answer).
    2. Once the lease would have ended, start a second call: before the fix the expired lease let it
       in, and every further stream the same way, past max_concurrency.
    Now the process renews the leases of its running calls: the second call is refused, and once the
    stream ends the slot is free again at once."""
    url = _redis_url()
    monkeypatch.setattr(limits, "LEASE_SECONDS", 1.0)
    prefix = f"lmc-test-{secrets.token_hex(4)}"
    limits._limiter = limits.RedisLimiter(url, prefix=prefix)
    _with_quota(world.provider, max_concurrency=1)
    world.faults.token_delay = 0.3  # ten pieces: three seconds, three leases

    with ThreadPoolExecutor(1) as pool:
        long_stream = pool.submit(
            post, f"{world.url}/v1/chat/completions", _body("hi", 20, stream=True), world.headers()
        )
        _wait_until_upstream(world, 1)
        time.sleep(2.0)  # two leases later
        second = post(f"{world.url}/v1/chat/completions", _body("hi", 20), world.headers())
        assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert long_stream.result().status_code == 200
    assert long_stream.result().text.endswith("data: [DONE]\n\n")
    import redis

    client = redis.Redis.from_url(url)
    try:
        assert client.zcard(f"{prefix}:slots:{world.provider.pk}") == 0  # released, not left to expire
    finally:
        client.delete(f"{prefix}:slots:{world.provider.pk}", f"{prefix}:rate:{world.provider.pk}")
        client.close()
    world.faults.token_delay = 0
    assert post(f"{world.url}/v1/chat/completions", _body("hi", 20), world.headers()).status_code == 200


class _CuttableProxy:
    """A TCP proxy to Redis on loopback that the test can cut, as a network failure would."""

    def __init__(self, target: str) -> None:
        parsed = urlparse(target)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_redis_lost_mid_call_still_answers_settles_and_frees_the_slot_within_a_lease(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attacker: whoever can cut the network to Redis while calls run. Before the fix the failed
    slot release escaped the close path: a call the upstream had answered got a 500. Now the answer
    goes out, the quota settles exactly, and the slot, no longer renewed, is free once its lease ends."""
    url = _redis_url()
    monkeypatch.setattr(limits, "LEASE_SECONDS", 1.0)
    prefix = f"lmc-test-{secrets.token_hex(4)}"
    proxy = _CuttableProxy(url)
    limits._limiter = limits.RedisLimiter(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix)
    _with_quota(world.provider, max_concurrency=1)
    world.faults.first_token_delay = 0.8
    try:
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(post, f"{world.url}/v1/chat/completions", _body("hi", 10), world.headers())
            _wait_until_upstream(world, 1)
            proxy.cut()
            answer = call.result()
    finally:
        proxy.cut()
    assert answer.status_code == 200 and answer.json()["usage"]["total_tokens"] == 1 + REPLY_WORDS
    assert _settled(world.provider, 1 + REPLY_WORDS) == (0, 1 + REPLY_WORDS)
    (record,) = usage_records(1, provider=world.provider)
    assert (record.status, record.total_tokens) == ("ok", 1 + REPLY_WORDS)
    import redis

    client = redis.Redis.from_url(url)
    key = f"{prefix}:slots:{world.provider.pk}"
    try:
        assert client.zcard(key) == 1  # still there: the release could not reach Redis
        time.sleep(1.2)
        assert client.zcount(key, time.time(), "+inf") == 0  # its lease has ended
        world.faults.first_token_delay = 0
        limits._limiter = limits.RedisLimiter(url, prefix=prefix)  # Redis is back
        assert post(f"{world.url}/v1/chat/completions", _body("hi", 10), world.headers()).status_code == 200
    finally:
        client.delete(key, f"{prefix}:rate:{world.provider.pk}")
        client.close()
