"""Tokens per second of the embedded chat model: raw llama.cpp in this process against the same model
through the local model server's OpenAI API (and, with --console-url, through the console's gateway in
front of it), for one stream and for two concurrent streams, in one run; plus the server's memory.

    .venv/bin/python bench/local_model.py             # full run (about two minutes on 2 cores)
    .venv/bin/python bench/local_model.py --quick     # a short sanity run
    .venv/bin/python bench/local_model.py --console-url http://127.0.0.1:8000 --key sk-... \\
        --console-model smollm2-135m-instruct          # adds the gateway path

Fair by construction: the raw path uses the server's own settings (LOCAL_LLM_INSTANCE_THREADS threads
per instance, one instance per concurrent stream, the same n_ctx and n_batch), the same prompt, greedy
decoding and the same max_tokens, and tokens are counted with the model's tokenizer on every path.
The server runs in a process of its own (daphne, as `python -m local_llm` runs it), so it never
shares a GIL with the load generator. Paths are interleaved round by round (the machine is shared and
noisy) and the report leads with ratios against raw llama.cpp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


@dataclass
class Run:
    tokens: int  # completion tokens, all streams together
    seconds: float  # first request sent to last stream finished
    ttft: list[float]  # per stream: seconds to the first content

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class Results:
    runs: dict[tuple[str, int], list[Run]] = field(default_factory=dict)

    def add(self, path: str, streams: int, run: Run) -> None:
        self.runs.setdefault((path, streams), []).append(run)

    def tps(self, path: str, streams: int) -> float:
        return statistics.median(r.tps for r in self.runs[(path, streams)])

    def spread(self, path: str, streams: int) -> str:
        values = [r.tps for r in self.runs[(path, streams)]]
        return f"{statistics.median(values):.1f} ({min(values):.0f}-{max(values):.0f})"

    def ttft(self, path: str, streams: int) -> float:
        return statistics.median(t for r in self.runs[(path, streams)] for t in r.ttft)


# --- raw llama.cpp, in process -----------------------------------------------------------------
class Raw:
    """One llama-cpp-python instance per concurrent stream, each driven by its own thread (llama.cpp
    releases the GIL while it computes)."""

    def __init__(self, model_path: Path, threads: int, n_ctx: int, n_batch: int, instances: int) -> None:
        from llama_cpp import Llama

        self.llms = [
            Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
            for _ in range(instances)
        ]

    def _one(self, llm: Any, max_tokens: int, out: list[tuple[int, float]], t0: float) -> None:
        first = 0.0
        text = ""
        for chunk in llm.create_chat_completion(messages=PROMPT, max_tokens=max_tokens, temperature=0, stream=True):
            content = chunk["choices"][0]["delta"].get("content")
            if content:
                first = first or time.perf_counter() - t0
                text += content
        out.append((len(llm.tokenize(text.encode(), add_bos=False, special=True)), first))

    def run(self, streams: int, max_tokens: int) -> Run:
        out: list[tuple[int, float]] = []
        t0 = time.perf_counter()
        threads = [threading.Thread(target=self._one, args=(self.llms[i], max_tokens, out, t0)) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return Run(sum(n for n, _ in out), time.perf_counter() - t0, [t for _, t in out])


# --- over HTTP (the model server, or the console's gateway) ------------------------------------
# Pangu's stream has no usage chunk: its text is counted with the model's tokenizer, like the raw path.
_COUNTER: dict[str, Any] = {}


async def _stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str], t0: float
) -> tuple[int, float]:
    first = 0.0
    tokens = 0
    text = ""
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if line.startswith("data:{"):  # Pangu framing: no space, choices[].message.content
                piece = json.loads(line[5:])["choices"][0]["message"].get("content") or ""
                if piece:
                    first = first or time.perf_counter() - t0
                    text += piece
                continue
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content") and not first:
                    first = time.perf_counter() - t0
    if text and not tokens:
        tokens = len(_COUNTER["llm"].tokenize(text.encode(), add_bos=False, special=True))
    return tokens, first


def http_run(url: str, model: str, key: str | None, streams: int, max_tokens: int, pangu: bool = False) -> Run:
    body: dict[str, Any] = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if pangu:
        body["stream"] = "true"  # as the platform's own examples send it
        headers = {"X-Auth-Token": key or ""}
    else:
        body.update(model=model, stream_options={"include_usage": True})
        headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def main() -> Run:
        async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
            t0 = time.perf_counter()
            out = await asyncio.gather(*(_stream(client, url, body, headers, t0) for _ in range(streams)))
            return Run(sum(n for n, _ in out), time.perf_counter() - t0, [t for _, t in out])

    return asyncio.run(main())


# --- the server process ------------------------------------------------------------------------
def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory(pid: int) -> dict[str, int]:
    """Resident memory in MiB. RSS counts the mmapped weights once per instance; PSS counts pages
    shared between mappings once, which is what the machine really gives the server."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM", "RssAnon", "RssFile"}:
            out[name] = int(value.split()[0]) // 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) // 1024
    return out


