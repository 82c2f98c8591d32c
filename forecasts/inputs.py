"""Initial states for the forecast jobs, read from an input location (a bucket and a path in the object
store) into `Fields`.

An input location is a folder (a key prefix) holding any mix of:

- NetCDF files (`*.nc`, `*.nc4`, `*.netcdf`, any name, at any depth except inside the folders below),
  classic or NetCDF-4, each holding one or several times, with ERA5/CF names: `z`, `q`, `t`, `u`, `v`
  on pressure levels (dimension `level`, `isobaricInhPa`, `pressure_level` or `plev`; hPa, or Pa when
  its units say so) and `msl`, `u10`, `v10`, `t2m` at the surface; latitude `latitude` or `lat`,
  longitude `longitude` or `lon`, time `valid_time` or `time` (a scalar time is one time). An ensemble
  dimension (`number`, `realization`, `member`) is reduced to member 0, the control; any other extra
  dimension must have length 1.
- Pangu-Weather pairs in folders named by their start time, `<YYYYMMDDHH>/input_upper.npy` (5, 13, lat,
  lon: Z, Q, T, U, V at 1000…50 hPa) and `<YYYYMMDDHH>/input_surface.npy` (4, lat, lon: MSLP, U10, V10,
  T2M). The arrays carry no coordinates: they are taken as a global regular grid with both poles,
  north first, from 0° east (the official 0.25° grid is 721 by 1440).

The path may also name one NetCDF file. For a start time the variables of every file holding that time
are merged (a feature two sources hold is taken from the npy pair, else the first NetCDF file in key
order); their grids must agree. Grids
must be regular (evenly spaced latitudes and longitudes); latitudes are flipped to run north to south
and longitudes normalised to [0, 360) and sorted. Units are ERA5's (forecasts/fields.py); geopotential
given in metres (`m`, `gpm`) is multiplied by g = 9.80665, pressure in hPa by 100, temperature in °C
shifted to kelvin. Anything missing or malformed raises `InputError` with a message naming the file.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from forecasts.fields import PRESSURE_LEVELS, SURFACE, SURFACE_VARIABLES, UPPER_VARIABLES, Array, Fields, feature_key
from forecasts.storage import ObjectStore, StorageError, join_key

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")
UPPER_FILE = "input_upper.npy"
SURFACE_FILE = "input_surface.npy"
PAIR_FOLDER = re.compile(r"\d{10}")  # YYYYMMDDHH
G0 = 9.80665  # standard gravity, m s-2 (ERA5's geopotential = g0 x geopotential height)

TIME_NAMES = ("valid_time", "time")
LAT_NAMES = ("latitude", "lat")
LON_NAMES = ("longitude", "lon")
LEVEL_NAMES = ("level", "isobaricInhPa", "pressure_level", "plev")
MEMBER_NAMES = ("number", "realization", "member")
# ERA5 short name -> the variable of a feature name.
UPPER_NAMES = {"z": "Z", "q": "Q", "t": "T", "u": "U", "v": "V"}
SURFACE_NAMES = {"msl": "P", "u10": "U", "v10": "V", "t2m": "T"}

# Units accepted per ERA5 name: a factor and an offset to ERA5's units. Missing units are taken as ERA5's.
_GEOPOTENTIAL = {"m**2 s**-2": (1.0, 0.0), "m2 s-2": (1.0, 0.0), "m^2/s^2": (1.0, 0.0), "m2/s2": (1.0, 0.0)}
_GEOPOTENTIAL |= {"m": (G0, 0.0), "gpm": (G0, 0.0)}
_TEMPERATURE = {"k": (1.0, 0.0), "degc": (1.0, 273.15), "celsius": (1.0, 273.15), "c": (1.0, 273.15)}
_WIND = {"m s**-1": (1.0, 0.0), "m s-1": (1.0, 0.0), "m/s": (1.0, 0.0)}
_HUMIDITY = {"kg kg**-1": (1.0, 0.0), "kg kg-1": (1.0, 0.0), "kg/kg": (1.0, 0.0), "1": (1.0, 0.0)}
_PRESSURE = {"pa": (1.0, 0.0), "hpa": (100.0, 0.0), "mb": (100.0, 0.0), "mbar": (100.0, 0.0)}
UNITS: dict[str, dict[str, tuple[float, float]]] = {
    "z": _GEOPOTENTIAL,
    "t": _TEMPERATURE,
    "t2m": _TEMPERATURE,
    "u": _WIND,
    "v": _WIND,
    "u10": _WIND,
    "v10": _WIND,
    "q": _HUMIDITY,
    "msl": _PRESSURE,
}


class InputError(Exception):
    """The input location cannot give the initial state asked for; the message says why in plain words."""


def upper_features() -> list[str]:
    return [feature_key(level, var) for var in UPPER_VARIABLES for level in PRESSURE_LEVELS]


def surface_features() -> list[str]:
    return [feature_key(SURFACE, var) for var in SURFACE_VARIABLES]


def format_time(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


def pangu_grid(nlat: int, nlon: int) -> tuple[Array, Array]:
    """The grid an npy pair is taken to be on: both poles, north first, from 0° east."""
    return np.linspace(90.0, -90.0, nlat), np.arange(nlon, dtype=np.float64) * (360.0 / nlon)


# --- grids --------------------------------------------------------------------------------------------
def _evenly_spaced(values: Array) -> bool:
    if len(values) < 3:
        return True
    steps = np.diff(values)
    return bool(np.allclose(steps, steps[0], rtol=1e-4, atol=1e-6))


@dataclass(frozen=True)
class _Grid:
    """How to turn a file's (lat, lon) array into Fields order: row and column permutations."""

    lat: Array
    lon: Array
    rows: npt.NDArray[np.intp]  # indices into the file's latitudes, north to south
    cols: npt.NDArray[np.intp]  # indices into the file's longitudes, ascending in [0, 360)

    def apply(self, values: Array) -> Array:
        return np.ascontiguousarray(values[np.ix_(self.rows, self.cols)], dtype=np.float64)

    def same_as(self, other: _Grid) -> bool:
        return (
            self.lat.shape == other.lat.shape
            and self.lon.shape == other.lon.shape
            and bool(np.allclose(self.lat, other.lat, atol=1e-6) and np.allclose(self.lon, other.lon, atol=1e-6))
        )


