"""The model server's knobs, as one value. Each is a LOCAL_LLM_* setting, defined, defaulted and
checked in `console/settings.py` (its own section there); this module only gathers them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings


@dataclass(frozen=True)
class LocalLlmConfig:
    host: str
    port: int
    # Cores shared by every busy instance of every model: llama.cpp threads spin on their core, so
    # more busy threads than cores makes every stream slower, never the total faster.
    threads: int
    # Threads per instance. 1 gives the best total throughput on a small box (two 1-thread instances
    # ~100 tokens/s together against ~55-80 for one 2-thread instance on 2 cores).
    instance_threads: int
    # Most instances of one model (each holds its own KV cache; the weights are mmap-shared).
    instances: int
    queue: int  # requests that may wait for an instance; the next one is answered 429
    queue_timeout: float  # seconds a request waits before it is answered 429
    n_ctx: int
    n_batch: int
    preload: bool  # load every instance at start (else each on first need): no call pays for a load
    models_dir: Path

    @classmethod
    def load(cls) -> LocalLlmConfig:
        return cls(
            host=settings.LOCAL_LLM_HOST,
            port=settings.LOCAL_LLM_PORT,
            threads=settings.LOCAL_LLM_THREADS,
            instance_threads=settings.LOCAL_LLM_INSTANCE_THREADS,
            instances=settings.LOCAL_LLM_INSTANCES,
            queue=settings.LOCAL_LLM_QUEUE,
            queue_timeout=settings.LOCAL_LLM_QUEUE_TIMEOUT,
            n_ctx=settings.LOCAL_LLM_CTX,
            n_batch=settings.LOCAL_LLM_BATCH,
            preload=settings.LOCAL_LLM_PRELOAD,
            models_dir=Path(settings.LOCAL_LLM_MODELS_DIR),
        )
