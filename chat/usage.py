"""Usage records and quota settlements, written in small batches off the request path.

A call hands its record over and answers at once; a flusher per event loop writes whatever has
gathered (every FLUSH_SECONDS, or sooner when a batch fills): first the quota settlements, one
UPDATE per counter, with the journal of reservations held (`QuotaHold`, see `quota`) in one
transaction; then the records, one INSERT, in another. A settlement that waits a few milliseconds
only keeps its reservation a little longer, which errs on the safe side of the quota.

No record can take others down: the settlements never share a transaction with the records, and a
record the database refuses (a value out of range, say) is found by writing the batch's records one
at a time, each in a savepoint, and is logged and given up while every other one is written.

A failed write loses nothing: the batch goes back to the head of the queue and is retried with
exponential backoff (RETRY_FIRST_SECONDS doubling up to RETRY_MAX_SECONDS) for as long as it keeps
failing. While it fails, settlements are summed per counter, so they take constant memory and the
quota stays exact however long the outage lasts; records wait up to MAX_PENDING_RECORDS, past which
the oldest are dropped with an error in the log. A record whose project was deleted since the call
is written as the ON DELETE rules would have left it, not retried forever.

Each writer also runs the quota reconcile every RECONCILE_SECONDS, from its start: so it runs in
every process that serves the gateway, in the embedded runtime and the scaled one alike.

On shutdown `flush_all()` stops the gateway admitting calls, lets the calls in flight end (each
settles its reservation on its way out) and writes everything left. Under daphne it runs by itself:
SIGTERM stops the Twisted reactor, and a "before shutdown" trigger holds the reactor until it is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sys
import weakref
from collections import deque
from typing import Any, NamedTuple

from django.db import DataError, IntegrityError, models, transaction
from django.db.models import F

from chat import quota, rollups
from chat.db import run_db
from chat.models import QuotaCounter, QuotaHold, UsageRecord

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.02
BATCH_SIZE = 500
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 5.0
# About 1.5 KB each: the cap bounds a long outage to some 30 MB per process.
MAX_PENDING_RECORDS = 20_000
SHUTDOWN_SECONDS = 10.0
# A window this close to the reconcile's cutoff may already be reconciled by another process whose
# clock runs ahead: its settlements check the journal first.
HOLD_MARGIN_SECONDS = 60.0

RecordFields = dict[str, Any]  # UsageRecord's fields by attribute name (project_id, ...)


class Settlement(NamedTuple):
    counter: int  # QuotaCounter id
    reserved: int  # tokens the call reserved: all are released
    spent: int  # tokens the call used: charged, but never more than it reserved
    window: int | None = None  # the window its reservation was journaled in (`UsageWriter.hold`), if it was


Holds = dict[tuple[int, int], tuple[int, int]]  # (counter, window) -> (tokens journaled, tokens released)


@dataclasses.dataclass
class Written:
    """What a batch write did: the settlements are in (else it raised); the records may not be."""

    left_out: int = 0  # records of rows deleted since their call
    refused: list[RecordFields] = dataclasses.field(default_factory=list)  # records the database refused outright
    records_error: Exception | None = None  # the records were not written (kept for retry)


def _backoff(failures: int) -> float:
    delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(failures - 1, 30))
    return delay * random.uniform(0.5, 1.0)  # processes that failed together do not retry together


# --- the database side (runs on a gateway DB thread) -------------------------------------------------
def _add_hold(counter: int, window: int, tokens: int) -> None:
    if QuotaHold.objects.filter(counter_id=counter, window=window).update(tokens=F("tokens") + tokens):
        return
    try:
        with transaction.atomic():  # a savepoint: another process may create it first
            QuotaHold.objects.create(counter_id=counter, window=window, tokens=tokens)
    except IntegrityError:  # created meanwhile, or its counter is gone (then nothing is held)
        QuotaHold.objects.filter(counter_id=counter, window=window).update(tokens=F("tokens") + tokens)


def _write_settles(settles: dict[int, tuple[int, int]], holds: Holds) -> None:
    """Settle the quota counters and journal what stays held, in one transaction of their own."""
    release = {counter: released for counter, (released, _) in settles.items()}
    doubtful = quota.stale_before(margin=HOLD_MARGIN_SECONDS) if holds else 0
    with transaction.atomic():
        for (counter, window), (added, freed) in holds.items():
            if window >= doubtful:
                if added != freed:  # the usual case, a call begun and ended in one batch, writes nothing
                    _add_hold(counter, window, added - freed)
                continue
            if QuotaHold.objects.filter(counter_id=counter, window=window).update(tokens=F("tokens") + added - freed):
                continue
            # Its hold is gone: the reconcile released what had been journaled in it, so of these
            # settlements only those of reservations journaled in this very batch are still reserved.
            mine = min(freed, added)
            release[counter] = release.get(counter, 0) - (freed - mine)
            if added > mine:
                _add_hold(counter, window, added - mine)
        for counter, (_, charged) in settles.items():
            QuotaCounter.objects.filter(pk=counter).update(
                reserved=F("reserved") - release[counter], used=F("used") + charged
            )


def _insert(records: list[RecordFields]) -> None:
    # The rollups are added in the records' transaction: the dashboard counts exactly what is written.
    with transaction.atomic():
        written = UsageRecord.objects.bulk_create([UsageRecord(**fields) for fields in records])
        rollups.rollup_records(_rollup_fields(written))


def _rollup_fields(written: list[UsageRecord]) -> list[dict[str, Any]]:
    return [{name: getattr(record, name) for name in rollups.FIELDS} for record in written]


def _write_records(records: list[RecordFields]) -> tuple[int, list[RecordFields]]:
    """Insert the records; returns (how many were left out because rows they belong to are gone,
    the records the database refused outright). Any other failure raises, with nothing written."""
    try:
        _insert(records)
        return 0, []
    except (IntegrityError, DataError):
        pass
    # Retrying cannot help a record whose project was deleted after its call, nor one the database
    # refuses: find them, and write every other record.
    kept = _as_deletions_left_them(records)
    try:
        _insert(kept)
        return len(records) - len(kept), []
    except (IntegrityError, DataError):
        pass
    refused, written = [], []
    with transaction.atomic():
        for fields in kept:
            try:
                with transaction.atomic():
                    written.append(UsageRecord.objects.create(**fields))
            except (IntegrityError, DataError):
                refused.append(fields)
        rollups.rollup_records(_rollup_fields(written))
    return len(records) - len(kept), refused


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


def _write_batch(records: list[RecordFields], settles: dict[int, tuple[int, int]], holds: Holds) -> Written:
    """Write one batch: the settlements (raises if they fail: then nothing was written), then the
    records, whose failure is returned, not raised, since the settlements are in by then."""
    if settles or holds:
        _write_settles(settles, holds)
    if not records:
        return Written()
    try:
        left_out, refused = _write_records(records)
    except Exception as exc:
        return Written(records_error=exc)
    return Written(left_out=left_out, refused=refused)


# --- the event-loop side --------------------------------------------------------------------------
class UsageWriter:
    """The batch writer of one event loop. Only that loop's thread touches it."""

    def __init__(self) -> None:
        self.records: deque[RecordFields] = deque()
        self.settles: dict[int, list[int]] = {}  # counter -> [tokens to release, tokens to charge]
        self.holds: dict[tuple[int, int], list[int]] = {}  # (counter, window) -> [journaled, released]
        self.flusher: asyncio.Task[None] | None = None
        self.reconciler: asyncio.Task[None] | None = None
        self.failures = 0  # consecutive failed writes
        self.dropped = 0  # records given up to the memory cap, since the process started
        self.closing = False  # set by flush_all: the process is shutting down, admit no new call
        self._one_write = asyncio.Lock()

    @property
    def pending(self) -> bool:
        return bool(self.records or self.settles or self.holds)

    def hold(self, *, counter: int, window: int, tokens: int) -> None:
        """Journal a reservation a call now holds (settled later with the same window). Never blocks."""
        self.holds.setdefault((counter, window), [0, 0])[0] += tokens
        self._flush_later()

    def submit(self, *, record: RecordFields | None, settle: Settlement | tuple[int, int, int] | None) -> None:
        """Queue a call's usage record and its quota settlement (counter, reserved, spent[, window]).
        Never blocks."""
        if record is not None:
            self.records.append(record)
            self._bound()
        if settle is not None:
            settle = Settlement(*settle)
            sums = self.settles.setdefault(settle.counter, [0, 0])
            sums[0] += settle.reserved
            sums[1] += max(0, min(settle.spent, settle.reserved))
            if settle.window is not None:
                self.holds.setdefault((settle.counter, settle.window), [0, 0])[1] += settle.reserved
        self._flush_later()

    def _flush_later(self) -> None:
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

    def _put_back(
        self, records: list[RecordFields], settles: dict[int, list[int]], holds: dict[tuple[int, int], list[int]]
    ) -> None:
        self.records.extendleft(reversed(records))
        for counter, (released, charged) in settles.items():
            sums = self.settles.setdefault(counter, [0, 0])
            sums[0] += released
            sums[1] += charged
        for key, (journaled, released) in holds.items():
            sums = self.holds.setdefault(key, [0, 0])
            sums[0] += journaled
            sums[1] += released
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
            holds, self.holds = self.holds, {}
            write = asyncio.ensure_future(
                run_db(
                    _write_batch,
                    records,
                    {counter: (r, c) for counter, (r, c) in settles.items()},
                    {key: (j, r) for key, (j, r) in holds.items()},
                )
            )
            write.add_done_callback(lambda done: self._outcome(done, records, settles, holds))
            await asyncio.wait([write])  # unlike `await write`, a cancellation here leaves the write alone
            return not write.cancelled() and write.exception() is None and write.result().records_error is None

    def _outcome(
        self,
        write: asyncio.Future[Written],
        records: list[RecordFields],
        settles: dict[int, list[int]],
        holds: dict[tuple[int, int], list[int]],
    ) -> None:
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
        if error is not None:
            self._put_back(records, settles, holds)
            self._failed(error, len(records), len(settles))
            return
        written = write.result()
        if written.records_error is not None:
            self._put_back(records, {}, {})  # the settlements are in
            self._failed(written.records_error, len(records), 0)
            return
        if self.failures:
            logger.warning("usage writes recovered after %d failed attempts", self.failures)
        self.failures = 0
        if written.left_out:
            logger.warning("left out %d usage records of calls whose project was deleted since", written.left_out)
        for fields in written.refused:
            logger.error(
                "the database refused this usage record, which is given up (the others are written): %s", fields
            )

    def _failed(self, error: BaseException, records: int, settles: int) -> None:
        self.failures += 1
        logger.warning(
            "could not write %d usage records and %d quota settlements (attempt %d, kept for retry): %s",
            records,
            settles,
            self.failures,
            error,
            exc_info=error if self.failures == 1 else None,
        )

    async def _reconcile_periodically(self) -> None:
        while True:
            try:
                await run_db(quota.quota_reconcile)
            except Exception as exc:
                logger.warning("the quota reconcile failed (tried again in %g s): %s", quota.RECONCILE_SECONDS, exc)
            await asyncio.sleep(quota.RECONCILE_SECONDS)

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
        # A write under way has taken its records out of `pending`: wait for its outcome (a failed one
        # puts them back) before deciding that nothing is left.
        async with self._one_write:
            pass
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
        found.reconciler = loop.create_task(found._reconcile_periodically(), name="quota-reconcile")
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
        others = asyncio.all_tasks() - {me, found.flusher, found.reconciler}
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
            "record and keep their quota reservation until the reconcile releases it",
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
