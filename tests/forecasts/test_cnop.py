"""CNOP ensembles (forecasts/cnop.py): the candidates kept are the ones whose forecasts depart the most,
and distinct; the members of a job start from them."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from forecasts import cnop, ensembles
from forecasts.fields import Fields
from forecasts.storage import FileSystemStore

SEED = "job:2017010100"


# --- choosing: largest first, distinct ----------------------------------------------------------------
def test_choose_takes_the_largest_and_passes_over_a_near_copy() -> None:
    e1, e2, e3 = np.eye(3)
    # Sizes 1, 5, 3, 4: candidate 3 (size 4) points the same way as candidate 1 (size 5).
    vectors = [1 * e3, 5 * e1, 3 * e2, 4 * e1]
    assert cnop.choose(vectors, 2) == [1, 2]  # 3 is the second largest, but a copy of 1's direction
    assert cnop.choose(vectors, 3) == [1, 2, 0]
    # Not enough distinct ones: the largest passed over fills the rest.
    assert cnop.choose(vectors, 4) == [1, 2, 0, 3]
    # Opposite directions are distinct (cosine -1).
    assert cnop.choose([5 * e1, -4 * e1, 3 * e1], 2) == [0, 1]
    # Equal sizes go to the lower index.
    assert cnop.choose([2 * e1, 2 * e2, 2 * e3], 2) == [0, 1]
    with pytest.raises(cnop.CnopError):
        cnop.choose(vectors, 5)


def _state() -> Fields:
    lat = np.linspace(90, -90, 19)
    lon = np.arange(0, 360, 10.0)
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    data = {
        "500:Z": 54000 + 3000 * np.cos(la) ** 2 + 400 * np.sin(2 * lo) * np.cos(la),
        "500:T": 250 + 20 * np.cos(la) + 2 * np.cos(3 * lo) * np.cos(la),
    }
    return Fields(time=datetime(2017, 1, 1, tzinfo=UTC), lat=lat, lon=lon, data=data)


class _Amplifier:
    """A model whose forecast amplifies a perturbation's projection on one fixed pattern by GAIN and
    leaves the rest as it is: the departure of a candidate is then known from its projection alone."""

    name = "amplifier"
    title = "test amplifier"
    gain = 1000.0

    def __init__(self, base: Fields, pattern: dict[str, np.ndarray]) -> None:
        self.base, self.pattern, self.calls = base, pattern, 0

    def availability(self) -> tuple[bool, str]:
        return True, ""

    def producible(self, inputs: Any) -> set[str]:
        return set(self.base.data)

    def forecast(
        self,
        initial: Fields,
        lead_hours: Sequence[int],
        features: Sequence[str],
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Iterator[Fields]:
        self.calls += 1
        for _ in lead_hours:
            out = Fields(time=initial.time, lat=initial.lat, lon=initial.lon)
            projection = sum(float(((initial.data[k] - self.base.data[k]) * self.pattern[k]).sum()) for k in features)
            for key in features:
                out.data[key] = initial.data[key] + self.gain * projection * self.pattern[key]
            yield out


def test_the_candidates_kept_are_those_whose_forecasts_depart_the_most() -> None:
    base = _state()
    rng = np.random.default_rng(7)
    pattern = {k: rng.standard_normal(v.shape) for k, v in base.data.items()}
    norm = np.sqrt(sum(float((p * p).sum()) for p in pattern.values()))
    pattern = {k: p / norm for k, p in pattern.items()}
    engine = _Amplifier(base, pattern)
    features = ["500:Z", "500:T"]
    selection = cnop.select(base, engine, candidates=12, members=4, features=features, lead_hours=48, seed=SEED)
    assert engine.calls == 13  # the control and each candidate once
    assert selection.window_hours == 24 and len(selection.departures) == 12
    # Expected from the candidates themselves: the projection on the amplified pattern, per feature
    # scaled as the departure is (over the control's spread), dominates each departure.
    weights = ensembles.area_weights(base.lat)
    spreads = {k: ensembles._weighted_std(base.data[k], weights) for k in features}
    sizes, signs = [], []
    for number in range(1, 13):
        state = cnop.candidate(base, number, SEED)
        projection = sum(float(((state.data[k] - base.data[k]) * pattern[k]).sum()) for k in features)
        scaled = sum(
            float((weights[:, None] * (pattern[k] / spreads[k]) ** 2).sum()) / (weights.sum() * len(base.lon))
            for k in features
        )
        sizes.append(abs(projection) * engine.gain * np.sqrt(scaled))
        signs.append(np.sign(projection))
    # Every departure points along the amplified pattern, one way or the other: the largest is kept,
    # then the largest pointing the other way (cosine -1); the rest are near copies of one of the two,
    # so the largest of them fill the remaining places.
    order = sorted(range(1, 13), key=lambda n: -sizes[n - 1])
    first = order[0]
    second = next(n for n in order if signs[n - 1] != signs[first - 1])
    rest = [n for n in order if n not in (first, second)]
    assert selection.chosen == [first, second, *rest[:2]]
    assert selection.departures == pytest.approx(sizes, rel=1e-3)


def test_candidates_lie_on_the_norm_sphere() -> None:
    base = _state()
    weights = ensembles.area_weights(base.lat)
    for number in (1, 2, 3):
        state = cnop.candidate(base, number, SEED)
        for key, values in base.data.items():
            delta = state.data[key] - values
            rms = np.sqrt(float((weights[:, None] * delta**2).sum() / (weights.sum() * len(base.lon))))
            assert rms == pytest.approx(cnop.AMPLITUDE * ensembles._weighted_std(values, weights), rel=1e-9)
    assert not np.array_equal(cnop.candidate(base, 1, SEED).data["500:Z"], cnop.candidate(base, 2, SEED).data["500:Z"])


# --- member runs share the candidates' forecasts ---------------------------------------------------------
BUCKET = "cnop-test"
FOLDER = "runs/job/2017010100"
SHARED = f"{FOLDER}/{cnop.CANDIDATES_FOLDER}"
FEATURES = ["500:Z", "500:T"]


class _RecordingStore(FileSystemStore):
    """A filesystem store that remembers the keys written, in order."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.written: list[str] = []

    def write_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.written.append(key)
        super().write_bytes(bucket, key, data)


