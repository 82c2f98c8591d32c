"""Build the ERA5 demo initial states (forecasts/data/era5/) from the GRIB sample in cfgrib's sources.

A developer's script, not part of the console: the console only reads its output, a small NetCDF file
committed to the repository, so nothing is downloaded and no GRIB decoder is needed at run time.

The data: `tests/sample-data/era5-levels-members.grib` of the cfgrib 0.9.15.1 source distribution on
PyPI (sha256 pinned below): ERA5 ensemble of data assimilations (class ea, stream enda), geopotential
(z) and temperature (t) at 500 and 850 hPa on a 3° global grid (61 by 120, 90°N to 90°S, 0° to 357°E),
ten members at 2017-01-01 00, 12 UTC and 2017-01-02 00, 12 UTC. Member 0 (the control) is kept, as
float32 (GRIB packs these to about 16 bits, so nothing is lost).

Run it from the project folder with eccodes installed only for the script, in a throwaway venv:

    python3 -m venv /tmp/era5-build
    /tmp/era5-build/bin/pip install eccodes==2.50.0 netCDF4==1.7.5.1.post1 numpy==2.4.6
    /tmp/era5-build/bin/python forecasts/data/build_era5_demo.py

It downloads the pinned archive with pip into a temporary folder, checks its hash, decodes the GRIB with
ecCodes and writes forecasts/data/era5/era5-z-t-2017010100-2017010212.nc (about 0.3 MB). Running it
again writes the same data.

Contains modified Copernicus Climate Change Service information 2017 (ERA5); neither the European
Commission nor ECMWF is responsible for any use that may be made of the Copernicus information or data
it contains.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

CFGRIB = "cfgrib==0.9.15.1"
CFGRIB_ARCHIVE = "cfgrib-0.9.15.1.tar.gz"
CFGRIB_SHA256 = "d959d8b97e55a63646fa86686b297905ff7f2918a91e3a11d6292dab09598e4d"
GRIB_MEMBER = "cfgrib-0.9.15.1/tests/sample-data/era5-levels-members.grib"
CONTROL_MEMBER = 0
LEVELS = (850, 500)  # hPa, as the sample orders them (top down would be 500, 850: either reads the same)

OUT_DIR = Path(__file__).resolve().parent / "era5"
OUT_FILE = OUT_DIR / "era5-z-t-2017010100-2017010212.nc"

CREDIT = (
    "Contains modified Copernicus Climate Change Service information 2017 (ERA5 ensemble of data "
    "assimilations, control member). Neither the European Commission nor ECMWF is responsible for any "
    "use that may be made of the Copernicus information or data it contains."
)
VARIABLES = {
    "z": {"standard_name": "geopotential", "long_name": "Geopotential", "units": "m**2 s**-2"},
    "t": {"standard_name": "air_temperature", "long_name": "Temperature", "units": "K"},
}


def download(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", CFGRIB, "-d", str(folder)],
        check=True,
    )
    archive = folder / CFGRIB_ARCHIVE
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != CFGRIB_SHA256:
        raise SystemExit(f"{archive.name} has sha256 {digest}, expected {CFGRIB_SHA256}")
    return archive


def decode(grib: Path) -> tuple[list[datetime], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    import eccodes  # type: ignore[import-not-found]  # installed for this script only

    fields: dict[tuple[str, datetime, int], np.ndarray] = {}
    lat = lon = None
    with open(grib, "rb") as fh:
        while (handle := eccodes.codes_grib_new_from_file(fh)) is not None:
            try:
                if eccodes.codes_get(handle, "number") != CONTROL_MEMBER:
                    continue
                name = eccodes.codes_get(handle, "shortName")
                level = eccodes.codes_get(handle, "level")
                date, hhmm = eccodes.codes_get(handle, "dataDate"), eccodes.codes_get(handle, "dataTime")
                when = datetime.strptime(f"{date}{hhmm:04d}", "%Y%m%d%H%M").replace(tzinfo=UTC)
                ni, nj = eccodes.codes_get(handle, "Ni"), eccodes.codes_get(handle, "Nj")
                if eccodes.codes_get(handle, "jScansPositively") != 0:
                    raise SystemExit("expected rows from north to south")
                values = eccodes.codes_get_values(handle).reshape(nj, ni)
                lats = eccodes.codes_get_array(handle, "distinctLatitudes")
                lons = eccodes.codes_get_array(handle, "distinctLongitudes")
                lat = np.sort(lats)[::-1]
                lon = np.sort(lons)
                fields[(name, when, level)] = values
            finally:
                eccodes.codes_release(handle)
    assert lat is not None and lon is not None
    times = sorted({when for _, when, _ in fields})
    data = {
        name: np.stack([np.stack([fields[(name, when, level)] for level in LEVELS]) for when in times])
        for name in VARIABLES
    }
    return times, lat, lon, data


def write(times: list[datetime], lat: np.ndarray, lon: np.ndarray, data: dict[str, np.ndarray]) -> None:
    import netCDF4

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    with netCDF4.Dataset(OUT_FILE, "w", format="NETCDF4") as nc:
        nc.Conventions = "CF-1.8"
        nc.title = "ERA5 demo initial states: z and t at 500 and 850 hPa, control member, 3 degree grid"
        nc.source = f"ECMWF ERA5 (class ea, stream enda), from {GRIB_MEMBER} of the {CFGRIB} sdist on PyPI"
        nc.history = "forecasts/data/build_era5_demo.py: GRIB decoded with ecCodes, member 0 kept, float32"
        nc.licence = "Copernicus licence (https://apps.ecmwf.int/datasets/licences/copernicus/)"
        nc.credit = CREDIT
        nc.createDimension("time", len(times))
        nc.createDimension("level", len(LEVELS))
        nc.createDimension("latitude", len(lat))
        nc.createDimension("longitude", len(lon))
        t = nc.createVariable("time", "i8", ("time",))
        t.standard_name, t.units, t.calendar = "time", "hours since 1970-01-01 00:00:00", "proleptic_gregorian"
        t[:] = [int((when - epoch).total_seconds() // 3600) for when in times]
        lev = nc.createVariable("level", "i4", ("level",))
        lev.standard_name, lev.units, lev.positive = "air_pressure", "hPa", "down"
        lev[:] = LEVELS
        la = nc.createVariable("latitude", "f8", ("latitude",))
        la.standard_name, la.units = "latitude", "degrees_north"
        la[:] = lat
        lo = nc.createVariable("longitude", "f8", ("longitude",))
        lo.standard_name, lo.units = "longitude", "degrees_east"
        lo[:] = lon
        for name, attrs in VARIABLES.items():
            var = nc.createVariable(
                name, "f4", ("time", "level", "latitude", "longitude"), zlib=True, complevel=6, shuffle=True
            )
            for key, value in attrs.items():
                var.setncattr(key, value)
            var[:] = data[name].astype(np.float32)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = download(Path(tmp))
        with tarfile.open(archive) as tar:
            tar.extract(GRIB_MEMBER, tmp, filter="data")
        times, lat, lon, data = decode(Path(tmp) / GRIB_MEMBER)
    write(times, lat, lon, data)
    print(f"{OUT_FILE}: {len(times)} times {times[0]:%Y%m%d%H}..{times[-1]:%Y%m%d%H}, {OUT_FILE.stat().st_size} bytes")


if __name__ == "__main__":
    main()
