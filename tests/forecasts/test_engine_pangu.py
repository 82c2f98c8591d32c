"""The Pangu-Weather engine with tiny ONNX models built here: the official input and output names and
layout ((5, 13, lat, lon) and (4, lat, lon), float32) on an 8 by 16 grid. The n-hour model adds
STEP[n] to every value, so an output (and every input the engine hands to onnxruntime) tells how many
times each model ran on the way to it; every session.run is recorded, so the order of the calls is
checked against a transcription of the official inference loop (pseudocode.py's `Inference`, and
inference_iterative.py for its 6-hourly case), not against the engine's own schedule function."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest

from forecasts import inputs, pipeline, services
from forecasts.config import ConfigError, parse_task
from forecasts.engines import EngineError, get_engine, pangu
from forecasts.engines.pangu import Call, PanguEngine, decompose, schedule
from forecasts.fields import PRESSURE_LEVELS, SURFACE, SURFACE_VARIABLES, UPPER_VARIABLES, Fields
from forecasts.models import ForecastRun
from forecasts.samples import DEMO_BUCKET
from forecasts.storage import FileSystemStore, default_store
from models_registry.models import Deployment
from tests.conftest import Persona
from tests.forecasts.test_inputs import write_netcdf

NLAT, NLON = 8, 16
STEP = {1: 1.0, 3: 10.0, 6: 100.0, 24: 1000.0}  # what each model adds: an offset spells its chain
T0 = datetime(2017, 1, 1, tzinfo=UTC)


# --- the official loop, transcribed -----------------------------------------------------------------
def official_inference(forecast_range: int) -> tuple[list[tuple[int, tuple[int, ...]]], list[tuple[int, ...]]]:
    """pseudocode.py's `Inference`, line for line, with a state written as the tuple of model steps that
    made it from the initial state (). Returns the calls (model, state it starts from) and the output
    of every hour."""
    calls: list[tuple[int, tuple[int, ...]]] = []
    input_: tuple[int, ...] = ()
    input_24 = input_6 = input_3 = input_
    output_list = []
    for i in range(forecast_range):
        if (i + 1) % 24 == 0:
            input_ = input_24
            calls.append((24, input_))
            output = (*input_, 24)
            input_24 = input_6 = input_3 = output
        elif (i + 1) % 6 == 0:
            input_ = input_6
            calls.append((6, input_))
            output = (*input_, 6)
            input_6 = input_3 = output
        elif (i + 1) % 3 == 0:
            input_ = input_3
            calls.append((3, input_))
            output = (*input_, 3)
            input_3 = output
        else:
            calls.append((1, input_))
            output = (*input_, 1)
        input_ = output
        output_list.append(output)
    return calls, output_list


def official_iterative(steps: int) -> list[tuple[int, tuple[int, ...]]]:
    """inference_iterative.py's loop (6 h outputs from the 6 h and 24 h models)."""
    calls: list[tuple[int, tuple[int, ...]]] = []
    input_: tuple[int, ...] = ()
    input_24 = input_
    for i in range(steps):
        if (i + 1) % 4 == 0:
            calls.append((24, input_24))
            output = (*input_24, 24)
            input_24 = output
        else:
            calls.append((6, input_))
            output = (*input_, 6)
        input_ = output
    return calls


def as_calls(official: list[tuple[int, tuple[int, ...]]]) -> list[Call]:
    return [Call(model=m, start=sum(state), end=sum(state) + m) for m, state in official]


# --- the schedule --------------------------------------------------------------------------------------
def test_greedy_chains_by_hand() -> None:
    assert decompose(1) == [1]
    assert decompose(3) == [3]
    assert decompose(7) == [6, 1]  # the README's example
    assert decompose(23) == [6, 6, 6, 3, 1, 1]
    assert decompose(24) == [24]
    assert decompose(25) == [24, 1]
    assert decompose(48) == [24, 24]
    assert decompose(56) == [24, 24, 6, 1, 1]  # the paper's example
    assert schedule([7]) == [Call(6, 0, 6), Call(1, 6, 7)]
    assert schedule([23]) == [
        Call(6, 0, 6),
        Call(6, 6, 12),
        Call(6, 12, 18),
        Call(3, 18, 21),
        Call(1, 21, 22),
        Call(1, 22, 23),
    ]
    assert schedule([30]) == [Call(24, 0, 24), Call(6, 24, 30)]


