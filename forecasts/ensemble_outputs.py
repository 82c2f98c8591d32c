"""An ensemble job's combined output per start time: `<start folder>/ensemble.nc`.

Each member run writes its own forecast.nc (forecasts/outputs.py); finalising the job reads them back and
writes one file per start time holding, for every ensemble feature (`ensemble_forecast_features`):

- `<name>` (member, time, latitude, longitude): every member's field, member 0 (the unperturbed control)
  first, then 1..N in order. The control runs the deterministic features only, so for an ensemble-only
  feature its row is `_FillValue`. A member whose run failed is left out (the `member` coordinate says
  which are there; the global attribute `missing_members` names the ones left out).
- `<name>_mean` and `<name>_spread` (time, latitude, longitude): the perturbed members' mean and standard
  deviation with ddof=1 (forecasts/ensembles.py ensemble_stats, as the verification's spread/skill uses).
  The control is not in them: it is not a draw from the perturbation's distribution.

`<name>` is the ERA5 short name with the level for upper-air fields (`z500`, `t850`) and the short name
alone at the surface (`t2m`, `msl`); CF attributes as in forecast.nc, with `cell_methods` on the
statistics. At least 2 perturbed members must have succeeded for a start to get a file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from forecasts.fields import SURFACE, Fields
from forecasts.models import ForecastJob, ForecastRun, JobState
from forecasts.storage import ObjectStore, join_key

ENSEMBLE_FILE = "ensemble.nc"
MEAN_DIR = "ensemble-mean"
SPREAD_DIR = "ensemble-spread"
PLUME = "ensemble_plume.png"


def variable_name(feature: str) -> str:
    from forecasts.outputs import SURFACE_VARS, UPPER

    level, _, var = feature.partition(":")
    if level == SURFACE:
        return SURFACE_VARS[var].name
    return f"{UPPER[var].name}{level}"


def _meta(feature: str) -> Any:
    from forecasts.outputs import SURFACE_VARS, UPPER

    level, _, var = feature.partition(":")
    return SURFACE_VARS[var] if level == SURFACE else UPPER[var]


def write_ensembles(job: ForecastJob, store: ObjectStore) -> dict[str, Any]:
    """Write ensemble.nc for every start time with at least 2 succeeded perturbed members. Returns
    {"files": [keys written], "notes": [plain-words reasons for what was left out]}. Raises StorageError
    when a file cannot be written and inputs.InputError when a member's forecast cannot be read."""
    from forecasts import inputs
    from forecasts.pipeline import run_folder
    from forecasts.verification import job_folder

    bucket = job.output["obs"]["bucket"]
    features = list(job.ensemble_features)
    runs = list(job.runs.order_by("start_time", "member"))
    result: dict[str, Any] = {"files": [], "notes": []}
    for start in sorted({r.start_time for r in runs}):
        here = [r for r in runs if r.start_time == start]
        good = [r for r in here if r.state == JobState.SUCCEEDED]
        missing = [r.member for r in here if r.state != JobState.SUCCEEDED]
        if missing:
            result["notes"].append(
                f"{start:%Y%m%d%H}: member{'s' if len(missing) > 1 else ''} "
                f"{', '.join(str(m) for m in missing)} did not succeed and {'are' if len(missing) > 1 else 'is'} "
                "left out of the ensemble."
            )
        if len([r for r in good if r.member > 0]) < 2:
            result["notes"].append(f"{start:%Y%m%d%H}: fewer than 2 perturbed members succeeded, so no ensemble.nc.")
            continue
        key = join_key(job_folder(job), f"{start:%Y%m%d%H}", ENSEMBLE_FILE)  # the control's folder
        with tempfile.TemporaryDirectory(prefix="ensemble-") as tmp:
            path = Path(tmp) / ENSEMBLE_FILE
            drawn = _write_start(job, store, bucket, good, missing, features, start, path, inputs, run_folder)
            store.write_file(bucket, key, path)
            result["files"].append(key)
            if str(job.config.get("draw_figures", "true")) != "false":  # as for the members' own maps
                for figure in _draw(drawn, features, Path(tmp)):
                    name = figure.relative_to(tmp).as_posix()
                    store.write_file(bucket, join_key(job_folder(job), f"{start:%Y%m%d%H}", name), figure)
                    result["files"].append(join_key(job_folder(job), f"{start:%Y%m%d%H}", name))
    return result


