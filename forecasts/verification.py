"""Forecast verification with WeatherBench2's definitions (Rasp et al. 2024, "WeatherBench 2: A benchmark
for the next generation of data-driven global weather models", and its code, weatherbench2/metrics.py in
github.com/google-research/weatherbench2, read at commit 021c0b3).

The metric functions are plain numpy. Arrays end in (latitude, longitude); a leading axis, when there
is one, is the forecast start (WB2's `init_time`/`time`, averaged over as WB2's `Metric.compute`
does); ensemble arrays put the member first. Every spatial mean is WB2's `_spatial_average`: weighted by
`lat_weights`, uniform along longitude, sum(w·x) / sum(w).

- `lat_weights`: WB2's `get_lat_weights`: each row's cell area, sin(upper bound) - sin(lower bound),
  bounds half way between rows and ±90° at the ends, divided by its mean. On a regular grid the interior
  rows come out exactly proportional to cos φ (2 sin(Δ/2) cos φ), which is what
  `forecasts.ensembles.area_weights` uses for the perturbations' amplitude; the two differ at the pole
  rows, which hold a half cell (1 - cos(Δ/2)) here and weight 0 there. Verification uses WB2's so its
  numbers are WB2's.
- `rmse`: WB2's headline RMSE, the square root of the start-averaged `MSE` (the `MSE` metric, then
  sqrt "in user code" as metrics.py advises; not `RMSESqrtBeforeTimeAvg`, which averages per-start RMSEs).
  For one start the two are the same number.
- `acc`: WB2's `ACC`: per start, sum(w f'o') / sqrt(sum(w f'²) sum(w o'²)) with anomalies f' = f - c,
  o' = o - c from a climatology c, then the mean over starts. It needs a climatology; see `verify_job`.
- `crps`: WB2's `CRPS` = `CRPSSkill` - 0.5 `CRPSSpread`, with skill E|X - y| (mean over members) and
  spread E|X - X'| estimated without bias over distinct pairs, sum_{i≠j} |Xi - Xj| / (M(M-1)) (the "fair"
  estimator; WB2 computes it from ranks, Zamo & Naveau 2018; one member gives spread 0, so the MAE).
  Spatial mean per start, then the mean over starts.
- `spread_skill`: WB2's spread/skill ratio (weatherbench2/visualization.py `compute_spread_skill_ratio`):
  spread = sqrt(start mean of the spatial mean of the members' variance, ddof=1: `EnsembleVariance`),
  skill = sqrt(start mean of the ensemble mean's MSE: `EnsembleMeanMSE`), ratio = spread / skill. WB2
  applies no finite-ensemble factor, and neither does this: for a perfectly reliable M-member ensemble
  the expected ratio is sqrt(M/(M+1)) rather than 1 (the ensemble mean's error holds 1/M of the
  variance on top), which the page says beside the number.

`verify_job` finds truth for a finished job's valid times in the job's own input locations and writes
`verification.json` and `verification.png` into the job's output folder (docs/forecasts.md,
"Verification").
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from forecasts.fields import Array

if TYPE_CHECKING:
    from forecasts.inputs import InputSet
    from forecasts.models import ForecastJob
    from forecasts.storage import ObjectStore

VERIFICATION_JSON = "verification.json"
VERIFICATION_FIGURE = "verification.png"


class VerificationError(ValueError):
    """Arrays that cannot be compared (shapes, latitudes)."""


# --- the metrics --------------------------------------------------------------------------------------
def lat_weights(lat: npt.ArrayLike) -> Array:
    """WB2's `get_lat_weights` for latitudes in degrees, in the order given (north to south is fine):
    cell areas from the latitude bounds, normalised to mean 1."""
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise VerificationError("Latitudes must be a non-empty 1-D array.")
    order = np.argsort(lat)
    rising = np.deg2rad(lat[order])
    bounds = np.concatenate([[-np.pi / 2], (rising[:-1] + rising[1:]) / 2, [np.pi / 2]])
    if not (np.all(np.diff(rising) > 0) and np.all(np.diff(bounds) > 0)):
        raise VerificationError("Latitudes must be distinct and within [-90, 90].")
    area = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    weights = np.empty_like(area)
    weights[order] = area / area.mean()
    return weights


def spatial_mean(values: npt.ArrayLike, lat: npt.ArrayLike) -> Array:
    """WB2's `_spatial_average` over the last two axes (latitude, longitude): sum(w x) / sum(w)."""
    values = np.asarray(values, dtype=np.float64)
    weights = lat_weights(lat)
    if values.ndim < 2 or values.shape[-2] != weights.size:
        raise VerificationError(
            f"Arrays end in (latitude, longitude); got {values.shape} for {weights.size} latitudes."
        )
    return np.asarray(np.einsum("...ij,i->...", values, weights) / (weights.sum() * values.shape[-1]))


