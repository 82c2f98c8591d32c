"""Resident memory of the whole embedded stack (web, worker, local model server) at idle and under load.

Starts the Procfile's processes with honcho in a fresh DATA_DIR, exactly as `make run` does, sums RSS and
PSS (PSS shares memory-mapped model weights fairly between processes) over every process of the
tree, then loads the stack: streamed chat on the local model and gateway calls through every dialect.
The limit to stay under is 2 GiB.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local_llm.bundled import SMOLLM2  # noqa: E402  (needs ROOT on the path)

BIN = Path(sys.executable).parent
LIMIT_MIB = 2048


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    found = [pid]
    for child in children:
        found += tree(int(child))
    return found


def memory_mib(pid: int) -> tuple[float, float]:
    rss = pss = 0
    for pid_ in tree(pid):
        try:
            for line in Path(f"/proc/{pid_}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def wait(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


async def load(base: str, key: str, project: str, deployment: str, seconds: float) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    chat = {
        "model": SMOLLM2.id,
        "messages": [{"role": "user", "content": "Tell me about rivers."}],
        "max_tokens": 64,
    }
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=120) as client:
            while time.monotonic() < deadline:
                if i % 3 == 0:
                    url, body = f"{base}/v1/chat/completions", {**chat, "stream": True}
                elif i % 3 == 1:
                    url, body = f"{base}/v1/ai/local/v1/chat/completions", chat
                else:
                    url = f"{base}/v1/{project}/deployments/{deployment}/chat/completions"
                    body = {"messages": [{"content": "Tell me about rivers."}], "max_tokens": 64}
                response = await client.post(url, json=body, headers=headers)
                done += response.status_code in (200, 429)

    await asyncio.gather(*[worker(i) for i in range(6)])
    return done


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    port, llm_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
        "DATA_DIR": str(work),
        "PORT": str(port),
        "LOCAL_LLM_PORT": str(llm_port),
        "CONSOLE_ADMIN_PASSWORD": "bench-Memory-1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    manage = [sys.executable, "manage.py"]
    for args in (["migrate", "--noinput", "-v0"], ["bootstrap"], ["collectstatic", "--noinput", "-v0"]):
        subprocess.run(manage + args, cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*manage, "create_api_key", "admin"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    ids = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import django; django.setup(); from models_registry.models import Deployment; "
                f"d = Deployment.objects.get(model__name={SMOLLM2.id!r}); print(d.project_id, d.id)"
            ),
        ],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "console.settings"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    stack = subprocess.Popen(
        [str(BIN / "honcho"), "start", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait(f"http://127.0.0.1:{port}/healthz?deep=1", 120)
        wait(f"http://127.0.0.1:{llm_port}/health", 120)
        time.sleep(5)
        idle = memory_mib(stack.pid)
        peak = idle
        started = time.monotonic()

        async def run_and_sample() -> int:
            nonlocal peak
            task = asyncio.ensure_future(load(f"http://127.0.0.1:{port}", key, ids[0], ids[1], 40))
            while not task.done():
                await asyncio.sleep(1)
                now = memory_mib(stack.pid)
                peak = (max(peak[0], now[0]), max(peak[1], now[1]))
            return task.result()

        calls = asyncio.run(run_and_sample())
        elapsed = time.monotonic() - started
        after = memory_mib(stack.pid)
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(timeout=30)
    rows = [("idle", idle), ("under load (peak)", peak), ("after load", after)]
    print(f"\nWhole embedded stack (web + worker + local model server), {calls} calls in {elapsed:.0f} s of load")
    print("| state | RSS MiB | PSS MiB | RSS vs 2 GiB |")
    print("|---|--:|--:|--:|")
    for name, (rss, pss) in rows:
        print(f"| {name} | {rss:.0f} | {pss:.0f} | {rss / LIMIT_MIB:.0%} |")
    print(json.dumps({"idle": idle, "peak": peak, "calls": calls}))
    return 0 if peak[0] < LIMIT_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
