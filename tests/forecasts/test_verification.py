"""Verification with WeatherBench2's definitions (forecasts/verification.py): each metric against values
worked by hand on tiny grids (the arithmetic is in the comments), WB2's own test cases transcribed, and a
job that runs in this process and stores verification.json with scores recomputed here from the files."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest

from forecasts import verification as v

# Latitudes 60, 0, -60 (north first, as the project stores them): bounds -90, -30, 30, 90 going up, so
# the cell areas sin(b1) - sin(b0) are 0.5, 1, 0.5 (south to north), mean 2/3: weights 0.75, 1.5, 0.75.
LAT3 = np.array([60.0, 0.0, -60.0])


def test_lat_weights_are_cell_areas_normalised_to_mean_one() -> None:
    assert v.lat_weights(LAT3) == pytest.approx([0.75, 1.5, 0.75], abs=1e-15)
    # WB2's test_get_lat_weights, transcribed: integrals of cos over 30° bands, times 3 (mean 1).
    lat = np.array([-75, -45, -15, 15, 45, 75])
    s3 = math.sqrt(3)
    expected = 3 * np.array([1 - s3 / 2, (s3 - 1) / 2, 1 / 2, 1 / 2, (s3 - 1) / 2, 1 - s3 / 2])
    assert v.lat_weights(lat) == pytest.approx(expected, abs=1e-12)
    assert v.lat_weights(lat[::-1]) == pytest.approx(expected[::-1], abs=1e-12)  # order kept, north first
    # On a regular grid the interior rows are exactly cos φ up to a constant; the pole rows hold half cells.
    grid = np.linspace(90, -90, 61)
    w = v.lat_weights(grid)
    assert w[1:-1] / np.cos(np.radians(grid[1:-1])) == pytest.approx(np.full(59, w[30]), rel=1e-12)
    assert w[0] == pytest.approx(w[30] * (1 - math.cos(math.radians(1.5))) / (2 * math.sin(math.radians(1.5))))
    with pytest.raises(v.VerificationError):
        v.lat_weights([10.0, 10.0])


def test_rmse_by_hand_on_a_3_by_4_grid() -> None:
    truth = np.zeros((3, 4))
    error = np.array(
        [
            [1.0, -1.0, 1.0, -1.0],  # mean square 1
            [2.0, 2.0, 0.0, 0.0],  # (4 + 4) / 4 = 2
            [0.0, 0.0, 0.0, 4.0],  # 16 / 4 = 4
        ]
    )
    # Weighted: (0.75·1 + 1.5·2 + 0.75·4) / (0.75 + 1.5 + 0.75) = 6.75 / 3 = 2.25; RMSE 1.5.
    assert v.mse(truth + error, truth, LAT3) == pytest.approx(2.25, abs=1e-12)
    assert v.rmse(truth + error, truth, LAT3) == pytest.approx(1.5, abs=1e-12)
    # Unweighted it would be sqrt((1 + 2 + 4) / 3) = 1.5275: the weights matter.
    # Two starts, the second off by 3 everywhere (MSE 9): WB2's RMSE is sqrt((2.25 + 9) / 2) = sqrt(5.625),
    # not the mean of the per-start RMSEs (1.5 + 3) / 2 = 2.25.
    forecast = np.stack([truth + error, truth + 3.0])
    assert v.rmse(forecast, np.zeros((2, 3, 4)), LAT3) == pytest.approx(math.sqrt(5.625), abs=1e-12)
    with pytest.raises(v.VerificationError):
        v.rmse(np.zeros((3, 4)), np.zeros((3, 3)), LAT3)


def test_acc_by_hand() -> None:
    # 2 by 3 at latitudes 30, -30: bounds -90, 0, 90, both rows weight 1.
    lat = np.array([30.0, -30.0])
    forecast = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    truth = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # Climatology 0: Σft = 1 + 6 = 7, Σf² = 91, Σt² = 2, so 7 / sqrt(182).
    assert v.acc(forecast, truth, 0.0, lat) == pytest.approx(7 / math.sqrt(182), abs=1e-12)
    # Climatology 1: f' = [[0,1,2],[3,4,5]], t' = [[0,-1,-1],[-1,-1,0]]; Σf't' = -10, Σf'² = 55, Σt'² = 4.
    assert v.acc(forecast, truth, np.ones((2, 3)), lat) == pytest.approx(-10 / math.sqrt(220), abs=1e-12)
    # Weighted, on LAT3 with one longitude: f = 1, 2, 3, t = 1, 1, -1, w = 0.75, 1.5, 0.75:
    # Σwft = 0.75 + 3 - 2.25 = 1.5, Σwf² = 0.75 + 6 + 6.75 = 13.5, Σwt² = 3: 1.5 / sqrt(40.5).
    f3, t3 = np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [1.0], [-1.0]])
    assert v.acc(f3, t3, 0.0, LAT3) == pytest.approx(1.5 / math.sqrt(40.5), abs=1e-12)
    # Over two starts the per-start correlations are averaged (WB2's ACC.compute): (1 + -1) / 2 = 0.
    assert v.acc(np.stack([t3, -t3]), np.stack([t3, t3]), 0.0, LAT3) == pytest.approx(0.0, abs=1e-12)


def test_crps_is_the_fair_estimator_by_hand() -> None:
    # One point (latitude 0: weight 1). Members 1, 2, 4; truth 3.
    members, truth, lat = np.array([1.0, 2.0, 4.0]).reshape(3, 1, 1), np.full((1, 1), 3.0), np.array([0.0])
    # Skill E|X - y| = (2 + 1 + 1) / 3 = 4/3. Spread over the 6 ordered pairs i ≠ j: 2(1 + 3 + 2) / (3·2) = 2.
    score, skill, spread = v.crps_parts(members, truth, lat)
    assert (skill, spread) == pytest.approx((4 / 3, 2.0), abs=1e-12)
    # CRPS = 4/3 - 2/2 = 1/3 (the biased M² estimator would give 4/3 - 12/18 = 2/3).
    assert score == pytest.approx(1 / 3, abs=1e-12)
    assert v.crps(members, truth, lat) == pytest.approx(1 / 3, abs=1e-12)
    # WB2's test_ensemble_size_1_gives_mae: one member, spread 0, CRPS = MAE.
    assert v.crps_parts(members[:1], truth, lat) == pytest.approx((2.0, 2.0, 0.0))
    # Weighted over LAT3 (one longitude): per point with members (0, 2) and truth 1, 0, 5:
    # skill (1+1)/2 = 1, 2/2 = 1, (5+3)/2 = 4; spread 2·2/2 = 2 everywhere; CRPS 0, 0, 3;
    # weighted (0.75·0 + 1.5·0 + 0.75·3) / 3 = 0.75.
    pair = np.stack([np.zeros((3, 1)), np.full((3, 1), 2.0)])
    assert v.crps(pair, np.array([[1.0], [0.0], [5.0]]), LAT3) == pytest.approx(0.75, abs=1e-12)


def _crps_brute_force(members: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> float:
    """WB2's _crps_brute_force (metrics_test.py) in numpy: every pair i ≠ j, divided by M(M-1)."""
    m = members.shape[0]
    skill = np.mean([np.abs(members[i] - truth) for i in range(m)], axis=0)
    pairs = [np.abs(members[i] - members[j]) for i, j in itertools.product(range(m), repeat=2) if i != j]
    spread = np.sum(pairs, axis=0) / (m * (m - 1))
    weights = v.lat_weights(lat)[:, None] * np.ones(truth.shape[-1])
    per_start = ((skill - 0.5 * spread) * weights).sum(axis=(-2, -1)) / weights.sum()
    return float(np.mean(per_start))


