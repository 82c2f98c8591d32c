"""Gateway overhead: the console's inference gateway against LiteLLM's proxy, on one upstream, in one run.

    .venv/bin/python bench/gateway.py            # full run (a few minutes on 2 cores)
    .venv/bin/python bench/gateway.py --quick    # a short sanity run

Three targets answer the same OpenAI-style calls from the same upstream simulator:

- direct:  the simulator itself (the baseline every "added" number is measured from),
- console: the console's gateway (daphne, SQLite in a fresh DATA_DIR), with an API key,
- litellm: LiteLLM's proxy (its own venv, bench/.venv-litellm), with a master key.

Each target runs in its own process, so none shares a GIL with the load generator. The machine is
shared and noisy, so every configuration is split into rounds that interleave the targets (in a
rotating order), and the report leads with ratios, console against LiteLLM, rather than absolute times.
The goal checked: the console adds at most half of LiteLLM's p50 latency and serves at least twice
its requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
# Pinned: reproducible numbers, and never a release pulled from PyPI after a compromise (1.82.7/8, 1.107.0).
# 1.106.2 is the newest release whose dependencies resolve from the registry this machine reaches.
LITELLM_SPEC = "litellm[proxy]==1.106.2"
UPSTREAM_KEY = "upstream-key"
LITELLM_MASTER_KEY = "sk-bench-master-key"
FAST_MODEL = "sim-chat"  # simulator without token delay: throughput and latency
SLOW_MODEL = "sim-chat-slow"  # simulator with a per-token delay: does the proxy relay the first token at once?
SLOW_TOKEN_DELAY = 0.005
TARGETS = ("direct", "console", "litellm")
PROMPT = [{"role": "user", "content": "Say hello in about ten words."}]


# --- child processes -------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Runs in the child before exec: if this benchmark is killed outright (SIGKILL), the kernel
    sends the child SIGTERM, so no server outlives the run even when `finally` cannot run."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Every process this run started, each in its own session (so a terminal's Ctrl-C reaches
    only the benchmark, which then stops them in order) and each stopped by its process group."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str], *, capture: bool = False
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # closed in stop_all
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else log,
            stderr=log,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.started.append((name, proc, log))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        for _name, proc, _log in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc, log in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            # The group may hold children that outlived their leader (a server's workers).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        self.started.clear()


def free_port() -> int:
    # Small race between closing and the server binding; acceptable on a loopback-only benchmark.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n{procs.log_tail(what)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s:\n{procs.log_tail(what)}")


def run_checked(argv: Sequence[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(list(argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


# --- the three servers -----------------------------------------------------------------------------
def simulator_main(token_delay: float) -> None:
    """`gateway.py _simulator DELAY`: one upstream simulator in a process of its own; prints its URL."""
    sys.path.insert(0, str(ROOT))
    from tests.upstreams import base, openai

    # socketserver listens with a backlog of 5: at 64 concurrent streams (one new connection each,
    # the simulator closes streams) SYNs would be dropped and retried after 1 s, which measures the
    # kernel, not the gateways. A deep backlog keeps the simulator out of the way of all three targets.
    base.SimulatorServer.request_queue_size = 1024
    # The handler writes a unary answer's headers and body in two sends; on a kept-alive connection
    # Nagle's algorithm holds the body until the client's delayed ACK, about 40 ms, on every call.
    # Production servers (uvicorn, vLLM, nginx) set TCP_NODELAY, and so does the simulator here.
    openai.OpenAIHandler.disable_nagle_algorithm = True
    server = openai.serve(api_key=UPSTREAM_KEY, port=0)
    server.state.faults.token_delay = token_delay
    # Tests read the recorded requests; a benchmark would only grow that list by every call it makes.
    server.state.record = lambda item: None  # type: ignore[method-assign]
    print(server.url, flush=True)
    threading.Event().wait()  # until SIGTERM


def console_setup_main(fast_url: str, slow_url: str) -> None:
    """`gateway.py _setup-console FAST SLOW` (DATA_DIR set): one provider and model per simulator."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from console.models import Project
    from models_registry import services

    project = Project.objects.get(name="default")
    for slug, url, model in (("sim", fast_url, FAST_MODEL), ("sim-slow", slow_url, SLOW_MODEL)):
        provider = services.provider_create(
            project=project,
            by=None,
            fields={"slug": slug, "name": slug, "kind": "openai_compatible", "base_url": url + "/v1"},
            secrets={"api_key": UPSTREAM_KEY},
        )
        services.model_create(provider=provider, by=None, fields={"name": model, "context_length": 8192})


