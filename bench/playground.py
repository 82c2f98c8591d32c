"""The playground socket under load, and its time to first token against the HTTP API's.

    .venv/bin/python bench/playground.py            # full run (about a minute on 2 cores)
    .venv/bin/python bench/playground.py --quick    # a short sanity run

One console process, as `make run` starts it (daphne, SQLite in a fresh DATA_DIR, the in-memory channel
layer), in front of two OpenAI simulators (tests/upstreams/openai.py), each in a process of its own:

- load: `--conversations` (200) websockets, one signed-in user each, all opened first (the pages loaded),
  then each starts within `--ramp` seconds and streams `--turns` answers one after another, every answer
  `--tokens` pieces written `--spacing` apart by the simulator. The simulator stamps each piece with
  the time it wrote it (CLOCK_MONOTONIC, shared by every process of the machine); the client notes when
  the piece arrives as a `delta`. Delay added per token = arrival - write, for every piece. It counts
  everything between the simulator's socket write and the client's read: the gateway's upstream read
  and parse, the consumer, daphne's websocket framing, loopback, and the client's own event loop (whose
  lag is reported beside it). The simulator's own spacing is not in it: whatever the simulator's threads
  add to the spacing under load moves the write stamp too. Goal: p99 under 20 ms, no errors.
- time to first token: the same prompt through the playground socket (a new conversation each time) and
  through `POST /v1/chat/completions` with an API key and `stream: true`, one at a time, interleaved in
  alternating order, both warm (the socket open, the HTTP connection kept alive), against a simulator
  with no spacing. Goal: medians within 10 % of each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from gateway import (
    ROOT,
    Processes,
    cpu_seconds,
    free_port,
    loadavg,
    machine,
    percentile,
    run_checked,
    terminate_cleanly,
    wait_http,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake

UPSTREAM_KEY = "upstream-key"
LOAD_MODEL = "sim-load"  # the spaced simulator, stamping its pieces
FAST_MODEL = "sim-chat"  # no spacing: time to first token
PROMPT = "Say hello in about ten words."
FAST_REPLY_WORDS = 10
STAMP = re.compile(r"(\S+)@(\d+\.\d+)")
TERMINAL = {"done", "stopped", "error"}


# --- processes -------------------------------------------------------------------------------------
def simulator_main(spacing: float, tokens: int, stamp: bool) -> None:
    """`playground.py _simulator SPACING TOKENS STAMP`: an OpenAI simulator in a process of its own."""
    sys.path.insert(0, str(ROOT))
    from tests.upstreams import openai

    server = openai.serve(api_key=UPSTREAM_KEY, port=0)
    server.state.faults.token_delay = spacing
    server.state.reply = " ".join(f"w{i}" for i in range(tokens))
    server.state.stamp_pieces = stamp
    server.state.record = lambda item: None  # type: ignore[method-assign]  # a benchmark needs no log
    print(server.url, flush=True)
    threading.Event().wait()  # until SIGTERM


def console_setup_main(load_url: str, fast_url: str, users: int) -> None:
    """`playground.py _setup-console LOAD FAST USERS` (DATA_DIR set): a provider and model per simulator,
    USERS members of the default project each with a session, an API key; prints them as JSON."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from console import services as console_services
    from console.models import Membership, Project, Role
    from models_registry import services

    project = Project.objects.get(name="default")
    for slug, url, model in (("sim-load", load_url, LOAD_MODEL), ("sim", fast_url, FAST_MODEL)):
        provider = services.provider_create(
            project=project,
            by=None,
            fields={"slug": slug, "name": slug, "kind": "openai_compatible", "base_url": url + "/v1"},
            secrets={"api_key": UPSTREAM_KEY},
        )
        services.model_create(provider=provider, by=None, fields={"name": model, "context_length": 8192})
    user_model = get_user_model()
    cookies = []
    for i in range(users):
        user = user_model.objects.create_user(username=f"bench{i}", password=None)  # no hashing: fast setup
        Membership.objects.create(project=project, user=user, role=Role.MEMBER)
        client = Client()
        client.force_login(user)
        cookies.append(client.cookies[settings.SESSION_COOKIE_NAME].value)
    admin = user_model.objects.get(username="admin")
    key = console_services.api_key_create(user=admin, project=project, name="bench")[1]
    made = {"cookies": cookies, "cookie_name": settings.SESSION_COOKIE_NAME, "key": key, "project": project.pk}
    print(json.dumps(made))