def _pair(forecast: npt.ArrayLike, truth: npt.ArrayLike) -> tuple[Array, Array]:
    f, t = np.asarray(forecast, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if f.shape != t.shape:
        raise VerificationError(f"Forecast {f.shape} and truth {t.shape} differ in shape.")
    return f, t


def mse(forecast: npt.ArrayLike, truth: npt.ArrayLike, lat: npt.ArrayLike) -> float:
    """WB2's `MSE`: the spatial mean of the squared error, averaged over starts."""
    f, t = _pair(forecast, truth)
    return float(np.mean(spatial_mean((f - t) ** 2, lat)))


def rmse(forecast: npt.ArrayLike, truth: npt.ArrayLike, lat: npt.ArrayLike) -> float:
    """WB2's RMSE: sqrt of `mse` (start mean taken before the square root)."""
    return math.sqrt(mse(forecast, truth, lat))


def acc(forecast: npt.ArrayLike, truth: npt.ArrayLike, climatology: npt.ArrayLike, lat: npt.ArrayLike) -> float:
    """WB2's `ACC`: the anomaly correlation per start (anomalies from `climatology`, which broadcasts
    against the fields), averaged over starts. NaN where an anomaly is zero everywhere."""
    f, t = _pair(forecast, truth)
    c = np.asarray(climatology, dtype=np.float64)
    fa, ta = f - c, t - c
    with np.errstate(divide="ignore", invalid="ignore"):
        per_start = spatial_mean(fa * ta, lat) / np.sqrt(spatial_mean(fa**2, lat) * spatial_mean(ta**2, lat))
    return float(np.mean(per_start))


def _ensemble(members: npt.ArrayLike, truth: npt.ArrayLike) -> tuple[Array, Array]:
    x, t = np.asarray(members, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if x.ndim != t.ndim + 1 or x.shape[1:] != t.shape:
        raise VerificationError(f"Members {x.shape} must be truth's shape {t.shape} with the member axis first.")
    return x, t


def crps_parts(members: npt.ArrayLike, truth: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[float, float, float]:
    """WB2's (`CRPS`, `CRPSSkill`, `CRPSSpread`) for members (M, ..., lat, lon) and truth (..., lat, lon)."""
    x, t = _ensemble(members, truth)
    m = x.shape[0]
    skill = np.abs(x - t).mean(axis=0)
    if m < 2:
        spread = np.zeros_like(t)
    else:
        # sum_{i,j} |Xi - Xj| = 2 sum_k (2k - M - 1) X(k) over the sorted members, k = 1..M (WB2's rank form).
        ranks = (2 * np.arange(1, m + 1) - m - 1).reshape((m,) + (1,) * t.ndim)
        spread = 2 * (ranks * np.sort(x, axis=0)).sum(axis=0) / (m * (m - 1))
    skill_mean = float(np.mean(spatial_mean(skill, lat)))
    spread_mean = float(np.mean(spatial_mean(spread, lat)))
    return skill_mean - 0.5 * spread_mean, skill_mean, spread_mean


def crps(members: npt.ArrayLike, truth: npt.ArrayLike, lat: npt.ArrayLike) -> float:
    """WB2's `CRPS`: E|X - y| - 0.5 E|X - X'| (fair spread), spatial mean, averaged over starts."""
    return crps_parts(members, truth, lat)[0]


def spread_skill(members: npt.ArrayLike, truth: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[float, float, float]:
    """(spread, skill, spread/skill) as WB2 plots them: sqrt of the mean ensemble variance (ddof=1) and
    sqrt of the ensemble mean's MSE. The ratio is NaN when the skill is 0."""
    x, t = _ensemble(members, truth)
    if x.shape[0] < 2:
        raise VerificationError("An ensemble's spread needs at least 2 members.")
    spread = math.sqrt(float(np.mean(spatial_mean(x.var(axis=0, ddof=1), lat))))
    skill = rmse(x.mean(axis=0), t, lat)
    return spread, skill, (spread / skill if skill > 0 else math.nan)


# --- a job's verification -------------------------------------------------------------------------------
ACC_WITHOUT_CLIMATOLOGY = (
    "Not computed: WeatherBench2's ACC measures anomalies from a climatology (ERA5 1990-2019 by day of "
    "year and hour), and none is installed (an operator puts WeatherBench2's climatology, as NetCDF, in "
    "DATA_DIR/climatology/). An anomaly from anything else (the initial state, the mean of the few truth "
    "fields at hand) would be a different score under the same name."
)
SPREAD_SKILL_NOTE = (
    "WeatherBench2's ratio, without a finite-ensemble factor: a perfectly reliable ensemble of M members "
    "expects sqrt(M/(M+1)), not 1."
)

# WeatherBench2's variable names (its ERA5 and climatology datasets), then ERA5's short names.
CLIMATOLOGY_UPPER = {
    "Z": ("geopotential", "z"),
    "Q": ("specific_humidity", "q"),
    "T": ("temperature", "t"),
    "U": ("u_component_of_wind", "u"),
    "V": ("v_component_of_wind", "v"),
}
CLIMATOLOGY_SURFACE = {
    "P": ("mean_sea_level_pressure", "msl"),
    "T": ("2m_temperature", "t2m"),
    "U": ("10m_u_component_of_wind", "u10"),
    "V": ("10m_v_component_of_wind", "v10"),
}


def climatology_dir() -> Path:
    """Where an operator puts a climatology for ACC: DATA_DIR/climatology/ (NetCDF files)."""
    from django.conf import settings

    return Path(settings.DATA_DIR) / "climatology"


class Climatology:
    """WeatherBench2's climatology (scripts/compute_climatology.py: the mean by day of year and hour of
    day, ERA5 units), exported from its Zarr to NetCDF and put in `climatology_dir()`. A variable has
    dimensions `dayofyear` (1-366), optionally `hour`, `level` for upper-air fields, and latitude and
    longitude in any order; the forecast's grid points are picked out of it by value, so WB2's 1.5°
    climatology serves a 3° job. A field the files do not hold is a reason, not an error."""

    def __init__(self, paths: Sequence[Path]) -> None:
        import netCDF4

        self.paths = list(paths)
        self.datasets: list[Any] = []
        try:
            for path in self.paths:
                self.datasets.append(netCDF4.Dataset(path))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for dataset in self.datasets:
            dataset.close()

    def field(self, feature: str, when: datetime, lat: Array, lon: Array) -> tuple[Array | None, str]:
        """The climatology of `feature` at the day of year and hour of `when` on the grid (lat, lon), or
        (None, why not)."""
        from forecasts.fields import SURFACE

        level, _, variable = feature.partition(":")
        names = (CLIMATOLOGY_SURFACE if level == SURFACE else CLIMATOLOGY_UPPER).get(variable, ())
        for dataset in self.datasets:
            name = next((n for n in names if n in dataset.variables), None)
            if name is not None:
                try:
                    return self._select(
                        dataset, dataset.variables[name], None if level == SURFACE else int(level), when, lat, lon
                    )
                except (KeyError, IndexError, ValueError) as exc:
                    return None, f"the climatology's {name} cannot be used ({exc})"
        return None, f"the climatology holds no {' or '.join(names) or feature}"

    @staticmethod
    def _select(
        dataset: Any, var: Any, level: int | None, when: datetime, lat: Array, lon: Array
    ) -> tuple[Array | None, str]:
        def coordinate(*names: str) -> tuple[str, Array]:
            for n in names:
                if n in var.dimensions:
                    return n, np.asarray(dataset.variables[n][:], dtype=np.float64)
            raise KeyError(f"no {names[0]} dimension")

        def position(values: Array, wanted: Array, what: str) -> npt.NDArray[np.intp]:
            found = np.abs(values[None, :] - wanted[:, None]) < 1e-6
            if not found.any(axis=1).all():
                raise ValueError(f"its {what} do not include the forecast grid's")
            return np.asarray(found.argmax(axis=1))

        day = when.timetuple().tm_yday
        index: dict[str, Any] = {}
        name, values = coordinate("dayofyear")
        if not np.any(values == day):
            return None, f"the climatology has no day of year {day}"
        index[name] = int(np.argmax(values == day))
        if "hour" in var.dimensions:
            name, values = coordinate("hour")
            if not np.any(values == when.hour):
                return None, f"the climatology has no hour {when.hour:02d}"
            index[name] = int(np.argmax(values == when.hour))
        if level is not None:
            name, values = coordinate("level")
            if not np.any(values == level):
                return None, f"the climatology has no {level} hPa level"
            index[name] = int(np.argmax(values == level))
        lat_name, lat_values = coordinate("latitude", "lat")
        lon_name, lon_values = coordinate("longitude", "lon")
        index[lat_name] = position(lat_values, lat, "latitudes")
        index[lon_name] = position(np.mod(lon_values, 360.0), np.mod(lon, 360.0), "longitudes")
        for dim in var.dimensions:
            if dim not in index:
                if len(dataset.dimensions[dim]) != 1:
                    raise ValueError(f"its dimension {dim} is not one of dayofyear, hour, level, latitude, longitude")
                index[dim] = 0
        var.set_auto_mask(False)
        plane = np.asarray(
            var[tuple(index[d] if not isinstance(index[d], np.ndarray) else slice(None) for d in var.dimensions)]
        )
        kept = [d for d in var.dimensions if isinstance(index[d], np.ndarray)]
        plane = plane[np.ix_(index[kept[0]], index[kept[1]])]
        if kept[0] == lon_name:
            plane = plane.T
        return plane.astype(np.float64), ""


def open_climatology() -> Climatology | None:
    paths = sorted(climatology_dir().glob("*.nc"))
    return Climatology(paths) if paths else None


def job_folder(job: ForecastJob) -> str:
    from forecasts.storage import join_key

    obs = job.output["obs"]
    return join_key(*[p for p in (str(obs.get("path", "")).strip("/"), job.pk) if p])


def verification_keys(job: ForecastJob) -> dict[str, str]:
    from forecasts.storage import join_key

    folder = job_folder(job)
    return {"json": join_key(folder, VERIFICATION_JSON), "figure": join_key(folder, VERIFICATION_FIGURE)}


@dataclass
class _Sums:
    """Per-start scalars of one feature at one lead; WB2 averages each over starts."""

    mse: list[float] = field(default_factory=list)
    persistence_mse: list[float] = field(default_factory=list)
    crps_skill: list[float] = field(default_factory=list)
    crps_spread: list[float] = field(default_factory=list)
    ensemble_variance: list[float] = field(default_factory=list)
    ensemble_mean_mse: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    members: int = 0

    def row(self, lead: int) -> dict[str, Any]:
        def root_mean(values: list[float]) -> float | None:
            return math.sqrt(sum(values) / len(values)) if values else None

        row: dict[str, Any] = {
            "lead": lead,
            "starts": len(self.mse),
            "rmse": root_mean(self.mse),
            "persistence_rmse": root_mean(self.persistence_mse),
            "acc": sum(self.acc) / len(self.acc) if self.acc else None,
            "acc_starts": len(self.acc),
            "members": self.members or None,
            "ensemble_starts": len(self.crps_skill),
            "crps": None,
            "crps_skill": None,
            "crps_spread": None,
            "spread": None,
            "ensemble_mean_rmse": None,
            "spread_skill": None,
        }
        if self.crps_skill:
            skill = sum(self.crps_skill) / len(self.crps_skill)
            spread = sum(self.crps_spread) / len(self.crps_spread)
            row.update(crps=skill - 0.5 * spread, crps_skill=skill, crps_spread=spread)
            ens_spread, ens_skill = root_mean(self.ensemble_variance), root_mean(self.ensemble_mean_mse)
            assert ens_spread is not None and ens_skill is not None
            ratio = ens_spread / ens_skill if ens_skill > 0 else None
            row.update(spread=ens_spread, ensemble_mean_rmse=ens_skill, spread_skill=ratio)
        return row


class _Truth:
    """The job's input locations, opened once: the field of a feature at a time from the first location
    holding it (the order the job lists them, as the initial states are merged)."""

    def __init__(self, sets: list[InputSet]) -> None:
        self.sets = sets
        self.times = [set(s.times()) for s in sets]

    def read(self, when: datetime, features: Sequence[str]) -> tuple[Array, Array, dict[str, Array]] | None:
        found: dict[str, Array] = {}
        grid: tuple[Array, Array] | None = None
        for held, inputs in zip(self.times, self.sets, strict=True):
            if when not in held:
                continue
            wanted = [f for f in features if f not in found and f in inputs.features_at(when)]
            if not wanted:
                continue
            state = inputs.read(when, wanted)
            if grid is None:
                grid = (state.lat, state.lon)
            elif not (np.array_equal(grid[0], state.lat) and np.array_equal(grid[1], state.lon)):
                continue  # a second location on another grid cannot complete the first one's fields
            found.update(state.data)
        return None if grid is None else (grid[0], grid[1], found)


def _units(feature: str) -> str:
    from forecasts.fields import SURFACE
    from forecasts.outputs import SURFACE_VARS, UPPER

    level, _, variable = feature.partition(":")
    table = SURFACE_VARS if level == SURFACE else UPPER
    return table[variable].units if variable in table else ""


def verify_job(job: ForecastJob, store: ObjectStore) -> dict[str, Any]:
    """Score the job's finished forecasts against truth from its input locations, write
    `verification.json` (always: it says why nothing could be scored, if so) and, when anything was
    scored and the job draws figures, `verification.png` to the job's output folder. Returns the
    report. Raises StorageError when the output cannot be written; unreadable inputs and forecasts
    become reasons in the report."""
    from forecasts import inputs
    from forecasts.config import output_leads
    from forecasts.models import JobState
    from forecasts.pipeline import run_folder
    from forecasts.storage import join_key

    keys = verification_keys(job)
    bucket = job.output["obs"]["bucket"]
    out_folder = job_folder(job) + "/"
    leads = output_leads(int(job.config["forecast_lead_hours"]))
    runs = [r for r in job.runs.order_by("start_time", "member") if r.state == JobState.SUCCEEDED]
    report: dict[str, Any] = {
        "job": job.pk,
        "computed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "definitions": "WeatherBench2 (weatherbench2/metrics.py): latitude-area weights, RMSE = sqrt of the "
        "start-mean MSE, CRPS fair estimator, spread/skill = sqrt(mean ensemble variance) / ensemble-mean RMSE",
        "truth": [],
        "acc": ACC_WITHOUT_CLIMATOLOGY,
        "spread_skill_note": SPREAD_SKILL_NOTE,
        "skipped": [],
        "features": {},
        "reason": "",
        "files": {"json": keys["json"], "figure": None},
    }
    sums: dict[str, dict[int, _Sums]] = {}
    scored_features = list(dict.fromkeys([*job.features, *job.ensemble_features]))

    def note(text: str) -> None:
        if text not in report["skipped"]:
            report["skipped"].append(text)

    with contextlib.ExitStack() as stack:
        try:
            climatology = open_climatology()
        except OSError as exc:
            climatology = None
            report["acc"] = f"Not computed: the climatology in {climatology_dir()} cannot be opened ({exc})."
        if climatology is not None:
            stack.callback(climatology.close)
            names = ", ".join(p.name for p in climatology.paths)
            report["acc"] = (
                f"Against the climatology {names}: anomalies from its mean for the valid time's day of year "
                "and hour, correlated per start and averaged over starts (WeatherBench2's ACC)."
            )
        sets: list[InputSet] = []
        for location in job.input.get("data", []):
            where = store.location(location["bucket"], location.get("path", ""))
            path = str(location.get("path", "")).strip("/")
            if location["bucket"] == bucket and (not path or out_folder.startswith(path + "/")):
                report["skipped"].append(f"{where}: holds this job's own outputs, which cannot be their own truth.")
                continue
            try:
                sets.append(stack.enter_context(inputs.open_inputs(store, location["bucket"], path)))
            except inputs.InputError as exc:
                report["skipped"].append(f"{where}: cannot be read as truth ({exc}).")
                continue
            report["truth"].append(where)
        truth = _Truth(sets)
        starts = sorted({r.start_time for r in runs if r.member == 0})

        def score_start(start: datetime) -> None:
            """Add one start's per-lead scalars to `sums` (its forecast files stay open on `stack`)."""
            control = next(r for r in runs if r.start_time == start and r.member == 0)
            members = [r for r in runs if r.start_time == start and r.member > 0]
            initial = truth.read(start, scored_features)
            wanted_times = [start + timedelta(hours=lead) for lead in leads]
            if not any(t in held for held in truth.times for t in wanted_times):
                return
            forecasts: dict[int, InputSet] = {}
            try:
                for run in [control, *members]:
                    key = join_key(run_folder(job, run), "forecast.nc")
                    forecasts[run.member] = stack.enter_context(inputs.open_inputs(store, bucket, key))
            except inputs.InputError as exc:
                note(f"The forecast from {start:%Y%m%d%H} cannot be read back ({exc}).")
                return
            ensemble = [m for m in sorted(forecasts) if m > 0] if len(members) >= 2 else []
            for lead, valid in zip(leads, wanted_times, strict=True):
                found = truth.read(valid, scored_features)
                if found is None:
                    continue
                lat, lon, observed = found
                for feature in scored_features:
                    deterministic = feature in job.features  # else an ensemble-only feature: no control
                    in_ensemble = bool(ensemble) and feature in job.ensemble_features
                    if feature not in observed or not (deterministic or in_ensemble):
                        continue
                    state = forecasts[0 if deterministic else ensemble[0]].read(valid, [feature])
                    if not (np.array_equal(state.lat, lat) and np.array_equal(state.lon, lon)):
                        note(f"{feature}: the truth's grid differs from the forecast's.")
                        continue
                    cell = sums.setdefault(feature, {}).setdefault(lead, _Sums())
                    observed_field = observed[feature]
                    if deterministic:
                        cell.mse.append(mse(state.data[feature], observed_field, lat))
                    if deterministic and climatology is not None:
                        normal, why = climatology.field(feature, valid, lat, lon)
                        forecast_field = state.data[feature]
                        score = math.nan if normal is None else acc(forecast_field, observed_field, normal, lat)
                        if math.isfinite(score):
                            cell.acc.append(score)
                        else:
                            note(f"ACC of {feature}: {why or 'an anomaly is zero everywhere'}.")
                    if initial is not None and feature in initial[2] and np.array_equal(initial[0], lat):
                        cell.persistence_mse.append(mse(initial[2][feature], observed_field, lat))
                    if in_ensemble:
                        stack_members = np.stack([forecasts[m].read(valid, [feature]).data[feature] for m in ensemble])
                        _, skill, spread = crps_parts(stack_members, observed_field, lat)
                        cell.crps_skill.append(skill)
                        cell.crps_spread.append(spread)
                        cell.ensemble_variance.append(float(spatial_mean(stack_members.var(axis=0, ddof=1), lat)))
                        cell.ensemble_mean_mse.append(mse(stack_members.mean(axis=0), observed_field, lat))
                        cell.members = len(ensemble)

        for start in starts:
            try:
                score_start(start)
            except inputs.InputError as exc:  # a field unreadable at read time (the scan passed)
                note(f"The forecast from {start:%Y%m%d%H} could not be scored completely: {exc}")
    for feature in scored_features:
        if feature in sums:
            report["features"][feature] = {
                "units": _units(feature),
                "rows": [sums[feature][lead].row(lead) for lead in sorted(sums[feature])],
            }
    if not report["features"]:
        if not runs:
            report["reason"] = "No forecast finished, so there is nothing to verify."
        elif not report["truth"]:
            report["reason"] = "No input location could serve as truth."
        else:
            report["reason"] = (
                "No truth: the input locations hold none of the forecasts' valid times for these features "
                "(verification needs a hindcast, started early enough that analyses exist for its leads)."
            )
    if report["features"] and str(job.config.get("draw_figures", "true")) != "false":  # as for the maps
        with tempfile.TemporaryDirectory(prefix="verification-") as tmp:
            figure = draw_scores(report, Path(tmp) / VERIFICATION_FIGURE)
            store.write_file(bucket, keys["figure"], figure)
        report["files"]["figure"] = keys["figure"]
    store.write_bytes(bucket, keys["json"], json.dumps(report, indent=2, allow_nan=False).encode())
    return report


def read_report(job: ForecastJob, store: ObjectStore) -> dict[str, Any] | None:
    """The stored verification.json of the job, or None when there is none (or it cannot be read)."""
    from forecasts.storage import StorageError

    try:
        data = store.read_bytes(job.output["obs"]["bucket"], verification_keys(job)["json"])
        report = json.loads(data)
    except (StorageError, ValueError, KeyError):
        return None
    return report if isinstance(report, dict) else None


def draw_scores(report: dict[str, Any], path: Path) -> Path:
    """Scores against lead, one row per feature: RMSE beside persistence's and, for an ensemble, CRPS,
    spread and the ensemble mean's RMSE. ERA5 units (differences of °C and K are the same)."""
    from forecasts.config import feature_words
    from forecasts.figures import SERIES_DPI, _canvas, _save

    features = list(report["features"])
    ensemble = any(r["crps"] is not None for f in features for r in report["features"][f]["rows"])
    rows, cols = max(len(features), 1), 2 if ensemble else 1
    height = 1.9 * rows + 0.7
    figure = _canvas((8.0 if ensemble else 6.0, height), SERIES_DPI)
    figure.subplots_adjust(left=0.12, right=0.97, top=1 - 0.6 / height, bottom=0.5 / height, hspace=0.6, wspace=0.3)
    figure.suptitle("Scores against truth (WeatherBench2 definitions)", fontsize=11, y=1 - 0.12 / height)
    grid = figure.subplots(rows, cols, squeeze=False)
    last = max(r["lead"] for f in features for r in report["features"][f]["rows"])

    def panel(axes: Any, title: str, series: list[tuple[str, list[int], list[float], str]]) -> None:
        top = max((value for _, _, values, _ in series for value in values), default=1.0)
        for label, leads, values, style in series:
            axes.plot(leads, values, style, markersize=4, label=label)
        axes.set_title(title, fontsize=9, loc="left")
        axes.set_xlim(0, last + 6)  # lead 0 on the left: one scored lead is a point, not a lone axis
        axes.set_ylim(0, top * 1.15 if top > 0 else 1.0)
        axes.legend(fontsize=7, loc="best")
        axes.grid(True, linewidth=0.4, alpha=0.5)
        axes.set_xlabel("lead (h)", fontsize=8)

    for row, feature in enumerate(features):
        units = report["features"][feature]["units"]
        lines = report["features"][feature]["rows"]
        words = feature_words(feature)
        persistence = [r for r in lines if r["persistence_rmse"] is not None]
        control = [r for r in lines if r["rmse"] is not None]
        panel(
            grid[row, 0],
            f"{words}: RMSE ({units})",
            [
                ("forecast", [r["lead"] for r in control], [r["rmse"] for r in control], "o-"),
                ("persistence", [r["lead"] for r in persistence], [r["persistence_rmse"] for r in persistence], "s--"),
            ],
        )
        if not ensemble:
            continue
        scored = [r for r in lines if r["crps"] is not None]
        if not scored:
            grid[row, 1].axis("off")
            grid[row, 1].text(0.5, 0.5, f"{words}: not an ensemble feature", ha="center", va="center", fontsize=9)
            continue
        leads = [r["lead"] for r in scored]
        panel(
            grid[row, 1],
            f"{words}: ensemble ({units})",
            [
                ("CRPS", leads, [r["crps"] for r in scored], "o-"),
                ("spread", leads, [r["spread"] for r in scored], "^-"),
                ("ensemble-mean RMSE", leads, [r["ensemble_mean_rmse"] for r in scored], "s--"),
            ],
        )
    _save(figure, path)
    return path