@dataclass
class Stack:
    urls: dict[str, str]  # target -> chat completions URL
    keys: dict[str, str]  # target -> bearer token
    pids: dict[str, int]
    versions: dict[str, str]


def ensure_litellm() -> None:
    litellm = LITELLM_VENV / "bin" / "litellm"
    if litellm.exists():
        return
    python = shutil.which("python3") or sys.executable
    print(f"LiteLLM is missing: creating {LITELLM_VENV.relative_to(ROOT)} and installing {LITELLM_SPEC}", flush=True)
    subprocess.run([python, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", LITELLM_SPEC], check=True)


def litellm_env(home: Path) -> dict[str, str]:
    """A clean environment: LiteLLM sees no variable of this session (no keys, no database URL),
    only what keeps it offline and quiet."""
    return {
        "PATH": f"{LITELLM_VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it fetches the model price list at import
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",  # do not read a .env file
        "DISABLE_ADMIN_UI": "True",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def console_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    # The embedded runtime (SQLite, in-process limiter), what `make run` starts on one machine.
    env.update(DATA_DIR=str(data_dir), DEBUG="false", CONSOLE_ADMIN_PASSWORD="bench-" + os.urandom(8).hex())
    return env


def start_stack(procs: Processes, work: Path) -> Stack:
    python = sys.executable
    script = str(Path(__file__).resolve())
    sims: dict[str, str] = {}
    sim_pids: dict[str, int] = {}
    for name, delay in (("simulator-fast", 0.0), ("simulator-slow", SLOW_TOKEN_DELAY)):
        proc = procs.start(name, [python, script, "_simulator", str(delay)], dict(os.environ), capture=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"{name} did not start:\n{procs.log_tail(name)}")
        sims[name] = line
        sim_pids[name] = proc.pid
    fast, slow = sims["simulator-fast"], sims["simulator-slow"]
    print(f"simulators: {fast} (no delay), {slow} ({SLOW_TOKEN_DELAY * 1000:g} ms per token)", flush=True)

    # The console: fresh DATA_DIR, the documented setup commands, then daphne as in the Procfile.
    data_dir = work / "console-data"
    env = console_env(data_dir)
    manage = [python, "manage.py"]
    run_checked([*manage, "migrate", "--noinput", "-v0"], env, "migrate")
    run_checked([*manage, "bootstrap"], env, "bootstrap")
    run_checked([*manage, "collectstatic", "--noinput", "-v0"], env, "collectstatic")
    run_checked([python, script, "_setup-console", fast, slow], env, "provider setup")
    api_key = run_checked([*manage, "create_api_key", "admin"], env, "create_api_key").strip().splitlines()[-1]
    console_port = free_port()
    daphne = str(Path(python).parent / "daphne")
    console = procs.start(
        "console", [daphne, "-b", "127.0.0.1", "-p", str(console_port), "console.asgi:application"], env
    )

    # LiteLLM: the same upstreams, one worker (like the one daphne process), a master key (like the
    # console's API key), no database. JSON is YAML, so the project venv needs no YAML library.
    ensure_litellm()
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {"model": "openai/sim-chat", "api_base": url + "/v1", "api_key": UPSTREAM_KEY},
            }
            for name, url in ((FAST_MODEL, fast), (SLOW_MODEL, slow))
        ],
        "litellm_settings": {"telemetry": False, "set_verbose": False},
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    config_path = work / "litellm-config.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    litellm_home = work / "litellm-home"
    litellm_home.mkdir()
    litellm_port = free_port()
    litellm = procs.start(
        "litellm",
        [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(litellm_port),
            "--num_workers",
            "1",
        ],
        litellm_env(litellm_home),
    )
    wait_http(f"http://127.0.0.1:{console_port}/healthz", console, 90, "console", procs)
    wait_http(f"http://127.0.0.1:{litellm_port}/health/liveliness", litellm, 180, "litellm", procs)
    litellm_version = run_checked(
        [str(LITELLM_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        litellm_env(litellm_home),
        "litellm version",
    ).strip()
    return Stack(
        urls={
            "direct": f"{fast}/v1/chat/completions",
            "direct-slow": f"{slow}/v1/chat/completions",  # the direct target of the slow model
            "console": f"http://127.0.0.1:{console_port}/v1/chat/completions",
            "litellm": f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
        },
        keys={"direct": UPSTREAM_KEY, "console": api_key, "litellm": LITELLM_MASTER_KEY},
        pids={
            "direct": sim_pids["simulator-fast"],
            "direct-slow": sim_pids["simulator-slow"],
            "console": console.pid,
            "litellm": litellm.pid,
        },
        versions={"litellm": litellm_version},
    )


# --- load generation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    label: str
    stream: bool
    concurrency: int
    total: int  # requests per target, over all rounds
    model: str = FAST_MODEL


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, send -> last byte
    ttfts: list[float] = field(default_factory=list)  # seconds, send -> first SSE data line
    errors: int = 0
    first_error: str = ""
    wall: float = 0.0  # seconds spent in this target's batches
    cpu: float = 0.0  # CPU seconds the target's server process used during its batches
    ok: int = 0
    round_rps: list[float] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)


class BadAnswer(Exception):
    pass


def _url_for(stack: Stack, target: str, model: str) -> str:
    # The direct target is the simulator that backs the model: the slow model has its own.
    if target == "direct" and model == SLOW_MODEL:
        return stack.urls["direct-slow"]
    return stack.urls[target]


def _pid_for(stack: Stack, target: str, model: str) -> int:
    return stack.pids["direct-slow" if target == "direct" and model == SLOW_MODEL else target]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process. Unlike wall time, it barely moves when other work shares
    the machine, so CPU per call is the steadiest measure of what a server costs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)


async def one_call(
    client: httpx.AsyncClient, url: str, key: str, model: str, stream: bool
) -> tuple[float, float | None]:
    body = json.dumps({"model": model, "messages": PROMPT, "stream": stream}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    if not stream:
        response = await client.post(url, content=body, headers=headers)
        if response.status_code != 200:
            raise BadAnswer(f"HTTP {response.status_code}: {response.text[:200]}")
        content = response.json()["choices"][0]["message"]["content"]
        if not content:
            raise BadAnswer("empty answer")
        return time.perf_counter() - started, None
    first: float | None = None
    done = False
    async with client.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            raise BadAnswer(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                if first is None:
                    first = time.perf_counter() - started
                if line[5:].strip() == "[DONE]":
                    done = True
    if not done or first is None:
        raise BadAnswer("stream ended without [DONE]")
    return time.perf_counter() - started, first


async def batch(
    clients: Sequence[httpx.AsyncClient], url: str, key: str, config: Config, count: int, result: Result, pid: int
) -> None:
    """`count` calls by `config.concurrency` workers that each start the next call as theirs ends."""
    remaining = count
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                latency, ttft = await one_call(client, url, key, config.model, config.stream)
            except (httpx.HTTPError, BadAnswer, KeyError, IndexError, ValueError) as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            latencies.append(latency)
            if ttft is not None:
                result.ttfts.append(ttft)

    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(config.concurrency)))
    wall = time.perf_counter() - started
    result.cpu += cpu_seconds(pid) - cpu_before
    result.latencies.extend(latencies)
    result.ok += len(latencies)
    result.wall += wall
    result.round_rps.append(len(latencies) / wall if wall else 0.0)
    if latencies:
        result.round_p50.append(percentile(latencies, 0.5))


CLIENT_SHARDS = 8


def make_clients() -> dict[str, list[httpx.AsyncClient]]:
    """Pooled clients that live for the whole run, so connections stay open between rounds as a real
    client's would. Eight per target with eight connections each: httpcore scans its whole pool on
    every request, and one pool of 64 would make the load generator, not the targets, the bottleneck."""
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    return {
        t: [
            httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0), trust_env=False)  # loopback only
            for _ in range(CLIENT_SHARDS)
        ]
        for t in TARGETS
    }