@dataclass
class Stack:
    hosts: list[str]  # 127.0.0.1:PORT of each console web process
    pids: list[int]
    cookies: list[str]
    cookie_name: str
    key: str
    project: str  # sent with each new conversation, as the page does


def start_stack(procs: Processes, work: Path, args: argparse.Namespace) -> Stack:
    python = sys.executable
    script = str(Path(__file__).resolve())
    sims = {}
    for name, spacing, tokens, stamp in (
        ("simulator-load", args.spacing, args.tokens, "1"),
        ("simulator-fast", 0.0, FAST_REPLY_WORDS, "0"),
    ):
        argv = [python, script, "_simulator", str(spacing), str(tokens), stamp]
        proc = procs.start(name, argv, dict(os.environ), capture=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"{name} did not start:\n{procs.log_tail(name)}")
        sims[name] = line
    data_dir = work / "console-data"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    # The embedded runtime (SQLite, in-memory channel layer, in-process limiter), what `make run` starts.
    env.update(DATA_DIR=str(data_dir), DEBUG="false", CONSOLE_ADMIN_PASSWORD="bench-" + os.urandom(8).hex())
    run_checked([python, "manage.py", "migrate", "--noinput", "-v0"], env, "migrate")
    run_checked([python, "manage.py", "bootstrap"], env, "bootstrap")
    setup = [python, script, "_setup-console", sims["simulator-load"], sims["simulator-fast"], str(args.conversations)]
    made = json.loads(run_checked(setup, env, "console setup").strip().splitlines()[-1])
    hosts, pids = [], []
    for n in range(args.web):
        port = free_port()
        daphne = [str(Path(python).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"]
        if args.profile and n == 0:
            # pyinstrument (not a requirement: `pip install pyinstrument`) samples the console's threads; the
            # report is written when daphne stops.
            renderer = ["-r", "pyisession"] if args.profile.suffix == ".pyisession" else []  # pyinstrument --load
            daphne = [python, "-m", "pyinstrument", *renderer, "-o", str(args.profile), "-m", "daphne", *daphne[1:]]
        name = "console" if n == 0 else f"console-{n + 1}"
        console = procs.start(name, daphne, env)
        wait_http(f"http://127.0.0.1:{port}/healthz", console, 90, name, procs)
        hosts.append(f"127.0.0.1:{port}")
        pids.append(console.pid)
    return Stack(hosts, pids, made["cookies"], made["cookie_name"], made["key"], made["project"])


def open_socket(stack: Stack, cookie: str, index: int = 0) -> connect:
    """Socket `index` goes to web process index mod N, as a proxy balancing connections would."""
    host = stack.hosts[index % len(stack.hosts)]
    return connect(
        f"ws://{host}/ws/playground/",
        origin=f"http://{host}",  # type: ignore[arg-type]
        additional_headers={"Cookie": f"{stack.cookie_name}={cookie}"},
        proxy=None,
        compression=None,  # the payloads are tiny; deflate would only add CPU on both sides
        open_timeout=60,
        ping_interval=None,
        max_queue=None,
    )


# --- load ------------------------------------------------------------------------------------------
@dataclass
class Load:
    added: list[float] = field(default_factory=list)  # seconds, arrival - write, every piece
    gap_added: list[float] = field(default_factory=list)  # arrival gap - write gap, every piece after the first
    write_gaps: list[float] = field(default_factory=list)  # the simulator's real spacing
    ttfts: list[float] = field(default_factory=list)  # start sent -> first delta, under load
    lag: list[float] = field(default_factory=list)  # the client's event-loop lag, seconds
    answers: int = 0
    errors: int = 0
    first_error: str = ""
    wall: float = 0.0
    cpu: float = 0.0  # console CPU seconds during the load

    def error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what[:300]


async def conversation(ws: ClientConnection, index: int, args: argparse.Namespace, load: Load, project: str) -> None:
    expected = [f"w{i}" for i in range(args.tokens)]
    await asyncio.sleep(random.uniform(0, args.ramp))  # people do not press Enter in the same millisecond
    try:
        conversation_id = None
        for turn in range(args.turns):
            request = f"c{index}t{turn}"
            start: dict[str, Any] = {"type": "start", "request": request, "model": LOAD_MODEL, "content": PROMPT}
            if conversation_id is not None:
                start["conversation"] = conversation_id
            else:
                start["project"] = project  # as the page sends it for a new conversation
            sent = time.monotonic()
            await ws.send(json.dumps(start))
            words, stamps, arrivals, conversation_id = await receive_answer(ws, request, load)
            if words is None:
                return
            if words != expected:
                load.error(f"{request}: got {len(words)} pieces, not the {args.tokens} expected in order")
                return
            load.answers += 1
            load.ttfts.append(arrivals[0] - sent)
            for i, (stamp, arrival) in enumerate(zip(stamps, arrivals, strict=True)):
                load.added.append(arrival - stamp)
                if i:
                    load.write_gaps.append(stamp - stamps[i - 1])
                    load.gap_added.append((arrival - arrivals[i - 1]) - (stamp - stamps[i - 1]))
    except (OSError, TimeoutError, ValueError) as exc:
        load.error(f"conversation {index}: {type(exc).__name__}: {exc}")


async def receive_answer(
    ws: ClientConnection, request: str, load: Load
) -> tuple[list[str] | None, list[float], list[float], str | None]:
    """The answer's pieces (word, write stamp, arrival), and its conversation; no words if it failed."""
    words: list[str] = []
    stamps: list[float] = []
    arrivals: list[float] = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), 60)
        arrival = time.monotonic()
        event = json.loads(raw)
        kind = event.get("type")
        if kind == "delta" and event.get("request") == request:
            for word, stamp in STAMP.findall(event["text"]):
                words.append(word)
                stamps.append(float(stamp))
                arrivals.append(arrival)
        elif kind in TERMINAL and event.get("request") == request:
            if kind != "done":
                load.error(f"{request}: {kind} {event.get('code', '')} {event.get('message', '')}")
                return None, stamps, arrivals, None
            return words, stamps, arrivals, event["conversation"]
        elif kind == "error":
            load.error(f"{request}: error {event.get('code')} {event.get('message')}")
            return None, stamps, arrivals, None


