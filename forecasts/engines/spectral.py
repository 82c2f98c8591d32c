"""The built-in forecast engine: a global spectral shallow-water model on the sphere, one layer per
pressure level, in numpy. A physics baseline, not a skilful weather model (docs/forecasts.md says what it
is good for): it needs no weights and no network, and it is verified against the standard test cases
of Williamson et al. (1992) and against persistence on real ERA5 fields (tests/forecasts/test_engine_spectral.py).

The dynamics are the shallow-water equations in vorticity-divergence form (Williamson et al. 1992,
eqs. 2-4; Hack & Jakob 1992), spectral in the horizontal with triangular truncation (T42 by default) on
a Gaussian grid with no aliasing of quadratic terms, stepped by a semi-implicit leapfrog (gravity
waves implicit) with a Robert-Asselin filter:

    d(zeta)/dt  = -div((zeta + f) v)
    d(delta)/dt =  curl((zeta + f) v) - lap(phi + |v|^2 / 2)
    d(phi)/dt   = -div(phi v)

where phi is the layer's geopotential. On real data each pressure level is one such layer whose mean
depth is the level's mean geopotential; the initial winds are the input's U and V when it has them,
else balanced from the heights (geostrophic, with the Coriolis parameter held off zero in the tropics),
and the model then starts from heights in linear balance with those winds (`balanced_heights`).
Temperature is carried by each level's forecast winds (advection only: no heating, no vertical motion).
Forecast fields are the input plus the model's change since the start, so the model's truncation does
not smooth what it does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

import numpy as np

from forecasts.engines.base import Cancelled, EngineError
from forecasts.fields import SURFACE, Array, Fields

EARTH_RADIUS = 6.37122e6  # m (Williamson et al. 1992)
OMEGA = 7.292e-5  # s-1
GRAVITY = 9.80616  # m s-2 (Williamson et al. 1992)
CArray = np.ndarray  # complex spectral coefficients, (..., M + 1, N + 1)


def legendre(mu: Array, m_max: int, n_max: int) -> Array:
    """Associated Legendre functions normalised so that the integral of P(m, n)^2 over mu in [-1, 1] is
    1, for m <= m_max and m <= n <= n_max, at each mu: shape (m_max + 1, n_max + 1, len(mu)); zero
    where n < m. Stable recurrences in n for each m (the sectoral P(m, m) by the product formula)."""
    p = np.zeros((m_max + 1, n_max + 1, mu.size))
    sine = np.sqrt(1.0 - mu * mu)  # cos(latitude)
    pmm = np.full(mu.size, np.sqrt(0.5))
    for m in range(m_max + 1):
        if m > 0:
            pmm = pmm * np.sqrt((2 * m + 1) / (2 * m)) * sine
        p[m, m] = pmm
        if m + 1 <= n_max:
            p[m, m + 1] = np.sqrt(2 * m + 3) * mu * pmm
        for n in range(m + 2, n_max + 1):
            p[m, n] = (mu * p[m, n - 1] - epsilon(m, n - 1) * p[m, n - 2]) / epsilon(m, n)
    return p


def epsilon(m: int | Array, n: int | Array) -> Array:
    """sqrt((n^2 - m^2) / (4 n^2 - 1)), the coupling of the recurrences; 0 where n <= m."""
    m, n = np.asarray(m, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.sqrt(np.where(n > m, (n * n - m * m) / (4 * n * n - 1), 0.0))
    return np.asarray(value)


class Sphere:
    """The spectral transform at triangular truncation `trunc` on a Gaussian grid, latitudes north to
    south, longitudes east from 0."""

    def __init__(self, trunc: int = 42, nlat: int | None = None, nlon: int | None = None, radius: float = EARTH_RADIUS):
        self.trunc, self.radius = trunc, radius
        # No aliasing of quadratic terms: nlon >= 3T + 1, nlat >= (3T + 1) / 2.
        self.nlon = nlon or int(2 ** np.ceil(np.log2(3 * trunc + 1)))
        self.nlat = nlat or (self.nlon // 2)
        nodes, weights = np.polynomial.legendre.leggauss(self.nlat)
        self.mu, self.weights = nodes[::-1].copy(), weights[::-1].copy()  # north to south
        self.lat = np.degrees(np.arcsin(self.mu))
        self.lon = np.arange(self.nlon) * 360.0 / self.nlon
        self.coslat2 = 1.0 - self.mu**2
        full = legendre(self.mu, trunc, trunc + 1)
        ms = np.arange(trunc + 1, dtype=float)[:, None]
        eps = epsilon(ms, np.arange(trunc + 2, dtype=float)[None, :])  # (M + 1, N + 2)
        self.P = full[:, : trunc + 1]
        # H = (1 - mu^2) dP/dmu = -n eps(m, n + 1) P(m, n + 1) + (n + 1) eps(m, n) P(m, n - 1).
        h = np.zeros_like(self.P)
        for k in range(trunc + 1):
            h[:, k] = -k * eps[:, k + 1, None] * full[:, k + 1]
            if k >= 1:
                h[:, k] += (k + 1) * eps[:, k, None] * full[:, k - 1]
        self.H = h
        self.im = 1j * np.arange(trunc + 1)[:, None]  # d/dlambda
        nn = np.arange(trunc + 1)[None, :].astype(float)
        self.valid = (nn >= ms).astype(float)
        self.lap = -nn * (nn + 1) / radius**2 * self.valid  # the Laplacian's eigenvalues
        with np.errstate(divide="ignore"):
            self.invlap = np.where(self.lap != 0, 1.0 / np.where(self.lap != 0, self.lap, 1.0), 0.0)
        # The Legendre transforms as one matrix product per zonal wavenumber m (np.matmul batches over m;
        # a quarter of the time of the equivalent einsum), quadrature weights folded into the analysis.
        w = self.weights[None, :, None]
        self._analyse_p = np.ascontiguousarray((self.P * self.weights).transpose(0, 2, 1))  # (m, lat, n)
        # Divergence and curl need P and H both, divided by cos(lat)^2: one product for the pair.
        self._analyse_ph = np.ascontiguousarray(
            np.concatenate([self.P.transpose(0, 2, 1), self.H.transpose(0, 2, 1)], axis=-1)
            * w
            / self.coslat2[None, :, None]
        )
        self._synth_p = np.ascontiguousarray(self.P)  # (m, n, lat)
        self._synth_ph = np.ascontiguousarray(np.concatenate([self.P, self.H], axis=1))  # (m, 2n, lat)
        self._nspec = trunc + 1

    # --- transforms -------------------------------------------------------------------------------
    def _fourier(self, grid: Array) -> CArray:
        return np.fft.rfft(grid, axis=-1)[..., : self.trunc + 1] / self.nlon  # (..., nlat, M + 1)

    def _synth_fourier(self, coeffs: CArray) -> Array:
        full = np.zeros((*coeffs.shape[:-1], self.nlon // 2 + 1), dtype=complex)
        full[..., : self.trunc + 1] = coeffs
        return np.fft.irfft(full * self.nlon, n=self.nlon, axis=-1)

    @staticmethod
    def _legendre(coeffs: CArray, matrices: Array) -> CArray:
        """sum over k of coeffs[..., m, k] * matrices[m, k, :] for each m: the real matrices applied to
        the real and imaginary parts in one batched product."""
        lead = coeffs.shape[:-2]
        m, k = coeffs.shape[-2:]
        flat = np.moveaxis(coeffs.reshape(-1, m, k), 1, 0)  # (m, batch, k)
        batch = flat.shape[1]
        product = np.concatenate([flat.real, flat.imag], axis=1) @ matrices  # (m, 2 batch, out)
        out = product[:, :batch] + 1j * product[:, batch:]
        return np.moveaxis(out, 0, 1).reshape(*lead, m, matrices.shape[-1])

    def analyse(self, grid: Array) -> CArray:
        """Grid (..., nlat, nlon) to spectral (..., M + 1, N + 1)."""
        return self._legendre(np.swapaxes(self._fourier(grid), -1, -2), self._analyse_p)

    def synthesise(self, spec: CArray) -> Array:
        """Spectral to grid."""
        return self._synth_fourier(np.swapaxes(self._legendre(spec, self._synth_p), -1, -2))

    def div_curl(self, u: Array, v: Array) -> tuple[CArray, CArray]:
        """Divergence and curl of the vector field whose components times cos(latitude) are (u, v)."""
        both = self._legendre(np.swapaxes(self._fourier(np.stack([u, v])), -1, -2), self._analyse_ph)
        n = self._nspec
        up, uh, vp, vh = both[0, ..., :n], both[0, ..., n:], both[1, ..., :n], both[1, ..., n:]
        div = up * self.im - vh
        curl = vp * self.im + uh
        return div / self.radius * self.valid, curl / self.radius * self.valid

    def winds(self, vort: CArray, div: CArray) -> tuple[Array, Array]:
        """(u cos(lat), v cos(lat)) on the grid from vorticity and divergence."""
        psi, chi = vort * self.invlap, div * self.invlap
        # u cos = (im chi) P - psi H, v cos = (im psi) P + chi H: P and H applied in one product.
        spec = np.stack([np.concatenate([chi * self.im, -psi], axis=-1), np.concatenate([psi * self.im, chi], axis=-1)])
        fourier = np.swapaxes(self._legendre(spec, self._synth_ph), -1, -2) / self.radius
        grid = self._synth_fourier(fourier)
        return grid[0], grid[1]

    def mean(self, grid: Array) -> Array:
        """Area mean over the sphere (the quadrature), over the last two axes."""
        return np.asarray(np.einsum("...jk,j->...", grid, self.weights) / (2.0 * grid.shape[-1]))


@dataclass
class State:
    vort: CArray
    div: CArray
    phi: CArray  # geopotential departure from the layer's mean
    tracer: CArray | None = None  # a quantity the winds carry (temperature), per layer


def _combine(a: State, b: State, c: State, fa: float, fb: float, fc: float) -> State:
    def mix(x: CArray | None, y: CArray | None, z: CArray | None) -> CArray | None:
        return None if x is None or y is None or z is None else fa * x + fb * y + fc * z

    return State(
        vort=fa * a.vort + fb * b.vort + fc * c.vort,
        div=fa * a.div + fb * b.div + fc * c.div,
        phi=fa * a.phi + fb * b.phi + fc * c.phi,
        tracer=mix(a.tracer, b.tracer, c.tracer),
    )


class ShallowWater:
    """Layers of the shallow-water equations on one Sphere, stepped together (leading axis: layer)."""

    def __init__(
        self,
        sphere: Sphere,
        phibar: Array,
        *,
        dt: float = 1200.0,
        coriolis: Array | None = None,
        diffusion: float = 0.0,
        asselin: float = 0.02,
    ) -> None:
        self.s, self.dt, self.asselin = sphere, dt, asselin
        self.phibar = np.asarray(phibar, dtype=float).reshape(-1, 1, 1)
        f = 2 * OMEGA * sphere.mu[:, None] * np.ones((1, sphere.nlon)) if coriolis is None else coriolis
        self.f = np.asarray(f, dtype=float)
        # Implicit del^4 hyperdiffusion (real data: removes the enstrophy piling up at the truncation).
        self.damp = 1.0 / (1.0 + 2 * dt * diffusion * sphere.lap**2)

    def state(self, u: Array, v: Array, phi: Array, tracer: Array | None = None) -> State:
        """From grid winds (u, v, not cos-weighted), geopotential departures and optionally a tracer,
        each (layer, nlat, nlon)."""
        c = np.sqrt(self.s.coslat2)[:, None]
        div, vort = self.s.div_curl(u * c, v * c)
        spec = None if tracer is None else self.s.analyse(tracer)
        return State(vort=vort, div=div, phi=self.s.analyse(phi), tracer=spec)

    def _tendencies(self, x: State) -> tuple[CArray, CArray, CArray, CArray | None]:
        # The transforms of one step batched: two syntheses, two analyses (the per-call overhead of the
        # small T42 products is as large as their arithmetic).
        s = self.s
        uc, vc = s.winds(x.vort, x.div)
        carried = [x.vort, x.phi] if x.tracer is None else [x.vort, x.phi, x.tracer, x.div]
        grids = s.synthesise(np.stack(carried))
        eta, phi = grids[0] + self.f, grids[1]
        scalars = [eta, phi] if x.tracer is None else [eta, phi, grids[2]]
        # Advection of the tracer q, -v . grad(q) = -div(q v) + q div(v), in flux form so the transform does it.
        fluxes = np.stack(scalars)
        divs, curls = s.div_curl(fluxes * uc, fluxes * vc)
        energy = (uc * uc + vc * vc) / (2.0 * s.coslat2[:, None])
        local = s.analyse(np.stack([energy] if x.tracer is None else [energy, grids[2] * grids[3]]))
        n_tracer = None if x.tracer is None else -divs[2] + local[1]
        return -divs[0], curls[0] - s.lap * local[0], -divs[1], n_tracer

    def _leapfrog(self, old: State, now: State, dt: float) -> State:
        """One semi-implicit step of 2 dt from `old` with tendencies at `now`."""
        n_vort, n_div, n_phi, n_tracer = self._tendencies(now)
        big_l = -self.s.lap  # n (n + 1) / a^2
        pb = self.phibar
        div = (old.div * (1 - dt * dt * big_l * pb) + 2 * dt * n_div + 2 * dt * big_l * old.phi
               + 2 * dt * dt * big_l * n_phi) / (1 + dt * dt * big_l * pb)  # fmt: skip
        phi = old.phi + 2 * dt * n_phi - dt * pb * (div + old.div)
        vort = old.vort + 2 * dt * n_vort
        tracer = None
        if old.tracer is not None and n_tracer is not None:
            tracer = (old.tracer + 2 * dt * n_tracer) * self.damp
        return State(vort=vort * self.damp, div=div * self.damp, phi=phi * self.damp, tracer=tracer)

    def run(
        self, start: State, steps: Iterable[int], *, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[State]:
        """The state after each number of steps in `steps` (ascending)."""
        old, now, done = start, start, 0
        for target in steps:
            while done < target:
                if should_stop is not None and should_stop():
                    raise Cancelled
                if done == 0:
                    new = self._leapfrog(start, start, self.dt / 2)  # the first step: forward
                    old, now = start, new
                else:
                    new = self._leapfrog(old, now, self.dt)
                    a = self.asselin
                    old, now = _combine(now, old, new, 1 - 2 * a, a, a), new  # Robert-Asselin
                done += 1
            yield now


# --- from and to the input's grid ---------------------------------------------------------------------
def _axis_weights(src: Array, dst: Array, periodic: bool) -> tuple[Array, Array, Array]:
    """Indices i0, i1 and weight w of linear interpolation of `dst` points between `src` points."""
    if periodic:
        period = 360.0
        order = np.argsort(src)
        s = src[order]
        x = np.mod(dst - s[0], period) + s[0]
        ext = np.concatenate([s, [s[0] + period]])
        i = np.clip(np.searchsorted(ext, x, side="right") - 1, 0, len(s) - 1)
        w = (x - ext[i]) / (ext[i + 1] - ext[i])
        return order[i], order[(i + 1) % len(s)], w
    descending = src[0] > src[-1]
    s = src[::-1] if descending else src
    x = np.clip(dst, s[0], s[-1])
    i = np.clip(np.searchsorted(s, x, side="right") - 1, 0, len(s) - 2)
    w = (x - s[i]) / (s[i + 1] - s[i])
    i0, i1 = (len(s) - 1 - i, len(s) - 2 - i) if descending else (i, i + 1)
    return i0, i1, w


def regrid(field: Array, src_lat: Array, src_lon: Array, dst_lat: Array, dst_lon: Array) -> Array:
    """Bilinear interpolation in latitude and (periodic) longitude over the last two axes."""
    a0, a1, wa = _axis_weights(src_lat, dst_lat, periodic=False)
    o0, o1, wo = _axis_weights(src_lon, dst_lon, periodic=True)
    rows = field[..., a0, :] * (1 - wa)[:, None] + field[..., a1, :] * wa[:, None]
    return np.asarray(rows[..., o0] * (1 - wo) + rows[..., o1] * wo)


def balanced_winds(sphere: Sphere, phi: Array) -> tuple[Array, Array]:
    """Winds in geostrophic balance with geopotential departures phi (layer, nlat, nlon): streamfunction
    phi / f, with 1/f within 20 degrees of the equator replaced by a ramp linear in sin(latitude) from its
    20-degree value to zero on the equator, so the tropics get weak, smooth winds rather than a
    singularity; no divergence."""
    mu0 = np.sin(np.radians(20.0))
    factor = sphere.mu / np.maximum(sphere.mu**2, mu0**2) / (2 * OMEGA)
    psi = sphere.analyse(phi * factor[:, None])
    uc, vc = sphere.winds(sphere.lap * psi, np.zeros_like(psi))  # vorticity = lap(psi)
    c = np.sqrt(sphere.coslat2)[:, None]
    return uc / c, vc / c


def balanced_heights(sphere: Sphere, vort: CArray, coriolis: Array) -> CArray:
    """Geopotential departures (spectral) in linear balance with non-divergent winds of vorticity `vort`:
    lap(phi) = div(f grad(psi)) (the linear balance equation). Outside the tropics this is the input's
    heights back, smoothed; near the equator it removes what the held-off f left unbalanced, which would
    otherwise leave the start as gravity waves (24 h 500 hPa RMSE on the ERA5 sample: 592 m2 s-2 without,
    431 with; persistence 620)."""
    # cos(lat) grad(psi): the irrotational wind of a velocity potential equal to psi.
    uc, vc = sphere.winds(np.zeros_like(vort), vort)
    div, _ = sphere.div_curl(coriolis * uc, coriolis * vc)
    return np.asarray(div * sphere.invlap)


class SpectralEngine:
    name = "builtin-spectral"
    title = "built-in spectral shallow-water engine (T42, physics baseline)"
    trunc = 42
    dt = 1800.0  # s: divides an hour, stable at T42 with the gravity waves implicit (Hack & Jakob use 2400 s)
    diffusion = 1.0e16  # m^4 s-1, del^4 at T42 (a 14 h e-folding at the truncation)

    def availability(self) -> tuple[bool, str]:
        return True, ""

    def producible(self, inputs: Iterable[str]) -> set[str]:
        held = set(inputs)
        out: set[str] = set()
        for level in _z_levels(held):
            out |= {f"{level}:Z", f"{level}:U", f"{level}:V"}
            if f"{level}:T" in held:
                out.add(f"{level}:T")
        return out

    def forecast(
        self,
        initial: Fields,
        lead_hours: Sequence[int],
        features: Sequence[str],
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Iterator[Fields]:
        can = self.producible(initial.data)
        missing = [f for f in features if f not in can]
        if missing:
            raise EngineError(f"The built-in engine cannot produce {', '.join(missing)} from this input.")
        leads = list(lead_hours)
        if not leads or leads != sorted(set(leads)) or leads[0] < 1:
            raise EngineError("Lead hours must be increasing whole hours from 1.")
        levels = sorted({int(f.split(":")[0]) for f in features})
        sphere = _sphere(self.trunc)
        src_lat, src_lon = initial.lat, initial.lon

        def to_model(name: str) -> Array:
            stack = np.stack([initial.data[f"{lvl}:{name}"] for lvl in levels])
            return regrid(stack, src_lat, src_lon, sphere.lat, sphere.lon)

        def to_input(grid: Array) -> Array:
            return regrid(grid, sphere.lat, sphere.lon, src_lat, src_lon)

        zg = to_model("Z")
        phibar = sphere.mean(zg)
        phi0 = zg - phibar[:, None, None]
        have_winds = all(f"{lvl}:U" in initial.data and f"{lvl}:V" in initial.data for lvl in levels)
        ug, vg = (to_model("U"), to_model("V")) if have_winds else balanced_winds(sphere, phi0)
        carries_t = [f"{lvl}:T" in features for lvl in levels]
        tracer = None
        if any(carries_t):
            tracer = np.stack(
                [
                    regrid(initial.data[f"{lvl}:T"], src_lat, src_lon, sphere.lat, sphere.lon) if carried
                    else np.zeros((sphere.nlat, sphere.nlon))
                    for lvl, carried in zip(levels, carries_t, strict=True)
                ]
            )  # fmt: skip
        model = ShallowWater(sphere, phibar, dt=self.dt, diffusion=self.diffusion)
        start = model.state(ug, vg, phi0, tracer)
        if not have_winds:
            # Forecast changes are taken from this balanced start, so the heights it smooths are not lost.
            start.phi = balanced_heights(sphere, start.vort, model.f)
        per_hour = round(3600 / self.dt)
        steps = [h * per_hour for h in leads]
        c = np.sqrt(sphere.coslat2)[:, None]
        z_start = sphere.synthesise(start.phi)
        t_start = sphere.synthesise(start.tracer) if start.tracer is not None else None
        u_start, v_start = (w / c for w in sphere.winds(start.vort, start.div))
        for hours, state in zip(leads, model.run(start, steps, should_stop=should_stop), strict=True):
            dz = to_input(sphere.synthesise(state.phi) - z_start)
            uc, vc = sphere.winds(state.vort, state.div)
            u_now, v_now = uc / c, vc / c
            dt_grid = None
            if t_start is not None and state.tracer is not None:
                dt_grid = to_input(sphere.synthesise(state.tracer) - t_start)
            out: dict[str, Array] = {}
            for i, lvl in enumerate(levels):
                if f"{lvl}:Z" in features:
                    out[f"{lvl}:Z"] = initial.data[f"{lvl}:Z"] + dz[i]
                for name, now, first in (("U", u_now, u_start), ("V", v_now, v_start)):
                    if f"{lvl}:{name}" not in features:
                        continue
                    if have_winds:
                        out[f"{lvl}:{name}"] = initial.data[f"{lvl}:{name}"] + to_input(now[i] - first[i])
                    else:
                        out[f"{lvl}:{name}"] = to_input(now[i])
                if f"{lvl}:T" in features and dt_grid is not None:
                    out[f"{lvl}:T"] = initial.data[f"{lvl}:T"] + dt_grid[i]
            if progress is not None:
                progress(hours / leads[-1])
            yield Fields(time=initial.time + timedelta(hours=hours), lat=src_lat, lon=src_lon, data=out)


def _z_levels(held: Iterable[str]) -> list[int]:
    return sorted(int(k.split(":")[0]) for k in held if k.endswith(":Z") and not k.startswith(SURFACE))


@cache
def _sphere(trunc: int) -> Sphere:
    return Sphere(trunc)