async def warm_up(stack: Stack, clients: dict[str, list[httpx.AsyncClient]], quick: bool) -> None:
    """Open the pools, fill the caches (the console's imports and DB connections, LiteLLM's router),
    and fail early, with the reason, if a target does not answer correctly."""
    for target in TARGETS:
        for model in (FAST_MODEL, SLOW_MODEL):
            for stream in (False, True):
                config = Config("warm-up", stream, 16 if not quick else 4, 0, model)
                result = Result()
                url, pid = _url_for(stack, target, model), _pid_for(stack, target, model)
                await batch(clients[target], url, stack.keys[target], config, 64, result, pid)
                if result.errors:
                    raise RuntimeError(f"warm-up of {target} ({model}, stream={stream}) failed: {result.first_error}")


async def measure(
    stack: Stack, configs: Sequence[Config], rounds: int, quick: bool, progress: Callable[[str], None]
) -> dict[Config, dict[str, Result]]:
    clients = make_clients()
    try:
        await warm_up(stack, clients, quick)
        results: dict[Config, dict[str, Result]] = {}
        for config in configs:
            per_target = {t: Result() for t in TARGETS}
            per_round = config.total // rounds
            for r in range(rounds):
                # Rotate the order each round so no target always runs first (or last) after a pause.
                order = TARGETS[r % len(TARGETS) :] + TARGETS[: r % len(TARGETS)]
                for target in order:
                    url = _url_for(stack, target, config.model)
                    pid = _pid_for(stack, target, config.model)
                    await batch(clients[target], url, stack.keys[target], config, per_round, per_target[target], pid)
            results[config] = per_target
            progress(summary_line(config, per_target))
        return results
    finally:
        for shards in clients.values():
            for client in shards:
                await client.aclose()


