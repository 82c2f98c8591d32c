"""Usage records and quota settlements, written in small batches off the request path.

A call hands its record over and answers at once; a flusher per event loop writes whatever has
gathered (every FLUSH_SECONDS, or sooner when a batch fills) in one transaction: one INSERT for
all records, one UPDATE per quota counter. A settlement that waits a few milliseconds only keeps
its reservation a little longer, which errs on the safe side of the quota.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F

from chat.db import run_db
from chat.models import QuotaCounter, UsageRecord

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.02
BATCH_SIZE = 500


@dataclass
class _Pending:
    records: list[dict[str, Any]] = field(default_factory=list)
    settles: list[tuple[int, int, int]] = field(default_factory=list)  # (counter, reserved, spent)


def _write(batch: _Pending) -> None:
    per_counter: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for counter, reserved, spent in batch.settles:
        per_counter[counter][0] += reserved
        per_counter[counter][1] += max(0, min(spent, reserved))  # never charge past the reservation
    with transaction.atomic():
        for counter, (reserved, spent) in per_counter.items():
            QuotaCounter.objects.filter(pk=counter).update(reserved=F("reserved") - reserved, used=F("used") + spent)
        UsageRecord.objects.bulk_create([UsageRecord(**fields) for fields in batch.records])


class UsageWriter:
    def __init__(self) -> None:
        self.pending = _Pending()
        self.flusher: asyncio.Task[None] | None = None

    def submit(self, *, record: dict[str, Any] | None, settle: tuple[int, int, int] | None) -> None:
        if record is not None:
            self.pending.records.append(record)
        if settle is not None:
            self.pending.settles.append(settle)
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        while self.pending.records or self.pending.settles:
            if len(self.pending.records) < BATCH_SIZE:
                await asyncio.sleep(FLUSH_SECONDS)
            batch, self.pending = self.pending, _Pending()
            try:
                await run_db(_write, batch)
            except Exception:
                logger.exception("could not write %d usage records", len(batch.records))

    async def drain(self) -> None:
        if self.flusher is not None:
            await self.flusher


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UsageWriter] = weakref.WeakKeyDictionary()


def writer() -> UsageWriter:
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        found = _writers[loop] = UsageWriter()
    return found
