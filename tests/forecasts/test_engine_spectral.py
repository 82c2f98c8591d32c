"""The built-in engine verified: Williamson et al. (1992) test case 2 (steady geostrophic flow) at T42
for 5 days, test case 6 (Rossby-Haurwitz wave 4) conserving mass, the transform, and on real ERA5 fields
a 24 h forecast that beats persistence. Analytic solutions are written out here from the paper, not
taken from the engine."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from forecasts.engines import Cancelled, EngineError, get_engine
from forecasts.engines.spectral import ShallowWater, SpectralEngine, Sphere, regrid
from forecasts.fields import Fields
from forecasts.samples import load_era5_sample

A = 6.37122e6  # Williamson et al. (1992): radius, rotation, gravity
OMEGA = 7.292e-5
G = 9.80616
DT = SpectralEngine.dt  # the cases run at the engine's own time step
STEPS_PER_DAY = round(86400 / DT)


@pytest.fixture(scope="module")
def sphere() -> Sphere:
    return Sphere(42)


def _l2(sphere: Sphere, h: np.ndarray, truth: np.ndarray) -> float:
    """Williamson's normalised l2 error: sqrt(I[(h - h_T)^2]) / sqrt(I[h_T^2]), I the area mean."""
    w = sphere.weights[:, None]
    return float(np.sqrt(((h - truth) ** 2 * w).sum() / (truth**2 * w).sum()))


def _case2(sphere: Sphere, alpha: float, *, coriolis_off: bool = False) -> float:
    lat = np.radians(sphere.lat)[:, None]
    lon = np.radians(sphere.lon)[None, :]
    u0 = 2 * np.pi * A / (12 * 86400)  # one revolution in 12 days
    gh0 = 2.94e4
    u = u0 * (np.cos(lat) * np.cos(alpha) + np.cos(lon) * np.sin(lat) * np.sin(alpha))
    v = -u0 * np.sin(lon) * np.sin(alpha) + 0 * lat
    rotated = -np.cos(lon) * np.cos(lat) * np.sin(alpha) + np.sin(lat) * np.cos(alpha)
    gh = gh0 - (A * OMEGA * u0 + u0**2 / 2) * rotated**2
    f = 2 * OMEGA * rotated * (0 if coriolis_off else 1)
    phibar = sphere.mean(gh[None])
    model = ShallowWater(sphere, phibar, dt=DT, coriolis=f + 0 * lon)
    start = model.state(u[None] + 0 * lon, v[None] + 0 * lat, gh[None] - phibar[:, None, None])
    [end] = model.run(start, [5 * STEPS_PER_DAY])
    h = (sphere.synthesise(end.phi)[0] + phibar[0]) / G
    return _l2(sphere, h, gh / G)


@pytest.mark.parametrize("alpha", [0.0, np.pi / 4, np.pi / 2 - 0.05])
def test_williamson_case_2_holds_its_steady_state_for_5_days(sphere: Sphere, alpha: float) -> None:
    assert _case2(sphere, alpha) < 1e-6


def test_case_2_fails_without_the_coriolis_force(sphere: Sphere) -> None:
    # The check bites: the same flow without rotation is not steady.
    assert _case2(sphere, 0.0, coriolis_off=True) > 1e-3


def test_williamson_case_6_conserves_mass(sphere: Sphere) -> None:
    lat = np.radians(sphere.lat)[:, None]
    lon = np.radians(sphere.lon)[None, :]
    omega = k = 7.848e-6
    r, h0 = 4, 8000.0
    c = np.cos(lat)
    u = A * omega * c + A * k * c ** (r - 1) * (r * np.sin(lat) ** 2 - c**2) * np.cos(r * lon)
    v = -A * k * r * c ** (r - 1) * np.sin(lat) * np.sin(r * lon)
    big_a = omega / 2 * (2 * OMEGA + omega) * c**2 + 0.25 * k**2 * c ** (2 * r) * (
        (r + 1) * c**2 + (2 * r**2 - r - 2) - 2 * r**2 * c**-2
    )
    big_b = 2 * (OMEGA + omega) * k / ((r + 1) * (r + 2)) * c**r * ((r**2 + 2 * r + 2) - (r + 1) ** 2 * c**2)
    big_c = 0.25 * k**2 * c ** (2 * r) * ((r + 1) * c**2 - (r + 2))
    gh = G * h0 + A**2 * (big_a + big_b * np.cos(r * lon) + big_c * np.cos(2 * r * lon))
    phibar = sphere.mean(gh[None])
    model = ShallowWater(sphere, phibar, dt=DT)
    start = model.state(u[None], v[None], gh[None] - phibar[:, None, None])
    mass0 = float(sphere.mean(sphere.synthesise(start.phi) + phibar[:, None, None])[0])
    states = list(model.run(start, [STEPS_PER_DAY, 7 * STEPS_PER_DAY]))
    for state in states:
        mass = float(sphere.mean(sphere.synthesise(state.phi) + phibar[:, None, None])[0])
        assert abs(mass - mass0) / mass0 < 1e-10
    # It did move: the wave travels, the height field after a week is not the initial one.
    h_week = sphere.synthesise(states[-1].phi)[0] + phibar[0]
    assert _l2(sphere, h_week, gh) > 1e-3


