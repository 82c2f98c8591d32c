"""What every forecast engine offers the pipeline (forecasts/pipeline.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from forecasts.fields import Fields


class EngineError(Exception):
    """A forecast the engine cannot make (a feature it cannot produce, an input it cannot use); the
    message is in plain words and ends up on the job."""


class Cancelled(Exception):
    """`should_stop` said stop: the job was cancelled or the run was taken from this worker."""


class Engine(Protocol):
    name: str  # the model name in the registry, e.g. "builtin-spectral"
    title: str  # plain words for the pages

    def availability(self) -> tuple[bool, str]:
        """(usable, why not when it is not)."""
        ...

    def producible(self, inputs: Iterable[str]) -> set[str]:
        """The features it can output when the initial state holds these."""
        ...

    def forecast(
        self,
        initial: Fields,
        lead_hours: Sequence[int],
        features: Sequence[str],
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Iterator[Fields]:
        """One state per lead (ascending, hours after `initial.time`), holding only `features`, on the
        input's own grid. Raises EngineError, or Cancelled when `should_stop()` turns true."""
        ...
