"""Usage records and quota settlements, written in small batches off the request path.

A call hands its record over and answers at once; a flusher per event loop writes whatever has
gathered (every FLUSH_SECONDS, or sooner when a batch fills) in one transaction: one INSERT for
all records, one UPDATE per quota counter. A settlement that waits a few milliseconds only keeps
its reservation a little longer, which errs on the safe side of the quota.

A failed write loses nothing: the batch goes back to the head of the queue and is retried with
exponential backoff (RETRY_FIRST_SECONDS doubling up to RETRY_MAX_SECONDS) for as long as it keeps
failing. While it fails, settlements are summed per counter, so they take constant memory and the
quota stays exact however long the outage lasts; records wait up to MAX_PENDING_RECORDS, past which
the oldest are dropped with an error in the log. A record the database refuses outright (its project
was deleted since the call) is written as the ON DELETE rules would have left it, not retried forever.

On shutdown `flush_all()` stops the gateway admitting calls, lets the calls in flight end (each
settles its reservation on its way out) and writes everything left. Under daphne it runs by itself:
SIGTERM stops the Twisted reactor, and a "before shutdown" trigger holds the reactor until it is done.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import weakref
from collections import deque
from typing import Any, NamedTuple

from django.db import IntegrityError, models, transaction
from django.db.models import F

from chat.db import run_db
from chat.models import QuotaCounter, UsageRecord

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.02
BATCH_SIZE = 500
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 5.0
# About 1.5 KB each: the cap bounds a long outage to some 30 MB per process.
MAX_PENDING_RECORDS = 20_000
SHUTDOWN_SECONDS = 10.0

RecordFields = dict[str, Any]  # UsageRecord's fields by attribute name (project_id, ...)


class Settlement(NamedTuple):
    counter: int  # QuotaCounter id
    reserved: int  # tokens the call reserved: all are released
    spent: int  # tokens the call used: charged, but never more than it reserved


def _backoff(failures: int) -> float:
    delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(failures - 1, 30))
    return delay * random.uniform(0.5, 1.0)  # processes that failed together do not retry together


# --- the database side (runs on a gateway DB thread) -------------------------------------------------
def _write(records: list[RecordFields], settles: dict[int, tuple[int, int]]) -> None:
    with transaction.atomic():
        for counter, (released, charged) in settles.items():
            QuotaCounter.objects.filter(pk=counter).update(reserved=F("reserved") - released, used=F("used") + charged)
        UsageRecord.objects.bulk_create([UsageRecord(**fields) for fields in records])


def _as_deletions_left_them(records: list[RecordFields]) -> list[RecordFields]:
    """The records as the ON DELETE rules would have left them had they been written before rows
    they point at (a project, key, user, provider or model) were deleted."""
    kept = records
    for field in UsageRecord._meta.concrete_fields:
        if not isinstance(field, models.ForeignKey):
            continue
        wanted = {fields[field.attname] for fields in kept if fields.get(field.attname) is not None}
        existing = set(field.related_model._default_manager.filter(pk__in=wanted).values_list("pk", flat=True))
        gone = wanted - existing
        if not gone:
            continue
        if field.remote_field.on_delete is models.CASCADE:
            kept = [fields for fields in kept if fields.get(field.attname) not in gone]
        else:  # SET_NULL
            kept = [{**fields, field.attname: None} if fields.get(field.attname) in gone else fields for fields in kept]
    return kept


def _write_batch(records: list[RecordFields], settles: dict[int, tuple[int, int]]) -> int:
    """Write one batch in one transaction; returns how many records were left out because the rows
    they belong to are gone."""
    try:
        _write(records, settles)
        return 0
    except IntegrityError:
        # Retrying cannot help a record whose project was deleted after its call.
        kept = _as_deletions_left_them(records)
        if kept == records:
            raise
        _write(kept, settles)
        return len(records) - len(kept)


# --- the event-loop side --------------------------------------------------------------------------
class UsageWriter:
    """The batch writer of one event loop. Only that loop's thread touches it."""

    def __init__(self) -> None:
        self.records: deque[RecordFields] = deque()
        self.settles: dict[int, list[int]] = {}  # counter -> [tokens to release, tokens to charge]
        self.flusher: asyncio.Task[None] | None = None
        self.failures = 0  # consecutive failed writes
        self.dropped = 0  # records given up to the memory cap, since the process started
        self.closing = False  # set by flush_all: the process is shutting down, admit no new call
        self._one_write = asyncio.Lock()

    @property
    def pending(self) -> bool:
        return bool(self.records or self.settles)

    def submit(self, *, record: RecordFields | None, settle: Settlement | tuple[int, int, int] | None) -> None:
        """Queue a call's usage record and its quota settlement (counter, reserved, spent). Never blocks."""
        if record is not None:
            self.records.append(record)
            self._bound()
        if settle is not None:
            counter, reserved, spent = settle
            sums = self.settles.setdefault(counter, [0, 0])
            sums[0] += reserved
            sums[1] += max(0, min(spent, reserved))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush_soon())

    def _bound(self) -> None:
        excess = len(self.records) - MAX_PENDING_RECORDS
        if excess <= 0:
            return
        for _ in range(excess):
            self.records.popleft()
        before, self.dropped = self.dropped, self.dropped + excess
        if before == 0 or before // 1000 != self.dropped // 1000:
            logger.error(
                "usage writes are failing or far behind: dropped the oldest usage records to hold at most %d "
                "(%d dropped since start); every quota settlement is still held and will be written",
                MAX_PENDING_RECORDS,
                self.dropped,
            )

    def _put_back(self, records: list[RecordFields], settles: dict[int, list[int]]) -> None:
        self.records.extendleft(reversed(records))
        for counter, (released, charged) in settles.items():
            sums = self.settles.setdefault(counter, [0, 0])
            sums[0] += released
            sums[1] += charged
        self._bound()

    async def write_batch(self) -> bool:
        """Write up to BATCH_SIZE records and every settlement now. On failure they are put back
        and False is returned. A write under way is never abandoned: if this coroutine is cancelled,
        the thread finishes and the outcome is still applied."""
        async with self._one_write:
            if not self.pending:
                return True
            records = [self.records.popleft() for _ in range(min(BATCH_SIZE, len(self.records)))]
            settles, self.settles = self.settles, {}
            write = asyncio.ensure_future(
                run_db(_write_batch, records, {counter: (r, c) for counter, (r, c) in settles.items()})
            )
            write.add_done_callback(lambda done: self._outcome(done, records, settles))
            await asyncio.wait([write])  # unlike `await write`, a cancellation here leaves the write alone
            return not write.cancelled() and write.exception() is None

    def _outcome(self, write: asyncio.Future[int], records: list[RecordFields], settles: dict[int, list[int]]) -> None:
        if write.cancelled():
            # Only a loop closing under us cancels the write (asyncio.run's end); the thread may have
            # committed it. Writing it again could release reservations twice, so it is given up,
            # which at worst keeps tokens reserved: the safe side of the quota.
            logger.error(
                "a usage write was cancelled with its outcome unknown: %d usage records and these quota "
                "settlements may be unwritten (counter: tokens reserved, tokens to charge): %s",
                len(records),
                {counter: tuple(sums) for counter, sums in settles.items()},
            )
            return
        error = write.exception()
        if error is None:
            if self.failures:
                logger.warning("usage writes recovered after %d failed attempts", self.failures)
            self.failures = 0
            if refused := write.result():
                logger.warning("left out %d usage records of calls whose project was deleted since", refused)
            return
        self._put_back(records, settles)
        self.failures += 1
        logger.warning(
            "could not write %d usage records and %d quota settlements (attempt %d, kept for retry): %s",
            len(records),
            len(settles),
            self.failures,
            error,
            exc_info=error if self.failures == 1 else None,
        )

    async def _flush_soon(self) -> None:
        try:
            while self.pending:
                if self.failures:
                    await asyncio.sleep(_backoff(self.failures))
                elif len(self.records) < BATCH_SIZE:
                    await asyncio.sleep(FLUSH_SECONDS)
                await self.write_batch()
        except asyncio.CancelledError:
            # The loop is closing without flush_all (asyncio.run's end cancels every task and waits
            # for them): one short last try for what is held.
            await self.flush(timeout=1.0)
            raise

    async def flush(self, *, timeout: float) -> bool:
        """Write everything pending now, retrying failures with backoff until `timeout` seconds
        have passed. True when nothing is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending:
            if await self.write_batch():
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(_backoff(self.failures), left))
        return not self.pending

    async def drain(self) -> None:
        """Wait until everything submitted so far is written (tests, scripts)."""
        await self.flush(timeout=SHUTDOWN_SECONDS)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UsageWriter] = weakref.WeakKeyDictionary()


def writer() -> UsageWriter:
    """The running event loop's writer."""
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        found = _writers[loop] = UsageWriter()
        _flush_before_the_reactor_stops(loop)
    return found