@pytest.mark.parametrize("size", [2, 3, 5])
def test_crps_matches_wb2s_brute_force(size: int) -> None:
    rng = np.random.default_rng(size)
    lat = np.linspace(80, -80, 5)
    members, truth = rng.normal(size=(size, 2, 5, 7)), rng.normal(size=(2, 5, 7))
    members[1] = members[0]  # WB2's test_repeated_forecasts_are_okay: ties change nothing
    assert v.crps(members, truth, lat) == pytest.approx(_crps_brute_force(members, truth, lat), rel=1e-12)


def test_spread_skill_by_hand() -> None:
    members, truth, lat = np.array([1.0, 2.0, 4.0]).reshape(3, 1, 1), np.full((1, 1), 3.0), np.array([0.0])
    # Mean 7/3; deviations -4/3, -1/3, 5/3; Σ² = 42/9; variance (ddof 1) 7/3, spread sqrt(7/3).
    # Ensemble mean error 7/3 - 3 = -2/3: skill 2/3. Ratio sqrt(7/3) · 3/2.
    spread, skill, ratio = v.spread_skill(members, truth, lat)
    assert (spread, skill, ratio) == pytest.approx((math.sqrt(7 / 3), 2 / 3, math.sqrt(7 / 3) * 1.5), abs=1e-12)
    # Two starts: variances averaged before the root (WB2's EnsembleVariance, then sqrt). Second start
    # members 0, 0, 6 (mean 2, variance (4+4+16)/2 = 12), truth 2: skill sqrt((4/9 + 0) / 2).
    two = np.stack([members, np.array([0.0, 0.0, 6.0]).reshape(3, 1, 1)], axis=1)
    spread, skill, _ = v.spread_skill(two, np.stack([truth, np.full((1, 1), 2.0)]), lat)
    assert (spread, skill) == pytest.approx((math.sqrt((7 / 3 + 12) / 2), math.sqrt(2 / 9)), abs=1e-12)
    with pytest.raises(v.VerificationError):
        v.spread_skill(members[:1], truth, lat)


