"""The model server's knobs. Each is read from `django.conf.settings` when the project defines it,
else from the environment, so the server runs the same under `manage.py` and under a bare daphne."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _raw(name: str) -> object | None:
    value = getattr(settings, name, None)
    if value is None or value == "":
        value = os.environ.get(name)
    return None if value == "" else value


def _int(name: str, default: int, *, minimum: int) -> int:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def _float(name: str, default: float, *, minimum: float) -> float:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(str(raw))
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = _raw(name)
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


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
        cores = os.cpu_count() or 1
        threads = _int("LOCAL_LLM_THREADS", cores, minimum=1)
        instance_threads = _int("LOCAL_LLM_INSTANCE_THREADS", 1, minimum=1)
        if instance_threads > threads:
            raise ImproperlyConfigured(
                f"LOCAL_LLM_INSTANCE_THREADS ({instance_threads}) must not exceed LOCAL_LLM_THREADS ({threads})"
            )
        data_dir = Path(getattr(settings, "DATA_DIR", None) or os.environ.get("DATA_DIR") or "var")
        models_dir = _raw("LOCAL_LLM_MODELS_DIR")
        return cls(
            host=str(_raw("LOCAL_LLM_HOST") or "127.0.0.1"),
            port=_int("LOCAL_LLM_PORT", 8001, minimum=1),
            threads=threads,
            instance_threads=instance_threads,
            instances=_int("LOCAL_LLM_INSTANCES", max(1, threads // instance_threads), minimum=1),
            queue=_int("LOCAL_LLM_QUEUE", 8, minimum=0),
            queue_timeout=_float("LOCAL_LLM_QUEUE_TIMEOUT", 30.0, minimum=0.0),
            n_ctx=_int("LOCAL_LLM_CTX", 2048, minimum=128),
            n_batch=_int("LOCAL_LLM_BATCH", 256, minimum=8),
            preload=_bool("LOCAL_LLM_PRELOAD", True),
            models_dir=Path(str(models_dir)) if models_dir else data_dir / "models",
        )
