"""A forecast task's body checked against the seed (../shared/seeds/README.md, item 5) and turned into a
`TaskSpec`: pure functions, no database. The task API and the job form both call `parse_task`, so the
two can never disagree; each refusal names its field (`config.start_time_interval_hours`) and says in
an operator's words what is allowed.

Ranges are exactly the seed's, open and closed ends as it gives them: interval [1, 24], members
[2, 10], Perlin scale (0, 0.5), octave [1, 10), x and y [0, 1), CNOP candidates [2, 350]. The seed
gives no upper bound for `forecast_lead_hours` beyond "720 forecasts 30 days": 720 is the most this
console runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from forecasts.fields import SURFACE, SURFACE_VARIABLES, UPPER_VARIABLES

DEFAULT_INTERVAL_HOURS = 6
DEFAULT_LEAD_HOURS = 168
MAX_LEAD_HOURS = 720
OUTPUT_STEP_HOURS = 6  # outputs every 6 h of lead, and at the last lead
FIGURE_STEP_HOURS = 24  # maps once a day of lead, and at the last lead
MAX_START_TIMES = 120  # one job runs at most this many forecast starts (30 days at 6 h)
NAME_MAX = 64
NOISE_METHODS = ("perlin", "cnop")
# The features a job outputs when it names none (what the demo input can give).
DEFAULT_FEATURES = ("500:Z", "850:Z", "500:T", "850:T", "500:U", "500:V")
# Levels a feature may name, hPa: the ERA5 pressure levels.
ERA5_LEVELS = (
    1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 125, 150, 175, 200, 225, 250, 300, 350, 400, 450, 500, 550, 600, 650,
    700, 750, 775, 800, 825, 850, 875, 900, 925, 950, 975, 1000,
)  # fmt: skip
_TIME = re.compile(r"\d{10}")
_FEATURE = re.compile(r"(?P<level>[^:;]+):(?P<var>[^:;]+)")

VARIABLE_WORDS = {
    "Z": "geopotential",
    "Q": "specific humidity",
    "T": "temperature",
    "U": "east wind",
    "V": "north wind",
}
SURFACE_WORDS = {"P": "mean sea-level pressure", "T": "2 m temperature", "U": "10 m east wind", "V": "10 m north wind"}


class ConfigError(ValueError):
    """A refused body: `field` is its dotted path, `message` says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Location:
    bucket: str
    path: str

    def as_json(self) -> dict[str, str]:
        return {"bucket": self.bucket, "path": self.path}


@dataclass(frozen=True)
class Ensemble:
    members: int
    method: str
    features: tuple[str, ...]
    perlin_scale: float
    perlin_octave: int
    perlin_x: float
    perlin_y: float
    cnop_candidates: int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    inputs: tuple[Location, ...]
    output: Location
    start_begin: datetime
    start_end: datetime
    interval_hours: int
    lead_hours: int
    draw_figures: bool
    features: tuple[str, ...]
    ensemble: Ensemble | None = None
    # What the caller sent in `config`, so the answer can echo the seed's config object.
    raw_features: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def start_times(self) -> list[datetime]:
        times, when = [], self.start_begin
        while when <= self.start_end:
            times.append(when)
            when += timedelta(hours=self.interval_hours)
        return times

    @property
    def output_leads(self) -> list[int]:
        return output_leads(self.lead_hours)

    @property
    def figure_leads(self) -> list[int]:
        return figure_leads(self.lead_hours) if self.draw_figures else []

    def config_json(self) -> dict[str, Any]:
        """The seed's config object as the answers show it (times as strings, booleans as "true")."""
        config: dict[str, Any] = {
            "start_time_begin": format_time(self.start_begin),
            "start_time_end": format_time(self.start_end),
            "start_time_interval_hours": self.interval_hours,
            "forecast_lead_hours": self.lead_hours,
            "draw_figures": "true" if self.draw_figures else "false",
            "forecast_features": self.raw_features,
        }
        if self.ensemble is not None:
            e = self.ensemble
            config.update(
                num_ensembles=e.members,
                ensemble_forecast_features=";".join(e.features),
                ensemble_noise_method=e.method,
            )
            if e.method == "perlin":
                config.update(
                    ensemble_noise_perlin_scale=e.perlin_scale,
                    ensemble_noise_perlin_octave=e.perlin_octave,
                    ensemble_noise_perlin_x=e.perlin_x,
                    ensemble_noise_perlin_y=e.perlin_y,
                )
            else:
                config["ensemble_cnop_initial_quantity"] = e.cnop_candidates
        return config


