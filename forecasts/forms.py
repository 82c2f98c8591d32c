"""The job form: every config field of the seed in plain words, its default prefilled and its range
beside it. The form builds the seed's task body and checks it with the very function the task API
uses (forecasts.config.parse_task), so the two accept exactly the same jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms

from forecasts.config import (
    DEFAULT_FEATURES,
    DEFAULT_INTERVAL_HOURS,
    DEFAULT_LEAD_HOURS,
    MAX_LEAD_HOURS,
    ConfigError,
    TaskSpec,
    feature_words,
    parse_task,
)
from forecasts.fields import SURFACE, SURFACE_VARIABLES

# The levels and variables offered as pickers (the Pangu-Weather levels); the API takes any ERA5 level.
FORM_LEVELS = (1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150, 100, 50)
FORM_UPPER = ("Z", "T", "U", "V", "Q")


def feature_choices() -> list[tuple[str, str]]:
    choices = [(f"{level}:{var}", feature_words(f"{level}:{var}")) for level in FORM_LEVELS for var in FORM_UPPER]
    choices += [(f"{SURFACE}:{var}", feature_words(f"{SURFACE}:{var}")) for var in SURFACE_VARIABLES]
    return choices


# Where a refusal of parse_task lands on the form.
FIELD_OF = {
    "name": "name",
    "input.data[0].bucket": "input_bucket",
    "input.data[0].path": "input_path",
    "input.data[0]": "input_path",
    "input.data": "input_path",
    "output.obs.bucket": "output_bucket",
    "output.obs.path": "output_path",
    "config.start_time_begin": "start_time_begin",
    "config.start_time_end": "start_time_end",
    "config.start_time_interval_hours": "start_time_interval_hours",
    "config.forecast_lead_hours": "forecast_lead_hours",
    "config.draw_figures": "draw_figures",
    "config.forecast_features": "forecast_features",
    "config.num_ensembles": "num_ensembles",
    "config.ensemble_forecast_features": "forecast_features",
    "config.ensemble_noise_method": "ensemble_noise_method",
    "config.ensemble_noise_perlin_scale": "ensemble_noise_perlin_scale",
    "config.ensemble_noise_perlin_octave": "ensemble_noise_perlin_octave",
    "config.ensemble_noise_perlin_x": "ensemble_noise_perlin_x",
    "config.ensemble_noise_perlin_y": "ensemble_noise_perlin_y",
    "config.ensemble_cnop_initial_quantity": "ensemble_cnop_initial_quantity",
}

PERLIN_KEYS = (
    "ensemble_noise_perlin_scale",
    "ensemble_noise_perlin_octave",
    "ensemble_noise_perlin_x",
    "ensemble_noise_perlin_y",
)
HOUR_INPUT = forms.DateTimeInput(attrs={"type": "datetime-local", "step": 3600}, format="%Y-%m-%dT%H:00")


class JobForm(forms.Form):
    name = forms.CharField(
        max_length=64, label="Job name", help_text="Up to 64 characters, to find the job again in the list."
    )
    input_bucket = forms.ChoiceField(label="Input bucket", help_text="Where the initial states are stored.")
    input_path = forms.CharField(
        required=False,
        label="Input folder",
        help_text="The folder in the bucket holding NetCDF files or Pangu .npy pairs (the demo: era5/).",
    )
    output_bucket = forms.ChoiceField(label="Output bucket", help_text="Where the forecasts and figures are written.")
    output_path = forms.CharField(
        required=False, label="Output folder", help_text="Each job writes into its own sub-folder named by its id."
    )
    start_time_begin = forms.DateTimeField(
        label="First forecast start (UTC)",
        widget=HOUR_INPUT,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y%m%d%H"],
        help_text="The time of the first initial state the forecast starts from, on the hour.",
    )
    start_time_end = forms.DateTimeField(
        label="Last forecast start (UTC)",
        widget=HOUR_INPUT,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y%m%d%H"],
        help_text="Not before the first start. The same as the first for a single forecast.",
    )
    start_time_interval_hours = forms.IntegerField(
        label="Hours between forecast starts",
        initial=DEFAULT_INTERVAL_HOURS,
        help_text=f"From 1 to 24; default {DEFAULT_INTERVAL_HOURS}.",
    )
    forecast_lead_hours = forms.IntegerField(
        label="Forecast length (hours)",
        initial=DEFAULT_LEAD_HOURS,
        help_text=f"How far ahead to forecast: default {DEFAULT_LEAD_HOURS} (7 days), at most {MAX_LEAD_HOURS} "
        "(30 days). Results every 6 hours.",
    )
    forecast_features = forms.MultipleChoiceField(
        label="What to forecast",
        choices=feature_choices,
        initial=list(DEFAULT_FEATURES),
        widget=forms.CheckboxSelectMultiple,
        help_text="Pick the quantities and heights. The demo data holds heights and temperatures at 500 and 850 hPa.",
    )
    draw_figures = forms.BooleanField(
        required=False,
        initial=True,
        label="Draw maps",
        help_text="Maps once a day of forecast and a chart of averages.",
    )
    num_ensembles = forms.IntegerField(
        required=False,
        label="Ensemble members",
        help_text="Leave empty for one forecast per start. From 2 to 10 perturbed forecasts show the uncertainty.",
    )
    ensemble_noise_method = forms.ChoiceField(
        required=False,
        label="Perturbation method",
        choices=[("perlin", "Perlin noise"), ("cnop", "CNOP (optimal perturbations)")],
        initial="perlin",
    )
    ensemble_noise_perlin_scale = forms.FloatField(
        required=False, initial=0.1, label="Noise strength", help_text="Greater than 0 and less than 0.5; default 0.1."
    )
    ensemble_noise_perlin_octave = forms.IntegerField(
        required=False, initial=3, label="Noise detail (octaves)", help_text="From 1 to 9; default 3."
    )
    ensemble_noise_perlin_x = forms.FloatField(
        required=False, initial=0.5, label="Noise scale east–west", help_text="From 0 up to, not including, 1."
    )
    ensemble_noise_perlin_y = forms.FloatField(
        required=False, initial=0.5, label="Noise scale north–south", help_text="From 0 up to, not including, 1."
    )
    ensemble_cnop_initial_quantity = forms.IntegerField(
        required=False, initial=50, label="CNOP candidates", help_text="From 2 to 350; default 50."
    )

    def __init__(self, *args: Any, buckets: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(b, b) for b in buckets]
        for name in ("input_bucket", "output_bucket"):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = choices
        self.spec: TaskSpec | None = None

    def body(self) -> dict[str, Any]:
        """The seed's task body from the cleaned fields."""
        data = self.cleaned_data

        def hour(value: datetime) -> str:
            return value.astimezone(UTC).strftime("%Y%m%d%H") if value.tzinfo else value.strftime("%Y%m%d%H")

        config: dict[str, Any] = {
            "start_time_begin": hour(data["start_time_begin"]),
            "start_time_end": hour(data["start_time_end"]),
            "start_time_interval_hours": data["start_time_interval_hours"],
            "forecast_lead_hours": data["forecast_lead_hours"],
            "draw_figures": "true" if data["draw_figures"] else "false",
            "forecast_features": ";".join(data["forecast_features"]),
        }
        if data.get("num_ensembles"):
            config["num_ensembles"] = data["num_ensembles"]
            config["ensemble_forecast_features"] = config["forecast_features"]
            method = data.get("ensemble_noise_method") or "perlin"
            config["ensemble_noise_method"] = method
            keys = PERLIN_KEYS if method == "perlin" else ("ensemble_cnop_initial_quantity",)
            for key in keys:
                if data.get(key) is not None:
                    config[key] = data[key]
        return {
            "name": data["name"],
            "input": {"type": "obs", "data": [{"bucket": data["input_bucket"], "path": data["input_path"]}]},
            "output": {"obs": {"bucket": data["output_bucket"], "path": data["output_path"]}},
            "config": config,
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        try:
            self.spec = parse_task(self.body())
        except ConfigError as exc:
            self.add_config_error(exc)
        return cleaned

    def add_config_error(self, exc: ConfigError) -> None:
        field = FIELD_OF.get(exc.field)
        self.add_error(field, exc.message if field else f"{exc.field}: {exc.message}")
