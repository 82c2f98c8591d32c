"""The ERA5 demo sample: its figures match the GRIB it came from, and the demo bucket is installed once.

The expected values were read from `era5-levels-members.nc` in the cfgrib 0.9.15.1 sources (cfgrib's own
decoding of the same GRIB, member 0), not from our file or reader."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command

from forecasts.fields import Fields
from forecasts.inputs import available_features, read_initial_state
from forecasts.samples import DEMO_BUCKET, DEMO_PATH, install_demo, load_era5_sample, sample_files
from forecasts.storage import FileSystemStore

G0 = 9.80665
# time -> (mean 500 hPa height in m, z500 at 45N 120E, t850 at 0N 0E, t500 at 90S 357E, z850 at 90N 0E)
EXPECTED = {
    datetime(2017, 1, 1, 0, tzinfo=UTC): (
        5505.982882586726,
        52750.2,
        291.163134765625,
        240.3985595703125,
        14201.753125,
    ),
    datetime(2017, 1, 1, 12, tzinfo=UTC): (
        5505.900587082804,
        52376.278125,
        291.112109375,
        240.7642333984375,
        14015.95625,
    ),
    datetime(2017, 1, 2, 0, tzinfo=UTC): (
        5504.356803690058,
        52663.59375,
        290.5699951171875,
        240.35576171875,
        13708.6953125,
    ),
    datetime(2017, 1, 2, 12, tzinfo=UTC): (
        5500.898158239282,
        52766.85625,
        290.1693115234375,
        240.4658935546875,
        13255.4796875,
    ),
}


@pytest.fixture(scope="module")
def sample() -> list[Fields]:
    return load_era5_sample()


def test_the_sample_holds_four_times_of_z_and_t_at_500_and_850(sample: list[Fields]) -> None:
    assert [f.time for f in sample] == sorted(EXPECTED)
    for fields in sample:
        assert fields.features == ["500:T", "500:Z", "850:T", "850:Z"]
        assert fields.lat.shape == (61,) and fields.lon.shape == (120,)
        np.testing.assert_array_equal(fields.lat, np.arange(90, -91, -3))
        np.testing.assert_array_equal(fields.lon, np.arange(0, 360, 3))
        assert all(a.shape == (61, 120) and a.dtype == np.float64 for a in fields.data.values())


def test_the_sample_values_are_the_era5_control_member(sample: list[Fields]) -> None:
    for fields in sample:
        mean_h500, z500, t850, t500, z850 = EXPECTED[fields.time]
        # float32 storage: relative error under 1e-6
        assert fields.data["500:Z"].mean() / G0 == pytest.approx(mean_h500, rel=1e-6)
        assert fields.data["500:Z"][15, 40] == pytest.approx(z500, rel=1e-6)  # 45N 120E
        assert fields.data["850:T"][30, 0] == pytest.approx(t850, rel=1e-6)  # equator, 0E
        assert fields.data["500:T"][60, 119] == pytest.approx(t500, rel=1e-6)  # south pole, 357E
        assert fields.data["850:Z"][0, 0] == pytest.approx(z850, rel=1e-6)  # north pole


def test_the_sample_is_small_and_credited() -> None:
    files = sample_files()
    assert len(files) == 1
    assert sum(p.stat().st_size for p in files) < 1_000_000
    import netCDF4

    with netCDF4.Dataset(files[0]) as nc:
        assert "Contains modified Copernicus Climate Change Service information 2017" in nc.credit


def test_install_demo_puts_the_sample_in_the_demo_bucket_once(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "obs")
    assert install_demo(store) == [f"{DEMO_PATH}/{p.name}" for p in sample_files()]
    assert install_demo(store) == []  # idempotent: nothing rewritten
    key = f"{DEMO_PATH}/{sample_files()[0].name}"
    assert store.read_bytes(DEMO_BUCKET, key) == sample_files()[0].read_bytes()
    assert available_features(store, DEMO_BUCKET, DEMO_PATH) == ["500:T", "500:Z", "850:T", "850:Z"]
    fields = read_initial_state(store, DEMO_BUCKET, DEMO_PATH, datetime(2017, 1, 2, 0, tzinfo=UTC), ["500:Z"])
    assert fields.features == ["500:Z"]
    assert fields.data["500:Z"][15, 40] == pytest.approx(52663.59375, rel=1e-6)


def test_bootstrap_installs_the_demo_inputs_idempotently(db: None, settings: Any, tmp_path: Path) -> None:
    settings.OBS_ENDPOINT = ""
    settings.OBS_ROOT = tmp_path / "obs"
    out = StringIO()
    call_command("bootstrap", stdout=out)
    assert "demo inputs: bucket 'demo', era5/ (1 file(s) written)" in out.getvalue()
    name = sample_files()[0].name
    assert (tmp_path / "obs" / "demo" / "era5" / name).read_bytes() == sample_files()[0].read_bytes()
    out = StringIO()
    call_command("bootstrap", stdout=out)
    assert "demo inputs: bucket 'demo', era5/ (0 file(s) written)" in out.getvalue()
