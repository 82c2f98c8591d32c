"""A forecast run's NetCDF file and its area means.

One NetCDF-4 file per forecast start time, in ERA5's names and units so that `forecasts.inputs` reads
it back as an initial state (a forecast's last step can start the next job):

- dimensions `time` (the valid times of the output steps), `level` (hPa, the pressure levels any
  requested upper-air feature names, top down), `latitude` (north to south) and `longitude` (0 to
  360 east);
- coordinates `time` (hours since 1970-01-01, proleptic Gregorian, as the CDS writes ERA5),
  `lead_time(time)` in hours (CF `forecast_period`) and the scalar `forecast_reference_time`, the
  start time;
- upper-air variables `z`, `q`, `t`, `u`, `v` (time, level, latitude, longitude) and surface variables
  `msl`, `t2m`, `u10`, `v10` (time, latitude, longitude), float32, zlib-compressed, with CF
  `standard_name`, `units` and `long_name`. NetCDF gives every variable of a file one `level`
  dimension, so an upper-air variable requested at fewer levels than another (`500:U` beside
  `850:Z`) holds `_FillValue` at the levels not requested for it.

The file is written beside its final path under a temporary name and renamed into place, so a reader
sees the whole file or none, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from forecasts.fields import SURFACE, Fields

CONVENTIONS = "CF-1.8"
TIME_UNITS = "hours since 1970-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FILL_VALUE = np.float32(9.96921e36)  # netCDF's default fill for float32, written out so readers see it
COMPRESSION_LEVEL = 4  # zlib with byte shuffle: the demo's 168 h job (6 features, 3° grid) is 3.4 MB, in 0.15 s


@dataclass(frozen=True)
class Variable:
    name: str  # ERA5 short name
    standard_name: str  # CF
    units: str  # ERA5's units, in CF/udunits spelling
    long_name: str  # ERA5's


# Feature variable letter -> the NetCDF variable, for pressure levels and for the surface.
UPPER = {
    "Z": Variable("z", "geopotential", "m2 s-2", "Geopotential"),
    "Q": Variable("q", "specific_humidity", "kg kg-1", "Specific humidity"),
    "T": Variable("t", "air_temperature", "K", "Temperature"),
    "U": Variable("u", "eastward_wind", "m s-1", "U component of wind"),
    "V": Variable("v", "northward_wind", "m s-1", "V component of wind"),
}
SURFACE_VARS = {
    "P": Variable("msl", "air_pressure_at_mean_sea_level", "Pa", "Mean sea level pressure"),
    "T": Variable("t2m", "air_temperature", "K", "2 metre temperature"),
    "U": Variable("u10", "eastward_wind", "m s-1", "10 metre U wind component"),
    "V": Variable("v10", "northward_wind", "m s-1", "10 metre V wind component"),
}


class OutputError(ValueError):
    """The states cannot be written as asked (an unknown feature, a feature or grid that differs)."""


def _hours(when: datetime) -> float:
    aware = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return (aware - _EPOCH).total_seconds() / 3600.0


def _split(features: Sequence[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Requested features as {upper variable letter: levels} and [surface variable letters]."""
    upper: dict[str, list[int]] = {}
    surface: list[str] = []
    for feature in features:
        level, _, var = feature.partition(":")
        if level == SURFACE:
            if var not in SURFACE_VARS:
                raise OutputError(f"{feature}: no such surface variable (one of {', '.join(SURFACE_VARS)})")
            if var not in surface:
                surface.append(var)
            continue
        if var not in UPPER or not level.isdigit():
            raise OutputError(f"{feature}: not a feature of the form <level hPa>:<{'|'.join(UPPER)}>")
        levels = upper.setdefault(var, [])
        if int(level) not in levels:
            levels.append(int(level))
    return upper, surface


def _check_states(initial: Fields, states: Sequence[Fields], features: Sequence[str]) -> None:
    if not states:
        raise OutputError("no forecast steps to write")
    for state in states:
        if state.lat.shape != initial.lat.shape or state.lon.shape != initial.lon.shape:
            raise OutputError(f"the state at {state.time:%Y-%m-%d %H:%M} is on another grid than the initial state")
        if not (np.allclose(state.lat, initial.lat) and np.allclose(state.lon, initial.lon)):
            raise OutputError(f"the state at {state.time:%Y-%m-%d %H:%M} is on another grid than the initial state")
        missing = [f for f in features if f not in state.data]
        if missing:
            raise OutputError(f"the state at {state.time:%Y-%m-%d %H:%M} lacks {', '.join(missing)}")