# --- statistics and report -------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def rps(result: Result) -> float:
    return result.ok / result.wall if result.wall else math.nan


def summary_line(config: Config, r: dict[str, Result]) -> str:
    parts = [f"{config.label:<20} c={config.concurrency:<3}"]
    for t in TARGETS:
        parts.append(f"{t} p50 {ms(percentile(r[t].latencies, 0.5))} ms {rps(r[t]):.0f} rps")
    errors = sum(r[t].errors for t in TARGETS)
    return "  ".join(parts) + (f"  ERRORS {errors}" if errors else "")


@dataclass
class Row:
    config: Config
    direct_p50: float
    direct_p99: float
    added: dict[str, tuple[float, float]]  # target -> (p50 added, p99 added)
    rps: dict[str, float]
    ttft_direct: float
    ttft_added: dict[str, tuple[float, float]]
    latency_ratio: float  # console added p50 / LiteLLM added p50 (goal: <= 0.5)
    rps_ratio: float  # console rps / LiteLLM rps (goal: >= 2)
    rps_ratio_rounds: tuple[float, float]  # min, max over rounds
    latency_ratio_rounds: tuple[float, float]
    errors: dict[str, int]
    cpu_ms: dict[str, float]  # server CPU per completed call, ms
    cpu_ratio: float  # console / LiteLLM