def _grid(where: str, lat: Array, lon: Array) -> _Grid:
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or len(lat) < 2 or len(lon) < 2:
        raise InputError(f"{where}: latitude and longitude must be one-dimensional with at least two values each")
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise InputError(f"{where}: the latitudes or longitudes contain missing values")
    if np.any(np.abs(lat) > 90 + 1e-9):
        raise InputError(f"{where}: latitudes must lie between -90 and 90")
    rows = np.argsort(-lat, kind="stable")
    lat_sorted = lat[rows]
    if np.any(np.diff(lat_sorted) >= 0):
        raise InputError(f"{where}: a latitude appears twice")
    if not _evenly_spaced(lat_sorted):
        raise InputError(f"{where}: the latitudes are not evenly spaced (a regular latitude-longitude grid is needed)")
    wrapped = np.mod(lon, 360.0)
    wrapped[np.isclose(wrapped, 360.0)] = 0.0
    cols = np.argsort(wrapped, kind="stable")
    lon_sorted = wrapped[cols]
    # A grid that lists a meridian twice (0 and 360, or -180 and 180) keeps the first.
    keep = np.concatenate([[True], ~np.isclose(np.diff(lon_sorted), 0.0)])
    cols, lon_sorted = cols[keep], lon_sorted[keep]
    if not _evenly_spaced(lon_sorted):
        raise InputError(f"{where}: the longitudes are not evenly spaced (a regular latitude-longitude grid is needed)")
    return _Grid(lat=lat_sorted, lon=lon_sorted, rows=rows, cols=cols)


