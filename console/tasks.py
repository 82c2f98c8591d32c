from __future__ import annotations

import time

from celery import shared_task


@shared_task(name="console.ping", acks_late=False)
def ping(delay: float = 0.0) -> dict[str, object]:
    """Round-trip probe for /healthz?deep=1; names the worker so a scale-out can see who ran it."""
    if delay:
        time.sleep(min(delay, 5.0))
    return {"pong": True, "worker": ping.request.hostname or "", "at": time.time()}
