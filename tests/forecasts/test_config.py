"""The task body rules of the seed (../shared/seeds/README.md item 5), at every range end, both sides.
Expected values are the seed's, copied here, not read from forecasts.config."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from forecasts.config import ConfigError, parse_task

# The manual's two request examples, word for word (pangu-model-platform-manual.txt).
SEED_EXAMPLE = json.loads("""
{ "name" : "demo-task",
  "input" : { "type" : "obs", "data" : [ { "bucket" : "bucket", "path" : "path/to/directory/" } ] },
  "output" : { "obs" : { "bucket" : "bucket", "path" : "path/to/directory/" } },
  "config" : { "start_time_begin" : 2017010100, "start_time_end" : 2017010200, "start_time_interval_hours" : 1,
  "forecast_lead_hours" : 1, "forecast_features" : "Surface:P;Surface:T;Surface:U;Surface:V;1000:T;800:T;1000:Z;800:Z",
  "draw_figures" : "true" } }
""")
SEED_ENSEMBLE_EXAMPLE = json.loads("""
{ "name" : "demo-task",
  "input" : { "type" : "obs", "data" : [ { "bucket" : "bucket", "path" : "path/to/directory/" } ] },
  "output" : { "obs" : { "bucket" : "bucket", "path" : "path/to/directory/" } },
  "config" : { "start_time_begin" : 2017010100, "start_time_end" : 2017010200, "start_time_interval_hours" : 1,
  "forecast_lead_hours" : 1, "forecast_features" : "Surface:P;Surface:T;Surface:U;Surface:V;1000:T;800:T;1000:Z;800:Z",
  "num_ensembles" : 2, "ensemble_noise_method" : "perlin", "ensemble_noise_perlin_scale" : 0.1,
  "ensemble_noise_perlin_octave" : 1, "ensemble_noise_perlin_x" : 0.2, "ensemble_noise_perlin_y" : 0.2,
  "ensemble_forecast_features" : "Surface:P;Surface:T;Surface:U;Surface:V;1000:T;800:T;1000:Z;800:Z",
  "draw_figures" : "true" } }