@pytest.fixture
def shared(tmp_path: Any) -> tuple[Fields, dict[str, np.ndarray], _RecordingStore, cnop.Selection]:
    """The state, the amplified pattern, an empty store, and the choice one process makes alone."""
    base = _state()
    rng = np.random.default_rng(11)
    pattern = {k: rng.standard_normal(v.shape) for k, v in base.data.items()}
    norm = np.sqrt(sum(float((p * p).sum()) for p in pattern.values()))
    pattern = {k: p / norm for k, p in pattern.items()}
    reference = cnop.select(
        base, _Amplifier(base, pattern), candidates=12, members=4, features=FEATURES, lead_hours=48, seed=SEED
    )
    store = _RecordingStore(tmp_path)
    store.create_bucket(BUCKET)
    return base, pattern, store, reference


def _share(base: Fields, engine: Any, store: Any, member: int, progress: list[float] | None = None) -> list[int]:
    deadline = time.monotonic() + 20  # a run that waits for ever stops (engines.Cancelled), not the suite

    def keep_going(done: float) -> bool:
        if progress is not None:
            progress.append(done)
        return time.monotonic() < deadline

    return cnop.shared_choice(
        base,
        engine,
        candidates=12,
        members=4,
        member=member,
        features=FEATURES,
        lead_hours=48,
        seed=SEED,
        store=store,
        bucket=BUCKET,
        folder=FOLDER,
        keep_going=keep_going,
    )


def _store_departure(store: Any, base: Fields, pattern: Any, number: int) -> None:
    """What another run stores for candidate `number`: its departure, computed by that run's engine."""
    engine = _Amplifier(base, pattern)
    *_, control = engine.forecast(base, [24], FEATURES)
    *_, forecast = engine.forecast(cnop.candidate(base, number, SEED), [24], FEATURES)
    buffer = io.BytesIO()
    np.save(buffer, cnop.departure(forecast, control, FEATURES))
    store.write_bytes(BUCKET, f"{SHARED}/{number:04d}.npy", buffer.getvalue())


def _stored_selection(store: Any) -> Any:
    return json.loads(store.read_bytes(BUCKET, f"{FOLDER}/{cnop.SELECTION_FILE}"))


def test_a_run_forecasts_only_the_candidates_no_other_run_has(shared: Any) -> None:
    """Another member run stored candidates 4 to 9: this one forecasts the control and the six others,
    reads those six, and makes exactly the choice one process makes alone; the shared folder goes."""
    base, pattern, store, reference = shared
    for number in range(4, 10):
        _store_departure(store, base, pattern, number)
    engine = _Amplifier(base, pattern)
    progress: list[float] = []
    assert _share(base, engine, store, member=1, progress=progress) == reference.chosen
    assert engine.calls == 1 + 6
    assert progress == [n / 12 for n in range(12)]  # the share of departures known, read or forecast
    assert _stored_selection(store) == reference.as_json()
    assert store.list_keys(BUCKET, SHARED + "/") == []


