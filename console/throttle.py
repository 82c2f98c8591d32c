"""Throttling of password checks (`POST /v3/auth/tokens` and the sign-in pages share it), and the
one-at-a-time rule for each user's CSV exports (`ExportSlot`).

Each attempt takes a slot from two fixed-window counters in the Django cache, one per client address
and one per username, *before* the password is hashed; over either limit the check is refused
(`PasswordThrottled`) and the hasher never runs. A successful check gives its slots back, so only
failures accumulate. The cache's `incr` is atomic in Redis, so with REDIS_URL set the limits are
exact across processes (the embedded runtime's local-memory cache is exact within its one process).
The first refused attempt of a window writes one audit entry per key, not one per attempt.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.core.cache import cache

from console import services as console_services
from console.models import Project

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest

logger = logging.getLogger(__name__)

AUDIT_ACTION = "auth.password_throttled"


class PasswordThrottled(Exception):
    """Too many password attempts for this username or from this address; retry after `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many sign-in attempts. Try again in {retry_after} seconds.")
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Window:
    index: int
    retry_after: int  # whole seconds until the window ends, at least 1


def _window(now: float) -> _Window:
    length = settings.PASSWORD_THROTTLE_WINDOW
    index = int(now // length)
    return _Window(index=index, retry_after=max(1, math.ceil((index + 1) * length - now)))


def _key(kind: str, value: str, window: _Window) -> str:
    # Usernames are case-folded so "Admin" and "admin" share a counter, and hashed so any text is a
    # safe cache key of bounded length.
    digest = hashlib.sha256(value.casefold().encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"throttle:password:{kind}:{digest}:{window.index}"


def _take(key: str) -> int:
    """Count one attempt; return the count so far in this window (atomic with Redis)."""
    timeout = settings.PASSWORD_THROTTLE_WINDOW * 2
    cache.add(key, 0, timeout)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout)
        return 1


def _give_back(key: str) -> None:
    try:
        cache.decr(key)
    except ValueError:
        pass


def _audit(*, username: str, client_ip: str, over: str, attempts: int) -> None:
    """One entry in each project of the targeted user (its admins see the attack); a made-up username
    belongs to no project, so that attack is only logged."""
    logger.warning(
        "password checks throttled (%s limit): username=%r client_ip=%s attempts=%d",
        over,
        username,
        client_ip,
        attempts,
    )
    user = get_user_model().objects.filter(username__iexact=username).first()
    if user is None:
        return
    changes: dict[str, object] = {
        "username": username,
        "client_ip": client_ip,
        "limit": over,
        "attempts": attempts,
        "window_seconds": settings.PASSWORD_THROTTLE_WINDOW,
    }
    for project in Project.objects.filter(memberships__user=user):
        console_services.audit_record(project=project, actor=None, action=AUDIT_ACTION, target=user, changes=changes)


def password_check(*, username: str, password: str, client_ip: str, request: HttpRequest | None = None) -> User | None:
    """The user these credentials authenticate, or None; raises PasswordThrottled, without hashing,
    when the address or the username has used up its attempts in the current window.

    Attempts are counted before the hash runs, so concurrent attempts cannot overshoot a limit."""
    window = _window(time.time())
    ip_key = _key("ip", client_ip or "-", window)
    ip_count = _take(ip_key)
    if ip_count > settings.PASSWORD_THROTTLE_PER_IP:
        if ip_count == settings.PASSWORD_THROTTLE_PER_IP + 1:
            _audit(username=username, client_ip=client_ip, over="ip", attempts=ip_count - 1)
        # The username's counter is left alone: one address's flood must not lock its target out for all.
        raise PasswordThrottled(window.retry_after)
    user_key = _key("user", username, window)
    user_count = _take(user_key)
    if user_count > settings.PASSWORD_THROTTLE_PER_USER:
        if user_count == settings.PASSWORD_THROTTLE_PER_USER + 1:
            _audit(username=username, client_ip=client_ip, over="user", attempts=user_count - 1)
        raise PasswordThrottled(window.retry_after)
    user = authenticate(request, username=username, password=password)
    if not isinstance(user, get_user_model()):
        return None
    _give_back(ip_key)
    _give_back(user_key)
    return user


# --- CSV exports: one at a time per user ------------------------------------------------------------
# An export reads its whole reach (a million records is some 500 queries of 2,000 rows); one user
# starting many at once would spend the database's time that other callers' pages need.
EXPORT_LEASE_SECONDS = 60  # renewed with every piece sent; a process killed mid-export frees it by then
EXPORT_RETRY_AFTER = 5


class ExportBusy(Exception):
    """This user already has an export under way."""

    retry_after = EXPORT_RETRY_AFTER

    def __init__(self) -> None:
        super().__init__("An export of yours is still being downloaded. Wait until it has finished, then try again.")


@dataclass(frozen=True)
class ExportSlot:
    """A user's one export slot, held in the cache under a token of its own, so a release after the
    lease ran out never frees another export's slot. With REDIS_URL set `cache.add` is atomic across
    processes; the embedded runtime's local-memory cache is exact within its one web process."""

    key: str
    token: str

    @classmethod
    def take(cls, *, user_id: int) -> ExportSlot:
        """The slot, or ExportBusy while another export of this user holds it."""
        slot = cls(key=f"throttle:export:{user_id}", token=secrets.token_hex(8))
        if not cache.add(slot.key, slot.token, EXPORT_LEASE_SECONDS):
            raise ExportBusy()
        return slot

    def hold(self, pieces: Iterator[str]) -> Iterator[str]:
        """`pieces`, the slot renewed with each and released at the end, whether the download
        finished, failed or was closed because the client went away."""
        try:
            for piece in pieces:
                cache.touch(self.key, EXPORT_LEASE_SECONDS)
                yield piece
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            self.release()

    def release(self) -> None:
        if cache.get(self.key) == self.token:
            cache.delete(self.key)
