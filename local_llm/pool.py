"""llama.cpp instances per model, a core budget shared by all of them, and a bounded queue.

Two rules shape this module:

- A `llama_cpp.Llama` is not thread-safe; two threads inside one instance abort the process. So an
  instance is handed to exactly one request at a time, and it comes back only when the worker thread
  that used it has returned (not when the client went away: the thread may still be inside it).
- llama.cpp threads spin on their core. An instance holds `instance_threads` cores from a shared
  budget (`threads`, default: every core) while it is busy, so busy threads never exceed the cores
  however many models and instances there are. Idle instances hold no core, only memory.

Everything except the llama.cpp calls runs on the event loop, so the bookkeeping needs no lock. The
only exception is `preload()`, which runs before the loop serves anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from local_llm.catalog import ModelFile
from local_llm.config import LocalLlmConfig

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _result_or_none(future: asyncio.Future[Instance]) -> Instance | None:
    return None if future.cancelled() or future.exception() is not None else future.result()


class PoolBusy(Exception):
    """No instance within the queue bound or the wait: answered 429, the server stays up."""


@dataclass(eq=False)
class Instance:
    model: ModelFile
    llm: Llama
    n_ctx: int
    formatter: Jinja2ChatFormatter | None
    served: int = 0


def load_instance(model: ModelFile, config: LocalLlmConfig) -> Instance:
    """Blocking: runs in a worker thread (or before the loop starts)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    started = time.monotonic()
    n_ctx = min(config.n_ctx, model.n_ctx_train or config.n_ctx)
    llm = Llama(
        model_path=str(model.path),
        n_ctx=n_ctx,
        n_batch=min(config.n_batch, n_ctx),
        n_threads=config.instance_threads,
        n_threads_batch=config.instance_threads,
        # The weights are mmapped read-only, so every instance of a model shares one copy in RAM.
        use_mmap=True,
        verbose=False,
    )
    formatter = None
    if model.chat_template is not None:
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(
            template=model.chat_template,
            eos_token=llm.detokenize([eos], special=True).decode(errors="replace") if eos != -1 else "",
            bos_token=llm.detokenize([bos], special=True).decode(errors="replace") if bos != -1 else "",
            stop_token_ids=[eos],
        )
    logger.info("loaded %s (n_ctx %d) in %.2fs", model.id, n_ctx, time.monotonic() - started)
    return Instance(model=model, llm=llm, n_ctx=n_ctx, formatter=formatter)


@dataclass(eq=False)
class _ModelSlots:
    model: ModelFile
    idle: list[Instance] = field(default_factory=list)
    created: int = 0  # loaded or loading
    busy: int = 0


@dataclass(eq=False)
class _Waiter:
    slots: _ModelSlots
    future: asyncio.Future[Instance | None]  # an idle instance, or None: load a new one


class Pool:
    def __init__(
        self,
        models: list[ModelFile],
        config: LocalLlmConfig,
        loader: Callable[[ModelFile, LocalLlmConfig], Instance] = load_instance,
    ) -> None:
        self.config = config
        self.models = {m.id: m for m in models}
        self._slots = {m.id: _ModelSlots(m) for m in models}
        self._loader = loader
        self._free_threads = config.threads
        self._waiters: deque[_Waiter] = deque()
        # Generations never outnumber what the core budget admits, plus one thread for a load.
        self._executor = ThreadPoolExecutor(
            max_workers=config.threads // config.instance_threads + 1, thread_name_prefix="local-llm"
        )

    # --- introspection (health, tests) ---------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            mid: {"instances": s.created, "busy": s.busy, "idle": len(s.idle), "max_instances": self.config.instances}
            for mid, s in self._slots.items()
        }

    # --- lifecycle ------------------------------------------------------------------------------
    def preload(self) -> None:
        """Load every instance of every model before the server accepts calls (blocking, no loop yet):
        no call pays for a load, and the memory the server needs is taken, and measured, at start."""
        for slots in self._slots.values():
            while slots.created < self.config.instances:
                slots.idle.append(self._loader(slots.model, self.config))
                slots.created += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- scheduling -----------------------------------------------------------------------------
    def _can_start(self, slots: _ModelSlots) -> bool:
        return self._free_threads >= self.config.instance_threads and (
            bool(slots.idle) or slots.created < self.config.instances
        )

    def _take(self, slots: _ModelSlots) -> Instance | None:
        self._free_threads -= self.config.instance_threads
        slots.busy += 1
        if slots.idle:
            return slots.idle.pop()
        slots.created += 1
        return None

    def _give_back(self, slots: _ModelSlots, instance: Instance | None) -> None:
        self._free_threads += self.config.instance_threads
        slots.busy -= 1
        if instance is None:
            slots.created -= 1  # a load that failed or was never started
        else:
            slots.idle.append(instance)
        self._dispatch()

    def _dispatch(self) -> None:
        # In arrival order; a waiter whose model is at its instance cap does not hold up the others.
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
            elif self._can_start(waiter.slots):
                self._waiters.remove(waiter)
                waiter.future.set_result(self._take(waiter.slots))

    async def acquire(self, model_id: str) -> Instance:
        """An instance of the model for this caller alone, loading one if the cap allows. Raises
        PoolBusy when the queue is full or the wait exceeds the timeout. Cancel-safe."""
        slots = self._slots[model_id]
        if self._can_start(slots):
            grant = self._take(slots)
        else:
            if len(self._waiters) >= self.config.queue:
                raise PoolBusy(
                    f"The local model server is at capacity ({len(self._waiters)} request(s) already waiting); "
                    "retry shortly."
                )
            waiter = _Waiter(slots, asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
            try:
                await asyncio.wait({waiter.future}, timeout=self.config.queue_timeout)
            except asyncio.CancelledError:
                self._abandon(waiter)
                raise
            if not waiter.future.done():
                self._abandon(waiter)
                raise PoolBusy(
                    f"No instance of `{model_id}` became free within {self.config.queue_timeout:g}s; retry shortly."
                )
            grant = waiter.future.result()
        if grant is not None:
            return grant
        load = self.run(self._loader, slots.model, self.config)
        try:
            # Shielded: a caller that goes away mid-load must not free the slot while the thread loads.
            return await asyncio.shield(load)
        except asyncio.CancelledError:
            load.add_done_callback(lambda f: self._give_back(slots, _result_or_none(f)))
            raise
        except BaseException:
            self._give_back(slots, None)
            raise

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            # Granted in the same loop turn as the timeout or the cancel: hand it on.
            self._give_back(waiter.slots, waiter.future.result())
        else:
            waiter.future.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, instance: Instance) -> None:
        """Call on the event loop once no thread is inside the instance any more."""
        instance.served += 1
        self._give_back(self._slots[instance.model.id], instance)

    def run(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """Run blocking llama.cpp work on the pool's threads."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def run_on(self, instance: Instance, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """Run `fn` in a worker thread and release the instance when that thread is done with it.

        The release hangs off the thread's own future, not the awaitable handed back: cancelling an
        asyncio future completes it at once, and a disconnected client or a cancelled handler must never
        hand the instance to another request while a thread is still inside llama.cpp.
        """
        loop = asyncio.get_running_loop()
        work = self._executor.submit(fn, *args)

        def done(_work: object) -> None:
            # In the worker thread (or on the loop, if cancelled before it started).
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
                loop.call_soon_threadsafe(self.release, instance)

        work.add_done_callback(done)
        return asyncio.wrap_future(work, loop=loop)
