"""The Pangu-Weather engine: the four official ONNX models (Bi et al. 2023, github.com/198808xc/Pangu-Weather)
run by onnxruntime, when an operator has put them in PANGU_WEATHER_DIR (DATA_DIR/models/pangu-weather/).
The console never downloads them: the weights are CC BY-NC-SA 4.0 (no commercial use).

Each model maps a state to the state `step` hours later (1, 3, 6 or 24 h), with the official layout:
inputs `input` (5, 13, lat, lon: Z, Q, T, U, V at 1000…50 hPa) and `input_surface` (4, lat, lon: MSLP,
U10, V10, T2M), outputs `output` and `output_surface` of the same shapes, float32, latitudes 90 to -90,
longitudes from 0 east (721 by 1440 at 0.25° for the official files; the grid is read from the model,
so smaller test models work the same way).

Hierarchical temporal aggregation, as the official inference code does it (`Inference` in the
repository's pseudocode.py, whose 6 h / 24 h case is inference_iterative.py): the state at lead L is
reached from the initial state by the greedy decomposition of L, the 24 h model as often as it fits,
then the 6 h, the 3 h and the 1 h model, each restarting from the previous model's output (7 h = 6 + 1,
23 h = 6 + 6 + 6 + 3 + 1 + 1, 56 h = 24 + 24 + 6 + 1 + 1). Every prefix of that chain is itself the
greedy chain of its own lead, so each state has one parent: the state at L minus the last (smallest)
step of L's chain (`parent`), which is how the pseudocode's `input_24`, `input_6`, `input_3` and
`input` buffers pick their inputs. For a set of output leads the engine runs the model calls of every
lead those outputs descend from, in ascending lead (`schedule`): each state is computed exactly as the
official loop computes it, and when every hour is asked for the calls are the official loop's, one by
one; asking for fewer leads only leaves out calls that no asked-for lead depends on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from forecasts.engines.base import Cancelled, EngineError
from forecasts.fields import PRESSURE_LEVELS, SURFACE, SURFACE_VARIABLES, UPPER_VARIABLES, Fields, feature_key

MODEL_HOURS = (24, 6, 3, 1)  # largest first: the greedy order
INPUT_UPPER, INPUT_SURFACE = "input", "input_surface"
OUTPUT_UPPER, OUTPUT_SURFACE = "output", "output_surface"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# The official GPU scripts' CUDA setting: grow the arena by what is asked, not by doubling.
CUDA_OPTIONS = {"arena_extend_strategy": "kSameAsRequested"}

UPPER_FEATURES = tuple(feature_key(level, var) for var in UPPER_VARIABLES for level in PRESSURE_LEVELS)
SURFACE_FEATURES = tuple(feature_key(SURFACE, var) for var in SURFACE_VARIABLES)
REQUIRED = frozenset(UPPER_FEATURES + SURFACE_FEATURES)


def file_name(hours: int) -> str:
    return f"pangu_weather_{hours}.onnx"


# --- the schedule -------------------------------------------------------------------------------------
def decompose(lead: int) -> list[int]:
    """The official greedy chain of model steps to `lead` hours: 24 h as often as it fits, then 6, 3, 1."""
    chain: list[int] = []
    rest = lead
    for hours in MODEL_HOURS:
        count, rest = divmod(rest, hours)
        chain += [hours] * count
    return chain


def last_step(lead: int) -> int:
    """The model that makes the state at `lead` (> 0): the last, smallest step of its greedy chain. The
    same test as the official loop's: 24 h at multiples of 24, else 6 h at multiples of 6, else 3 h at
    multiples of 3, else 1 h."""
    return next(hours for hours in MODEL_HOURS if lead % hours == 0)


def parent(lead: int) -> int:
    return lead - last_step(lead)


@dataclass(frozen=True)
class Call:
    """One run of the `model`-hour model, from the state at lead `start` (0: the initial state)."""

    model: int
    start: int
    end: int


def schedule(leads: Iterable[int]) -> list[Call]:
    """Every model call the states at `leads` need, in ascending lead; each state once."""
    needed: set[int] = set()
    for lead in leads:
        while lead > 0 and lead not in needed:
            needed.add(lead)
            lead = parent(lead)
    return [Call(model=last_step(lead), start=parent(lead), end=lead) for lead in sorted(needed)]


# --- onnxruntime ----------------------------------------------------------------------------------------
def providers() -> list[Any]:
    """CUDA when this onnxruntime build offers it (with CPU behind it for any operator CUDA lacks), else CPU."""
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        return [(CUDA, dict(CUDA_OPTIONS)), CPU]
    return [CPU]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # As the official scripts set them: no arena, no memory pattern, no buffer reuse; with 1 GB models
    # and 300 MB states these keep the peak resident memory down at a small cost in speed.
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.enable_mem_reuse = False
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers())
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise EngineError(f"{path.name} cannot be loaded by onnxruntime: {exc}") from None


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _grid_of(name: str, session: Any) -> tuple[int | None, int | None]:
    """The (lat, lon) size the model declares, after checking its inputs and outputs are the official
    ones (None for a dimension it leaves free)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if set(inputs) != {INPUT_UPPER, INPUT_SURFACE} or not {OUTPUT_UPPER, OUTPUT_SURFACE} <= outputs:
        raise EngineError(
            f"{name} is not a Pangu-Weather model: its inputs are {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"expected inputs {INPUT_UPPER!r}, {INPUT_SURFACE!r} and outputs {OUTPUT_UPPER!r}, {OUTPUT_SURFACE!r}"
        )
    upper, surface = _dims(inputs[INPUT_UPPER].shape), _dims(inputs[INPUT_SURFACE].shape)
    if (
        len(upper) != 4
        or len(surface) != 3
        or upper[:2] not in ((len(UPPER_VARIABLES), len(PRESSURE_LEVELS)), (None, None))
        or surface[0] not in (len(SURFACE_VARIABLES), None)
    ):
        shapes = f"{list(inputs[INPUT_UPPER].shape)} and {list(inputs[INPUT_SURFACE].shape)}"
        raise EngineError(
            f"{name}: its inputs have shapes {shapes}; "
            "expected (5, 13, latitudes, longitudes) and (4, latitudes, longitudes)"
        )
    for kind in (inputs[INPUT_UPPER].type, inputs[INPUT_SURFACE].type):
        if kind != "tensor(float)":
            raise EngineError(f"{name}: its inputs are {kind}; Pangu-Weather takes float32 (tensor(float))")
    lat = upper[2] if upper[2] is not None else surface[1]
    lon = upper[3] if upper[3] is not None else surface[2]
    return lat, lon