""")


def _with(**config: Any) -> dict[str, Any]:
    body = copy.deepcopy(SEED_EXAMPLE)
    for key, value in config.items():
        if value is None:
            body["config"].pop(key, None)
        else:
            body["config"][key] = value
    return body


def _refused(body: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_task(body)
    return caught.value


def test_the_seeds_examples_are_accepted() -> None:
    spec = parse_task(SEED_EXAMPLE)
    assert spec.name == "demo-task"
    assert (spec.start_begin, spec.start_end) == (
        datetime(2017, 1, 1, 0, tzinfo=UTC),
        datetime(2017, 1, 2, 0, tzinfo=UTC),
    )
    assert len(spec.start_times) == 25  # hourly, both ends included
    assert spec.features == (
        "Surface:P", "Surface:T", "Surface:U", "Surface:V", "1000:T", "800:T", "1000:Z", "800:Z",
    )  # fmt: skip
    assert spec.output_leads == [1]
    ensemble = parse_task(SEED_ENSEMBLE_EXAMPLE).ensemble
    assert ensemble is not None
    assert (ensemble.members, ensemble.method, ensemble.perlin_scale, ensemble.perlin_octave) == (2, "perlin", 0.1, 1)
    assert (ensemble.perlin_x, ensemble.perlin_y) == (0.2, 0.2)


def test_the_answer_echoes_the_seeds_config_shape() -> None:
    config = parse_task(SEED_EXAMPLE).config_json()
    # The seed's answer example: times as strings, draw_figures as the string "true".
    assert config == {
        "start_time_begin": "2017010100",
        "start_time_end": "2017010200",
        "start_time_interval_hours": 1,
        "forecast_lead_hours": 1,
        "draw_figures": "true",
        "forecast_features": "Surface:P;Surface:T;Surface:U;Surface:V;1000:T;800:T;1000:Z;800:Z",
    }


def test_defaults_are_the_seeds() -> None:
    spec = parse_task(_with(start_time_interval_hours=None, forecast_lead_hours=None, draw_figures=None))
    assert (spec.interval_hours, spec.lead_hours, spec.draw_figures) == (6, 168, True)
    assert spec.start_times[:2] == [datetime(2017, 1, 1, 0, tzinfo=UTC), datetime(2017, 1, 1, 6, tzinfo=UTC)]
    assert len(spec.start_times) == 5  # 00, 06, 12, 18 and 00 the next day
    assert spec.output_leads == list(range(6, 169, 6))
    assert spec.figure_leads == [24, 48, 72, 96, 120, 144, 168]


@pytest.mark.parametrize(("value", "ok"), [(0, False), (1, True), (24, True), (25, False), (6.5, False), ("7", True)])
def test_interval_is_1_to_24_hours(value: Any, ok: bool) -> None:
    body = _with(start_time_interval_hours=value)
    if ok:
        assert parse_task(body).interval_hours == int(value)
    else:
        error = _refused(body)
        assert error.field == "config.start_time_interval_hours"
        assert "from 1 to 24" in error.message


@pytest.mark.parametrize(("value", "ok"), [(0, False), (1, True), (720, True), (721, False), (True, False)])
def test_lead_hours_is_1_to_720(value: Any, ok: bool) -> None:
    body = _with(forecast_lead_hours=value)
    if ok:
        assert parse_task(body).lead_hours == value
    else:
        assert _refused(body).field == "config.forecast_lead_hours"


def test_start_times_are_yyyymmddhh_and_the_end_is_not_before_the_begin() -> None:
    assert parse_task(_with(start_time_end="2017010100")).start_times == [datetime(2017, 1, 1, tzinfo=UTC)]
    error = _refused(_with(start_time_end="2016123123"))
    assert (error.field, error.message) == ("config.start_time_end", "must not be before start_time_begin.")
    for bad in ("201701010", "2017-01-01", "2017013100x", 20170101, None):
        assert _refused(_with(start_time_begin=bad)).field == "config.start_time_begin"
    error = _refused(_with(start_time_begin="2017023000"))  # 30 February
    assert "not a real date" in error.message
    error = _refused(_with(start_time_end="2017010124"))  # hour 24
    assert error.field == "config.start_time_end"


def test_a_window_of_more_than_120_starts_is_refused() -> None:
    assert len(parse_task(_with(start_time_end="2017010423", start_time_interval_hours=1)).start_times) == 96
    # 2017-01-01 00 to 2017-01-06 00 hourly: 121 starts.
    error = _refused(_with(start_time_end="2017010600", start_time_interval_hours=1))
    assert error.field == "config.start_time_end" and "121 forecast starts" in error.message


def test_draw_figures_is_true_or_false() -> None:
    assert parse_task(_with(draw_figures="false")).draw_figures is False
    assert parse_task(_with(draw_figures="TRUE")).draw_figures is True
    assert _refused(_with(draw_figures="yes")).field == "config.draw_figures"


def test_features_are_levels_and_variables_the_seed_names() -> None:
    assert parse_task(_with(forecast_features="surface:T; 500:Z;;500:Z")).features == ("Surface:T", "500:Z")
    assert parse_task(_with(forecast_features="")).features == (
        "500:Z", "850:Z", "500:T", "850:T", "500:U", "500:V",
    )  # fmt: skip
    cases = {
        "800:?abc": "on pressure levels the variables are Z, Q, T, U and V",  # the seed's own placeholder
        "Surface:Z": "at the surface the variables are P, T, U and V",
        "801:T": "801 is not a pressure level",
        "T": "is not level:variable",
        "500:Z:1": "is not level:variable",
    }
    for text, words in cases.items():
        error = _refused(_with(forecast_features=text))
        assert error.field == "config.forecast_features" and words in error.message, (text, error.message)


def test_body_shape_errors_name_their_field() -> None:
    cases: list[tuple[Any, str]] = [
        ([], "body"),
        ({**SEED_EXAMPLE, "name": ""}, "name"),
        ({**SEED_EXAMPLE, "name": "x" * 65}, "name"),
        ({**SEED_EXAMPLE, "name": "bad\x00name"}, "name"),
        ({**SEED_EXAMPLE, "input": {"type": "s3", "data": SEED_EXAMPLE["input"]["data"]}}, "input.type"),
        ({**SEED_EXAMPLE, "input": {"type": "obs", "data": []}}, "input.data"),
        ({**SEED_EXAMPLE, "input": {"type": "obs", "data": [{"path": "x"}]}}, "input.data[0].bucket"),
        ({**SEED_EXAMPLE, "input": {"type": "obs", "data": [{"bucket": "b", "path": "../x"}]}}, "input.data[0].path"),
        ({**SEED_EXAMPLE, "output": {"obs": "bucket"}}, "output.obs"),
        ({**SEED_EXAMPLE, "output": {}}, "output.obs"),
        ({**SEED_EXAMPLE, "config": None}, "config"),
    ]
    for body, field in cases:
        assert _refused(body).field == field, body
    assert parse_task({**SEED_EXAMPLE, "name": "x" * 64}).name == "x" * 64