def output_leads(lead_hours: int) -> list[int]:
    leads = list(range(OUTPUT_STEP_HOURS, lead_hours + 1, OUTPUT_STEP_HOURS))
    if not leads or leads[-1] != lead_hours:
        leads.append(lead_hours)
    return leads


def figure_leads(lead_hours: int) -> list[int]:
    leads = list(range(FIGURE_STEP_HOURS, lead_hours + 1, FIGURE_STEP_HOURS))
    if not leads or leads[-1] != lead_hours:
        leads.append(lead_hours)
    return leads


def format_time(when: datetime) -> str:
    return when.strftime("%Y%m%d%H")


def feature_words(feature: str) -> str:
    """ "500:Z" as an operator reads it: "500 hPa geopotential"."""
    level, _, var = feature.partition(":")
    if level == SURFACE:
        return SURFACE_WORDS.get(var, var)
    return f"{level} hPa {VARIABLE_WORDS.get(var, var)}"


# --- the rules ------------------------------------------------------------------------------------
def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(where, "must be an object.")
    return value


def _text(value: Any, where: str, *, required: bool = True, max_length: int = 1024) -> str:
    if value is None or value == "":
        if required:
            raise ConfigError(where, "is required.")
        return ""
    if not isinstance(value, str):
        raise ConfigError(where, "must be a string.")
    if len(value) > max_length:
        raise ConfigError(where, f"must be at most {max_length} characters.")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(where, "must not hold control characters.")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ConfigError(where, "is not valid Unicode text.") from None
    return value


def _location(value: Any, where: str) -> Location:
    obj = _object(value, where)
    bucket = _text(obj.get("bucket"), f"{where}.bucket", max_length=63)
    path = _text(obj.get("path"), f"{where}.path", required=False)
    if path.startswith("/") or ".." in path.split("/"):
        raise ConfigError(f"{where}.path", "must be a relative path inside the bucket, without '..'.")
    return Location(bucket=bucket, path=path)


def _time(value: Any, where: str) -> datetime:
    # The seed's table says string; its request example sends a number (2017010100): both are taken.
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise ConfigError(where, "must be a date and hour written YYYYMMDDHH, for example 2017010100.")
    try:
        return datetime.strptime(text, "%Y%m%d%H").replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(where, f"{text} is not a real date and hour (YYYYMMDDHH).") from None


def _integer(value: Any, where: str, default: int | None, low: int, high: int, words: str) -> int:
    """An integer in [low, high]; a whole number sent as 6.0 or "6" is taken too."""
    if value is None:
        if default is None:
            raise ConfigError(where, "is required.")
        return default
    number: Any = value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise ConfigError(where, f"must be a whole number {words}.")
    return number


def _number(value: Any, where: str, default: float, test: Any, words: str) -> float:
    if value is None:
        return default
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(where, f"must be a number {words}.") from None
    if isinstance(number, bool) or not isinstance(number, int | float) or number != number or not test(number):
        raise ConfigError(where, f"must be a number {words}.")
    return float(number)


