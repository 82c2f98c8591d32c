"""Ensemble jobs on the built-in engine through real Celery workers (issue 13's benchmark).

A 10-member Perlin ensemble and a CNOP ensemble (10 members from 50 candidates), one start, 72 h,
against a single deterministic run of the same job, each with one worker and with two. Goal: the
10-member job within 4x the wall time of the deterministic run, on two workers. The jobs alternate
(deterministic, Perlin, CNOP) per worker count, so the shared machine's noise hits them alike.

The console is started as `make run` does (bench/forecast.py's Stack: a fresh DATA_DIR, migrate,
bootstrap with the demo ERA5 input, daphne, the filesystem broker); jobs go through the task API.

    .venv/bin/python bench/ensemble.py              # 1 round
    .venv/bin/python bench/ensemble.py --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forecast import FEATURES, Stack  # bench/forecast.py: the same console setup

JOBS: dict[str, dict[str, Any]] = {
    "deterministic": {},
    "perlin, 10 members": {"num_ensembles": 10, "ensemble_noise_method": "perlin"},
    "cnop, 10 of 50 candidates": {
        "num_ensembles": 10,
        "ensemble_noise_method": "cnop",
        "ensemble_cnop_initial_quantity": 50,
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    base = {
        "start_time_begin": "2017010100",
        "start_time_end": "2017010100",
        "forecast_lead_hours": 72,
        "forecast_features": FEATURES,
        "ensemble_forecast_features": "500:Z;850:T",
        "draw_figures": "true",
    }
    walls: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.up()
            for _ in range(args.rounds):
                for workers in (1, 2):
                    stack.set_workers(workers)
                    stack.job({**base, "forecast_lead_hours": 6})  # warm the workers
                    for name, extra in JOBS.items():
                        config = {**base, **extra}
                        if not extra:
                            config.pop("ensemble_forecast_features")
                        wall = stack.job(config)["wall"]
                        walls.setdefault((workers, name), []).append(wall)
                        print(f"{workers} worker(s), {name}: {wall:.2f} s", flush=True)
        finally:
            stack.down()
    print(f"\n72 h from 2017010100, {len(FEATURES.split(';'))} features, figures on; medians of {args.rounds}:")
    print("| job | one worker | two workers | ratio to deterministic (two workers) |")
    print("|---|--:|--:|--:|")
    single = statistics.median(walls[(2, "deterministic")])
    for name in JOBS:
        one, two = statistics.median(walls[(1, name)]), statistics.median(walls[(2, name)])
        print(f"| {name} | {one:.2f} s | {two:.2f} s | {two / single:.2f}x |")
    ratio = statistics.median(walls[(2, "perlin, 10 members")]) / single
    print(f"\nGoal, the 10-member job within 4x the deterministic run on two workers: {ratio:.2f}x, "
          f"{'met' if ratio <= 4 else 'not met'}")  # fmt: skip
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