@contextlib.contextmanager
def model_server(log: Path, port: int) -> Any:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is taken (a model server already running?); stop it or pass --server-port")
    env = {**os.environ, "LOCAL_LLM_PORT": str(port), "DJANGO_SETTINGS_MODULE": "console.settings"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local_llm"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300  # the first start assembles gemma
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the model server exited:\n{log.read_text(errors='replace')[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the model server did not start")
                time.sleep(0.3)
            yield url, proc.pid  # `python -m local_llm` execs daphne: same pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --- main --------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, 48 tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--console-url", help="the console, e.g. http://127.0.0.1:8000 (adds the gateway path)")
    parser.add_argument("--key", help="a console API key (with --console-url)")
    parser.add_argument("--console-model", default=None, help="the model name in the console (default: the model id)")
    parser.add_argument(
        "--pangu-path",
        help="with --console-url: /v1/{project_id}/deployments/{deployment_id}/chat/completions of the local "
        "chat model, to add the Pangu dialect",
    )
    parser.add_argument(
        "--server-port",
        type=int,
        help="the model server's port (default: a free one; with --console-url, LOCAL_LLM_PORT, where the "
        "console's LOCAL_LLM_URL points)",
    )
    args = parser.parse_args()
    if args.console_url and not args.key:
        parser.error("--console-url needs --key")
    rounds, max_tokens = (1, 48) if args.quick else (args.rounds, args.max_tokens)

    from console.datadir import prepare_data_dir

    prepare_data_dir()  # as every entry point does before the settings are read
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per call would bury the report
    from local_llm import catalog
    from local_llm.bundled import SMOLLM2
    from local_llm.config import LocalLlmConfig

    config = LocalLlmConfig.load()
    catalog.prepare(config.models_dir)
    model = SMOLLM2
    streams_list = [1, 2] if config.instances >= 2 else [1]

    # Each path: (concurrent streams, max tokens) -> one timed run.
    paths: dict[str, Callable[[int, int], Run]] = {}
    before = memory(os.getpid())
    raw = Raw(
        config.models_dir / model.filename, config.instance_threads, config.n_ctx, config.n_batch, max(streams_list)
    )
    raw_mem = {k: v - before.get(k, 0) for k, v in memory(os.getpid()).items()}
    paths["raw llama.cpp"] = raw.run
    _COUNTER["llm"] = raw.llms[0]

    logs = Path(tempfile.mkdtemp(prefix="bench-local-model-"))
    port = args.server_port or (config.port if args.console_url else free_port())
    with model_server(logs / "server.log", port) as (url, pid):
        started_mem = memory(pid)
        server_url = f"{url}/v1/chat/completions"
        paths["model server"] = lambda n, m: http_run(server_url, model.id, None, n, m)
        if args.console_url:
            console_url = args.console_url.rstrip("/") + "/v1/chat/completions"
            console_model = args.console_model or model.id
            paths["console, OpenAI dialect"] = lambda n, m: http_run(console_url, console_model, args.key, n, m)
            if args.pangu_path:
                pangu_url = args.console_url.rstrip("/") + args.pangu_path
                paths["console, Pangu dialect"] = lambda n, m: http_run(pangu_url, "", args.key, n, m, pangu=True)
        for fn in paths.values():  # warm-up: the first calls page the weights in
            for n in streams_list:
                fn(n, 8)
        results = Results()
        order = list(paths)
        for r in range(rounds):
            # A rotating order, so no path always runs right after another's heat.
            for name in order[r % len(order) :] + order[: r % len(order)]:
                for n in streams_list:
                    results.add(name, n, paths[name](n, max_tokens))
        peak_mem = memory(pid)

    print_report(results, list(paths), streams_list, config, rounds, max_tokens, raw_mem, started_mem, peak_mem)


def print_report(
    results: Results,
    paths: list[str],
    streams_list: list[int],
    config: Any,
    rounds: int,
    max_tokens: int,
    raw_mem: dict[str, int],
    started_mem: dict[str, int],
    peak_mem: dict[str, int],
) -> None:
    import llama_cpp

    print(
        f"\nSmolLM2-135M-Instruct Q4_1, {platform.machine()}, {os.cpu_count()} cores, llama-cpp-python "
        f"{llama_cpp.__version__}; {config.instance_threads} thread(s) per instance, n_ctx {config.n_ctx}, "
        f"greedy, {max_tokens} max tokens; median (min-max) of {rounds} round(s).\n"
    )
    head = "| path | " + " | ".join(f"{n} stream{'s' if n > 1 else ''} tok/s (total)" for n in streams_list)
    head += " | " + " | ".join(f"TTFT {n}x (ms)" for n in streams_list) + " | vs raw |"
    print(head)
    print("|" + "---|" * (2 + 2 * len(streams_list)))
    for path in paths:
        tps = [results.spread(path, n) for n in streams_list]
        ttft = [results.ttft(path, n) * 1000 for n in streams_list]
        ratios = " / ".join(f"{results.tps(path, n) / results.tps('raw llama.cpp', n):.2f}" for n in streams_list)
        print(f"| {path} | " + " | ".join(tps) + " | " + " | ".join(f"{v:.0f}" for v in ttft) + f" | {ratios} |")
    if len(streams_list) > 1:
        print(
            "\nTwo streams against one, total tokens/s: "
            + ", ".join(f"{p} x{results.tps(p, 2) / results.tps(p, 1):.2f}" for p in paths)
        )
    print(
        f"\nModel server memory (MiB), {config.instances} instance(s) of each bundled model: "
        f"RSS {started_mem.get('VmRSS')} at start, {peak_mem.get('VmRSS')} after the run, "
        f"peak {peak_mem.get('VmHWM')}; "
        f"PSS {peak_mem.get('Pss')} (anon {peak_mem.get('RssAnon')}, file-backed weights {peak_mem.get('RssFile')})."
    )
    print(
        f"Raw path in this process, {max(streams_list)} chat instance(s): +{raw_mem.get('VmRSS')} MiB RSS "
        f"(+{raw_mem.get('Pss', 0)} MiB PSS)."
    )


if __name__ == "__main__":
    main()