def write_forecast(
    path: Path, initial: Fields, states: Sequence[Fields], features: Sequence[str], *, attrs: Mapping[str, str]
) -> None:
    """Write `features` of every state in `states` (the output steps, in lead order) to the NetCDF file
    `path`, with `initial.time` as the forecast reference time and `attrs` as global attributes."""
    import netCDF4

    path = Path(path)
    _check_states(initial, states, features)
    upper, surface = _split(features)
    levels = sorted({level for found in upper.values() for level in found})  # top down, as Fields.levels
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        dataset = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            _write(dataset, initial, states, upper, surface, levels, attrs)
        finally:
            dataset.close()
        with open(tmp, "rb") as handle:  # durable before it becomes visible under its name
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _write(
    nc: Any,  # netCDF4.Dataset (netCDF4 ships no type hints)
    initial: Fields,
    states: Sequence[Fields],
    upper: Mapping[str, list[int]],
    surface: Sequence[str],
    levels: list[int],
    attrs: Mapping[str, str],
) -> None:
    lat, lon = initial.lat, initial.lon
    nc.createDimension("time", len(states))
    if upper:
        nc.createDimension("level", len(levels))
    nc.createDimension("latitude", len(lat))
    nc.createDimension("longitude", len(lon))

    hours = np.array([_hours(s.time) for s in states])
    whole = bool(np.all(hours == np.round(hours)))
    time = nc.createVariable("time", "i8" if whole else "f8", ("time",))
    time.setncatts(
        {"standard_name": "time", "long_name": "valid time", "units": TIME_UNITS, "calendar": CALENDAR, "axis": "T"}
    )
    time[:] = hours.astype(np.int64) if whole else hours
    reference = nc.createVariable("forecast_reference_time", "f8", ())
    reference.setncatts(
        {
            "standard_name": "forecast_reference_time",
            "long_name": "start time of the forecast",
            "units": TIME_UNITS,
            "calendar": CALENDAR,
        }
    )
    reference.assignValue(_hours(initial.time))
    lead = nc.createVariable("lead_time", "f8", ("time",))
    lead.setncatts({"standard_name": "forecast_period", "long_name": "lead time", "units": "hours"})
    lead[:] = hours - _hours(initial.time)
    if upper:
        level = nc.createVariable("level", "i4", ("level",))
        level.setncatts(
            {
                "standard_name": "air_pressure",
                "long_name": "pressure level",
                "units": "hPa",
                "positive": "down",
                "axis": "Z",
            }
        )
        level[:] = np.array(levels, dtype=np.int32)
    latitude = nc.createVariable("latitude", "f8", ("latitude",))
    latitude.setncatts({"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"})
    latitude[:] = lat
    longitude = nc.createVariable("longitude", "f8", ("longitude",))
    longitude.setncatts({"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"})
    longitude[:] = lon

    plane = (len(lat), len(lon))
    # Field by field (one chunk each): memory stays one field, whatever the grid (a 0.25° job's cube of
    # 13 levels by 28 steps would be 1.5 GB). Chunks never written read as the fill value.
    for var, wanted in upper.items():
        variable = _data_variable(nc, UPPER[var], ("time", "level", "latitude", "longitude"), (1, 1, *plane))
        for t, state in enumerate(states):
            for level_hpa in wanted:
                variable[t, levels.index(level_hpa)] = state.data[f"{level_hpa}:{var}"].astype(np.float32)
    for var in surface:
        variable = _data_variable(nc, SURFACE_VARS[var], ("time", "latitude", "longitude"), (1, *plane))
        for t, state in enumerate(states):
            variable[t] = state.data[f"{SURFACE}:{var}"].astype(np.float32)

    written = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    engine = attrs.get("engine", "")
    defaults = {
        "Conventions": CONVENTIONS,
        "title": f"Forecast from {initial.time:%Y-%m-%d %H:%M} UTC",
        "source": f"{engine}: {attrs['engine_description']}" if "engine_description" in attrs else engine,
        "history": f"{written} written by the web console's forecast job {attrs.get('job_id', '')}".rstrip(),
    }
    nc.setncatts({**defaults, **{str(k): str(v) for k, v in attrs.items()}})


def _data_variable(nc: Any, meta: Variable, dims: tuple[str, ...], chunks: tuple[int, ...]) -> Any:
    # One chunk per field (a time and a level): a reader taking one field decompresses only that.
    variable = nc.createVariable(
        meta.name,
        "f4",
        dims,
        zlib=True,
        complevel=COMPRESSION_LEVEL,
        shuffle=True,
        chunksizes=chunks,
        fill_value=FILL_VALUE,
    )
    variable.setncatts({"standard_name": meta.standard_name, "units": meta.units, "long_name": meta.long_name})
    # Values go in as they are: no auto-scaling, and masked only where the fill value is written.
    variable.set_auto_maskandscale(False)
    return variable


def area_means(
    states: Sequence[Fields], features: Sequence[str], *, lat_weights: bool = True
) -> dict[str, list[float]]:
    """Each feature's global mean at each state, weighted by cos(latitude) (each grid point's share of the
    sphere's area on a regular grid) unless `lat_weights` is False."""
    means: dict[str, list[float]] = {feature: [] for feature in features}
    for state in states:
        if lat_weights:
            weights = np.clip(np.cos(np.deg2rad(state.lat)), 0.0, None)
        else:
            weights = np.ones_like(state.lat)
        total = float(weights.sum()) * len(state.lon)
        for feature in features:
            values = state.data[feature]
            means[feature].append(float(np.sum(weights[:, None] * values) / total))
    return means
