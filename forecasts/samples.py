"""The ERA5 demo sample: real initial states that ship with the console, so a new user can submit a job at
once and the built-in engine can be checked against real weather.

`forecasts/data/era5/` holds what forecasts/data/build_era5_demo.py made from the ERA5 GRIB sample in
cfgrib's sources: geopotential and temperature at 500 and 850 hPa, control member, 3° global grid
(61 by 120), at 2017-01-01 00, 12 UTC and 2017-01-02 00, 12 UTC. `bootstrap` copies the files into the
bucket `demo` under `era5/` (`install_demo`).

Contains modified Copernicus Climate Change Service information 2017; neither the European Commission
nor ECMWF is responsible for any use that may be made of the Copernicus information or data it contains.
"""

from __future__ import annotations

from pathlib import Path

from forecasts.fields import Fields
from forecasts.inputs import open_inputs
from forecasts.storage import FileSystemStore, ObjectStore, join_key

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "era5"
DEMO_BUCKET = "demo"
DEMO_PATH = "era5"


def sample_files() -> list[Path]:
    return sorted(SAMPLE_DIR.glob("*.nc"))


def load_era5_sample() -> list[Fields]:
    """Every initial state of the sample, sorted by time, read through the same reader as job inputs."""
    store = FileSystemStore(SAMPLE_DIR.parent)
    # The folder forecasts/data/ serves as a store root and era5/ as a bucket: a read-only view.
    with open_inputs(store, SAMPLE_DIR.name, "") as inputs:
        return [inputs.read(when) for when in inputs.times()]


def install_demo(store: ObjectStore) -> list[str]:
    """Put the sample into bucket `demo` under `era5/`; files already there with the same content are left
    alone (idempotent). The keys written."""
    store.create_bucket(DEMO_BUCKET)
    written = []
    for path in sample_files():
        key = join_key(DEMO_PATH, path.name)
        content = path.read_bytes()
        if store.exists(DEMO_BUCKET, key) and store.read_bytes(DEMO_BUCKET, key) == content:
            continue
        store.write_bytes(DEMO_BUCKET, key, content)
        written.append(key)
    return written