@dataclass
class _Drawn:
    """What the figures need from one start: the mean and spread at the figure leads, and each member's
    and the mean's area means at every lead."""

    start: datetime
    leads: list[int] = field(default_factory=list)
    mean: dict[datetime, Fields] = field(default_factory=dict)
    spread: dict[datetime, Fields] = field(default_factory=dict)
    member_means: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    mean_means: dict[str, list[float]] = field(default_factory=dict)


def _draw(drawn: _Drawn, features: Sequence[str], folder: Path) -> list[Path]:
    """`ensemble-mean/<feature>_<lead>h.png`, `ensemble-spread/...` and `ensemble_plume.png` under `folder`."""
    from forecasts import figures

    def lead_of(state: Fields) -> int:
        return int((state.time - drawn.start).total_seconds() // 3600)

    chosen = list(drawn.mean)
    leads = [lead_of(drawn.mean[t]) for t in chosen]
    paths = figures.draw_maps(
        list(drawn.mean.values()), features, leads, folder / MEAN_DIR, lead_of=lead_of, display_of=figures.mean_display
    )
    paths += figures.draw_maps(
        list(drawn.spread.values()),
        features,
        leads,
        folder / SPREAD_DIR,
        lead_of=lead_of,
        display_of=figures.spread_display,
    )
    paths.append(figures.draw_ensemble_plume(drawn.member_means, drawn.mean_means, drawn.leads, folder / PLUME))
    return paths


def _write_start(
    job: ForecastJob,
    store: ObjectStore,
    bucket: str,
    good: Sequence[ForecastRun],
    missing: Sequence[int],
    features: Sequence[str],
    start: datetime,
    path: Path,
    inputs: Any,
    run_folder: Any,
) -> _Drawn:
    import contextlib

    import netCDF4

    from forecasts.config import figure_leads
    from forecasts.ensembles import ensemble_stats
    from forecasts.outputs import CALENDAR, CONVENTIONS, FILL_VALUE, TIME_UNITS, _hours, area_means

    with contextlib.ExitStack() as stack:
        opened = {
            r.member: stack.enter_context(
                inputs.open_inputs(store, bucket, join_key(run_folder(job, r), "forecast.nc"))
            )
            for r in good
        }
        perturbed = [m for m in sorted(opened) if m > 0]
        times = [t for t in opened[perturbed[0]].times() if t > start]
        members = sorted(opened)
        first = opened[perturbed[0]].read(times[0], features)
        lat, lon = first.lat, first.lon
        with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
            nc.createDimension("member", len(members))
            nc.createDimension("time", len(times))
            nc.createDimension("latitude", len(lat))
            nc.createDimension("longitude", len(lon))
            member = nc.createVariable("member", "i4", ("member",))
            member.setncatts(
                {"standard_name": "realization", "long_name": "ensemble member (0 is the unperturbed control)"}
            )
            member[:] = np.array(members, dtype=np.int32)
            hours = np.array([_hours(t) for t in times])
            time = nc.createVariable("time", "f8", ("time",))
            time.setncatts(
                {"standard_name": "time", "long_name": "valid time", "units": TIME_UNITS, "calendar": CALENDAR}
            )
            time[:] = hours
            lead = nc.createVariable("lead_time", "f8", ("time",))
            lead.setncatts({"standard_name": "forecast_period", "long_name": "lead time", "units": "hours"})
            lead[:] = hours - _hours(start)
            latitude = nc.createVariable("latitude", "f8", ("latitude",))
            latitude.setncatts({"standard_name": "latitude", "units": "degrees_north", "axis": "Y"})
            latitude[:] = lat
            longitude = nc.createVariable("longitude", "f8", ("longitude",))
            longitude.setncatts({"standard_name": "longitude", "units": "degrees_east", "axis": "X"})
            longitude[:] = lon
            plane = (len(lat), len(lon))
            drawn = _Drawn(start=start, leads=[int(h) for h in hours - _hours(start)])
            figures_at = set(figure_leads(int(job.config["forecast_lead_hours"])))
            for feature in features:
                meta = _meta(feature)
                name = variable_name(feature)
                attrs = {"standard_name": meta.standard_name, "units": meta.units}
                per_member = _variable(
                    nc, name, ("member", "time", "latitude", "longitude"), (1, 1, *plane), FILL_VALUE
                )
                per_member.setncatts({**attrs, "long_name": f"{meta.long_name} at {feature}, every member"})
                mean = _variable(nc, f"{name}_mean", ("time", "latitude", "longitude"), (1, *plane), FILL_VALUE)
                mean.setncatts(
                    {
                        **attrs,
                        "long_name": f"{meta.long_name} at {feature}, ensemble mean",
                        "cell_methods": "realization: mean",
                    }
                )
                spread = _variable(nc, f"{name}_spread", ("time", "latitude", "longitude"), (1, *plane), FILL_VALUE)
                spread.setncatts(
                    {
                        "units": meta.units,
                        "long_name": f"{meta.long_name} at {feature}, ensemble spread (standard deviation, ddof=1)",
                        "cell_methods": "realization: standard_deviation",
                    }
                )
                for t, when in enumerate(times):
                    states: dict[int, Fields] = {}
                    for i, m in enumerate(members):
                        # The control ran the deterministic features only; its file may still hold
                        # the variable, filled, at this level (another feature shares the variable).
                        if m > 0 or feature in job.features:
                            states[m] = opened[m].read(when, [feature])
                            per_member[i, t] = states[m].data[feature].astype(np.float32)
                    stats_mean, stats_spread = ensemble_stats([states[m] for m in perturbed])
                    mean[t] = stats_mean.data[feature].astype(np.float32)
                    spread[t] = stats_spread.data[feature].astype(np.float32)
                    for m, state in states.items():
                        series = drawn.member_means.setdefault(m, {}).setdefault(feature, [])
                        series.append(area_means([state], [feature])[feature][0])
                    drawn.mean_means.setdefault(feature, []).append(area_means([stats_mean], [feature])[feature][0])
                    if int(hours[t] - _hours(start)) in figures_at:
                        for target, stats in ((drawn.mean, stats_mean), (drawn.spread, stats_spread)):
                            target.setdefault(when, Fields(time=when, lat=lat, lon=lon)).data[feature] = stats.data[
                                feature
                            ]
            nc.setncatts(
                {
                    "Conventions": CONVENTIONS,
                    "title": f"Ensemble forecast from {start:%Y-%m-%d %H:%M} UTC",
                    "job_id": job.pk,
                    "members": ", ".join(str(m) for m in members),
                    "missing_members": ", ".join(str(m) for m in missing) or "none",
                    "statistics_over": "the perturbed members (1..N), not the control",
                }
            )
    return drawn


def _variable(nc: Any, name: str, dims: tuple[str, ...], chunks: tuple[int, ...], fill: Any) -> Any:
    from forecasts.outputs import COMPRESSION_LEVEL

    variable = nc.createVariable(
        name, "f4", dims, zlib=True, complevel=COMPRESSION_LEVEL, shuffle=True, chunksizes=chunks, fill_value=fill
    )
    variable.set_auto_maskandscale(False)
    return variable


def stored_keys(job: ForecastJob, store: ObjectStore) -> list[str]:
    """The ensemble files the job's manifest lists (written on finalising); only keys inside the job's
    own folder, since the bucket is the operators' to write in. Empty when there is no manifest."""
    import json

    from forecasts.storage import StorageError
    from forecasts.verification import job_folder

    folder = job_folder(job) + "/"
    try:
        manifest = json.loads(store.read_bytes(job.output["obs"]["bucket"], folder + "manifest.json"))
        files = (manifest.get("ensemble") or {}).get("files") or []
    except (StorageError, ValueError, AttributeError, KeyError):
        return []
    return [k for k in files if isinstance(k, str) and k.startswith(folder) and ".." not in k.split("/")]


def gallery(keys: Sequence[str]) -> list[dict[str, Any]]:
    """The keys grouped by start for the job page: the NetCDF file, the mean and spread maps (feature,
    lead) and the plume."""
    from forecasts.config import feature_words

    starts: dict[str, dict[str, Any]] = {}
    for key in keys:
        parts = key.split("/")
        name, kind = parts[-1], parts[-2]
        start = parts[-3] if kind in (MEAN_DIR, SPREAD_DIR) else kind
        entry = starts.setdefault(start, {"start": start, "netcdf": "", "plume": "", "maps": []})
        if name == ENSEMBLE_FILE:
            entry["netcdf"] = key
        elif name == PLUME:
            entry["plume"] = key
        elif name.endswith(".png") and kind in (MEAN_DIR, SPREAD_DIR):
            feature, _, lead = name[:-4].rpartition("_")
            feature = feature.replace("_", ":", 1)
            statistic = "mean" if kind == MEAN_DIR else "spread"
            entry["maps"].append(
                {
                    "key": key,
                    "statistic": statistic,
                    "feature": feature,
                    "words": feature_words(feature),
                    "lead": int(lead.rstrip("h")),
                }
            )
    return list(starts.values())
