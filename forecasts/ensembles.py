"""Ensemble members' initial states (Perlin noise) and the ensemble's mean and spread.

The seed's Perlin ensemble (`ensemble_noise_perlin_*`, ../shared/seeds/README.md item 5) perturbs each
member's initial state with smooth multi-octave noise. docs/forecasts.md, "Ensembles (Perlin)", gives the
method for operators; the exact mapping of every parameter is here:

- The noise is FastNoiseLite's 3-D Perlin gradient noise (Perlin 1985, improved 2002) summed as fractal
  Brownian motion: `octave` layers, each at twice the frequency (lacunarity 2) and half the amplitude
  (gain 0.5) of the one before, with a different lattice seed per layer; the library divides the sum by
  1 + 0.5 + ... so it stays in [-1, 1].
- Longitude λ and latitude φ (degrees) are placed on a cylinder in noise space:
  (R cos λ, R sin λ, Z φ) with R = 24·x / 2π and Z = 24·y / 360, plus a random offset per pattern. One
  lattice cell of the first octave therefore spans 15°/x of longitude (24·x cells round every latitude
  circle) and 15°/y of latitude. λ enters only through cos and sin, so 0° and 360° are the same point
  and there is no seam. x = 0 puts every longitude on the cylinder's axis: the noise is constant along
  each latitude circle. y = 0 likewise makes it constant along each meridian; both 0 gives a uniform
  shift of one random sign per pattern.
- Amplitude: the pattern n is scaled so that its area-weighted root-mean-square is 1, then each field f
  gets f + scale · sd(f) · n, where sd(f) is f's area-weighted (cos φ) spatial standard deviation. So the
  perturbation's area-weighted RMS is exactly scale times the field's spread, and it doubles exactly when
  scale does. The pattern keeps its own (small, random) area mean, so its standard deviation is a little
  below its RMS; the tests bound the gap.
- Physically linked fields share a pattern: one pattern per variable, used at every pressure level
  (a vertically coherent perturbation whose amplitude follows each level's own spread; independent
  patterns per level would put noise into the vertical gradients, hence into static stability), with
  the surface fields on their upper-air partner's pattern (2 m temperature on T, 10 m wind on U and V,
  mean sea-level pressure on Z). U and V have different patterns: one pattern for both would add a wind
  along the same diagonal everywhere. Specific humidity is clipped at 0 after the perturbation.
- Reproducible: every pattern's lattice seed and offset come from SHA-256 of (seed, member, pattern), not
  Python's per-process `hash`, so the same job, start time and member give bit-identical arrays in any
  process on any machine with the same library version. Member 0 is the unperturbed control.

Cost: the noise is evaluated once per pattern over the whole grid (five patterns a member), vectorised in
the library's C code; a 0.25° grid (721 by 1440) takes about 0.4 s per pattern at 9 octaves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pyfastnoiselite.pyfastnoiselite import (  # type: ignore[import-untyped]  # no stubs
    FastNoiseLite,
    FractalType,
    NoiseType,
)

from forecasts.fields import SURFACE, Array, Fields

# First-octave lattice cells round a latitude circle (and per 360° of latitude) at x (y) = 1.
CELLS_AT_SCALE_ONE = 24.0
LACUNARITY = 2.0
GAIN = 0.5
# Surface variables take the pattern of their upper-air partner (MSLP goes with geopotential).
SURFACE_PATTERN = {"P": "Z", "T": "T", "U": "U", "V": "V"}
NON_NEGATIVE = ("Q",)


class EnsembleError(ValueError):
    """A config or member set that cannot give an ensemble."""


def perturb(initial: Fields, config: Mapping[str, Any], *, member: int, seed: str) -> Fields:
    """`initial` with every field perturbed for ensemble `member` (1..N; 0 is the control and comes back
    unperturbed). `config` is the job's stored seed config; `seed` names the job and start time. The
    input is never modified: the answer holds new arrays."""
    if member < 0:
        raise EnsembleError(f"member must be 0 (the control) or more, not {member}.")
    method = config.get("ensemble_noise_method", "perlin")
    if method != "perlin":
        raise EnsembleError(f"perturb draws Perlin perturbations; the method {method!r} is not one.")
    scale, octaves, x, y = _perlin_parameters(config)
    out = Fields(time=initial.time, lat=initial.lat.copy(), lon=initial.lon.copy())
    if member == 0:
        out.data = {key: values.copy() for key, values in initial.data.items()}
        return out
    weights = area_weights(initial.lat)
    patterns: dict[str, Array] = {}
    for key, values in initial.data.items():
        level, _, variable = key.partition(":")
        name = SURFACE_PATTERN.get(variable, variable) if level == SURFACE else variable
        if name not in patterns:
            patterns[name] = perlin_pattern(
                initial.lat, initial.lon, octaves=octaves, x=x, y=y, seed=f"{seed}\x1f{member}\x1f{name}"
            )
        spread = _weighted_std(values, weights)
        perturbed = values + (scale * spread) * patterns[name]
        if variable in NON_NEGATIVE:
            np.maximum(perturbed, 0.0, out=perturbed)
        out.data[key] = perturbed.astype(values.dtype, copy=False)
    return out


def perlin_pattern(lat: Array, lon: Array, *, octaves: int, x: float, y: float, seed: str) -> Array:
    """A (len(lat), len(lon)) fractal Perlin pattern, periodic in longitude, with area-weighted RMS 1
    (all zeros only if the noise is exactly 0 everywhere, which the random offset makes vanishingly rare)."""
    digest = hashlib.sha256(seed.encode()).digest()
    noise = FastNoiseLite(int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)
    noise.noise_type = NoiseType.NoiseType_Perlin
    noise.fractal_type = FractalType.FractalType_FBm
    noise.fractal_octaves = octaves
    noise.fractal_lacunarity = LACUNARITY
    noise.fractal_gain = GAIN
    noise.frequency = 1.0
    # A non-integer offset in [0, 64) per axis: moves the pattern off the lattice (Perlin noise is 0 at
    # lattice points, so x = y = 0 would otherwise give no perturbation at all) and decorrelates members.
    offset = [int.from_bytes(digest[4 + 4 * i : 8 + 4 * i], "little") / 2**32 * 64.0 for i in range(3)]
    radius = CELLS_AT_SCALE_ONE * x / (2 * math.pi)
    lam = np.radians(np.asarray(lon, dtype=np.float64))
    rows, cols = len(lat), len(lon)
    coords = np.empty((3, rows, cols), dtype=np.float32)  # the library samples float32 coordinates
    coords[0] = (offset[0] + radius * np.cos(lam))[None, :]
    coords[1] = (offset[1] + radius * np.sin(lam))[None, :]
    coords[2] = (offset[2] + CELLS_AT_SCALE_ONE * y / 360.0 * np.asarray(lat, dtype=np.float64))[:, None]
    pattern = np.asarray(noise.gen_from_coords(coords.reshape(3, -1)), dtype=np.float64).reshape(rows, cols)
    rms = math.sqrt(_weighted_mean(pattern * pattern, area_weights(lat)))
    return pattern / rms if rms > 0 else np.zeros_like(pattern)


def ensemble_stats(members: Sequence[Fields]) -> tuple[Fields, Fields]:
    """The members' mean and spread, feature by feature and point by point. Spread is the standard
    deviation with ddof=1 (the unbiased variance's root), as WeatherBench2's EnsembleStddev and
    EnsembleVariance use for spread/skill, so a spread/skill ratio built on it needs no n/(n-1) fix."""
    if len(members) < 2:
        raise EnsembleError("An ensemble's spread needs at least 2 members.")
    first = members[0]
    for other in members[1:]:
        if other.time != first.time:
            raise EnsembleError(f"Members are at different valid times: {first.time} and {other.time}.")
        if not (np.array_equal(other.lat, first.lat) and np.array_equal(other.lon, first.lon)):
            raise EnsembleError("Members are on different grids.")
        if set(other.data) != set(first.data):
            raise EnsembleError(f"Members hold different features: {first.features} and {other.features}.")
    mean = Fields(time=first.time, lat=first.lat.copy(), lon=first.lon.copy())
    spread = Fields(time=first.time, lat=first.lat.copy(), lon=first.lon.copy())
    for key in first.features:
        stack = np.stack([m.data[key] for m in members])
        mean.data[key] = stack.mean(axis=0)
        spread.data[key] = stack.std(axis=0, ddof=1)
    return mean, spread


def area_weights(lat: Array) -> Array:
    """cos φ per latitude row: a regular grid's cell areas up to a constant (0 at the poles)."""
    return np.clip(np.cos(np.radians(np.asarray(lat, dtype=np.float64))), 0.0, None)


def _weighted_mean(values: Array, weights: Array) -> float:
    """Mean over the finite points, each weighted by its row's area (uniform if every weight is 0)."""
    if np.isfinite(values).all():
        sums, counts = values.sum(axis=1), np.full(values.shape[0], values.shape[1], dtype=np.float64)
    else:
        finite = np.isfinite(values)
        sums, counts = np.where(finite, values, 0.0).sum(axis=1), finite.sum(axis=1).astype(np.float64)
    total = float(weights @ counts)
    if total > 0:
        return float(weights @ sums) / total
    return float(sums.sum() / counts.sum()) if counts.sum() else 0.0


def _weighted_std(values: Array, weights: Array) -> float:
    mean = _weighted_mean(values, weights)
    return math.sqrt(max(_weighted_mean((values - mean) ** 2, weights), 0.0))


def _perlin_parameters(config: Mapping[str, Any]) -> tuple[float, int, float, float]:
    """The four Perlin settings, checked against the seed's ranges again: a stored config that breaks
    them was never accepted by forecasts.config.parse_task."""
    try:
        scale = float(config["ensemble_noise_perlin_scale"])
        octaves = int(config["ensemble_noise_perlin_octave"])
        x = float(config["ensemble_noise_perlin_x"])
        y = float(config["ensemble_noise_perlin_y"])
    except KeyError as missing:
        raise EnsembleError(f"The job's config has no {missing.args[0]}.") from None
    if not 0 < scale < 0.5:
        raise EnsembleError(f"ensemble_noise_perlin_scale must be in (0, 0.5), not {scale}.")
    if not 1 <= octaves < 10:
        raise EnsembleError(f"ensemble_noise_perlin_octave must be in [1, 10), not {octaves}.")
    for name, value in (("x", x), ("y", y)):
        if not 0 <= value < 1:
            raise EnsembleError(f"ensemble_noise_perlin_{name} must be in [0, 1), not {value}.")
    return scale, octaves, x, y