def test_the_transform_round_trips_band_limited_fields(sphere: Sphere) -> None:
    rng = np.random.default_rng(7)
    spec = rng.normal(size=(43, 43)) + 1j * rng.normal(size=(43, 43))
    spec *= sphere.valid
    spec[0] = spec[0].real  # m = 0 coefficients of a real field are real
    grid = sphere.synthesise(spec)
    assert np.allclose(sphere.analyse(grid), spec, atol=1e-10)
    # The quadrature integrates the sphere's area exactly: the mean of cos(lat)^2 is 2/3.
    assert abs(float(sphere.mean(sphere.coslat2[:, None] + 0 * sphere.lon)) - 2 / 3) < 1e-14


def test_regrid_is_exact_on_grid_points_and_periodic_in_longitude() -> None:
    lat = np.array([60.0, 0.0, -60.0])
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    field = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(regrid(field, lat, lon, lat, lon), field)
    # Halfway between 270 and 360 (= 0) is the mean of the last and first columns.
    assert regrid(field, lat, lon, np.array([0.0]), np.array([315.0]))[0, 0] == (field[1, 3] + field[1, 0]) / 2


def test_on_era5_a_24h_500hpa_forecast_beats_persistence() -> None:
    engine = get_engine("builtin-spectral")
    assert engine is not None
    states = load_era5_sample()
    by_time = {s.time: s for s in states}
    weights = np.cos(np.radians(states[0].lat))[:, None]  # WeatherBench2's latitude weights

    def rmse(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(((a - b) ** 2 * weights).sum() / (weights.sum() * a.shape[1])))

    checked = 0
    for start in states:
        truth = by_time.get(start.time + timedelta(hours=24))
        if truth is None:
            continue
        [forecast] = engine.forecast(start, [24], ["500:Z", "500:T", "850:Z"])
        assert forecast.time == truth.time
        # Measured 431 against 620 and 631 m2 s-2: the margin the balanced start buys (592 without it).
        assert rmse(forecast.data["500:Z"], truth.data["500:Z"]) < 0.75 * rmse(start.data["500:Z"], truth.data["500:Z"])
        assert rmse(forecast.data["500:T"], truth.data["500:T"]) < rmse(start.data["500:T"], truth.data["500:T"])
        assert rmse(forecast.data["850:Z"], truth.data["850:Z"]) < rmse(start.data["850:Z"], truth.data["850:Z"])
        checked += 1
    assert checked == 2  # 2017010100 -> 2017010200 and 2017010112 -> 2017010212


def test_leads_features_and_stopping() -> None:
    engine = get_engine("builtin-spectral")
    assert engine is not None
    start = load_era5_sample()[0]
    assert engine.producible(start.data) == {
        "500:Z", "500:U", "500:V", "500:T", "850:Z", "850:U", "850:V", "850:T",
    }  # fmt: skip
    assert engine.producible(["Surface:P", "500:T"]) == set()
    seen: list[float] = []
    states = list(engine.forecast(start, [1, 6, 12], ["850:Z", "500:U"], progress=seen.append))
    assert [s.time - start.time for s in states] == [timedelta(hours=h) for h in (1, 6, 12)]
    assert all(set(s.data) == {"850:Z", "500:U"} for s in states)
    assert all(s.data["850:Z"].shape == start.data["850:Z"].shape for s in states)
    assert seen == [1 / 12, 6 / 12, 1.0]
    with pytest.raises(EngineError, match="Surface:P"):
        list(engine.forecast(start, [6], ["Surface:P"]))
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Cancelled):
        list(engine.forecast(start, [24], ["500:Z"], should_stop=stop))
    assert len(calls) == 6  # checked before every step, stopped at the sixth


def test_the_input_is_not_modified_and_lead_zero_changes_nothing_it_does_not_forecast() -> None:
    engine = get_engine("builtin-spectral")
    assert engine is not None
    start = load_era5_sample()[0]
    before = {k: v.copy() for k, v in start.data.items()}
    copy = Fields(time=start.time, lat=start.lat, lon=start.lon, data=dict(start.data))
    [state] = engine.forecast(copy, [1], ["500:Z"])
    assert all(np.array_equal(start.data[k], before[k]) for k in before)
    # One hour on, the heights moved a little, everywhere finite.
    change = state.data["500:Z"] - start.data["500:Z"]
    assert np.isfinite(change).all() and 0 < np.abs(change).max() < 2000


@pytest.mark.parametrize("leads", [[], [0], [12, 6], [6, 6], [-6, 6]])
def test_leads_that_are_not_increasing_whole_hours_from_1_are_refused(leads: list[int]) -> None:
    engine = get_engine("builtin-spectral")
    assert engine is not None
    with pytest.raises(EngineError, match="Lead hours"):
        list(engine.forecast(load_era5_sample()[0], leads, ["500:Z"]))
