"""A one-time store for a secret shown once (a new API key, an AK/SK secret).

The page that creates a secret redirects, so a reload neither shows it again nor creates a second one;
the secret must travel to the next GET. Not through the session: its row is written to the database
and stays until that page is loaded again, if ever. Here the session carries only a random handle;
the secret waits, encrypted, in the cache for a few minutes and is deleted by the first read, so no
second read (a reload, a copied session) ever sees it.
"""

from __future__ import annotations

import json
import secrets

from django.core.cache import cache

from console.lib import crypto

TTL_SECONDS = 300
_PREFIX = "onetime:"


def put(payload: dict[str, str]) -> str:
    """Keep `payload` for one read; returns the handle to read it with."""
    handle = secrets.token_urlsafe(32)
    cache.set(_PREFIX + handle, crypto.encrypt(json.dumps(payload)), TTL_SECONDS)
    return handle


def pop(handle: str) -> dict[str, str] | None:
    """The payload, once: the first caller to delete the entry gets it, every later one None."""
    key = _PREFIX + handle
    sealed = cache.get(key)
    # delete() reports whether this call removed the entry: of two concurrent readers only one wins.
    if not isinstance(sealed, str) or not cache.delete(key):
        return None
    try:
        payload = json.loads(crypto.decrypt(sealed))
    except (crypto.DecryptionError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None
