"""One forecast run, start to end, as a worker executes it: read the initial state, step the engine to
every output lead, write the NetCDF file and the figures to the job's output location.

Outputs of a run go to `<output path>/<job id>/<YYYYMMDDHH>/` (member runs to `.../member-NN/`):
`forecast.nc`, `figures/<feature>_<lead>h.png` and `figures/area_means.png`. Each object is written
whole (the store's writes are atomic), so a run that dies leaves complete files or none, and a run
executed again overwrites the same keys with the same content.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from forecasts import engines, inputs
from forecasts.config import Location, figure_leads, output_leads
from forecasts.fields import Fields
from forecasts.models import ForecastJob, ForecastRun
from forecasts.storage import ObjectStore, join_key

logger = logging.getLogger(__name__)

# A run's progress: the input by INPUT_END, the engine's last lead at ENGINE_END, the files after. A
# CNOP member run that makes the start's choice of candidates spends INPUT_END to CNOP_CHOICE_END on it.
INPUT_END = 0.02
ENGINE_END = 0.80
CNOP_CHOICE_END = 0.40

# The credit the ERA5 licence asks of anything made from its data (the demo input is ERA5).
ERA5_CREDIT = (
    "Contains modified Copernicus Climate Change Service information 2017. Neither the European "
    "Commission nor ECMWF is responsible for any use that may be made of the Copernicus information or "
    "data it contains."
)


class Stopped(Exception):
    """The job was cancelled, or the run was handed to another worker: stop without a result."""


@dataclass
class RunResult:
    outputs: list[str] = field(default_factory=list)
    engine_seconds: float = 0.0
    total_seconds: float = 0.0
    # Seconds per phase (input, engine, netcdf, maps, area_means, store), logged for bench/forecast.py.
    phases: dict[str, float] = field(default_factory=dict)


def run_folder(job: ForecastJob, run: ForecastRun) -> str:
    obs = job.output["obs"]
    parts = [obs.get("path", "").strip("/"), job.pk, run.start_time.strftime("%Y%m%d%H")]
    if run.member:
        parts.append(f"member-{run.member:02d}")
    return join_key(*[p for p in parts if p])


def read_state(store: ObjectStore, locations: list[Location], run: ForecastRun) -> Fields:
    """The initial state at the run's start time, merged from every input location that holds it."""
    state: Fields | None = None
    for location in locations:
        if run.start_time not in inputs.available_times(store, location.bucket, location.path):
            continue
        found = inputs.read_initial_state(store, location.bucket, location.path, run.start_time)
        if state is None:
            state = found
        else:
            for key, values in found.data.items():
                state.data.setdefault(key, values)
    if state is None:
        raise inputs.InputError(f"No input location holds an initial state for {run.start_time:%Y%m%d%H}.")
    return state