# --- the engine -----------------------------------------------------------------------------------------
def _describe_missing(missing: set[str]) -> str:
    """'Q at 1000, 925 hPa; Surface:T' rather than a list of 69 keys."""
    parts = []
    for var in UPPER_VARIABLES:
        levels = [level for level in PRESSURE_LEVELS if feature_key(level, var) in missing]
        if len(levels) == len(PRESSURE_LEVELS):
            parts.append(f"{var} at all 13 levels")
        elif levels:
            parts.append(f"{var} at {', '.join(str(level) for level in levels)} hPa")
    parts += [key for key in SURFACE_FEATURES if key in missing]
    return "; ".join(parts)


class PanguEngine:
    name = "pangu-weather"
    title = "Pangu-Weather (official ONNX models, onnxruntime)"

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory

    @property
    def directory(self) -> Path:
        if self._directory is not None:
            return self._directory
        from django.conf import settings

        return Path(settings.PANGU_WEATHER_DIR)

    def paths(self) -> dict[int, Path]:
        return {hours: self.directory / file_name(hours) for hours in MODEL_HOURS}

    def availability(self) -> tuple[bool, str]:
        # Only the files are looked at: opening a 1.1 GB model to list engines would cost seconds and memory.
        missing = [path.name for path in self.paths().values() if not path.is_file() or path.stat().st_size == 0]
        if missing:
            return False, (
                f"the official model files are not installed: {', '.join(missing)} missing from {self.directory}. "
                "An operator downloads them from the Pangu-Weather repository (github.com/198808xc/Pangu-Weather; "
                "CC BY-NC-SA 4.0, no commercial use) and puts all four there."
            )
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed on this console (pip install -r requirements.txt)."
        return True, ""

    def producible(self, inputs: Iterable[str]) -> set[str]:
        """Everything it steps, when the input holds all of it; nothing otherwise (the models take the
        whole state)."""
        return set(REQUIRED) if REQUIRED <= set(inputs) else set()

    def missing_inputs(self, inputs: Iterable[str]) -> str:
        """What the input lacks, in words ('' when nothing)."""
        return _describe_missing(set(REQUIRED - set(inputs)))

    def forecast(
        self,
        initial: Fields,
        lead_hours: Sequence[int],
        features: Sequence[str],
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Iterator[Fields]:
        leads = list(lead_hours)
        if not leads or leads != sorted(set(leads)) or leads[0] < 1:
            raise EngineError("Lead hours must be increasing whole hours from 1.")
        if unknown := [f for f in features if f not in REQUIRED]:
            raise EngineError(f"Pangu-Weather does not produce {', '.join(unknown)}.")
        if missing := _describe_missing(set(REQUIRED - set(initial.data))):
            raise EngineError(f"Pangu-Weather needs the whole state; the input lacks {missing}.")
        usable, reason = self.availability()
        if not usable:
            raise EngineError(f"Pangu-Weather is not available: {reason}")
        _check_global_grid(initial)
        calls = schedule(leads)
        sessions = self._sessions(sorted({c.model for c in calls}, key=lambda h: -h), initial)
        upper, surface = _to_arrays(initial)
        states: dict[int, tuple[np.ndarray, np.ndarray]] = {0: (upper, surface)}
        # The last call that starts from each state: after it the state is dropped (a 0.25° state is 290 MB).
        last_use = {c.start: i for i, c in enumerate(calls)}
        wanted = set(leads)
        for i, call in enumerate(calls):
            if should_stop is not None and should_stop():
                raise Cancelled
            start_upper, start_surface = states[call.start]
            try:
                out_upper, out_surface = sessions[call.model].run(
                    [OUTPUT_UPPER, OUTPUT_SURFACE], {INPUT_UPPER: start_upper, INPUT_SURFACE: start_surface}
                )
            except Exception as exc:  # onnxruntime's own error types (out of memory, a CUDA fault, ...)
                raise EngineError(
                    f"{file_name(call.model)} failed stepping from +{call.start} h to +{call.end} h: {exc}"
                ) from None
            if not (np.all(np.isfinite(out_upper)) and np.all(np.isfinite(out_surface))):
                raise EngineError(
                    f"{file_name(call.model)} returned values that are not numbers (NaN or infinite) "
                    f"stepping from +{call.start} h to +{call.end} h."
                )
            if last_use[call.start] == i:
                del states[call.start]
            if call.end in last_use:
                states[call.end] = (out_upper, out_surface)
            if progress is not None:
                progress((i + 1) / len(calls))
            if call.end in wanted:
                yield _to_fields(initial, call.end, out_upper, out_surface, features)

    def _sessions(self, models: list[int], initial: Fields) -> dict[int, Any]:
        """One session per model the schedule uses, each checked against the official layout and the
        input's grid before any call is made."""
        sessions: dict[int, Any] = {}
        nlat, nlon = len(initial.lat), len(initial.lon)
        for hours in models:
            path = self.paths()[hours]
            session = _session(path)
            lat, lon = _grid_of(path.name, session)
            if (lat is not None and lat != nlat) or (lon is not None and lon != nlon):
                raise EngineError(
                    f"{path.name} runs on a grid of {lat} latitudes by {lon} longitudes (0.25°: 721 by 1440); "
                    f"the input is {nlat} by {nlon}. Give it the model's grid."
                )
            sessions[hours] = session
        return sessions


def _check_global_grid(initial: Fields) -> None:
    """The models know no coordinates: the input must be the global grid they were trained on, poles
    included, north first, from 0° east (inputs.py normalises NetCDF files to that order)."""
    nlat, nlon = len(initial.lat), len(initial.lon)
    expected_lat = np.linspace(90.0, -90.0, nlat)
    expected_lon = np.arange(nlon) * (360.0 / nlon)
    if not (np.allclose(initial.lat, expected_lat, atol=1e-6) and np.allclose(initial.lon, expected_lon, atol=1e-6)):
        raise EngineError(
            "Pangu-Weather takes a global grid with both poles, latitudes 90 to -90 and longitudes from 0° east; "
            f"the input's {nlat} latitudes run {initial.lat[0]:g} to {initial.lat[-1]:g} and its {nlon} longitudes "
            f"{initial.lon[0]:g} to {initial.lon[-1]:g}."
        )


def _to_arrays(initial: Fields) -> tuple[np.ndarray, np.ndarray]:
    nlat, nlon = len(initial.lat), len(initial.lon)
    upper = np.empty((len(UPPER_VARIABLES), len(PRESSURE_LEVELS), nlat, nlon), dtype=np.float32)
    for v, var in enumerate(UPPER_VARIABLES):
        for k, level in enumerate(PRESSURE_LEVELS):
            upper[v, k] = initial.data[feature_key(level, var)]
    surface = np.empty((len(SURFACE_VARIABLES), nlat, nlon), dtype=np.float32)
    for s, var in enumerate(SURFACE_VARIABLES):
        surface[s] = initial.data[feature_key(SURFACE, var)]
    return upper, surface


def _to_fields(initial: Fields, lead: int, upper: np.ndarray, surface: np.ndarray, features: Sequence[str]) -> Fields:
    data = {}
    for feature in features:
        level, _, var = feature.partition(":")
        if level == SURFACE:
            values = surface[SURFACE_VARIABLES.index(var)]
        else:
            values = upper[UPPER_VARIABLES.index(var), PRESSURE_LEVELS.index(int(level))]
        data[feature] = np.asarray(values, dtype=np.float64)
    return Fields(time=initial.time + timedelta(hours=lead), lat=initial.lat.copy(), lon=initial.lon.copy(), data=data)