def test_each_member_run_starts_at_its_own_share(shared: Any) -> None:
    """Member 3 of 4 starts at candidate 7 (the third share of twelve) and goes round: runs that start
    together do not queue on the same candidates. Each is claimed before it is forecast."""
    base, pattern, store, reference = shared
    assert _share(base, _Amplifier(base, pattern), store, member=3) == reference.chosen
    order = [*range(7, 13), *range(1, 7)]
    expected = [f"{SHARED}/{n:04d}.{kind}" for n in order for kind in ("claim", "npy")]
    assert store.written == [*expected, f"{FOLDER}/{cnop.SELECTION_FILE}"]


def test_a_candidate_claimed_by_a_live_run_is_waited_for_not_forecast_again(shared: Any) -> None:
    base, pattern, store, reference = shared
    store.write_bytes(BUCKET, f"{SHARED}/0002.claim", f"{time.time():.3f}".encode())
    other = threading.Timer(0.5, _store_departure, args=(store, base, pattern, 2))  # the other run ends
    other.start()
    engine = _Amplifier(base, pattern)
    began = time.monotonic()
    try:
        assert _share(base, engine, store, member=1) == reference.chosen
    finally:
        other.join()
    assert engine.calls == 1 + 11
    assert time.monotonic() - began >= 0.5  # it waited for candidate 2's departure


def test_a_stale_claim_is_taken_over(shared: Any) -> None:
    """The run that claimed candidate 2 died (its claim is older than CLAIM_STALE_SECONDS): this run
    forecasts it instead of waiting for ever."""
    base, pattern, store, reference = shared
    stale = time.time() - cnop.CLAIM_STALE_SECONDS - 1
    store.write_bytes(BUCKET, f"{SHARED}/0002.claim", f"{stale:.3f}".encode())
    engine = _Amplifier(base, pattern)
    assert _share(base, engine, store, member=1) == reference.chosen
    assert engine.calls == 1 + 12


def test_a_choice_stored_by_another_run_meanwhile_is_taken_and_the_folder_removed(shared: Any) -> None:
    """Another run had every departure first: this one stops forecasting, takes that run's choice,
    and removes what it wrote after that run cleared the folder."""
    base, pattern, store, _ = shared
    theirs = {"chosen": [12, 11, 10, 9]}

    class _Overtaken(_Amplifier):
        def forecast(self, *args: Any, **kwargs: Any) -> Iterator[Fields]:
            if self.calls == 2:  # the control and one candidate done: the other run finishes now
                store.write_bytes(BUCKET, f"{FOLDER}/{cnop.SELECTION_FILE}", json.dumps(theirs).encode())
            return super().forecast(*args, **kwargs)

    engine = _Overtaken(base, pattern)
    assert _share(base, engine, store, member=1) == [12, 11, 10, 9]
    assert engine.calls == 3  # the control, candidate 1, and candidate 2, whose departure is not stored
    assert f"{SHARED}/0001.npy" in store.written and f"{SHARED}/0002.npy" not in store.written
    assert store.list_keys(BUCKET, SHARED + "/") == []


def test_two_runs_at_once_make_the_same_choice_and_share_the_work(shared: Any) -> None:
    base, pattern, store, reference = shared
    engines = [_Amplifier(base, pattern), _Amplifier(base, pattern)]
    results: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=lambda m=m: results.__setitem__(m, _share(base, engines[m - 1], store, member=m)))
        for m in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {1: reference.chosen, 2: reference.chosen}
    assert store.list_keys(BUCKET, SHARED + "/") == []
    assert _stored_selection(store) == reference.as_json()


# --- a job ---------------------------------------------------------------------------------------------
def _cnop_body(**config: Any) -> dict[str, Any]:
    from forecasts.samples import DEMO_BUCKET

    return {
        "name": "cnop",
        "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": "era5/"}]},
        "output": {"obs": {"bucket": DEMO_BUCKET, "path": "cnop/"}},
        "config": {
            "draw_figures": "false",
            "forecast_features": "500:Z",
            "start_time_begin": "2017010100",
            "start_time_end": "2017010100",
            "forecast_lead_hours": 12,
            "num_ensembles": 2,
            "ensemble_noise_method": "cnop",
            "ensemble_forecast_features": "500:Z;500:T",
            **config,
        },
    }