def test_every_lead_1_to_48_is_the_official_loop() -> None:
    calls, outputs = official_inference(48)
    assert schedule(range(1, 49)) == as_calls(calls)  # all 48 calls, in the official order
    for lead in range(1, 49):
        chain = outputs[lead - 1]
        assert sum(chain) == lead and list(chain) == decompose(lead)
        # Alone, a lead runs exactly the calls its official state descends from, in the official order.
        alone = schedule([lead])
        assert [c.model for c in alone] == list(chain)
        assert [c.end for c in alone] == [sum(chain[: i + 1]) for i in range(len(chain))]


def test_six_hourly_leads_are_the_official_iterative_inference() -> None:
    assert schedule(range(6, 169, 6)) == as_calls(official_iterative(28))


def test_a_subset_of_leads_runs_a_subsequence_of_the_official_calls() -> None:
    official = as_calls(official_inference(48)[0])
    leads = [5, 7, 23, 30, 47]
    chosen = schedule(leads)
    ends = {c.end for c in chosen}
    assert chosen == [c for c in official if c.end in ends]
    needed = {sum(decompose(lead)[: i + 1]) for lead in leads for i in range(len(decompose(lead)))}
    assert ends == needed


# --- tiny ONNX models -----------------------------------------------------------------------------------
def tiny_model(path: Path, hours: int, *, nlat: int = NLAT, nlon: int = NLON, names: tuple[str, ...] = ()) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    in_upper, in_surface, out_upper, out_surface = names or ("input", "input_surface", "output", "output_surface")
    graph = helper.make_graph(
        [
            helper.make_node("Add", [in_upper, "step"], [out_upper]),
            helper.make_node("Add", [in_surface, "step"], [out_surface]),
        ],
        f"pangu_weather_{hours}",
        [
            helper.make_tensor_value_info(in_upper, TensorProto.FLOAT, [5, 13, nlat, nlon]),
            helper.make_tensor_value_info(in_surface, TensorProto.FLOAT, [4, nlat, nlon]),
        ],
        [
            helper.make_tensor_value_info(out_upper, TensorProto.FLOAT, [5, 13, nlat, nlon]),
            helper.make_tensor_value_info(out_surface, TensorProto.FLOAT, [4, nlat, nlon]),
        ],
        initializer=[numpy_helper.from_array(np.array(STEP[hours], dtype=np.float32), "step")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pangu-weather")
    for hours in (1, 3, 6, 24):
        tiny_model(folder / f"pangu_weather_{hours}.onnx", hours)
    return folder


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every session the engine makes and every run on it: the model file, the providers and the value
    of the first upper-air element handed in."""
    import onnxruntime as ort

    calls: list[dict[str, Any]] = []
    real = ort.InferenceSession

    class Recording(real):  # type: ignore[misc,valid-type]
        def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
            super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
            self.file = Path(path).name
            calls.append({"session": self.file, "providers": providers})

        def run(self, output_names: Any, feed: dict[str, np.ndarray], *args: Any) -> Any:
            calls.append({"run": self.file, "first": float(feed["input"].flat[0])})
            return super().run(output_names, feed, *args)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    return calls


def initial_state(nlat: int = NLAT, nlon: int = NLON) -> Fields:
    """Whole numbers, different for every variable, level and point (exact in float32)."""
    lat, lon = inputs.pangu_grid(nlat, nlon)
    cell = np.arange(nlat * nlon, dtype=np.float64).reshape(nlat, nlon)
    data = {}
    for v, var in enumerate(UPPER_VARIABLES):
        for k, level in enumerate(PRESSURE_LEVELS):
            data[f"{level}:{var}"] = 10_000.0 * (v * 13 + k + 1) + cell
    for s, var in enumerate(SURFACE_VARIABLES):
        data[f"{SURFACE}:{var}"] = 1_000_000.0 + 10_000.0 * s + cell
    return Fields(time=T0, lat=lat, lon=lon, data=data)


def offset(chain: list[int] | tuple[int, ...]) -> float:
    return sum(STEP[m] for m in chain)


def runs(recorded: list[dict[str, Any]], base: float) -> list[tuple[int, float]]:
    return [(int(c["run"].split("_")[-1].split(".")[0]), c["first"] - base) for c in recorded if "run" in c]


def test_every_onnx_call_for_leads_1_to_48_is_the_official_one(models_dir: Path, recorded: list[Any]) -> None:
    initial = initial_state()
    features = ["500:Z", "850:T", "50:Q", "Surface:P", "Surface:T"]
    states = list(PanguEngine(models_dir).forecast(initial, list(range(1, 49)), features))
    official_calls, official_outputs = official_inference(48)
    base = initial.data["1000:Z"][0, 0]
    # Each call hands onnxruntime the state the official loop hands it (its chain, spelled by the offset).
    assert runs(recorded, base) == [(model, offset(state)) for model, state in official_calls]
    assert [s.time for s in states] == [T0 + timedelta(hours=h) for h in range(1, 49)]
    for state, chain in zip(states, official_outputs, strict=True):
        assert sorted(state.data) == sorted(features)
        for feature in features:  # each variable and level back where it came from, moved by the chain
            np.testing.assert_array_equal(state.data[feature], initial.data[feature] + offset(chain))


def test_leads_asked_for_alone_run_only_their_chains(models_dir: Path, recorded: list[Any]) -> None:
    initial = initial_state()
    states = list(PanguEngine(models_dir).forecast(initial, [7, 23, 30], ["500:Z"]))
    base = initial.data["1000:Z"][0, 0]
    assert runs(recorded, base) == [
        (6, 0.0),  # +6: shared by 7 and 23
        (1, 100.0),  # +7 = 6 + 1
        (6, 100.0),  # +12
        (6, 200.0),  # +18
        (3, 300.0),  # +21
        (1, 310.0),  # +22
        (1, 311.0),  # +23 = 6 + 6 + 6 + 3 + 1 + 1
        (24, 0.0),  # +24
        (6, 1000.0),  # +30 = 24 + 6
    ]
    got = [float(s.data["500:Z"][0, 0] - initial.data["500:Z"][0, 0]) for s in states]
    assert got == [101.0, 312.0, 1100.0]
    # Only the models the schedule uses are opened.
    assert Counter(c["session"] for c in recorded if "session" in c) == Counter(
        {"pangu_weather_6.onnx": 1, "pangu_weather_1.onnx": 1, "pangu_weather_3.onnx": 1, "pangu_weather_24.onnx": 1}
    )


def test_cuda_is_chosen_when_onnxruntime_offers_it(
    models_dir: Path, recorded: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    assert pangu.providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cuda = [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]
    assert pangu.providers() == cuda
    list(PanguEngine(models_dir).forecast(initial_state(), [24], ["500:Z"]))
    assert [c["providers"] for c in recorded if "session" in c] == [cuda]


# --- availability ----------------------------------------------------------------------------------------
def test_unavailable_without_the_four_files_and_says_which(tmp_path: Path, models_dir: Path) -> None:
    usable, reason = PanguEngine(tmp_path).availability()
    assert not usable
    assert reason.startswith(
        "the official model files are not installed: pangu_weather_24.onnx, pangu_weather_6.onnx, "
        f"pangu_weather_3.onnx, pangu_weather_1.onnx missing from {tmp_path}."
    )
    assert "CC BY-NC-SA 4.0" in reason
    for hours in (24, 6, 1):
        (tmp_path / f"pangu_weather_{hours}.onnx").write_bytes(
            (models_dir / f"pangu_weather_{hours}.onnx").read_bytes()
        )
    (tmp_path / "pangu_weather_3.onnx").write_bytes(b"")  # an interrupted copy counts as missing
    usable, reason = PanguEngine(tmp_path).availability()
    assert not usable and "installed: pangu_weather_3.onnx missing from" in reason
    (tmp_path / "pangu_weather_3.onnx").write_bytes((models_dir / "pangu_weather_3.onnx").read_bytes())
    assert PanguEngine(tmp_path).availability() == (True, "")
    with pytest.raises(EngineError, match="not available: the official model files"):
        list(PanguEngine(tmp_path / "nowhere").forecast(initial_state(), [1], ["500:Z"]))


def test_the_directory_is_the_setting(settings: Any, models_dir: Path) -> None:
    engine = get_engine("pangu-weather")
    assert engine is not None
    settings.PANGU_WEATHER_DIR = models_dir
    assert engine.availability() == (True, "")
    settings.PANGU_WEATHER_DIR = models_dir / "elsewhere"
    assert engine.availability()[0] is False


# --- inputs ------------------------------------------------------------------------------------------------
def test_an_npy_pair_goes_in_as_the_official_arrays(tmp_path: Path, models_dir: Path, recorded: list[Any]) -> None:
    store = FileSystemStore(tmp_path)
    store.create_bucket("bkt")
    rng = np.random.default_rng(1)
    upper = rng.integers(0, 50_000, size=(5, 13, NLAT, NLON)).astype(np.float32)
    surface = rng.integers(0, 50_000, size=(4, NLAT, NLON)).astype(np.float32)
    folder = tmp_path / "bkt" / "in" / "2017010100"
    folder.mkdir(parents=True)
    np.save(folder / "input_upper.npy", upper)
    np.save(folder / "input_surface.npy", surface)
    initial = inputs.read_initial_state(store, "bkt", "in/", T0)
    (state,) = PanguEngine(models_dir).forecast(initial, [27], list(pangu.REQUIRED))
    for v, var in enumerate(UPPER_VARIABLES):
        for k, level in enumerate(PRESSURE_LEVELS):
            np.testing.assert_array_equal(state.data[f"{level}:{var}"], upper[v, k] + np.float32(1010.0))
    for s, var in enumerate(SURFACE_VARIABLES):
        np.testing.assert_array_equal(state.data[f"Surface:{var}"], surface[s] + np.float32(1010.0))


def test_a_netcdf_file_goes_in_mapped_to_the_official_layout(
    tmp_path: Path, models_dir: Path, recorded: list[Any]
) -> None:
    store = FileSystemStore(tmp_path)
    store.create_bucket("bkt")
    (tmp_path / "bkt" / "era5").mkdir(parents=True)
    lat = np.linspace(-90.0, 90.0, NLAT).tolist()  # south first, as some files are: the reader flips it
    lon = (np.arange(NLON) * 22.5 - 180.0).tolist()  # from -180: the reader rolls it to 0..337.5
    write_netcdf(tmp_path / "bkt" / "era5" / "t.nc", lat=lat, lon=lon, levels=PRESSURE_LEVELS)
    initial = inputs.read_initial_state(store, "bkt", "era5/", T0)
    (state,) = PanguEngine(models_dir).forecast(initial, [6], ["850:T", "50:Q", "Surface:U"])
    with netCDF4.Dataset(tmp_path / "bkt" / "era5" / "t.nc") as nc:
        levels = list(nc["level"][:])
        raw_t = np.asarray(nc["t"][0, levels.index(850)], dtype=np.float32)
        raw_q = np.asarray(nc["q"][0, levels.index(50)], dtype=np.float32)
        raw_u10 = np.asarray(nc["u10"][0], dtype=np.float32)

    # North first and from 0° east: rows reversed, the columns from -180 rolled by half the circle.
    def official(raw: np.ndarray) -> np.ndarray:
        return np.roll(raw[::-1], -NLON // 2, axis=1) + np.float32(100.0)

    np.testing.assert_array_equal(state.data["850:T"], official(raw_t))
    np.testing.assert_array_equal(state.data["50:Q"], official(raw_q))
    np.testing.assert_array_equal(state.data["Surface:U"], official(raw_u10))


def test_an_input_lacking_variables_or_on_another_grid_is_refused_in_words(models_dir: Path) -> None:
    engine = PanguEngine(models_dir)
    partial = initial_state()
    for level in PRESSURE_LEVELS:
        del partial.data[f"{level}:Q"]
    del partial.data["500:T"], partial.data["Surface:T"]
    assert engine.producible(partial.data) == set()
    assert engine.producible(initial_state().data) == set(pangu.REQUIRED)
    with pytest.raises(EngineError) as lacking:
        list(engine.forecast(partial, [6], ["500:Z"]))
    assert str(lacking.value) == (
        "Pangu-Weather needs the whole state; the input lacks Q at all 13 levels; T at 500 hPa; Surface:T."
    )
    with pytest.raises(EngineError) as grid:
        list(engine.forecast(initial_state(4, 8), [6], ["500:Z"]))
    assert str(grid.value) == (
        "pangu_weather_6.onnx runs on a grid of 8 latitudes by 16 longitudes (0.25°: 721 by 1440); the input is "
        "4 by 8. Give it the model's grid."
    )
    regional = initial_state()
    regional.lat = np.linspace(60.0, 20.0, NLAT)
    with pytest.raises(EngineError, match=r"global grid with both poles.*latitudes run 60 to 20"):
        list(engine.forecast(regional, [6], ["500:Z"]))


def test_a_model_with_other_names_is_not_taken(tmp_path: Path, models_dir: Path) -> None:
    for hours in (1, 3, 24):
        (tmp_path / f"pangu_weather_{hours}.onnx").write_bytes(
            (models_dir / f"pangu_weather_{hours}.onnx").read_bytes()
        )
    tiny_model(tmp_path / "pangu_weather_6.onnx", 6, names=("x", "x_surface", "output", "output_surface"))
    with pytest.raises(EngineError, match=r"pangu_weather_6.onnx is not a Pangu-Weather model: its inputs are \['x'"):
        list(PanguEngine(tmp_path).forecast(initial_state(), [6], ["500:Z"]))
    (tmp_path / "pangu_weather_6.onnx").write_bytes(b"not a model")
    with pytest.raises(EngineError, match=r"pangu_weather_6\.onnx cannot be loaded by onnxruntime"):
        list(PanguEngine(tmp_path).forecast(initial_state(), [6], ["500:Z"]))


# --- jobs --------------------------------------------------------------------------------------------------
def _body(path: str, features: str = "500:Z;Surface:T", lead: int = 30) -> dict[str, Any]:
    return {
        "name": "pangu",
        "input": {"type": "obs", "data": [{"bucket": DEMO_BUCKET, "path": path}]},
        "output": {"obs": {"bucket": DEMO_BUCKET, "path": "pangu-out/"}},
        "config": {
            "start_time_begin": "2017010100",
            "start_time_end": "2017010100",
            "forecast_lead_hours": lead,
            "forecast_features": features,
            "draw_figures": "false",
        },
    }


@pytest.fixture
def tiny_input(tmp_path: Path) -> Iterator[str]:
    """An npy pair on the tiny grid in the demo bucket."""
    store = default_store()
    initial = initial_state()
    upper = np.stack([np.stack([initial.data[f"{lv}:{v}"] for lv in PRESSURE_LEVELS]) for v in UPPER_VARIABLES])
    surface = np.stack([initial.data[f"Surface:{v}"] for v in SURFACE_VARIABLES])
    for name, array in (("input_upper.npy", upper), ("input_surface.npy", surface)):
        np.save(tmp_path / name, array.astype(np.float32))
        store.write_file(DEMO_BUCKET, f"pangu-tiny/2017010100/{name}", tmp_path / name)
    yield "pangu-tiny/"
    store.delete_prefix(DEMO_BUCKET, "pangu-tiny/")
    store.delete_prefix(DEMO_BUCKET, "pangu-out/")


def test_a_job_is_refused_while_the_files_are_missing(
    alice: Persona, weather: Any, settings: Any, tmp_path: Path, tiny_input: str
) -> None:
    settings.PANGU_WEATHER_DIR = tmp_path
    deployment = Deployment.objects.get(project=alice.project, model__name="pangu-weather")
    with pytest.raises(services.JobRefused) as refused:
        services.job_submit(
            project=alice.project, deployment=deployment, user=alice.user, spec=parse_task(_body(tiny_input))
        )
    assert refused.value.message.startswith(
        "The Pangu-Weather (official ONNX models, onnxruntime) is not available: the official model files are not "
        "installed: pangu_weather_24.onnx"
    )
    assert not weather


def test_a_job_on_an_input_lacking_variables_is_refused_naming_them(
    alice: Persona, weather: Any, settings: Any, models_dir: Path
) -> None:
    settings.PANGU_WEATHER_DIR = models_dir
    deployment = Deployment.objects.get(project=alice.project, model__name="pangu-weather")
    with pytest.raises(ConfigError) as refused:  # the demo input holds 500 and 850 hPa only
        services.job_submit(
            project=alice.project, deployment=deployment, user=alice.user, spec=parse_task(_body("era5/"))
        )
    assert "cannot be produced by the Pangu-Weather" in str(refused.value)
    assert "the input lacks Z at 1000, 925, 700, 600, 400, 300, 250, 200, 150, 100, 50 hPa; Q at all 13 levels" in str(
        refused.value
    )


def test_a_job_runs_through_the_pipeline(
    alice: Persona,
    weather: Any,
    settings: Any,
    models_dir: Path,
    tiny_input: str,
    recorded: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.PANGU_WEATHER_DIR = models_dir
    deployment = Deployment.objects.get(project=alice.project, model__name="pangu-weather")
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_submit(
            project=alice.project, deployment=deployment, user=alice.user, spec=parse_task(_body(tiny_input))
        )
    assert job.engine == "pangu-weather" and len(weather) == 1
    run = ForecastRun.objects.get(job=job)
    result = pipeline.execute(job=job, run=run, store=default_store(), keep_going=lambda fraction: True)
    # Output leads 6, 12, 18, 24, 30: 6 h model from the start, the 24 h model, then 6 h from +24.
    base = initial_state().data["1000:Z"][0, 0]
    assert runs(recorded, base) == [(6, 0.0), (6, 100.0), (6, 200.0), (24, 0.0), (6, 1000.0)]
    (key,) = result.outputs
    with default_store().local_path(DEMO_BUCKET, key) as local, netCDF4.Dataset(local) as nc:
        z = np.asarray(nc["z"][:])  # (time, level, lat, lon)
        t2m = np.asarray(nc["t2m"][:])
        assert list(np.asarray(nc["level"][:])) == [500]
    initial = initial_state()
    for i, chain in enumerate(([6], [6, 6], [6, 6, 6], [24], [24, 6])):
        np.testing.assert_allclose(z[i, 0], initial.data["500:Z"] + offset(chain), rtol=0, atol=0)
        np.testing.assert_allclose(t2m[i], initial.data["Surface:T"] + offset(chain), rtol=0, atol=0)


# --- the form ------------------------------------------------------------------------------------------------
def test_the_form_lists_the_engine_unavailable_with_the_reason_and_refuses_it(
    alice: Persona, weather: Any, settings: Any, tmp_path: Path
) -> None:
    from django.test import Client

    from tests.factories import PASSWORD
    from tests.forecasts.test_pages import FORM

    settings.PANGU_WEATHER_DIR = tmp_path
    pangu_deployment = Deployment.objects.get(project=alice.project, model__name="pangu-weather")
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    html = client.get("/forecasts/new/").content.decode()
    builtin = Deployment.objects.get(project=alice.project, model__name="builtin-spectral")
    assert f'<option value="{builtin.pk}" selected>' in html  # the first engine that can run
    assert (
        f'<option value="{pangu_deployment.pk}">Pangu-Weather (official ONNX models, onnxruntime) (unavailable)' in html
    )
    assert "is unavailable: the official model files are not installed: pangu_weather_24.onnx" in html
    response = client.post("/forecasts/new/", {**FORM, "deployment": pangu_deployment.pk})
    assert response.status_code == 200
    assert "is not available: the official model files are not installed" in " ".join(
        response.context["form"].non_field_errors()
    )
    assert not weather


def test_the_form_submits_to_the_engine_chosen(
    alice: Persona,
    weather: Any,
    settings: Any,
    models_dir: Path,
    tiny_input: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django.test import Client

    from forecasts.models import ForecastJob
    from tests.factories import PASSWORD
    from tests.forecasts.test_pages import FORM

    settings.PANGU_WEATHER_DIR = models_dir
    pangu_deployment = Deployment.objects.get(project=alice.project, model__name="pangu-weather")
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    html = client.get("/forecasts/new/").content.decode()
    assert "is unavailable" not in html and "(unavailable)" not in html
    body = {
        **FORM,
        "deployment": pangu_deployment.pk,
        "input_path": tiny_input,
        "start_time_end": FORM["start_time_begin"],
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/forecasts/new/", body)
    job = ForecastJob.objects.get()
    assert response.status_code == 302, response.context["form"].errors
    assert (job.engine, job.deployment_id) == ("pangu-weather", pangu_deployment.pk) and len(weather) == 1


def test_a_failing_call_is_an_engine_error_naming_the_step(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pangu._session

    class Failing:
        def __init__(self, session: Any) -> None:
            self.session = session

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

        def run(self, *args: Any) -> Any:
            raise RuntimeError("Failed to allocate memory for requested buffer of size 289,555,200")

    monkeypatch.setattr(pangu, "_session", lambda path: Failing(real(path)) if "_1." in path.name else real(path))
    with pytest.raises(EngineError) as failed:
        list(PanguEngine(models_dir).forecast(initial_state(), [7], ["500:Z"]))
    assert str(failed.value) == (
        "pangu_weather_1.onnx failed stepping from +6 h to +7 h: "
        "Failed to allocate memory for requested buffer of size 289,555,200"
    )


def test_a_job_runs_through_a_real_worker(
    tmp_path: Path, request: pytest.FixtureRequest, processes: Any, models_dir: Path
) -> None:
    """The console as `make run` starts it (daphne, a Celery worker process) with PANGU_WEATHER_DIR in
    its environment: the job goes through the task API and the worker runs the tiny models."""
    import httpx

    from tests.forecasts.test_jobs_end_to_end import _console

    console = _console(tmp_path, request, processes, PANGU_WEATHER_DIR=str(models_dir))
    deployment = console.python(
        "import django; django.setup()\n"
        "from models_registry.models import Deployment\n"
        f"print(Deployment.objects.get(project_id={console.project!r}, model__name='pangu-weather').pk)"
    ).strip()
    initial = initial_state()
    folder = tmp_path / "data" / "obs" / DEMO_BUCKET / "pangu-tiny" / "2017010100"
    folder.mkdir(parents=True)
    upper = np.stack([np.stack([initial.data[f"{lv}:{v}"] for lv in PRESSURE_LEVELS]) for v in UPPER_VARIABLES])
    np.save(folder / "input_upper.npy", upper.astype(np.float32))
    np.save(folder / "input_surface.npy", np.stack([initial.data[f"Surface:{v}"] for v in SURFACE_VARIABLES]))
    console.start_worker("w1")
    url = f"{console.url}/v1/{console.project}/deployments/{deployment}/tasks"
    body = {
        **_body("pangu-tiny/", "500:Z;Surface:T", lead=24),
        "output": {"obs": {"bucket": DEMO_BUCKET, "path": "results/"}},
    }
    response = httpx.post(url, json=body, headers={"X-Auth-Token": console.key}, timeout=60)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    console.deployment = deployment
    done = console.wait(job_id, lambda j: j["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"})
    assert done["state"] == "SUCCEEDED", console.logs()
    nc_path = tmp_path / "data" / "obs" / DEMO_BUCKET / "results" / job_id / "2017010100" / "forecast.nc"
    with netCDF4.Dataset(nc_path) as nc:
        z = np.asarray(nc["z"][:])
    for i, chain in enumerate(([6], [6, 6], [6, 6, 6], [24])):
        np.testing.assert_array_equal(z[i, 0], initial.data["500:Z"] + offset(chain))
