"""Forecast figures: map files of the expected names and sizes, coastlines really drawn, display units,
the dateline seam closed, nothing fetched from the network (a fresh process with sockets blocked), and
the time a map takes."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from forecasts import figures
from forecasts.fields import Fields
from forecasts.figures import FigureError, dateline_grid, display_for, draw_area_means, draw_maps, render_map

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2017, 1, 1, 0, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
G0 = 9.80665
FEATURES = ["500:Z", "850:Z", "500:T", "850:T", "500:U", "500:V", "Surface:P", "Surface:T"]


def grid_3deg() -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(90.0, -90.0, 61), np.arange(120, dtype=np.float64) * 3.0


def state(hour: int, features: list[str] = FEATURES) -> Fields:
    lat, lon = grid_3deg()
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    wave = np.cos(phi) * np.sin(2 * lam + hour / 24.0)
    base = {
        "500:Z": G0 * (5500.0 + 300.0 * np.cos(phi) + 60.0 * wave),
        "850:Z": G0 * (1400.0 + 80.0 * wave),
        "500:T": 253.0 + 20.0 * np.cos(phi) + 3.0 * wave,
        "850:T": 270.0 + 25.0 * np.cos(phi) + 3.0 * wave,
        "500:U": 30.0 * np.cos(phi) ** 2 * np.sin(2 * phi) + 5.0 * wave,
        "500:V": 10.0 * wave,
        "Surface:P": 101_325.0 + 1500.0 * wave,
        "Surface:T": 273.0 + 30.0 * np.cos(phi) + 2.0 * wave,
        "Surface:U": 8.0 * wave,
    }
    return Fields(time=START + timedelta(hours=hour), lat=lat, lon=lon, data={f: base[f] for f in features})


def lead_of(fields: Fields) -> int:
    return int((fields.time - START).total_seconds() // 3600)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_maps_have_the_expected_names_and_sizes(tmp_path: Path) -> None:
    states = [state(h, ["500:Z", "Surface:U"]) for h in range(6, 49, 6)]
    paths = draw_maps(states, ["500:Z", "Surface:U"], [24, 48], tmp_path / "figures", lead_of=lead_of)
    names = ["500_Z_024h.png", "500_Z_048h.png", "Surface_U_024h.png", "Surface_U_048h.png"]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == names  # no temporary files left
    for path in paths:
        assert png_size(path) == (800, 460)


def test_a_lead_without_a_state_draws_nothing(tmp_path: Path) -> None:
    assert draw_maps([state(6, ["500:Z"])], ["500:Z"], [24], tmp_path, lead_of=lead_of) == []


def test_coastlines_are_drawn(tmp_path: Path) -> None:
    one = state(24, ["500:Z"])
    levels = np.linspace(500.0, 600.0, 11)
    with_coast = render_map(one, "500:Z", 24, tmp_path / "with.png", levels=levels)
    without = render_map(one, "500:Z", 24, tmp_path / "without.png", levels=levels, coastlines=False)
    a = np.asarray(Image.open(with_coast).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(without).convert("RGB"), dtype=np.int16)
    # Beyond the 256-colour quantisation's small shifts (each image gets its own palette): the lines.
    changed = np.abs(a - b).max(axis=2) > 60
    # The 1:110m coastline at 800 px: thousands of pixels, and the changed ones darker (black lines).
    assert changed.sum() > 3000
    assert a[changed].sum() < b[changed].sum()
    # Only inside the map: the title and colour bar are the same.
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.min() > 460 * (1 - 0.88) - 2 and rows.max() < 460 * (1 - 0.2) + 2
    assert figures.coastline_segments() > 100


def test_warm_up_reads_the_coastline_in_a_new_process() -> None:
    script = (
        "import sys, cartopy.feature as f; from forecasts import figures; figures.warm_up(); "
        "print(len(f._NATURAL_EARTH_GEOM_CACHE), "  # cartopy's per-process cache of Natural Earth geometries
        "'matplotlib.figure' in sys.modules, 'cartopy.mpl.geoaxes' in sys.modules)"  # what a map needs: 0.4 s
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1 True True"


def test_display_units() -> None:
    assert display_for("500:Z").convert(np.array([G0 * 5500.0]))[0] == pytest.approx(550.0)
    assert display_for("500:Z").units == "dam"
    assert display_for("850:T").convert(np.array([273.15]))[0] == pytest.approx(0.0)
    assert display_for("850:T").units == "°C"
    assert display_for("Surface:P").convert(np.array([101_325.0]))[0] == pytest.approx(1013.25)
    assert display_for("Surface:P").units == "hPa"
    assert display_for("700:Q").convert(np.array([0.004]))[0] == pytest.approx(4.0)
    for wind in ("500:U", "500:V", "Surface:U", "Surface:V"):
        assert display_for(wind).units == "m/s" and display_for(wind).diverging
    with pytest.raises(FigureError):
        display_for("500:W")


def test_wind_levels_are_symmetric_about_calm() -> None:
    levels = figures.contour_levels([np.array([-3.0, 17.0])], display_for("500:U"))
    assert levels[0] == -levels[-1] and 0.0 in levels and levels[-1] >= 17.0


def test_dateline_grid_on_the_grid_and_between_points() -> None:
    lon, values = dateline_grid(np.array([0.0, 90.0, 180.0, 270.0]), np.array([[0.0, 1.0, 2.0, 3.0]]))
    assert lon.tolist() == [-180.0, -90.0, 0.0, 90.0, 180.0]
    assert values.tolist() == [[2.0, 3.0, 0.0, 1.0, 2.0]]
    # 180° falls halfway between 135° (value 1) and 225° (value 2).
    lon, values = dateline_grid(np.array([45.0, 135.0, 225.0, 315.0]), np.array([[0.0, 1.0, 2.0, 3.0]]))
    assert lon.tolist() == [-180.0, -135.0, -45.0, 45.0, 135.0, 180.0]
    assert values.tolist() == [[1.5, 2.0, 3.0, 0.0, 1.0, 1.5]]


def test_area_means_figure(tmp_path: Path) -> None:
    series = {"500:Z": [G0 * 5500.0, G0 * 5501.0, G0 * 5502.0], "Surface:T": [280.0, 281.0, 280.5]}
    path = draw_area_means(series, [6, 12, 18], tmp_path / "area_means.png")
    assert path == tmp_path / "area_means.png"
    assert png_size(path) == (800, round((1.6 * 2 + 0.6) * 100))
    with pytest.raises(FigureError, match="2 means for 3 lead times"):
        draw_area_means({"500:Z": [1.0, 2.0]}, [6, 12, 18], tmp_path / "bad.png")


def test_missing_map_data_is_an_error_not_a_download(monkeypatch: pytest.MonkeyPatch) -> None:
    from cartopy.io import shapereader

    figures.configure_cartopy()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    # Rivers are not in the wheel: cartopy would download them; here it must refuse before any socket.
    with pytest.raises(FigureError, match="never download"):
        shapereader.natural_earth("110m", "physical", "rivers_lake_centerlines")


def test_a_fresh_worker_draws_offline_and_in_time(tmp_path: Path) -> None:
    """In a new process (no coastline cached), with sockets refused and cartopy's downloader watched:
    eight features at two leads on a 3° grid, no download attempted, no pyplot, and the time per map."""
    script = textwrap.dedent(
        f"""
        import socket, sys, time
        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import cartopy
        sys.path.insert(0, {str(ROOT)!r})
        from tests.forecasts.test_figures import FEATURES, lead_of, state
        from forecasts import figures
        figures.configure_cartopy()
        downloader = cartopy.config["downloaders"][("shapefiles", "natural_earth")]
        attempts = []
        original = downloader.acquire_resource
        def watched(*args):
            attempts.append(args)
            return original(*args)
        downloader.acquire_resource = watched
        states = [state(h) for h in (24, 48)]
        began = time.perf_counter()
        paths = figures.draw_maps(states, FEATURES, [24, 48], __import__("pathlib").Path({str(tmp_path)!r}),
                                  lead_of=lead_of)
        total = time.perf_counter() - began
        assert len(paths) == 16, paths
        assert attempts == [], attempts
        assert "matplotlib.pyplot" not in sys.modules
        print(f"{{len(paths)}} maps in {{total:.2f}} s, {{total / len(paths):.3f}} s a map (with the coastline read)")
        """
    )
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "empty-user-data"), "MPLBACKEND": "Agg"}
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout.strip(), f"(process with imports: {time.perf_counter() - began:.2f} s)")
    assert not (tmp_path / "empty-user-data").exists()  # cartopy's user folder was never written


def test_time_per_map_once_warm(tmp_path: Path) -> None:
    states = [state(h) for h in range(24, 169, 24)]
    draw_maps(states[:1], ["500:Z"], [24], tmp_path / "warm", lead_of=lead_of)  # imports and coastline
    began = time.perf_counter()
    paths = draw_maps(states, FEATURES[:4], [24, 72, 120, 168], tmp_path / "maps", lead_of=lead_of)
    per_map = (time.perf_counter() - began) / len(paths)
    print(f"{len(paths)} maps on a 3° grid: {per_map:.3f} s a map")
    assert len(paths) == 16
    # The goal is well under 0.3 s on a quiet machine; this bound only catches a regression by a factor.
    assert per_map < 1.0
