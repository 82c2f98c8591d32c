"""Reading the environment: django-environ, made strict where the settings need it.

`console/settings.py` reads every variable through the one `env` below, and so does
`console/datadir.py` (which runs before the settings, to find DATA_DIR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Read:
    """One variable the settings read: how its value is parsed and what it is when unset."""

    cast: Callable[..., Any] | list[Any] | None
    default: Any


class Env(environ.Env):
    """django-environ's reader with three rules on top:

    - an empty value is unset: a `.env` copied from `.env.example` leaves many blank, and blank
      means "the default" there;
    - a value that does not parse fails with `ImproperlyConfigured` naming the variable (django-environ
      reads `DEBUG=perhaps` as false and lets `int("eighty")` escape as a bare ValueError);
    - every variable read is recorded with its default (`reads`), so a test can hold `.env.example`
      to the same defaults.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, Read] = {}

    def get_value(
        self,
        var: str,
        cast: Callable[..., Any] | list[Any] | None = None,
        default: Any = environ.Env.NOTSET,
        parse_default: bool = False,
    ) -> Any:
        self.reads.setdefault(var, Read(cast, default))
        raw = self.ENVIRON.get(var)
        if raw is None or raw.strip() == "":
            if default is self.NOTSET:
                raise ImproperlyConfigured(f"Set the {var} environment variable")
            return default
        if cast is bool and raw.strip().lower() not in TRUE | FALSE:
            raise ImproperlyConfigured(f"{var} must be true or false, not {raw!r}")
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except (TypeError, ValueError):
            kind = "an integer" if cast is int else "a number" if cast is float else "well-formed"
            raise ImproperlyConfigured(f"{var} must be {kind}, not {raw!r}") from None

    def list(self, var: str, cast: Callable[..., Any] | None = None, default: Any = environ.Env.NOTSET) -> Any:
        # "a.example, b.example" is two hosts, not "a.example" and " b.example".
        value = super().list(var, cast=cast, default=default)
        if cast is None and value is not default:
            value = [item.strip() for item in value if item.strip()]
        return value

    def int(self, var: str, default: Any = environ.Env.NOTSET, *, minimum: int | None = None) -> Any:
        value = self.get_value(var, cast=int, default=default)
        return _at_least(var, value, minimum)

    def float(self, var: str, default: Any = environ.Env.NOTSET, *, minimum: float | None = None) -> Any:
        value = self.get_value(var, cast=float, default=default)
        return _at_least(var, value, minimum)


def _at_least(var: str, value: Any, minimum: float | None) -> Any:
    if minimum is not None and value is not None and value < minimum:
        raise ImproperlyConfigured(f"{var} must be at least {minimum:g}, not {value:g}")
    return value


env = Env()


def read_dotenv(base_dir: Path) -> None:
    """Load `base_dir/.env` when there is one. Variables already in the environment win, so calling
    this again (datadir, then settings) changes nothing."""
    if (base_dir / ".env").is_file():
        environ.Env.read_env(base_dir / ".env")
