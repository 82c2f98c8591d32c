"""Perlin ensemble members and the ensemble's mean and spread (forecasts/ensembles.py), and the seed's
ranges of every ensemble parameter (../shared/seeds/README.md item 5) at both sides of each end.

Expected figures are computed here from the arrays with the test's own weighted statistics, never read
back from forecasts.ensembles."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forecasts import ensembles
from forecasts.config import ConfigError, parse_task
from forecasts.fields import Fields

ROOT = Path(__file__).resolve().parents[2]
SEED = "42:2017010100"

# The manual's two request examples, word for word, line breaks aside (pangu-model-platform-manual.txt).
SEED_EXAMPLE = json.loads("""
{ "name" : "demo-task",
  "input" : { "type" : "obs", "data" : [ { "bucket" : "bucket", "path" : "path/to/directory/" } ] },
  "output" : { "obs" : { "bucket" : "bucket", "path" : "path/to/directory/" } },
  "config" : { "start_time_begin" : 2017010100, "start_time_end" : 2017010200, "start_time_interval_hours" : 1,
  "forecast_lead_hours" : 1, "forecast_features" : "Surface:P;Surface:T;Surface:U;Surface:V;1000:T;800:T;1000:Z;800:Z",
  "draw_figures" : "true" } }
""")
SEED_ENSEMBLE_EXAMPLE = json.loads("""
{ "name" : "demo-task",
  "input" : { "type" : "obs", "data" : [ { "bucket" : "bucket", "path" : "path/to/directory/" } ] },
  "output" : { "obs" : { "bucket" : "bucket", "path" : "path/to/directory/" } },
  "config" : { "start_time_begin" : 2017010100, "start_time_end" : 2017010200, "start_time_interval_hours" : 1,
  "forecast_lead_hours" : 1, "forecast_features" : "Surface:P;Surface:T;Surface:U;Surface:V;1000:T;800:T;1000:Z;800:Z",
  "num_ensembles" : 2, "ensemble_noise_method" : "perlin", "ensemble_noise_perlin_scale" : 0.1,
  "ensemble_noise_perlin_octave" : 1, "ensemble_noise_perlin_x" : 0.2, "ensemble_noise_perlin_y" : 0.2,
  "ensemble_forecast_features" : "Surface:P;Surface:T;Surface:U;Surface:V;1000:T;800:T;1000:Z;800:Z",
  "draw_figures" : "true" } }
""")


def perlin(scale: float = 0.1, octave: int = 3, x: float = 0.5, y: float = 0.5) -> dict[str, Any]:
    return {
        "ensemble_noise_method": "perlin",
        "ensemble_noise_perlin_scale": scale,
        "ensemble_noise_perlin_octave": octave,
        "ensemble_noise_perlin_x": x,
        "ensemble_noise_perlin_y": y,
        "num_ensembles": 10,
    }


def state(step: float = 3.0) -> Fields:
    """A plausible ERA5-like state on a regular `step`° grid, lat 90..-90, lon 0..360-step."""
    lat = np.linspace(90.0, -90.0, round(180 / step) + 1)
    lon = np.arange(0.0, 360.0, step)
    phi, lam = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    rng = np.random.default_rng(7)
    wave = np.cos(3 * lam) * np.sin(2 * phi)
    data = {
        "500:Z": 54000.0 + 3000.0 * np.cos(phi) ** 2 + 800.0 * wave + rng.normal(0, 30, phi.shape),
        "850:T": 250.0 + 40.0 * np.cos(phi) ** 2 + 5.0 * wave,
        "500:U": 30.0 * np.cos(phi) ** 2 * np.sin(2 * phi) ** 2 + 4.0 * wave,
        "500:V": 6.0 * np.sin(3 * lam) * np.cos(phi),
        "850:Q": 0.008 * np.cos(phi) ** 4,
        "Surface:P": 101325.0 + 1500.0 * wave,
    }
    return Fields(time=datetime(2017, 1, 1, tzinfo=UTC), lat=lat, lon=lon, data=data)


def weights_like(fields: Fields, values: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.cos(np.radians(fields.lat))[:, None], values.shape)


def weighted_rms(values: np.ndarray, w: np.ndarray) -> float:
    return float(np.sqrt(np.sum(w * values**2) / np.sum(w)))


def weighted_std(values: np.ndarray, w: np.ndarray) -> float:
    return weighted_rms(values - np.sum(w * values) / np.sum(w), w)


def delta(base: Fields, config: dict[str, Any], member: int = 1, seed: str = SEED) -> dict[str, np.ndarray]:
    out = ensembles.perturb(base, config, member=member, seed=seed)
    return {key: out.data[key] - base.data[key] for key in base.data}


# --- reproducibility --------------------------------------------------------------------------------
def test_same_seed_and_member_give_bit_identical_members() -> None:
    base = state()
    for member in (1, 2, 10):
        one = ensembles.perturb(base, perlin(), member=member, seed=SEED)
        two = ensembles.perturb(state(), perlin(), member=member, seed=SEED)
        assert one.features == two.features == base.features
        for key in base.data:
            assert one.data[key].tobytes() == two.data[key].tobytes()


def _digest_in_a_fresh_process(hash_seed: str) -> str:
    code = (
        "import hashlib, sys; sys.path.insert(0, 'tests/forecasts'); sys.path.insert(0, '.');"
        "from test_ensembles import state, perlin, SEED; from forecasts import ensembles;"
        "out = ensembles.perturb(state(), perlin(), member=3, seed=SEED);"
        "print(hashlib.sha256(b''.join(out.data[k].tobytes() for k in out.features)).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_members_are_reproducible_across_processes() -> None:
    """Python's per-process string hash must not leak in: another process, another hash seed, same bits."""
    out = ensembles.perturb(state(), perlin(), member=3, seed=SEED)
    here = hashlib.sha256(b"".join(out.data[k].tobytes() for k in out.features)).hexdigest()
    assert _digest_in_a_fresh_process("1") == here
    assert _digest_in_a_fresh_process("2") == here