def rows_from(results: dict[Config, dict[str, Result]]) -> list[Row]:
    rows = []
    for config, r in results.items():
        d50, d99 = percentile(r["direct"].latencies, 0.5), percentile(r["direct"].latencies, 0.99)
        added = {
            t: (percentile(r[t].latencies, 0.5) - d50, percentile(r[t].latencies, 0.99) - d99)
            for t in ("console", "litellm")
        }
        ttft_d50, ttft_d99 = percentile(r["direct"].ttfts, 0.5), percentile(r["direct"].ttfts, 0.99)
        ttft_added = {
            t: (percentile(r[t].ttfts, 0.5) - ttft_d50, percentile(r[t].ttfts, 0.99) - ttft_d99)
            for t in ("console", "litellm")
        }
        round_rps = [ratio(c, lt) for c, lt in zip(r["console"].round_rps, r["litellm"].round_rps, strict=False)]
        round_lat = [
            ratio(c - d, lt - d)
            for c, lt, d in zip(r["console"].round_p50, r["litellm"].round_p50, r["direct"].round_p50, strict=False)
        ]
        rows.append(
            Row(
                config=config,
                direct_p50=d50,
                direct_p99=d99,
                added=added,
                rps={t: rps(r[t]) for t in TARGETS},
                ttft_direct=ttft_d50,
                ttft_added=ttft_added,
                latency_ratio=ratio(added["console"][0], added["litellm"][0]),
                rps_ratio=ratio(rps(r["console"]), rps(r["litellm"])),
                rps_ratio_rounds=(min(round_rps, default=math.nan), max(round_rps, default=math.nan)),
                latency_ratio_rounds=(min(round_lat, default=math.nan), max(round_lat, default=math.nan)),
                errors={t: r[t].errors for t in TARGETS},
                cpu_ms={t: ratio(r[t].cpu * 1000, r[t].ok) for t in TARGETS},
                cpu_ratio=ratio(ratio(r["console"].cpu, r["console"].ok), ratio(r["litellm"].cpu, r["litellm"].ok)),
            )
        )
    return rows


def goal_marks(row: Row) -> tuple[bool, bool]:
    return row.latency_ratio <= 0.5, row.rps_ratio >= 2.0