def _check_finite(where: str, feature: str, when: datetime, values: Array) -> None:
    if not np.all(np.isfinite(values)):
        count = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise InputError(
            f"{where}: {feature} at {format_time(when)} has {count} missing or not-a-number values (NaN); "
            "an initial state must be complete"
        )


# --- NetCDF -------------------------------------------------------------------------------------------
def _open_netcdf(where: str, path: Path) -> Any:
    import netCDF4

    try:
        dataset = netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise InputError(f"{where}: not a readable NetCDF file ({exc})") from None
    dataset.set_auto_mask(True)
    return dataset


def _find(names: tuple[str, ...], variables: Any) -> str | None:
    return next((n for n in names if n in variables), None)


def _decode_times(where: str, var: Any) -> list[datetime]:
    import cftime

    units = getattr(var, "units", None)
    if not units:
        raise InputError(f"{where}: the time variable {var.name!r} has no units (such as 'hours since 1970-01-01')")
    raw = np.ma.filled(np.ma.atleast_1d(var[:]).astype(np.float64), np.nan)
    if not np.all(np.isfinite(raw)):
        raise InputError(f"{where}: the time variable {var.name!r} has missing values")
    calendar = getattr(var, "calendar", "standard")
    try:
        decoded = cftime.num2date(raw, units, calendar=calendar, only_use_cftime_datetimes=False)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: cannot read the times of {var.name!r} ({exc})") from None
    times = []
    for value in np.atleast_1d(decoded):
        if not isinstance(value, datetime):
            raise InputError(f"{where}: the calendar {calendar!r} of {var.name!r} is not the Gregorian calendar")
        # A plain datetime (cftime hands out its own subclass), in UTC.
        plain = datetime(*value.timetuple()[:6], value.microsecond, tzinfo=value.tzinfo or UTC)
        times.append(plain.astimezone(UTC))
    return times


def _levels_hpa(where: str, var: Any) -> list[int]:
    values = np.ma.filled(np.atleast_1d(var[:]).astype(np.float64), np.nan)
    units = str(getattr(var, "units", "")).strip().lower()
    if units == "pa" or (not units and np.nanmax(values) > 1100):
        values = values / 100.0
    rounded = np.round(values)
    if not np.all(np.isfinite(values)) or not np.allclose(values, rounded, atol=1e-3):
        raise InputError(f"{where}: the pressure levels of {var.name!r} must be whole hPa, not {values.tolist()}")
    return [int(v) for v in rounded]


def _units(where: str, name: str, var: Any) -> tuple[float, float]:
    units = str(getattr(var, "units", "")).strip()
    if not units:
        return 1.0, 0.0
    accepted = UNITS[name]
    key = units.lower() if units.lower() in accepted else units
    if key not in accepted:
        raise InputError(
            f"{where}: the variable {name!r} has units {units!r}; expected {next(iter(accepted))!r} (ERA5's units)"
        )
    return accepted[key]