async def flush_all(*, timeout: float = SHUTDOWN_SECONDS) -> bool:
    """Shutdown hook of the event loop that serves the gateway: await it before the loop stops.

    From the first moment the gateway admits no new call on this loop (`UsageWriter.closing`). Then
    it waits for the loop's other tasks, the calls in flight, to end, since each settles its quota
    reservation and hands over its usage record on its way out, and writes everything pending,
    retrying failures, until it sees no task running and nothing held, or `timeout` is spent.
    Returns True when nothing was left unwritten; otherwise logs exactly what is lost. Safe to call
    more than once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found = writer()
    found.closing = True
    me = asyncio.current_task()
    while True:
        others = {task for task in asyncio.all_tasks() if task is not me and task is not found.flusher}
        if not others and not found.pending:
            return True
        left = deadline - loop.time()
        if left <= 0:
            break
        if others:
            await asyncio.wait(others, timeout=left)  # meanwhile the flusher writes what they hand over
        else:
            await found.flush(timeout=left)
    if others:
        logger.error(
            "shutting down with %d tasks still running after %g s: calls among them lose their usage "
            "record and keep their quota reservation",
            len(others),
            timeout,
        )
    if found.pending:
        logger.error(
            "shutting down with %d usage records and these quota settlements unwritten (counter: tokens "
            "still reserved, tokens to charge): %s; the database kept refusing the writes",
            len(found.records),
            {counter: tuple(sums) for counter, sums in found.settles.items()},
        )
    return False


def _flush_before_the_reactor_stops(loop: asyncio.AbstractEventLoop) -> None:
    """Under daphne the loop is Twisted's asyncio reactor, which SIGTERM stops; daphne sends no ASGI
    lifespan events. A "before shutdown" trigger that returns a Deferred holds the reactor until the
    flush is done. Daphne's own trigger cancels the application instances at the same moment, and
    flush_all waits for them to end first."""
    reactor = sys.modules.get("twisted.internet.reactor")
    # The asyncio reactor keeps its loop here; daphne itself reads the same attribute.
    if reactor is None or getattr(reactor, "_asyncioEventloop", None) is not loop:
        return
    from twisted.internet.defer import Deferred
    from twisted.internet.tcp import Port

    def drain() -> Deferred[bool]:
        # New connections would keep arriving while the reactor waits for this trigger (the ports
        # close only after it): stop accepting first, so the calls in flight can run out.
        for reader in reactor.getReaders():
            if isinstance(reader, Port):
                reader.stopListening()
        return Deferred.fromFuture(loop.create_task(flush_all()))

    reactor.addSystemEventTrigger("before", "shutdown", drain)