# --- a job, run in this process, verified on finalising ---------------------------------------------------
def _run_job(alice: Any, config: dict[str, Any], output_path: str = "verif/") -> Any:
    from forecasts import services, tasks
    from forecasts.config import parse_task
    from forecasts.models import ForecastJob
    from forecasts.samples import DEMO_BUCKET
    from models_registry.models import Deployment

    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    spec = parse_task(
        {
            "name": "hindcast",
            "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": "era5/"}]},
            "output": {"obs": {"bucket": DEMO_BUCKET, "path": output_path}},
            "config": {"draw_figures": "false", "forecast_features": "500:Z;850:T", **config},
        }
    )
    job = services.job_submit(project=alice.project, deployment=deployment, user=alice.user, spec=spec)
    for run in job.runs.order_by("start_time", "member"):
        tasks.run_forecast(run.pk, run.attempt)
    tasks.finalise_job(job.pk)
    return ForecastJob.objects.get(pk=job.pk)


def _sample(var: str, level: int, hour_index: int) -> np.ndarray:
    """A field of the ERA5 demo file, read here with netCDF4 alone (times 00, 12 UTC on 1 and 2 Jan)."""
    import netCDF4

    from forecasts.samples import sample_files

    with netCDF4.Dataset(sample_files()[0]) as nc:
        levels = list(nc["level"][:])
        return np.asarray(nc[var][hour_index, levels.index(level)], dtype=np.float64)


def _forecast(key: str, var: str, level: int, lead: int) -> np.ndarray:
    import netCDF4

    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    with default_store().local_path(DEMO_BUCKET, key) as path, netCDF4.Dataset(path) as nc:
        t = list(nc["lead_time"][:]).index(lead)
        return np.asarray(nc[var][t, list(nc["level"][:]).index(level)], dtype=np.float64)