def render(rows: list[Row], meta: dict[str, str], command: str) -> str:
    out: list[str] = []
    add = out.append
    add(f"Command: `{command}`  ")
    add(f"Date: {meta['date']}  ")
    add(f"Machine: {meta['machine']}  ")
    add(f"Software: {meta['software']}  ")
    add(f"Load average before / after: {meta['load_before']} / {meta['load_after']}  ")
    add(f"Rounds per configuration: {meta['rounds']} (targets interleaved, order rotated each round)")
    add("")
    add("Latency, ms (send to last byte). *Added* = the target's percentile minus the direct one.")
    add("")
    add(
        "| calls | c | requests/target | direct p50 | direct p99 | console +p50 | console +p99 "
        "| LiteLLM +p50 | LiteLLM +p99 | console/LiteLLM +p50 (goal ≤ 0.5) | per-round range |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        c, lt = row.added["console"], row.added["litellm"]
        lo, hi = row.latency_ratio_rounds
        add(
            f"| {row.config.label} | {row.config.concurrency} | {row.config.total} | {ms(row.direct_p50)} "
            f"| {ms(row.direct_p99)} | {ms(c[0])} | {ms(c[1])} | {ms(lt[0])} | {ms(lt[1])} "
            f"| **{fmt_ratio(row.latency_ratio)}** {'✓' if goal_marks(row)[0] else '✗'} "
            f"| {fmt_ratio(lo)}–{fmt_ratio(hi)} |"
        )
    add("")
    add("Throughput, requests per second (completed calls / time spent in that target's batches).")
    add("")
    add("| calls | c | direct | console | LiteLLM | console/LiteLLM (goal ≥ 2) | per-round range |")
    add("|---|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        lo, hi = row.rps_ratio_rounds
        add(
            f"| {row.config.label} | {row.config.concurrency} | {row.rps['direct']:.0f} | {row.rps['console']:.0f} "
            f"| {row.rps['litellm']:.0f} | **{fmt_ratio(row.rps_ratio)}** {'✓' if goal_marks(row)[1] else '✗'} "
            f"| {fmt_ratio(lo)}–{fmt_ratio(hi)} |"
        )
    add("")
    add(
        "Server CPU per call, ms (user + system time of the server process during its batches, divided by "
        "its calls; direct = the simulator). Steadier than wall time on a shared machine; a server bound by "
        "one core serves at most 1000/CPU-ms calls per second."
    )
    add("")
    add("| calls | c | direct (simulator) | console | LiteLLM | console/LiteLLM (≤ 0.5 for 2× capacity) |")
    add("|---|--:|--:|--:|--:|--:|")
    for row in rows:
        add(
            f"| {row.config.label} | {row.config.concurrency} | {row.cpu_ms['direct']:.2f} "
            f"| {row.cpu_ms['console']:.2f} | {row.cpu_ms['litellm']:.2f} | **{fmt_ratio(row.cpu_ratio)}** |"
        )
    add("")
    add("Streams: time to first token (first SSE `data:` line), ms.")
    add("")
    add(
        "| calls | c | direct TTFT p50 | console +p50 | console +p99 "
        "| LiteLLM +p50 | LiteLLM +p99 | console/LiteLLM +p50 |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        if not row.config.stream:
            continue
        c, lt = row.ttft_added["console"], row.ttft_added["litellm"]
        add(
            f"| {row.config.label} | {row.config.concurrency} | {ms(row.ttft_direct)} | {ms(c[0])} | {ms(c[1])} "
            f"| {ms(lt[0])} | {ms(lt[1])} | {fmt_ratio(ratio(c[0], lt[0]))} |"
        )
    errors = {t: sum(row.errors[t] for row in rows) for t in TARGETS}
    add("")
    add(f"Failed calls: {', '.join(f'{t} {n}' for t, n in errors.items())}.")
    add("")
    lat_ok = all(goal_marks(r)[0] for r in rows)
    rps_ok = all(goal_marks(r)[1] for r in rows)
    add(
        f"Goal, added p50 at most half of LiteLLM's: **{'met' if lat_ok else 'not met'}** "
        f"({sum(goal_marks(r)[0] for r in rows)}/{len(rows)} configurations)."
    )
    add(
        f"Goal, at least 2× LiteLLM's requests per second: **{'met' if rps_ok else 'not met'}** "
        f"({sum(goal_marks(r)[1] for r in rows)}/{len(rows)} configurations)."
    )
    return "\n".join(out) + "\n"


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def software(stack: Stack) -> str:
    import importlib.metadata as md

    versions = []
    for name in ("django", "daphne", "httpx"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions.append(f"{name} {md.version(name)}")
    return f"Python {platform.python_version()}, {', '.join(versions)}, LiteLLM {stack.versions['litellm']}"


def plan(quick: bool) -> tuple[list[Config], int]:
    if quick:
        return [
            Config("unary", False, 1, 40),
            Config("unary", False, 64, 256),
            Config("stream", True, 1, 40),
            Config("stream", True, 64, 256),
            Config("stream, 5 ms/token", True, 1, 20, SLOW_MODEL),
        ], 2
    return [
        Config("unary", False, 1, 300),
        Config("unary", False, 64, 2000),
        Config("stream", True, 1, 300),
        Config("stream", True, 64, 2000),
        Config("stream, 5 ms/token", True, 1, 120, SLOW_MODEL),
        Config("stream, 5 ms/token", True, 64, 640, SLOW_MODEL),
    ], 4


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C does, through every `finally`. SIGINT is set too:
    a shell starts background jobs with SIGINT ignored, and Python then would not turn it into
    KeyboardInterrupt."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short sanity run (fewer calls, 2 rounds)")
    parser.add_argument(
        "--markdown", type=Path, default=ROOT / "var" / "bench-gateway.md", help="write the report here"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, DATA_DIR, config)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="start the three targets, print how to call them, wait for Ctrl-C (profiling)",
    )
    args = parser.parse_args(argv)

    configs, rounds = plan(args.quick)
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    (work / "logs").mkdir()
    procs = Processes(work / "logs")
    load_before = loadavg()
    try:
        with terminate_cleanly():
            print(f"work folder: {work}", flush=True)
            stack = start_stack(procs, work)
            print(f"console: {stack.urls['console']}  litellm: {stack.urls['litellm']}", flush=True)
            if args.serve:
                for target in TARGETS:
                    print(f"{target}: {stack.urls[target]}  key {stack.keys[target]}  pid {stack.pids.get(target, '')}")
                print("serving until Ctrl-C", flush=True)
                threading.Event().wait()
            results = asyncio.run(measure(stack, configs, rounds, args.quick, lambda line: print(line, flush=True)))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this run started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "software": software(stack),
        "load_before": load_before,
        "load_after": loadavg(),
        "rounds": str(rounds),
    }
    command = ".venv/bin/python bench/gateway.py" + (" --quick" if args.quick else "")
    report = render(rows_from(results), meta, command)
    print("\n" + report)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(report)
    print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_simulator":
        simulator_main(float(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_setup-console":
        console_setup_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main(sys.argv[1:]))
