"""The gateway's test world (a console served in a thread, an upstream simulator, alice's project),
shared with tests/chat: the fuzz run sends its requests there."""

from __future__ import annotations

from tests.chat.conftest import _fresh_limiter, console_url, upstream, world

__all__ = ["_fresh_limiter", "console_url", "upstream", "world"]
