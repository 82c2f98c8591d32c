"""An ensemble job's ensemble.nc (forecasts/ensemble_outputs.py): members, mean and spread, checked against
numpy on the members' own forecast.nc files read here with netCDF4 alone."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

CONFIG = {
    "start_time_begin": "2017010100",
    "start_time_end": "2017010100",
    "forecast_lead_hours": 12,
    "num_ensembles": 3,
    "ensemble_forecast_features": "500:Z;500:T",  # 500:Z is the control's too, 500:T the members' only
}


def _run(alice: Any, fail_member: int | None = None, figures: str = "false") -> Any:
    from forecasts import services, tasks
    from forecasts.config import parse_task
    from forecasts.models import ForecastJob, JobState
    from forecasts.samples import DEMO_BUCKET
    from models_registry.models import Deployment

    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    spec = parse_task(
        {
            "name": "ens",
            "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": "era5/"}]},
            "output": {"obs": {"bucket": DEMO_BUCKET, "path": "ens/"}},
            "config": {"draw_figures": figures, "forecast_features": "500:Z;850:T", **CONFIG},
        }
    )
    job = services.job_submit(project=alice.project, deployment=deployment, user=alice.user, spec=spec)
    for run in job.runs.order_by("start_time", "member"):
        if run.member == fail_member:
            run.state, run.error = JobState.FAILED, "broken on purpose"
            run.save(update_fields=["state", "error"])
            continue
        tasks.run_forecast(run.pk, run.attempt)
    tasks.finalise_job(job.pk)
    return ForecastJob.objects.get(pk=job.pk)


def _member(job: Any, member: int, var: str) -> np.ndarray:
    """(time after the start, lat, lon) of one member's forecast.nc at 500 hPa."""
    import netCDF4

    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    folder = f"ens/{job.pk}/2017010100" + (f"/member-{member:02d}" if member else "")
    with default_store().local_path(DEMO_BUCKET, f"{folder}/forecast.nc") as path, netCDF4.Dataset(path) as nc:
        keep = np.asarray(nc["lead_time"][:]) > 0
        level = list(nc["level"][:]).index(500)
        return np.asarray(nc[var][:, level], dtype=np.float64)[keep]


def _ensemble(job: Any) -> dict[str, Any]:
    import netCDF4

    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    with default_store().local_path(DEMO_BUCKET, f"ens/{job.pk}/2017010100/ensemble.nc") as path:
        with netCDF4.Dataset(path) as nc:
            nc.set_auto_mask(False)
            out: dict[str, Any] = {name: np.asarray(nc[name][:]) for name in nc.variables}
            out["attrs"] = {k: nc.getncattr(k) for k in nc.ncattrs()}
            out["units"] = nc["z500_spread"].units
            return out


def test_ensemble_nc_holds_every_member_and_numpys_mean_and_spread(alice: Any, weather: Any) -> None:
    from forecasts.outputs import FILL_VALUE
    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store

    job = _run(alice, figures="true")
    ens = _ensemble(job)
    assert list(ens["member"]) == [0, 1, 2, 3]
    assert list(ens["lead_time"]) == [6.0, 12.0]
    for name, var in (("z500", "z"), ("t500", "t")):
        members = np.stack([_member(job, m, var) for m in (1, 2, 3)])
        np.testing.assert_array_equal(ens[name][1:], members.astype(np.float32))
        np.testing.assert_allclose(ens[f"{name}_mean"], members.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(ens[f"{name}_spread"], members.std(axis=0, ddof=1), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(ens["z500"][0], _member(job, 0, "z").astype(np.float32))
    assert np.all(ens["t500"][0] == FILL_VALUE)  # the control does not run the members-only feature
    assert ens["units"] == "m2 s-2" and ens["attrs"]["missing_members"] == "none"
    manifest = json.loads(default_store().read_bytes(DEMO_BUCKET, f"ens/{job.pk}/manifest.json"))
    folder = f"ens/{job.pk}/2017010100"
    # A 12 h job draws its maps at 12 h only (forecasts/config.py figure_leads: every 24 h and the last).
    figures = [
        f"{folder}/ensemble-{kind}/500_{v}_{lead:03d}h.png"
        for kind in ("mean", "spread")
        for v in "ZT"
        for lead in (12,)
    ]
    assert manifest["ensemble"]["files"] == [f"{folder}/ensemble.nc", *figures, f"{folder}/ensemble_plume.png"]
    for key in manifest["ensemble"]["files"][1:]:
        assert default_store().read_bytes(DEMO_BUCKET, key)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("failed", [2])
def test_a_failed_member_is_left_out_and_said_so(alice: Any, weather: Any, failed: int) -> None:
    job = _run(alice, fail_member=failed)
    ens = _ensemble(job)
    assert list(ens["member"]) == [0, 1, 3] and ens["attrs"]["missing_members"] == "2"
    members = np.stack([_member(job, m, "z") for m in (1, 3)])
    np.testing.assert_allclose(ens["z500_spread"], members.std(axis=0, ddof=1), rtol=1e-5, atol=1e-3)
    messages = list(job.events.values_list("message", flat=True))
    assert "2017010100: member 2 did not succeed and is left out of the ensemble." in messages


def test_the_job_page_lists_the_ensemble_files(alice: Any, weather: Any) -> None:
    from django.test import Client

    from tests.factories import PASSWORD

    job = _run(alice, figures="true")
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    html = client.get(f"/forecasts/{job.pk}/").content.decode()
    folder = f"ens/{job.pk}/2017010100"
    assert "<h3>Ensemble from 2017010100</h3>" in html
    for name in ("ensemble.nc", "ensemble_plume.png", "ensemble-mean/500_Z_012h.png", "ensemble-spread/500_T_012h.png"):
        url = f"/forecasts/{job.pk}/files/{folder}/{name}"
        assert f'"{url}"' in html
        assert client.get(url).status_code == 200
    assert html.count('data-statistic="spread"') == 2 and html.count('data-statistic="mean"') == 2
    # A key the manifest does not list is not served, however it is named.
    assert client.get(f"/forecasts/{job.pk}/files/{folder}/ensemble-mean/../manifest.json").status_code == 404