def _boolean_text(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(where, 'must be "true" or "false".')


def parse_features(value: Any, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """`Surface:U;1000:T` as ("Surface:U", "1000:T"): levels are ERA5 pressure levels (hPa), variables
    Z, Q, T, U, V aloft and P, T, U, V at the surface. Empty means the default set."""
    text = _text(value, where, required=False, max_length=4096)
    if not text.strip():
        return default
    features: list[str] = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        found = _FEATURE.fullmatch(item)
        if found is None:
            raise ConfigError(where, f"{item!r} is not level:variable (for example 500:Z or Surface:T).")
        level, var = found["level"].strip(), found["var"].strip()
        if level.lower() == SURFACE.lower():
            if var not in SURFACE_VARIABLES:
                raise ConfigError(where, f"{item!r}: at the surface the variables are P, T, U and V.")
            key = f"{SURFACE}:{var}"
        else:
            if not level.isdigit() or int(level) not in ERA5_LEVELS:
                raise ConfigError(where, f"{item!r}: {level} is not a pressure level in hPa (1000, 850, 500, ...).")
            if var not in UPPER_VARIABLES:
                raise ConfigError(where, f"{item!r}: on pressure levels the variables are Z, Q, T, U and V.")
            key = f"{int(level)}:{var}"
        if key not in features:
            features.append(key)
    if not features:
        return default
    return tuple(features)


def _ensemble(config: dict[str, Any], features: tuple[str, ...]) -> Ensemble | None:
    members = config.get("num_ensembles")
    # The seed's answer example shows num_ensembles 0 for a job without an ensemble.
    if members is None or members == 0:
        return None
    count = _integer(members, "config.num_ensembles", None, 2, 10, "of members from 2 to 10")
    method = config.get("ensemble_noise_method")
    if method is None:
        method = "perlin"
    if method not in NOISE_METHODS:
        raise ConfigError("config.ensemble_noise_method", 'must be "perlin" or "cnop".')
    where = "config.ensemble_noise_perlin_"
    return Ensemble(
        members=count,
        method=method,
        features=parse_features(
            config.get("ensemble_forecast_features"), "config.ensemble_forecast_features", features
        ),
        perlin_scale=_number(
            config.get("ensemble_noise_perlin_scale"), where + "scale", 0.1, lambda v: 0 < v < 0.5,
            "greater than 0 and less than 0.5",
        ),
        perlin_octave=_integer(
            config.get("ensemble_noise_perlin_octave"), where + "octave", 3, 1, 9, "from 1 to 9 (at least 1, below 10)"
        ),
        perlin_x=_number(
            config.get("ensemble_noise_perlin_x"), where + "x", 0.5, lambda v: 0 <= v < 1,
            "from 0 up to (not including) 1",
        ),
        perlin_y=_number(
            config.get("ensemble_noise_perlin_y"), where + "y", 0.5, lambda v: 0 <= v < 1,
            "from 0 up to (not including) 1",
        ),
        cnop_candidates=_integer(
            config.get("ensemble_cnop_initial_quantity"), "config.ensemble_cnop_initial_quantity", 50, 2, 350,
            "of candidate perturbations from 2 to 350",
        ),
    )  # fmt: skip


def parse_task(body: Any) -> TaskSpec:
    """The task body of the seed (`{name, input, output, config}`) as a TaskSpec, or ConfigError."""
    body = _object(body, "body")
    name = _text(body.get("name"), "name", max_length=NAME_MAX)
    raw_input = _object(body.get("input"), "input")
    if raw_input.get("type") != "obs":
        raise ConfigError("input.type", 'must be "obs" (the object store).')
    data = raw_input.get("data")
    if not isinstance(data, list) or not data:
        raise ConfigError("input.data", "must list at least one {bucket, path}.")
    if len(data) > 16:
        raise ConfigError("input.data", "may list at most 16 locations.")
    inputs = tuple(_location(item, f"input.data[{i}]") for i, item in enumerate(data))
    output = _location(_object(body.get("output"), "output").get("obs"), "output.obs")
    config = _object(body.get("config"), "config")
    begin = _time(config.get("start_time_begin"), "config.start_time_begin")
    end = _time(config.get("start_time_end"), "config.start_time_end")
    if end < begin:
        raise ConfigError("config.start_time_end", "must not be before start_time_begin.")
    interval = _integer(
        config.get("start_time_interval_hours"),
        "config.start_time_interval_hours",
        DEFAULT_INTERVAL_HOURS,
        1,
        24,
        "of hours from 1 to 24",
    )
    lead = _integer(
        config.get("forecast_lead_hours"),
        "config.forecast_lead_hours",
        DEFAULT_LEAD_HOURS,
        1,
        MAX_LEAD_HOURS,
        f"of hours from 1 to {MAX_LEAD_HOURS} (30 days)",
    )
    starts = int((end - begin).total_seconds() // 3600) // interval + 1
    if starts > MAX_START_TIMES:
        raise ConfigError(
            "config.start_time_end",
            f"gives {starts} forecast starts; one job runs at most {MAX_START_TIMES}: "
            "narrow the window or lengthen the interval.",
        )
    features = parse_features(config.get("forecast_features"), "config.forecast_features", DEFAULT_FEATURES)
    raw_features = config.get("forecast_features") or ""
    return TaskSpec(
        name=name,
        inputs=inputs,
        output=output,
        start_begin=begin,
        start_end=end,
        interval_hours=interval,
        lead_hours=lead,
        draw_figures=_boolean_text(config.get("draw_figures"), "config.draw_figures", True),
        features=features,
        ensemble=_ensemble(config, features),
        raw_features=raw_features if isinstance(raw_features, str) else "",
    )