def _weighted_rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Independent of the module: the demo's 3° grid, 90 to -90; each row's band of the sphere,
    sin(φ + 1.5°) - sin(φ - 1.5°) clipped at the poles, as the weight."""
    lat = np.radians(np.linspace(90, -90, 61))
    half = math.radians(1.5)
    area = np.sin(np.minimum(lat + half, math.pi / 2)) - np.sin(np.maximum(lat - half, -math.pi / 2))
    return math.sqrt(float((area[:, None] * (a - b) ** 2).sum() / (area.sum() * a.shape[1])))


def test_a_hindcast_job_stores_its_scores(alice: Any, weather: Any) -> None:
    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    job = _run_job(
        alice,
        {
            "start_time_begin": "2017010100",
            "start_time_end": "2017010100",
            "forecast_lead_hours": 24,
            "draw_figures": "true",
        },
    )
    store = default_store()
    manifest = json.loads(store.read_bytes(DEMO_BUCKET, f"verif/{job.pk}/manifest.json"))
    keys = {"json": f"verif/{job.pk}/verification.json", "figure": f"verif/{job.pk}/verification.png"}
    assert manifest["verification"] == {"files": keys, "reason": ""}
    report = json.loads(store.read_bytes(DEMO_BUCKET, keys["json"]))
    assert store.read_bytes(DEMO_BUCKET, keys["figure"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["truth"] == [store.location(DEMO_BUCKET, "era5/")] and report["reason"] == ""
    assert list(report["features"]) == ["500:Z", "850:T"]
    forecast_key = f"verif/{job.pk}/2017010100/forecast.nc"
    for feature, var, level in (("500:Z", "z", 500), ("850:T", "t", 850)):
        rows = report["features"][feature]["rows"]
        # Truth exists at 12 h and 24 h (the demo's 12 UTC and next-day 00 UTC), not at 6 h or 18 h.
        assert [r["lead"] for r in rows] == [12, 24] and all(r["starts"] == 1 for r in rows)
        for row, index in zip(rows, (1, 2), strict=True):
            truth = _sample(var, level, index)
            expected = _weighted_rmse(_forecast(forecast_key, var, level, row["lead"]), truth)
            assert row["rmse"] == pytest.approx(expected, rel=1e-9)
            assert row["persistence_rmse"] == pytest.approx(_weighted_rmse(_sample(var, level, 0), truth), rel=1e-9)
            assert row["acc"] is None and row["crps"] is None
    # The built-in engine beats persistence on 500 hPa geopotential at 24 h (docs/forecasts.md).
    z24 = report["features"]["500:Z"]["rows"][1]
    assert z24["rmse"] < z24["persistence_rmse"]
    assert report["acc"].startswith("Not computed")


def test_an_ensemble_hindcast_gets_crps_and_spread_skill(alice: Any, weather: Any) -> None:
    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    config = {
        "start_time_begin": "2017010100",
        "start_time_end": "2017010112",
        "start_time_interval_hours": 12,
        "forecast_lead_hours": 12,
        "num_ensembles": 2,
        "ensemble_forecast_features": "500:Z;500:T",  # 500:T for the members only
    }
    job = _run_job(alice, config)
    report = json.loads(default_store().read_bytes(DEMO_BUCKET, f"verif/{job.pk}/verification.json"))
    # Leads 6 and 12: truth only at 12 h, for both starts (valid 12 UTC on 1 Jan and 00 UTC on 2 Jan).
    (z_row,) = report["features"]["500:Z"]["rows"]
    (t_row,) = report["features"]["850:T"]["rows"]
    assert (z_row["lead"], z_row["starts"], z_row["members"], z_row["ensemble_starts"]) == (12, 2, 2, 2)
    assert t_row["crps"] is None  # 850:T is not an ensemble feature
    # 500:T is the members' only: ensemble scores, no control RMSE.
    (t500,) = report["features"]["500:T"]["rows"]
    assert (t500["rmse"], t500["starts"], t500["ensemble_starts"]) == (None, 0, 2)
    members_t = np.stack(
        [
            np.stack([_forecast(f"verif/{job.pk}/{start}/member-{m:02d}/forecast.nc", "t", 500, 12) for m in (1, 2)])
            for start in ("2017010100", "2017010112")
        ],
        axis=1,
    )
    truth_t = np.stack([_sample("t", 500, 1), _sample("t", 500, 2)])
    assert t500["crps"] == pytest.approx(_crps_brute_force(members_t, truth_t, np.linspace(90, -90, 61)), rel=1e-9)
    members = np.stack(
        [
            np.stack([_forecast(f"verif/{job.pk}/{start}/member-{m:02d}/forecast.nc", "z", 500, 12) for m in (1, 2)])
            for start in ("2017010100", "2017010112")
        ],
        axis=1,
    )  # (member, start, lat, lon)
    truth = np.stack([_sample("z", 500, 1), _sample("z", 500, 2)])
    lat = np.linspace(90, -90, 61)
    assert z_row["crps"] == pytest.approx(_crps_brute_force(members, truth, lat), rel=1e-9)
    # Two members: the fair spread is |X1 - X2|, the skill the mean of |Xi - y|.
    assert z_row["crps_spread"] == pytest.approx(
        float(np.mean([_weighted_mae(members[0, s], members[1, s]) for s in (0, 1)])), rel=1e-9
    )
    spread = math.sqrt(np.mean([_weighted_rmse(members[0, s], members[1, s]) ** 2 / 2 for s in (0, 1)]))
    skill = math.sqrt(np.mean([_weighted_rmse(members[:, s].mean(axis=0), truth[s]) ** 2 for s in (0, 1)]))
    assert (z_row["spread"], z_row["ensemble_mean_rmse"]) == pytest.approx((spread, skill), rel=1e-9)
    assert z_row["spread_skill"] == pytest.approx(spread / skill, rel=1e-9)
    # The page: the ensemble columns for the ensemble features only, and the member count.
    from django.test import Client

    from tests.factories import PASSWORD

    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    html = client.get(f"/forecasts/{job.pk}/").content.decode()
    cells = f"<td>{z_row['crps']:.4g}</td><td>{z_row['spread']:.4g}</td><td>{z_row['ensemble_mean_rmse']:.4g}</td>"
    assert cells + f"<td>{z_row['spread_skill']:.4g}</td>" in html
    assert "fair estimator over its 2 perturbed members" in html
    assert html.count("<th>CRPS</th>") == 2  # 500:Z and 500:T, not 850:T


def _weighted_mae(a: np.ndarray, b: np.ndarray) -> float:
    lat = np.radians(np.linspace(90, -90, 61))
    half = math.radians(1.5)
    area = np.sin(np.minimum(lat + half, math.pi / 2)) - np.sin(np.maximum(lat - half, -math.pi / 2))
    return float((area[:, None] * np.abs(a - b)).sum() / (area.sum() * a.shape[1]))


def test_a_job_without_truth_says_so(alice: Any, weather: Any) -> None:
    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    # From 2017-01-02 12 UTC every valid time lies after the demo's last analysis.
    job = _run_job(alice, {"start_time_begin": "2017010212", "start_time_end": "2017010212", "forecast_lead_hours": 12})
    report = json.loads(default_store().read_bytes(DEMO_BUCKET, f"verif/{job.pk}/verification.json"))
    assert report["features"] == {} and report["files"]["figure"] is None
    assert report["reason"].startswith("No truth: the input locations hold none of the forecasts' valid times")
    assert not default_store().exists(DEMO_BUCKET, f"verif/{job.pk}/verification.png")


# --- the job page ------------------------------------------------------------------------------------------
def test_the_job_page_shows_the_scores_and_their_figure(alice: Any, weather: Any) -> None:
    from django.test import Client

    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store
    from tests.factories import PASSWORD

    job = _run_job(
        alice,
        {
            "start_time_begin": "2017010100",
            "start_time_end": "2017010100",
            "forecast_lead_hours": 24,
            "draw_figures": "true",
        },
    )
    report = json.loads(default_store().read_bytes(DEMO_BUCKET, f"verif/{job.pk}/verification.json"))
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    html = client.get(f"/forecasts/{job.pk}/").content.decode()
    section = html[html.index('id="verification"') : html.index("</section>", html.index('id="verification"'))]
    z = report["features"]["500:Z"]["rows"]
    # Each row: lead, starts, RMSE and persistence's, to 4 significant digits.
    for row in z:
        cells = f"<td>{row['lead']} h</td><td>1</td><td>{row['rmse']:.4g}</td><td>{row['persistence_rmse']:.4g}</td>"
        assert cells in section
    assert "500 hPa geopotential" in section and "ACC (anomaly correlation, 1 is perfect): Not computed" in section
    assert "<th>CRPS</th>" not in section and "perturbed members" not in section  # no ensemble columns
    figure = f"/forecasts/{job.pk}/files/verif/{job.pk}/verification.png"
    assert f'src="{figure}"' in section
    got = client.get(figure)
    assert got.status_code == 200 and got["Content-Type"] == "image/png" and got.content[:4] == b"\x89PNG"
    # The manifest stays unserved (tests/security/test_forecast_attacks.py); only the two verification keys join.
    assert client.get(f"/forecasts/{job.pk}/files/verif/{job.pk}/manifest.json").status_code == 404
    # A verification.json changed by hand in the bucket: the page says so instead of failing.
    default_store().write_bytes(DEMO_BUCKET, f"verif/{job.pk}/verification.json", b'{"features": {"500:Z": 3}}')
    page = client.get(f"/forecasts/{job.pk}/")
    assert page.status_code == 200 and b"The stored verification.json cannot be read" in page.content


def test_the_job_page_says_when_there_is_no_truth(alice: Any, weather: Any) -> None:
    from django.test import Client

    from forecasts.models import ForecastJob, JobState
    from tests.factories import PASSWORD

    job = _run_job(alice, {"start_time_begin": "2017010212", "start_time_end": "2017010212", "forecast_lead_hours": 12})
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    assert (
        b"No truth: the input locations hold none of the forecasts&#x27; valid times"
        in client.get(f"/forecasts/{job.pk}/").content
    )
    ForecastJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING)
    assert b"Scores against truth are computed when the job finishes." in client.get(f"/forecasts/{job.pk}/").content


def test_acc_uses_an_installed_wb2_climatology(alice: Any, weather: Any, tmp_path: Any, monkeypatch: Any) -> None:
    import netCDF4
    from django.test import Client

    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store
    from tests.factories import PASSWORD

    # WB2's layout, 1.5° with latitudes rising and longitude before latitude; only geopotential. At the 3°
    # points the base field plus 100·day + 10·hour, between them 1e6 (a wrong pick shows at once).
    base = np.flipud(_sample("z", 500, 3)).T  # (lon 120, lat 61), latitude -90 up
    days, hours = [1, 2], [0, 12]
    data = np.full((2, 2, 1, 240, 121), 1e6, dtype=np.float32)
    for d, day in enumerate(days):
        for h, hour in enumerate(hours):
            data[h, d, 0, ::2, ::2] = base + 100 * day + 10 * hour
    with netCDF4.Dataset(tmp_path / "wb2-climatology.nc", "w") as nc:
        for name, size in (("hour", 2), ("dayofyear", 2), ("level", 1), ("longitude", 240), ("latitude", 121)):
            nc.createDimension(name, size)
        nc.createVariable("hour", "i4", ("hour",))[:] = hours
        nc.createVariable("dayofyear", "i4", ("dayofyear",))[:] = days
        nc.createVariable("level", "i4", ("level",))[:] = [500]
        nc.createVariable("longitude", "f8", ("longitude",))[:] = np.arange(240) * 1.5
        nc.createVariable("latitude", "f8", ("latitude",))[:] = np.linspace(-90, 90, 121)
        nc.createVariable("geopotential", "f4", ("hour", "dayofyear", "level", "longitude", "latitude"))[:] = data
    monkeypatch.setattr(v, "climatology_dir", lambda: tmp_path)
    job = _run_job(alice, {"start_time_begin": "2017010100", "start_time_end": "2017010100", "forecast_lead_hours": 24})
    report = json.loads(default_store().read_bytes(DEMO_BUCKET, f"verif/{job.pk}/verification.json"))
    assert report["acc"].startswith("Against the climatology wb2-climatology.nc")
    # draw_figures false: the scores, no figure (as no maps).
    assert report["files"]["figure"] is None
    assert not default_store().exists(DEMO_BUCKET, f"verif/{job.pk}/verification.png")
    assert "ACC of 850:T: the climatology holds no temperature or t." in report["skipped"]
    assert all(r["acc"] is None for r in report["features"]["850:T"]["rows"])
    lat = np.radians(np.linspace(90, -90, 61))
    half = math.radians(1.5)
    w = (np.sin(np.minimum(lat + half, math.pi / 2)) - np.sin(np.maximum(lat - half, -math.pi / 2)))[:, None]
    # Valid 2017-01-01 12 UTC is day 1, hour 12; 2017-01-02 00 UTC is day 2, hour 0.
    for row, index, offset in zip(report["features"]["500:Z"]["rows"], (1, 2), (100 + 120, 200), strict=True):
        c = (_sample("z", 500, 3) + offset).astype(np.float32).astype(np.float64)  # as the file stores it
        fa = _forecast(f"verif/{job.pk}/2017010100/forecast.nc", "z", 500, row["lead"]) - c
        ta = _sample("z", 500, index) - c
        expected = (w * fa * ta).sum() / math.sqrt((w * fa * fa).sum() * (w * ta * ta).sum())
        assert row["acc"] == pytest.approx(expected, rel=1e-9) and row["acc_starts"] == 1
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    html = client.get(f"/forecasts/{job.pk}/").content.decode()
    assert "<th>ACC</th>" in html and f"<td>{report['features']['500:Z']['rows'][1]['acc']:.4g}</td>" in html


def test_a_forecast_file_gone_before_scoring_is_a_reason_not_a_failure(alice: Any, weather: Any) -> None:
    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    config = {"start_time_begin": "2017010100", "start_time_end": "2017010112", "start_time_interval_hours": 12}
    job = _run_job(alice, {**config, "forecast_lead_hours": 12})
    store = default_store()
    store.delete_prefix(DEMO_BUCKET, f"verif/{job.pk}/2017010100/")
    report = v.verify_job(job, store)
    (gone,) = [s for s in report["skipped"] if s.startswith("The forecast from 2017010100 cannot be read back")]
    assert "nothing is there" in gone
    # The other start is still scored: 12 h from 2017-01-01 12 UTC has truth.
    assert [(r["lead"], r["starts"]) for r in report["features"]["500:Z"]["rows"]] == [(12, 1)]
