"""The gateway's test world (a console served in a thread, an upstream simulator, alice's project),
shared with tests/chat: the fuzz run sends its requests there."""

from __future__ import annotations

from hypothesis.configuration import set_hypothesis_home_dir

from console import datadir
from tests.chat.conftest import _fresh_limiter, console_url, upstream, world

# Hypothesis keeps caches (Unicode tables, constants) in a folder; like everything a run writes, it goes
# under DATA_DIR rather than into the checkout.
set_hypothesis_home_dir(datadir.data_dir() / "hypothesis")

__all__ = ["_fresh_limiter", "console_url", "upstream", "world"]