@pytest.mark.django_db
def test_a_member_run_that_makes_the_choice_shows_its_progress(alice: Any, weather: Any) -> None:
    """Making the choice can take longer than the member's own forecast: the run's progress moves
    from 0.02 to 0.40 as departures become known, then the engine's from 0.40 to 0.80. A later
    member's run finds the choice made and starts at 0.40."""
    from forecasts import pipeline, services
    from forecasts.config import parse_task
    from forecasts.storage import default_store
    from models_registry.models import Deployment

    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    job = services.job_submit(
        project=alice.project,
        deployment=deployment,
        user=alice.user,
        spec=parse_task(_cnop_body(ensemble_cnop_initial_quantity=4)),
    )
    seen: dict[int, list[float]] = {1: [], 2: []}
    for member in (1, 2):

        def keep_going(fraction: float, progress: list[float] = seen[member]) -> bool:
            progress.append(fraction)
            return True

        pipeline.execute(job=job, run=job.runs.get(member=member), store=default_store(), keep_going=keep_going)
    choosing = [0.02 + 0.38 * n / 4 for n in range(4)]
    assert seen[1][:4] == pytest.approx(choosing)
    for values in seen.values():
        engine = [f for f in values if 0.40 <= f <= 0.80]
        assert engine[0] == pytest.approx(0.40) and engine[-1] == pytest.approx(0.80)
        assert values == sorted(values)  # never goes back
    assert seen[2][0] == pytest.approx(0.40)


@pytest.mark.django_db
def test_a_cnop_job_runs_its_members_from_the_chosen_candidates(alice: Any, weather: Any) -> None:
    import netCDF4

    from forecasts import services, tasks
    from forecasts.config import ConfigError, parse_task
    from forecasts.inputs import read_initial_state
    from forecasts.models import ForecastJob, JobState
    from forecasts.samples import DEMO_BUCKET
    from forecasts.storage import default_store
    from models_registry.models import Deployment

    deployment = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    body = _cnop_body

    with pytest.raises(ConfigError) as refused:
        services.job_submit(
            project=alice.project,
            deployment=deployment,
            user=alice.user,
            spec=parse_task(body(num_ensembles=4, ensemble_cnop_initial_quantity=3)),
        )
    assert refused.value.field == "config.ensemble_cnop_initial_quantity"
    job = services.job_submit(
        project=alice.project,
        deployment=deployment,
        user=alice.user,
        spec=parse_task(body(ensemble_cnop_initial_quantity=4)),
    )
    for run in job.runs.order_by("start_time", "member"):
        tasks.run_forecast(run.pk, run.attempt)
    tasks.finalise_job(job.pk)
    job = ForecastJob.objects.get(pk=job.pk)
    assert job.state == JobState.SUCCEEDED, [r.error for r in job.runs.all()]
    store = default_store()
    selection = json.loads(store.read_bytes(DEMO_BUCKET, f"cnop/{job.pk}/2017010100/{cnop.SELECTION_FILE}"))
    assert len(selection["departures"]) == 4 and selection["window_hours"] == 12
    chosen = selection["chosen"]
    assert len(chosen) == 2 and len(set(chosen)) == 2
    # The two largest departures (they are distinct here: checked by choose's own rule).
    assert sorted(chosen) == sorted(sorted(range(1, 5), key=lambda n: -selection["departures"][n - 1])[:2])
    # Member m's initial state is candidate chosen[m - 1]: its 12 h forecast equals the engine's forecast
    # of that candidate, computed here.
    from forecasts.engines import get_engine

    engine = get_engine("builtin-spectral")
    assert engine is not None
    initial = read_initial_state(store, DEMO_BUCKET, "era5/", datetime(2017, 1, 1, tzinfo=UTC))
    for member in (1, 2):
        state = cnop.candidate(initial, chosen[member - 1], f"{job.pk}:2017010100")
        *_, expected = engine.forecast(state, [6, 12], ["500:Z", "500:T"])
        key = f"cnop/{job.pk}/2017010100/member-{member:02d}/forecast.nc"
        with store.local_path(DEMO_BUCKET, key) as path, netCDF4.Dataset(path) as nc:
            at = list(nc["lead_time"][:]).index(12)
            stored = np.asarray(nc["z"][at, list(nc["level"][:]).index(500)], dtype=np.float64)
        np.testing.assert_allclose(stored, expected.data["500:Z"], rtol=1e-5)