def execute(
    *,
    job: ForecastJob,
    run: ForecastRun,
    store: ObjectStore,
    keep_going: Callable[[float], bool],
) -> RunResult:
    """Run the forecast. `keep_going(fraction)` records progress and says whether to go on; False
    raises Stopped. Raises inputs.InputError, engines.EngineError, StorageError."""
    began = time.perf_counter()
    config = job.config
    engine = engines.get_engine(job.engine)
    if engine is None:
        raise engines.EngineError(f"The engine {job.engine!r} is not installed on this worker.")
    locations = [Location(d["bucket"], d.get("path", "")) for d in job.input["data"]]
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[phase] = phases.get(phase, 0.0) + now - mark
        mark = now

    initial = read_state(store, locations, run)
    features = list(job.ensemble_features if run.member else job.features)
    engine_from = INPUT_END  # the run's progress when the engine starts; it reaches ENGINE_END at the last lead
    if run.member:
        from forecasts import ensembles

        seed = f"{job.pk}:{run.start_time:%Y%m%d%H}"
        if config.get("ensemble_noise_method") == "cnop":
            from forecasts import cnop

            # The start's members share one choice of candidates, made together and stored beside the
            # start's outputs.
            # Making the choice can take longer than the member's own forecast (50 window forecasts):
            # it gets its share of the progress bar, which a run that finds the choice made skips.
            start_folder = run_folder(job, ForecastRun(start_time=run.start_time, member=0))
            engine_from = CNOP_CHOICE_END
            try:
                initial = cnop.member_state(
                    initial,
                    config,
                    member=run.member,
                    engine=engine,
                    features=features,
                    seed=seed,
                    store=store,
                    bucket=job.output["obs"]["bucket"],
                    folder=start_folder,
                    keep_going=lambda done: keep_going(INPUT_END + (CNOP_CHOICE_END - INPUT_END) * done),
                )
            except engines.Cancelled:
                raise Stopped from None
        else:
            initial = ensembles.perturb(initial, config, member=run.member, seed=seed)
    lead_hours = int(config["forecast_lead_hours"])
    leads = output_leads(lead_hours)
    if not keep_going(engine_from):
        raise Stopped
    engine_seconds = 0.0
    states: list[Fields] = []
    stopped = False

    def engine_at(fraction: float) -> float:
        """The run's progress when the engine has done `fraction` of its leads."""
        return engine_from + (ENGINE_END - engine_from) * fraction

    def should_stop() -> bool:
        nonlocal stopped
        stopped = stopped or not keep_going(engine_at(len(states) / len(leads)))
        return stopped

    def progress(fraction: float) -> None:
        if not keep_going(engine_at(fraction)):
            nonlocal stopped
            stopped = True

    lap("input")  # reading (and perturbing) the initial state
    start = time.perf_counter()
    try:
        for state in engine.forecast(initial, leads, features, should_stop=should_stop, progress=progress):
            states.append(state)
    except engines.Cancelled:
        raise Stopped from None
    engine_seconds = time.perf_counter() - start
    phases["engine"], mark = engine_seconds, time.perf_counter()
    if stopped:
        raise Stopped
    folder = run_folder(job, run)
    bucket = job.output["obs"]["bucket"]
    # Files go to the store on a thread of their own as soon as each is complete: a store write is
    # mostly waiting (fsync, the network), so it overlaps the drawing instead of following it. One
    # thread, so the writes keep their order; it is done before the temporary folder goes.
    uploads: list[tuple[str, Future[None]]] = []
    with (
        tempfile.TemporaryDirectory(prefix="forecast-") as tmp,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forecast-store-{run.pk}") as writer,
    ):
        from forecasts import figures, outputs

        def upload(key: str, path: Path) -> None:
            uploads.append((key, writer.submit(store.write_file, bucket, key, path)))

        local = Path(tmp)
        nc = local / "forecast.nc"
        attrs = {
            "job_id": job.pk,
            "job_name": job.name,
            "engine": engine.name,
            "engine_description": engine.title,
            "start_time": run.start_time.strftime("%Y%m%d%H"),
            "ensemble_member": str(run.member),
            "source_credit": ERA5_CREDIT,
        }
        outputs.write_forecast(nc, initial, states, features, attrs=attrs)
        lap("netcdf")
        upload(join_key(folder, "forecast.nc"), nc)
        if not keep_going(0.85):
            writer.shutdown(cancel_futures=True)
            raise Stopped
        if config.get("draw_figures", "true") == "true":
            chosen = set(figure_leads(lead_hours))
            maps = figures.draw_maps(
                states,
                features,
                [lead for lead in leads if lead in chosen],
                local / "figures",
                lead_of=lambda s: int((s.time - initial.time).total_seconds() // 3600),
            )
            lap("maps")
            for path in maps:
                upload(join_key(folder, "figures", path.name), path)
            series = outputs.area_means(states, features)
            chart = figures.draw_area_means(series, leads, local / "figures" / "area_means.png")
            upload(join_key(folder, "figures", chart.name), chart)
            lap("area_means")
        try:
            for _, done in uploads:
                done.result()  # a failed write raises its StorageError here
        finally:
            writer.shutdown(cancel_futures=True)
        lap("store")  # waiting for the writes still under way
    written = [key for key, _ in uploads]
    total = time.perf_counter() - began
    logger.info(
        "forecast run %s timings: %s, total %.3f s",
        run.pk,
        ", ".join(f"{name} {seconds:.3f} s" for name, seconds in phases.items()),
        total,
    )
    return RunResult(outputs=written, engine_seconds=engine_seconds, total_seconds=total, phases=phases)
