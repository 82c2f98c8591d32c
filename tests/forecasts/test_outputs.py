"""The forecast NetCDF file: read back through forecasts.inputs (outputs are inputs), CF attributes and
ERA5 units, written atomically; and the latitude-weighted area means against sums done by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest

from forecasts import outputs
from forecasts.fields import Fields
from forecasts.inputs import InputError, open_inputs
from forecasts.outputs import OutputError, area_means, write_forecast
from forecasts.storage import FileSystemStore

START = datetime(2017, 1, 1, 0, tzinfo=UTC)
LAT = np.array([90.0, 60.0, 30.0, 0.0, -30.0, -60.0, -90.0])
LON = np.arange(12, dtype=np.float64) * 30.0
FEATURES = ["500:Z", "850:Z", "850:T", "500:U", "Surface:P", "Surface:T"]
ATTRS = {
    "job_id": "0f3c9a",
    "engine": "builtin",
    "engine_description": "barotropic spectral model",
    "source_credit": "Contains modified Copernicus Climate Change Service information 2017.",
}


def field(feature: str, hour: int) -> np.ndarray:
    """Distinct, not float32-representable values per feature, time and point (offsets in ERA5 units)."""
    base = {
        "500:Z": 54_000.0,
        "850:Z": 14_000.0,
        "850:T": 270.0,
        "500:U": 0.0,
        "Surface:P": 101_325.0,
        "Surface:T": 288.0,
        "850:U": 0.0,
    }[feature]
    grid = np.pi * (LAT[:, None] / 90.0) + np.e * np.sin(np.deg2rad(LON[None, :]))
    return base + grid * (1.0 + hour / 100.0) + 0.1 * len(feature)


def state(hour: int, features: list[str] = FEATURES) -> Fields:
    return Fields(
        time=START + timedelta(hours=hour),
        lat=LAT.copy(),
        lon=LON.copy(),
        data={f: field(f, hour) for f in features},
    )


@pytest.fixture
def store(tmp_path: Path) -> FileSystemStore:
    store = FileSystemStore(tmp_path / "obs")
    store.create_bucket("out")
    return store


def write(folder: Path, hours: tuple[int, ...] = (6, 12, 18), features: list[str] = FEATURES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "forecast.nc"
    write_forecast(path, state(0), [state(h) for h in hours], features, attrs=ATTRS)
    return path


def test_round_trip_through_inputs(store: FileSystemStore) -> None:
    write(store.root / "out" / "job1" / "2017010100")
    with open_inputs(store, "out", "job1/2017010100/forecast.nc") as found:
        assert found.times() == [START + timedelta(hours=h) for h in (6, 12, 18)]
        for hour in (6, 12, 18):
            back = found.read(START + timedelta(hours=hour), FEATURES)
            assert back.time == START + timedelta(hours=hour)
            np.testing.assert_array_equal(back.lat, LAT)
            np.testing.assert_array_equal(back.lon, LON)
            assert sorted(back.data) == sorted(FEATURES)
            for feature in FEATURES:
                # Exactly the float32 rounding of what was written: nothing scaled, shifted or reordered.
                expected = field(feature, hour).astype(np.float32).astype(np.float64)
                np.testing.assert_array_equal(back.data[feature], expected, err_msg=feature)
                np.testing.assert_allclose(back.data[feature], field(feature, hour), rtol=1e-7, atol=0)


def test_a_level_not_requested_for_a_variable_is_missing_not_invented(store: FileSystemStore) -> None:
    # 500:U and 850:Z share the file's level dimension, so u has a slot at 850 hPa: it holds the fill value.
    path = write(store.root / "out" / "job1")
    with netCDF4.Dataset(path) as nc:
        u = nc.variables["u"][:]
        assert list(nc.variables["level"][:]) == [500, 850]
        assert bool(np.all(u.mask[:, 1])) and not bool(np.any(u.mask[:, 0]))
    with open_inputs(store, "out", "job1") as found, pytest.raises(InputError, match="850:U"):
        found.read(START + timedelta(hours=6), ["850:U"])


def test_attributes_units_and_layout(tmp_path: Path) -> None:
    path = write(tmp_path)
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF4"
        assert nc.Conventions == "CF-1.8"
        for key, value in ATTRS.items():
            assert nc.getncattr(key) == value
        assert nc.source == "builtin: barotropic spectral model"
        assert "forecast job 0f3c9a" in nc.history
        assert {name: len(dim) for name, dim in nc.dimensions.items()} == {
            "time": 3,
            "level": 2,
            "latitude": 7,
            "longitude": 12,
        }
        expected = {
            "z": ("geopotential", "m2 s-2", "Geopotential"),
            "t": ("air_temperature", "K", "Temperature"),
            "u": ("eastward_wind", "m s-1", "U component of wind"),
            "msl": ("air_pressure_at_mean_sea_level", "Pa", "Mean sea level pressure"),
            "t2m": ("air_temperature", "K", "2 metre temperature"),
        }
        data_vars = {n for n, v in nc.variables.items() if v.ndim >= 3}
        assert data_vars == set(expected)
        for name, (standard_name, units, long_name) in expected.items():
            var = nc.variables[name]
            assert (var.standard_name, var.units, var.long_name) == (standard_name, units, long_name)
            assert var.dtype == np.float32
            assert var.filters()["zlib"] is True
            assert var.dimensions == (
                ("time", "level", "latitude", "longitude") if name in "ztu" else ("time", "latitude", "longitude")
            )
        level = nc.variables["level"]
        assert (level.units, level.standard_name, level.positive) == ("hPa", "air_pressure", "down")
        time = nc.variables["time"]
        assert (time.standard_name, time.units, time.calendar) == (
            "time",
            "hours since 1970-01-01 00:00:00",
            "proleptic_gregorian",
        )
        hours_2017 = 17_167 * 24  # 47 years of 365 days and 12 leap days (1972…2016), in hours
        assert list(time[:]) == [hours_2017 + 6, hours_2017 + 12, hours_2017 + 18]
        lead = nc.variables["lead_time"]
        assert (lead.standard_name, lead.units, lead.dimensions) == ("forecast_period", "hours", ("time",))
        assert list(lead[:]) == [6.0, 12.0, 18.0]
        reference = nc.variables["forecast_reference_time"]
        assert reference.standard_name == "forecast_reference_time" and reference.dimensions == ()
        assert float(reference[...]) == hours_2017
        assert nc.variables["latitude"].units == "degrees_north"
        assert nc.variables["longitude"].units == "degrees_east"
        # ERA5 names and hPa: the 850 hPa temperature sits at level index 1 of `t`.
        np.testing.assert_allclose(nc.variables["t"][1, 1], field("850:T", 12), rtol=1e-7)


def test_surface_only_has_no_level(tmp_path: Path) -> None:
    path = write(tmp_path, features=["Surface:P", "Surface:T"])
    with netCDF4.Dataset(path) as nc:
        assert "level" not in nc.dimensions and "level" not in nc.variables
        assert set(nc.variables) == {
            "time",
            "forecast_reference_time",
            "lead_time",
            "latitude",
            "longitude",
            "msl",
            "t2m",
        }


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "forecast.nc"
    path.write_bytes(b"the previous complete file")
    real_write = outputs._write

    def write_then_fail(nc: Any, *args: Any) -> None:
        real_write(nc, *args)  # the whole content is in the temporary file by now
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "_write", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_forecast(path, state(0), [state(6)], FEATURES, attrs=ATTRS)
    assert path.read_bytes() == b"the previous complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forecast.nc"]


def test_a_new_file_appears_whole_under_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "forecast.nc"
    seen: list[tuple[str, bool]] = []
    real_write = outputs._write

    def spy(nc: Any, *args: Any) -> None:
        seen.append((nc.filepath(), path.exists()))
        real_write(nc, *args)

    monkeypatch.setattr(outputs, "_write", spy)
    write_forecast(path, state(0), [state(6)], FEATURES, attrs=ATTRS)
    ((tmp_name, visible_while_writing),) = seen
    assert Path(tmp_name).parent == tmp_path and Path(tmp_name).name != "forecast.nc"
    assert not visible_while_writing
    assert not Path(tmp_name).exists() and path.exists()


def test_refusals_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "forecast.nc"
    with pytest.raises(OutputError, match="Surface:Q"):
        write_forecast(path, state(0), [state(6)], ["Surface:Q"], attrs=ATTRS)
    with pytest.raises(OutputError, match="lacks 850:U"):
        write_forecast(path, state(0), [state(6)], ["850:U"], attrs=ATTRS)
    with pytest.raises(OutputError, match="no forecast steps"):
        write_forecast(path, state(0), [], FEATURES, attrs=ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_area_means_weight_by_cos_latitude() -> None:
    lat = np.array([60.0, 0.0, -60.0])  # cos: 0.5, 1, 0.5
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    rows, cols = np.array([1.0, 2.0, 7.0]), np.array([0.0, 1.0, 2.0, 3.0])
    values = rows[:, None] + cols[None, :]
    states = [
        Fields(time=START, lat=lat, lon=lon, data={"500:T": values}),
        Fields(time=START, lat=lat, lon=lon, data={"500:T": 2 * values}),
    ]
    # By hand: rows (0.5*1 + 1*2 + 0.5*7) / 2 = 3.0, plus the mean of the columns 1.5.
    assert area_means(states, ["500:T"]) == {"500:T": [pytest.approx(4.5, abs=1e-12), pytest.approx(9.0, abs=1e-12)]}
    # Unweighted: (1 + 2 + 7) / 3 + 1.5.
    assert area_means(states[:1], ["500:T"], lat_weights=False)["500:T"] == [pytest.approx(10 / 3 + 1.5, abs=1e-12)]


def test_area_means_of_a_constant_field_and_the_poles() -> None:
    lat = np.linspace(90.0, -90.0, 7)
    lon = np.arange(8, dtype=np.float64) * 45.0
    values = np.where(np.abs(lat)[:, None] == 90.0, 1e6, 5.0) * np.ones((7, 8))
    means = area_means([Fields(time=START, lat=lat, lon=lon, data={"Surface:P": values})], ["Surface:P"])
    # The poles have no area (cos 90° = 0): their huge values must not count.
    assert means["Surface:P"] == [pytest.approx(5.0, abs=1e-6)]
