"""One forecast run through pipeline.execute in this process: the outputs it lists (in the order they
were made) are the objects in the store, and a store write that fails on the writer thread is the
run's error, not a run that claims outputs it never stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forecasts import pipeline, services
from forecasts.config import parse_task
from forecasts.models import ForecastJob, ForecastRun
from forecasts.samples import DEMO_BUCKET
from forecasts.storage import ObjectStore, StorageError, default_store
from models_registry.models import Deployment
from tests.conftest import Persona

pytestmark = pytest.mark.django_db


def _job(alice: Persona) -> ForecastJob:
    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    spec = parse_task(
        {
            "name": "pipeline",
            "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": "era5/"}]},
            "output": {"obs": {"bucket": DEMO_BUCKET, "path": "out/"}},
            "config": {
                "start_time_begin": "2017010100",
                "start_time_end": "2017010100",
                "forecast_lead_hours": 48,
                "forecast_features": "500:Z;850:T",
                "draw_figures": "true",
            },
        }
    )
    return services.job_submit(project=alice.project, deployment=deployment, user=alice.user, spec=spec)


class _FailingStore:
    """The real store, except that writing the key ending in `fail_on` raises StorageError."""

    def __init__(self, store: ObjectStore, fail_on: str) -> None:
        self.store, self.fail_on = store, fail_on
        self.written: list[str] = []

    def write_file(self, bucket: str, key: str, source: Path) -> None:
        if key.endswith(self.fail_on):
            raise StorageError(f"disk full writing {key}")
        self.store.write_file(bucket, key, source)
        self.written.append(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_the_outputs_are_listed_in_order_and_are_in_the_store(alice: Persona, weather: Any) -> None:
    job = _job(alice)
    run = ForecastRun.objects.get(job=job)
    store = default_store()
    result = pipeline.execute(job=job, run=run, store=store, keep_going=lambda fraction: True)
    folder = f"out/{job.pk}/2017010100"
    assert result.outputs == [
        f"{folder}/forecast.nc",
        f"{folder}/figures/500_Z_024h.png",
        f"{folder}/figures/500_Z_048h.png",
        f"{folder}/figures/850_T_024h.png",
        f"{folder}/figures/850_T_048h.png",
        f"{folder}/figures/area_means.png",
    ]
    for key in result.outputs:
        assert store.read_bytes(DEMO_BUCKET, key)[:4] in (b"\x89PNG", b"\x89HDF"), key
    assert set(result.phases) == {"input", "engine", "netcdf", "maps", "area_means", "store"}
    assert result.phases["engine"] == result.engine_seconds


def test_a_failed_write_on_the_writer_thread_is_the_runs_error(alice: Persona, weather: Any) -> None:
    job = _job(alice)
    run = ForecastRun.objects.get(job=job)
    store = _FailingStore(default_store(), fail_on="850_T_024h.png")
    with pytest.raises(StorageError, match=r"disk full writing out/\w+/2017010100/figures/850_T_024h\.png"):
        pipeline.execute(job=job, run=run, store=store, keep_going=lambda fraction: True)  # type: ignore[arg-type]