async def loop_lag(stop: asyncio.Event, lag: list[float], every: float = 0.005) -> None:
    """How late this client's event loop wakes: a late wake-up also delays every arrival it notes."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(every)
        lag.append(time.monotonic() - before - every)


async def run_load(stack: Stack, args: argparse.Namespace, cookies: Sequence[str]) -> Load:
    """Every socket opened first (a page loaded), then the conversations, measured."""
    load = Load()
    limit = asyncio.Semaphore(16)

    async def opened(exits: contextlib.AsyncExitStack, cookie: str, index: int) -> ClientConnection | None:
        async with limit:
            try:
                return await exits.enter_async_context(open_socket(stack, cookie, index))
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                load.error(f"connect: {type(exc).__name__}: {exc}")
                return None

    async with contextlib.AsyncExitStack() as exits:
        sockets = await asyncio.gather(*(opened(exits, cookie, i) for i, cookie in enumerate(cookies)))
        stop = asyncio.Event()
        lagger = asyncio.create_task(loop_lag(stop, load.lag))
        cpu_before, started = sum(map(cpu_seconds, stack.pids)), time.monotonic()
        await asyncio.gather(
            *(conversation(ws, i, args, load, stack.project) for i, ws in enumerate(sockets) if ws is not None)
        )
        load.wall, load.cpu = time.monotonic() - started, sum(map(cpu_seconds, stack.pids)) - cpu_before
        stop.set()
        await lagger
    return load


# --- time to first token: playground against the HTTP API -----------------------------------------
@dataclass
class Ttft:
    playground: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


async def playground_ttft(ws: ClientConnection, request: str, project: str) -> float:
    start = {"type": "start", "request": request, "model": FAST_MODEL, "content": PROMPT, "project": project}
    sent = time.monotonic()
    await ws.send(json.dumps(start))
    first = None
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if event.get("request") != request:
            continue
        if event["type"] == "delta" and first is None:
            first = time.monotonic() - sent
        elif event["type"] in TERMINAL:
            if event["type"] != "done" or first is None:
                raise ValueError(f"playground answer ended with {event}")
            return first


async def api_ttft(client: httpx.AsyncClient, url: str, key: str) -> float:
    body = {"model": FAST_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    sent = time.monotonic()
    first = None
    done = False
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if line.startswith("data: {") and first is None and '"content"' in line:
                first = time.monotonic() - sent
            elif line.strip() == "data: [DONE]":
                done = True
    if first is None or not done:
        raise ValueError("API stream ended without a piece or [DONE]")
    return first


async def run_ttft(stack: Stack, pairs: int, warm: int) -> Ttft:
    result = Ttft()
    url = f"http://{stack.hosts[0]}/v1/chat/completions"
    async with (
        open_socket(stack, stack.cookies[0]) as ws,
        httpx.AsyncClient(timeout=30, trust_env=False) as client,
    ):
        for i in range(warm + pairs):
            # Alternate which goes first, so neither always follows the other's warm caches.
            order = ("playground", "api") if i % 2 == 0 else ("api", "playground")
            for which in order:
                try:
                    value = (
                        await playground_ttft(ws, f"ttft{i}", stack.project)
                        if which == "playground"
                        else await api_ttft(client, url, stack.key)
                    )
                except (OSError, TimeoutError, ValueError, httpx.HTTPError) as exc:
                    result.errors += 1
                    result.first_error = result.first_error or f"{which}: {type(exc).__name__}: {exc}"[:300]
                    continue
                if i >= warm:
                    (result.playground if which == "playground" else result.api).append(value)
    return result


# --- report ----------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def render(load: Load, ttft: Ttft, args: argparse.Namespace, meta: dict[str, str]) -> str:
    out: list[str] = []
    add = out.append
    add(f"Command: `{meta['command']}`  ")
    add(f"Date: {meta['date']}  ")
    add(f"Machine: {meta['machine']}  ")
    add(f"Load average before / after: {meta['load_before']} / {meta['load_after']}")
    add("")
    add(
        f"Load: {args.conversations} websockets at once, {args.turns} answers each of {args.tokens} pieces, "
        f"{args.spacing * 1000:g} ms apart at the simulator (starts spread over {args.ramp:g} s)."
    )
    add("")
    p = percentile
    add("| measure | p50 | p90 | p99 | max |")
    add("|---|--:|--:|--:|--:|")
    for label, values in (
        ("**delay added per token** (arrival - write), ms", load.added),
        ("gap between arrivals - gap between writes, ms", load.gap_added),
        ("the simulator's real spacing, ms", load.write_gaps),
        ("time to first token under load, ms", load.ttfts),
        ("the client's event-loop lag, ms", load.lag),
    ):
        top = max(values, default=math.nan)
        add(f"| {label} | {ms(p(values, 0.5))} | {ms(p(values, 0.9))} | {ms(p(values, 0.99))} | {ms(top)} |")
    add("")
    tokens = len(load.added)
    add(
        f"Answers completed: {load.answers} of {args.conversations * args.turns}; pieces measured: {tokens}; "
        f"errors: **{load.errors}**{' (' + load.first_error + ')' if load.first_error else ''}.  "
    )
    add(
        f"Console CPU during the load: {load.cpu:.1f} s over {load.wall:.1f} s "
        f"({load.cpu / load.wall * 100 if load.wall else math.nan:.0f} % of one core; "
        f"{load.cpu / tokens * 1e6 if tokens else math.nan:.0f} µs per piece relayed)."
    )
    goal_load = load.errors == 0 and p(load.added, 0.99) < 0.020
    add("")
    add(f"Goal, no errors and p99 added delay under 20 ms: **{'met' if goal_load else 'not met'}**.")
    add("")
    pg, api = p(ttft.playground, 0.5), p(ttft.api, 0.5)
    ratio = pg / api if api else math.nan
    add(
        f"Time to first token, the same prompt, {len(ttft.playground)} interleaved pairs "
        f"(errors: {ttft.errors}{' (' + ttft.first_error + ')' if ttft.first_error else ''}):"
    )
    add("")
    add("| path | p50 | p90 | p99 |")
    add("|---|--:|--:|--:|")
    add(f"| playground socket | {ms(pg)} | {ms(p(ttft.playground, 0.9))} | {ms(p(ttft.playground, 0.99))} |")
    add(f"| HTTP API, stream | {ms(api)} | {ms(p(ttft.api, 0.9))} | {ms(p(ttft.api, 0.99))} |")
    add("")
    goal_ttft = ttft.errors == 0 and abs(ratio - 1) <= 0.10
    add(
        f"Playground / API median: **{ratio:.2f}** ({(pg - api) * 1000:+.2f} ms); goal within 10 %: "
        f"**{'met' if goal_ttft else 'not met'}**."
    )
    return "\n".join(out) + "\n"


async def measure(stack: Stack, args: argparse.Namespace) -> tuple[Load, Ttft]:
    # Warm-up: imports, the database connections, the gateway's caches; not counted.
    warm = argparse.Namespace(**{**vars(args), "turns": 1, "ramp": 0.5})
    warm_load = await run_load(stack, warm, stack.cookies[:20])
    if warm_load.errors:
        raise RuntimeError(f"warm-up failed: {warm_load.first_error}")
    print(f"warm-up: {warm_load.answers} answers", flush=True)
    ttft = await run_ttft(stack, args.pairs, warm=5)
    print(f"time to first token: {len(ttft.playground)} pairs, {ttft.errors} errors", flush=True)
    load = await run_load(stack, args, stack.cookies[: args.conversations])
    print(f"load: {load.answers} answers, {len(load.added)} pieces, {load.errors} errors", flush=True)
    return load, ttft


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 conversations, 1 turn, 20 pairs")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=2, help="answers per conversation, one after another")
    parser.add_argument("--tokens", type=int, default=200, help="pieces per answer")
    parser.add_argument("--spacing", type=float, default=0.05, help="seconds between pieces at the simulator")
    parser.add_argument("--ramp", type=float, default=2.0, help="conversations start over this many seconds")
    parser.add_argument("--pairs", type=int, default=60, help="interleaved time-to-first-token pairs")
    parser.add_argument("--markdown", type=Path, default=ROOT / "var" / "bench-playground.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, DATA_DIR)")
    parser.add_argument("--serve", action="store_true", help="start the stack, print it, wait for Ctrl-C")
    parser.add_argument("--web", type=int, default=1, help="console web (daphne) processes; sockets alternate")
    parser.add_argument("--profile", type=Path, help="run the console under pyinstrument, its report to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.conversations, args.turns, args.tokens, args.pairs = min(args.conversations, 50), 1, 40, 20
    work = Path(tempfile.mkdtemp(prefix="bench-playground-"))
    (work / "logs").mkdir()
    procs = Processes(work / "logs")
    load_before = loadavg()
    try:
        with terminate_cleanly():
            print(f"work folder: {work}", flush=True)
            stack = start_stack(procs, work, args)
            for host, pid in zip(stack.hosts, stack.pids, strict=True):
                print(f"console: {host} (pid {pid})", flush=True)
            if args.serve:
                print(f"cookie {stack.cookie_name}={stack.cookies[0]}  key {stack.key}\nserving until Ctrl-C")
                threading.Event().wait()
            load, ttft = asyncio.run(measure(stack, args))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this run started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "command": " ".join([".venv/bin/python bench/playground.py", *argv]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": load_before,
        "load_after": loadavg(),
    }
    report = render(load, ttft, args, meta)
    print("\n" + report)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(report)
    print(f"markdown written to {args.markdown}")
    return 0 if load.errors == 0 and ttft.errors == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_simulator":
        simulator_main(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
    elif len(sys.argv) > 1 and sys.argv[1] == "_setup-console":
        console_setup_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main(sys.argv[1:]))
