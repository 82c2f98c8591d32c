"""CNOP ensembles: the members' initial perturbations chosen as the ones that grow the most.

The seed's `ensemble_noise_method: "cnop"` with `ensemble_cnop_initial_quantity` candidates
(../shared/seeds/README.md). A conditional nonlinear optimal perturbation (CNOP; Mu, Duan & Wang 2003,
Nonlinear Processes in Geophysics 10, 493-501) is the initial perturbation, within a norm ball, whose
nonlinear forecast departs furthest from the unperturbed forecast at the end of an optimisation window.
Without an adjoint of the model (the built-in engine has none), the pre-screening variants of CNOP
ensemble forecasting (e.g. Duan & Huo 2016, Advances in Atmospheric Sciences 33, 1-15, and the
"sample-based" CNOP of Wang & Tan 2010 / Chen, Duan & Mu 2015) search a set of candidate perturbations
by forecasting each with the full nonlinear model and keeping the fastest-growing ones. This module
does exactly that:

1. **Candidates under one norm constraint.** `ensemble_cnop_initial_quantity` candidates, each a
   multi-octave Perlin pattern drawn as `forecasts.ensembles.perturb` draws a member's (fixed settings:
   CANDIDATE_OCTAVES, CANDIDATE_X, CANDIDATE_Y), scaled so that every field's perturbation has an
   area-weighted RMS of exactly AMPLITUDE times that field's spatial spread: every candidate lies on
   the same sphere of that (spread-normalised, area-weighted) norm.
2. **Nonlinear departures over a window.** Each candidate is forecast with the job's own engine for
   `window_hours(lead)` (24 h, or the job's lead when shorter), as is the unperturbed state; a
   candidate's departure is the difference of the two forecasts at the window's end for the ensemble
   features, each divided by the control forecast's spread there and weighted by cell area, so features
   in different units count alike. Its size is that vector's norm.
3. **The largest, mutually distinct.** Candidates are taken in order of departure, largest first; one
   whose departure pattern is too like one already kept (cosine similarity above DISTINCT) is passed
   over, so the members do not all follow the same growing mode. If fewer than `num_ensembles` pass,
   the largest of those passed over fill the rest. Member m (1..N) starts from the m-th kept
   candidate; member 0 stays the unperturbed control.

Not done: refining the kept candidates by projected gradient ascent, which needs the model's adjoint (or
many more forecasts to estimate a gradient); the pre-screened candidates are used as drawn.

The choice is the same in every process (the candidates come from SHA-256 seeds and the engine is
deterministic), and the member runs that start before it is made share the work (`shared_choice`):
each claims a candidate in the store (`cnop-candidates/NNNN.claim`) before forecasting it and stores
its departure (`NNNN.npy`, float64, so the vectors read are the vectors computed); a run skips
candidates claimed by another and reads their departures once stored. With two workers the two first
member runs each forecast about half the candidates. The run that has every departure makes the choice,
stores it beside the start's outputs (`cnop-selection.json`) and removes the candidates' folder; later
runs read the choice. A claim older than CLAIM_STALE_SECONDS (its worker died) is taken over.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forecasts import ensembles
from forecasts.engines.base import Engine, EngineError
from forecasts.fields import Array, Fields
from forecasts.storage import ObjectStore, StorageError, join_key

AMPLITUDE = 0.05  # the norm constraint: each field's perturbation RMS, as a share of its spread
CANDIDATE_OCTAVES = 4
CANDIDATE_X = 0.5
CANDIDATE_Y = 0.5
DISTINCT = 0.9  # highest cosine similarity allowed between two kept departures
WINDOW_HOURS = 24
SELECTION_FILE = "cnop-selection.json"
CANDIDATES_FOLDER = "cnop-candidates"  # the shared work, removed once the choice is stored
CLAIM_STALE_SECONDS = 600.0  # a claim this old is taken over: its run's worker died
POLL_SECONDS = 0.2  # how often a run whose candidates are all claimed looks for their departures


class CnopError(EngineError):
    """A CNOP ensemble that cannot be made (plain words, shown on the job as an engine's error is)."""


@dataclass(frozen=True)
class Selection:
    chosen: list[int]  # candidate numbers (1-based), member m starts from chosen[m - 1]
    departures: list[float]  # every candidate's departure size, candidate 1 first
    window_hours: int

    def as_json(self) -> dict[str, Any]:
        return {
            "method": "cnop (pre-screened candidates, no gradient refinement)",
            "window_hours": self.window_hours,
            "amplitude": AMPLITUDE,
            "chosen": self.chosen,
            "departures": [round(d, 9) for d in self.departures],
        }


def window_hours(lead_hours: int) -> int:
    return max(1, min(WINDOW_HOURS, lead_hours))


def candidate(initial: Fields, number: int, seed: str) -> Fields:
    """Candidate `number` (1-based): `initial` perturbed on the norm sphere (every field's perturbation
    RMS is AMPLITUDE times the field's spread)."""
    settings = {
        "ensemble_noise_method": "perlin",
        "ensemble_noise_perlin_scale": AMPLITUDE,
        "ensemble_noise_perlin_octave": CANDIDATE_OCTAVES,
        "ensemble_noise_perlin_x": CANDIDATE_X,
        "ensemble_noise_perlin_y": CANDIDATE_Y,
    }
    return ensembles.perturb(initial, settings, member=number, seed=f"{seed}\x1fcnop-candidate")


def departure(forecast: Fields, control: Fields, features: Sequence[str]) -> Array:
    """The candidate's departure from the control at the window's end, as one vector: each feature's
    difference over the control's spread, times the square root of each cell's area weight, so that
    the vector's squared norm is the sum over features of the area-weighted mean squared departure."""
    weights = ensembles.area_weights(control.lat)
    total = float(weights.sum()) * len(control.lon)
    root = np.sqrt(weights / total)[:, None] if total > 0 else 1.0
    parts = []
    for feature in features:
        spread = ensembles._weighted_std(control.data[feature], weights)
        scale = 1.0 / spread if spread > 0 else 1.0
        parts.append(((forecast.data[feature] - control.data[feature]) * scale * root).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def choose(vectors: Sequence[Array], count: int, *, distinct: float = DISTINCT) -> list[int]:
    """Indices (0-based) of `count` vectors: the largest first, each kept only if its cosine similarity
    with every kept one is at most `distinct`; the largest passed-over ones fill any shortfall.
    Ties in size go to the lower index."""
    if count > len(vectors):
        raise CnopError(f"{count} members need at least {count} candidates, not {len(vectors)}.")
    norms = [float(np.linalg.norm(v)) for v in vectors]
    order = sorted(range(len(vectors)), key=lambda i: (-norms[i], i))
    kept: list[int] = []
    passed: list[int] = []
    for index in order:
        if len(kept) == count:
            break
        if all(_cosine(vectors[index], vectors[k], norms[index], norms[k]) <= distinct for k in kept):
            kept.append(index)
        else:
            passed.append(index)
    for index in passed:
        if len(kept) == count:
            break
        kept.append(index)
    return kept


def select(
    initial: Fields,
    engine: Engine,
    *,
    candidates: int,
    members: int,
    features: Sequence[str],
    lead_hours: int,
    seed: str,
    keep_going: Callable[[], bool] = lambda: True,
) -> Selection:
    """Forecast the control and every candidate over the window and choose the members' candidates.
    `keep_going()` is asked between forecasts; False stops with engines.Cancelled."""
    from forecasts.engines.base import Cancelled

    _check_sizes(candidates=candidates, members=members)
    window = window_hours(lead_hours)
    control = _at_window_end(engine, initial, window, features)
    vectors = []
    for number in range(1, candidates + 1):
        if not keep_going():
            raise Cancelled
        vectors.append(_departure_of(engine, initial, control, number, seed, window, features))
    return _selection(vectors, members, window)


def _check_sizes(*, candidates: int, members: int) -> None:
    if members > candidates:
        raise CnopError(
            f"A CNOP ensemble of {members} members needs at least {members} candidates "
            f"(ensemble_cnop_initial_quantity is {candidates})."
        )


def _at_window_end(engine: Engine, state: Fields, window: int, features: Sequence[str]) -> Fields:
    *_, last = engine.forecast(state, [window], list(features))
    return last


def _departure_of(
    engine: Engine, initial: Fields, control: Fields, number: int, seed: str, window: int, features: Sequence[str]
) -> Array:
    return departure(_at_window_end(engine, candidate(initial, number, seed), window, features), control, features)


def _selection(vectors: Sequence[Array], members: int, window: int) -> Selection:
    chosen = [index + 1 for index in choose(vectors, members)]
    return Selection(chosen=chosen, departures=[float(np.linalg.norm(v)) for v in vectors], window_hours=window)


def member_state(
    initial: Fields,
    config: Mapping[str, Any],
    *,
    member: int,
    engine: Engine,
    features: Sequence[str],
    seed: str,
    store: ObjectStore,
    bucket: str,
    folder: str,
    keep_going: Callable[[float], bool] = lambda done: True,
) -> Fields:
    """Member `member`'s initial state for a CNOP job whose start's outputs are at `folder`: from the
    choice stored there when an earlier run made it, else from the choice made with the start's other
    member runs (`shared_choice`)."""
    members = int(config["num_ensembles"])
    candidates = int(config.get("ensemble_cnop_initial_quantity", 50))
    if not 1 <= member <= members:
        raise CnopError(f"Member {member} is not one of the ensemble's 1 to {members}.")
    chosen = stored_choice(store, bucket, folder, members)
    if chosen is None:
        chosen = shared_choice(
            initial,
            engine,
            candidates=candidates,
            members=members,
            member=member,
            features=features,
            lead_hours=int(config["forecast_lead_hours"]),
            seed=seed,
            store=store,
            bucket=bucket,
            folder=folder,
            keep_going=keep_going,
        )
    return candidate(initial, chosen[member - 1], seed)


def stored_choice(store: ObjectStore, bucket: str, folder: str, members: int) -> list[int] | None:
    """The members' candidates as stored at `folder`, or None when not (yet) there or unreadable."""
    try:
        stored = json.loads(store.read_bytes(bucket, join_key(folder, SELECTION_FILE)))
    except (StorageError, ValueError):
        return None
    found = stored.get("chosen") if isinstance(stored, dict) else None
    if isinstance(found, list) and len(found) == members and all(isinstance(c, int) for c in found):
        return found
    return None


def shared_choice(
    initial: Fields,
    engine: Engine,
    *,
    candidates: int,
    members: int,
    member: int,
    features: Sequence[str],
    lead_hours: int,
    seed: str,
    store: ObjectStore,
    bucket: str,
    folder: str,
    keep_going: Callable[[float], bool] = lambda done: True,
    clock: Callable[[], float] = time.time,
) -> list[int]:
    """`select`'s choice, its candidates' forecasts shared with the start's other member runs through
    the store (the module's docstring says how). Each run starts at a different candidate
    (member m at the m-th share), so runs that start together do not race for the same ones.
    `keep_going(done)` is told the share of candidates whose departure this run has (its progress)
    before each step; False stops with engines.Cancelled."""
    from forecasts.engines.base import Cancelled

    _check_sizes(candidates=candidates, members=members)
    window = window_hours(lead_hours)
    shared = join_key(folder, CANDIDATES_FOLDER)
    control: Fields | None = None
    vectors: dict[int, Array] = {}
    first = (member - 1) * candidates // members
    pending = [1 + (first + i) % candidates for i in range(candidates)]
    while pending:
        advanced = False
        for number in list(pending):
            if not keep_going(len(vectors) / candidates):
                raise Cancelled
            if (chosen := stored_choice(store, bucket, folder, members)) is not None:
                return _made_elsewhere(chosen, store, bucket, shared)
            vector = _read_vector(store, bucket, join_key(shared, f"{number:04d}.npy"))
            if vector is None:
                claim = join_key(shared, f"{number:04d}.claim")
                if _claimed_since(store, bucket, claim) > clock() - CLAIM_STALE_SECONDS:
                    continue  # another run is forecasting it
                store.write_bytes(bucket, claim, f"{clock():.3f}".encode())
                if control is None:
                    control = _at_window_end(engine, initial, window, features)
                vector = _departure_of(engine, initial, control, number, seed, window, features)
                if (chosen := stored_choice(store, bucket, folder, members)) is not None:
                    return _made_elsewhere(chosen, store, bucket, shared)  # the store needs it no more
                buffer = io.BytesIO()
                np.save(buffer, vector, allow_pickle=False)
                store.write_bytes(bucket, join_key(shared, f"{number:04d}.npy"), buffer.getvalue())
            vectors[number] = vector
            pending.remove(number)
            advanced = True
        if pending and not advanced:
            time.sleep(POLL_SECONDS)
    selection = _selection([vectors[n] for n in range(1, candidates + 1)], members, window)
    store.write_bytes(bucket, join_key(folder, SELECTION_FILE), json.dumps(selection.as_json(), indent=2).encode())
    store.delete_prefix(bucket, shared + "/")
    return selection.chosen


def _made_elsewhere(chosen: list[int], store: ObjectStore, bucket: str, shared: str) -> list[int]:
    """Another run had every departure first and stored the choice. What this run wrote meanwhile
    (a claim, a departure) may have come after that run removed the folder: removed again."""
    try:
        store.delete_prefix(bucket, shared + "/")
    except StorageError:
        pass  # left behind: harmless, and the next run that gets here removes it
    return chosen


def _read_vector(store: ObjectStore, bucket: str, key: str) -> Array | None:
    try:
        if not store.exists(bucket, key):
            return None
        vector = np.load(io.BytesIO(store.read_bytes(bucket, key)), allow_pickle=False)
    except (StorageError, ValueError, OSError):
        return None  # removed meanwhile (the choice is stored), or half written: looked at again
    return vector if isinstance(vector, np.ndarray) else None


def _claimed_since(store: ObjectStore, bucket: str, key: str) -> float:
    """When the claim at `key` was made, or minus infinity when there is none (or it is unreadable)."""
    try:
        if not store.exists(bucket, key):
            return float("-inf")
        return float(store.read_bytes(bucket, key).decode())
    except (StorageError, ValueError):
        return float("-inf")


def _cosine(a: Array, b: Array, norm_a: float, norm_b: float) -> float:
    if norm_a == 0 or norm_b == 0:
        return 1.0  # no departure at all: the same as any other for this purpose
    return float(np.dot(a, b) / (norm_a * norm_b))
