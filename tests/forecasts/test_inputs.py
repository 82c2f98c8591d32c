"""Reading initial states: NetCDF with ERA5/CF names and Pangu-Weather npy pairs, latitude flip, longitude
normalisation, and a plain `InputError` naming the file for everything missing or malformed.

The test files encode their coordinates in their values (value = 1000·lat + lon in the file's own
longitude convention, plus an offset per variable and level), so where each value lands after the flip
and the normalisation is checked against arithmetic, not against the reader."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import netCDF4
import numpy as np
import pytest

from forecasts import inputs
from forecasts.fields import PRESSURE_LEVELS, SURFACE_VARIABLES, UPPER_VARIABLES
from forecasts.inputs import InputError, available_features, available_times, read_initial_state
from forecasts.storage import FileSystemStore, ObjectStore
from tests.forecasts.test_storage import make_s3_store
from tests.s3server import S3Server, s3_server

__all__ = ["s3_server"]

T0 = datetime(2017, 1, 1, 0, tzinfo=UTC)
T1 = datetime(2017, 1, 1, 12, tzinfo=UTC)
SEPT18 = datetime(2018, 9, 18, tzinfo=UTC)
G0 = 9.80665
# Offsets that make every variable's field distinct.
OFFSET = {"z": 500_000.0, "t": 200_000.0, "u": 300_000.0, "v": 400_000.0, "q": 600_000.0}
SURFACE_OFFSET = {"msl": 700_000.0, "u10": 800_000.0, "v10": 900_000.0, "t2m": 1_000_000.0}
FEATURE = {"z": "Z", "t": "T", "u": "U", "v": "V", "q": "Q", "msl": "P", "u10": "U", "v10": "V", "t2m": "T"}


def expected_value(name: str, level: int | None, lat: float, lon_in_file: float, hour: int = 0) -> float:
    base = 1000.0 * lat + lon_in_file + 10.0 * hour
    return base + (OFFSET[name] + level if level is not None else SURFACE_OFFSET[name])


def write_netcdf(
    path: Path,
    *,
    lat: Sequence[float] = (-90.0, -45.0, 0.0, 45.0, 90.0),
    lon: Sequence[float] = (-180.0, -135.0, -90.0, -45.0, 0.0, 45.0, 90.0, 135.0),
    levels: Sequence[float] = (850.0, 500.0),
    times: Sequence[datetime] = (T0,),
    upper: Sequence[str] = ("z", "t", "u", "v", "q"),
    surface: Sequence[str] = ("msl", "u10", "v10", "t2m"),
    level_name: str = "level",
    level_units: str = "hPa",
    lat_name: str = "latitude",
    lon_name: str = "longitude",
    time_name: str = "time",
    fmt: Literal["NETCDF4", "NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET"] = "NETCDF4",
    units: dict[str, str] | None = None,
    lonlat_order: bool = False,
    members: Sequence[int] | None = None,
    packed: bool = False,
) -> Path:
    lat_a, lon_a = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    with netCDF4.Dataset(path, "w", format=fmt) as nc:
        nc.createDimension(time_name, len(times))
        nc.createDimension(level_name, len(levels))
        nc.createDimension(lat_name, len(lat_a))
        nc.createDimension(lon_name, len(lon_a))
        if members is not None:
            nc.createDimension("number", len(members))
            nc.createVariable("number", "i4", ("number",))[:] = members
        t = nc.createVariable(time_name, "i4", (time_name,))
        t.units, t.calendar = "hours since 2017-01-01 00:00:00", "proleptic_gregorian"  # as the CDS and cfgrib write
        hours = [int((w - T0).total_seconds() // 3600) for w in times]
        t[:] = hours
        lev = nc.createVariable(level_name, "f8", (level_name,))
        lev.units = level_units
        lev[:] = np.asarray(levels) * (100.0 if level_units == "Pa" else 1.0)
        nc.createVariable(lat_name, "f8", (lat_name,))[:] = lat_a
        nc.createVariable(lon_name, "f8", (lon_name,))[:] = lon_a
        grid = 1000.0 * lat_a[:, None] + lon_a[None, :]
        horizontal = (lon_name, lat_name) if lonlat_order else (lat_name, lon_name)
        lead = ("number",) if members is not None else ()
        for name in (*upper, *surface):
            is_upper = name in upper
            dims = (*lead, time_name, *((level_name,) if is_upper else ()), *horizontal)
            kind = "i2" if packed else "f4" if fmt == "NETCDF4" else "f8"
            var = nc.createVariable(name, kind, dims)
            if packed:
                var.scale_factor, var.add_offset = 50.0, 500_000.0  # ERA5's CDS NetCDF3 packs to shorts like this
            if units and name in units:
                var.units = units[name]
            values = np.empty(var.shape)
            for ti, hour in enumerate(hours):
                for m in range(len(members) if members is not None else 1):
                    # member m gets +m*1e5 so the control (number 0) is recognisable
                    bump = 100_000.0 * (members[m] if members is not None else 0)
                    if is_upper:
                        for li, level in enumerate(levels):
                            field = grid + 10.0 * hour + OFFSET[name] + level + bump
                            _put(values, members is not None, m, ti, li, field.T if lonlat_order else field)
                    else:
                        field = grid + 10.0 * hour + SURFACE_OFFSET[name] + bump
                        _put(values, members is not None, m, ti, None, field.T if lonlat_order else field)
            var[:] = values
    return path


def _put(values: np.ndarray, with_members: bool, m: int, ti: int, li: int | None, field: np.ndarray) -> None:
    index: tuple[Any, ...] = ((m,) if with_members else ()) + (ti,) + ((li,) if li is not None else ())
    values[index] = field


@pytest.fixture
def store(tmp_path: Path) -> FileSystemStore:
    store = FileSystemStore(tmp_path / "obs")
    store.create_bucket("inp")
    return store


def put(store: ObjectStore, key: str, path: Path) -> None:
    store.write_file("inp", key, path)


# --- NetCDF -------------------------------------------------------------------------------------------
def test_netcdf_is_read_flipped_to_north_south_and_normalised_to_0_360(store: FileSystemStore, tmp_path: Path) -> None:
    put(store, "era5/a.nc", write_netcdf(tmp_path / "a.nc"))
    fields = read_initial_state(store, "inp", "era5", T0)
    assert fields.time == T0
    assert [type(t) for t in available_times(store, "inp", "era5")] == [datetime]  # not cftime's subclass
    np.testing.assert_array_equal(fields.lat, [90, 45, 0, -45, -90])
    np.testing.assert_array_equal(fields.lon, [0, 45, 90, 135, 180, 225, 270, 315])
    assert fields.features == sorted(
        [f"{lev}:{FEATURE[n]}" for n in ("z", "t", "u", "v", "q") for lev in (500, 850)]
        + ["Surface:P", "Surface:U", "Surface:V", "Surface:T"]
    )
    for values in fields.data.values():
        assert values.shape == (5, 8) and values.dtype == np.float64
    for r, la in enumerate(fields.lat):
        for c, lo in enumerate(fields.lon):
            lon_in_file = lo - 360 if lo >= 180 else lo  # the file ran -180..135
            assert fields.data["500:Z"][r, c] == pytest.approx(expected_value("z", 500, la, lon_in_file))
            assert fields.data["850:Q"][r, c] == pytest.approx(expected_value("q", 850, la, lon_in_file))
            assert fields.data["Surface:P"][r, c] == pytest.approx(expected_value("msl", None, la, lon_in_file))
            assert fields.data["Surface:T"][r, c] == pytest.approx(expected_value("t2m", None, la, lon_in_file))
    # Spot checks written out: the north pole at 180E came from lat index 4, lon index 0 of the file.
    assert fields.data["500:T"][0, 4] == 1000 * 90 + (-180) + 200_000 + 500
    assert fields.data["Surface:U"][4, 0] == 1000 * -90 + 0 + 800_000


@pytest.mark.parametrize(
    ("level_name", "level_units"),
    [("level", "hPa"), ("isobaricInhPa", "hPa"), ("pressure_level", "millibars"), ("plev", "Pa")],
)
def test_level_dimension_names_and_pa(
    store: FileSystemStore, tmp_path: Path, level_name: str, level_units: str
) -> None:
    put(store, "x/a.nc", write_netcdf(tmp_path / "a.nc", level_name=level_name, level_units=level_units))
    fields = read_initial_state(store, "inp", "x", T0, ["500:Z", "850:T"])
    assert fields.features == ["500:Z", "850:T"]
    assert fields.data["500:Z"][2, 0] == expected_value("z", 500, 0.0, 0.0)


@pytest.mark.parametrize(
    ("lat_name", "lon_name", "time_name", "fmt"),
    [
        ("lat", "lon", "time", "NETCDF4"),
        ("latitude", "longitude", "valid_time", "NETCDF4"),
        ("latitude", "longitude", "time", "NETCDF3_CLASSIC"),
        ("lat", "lon", "valid_time", "NETCDF3_64BIT_OFFSET"),
    ],
)
def test_coordinate_names_and_netcdf3(
    store: FileSystemStore, tmp_path: Path, lat_name: str, lon_name: str, time_name: str, fmt: Any
) -> None:
    path = write_netcdf(tmp_path / "a.nc", lat_name=lat_name, lon_name=lon_name, time_name=time_name, fmt=fmt)
    put(store, "x/a.nc", path)
    fields = read_initial_state(store, "inp", "x", T0, ["Surface:V"])
    assert fields.data["Surface:V"][0, 0] == expected_value("v10", None, 90.0, 0.0)


def test_a_file_path_several_times_and_files(store: FileSystemStore, tmp_path: Path) -> None:
    put(store, "x/upper.nc", write_netcdf(tmp_path / "u.nc", times=(T0, T1), surface=()))
    put(store, "x/deeper/surface.nc", write_netcdf(tmp_path / "s.nc", times=(T1,), upper=()))
    assert available_times(store, "inp", "x") == [T0, T1]
    # Features held at every time: T0 has no surface file.
    assert "Surface:P" not in available_features(store, "inp", "x")
    assert "Surface:P" in available_features(store, "inp", "x", [T1])
    both = read_initial_state(store, "inp", "x", T1)
    assert both.data["Surface:P"][0, 4] == expected_value("msl", None, 90.0, -180.0, hour=12)
    assert both.data["500:U"][0, 4] == expected_value("u", 500, 90.0, -180.0, hour=12)
    # One file named directly: only its content.
    assert available_times(store, "inp", "x/deeper/surface.nc") == [T1]
    assert available_features(store, "inp", "x/deeper/surface.nc") == [
        "Surface:P",
        "Surface:T",
        "Surface:U",
        "Surface:V",
    ]


def test_longitude_latitude_order_is_transposed(store: FileSystemStore, tmp_path: Path) -> None:
    put(store, "x/a.nc", write_netcdf(tmp_path / "a.nc", lonlat_order=True))
    fields = read_initial_state(store, "inp", "x", T0, ["850:V"])
    assert fields.data["850:V"][1, 2] == expected_value("v", 850, 45.0, 90.0)


def test_the_control_member_is_taken_from_an_ensemble(store: FileSystemStore, tmp_path: Path) -> None:
    put(store, "x/a.nc", write_netcdf(tmp_path / "a.nc", members=(3, 0, 1)))
    fields = read_initial_state(store, "inp", "x", T0, ["500:Z"])
    assert fields.data["500:Z"][0, 0] == expected_value("z", 500, 90.0, 0.0)  # no 1e5 bump: member 0


def test_packed_shorts_are_unpacked(store: FileSystemStore, tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "a.nc", fmt="NETCDF3_CLASSIC", packed=True, upper=("z",), surface=())
    put(store, "x/a.nc", path)
    fields = read_initial_state(store, "inp", "x", T0)
    # 50-unit packing: within 25 of the true value.
    assert fields.data["500:Z"][0, 0] == pytest.approx(expected_value("z", 500, 90.0, 0.0), abs=25.0)


def test_units_are_converted_to_era5s(store: FileSystemStore, tmp_path: Path) -> None:
    units = {"z": "gpm", "msl": "hPa", "t": "degC", "u": "m s**-1"}
    put(store, "x/a.nc", write_netcdf(tmp_path / "a.nc", units=units))
    fields = read_initial_state(store, "inp", "x", T0)
    assert fields.data["500:Z"][0, 0] == pytest.approx(expected_value("z", 500, 90.0, 0.0) * G0)
    assert fields.data["Surface:P"][0, 0] == pytest.approx(expected_value("msl", None, 90.0, 0.0) * 100)
    assert fields.data["850:T"][0, 0] == pytest.approx(expected_value("t", 850, 90.0, 0.0) + 273.15)
    assert fields.data["850:U"][0, 0] == pytest.approx(expected_value("u", 850, 90.0, 0.0))


def test_a_regular_global_grid_with_a_repeated_meridian(store: FileSystemStore, tmp_path: Path) -> None:
    lon = [0.0, 90.0, 180.0, 270.0, 360.0]
    put(store, "x/a.nc", write_netcdf(tmp_path / "a.nc", lon=lon, upper=("z",), surface=()))
    fields = read_initial_state(store, "inp", "x", T0)
    np.testing.assert_array_equal(fields.lon, [0, 90, 180, 270])
    assert fields.data["500:Z"][0, 0] == expected_value("z", 500, 90.0, 0.0)  # the first of 0 and 360 kept


# --- malformed NetCDF: every case names the file and says what is wrong ---------------------------------
def _expect_error(store: ObjectStore, path: str, match: str, when: datetime = T0, features: Any = None) -> None:
    with pytest.raises(InputError, match=match) as caught:
        read_initial_state(store, "inp", path, when, features)
    assert "inp/" in str(caught.value)


def test_not_a_netcdf_file(store: FileSystemStore) -> None:
    store.write_bytes("inp", "x/bad.nc", b"this is not netcdf")
    _expect_error(store, "x", r"inp/x/bad\.nc: not a readable NetCDF file")


def test_missing_coordinates_and_variables(store: FileSystemStore, tmp_path: Path) -> None:
    put(store, "a/a.nc", write_netcdf(tmp_path / "a.nc", lat_name="y"))
    _expect_error(store, "a", r"inp/a/a\.nc: no latitude or longitude coordinate")
    put(store, "b/b.nc", write_netcdf(tmp_path / "b.nc", upper=(), surface=()))
    _expect_error(store, "b", r"inp/b/b\.nc: none of the variables z, q, t, u, v, msl, u10, v10, t2m")
    put(store, "c/c.nc", write_netcdf(tmp_path / "c.nc", time_name="date"))
    _expect_error(store, "c", r"inp/c/c\.nc: no time coordinate")
    put(store, "d/d.nc", write_netcdf(tmp_path / "d.nc", upper=("z",), surface=()))
    _expect_error(
        store, "d", r"inp/d: no 500:T, Surface:P at 2017-01-01 00:00 UTC in the input", features=["500:T", "Surface:P"]
    )


def test_the_time_not_present(store: FileSystemStore, tmp_path: Path) -> None:
    put(store, "x/a.nc", write_netcdf(tmp_path / "a.nc", times=(T0, T1)))
    _expect_error(
        store,
        "x",
        r"inp/x: no input for 2017-01-02 00:00 UTC; the location holds 2 time\(s\), "
        r"2017-01-01 00:00 UTC … 2017-01-01 12:00 UTC",
        when=T0 + timedelta(days=1),
    )
    with pytest.raises(InputError, match="no input for 2017-01-03 00:00 UTC"):
        available_features(store, "inp", "x", [T0, T0 + timedelta(days=2)])


def test_nans_and_fill_values_are_refused(store: FileSystemStore, tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "a.nc", upper=("z", "t"), surface=())
    with netCDF4.Dataset(path, "a") as nc:
        nc["z"][0, 1, 2, 3] = np.nan
        nc["t"][0, 0, 0, 0] = np.ma.masked  # a _FillValue: missing
    put(store, "x/a.nc", path)
    _expect_error(
        store, "x", r"inp/x/a\.nc: 500:Z at 2017-01-01 00:00 UTC has 1 missing or not-a-number", features=["500:Z"]
    )
    _expect_error(store, "x", r"inp/x/a\.nc: 850:T at 2017-01-01 00:00 UTC has 1 missing", features=["850:T"])
    assert read_initial_state(store, "inp", "x", T0, ["500:T"]).features == ["500:T"]  # the rest is fine


def test_uneven_grids_are_refused(store: FileSystemStore, tmp_path: Path) -> None:
    put(store, "a/a.nc", write_netcdf(tmp_path / "a.nc", lat=(-90.0, -30.0, 0.0, 45.0, 90.0)))
    _expect_error(store, "a", r"inp/a/a\.nc: the latitudes are not evenly spaced")
    put(store, "b/b.nc", write_netcdf(tmp_path / "b.nc", lon=(0.0, 10.0, 30.0)))
    _expect_error(store, "b", r"inp/b/b\.nc: the longitudes are not evenly spaced")
    put(store, "c/c.nc", write_netcdf(tmp_path / "c.nc", lat=(0.0, 45.0, 100.0)))
    _expect_error(store, "c", r"inp/c/c\.nc: latitudes must lie between -90 and 90")


def test_wrong_dimensions_and_units_are_refused(store: FileSystemStore, tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "a.nc", upper=(), surface=("msl",))
    with netCDF4.Dataset(path, "a") as nc:
        nc.createVariable("z", "f4", ("time", "latitude", "longitude"))[:] = 1.0  # no level dimension
    put(store, "a/a.nc", path)
    _expect_error(store, "a", r"inp/a/a\.nc: the variable 'z' has no pressure-level dimension")
    path = write_netcdf(tmp_path / "b.nc", upper=(), surface=("msl",))
    with netCDF4.Dataset(path, "a") as nc:
        nc.createDimension("step", 3)
        nc.createVariable("t2m", "f4", ("time", "step", "latitude", "longitude"))[:] = 1.0
    put(store, "b/b.nc", path)
    _expect_error(store, "b", r"inp/b/b\.nc: the variable 't2m' has an unexpected dimension 'step' of length 3")
    put(store, "c/c.nc", write_netcdf(tmp_path / "c.nc", units={"t": "degF"}))
    _expect_error(store, "c", r"inp/c/c\.nc: the variable 't' has units 'degF'; expected 'k'")


def test_time_problems_are_refused(store: FileSystemStore, tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "a.nc", times=(T0, T1))
    with netCDF4.Dataset(path, "a") as nc:
        nc["time"].delncattr("units")
    put(store, "a/a.nc", path)
    _expect_error(store, "a", r"inp/a/a\.nc: the time variable 'time' has no units")
    path = write_netcdf(tmp_path / "b.nc", times=(T0, T1))
    with netCDF4.Dataset(path, "a") as nc:
        nc["time"][:] = [0, 0]
    put(store, "b/b.nc", path)
    _expect_error(store, "b", r"inp/b/b\.nc: a time appears twice")


def test_missing_locations(store: FileSystemStore, tmp_path: Path) -> None:
    _expect_error(store, "nowhere", r"inp/nowhere: nothing is there")
    with pytest.raises(InputError, match=r"no-bucket/x: cannot be listed \(the bucket 'no-bucket' does not exist\)"):
        read_initial_state(store, "no-bucket", "x", T0)
    store.write_bytes("inp", "x/readme.txt", b"hello")
    with pytest.raises(InputError, match=r"inp/x: holds no initial state"):
        available_features(store, "inp", "x")


# --- Pangu-Weather npy pairs --------------------------------------------------------------------------
NLAT, NLON = 5, 8


def pangu_arrays() -> tuple[np.ndarray, np.ndarray]:
    upper = np.empty((5, 13, NLAT, NLON), dtype=np.float32)
    for v in range(5):
        for k in range(13):
            upper[v, k] = 1000 * v + k + np.arange(NLAT * NLON).reshape(NLAT, NLON) / 100
    surface = np.empty((4, NLAT, NLON), dtype=np.float32)
    for s in range(4):
        surface[s] = 100_000 + 1000 * s + np.arange(NLAT * NLON).reshape(NLAT, NLON) / 100
    return upper, surface


def put_npy(store: ObjectStore, key: str, array: np.ndarray, *, allow_pickle: bool = False) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    store.write_bytes("inp", key, buffer.getvalue())


def put_pair(store: ObjectStore, folder: str, upper: np.ndarray, surface: np.ndarray) -> None:
    put_npy(store, f"{folder}/input_upper.npy", upper)
    put_npy(store, f"{folder}/input_surface.npy", surface)


def test_npy_pair_in_the_pangu_order(store: FileSystemStore) -> None:
    upper, surface = pangu_arrays()
    put_pair(store, "pangu/2018091800", upper, surface)
    assert available_times(store, "inp", "pangu") == [SEPT18]
    assert len(available_features(store, "inp", "pangu")) == 5 * 13 + 4
    fields = read_initial_state(store, "inp", "pangu", SEPT18)
    np.testing.assert_array_equal(fields.lat, [90, 45, 0, -45, -90])
    np.testing.assert_array_equal(fields.lon, [0, 45, 90, 135, 180, 225, 270, 315])
    # Written out from the Pangu-Weather README: Z, Q, T, U, V by 1000, 925, ..., 50 hPa; MSLP, U10, V10, T2M.
    assert fields.data["1000:Z"][0, 0] == pytest.approx(0)
    assert fields.data["925:Z"][0, 1] == pytest.approx(1 + 0.01)
    assert fields.data["500:T"][1, 0] == pytest.approx(2000 + 5 + 0.08)
    assert fields.data["850:Q"][4, 7] == pytest.approx(1000 + 2 + 0.39)
    assert fields.data["50:V"][2, 3] == pytest.approx(4000 + 12 + 0.19)
    assert fields.data["Surface:P"][0, 0] == pytest.approx(100_000)
    assert fields.data["Surface:U"][0, 0] == pytest.approx(101_000)
    assert fields.data["Surface:V"][0, 0] == pytest.approx(102_000)
    assert fields.data["Surface:T"][0, 2] == pytest.approx(103_000.02)
    assert all(a.dtype == np.float64 for a in fields.data.values())
    assert (UPPER_VARIABLES, PRESSURE_LEVELS[0], PRESSURE_LEVELS[-1], SURFACE_VARIABLES) == (
        ("Z", "Q", "T", "U", "V"),
        1000,
        50,
        ("P", "U", "V", "T"),
    )


def test_the_official_pangu_grid() -> None:
    lat, lon = inputs.pangu_grid(721, 1440)
    assert (lat[0], lat[1], lat[360], lat[-1]) == (90.0, 89.75, 0.0, -90.0)
    assert (lon[0], lon[1], lon[-1]) == (0.0, 0.25, 359.75)


@pytest.mark.parametrize(
    ("upper_shape", "surface_shape", "match"),
    [
        ((4, 13, NLAT, NLON), (4, NLAT, NLON), r"input_upper\.npy: has shape \(4, 13, 5, 8\); expected \(5, 13"),
        ((5, 12, NLAT, NLON), (4, NLAT, NLON), r"input_upper\.npy: has shape \(5, 12, 5, 8\)"),
        ((5, 13, NLAT, NLON), (5, NLAT, NLON), r"input_surface\.npy: has shape \(5, 5, 8\); expected \(4,"),
        ((5, 13, NLAT, NLON), (4, NLAT, NLON, 1), r"input_surface\.npy: has shape \(4, 5, 8, 1\)"),
        (
            (5, 13, NLAT, NLON),
            (4, NLAT + 1, NLON),
            r": the upper-air grid \(5, 8\) and the surface grid \(6, 8\)",
        ),
    ],
)
def test_npy_wrong_shapes(
    store: FileSystemStore, upper_shape: tuple[int, ...], surface_shape: tuple[int, ...], match: str
) -> None:
    put_pair(store, "p/2018091800", np.zeros(upper_shape, np.float32), np.zeros(surface_shape, np.float32))
    _expect_error(store, "p", "inp/p/2018091800/" + match, when=SEPT18)


def test_npy_missing_half_nan_garbage(store: FileSystemStore) -> None:
    upper, surface = pangu_arrays()
    put_npy(store, "a/2018091800/input_upper.npy", upper)
    _expect_error(store, "a", r"inp/a/2018091800/: input_surface\.npy is missing", when=SEPT18)
    upper[2, 5, 1, 1] = np.nan
    put_pair(store, "b/2018091800", upper, surface)
    _expect_error(
        store,
        "b",
        r"inp/b/2018091800/input_upper\.npy: 500:T at 2018-09-18 00:00 UTC has 1 missing or not-a-number values",
        when=SEPT18,
    )
    store.write_bytes("inp", "c/2018091800/input_upper.npy", b"garbage")
    put_npy(store, "c/2018091800/input_surface.npy", surface)
    _expect_error(store, "c", r"inp/c/2018091800/input_upper\.npy: not a", when=SEPT18)
    put_pair(store, "d/2018091800", upper.astype(np.complex64), surface)
    _expect_error(store, "d", r"input_upper\.npy: not an array of numbers", when=SEPT18)


class _Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("pickle ran",))


def test_pickled_npy_is_refused(store: FileSystemStore, capsys: pytest.CaptureFixture[str]) -> None:
    """An object array in an .npy file is a pickle: loading it would run code chosen by whoever wrote it."""
    _, surface = pangu_arrays()
    evil = np.empty((5, 13, NLAT, NLON), dtype=object)
    evil[0, 0, 0, 0] = _Exploit()
    put_npy(store, "p/2018091800/input_upper.npy", evil, allow_pickle=True)
    put_npy(store, "p/2018091800/input_surface.npy", surface)
    _expect_error(store, "p", r"input_upper\.npy: not a plain numeric \.npy array", when=SEPT18)
    assert "pickle ran" not in capsys.readouterr().out


def test_npy_and_netcdf_grids_must_agree(store: FileSystemStore, tmp_path: Path) -> None:
    upper, surface = pangu_arrays()
    put_pair(store, "m/2017010100", upper, surface)
    put(store, "m/extra.nc", write_netcdf(tmp_path / "a.nc", lat=(-90.0, 0.0, 90.0), upper=("z",), surface=()))
    # The pair holds 500:Z (and wins it): the file is not needed for it.
    fields = read_initial_state(store, "inp", "m", T0, ["500:Z"])
    assert fields.data["500:Z"][0, 0] == pytest.approx(5)  # upper[0, 5]: Z at 500 hPa
    _expect_error(store, "m", r"inp/m/extra\.nc: its grid \(3 × 8\) differs from that of inp/m/2017010100/ \(5 × 8\)")


# --- through S3 ---------------------------------------------------------------------------------------
def test_inputs_are_read_through_s3(s3_server: S3Server, tmp_path: Path) -> None:
    s3 = make_s3_store(s3_server)
    bucket = "inputs-" + datetime.now(UTC).strftime("%H%M%S%f")
    s3.create_bucket(bucket)
    s3.write_file(bucket, "era5/a.nc", write_netcdf(tmp_path / "a.nc", times=(T0, T1)))
    upper, surface = pangu_arrays()
    for name, array in (("input_upper.npy", upper), ("input_surface.npy", surface)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        s3.write_bytes(bucket, f"pangu/2018091800/{name}", buffer.getvalue())
    assert available_times(s3, bucket, "era5") == [T0, T1]
    fields = read_initial_state(s3, bucket, "era5", T1, ["500:Z"])
    assert fields.data["500:Z"][0, 4] == expected_value("z", 500, 90.0, -180.0, hour=12)
    pair = read_initial_state(s3, bucket, "pangu", SEPT18, ["500:T"])
    assert pair.data["500:T"][1, 0] == pytest.approx(2005.08)