def test_members_differ_and_so_do_jobs_and_start_times() -> None:
    base = state()
    members = [delta(base, perlin(), member=m) for m in range(1, 11)]
    other_start = delta(base, perlin(), member=1, seed="42:2017010106")
    other_job = delta(base, perlin(), member=1, seed="43:2017010100")
    for key in base.data:
        w = weights_like(base, base.data[key])
        for i in range(10):
            for j in range(i + 1, 10):
                # Independent patterns of RMS a: their difference has RMS about a·√2; 0.5·a is far from 0.
                gap = weighted_rms(members[i][key] - members[j][key], w)
                assert gap > 0.5 * weighted_rms(members[i][key], w), (key, i, j)
        assert not np.array_equal(other_start[key], members[0][key])
        assert not np.array_equal(other_job[key], members[0][key])


def test_the_input_is_left_alone_and_the_answer_holds_new_arrays() -> None:
    base = state()
    before = {key: values.copy() for key, values in base.data.items()}
    lat, lon = base.lat.copy(), base.lon.copy()
    out = ensembles.perturb(base, perlin(), member=1, seed=SEED)
    for key in base.data:
        assert np.array_equal(base.data[key], before[key])
        assert not np.shares_memory(out.data[key], base.data[key])
    assert np.array_equal(base.lat, lat) and np.array_equal(base.lon, lon)
    assert not np.shares_memory(out.lat, base.lat) and out.time == base.time


def test_member_0_is_the_unperturbed_control() -> None:
    base = state()
    out = ensembles.perturb(base, perlin(), member=0, seed=SEED)
    for key in base.data:
        assert np.array_equal(out.data[key], base.data[key])
        assert not np.shares_memory(out.data[key], base.data[key])


# --- amplitude ------------------------------------------------------------------------------------
def test_the_perturbation_is_scale_times_each_fields_spread() -> None:
    """Area-weighted RMS of the perturbation = scale times the field's area-weighted std (to rounding); its
    std is at most that and, at these settings (x = y = 0.5, 3 octaves), within 5% below it."""
    base = state()
    for scale in (0.0001, 0.1, 0.4999):
        for member in range(1, 11):
            d = delta(base, perlin(scale=scale), member=member)
            for key in ("500:Z", "850:T", "500:U", "500:V", "Surface:P"):
                w = weights_like(base, base.data[key])
                expected = scale * weighted_std(base.data[key], w)
                assert weighted_rms(d[key], w) == pytest.approx(expected, rel=1e-7), (scale, member, key)
                assert 0.95 * expected <= weighted_std(d[key], w) <= expected * (1 + 1e-7), (scale, member, key)


def test_doubling_scale_doubles_the_perturbation() -> None:
    base = state()
    small, large = delta(base, perlin(scale=0.1)), delta(base, perlin(scale=0.2))
    for key in ("500:Z", "850:T", "500:U", "500:V", "Surface:P"):
        assert np.abs(small[key]).max() > 0
        np.testing.assert_allclose(large[key], 2 * small[key], rtol=1e-8, atol=0)


def test_humidity_never_goes_negative() -> None:
    base = state()
    out = ensembles.perturb(base, perlin(scale=0.4999), member=1, seed=SEED)
    assert out.data["850:Q"].min() >= 0.0
    assert (out.data["850:Q"] != base.data["850:Q"]).any()


