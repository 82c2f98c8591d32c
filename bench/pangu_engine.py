"""The Pangu-Weather engine's own cost at the official 0.25° grid (721 x 1440): four ONNX models with the
official names and layout that only add a constant (built with the tests' `tiny_model`), so the time
and memory measured are the engine's (float32 conversion, output checks, the states it keeps), not the
network's. No weights are downloaded or needed.

    DATA_DIR=... .venv/bin/python bench/pangu_engine.py            # 168 h, outputs every 6 h
    DATA_DIR=... .venv/bin/python bench/pangu_engine.py --lead 48 --every 1
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lead", type=int, default=168)
    parser.add_argument("--every", type=int, default=6)
    args = parser.parse_args()
    import django

    django.setup()
    from forecasts.engines.pangu import PanguEngine, schedule
    from tests.forecasts.test_engine_pangu import initial_state, tiny_model

    leads = list(range(args.every, args.lead + 1, args.every))
    with tempfile.TemporaryDirectory(prefix="pangu-bench-") as tmp:
        folder = Path(tmp)
        for hours in (1, 3, 6, 24):
            tiny_model(folder / f"pangu_weather_{hours}.onnx", hours, nlat=721, nlon=1440)
        initial = initial_state(721, 1440)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = sum(1 for _ in PanguEngine(folder).forecast(initial, leads, ["500:Z", "850:T", "Surface:T"]))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        calls = len(schedule(leads))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.lead} h, outputs every {args.every} h: {calls} calls, {outputs} outputs")
    print(f"{wall:.2f} s wall, {cpu:.2f} s CPU ({cpu / calls:.2f} s CPU per call), load {os.getloadavg()[0]:.2f}")
    print(f"peak RSS {before:.0f} MiB before the forecast (the float64 initial state), {peak:.0f} MiB after")


if __name__ == "__main__":
    main()