@dataclass
class _NetcdfFile:
    key: str
    where: str
    dataset: Any
    times: list[datetime]
    time_dim: str | None
    grid: _Grid
    lat_dim: str
    lon_dim: str
    level_dim: str | None
    levels: list[int]
    variables: dict[str, str]  # ERA5 name present -> "upper" or "surface"

    def features(self) -> set[str]:
        found: set[str] = set()
        for name, kind in self.variables.items():
            if kind == "upper":
                found.update(feature_key(level, UPPER_NAMES[name]) for level in self.levels)
            else:
                found.add(feature_key(SURFACE, SURFACE_NAMES[name]))
        return found

    def read(self, when: datetime, wanted: set[str] | None) -> dict[str, Array]:
        index = self.times.index(when)
        out: dict[str, Array] = {}
        for name, kind in self.variables.items():
            keys = (
                [feature_key(level, UPPER_NAMES[name]) for level in self.levels]
                if kind == "upper"
                else [feature_key(SURFACE, SURFACE_NAMES[name])]
            )
            if wanted is not None and not wanted.intersection(keys):
                continue
            cube = self._select(name, index)  # (level, lat, lon) or (lat, lon)
            factor, offset = _units(self.where, name, self.dataset.variables[name])
            for i, key in enumerate(keys):
                if wanted is not None and key not in wanted:
                    continue
                values = self.grid.apply(cube[i] if kind == "upper" else cube) * factor + offset
                _check_finite(self.where, key, when, values)
                out[key] = values
        return out

    def _select(self, name: str, time_index: int) -> Array:
        var = self.dataset.variables[name]
        index: list[Any] = []
        order: list[str] = []
        for dim in var.dimensions:
            if dim == self.time_dim:
                index.append(time_index)
            elif dim in (self.lat_dim, self.lon_dim, self.level_dim):
                index.append(slice(None))
                order.append(dim)
            elif dim in MEMBER_NAMES:
                index.append(self._control_index(dim))
            else:
                index.append(0)  # length 1, checked when the file was opened
        data = var[tuple(index)]
        values = np.ma.filled(np.ma.asarray(data, dtype=np.float64), np.nan)
        wanted_order = [d for d in (self.level_dim, self.lat_dim, self.lon_dim) if d in order]
        return np.transpose(values, [order.index(d) for d in wanted_order])

    def _control_index(self, dim: str) -> int:
        if dim in self.dataset.variables:
            members = np.atleast_1d(self.dataset.variables[dim][:])
            hits = np.flatnonzero(members == 0)
            if len(hits):
                return int(hits[0])
        return 0


def _scan_netcdf(where: str, key: str, dataset: Any) -> _NetcdfFile:
    variables = dataset.variables
    lat_name, lon_name = _find(LAT_NAMES, variables), _find(LON_NAMES, variables)
    if lat_name is None or lon_name is None:
        raise InputError(f"{where}: no latitude or longitude coordinate (expected 'latitude'/'lat', 'longitude'/'lon')")
    grid = _grid(where, np.ma.filled(variables[lat_name][:], np.nan), np.ma.filled(variables[lon_name][:], np.nan))
    lat_dim, lon_dim = variables[lat_name].dimensions[0], variables[lon_name].dimensions[0]

    present = {n: "upper" for n in UPPER_NAMES if n in variables} | {
        n: "surface" for n in SURFACE_NAMES if n in variables
    }
    if not present:
        names = ", ".join(list(UPPER_NAMES) + list(SURFACE_NAMES))
        raise InputError(f"{where}: none of the variables {names} is in the file (ERA5 short names are expected)")

    time_name = None
    data_dims = {d for n in present for d in variables[n].dimensions}
    for candidate in TIME_NAMES:
        var = variables.get(candidate)
        if var is not None and (var.ndim == 0 or (var.ndim == 1 and var.dimensions[0] in data_dims)):
            time_name = candidate
            break
    if time_name is None:
        raise InputError(f"{where}: no time coordinate (expected 'valid_time' or 'time', one value per time)")
    time_var = variables[time_name]
    times = _decode_times(where, time_var)
    time_dim = time_var.dimensions[0] if time_var.ndim == 1 else None
    if len(set(times)) != len(times):
        raise InputError(f"{where}: a time appears twice in {time_name!r}")

    level_name = _find(LEVEL_NAMES, variables)
    level_dim = variables[level_name].dimensions[0] if level_name else None
    levels = _levels_hpa(where, variables[level_name]) if level_name else []

    for name, kind in present.items():
        dims = variables[name].dimensions
        expected = {lat_dim, lon_dim} | ({level_dim} if kind == "upper" else set())
        if kind == "upper" and level_dim not in dims:
            raise InputError(
                f"{where}: the variable {name!r} has no pressure-level dimension ({', '.join(LEVEL_NAMES)})"
            )
        missing = {str(d) for d in expected - set(dims) if d is not None}
        if missing:
            raise InputError(f"{where}: the variable {name!r} lacks the dimension(s) {', '.join(sorted(missing))}")
        if time_dim is not None and time_dim not in dims:
            raise InputError(f"{where}: the variable {name!r} has no {time_dim!r} dimension")
        for dim, size in zip(dims, variables[name].shape, strict=True):
            if dim in expected or dim == time_dim or dim in MEMBER_NAMES:
                continue
            if size != 1:
                raise InputError(f"{where}: the variable {name!r} has an unexpected dimension {dim!r} of length {size}")
        _units(where, name, variables[name])  # unknown units are refused when the file is opened
    return _NetcdfFile(
        key=key,
        where=where,
        dataset=dataset,
        times=times,
        time_dim=time_dim,
        grid=grid,
        lat_dim=lat_dim,
        lon_dim=lon_dim,
        level_dim=level_dim,
        levels=levels,
        variables=present,
    )