# --- shape of the noise ---------------------------------------------------------------------------
def test_the_noise_is_periodic_in_longitude() -> None:
    """The pattern on lon 3..360 continues the one on lon 0..357: its column at 360° is the column at 0°;
    and on one grid the wrap-around step (357° to 0°) is no larger than an ordinary neighbour step."""
    lat = np.linspace(90.0, -90.0, 61)
    first = ensembles.perlin_pattern(lat, np.arange(0.0, 360.0, 3.0), octaves=1, x=0.5, y=0.5, seed="p")
    shifted = ensembles.perlin_pattern(lat, np.arange(3.0, 363.0, 3.0), octaves=1, x=0.5, y=0.5, seed="p")
    np.testing.assert_allclose(shifted[:, -1], first[:, 0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(shifted[:, :-1], first[:, 1:], rtol=0, atol=1e-9)
    base = state()
    for octave in (1, 9):
        d = delta(base, perlin(octave=octave))["850:T"]
        steps = np.sqrt(np.mean(np.diff(d, axis=1) ** 2, axis=0))  # RMS of each neighbour step 0→3 ... 354→357
        wrap = np.sqrt(np.mean((d[:, 0] - d[:, -1]) ** 2))
        assert wrap <= 2 * np.median(steps), (octave, wrap, np.median(steps))


def test_more_octaves_put_more_variance_at_small_scales() -> None:
    """Mean squared neighbour difference of the unit-RMS pattern (1° grid) grows with the octaves."""
    base = state(step=1.0)
    w = weights_like(base, base.data["850:T"])
    msd = []
    for octave in (1, 3, 9):
        d = delta(base, perlin(octave=octave))["850:T"]
        unit = d / weighted_rms(d, w)
        msd.append(np.mean(np.diff(unit, axis=1) ** 2) + np.mean(np.diff(unit, axis=0) ** 2))
    assert msd[0] < msd[1] < msd[2]
    assert msd[2] > 2.5 * msd[0], msd


def test_x_0_is_constant_along_longitude_and_y_0_along_latitude() -> None:
    lat, lon = np.linspace(90.0, -90.0, 61), np.arange(0.0, 360.0, 3.0)

    def pattern(x: float, y: float) -> np.ndarray:
        return ensembles.perlin_pattern(lat, lon, octaves=3, x=x, y=y, seed="c")

    along_lat = pattern(0.0, 0.5)
    assert np.ptp(along_lat, axis=1).max() == 0.0  # every latitude circle is one point of noise space
    assert np.ptp(along_lat[:, 0]) > 1.0
    along_lon = pattern(0.5, 0.0)
    assert np.ptp(along_lon, axis=0).max() == 0.0
    assert np.ptp(along_lon[0, :]) > 1.0
    uniform = pattern(0.0, 0.0)
    assert np.ptp(uniform) == 0.0 and abs(uniform[0, 0]) == pytest.approx(1.0, rel=1e-12)
    # ... and so through perturb, to the rounding of field + perturbation - field.
    base = state()
    d = delta(base, perlin(x=0.0, y=0.5))["850:T"]
    assert np.ptp(d, axis=1).max() < 1e-9 * np.ptp(d)


def test_larger_x_and_y_give_smaller_features() -> None:
    base = state(step=1.0)
    w = weights_like(base, base.data["850:T"])

    def roughness(x: float, y: float, axis: int) -> float:
        d = delta(base, perlin(octave=1, x=x, y=y))["850:T"]
        return float(np.mean(np.diff(d / weighted_rms(d, w), axis=axis) ** 2))

    assert roughness(0.8, 0.5, axis=1) > 2 * roughness(0.2, 0.5, axis=1)
    assert roughness(0.5, 0.8, axis=0) > 2 * roughness(0.5, 0.2, axis=0)


def test_bad_configs_and_members_are_refused() -> None:
    base = state()
    with pytest.raises(ensembles.EnsembleError):
        ensembles.perturb(base, perlin(), member=-1, seed=SEED)
    with pytest.raises(ensembles.EnsembleError):
        ensembles.perturb(base, {**perlin(), "ensemble_noise_method": "cnop"}, member=1, seed=SEED)
    with pytest.raises(ensembles.EnsembleError):
        ensembles.perturb(base, {**perlin(), "ensemble_noise_perlin_scale": 0.5}, member=1, seed=SEED)
    config = perlin()
    del config["ensemble_noise_perlin_x"]
    with pytest.raises(ensembles.EnsembleError, match="ensemble_noise_perlin_x"):
        ensembles.perturb(base, config, member=1, seed=SEED)


def test_the_stored_config_of_the_seeds_example_perturbs() -> None:
    """What the pipeline passes: TaskSpec.config_json() of the seed's ensemble example."""
    spec = parse_task(SEED_ENSEMBLE_EXAMPLE)
    base = state()
    out = ensembles.perturb(base, spec.config_json(), member=1, seed=SEED)
    w = weights_like(base, base.data["500:Z"])
    expected = 0.1 * weighted_std(base.data["500:Z"], w)
    assert weighted_rms(out.data["500:Z"] - base.data["500:Z"], w) == pytest.approx(expected, rel=1e-7)


# --- ensemble mean and spread ---------------------------------------------------------------------
def test_ensemble_mean_and_spread_by_hand() -> None:
    lat, lon = np.array([10.0, -10.0]), np.array([0.0, 180.0])
    when = datetime(2017, 1, 1, tzinfo=UTC)
    values = [1.0, 2.0, 3.0, 6.0]
    members = [Fields(when, lat, lon, {"500:T": np.full((2, 2), v), "Surface:P": np.full((2, 2), -v)}) for v in values]
    mean, spread = ensembles.ensemble_stats(members)
    # mean 3; squared departures 4 + 1 + 0 + 9 = 14; unbiased variance 14 / 3
    assert np.array_equal(mean.data["500:T"], np.full((2, 2), 3.0))
    assert np.array_equal(mean.data["Surface:P"], np.full((2, 2), -3.0))
    np.testing.assert_allclose(spread.data["500:T"], np.full((2, 2), (14 / 3) ** 0.5), rtol=1e-15)
    np.testing.assert_allclose(spread.data["Surface:P"], np.full((2, 2), (14 / 3) ** 0.5), rtol=1e-15)
    assert mean.time == when and np.array_equal(spread.lat, lat)


def test_ensemble_stats_refuses_what_is_not_one_ensemble() -> None:
    one = state()
    with pytest.raises(ensembles.EnsembleError):
        ensembles.ensemble_stats([one])
    other = state()
    del other.data["850:Q"]
    with pytest.raises(ensembles.EnsembleError):
        ensembles.ensemble_stats([one, other])
    later = state()
    later.time = datetime(2017, 1, 1, 6, tzinfo=UTC)
    with pytest.raises(ensembles.EnsembleError):
        ensembles.ensemble_stats([one, later])
    finer = state(step=1.0)
    with pytest.raises(ensembles.EnsembleError):
        ensembles.ensemble_stats([one, finer])


# --- the seed's ranges, both sides of every end -------------------------------------------------------
def test_the_seeds_two_request_examples_parse() -> None:
    assert parse_task(SEED_EXAMPLE).ensemble is None
    ensemble = parse_task(SEED_ENSEMBLE_EXAMPLE).ensemble
    assert ensemble is not None
    assert (ensemble.members, ensemble.method, ensemble.perlin_scale, ensemble.perlin_octave) == (2, "perlin", 0.1, 1)
    assert (ensemble.perlin_x, ensemble.perlin_y) == (0.2, 0.2)


RANGES = [
    # (field, refused values, accepted values, extra config)
    ("ensemble_noise_perlin_scale", [0, 0.5], [0.0001, 0.4999], {}),
    ("ensemble_noise_perlin_octave", [0, 10], [1, 9], {}),
    ("ensemble_noise_perlin_x", [-0.0001, 1], [0, 0.9999], {}),
    ("ensemble_noise_perlin_y", [-0.0001, 1], [0, 0.9999], {}),
    ("num_ensembles", [1, 11], [2, 10], {}),
    ("ensemble_cnop_initial_quantity", [1, 351], [2, 350], {"ensemble_noise_method": "cnop"}),
]
ACCEPTED_AS = {
    "ensemble_noise_perlin_scale": "perlin_scale",
    "ensemble_noise_perlin_octave": "perlin_octave",
    "ensemble_noise_perlin_x": "perlin_x",
    "ensemble_noise_perlin_y": "perlin_y",
    "num_ensembles": "members",
    "ensemble_cnop_initial_quantity": "cnop_candidates",
}


def _ensemble_body(**config: Any) -> dict[str, Any]:
    body = copy.deepcopy(SEED_ENSEMBLE_EXAMPLE)
    body["config"].update(config)
    return body


@pytest.mark.parametrize(("field", "refused", "accepted", "extra"), RANGES, ids=[r[0] for r in RANGES])
def test_every_ensemble_range_end_both_sides(
    field: str, refused: list[float], accepted: list[float], extra: dict[str, Any]
) -> None:
    for value in refused:
        with pytest.raises(ConfigError) as caught:
            parse_task(_ensemble_body(**extra, **{field: value}))
        assert caught.value.field == f"config.{field}", value
    for value in accepted:
        ensemble = parse_task(_ensemble_body(**extra, **{field: value})).ensemble
        assert ensemble is not None
        assert getattr(ensemble, ACCEPTED_AS[field]) == value