# --- Pangu-Weather npy pairs --------------------------------------------------------------------------
@dataclass
class _NpyPair:
    folder: str  # key of the <YYYYMMDDHH> folder
    when: datetime

    def features(self) -> set[str]:
        return set(upper_features()) | set(surface_features())


def _load_npy(stack: contextlib.ExitStack, store: ObjectStore, bucket: str, key: str) -> Any:
    """The array, memory-mapped: of the official 0.25° pair (270 MB upper) only the fields asked for are
    read."""
    where = store.location(bucket, key)
    try:
        local = stack.enter_context(store.local_path(bucket, key))
    except StorageError as exc:
        raise InputError(f"{where}: cannot be read ({exc})") from None
    try:
        # allow_pickle=False: a pickled (object) array would run the file's code in the worker.
        array = np.load(local, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{where}: not a plain numeric .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{where}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise InputError(f"{where}: not an array of numbers")
    return array


def _read_pair(
    store: ObjectStore, bucket: str, pair: _NpyPair, wanted: set[str] | None
) -> tuple[_Grid, dict[str, Array]]:
    with contextlib.ExitStack() as stack:
        return _read_pair_files(stack, store, bucket, pair, wanted)


def _read_pair_files(
    stack: contextlib.ExitStack, store: ObjectStore, bucket: str, pair: _NpyPair, wanted: set[str] | None
) -> tuple[_Grid, dict[str, Array]]:
    upper_key, surface_key = join_key(pair.folder, UPPER_FILE), join_key(pair.folder, SURFACE_FILE)
    upper = _load_npy(stack, store, bucket, upper_key)
    surface = _load_npy(stack, store, bucket, surface_key)
    upper_where, surface_where = store.location(bucket, upper_key), store.location(bucket, surface_key)
    if upper.ndim != 4 or upper.shape[:2] != (len(UPPER_VARIABLES), len(PRESSURE_LEVELS)):
        raise InputError(
            f"{upper_where}: has shape {upper.shape}; expected (5, 13, latitudes, longitudes): Z, Q, T, U, V "
            "at 1000…50 hPa"
        )
    if surface.ndim != 3 or surface.shape[0] != len(SURFACE_VARIABLES):
        raise InputError(
            f"{surface_where}: has shape {surface.shape}; expected (4, latitudes, longitudes): MSLP, U10, V10, T2M"
        )
    if upper.shape[2:] != surface.shape[1:]:
        raise InputError(
            f"{store.location(bucket, pair.folder)}/: the upper-air grid {upper.shape[2:]} and the surface grid "
            f"{surface.shape[1:]} differ"
        )
    nlat, nlon = surface.shape[1:]
    if nlat < 2 or nlon < 2:
        raise InputError(f"{surface_where}: a grid of {nlat} × {nlon} points is too small")
    lat, lon = pangu_grid(nlat, nlon)
    grid = _Grid(lat=lat, lon=lon, rows=np.arange(nlat), cols=np.arange(nlon))
    out: dict[str, Array] = {}
    for v, var in enumerate(UPPER_VARIABLES):
        for k, level in enumerate(PRESSURE_LEVELS):
            key = feature_key(level, var)
            if wanted is None or key in wanted:
                values = np.array(upper[v, k], dtype=np.float64)
                _check_finite(upper_where, key, pair.when, values)
                out[key] = values
    for s, var in enumerate(SURFACE_VARIABLES):
        key = feature_key(SURFACE, var)
        if wanted is None or key in wanted:
            values = np.array(surface[s], dtype=np.float64)
            _check_finite(surface_where, key, pair.when, values)
            out[key] = values
    return grid, out


# --- an input location --------------------------------------------------------------------------------
@dataclass
class InputSet:
    """The initial states an input location offers. Open it with `open_inputs()` (a context: NetCDF files
    stay open, and downloaded from S3 once, for its life)."""

    store: ObjectStore
    bucket: str
    path: str
    netcdf: list[_NetcdfFile] = field(default_factory=list)
    pairs: dict[datetime, _NpyPair] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return self.store.location(self.bucket, self.path)

    def times(self) -> list[datetime]:
        found = set(self.pairs)
        for nc in self.netcdf:
            found.update(nc.times)
        return sorted(found)

    def features_at(self, when: datetime) -> set[str]:
        found: set[str] = set()
        if when in self.pairs:
            found |= self.pairs[when].features()
        for nc in self.netcdf:
            if when in nc.times:
                found |= nc.features()
        if not found:
            raise InputError(self._no_time_message(when))
        return found

    def features(self, times: Iterable[datetime] | None = None) -> list[str]:
        """The features present at every one of `times` (default: every time the location holds)."""
        chosen = list(times) if times is not None else self.times()
        if not chosen:
            raise InputError(f"{self.where}: holds no initial state (no NetCDF file nor YYYYMMDDHH/ npy pair)")
        common: set[str] | None = None
        for when in chosen:
            here = self.features_at(_utc(when))
            common = here if common is None else common & here
        return sorted(common or set())

    def read(self, when: datetime, features: Iterable[str] | None = None) -> Fields:
        """The initial state at `when`: every feature the location holds then, or only `features` (each of
        which must be present)."""
        when = _utc(when)
        wanted = set(features) if features is not None else None
        available = self.features_at(when)
        if wanted is not None and (missing := sorted(wanted - available)):
            raise InputError(f"{self.where}: no {', '.join(missing)} at {format_time(when)} in the input")
        sources: list[tuple[str, _Grid, dict[str, Array]]] = []
        have: set[str] = set()
        if when in self.pairs:
            pair = self.pairs[when]
            pair_grid, pair_data = _read_pair(self.store, self.bucket, pair, wanted)
            sources.append((self.store.location(self.bucket, pair.folder) + "/", pair_grid, pair_data))
            have |= pair_data.keys()
        for nc in self.netcdf:
            if when in nc.times:
                still = None if wanted is None else wanted - have
                if still is not None and not still:
                    continue
                nc_data = nc.read(when, still)
                sources.append((nc.where, nc.grid, nc_data))
                have |= nc_data.keys()
        grid: _Grid | None = None
        first = ""
        data: dict[str, Array] = {}
        for where, source_grid, source_data in sources:
            if grid is None:
                grid, first = source_grid, where
            elif not grid.same_as(source_grid):
                raise InputError(
                    f"{where}: its grid ({len(source_grid.lat)} × {len(source_grid.lon)}) differs from that of "
                    f"{first} ({len(grid.lat)} × {len(grid.lon)}) for the same time"
                )
            for key, values in source_data.items():
                data.setdefault(key, values)
        assert grid is not None
        return Fields(time=when, lat=grid.lat.copy(), lon=grid.lon.copy(), data=data)

    def _no_time_message(self, when: datetime) -> str:
        held = self.times()
        if not held:
            return f"{self.where}: holds no initial state"
        span = format_time(held[0]) if len(held) == 1 else f"{format_time(held[0])} … {format_time(held[-1])}"
        return f"{self.where}: no input for {format_time(when)}; the location holds {len(held)} time(s), {span}"


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@contextlib.contextmanager
def open_inputs(store: ObjectStore, bucket: str, path: str) -> Iterator[InputSet]:
    """Scan an input location: every NetCDF file is opened and checked (names, grid, times), npy pairs
    are found by their folder names (their arrays are checked when read)."""
    path = path.strip("/")
    location = store.location(bucket, path)
    try:
        if path.lower().endswith(NETCDF_SUFFIXES) and store.exists(bucket, path):
            keys = [path]
        else:
            keys = store.list_keys(bucket, f"{path}/" if path else "")
    except StorageError as exc:
        raise InputError(f"{location}: cannot be listed ({exc})") from None
    if not keys:
        raise InputError(f"{location}: nothing is there (no such file or folder)")
    inputs = InputSet(store=store, bucket=bucket, path=path)
    pair_files: dict[str, set[str]] = {}
    netcdf_keys = []
    for key in keys:
        parts = key[len(path) + 1 :].split("/") if path and key != path else key.split("/")
        if len(parts) >= 2 and PAIR_FOLDER.fullmatch(parts[-2]) and parts[-1] in (UPPER_FILE, SURFACE_FILE):
            pair_files.setdefault(key.rpartition("/")[0], set()).add(parts[-1])
        elif key.lower().endswith(NETCDF_SUFFIXES):
            netcdf_keys.append(key)
    for folder, names in sorted(pair_files.items()):
        stamp = folder.rpartition("/")[2]
        try:
            when = datetime.strptime(stamp, "%Y%m%d%H").replace(tzinfo=UTC)
        except ValueError:
            raise InputError(f"{store.location(bucket, folder)}/: the folder name is not a time YYYYMMDDHH") from None
        if names != {UPPER_FILE, SURFACE_FILE}:
            lacking = ({UPPER_FILE, SURFACE_FILE} - names).pop()
            raise InputError(f"{store.location(bucket, folder)}/: {lacking} is missing (npy inputs come in pairs)")
        if when in inputs.pairs:
            raise InputError(f"{location}: two npy pairs for {format_time(when)}")
        inputs.pairs[when] = _NpyPair(folder=folder, when=when)
    with contextlib.ExitStack() as stack:
        for key in netcdf_keys:
            where = store.location(bucket, key)
            try:
                local = stack.enter_context(store.local_path(bucket, key))
            except StorageError as exc:
                raise InputError(f"{where}: cannot be read ({exc})") from None
            dataset = _open_netcdf(where, local)
            stack.callback(dataset.close)
            inputs.netcdf.append(_scan_netcdf(where, key, dataset))
        yield inputs


def read_initial_state(
    store: ObjectStore, bucket: str, path: str, when: datetime, features: Iterable[str] | None = None
) -> Fields:
    """The initial state at `when` from the input location (all its features, or only `features`)."""
    with open_inputs(store, bucket, path) as inputs:
        return inputs.read(when, features)


def available_times(store: ObjectStore, bucket: str, path: str) -> list[datetime]:
    with open_inputs(store, bucket, path) as inputs:
        return inputs.times()


def available_features(
    store: ObjectStore, bucket: str, path: str, times: Iterable[datetime] | None = None
) -> list[str]:
    """The features the location holds at every one of `times` (default: at every time it holds). What an
    engine can produce from them is the engine's to say (it may derive winds from heights, say)."""
    with open_inputs(store, bucket, path) as inputs:
        return inputs.features(times)
