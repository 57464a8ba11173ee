"""Failures in factor space, off the grid: the smallest change of a scene's
continuous factors that flips a model away from the object's class set.

A search starts from one scene (every factor has a value) and moves P chosen
continuous factors. Each is normalised by its domain width ``scale`` (yaw:
360 degrees, distance: 9 object sizes, ...), so a candidate is a vector
``z = (value - start) / scale`` (P,), unitless, and its distance from the
start is ``|z|`` (Euclidean). The searched box is the factors' domains.

A **failure** is a scene whose top-1 class is not in the object's class set
(the catalogue's ImageNet classes for it), by a margin κ (``margin``, default
0.1): ``log p(best other class) - log p(best class-set class) > κ``, so a
failure stays one when evaluated again. The search minimises the penalty
objective (:func:`score`)::

    f(z) = |z|                                          if z is a failure
    f(z) = |z| + PENALTY + (log p_in - log p_out + κ)   otherwise

with ``PENALTY`` = 10, larger than any distance in a box of up to 99 unit
sides, so every failure beats every non-failure, and the last term leads a
search towards the boundary. :func:`cmaes` minimises it with CMA-ES (``cma``,
one generation = one batched call of the evaluator); :mod:`.failure_map`
illuminates it with MAP-Elites. Both write ``search/<run>``
(:func:`write`; the layout is in :func:`to_dataset`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from perturber.pipeline import analysis, classes, factors, groups, models, names, tasks
from perturber.pipeline.searches import SearchError

__all__ = ["PENALTY", "DEFINITION", "Problem", "problem", "Scores", "score", "Failures", "Result", "Evaluator",
           "evaluate_batch", "cmaes", "to_dataset", "write", "read", "runs", "group"]

PENALTY = 10.0

DEFINITION = ("A failure is a scene whose top-1 ImageNet class is not in the object's class set, by a margin kappa "
              "(attribute margin): log p(best other class) - log p(best class-set class) > kappa. Each searched "
              "factor is normalised by its domain width (scale); distance_from_start = sqrt(sum(((value - start) / "
              "scale)^2)), unitless. The search minimises f = distance if a failure, else distance + 10 + (log p_in "
              "- log p_out + kappa); a failure map cell holds the least distance of a failure whose two descriptor "
              "factors fall in that cell (distance over all searched factors).")

#: Evaluator: N scenes (factor dicts) → (N, 1000) float32 softmax probabilities.
Evaluate = Callable[[Sequence[Mapping[str, Any]]], np.ndarray]


@dataclass
class Problem:
    """What is searched. ``start``: the full validated start scene; ``factors``
    (P names); ``lo``, ``hi``, ``scale`` (P,) in the factors' units; ``class_set``
    ImageNet indices; ``size`` render side in pixels; ``margin`` κ."""

    model: str
    start: dict[str, Any]
    factors: list[str]
    lo: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    class_set: list[int]
    size: int = 128
    margin: float = 0.1

    @property
    def start_values(self) -> np.ndarray:
        return np.array([float(self.start[f]) for f in self.factors])

    @property
    def z_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The domain box in normalised offsets: ((P,), (P,))."""
        s = self.start_values
        return (self.lo - s) / self.scale, (self.hi - s) / self.scale

    def values(self, z: np.ndarray) -> np.ndarray:
        """Normalised offsets (N, P) → factor values (N, P), clipped to the domains."""
        return np.clip(self.start_values + np.atleast_2d(z) * self.scale, self.lo, self.hi)

    def distance(self, values: np.ndarray) -> np.ndarray:
        """(N, P) factor values → (N,) normalised distance from the start."""
        return np.sqrt((((np.atleast_2d(values) - self.start_values) / self.scale) ** 2).sum(1))

    def points(self, values: np.ndarray) -> list[dict[str, Any]]:
        """(N, P) values → N complete scenes (the start with the searched factors replaced)."""
        return [{**self.start, **dict(zip(self.factors, map(float, row)))} for row in np.atleast_2d(values)]


def continuous(name: str) -> factors.Factor:
    """The factor ``name`` if it is continuous (a real interval), else a one-line error."""
    f = factors.get(name)
    if not (isinstance(f.domain, factors.Interval) and not f.domain.integer):
        raise SearchError(f"factor {name!r} is not continuous ({f.domain.describe()}); search moves continuous factors only")
    if f.domain.hi <= f.domain.lo:
        raise SearchError(f"factor {name!r} has an empty domain")
    return f


def problem(start: Mapping[str, Any], names_: Sequence[str], model: str, size: int = 128, margin: float = 0.1) -> Problem:
    """Check everything a search needs before it starts: the factors (known,
    continuous, distinct), the start scene (in the domains), the object's class
    set (a catalogue object) and the model."""
    if not names_:
        raise SearchError("name at least one factor to search")
    wanted = [continuous(n.strip()).name for n in names_]
    if len(set(wanted)) != len(wanted):
        raise SearchError(f"factors {','.join(names_)}: a factor is named twice")
    scene = factors.validate(start)
    object_id = scene["object"]
    class_set = analysis.class_indices(object_id)
    if not class_set:
        raise SearchError(f"object {object_id!r} has no class set in the catalogue; a search needs one to define a failure")
    models.spec(model)  # an unknown model: one line, before any render
    if not 16 <= size <= 4096:
        raise SearchError(f"size {size}: use 16 to 4096 pixels")
    if not (math.isfinite(margin) and margin >= 0):
        raise SearchError(f"margin {margin}: use a number >= 0")
    domains = [factors.get(n).domain for n in wanted]
    lo = np.array([d.lo for d in domains], dtype=np.float64)
    hi = np.array([d.hi for d in domains], dtype=np.float64)
    return Problem(model, scene, wanted, lo, hi, hi - lo, list(class_set), size, float(margin))


@dataclass
class Scores:
    """Per candidate (N,): ``distance``, ``failed`` (bool), ``top1`` (int),
    ``set_prob`` (class-set probability mass), ``margin_log`` (log p_in - log
    p_out), ``objective`` (f, to minimise)."""

    distance: np.ndarray
    failed: np.ndarray
    top1: np.ndarray
    set_prob: np.ndarray
    margin_log: np.ndarray
    objective: np.ndarray


def score(p: Problem, probs: np.ndarray, values: np.ndarray) -> Scores:
    """The penalty objective of the module docstring for (N, 1000) probabilities at (N, P) values."""
    probs = np.asarray(probs, dtype=np.float64)
    in_set = np.zeros(probs.shape[1], dtype=bool)
    in_set[p.class_set] = True
    best_in = probs[:, in_set].max(1)
    best_out = probs[:, ~in_set].max(1)
    margin_log = np.log(np.maximum(best_in, 1e-30)) - np.log(np.maximum(best_out, 1e-30))
    failed = margin_log < -p.margin
    distance = p.distance(values)
    objective = distance + np.where(failed, 0.0, PENALTY + margin_log + p.margin)
    return Scores(distance, failed, probs.argmax(1), probs[:, in_set].sum(1), margin_log, objective)


@dataclass
class Failures:
    """F failures, nearest first: ``values`` (F, P), ``distance``, ``top1``,
    ``set_prob``, ``found_at`` (F,) (evaluations spent when found)."""

    values: np.ndarray
    distance: np.ndarray
    top1: np.ndarray
    set_prob: np.ndarray
    found_at: np.ndarray

    @classmethod
    def empty(cls, p: int) -> "Failures":
        return cls(np.zeros((0, p)), np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def add(self, values: np.ndarray, s: Scores, found_at: np.ndarray, keep: int | None = None) -> "Failures":
        """These failures and the failing rows of a scored batch, nearest first (at most ``keep``)."""
        f = s.failed
        out = Failures(np.concatenate([self.values, values[f]]), np.concatenate([self.distance, s.distance[f]]),
                       np.concatenate([self.top1, s.top1[f]]).astype(np.int32),
                       np.concatenate([self.set_prob, s.set_prob[f]]).astype(np.float32),
                       np.concatenate([self.found_at, found_at[f]]).astype(np.int32))
        order = np.lexsort((out.found_at, out.distance))[:keep]
        return Failures(out.values[order], out.distance[order], out.top1[order], out.set_prob[order], out.found_at[order])


@dataclass
class Result:
    """A finished search. ``start_top1``/``start_set_prob``: the model at the start.
    Map-Elites only: ``descriptors`` (a, b), ``centres`` ((A,), (B,)) cell
    centres in the factors' units, ``failure_map`` (A, B) least distance, NaN: none."""

    method: str
    problem: Problem
    failures: Failures
    evaluations: int
    seconds: float
    seed: int
    budget: int
    start_top1: int
    start_set_prob: float
    settings: dict[str, Any] = field(default_factory=dict)
    descriptors: tuple[str, str] | None = None
    centres: tuple[np.ndarray, np.ndarray] | None = None
    failure_map: np.ndarray | None = None


def evaluate_batch(points: Sequence[Mapping[str, Any]], model: str, size: int, threads: int | None = None) -> np.ndarray:
    """(N, 1000) float32 softmax of ``model`` on N scenes rendered at ``size``
    through the one engine; also the Dask task (the model and renderer stay
    loaded in the worker's process between tasks)."""
    from perturber.pipeline import engine  # the submitting process need not load the renderer: the workers do

    tasks.use_threads(threads)
    ev = engine.evaluate(list(points), [model], size=size)
    return ev.logits[model].float().softmax(1).numpy()


class Evaluator:
    """Scores a generation: in this process, or (``client`` given) as Dask
    tasks, one per batch, the generation split into one batch per worker thread."""

    def __init__(self, model: str, size: int, client: Any = None, threads: int | None = None):
        self.model, self.size, self.client, self.threads = model, size, client, threads

    def __call__(self, points: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.client is None:
            return evaluate_batch(points, self.model, self.size)
        parts = max(1, min(len(points), sum(self.client.nthreads().values())))
        batches = [list(b) for b in np.array_split(np.array(points, dtype=object), parts)]
        futures = [self.client.submit(evaluate_batch, b, self.model, self.size, threads=self.threads, pure=False) for b in batches]
        return np.concatenate([f.result() for f in futures])


def cmaes(p: Problem, evaluate: Evaluate, budget: int, seed: int = 0, popsize: int | None = None, sigma0: float = 0.1,
          keep: int = 32, progress: Callable[[int], None] | None = None) -> Result:
    """Minimise f with CMA-ES from the start (z = 0), in the domain box (cma's
    bounds), step size ``sigma0`` in normalised units, for at most ``budget``
    evaluations (the start counts as one, scored with the first generation).
    Returns the ``keep`` nearest failures of every candidate evaluated."""
    import cma

    if budget < 1:
        raise SearchError(f"budget {budget}: at least 1 evaluation")
    start_clock = time.perf_counter()
    zlo, zhi = p.z_bounds
    opts = {"bounds": [list(zlo), list(zhi)], "seed": seed + 1, "verbose": -9}  # cma reads seed 0 as 'from the clock'
    if popsize:
        opts["popsize"] = popsize
    es = cma.CMAEvolutionStrategy(np.zeros(len(p.factors)), sigma0, opts)
    failures, evals, start_score = Failures.empty(len(p.factors)), 0, None
    while evals < budget and not es.stop():
        z = np.array(es.ask())
        room = budget - evals - (start_score is None)
        take = z[:max(room, 0)]
        values = np.concatenate([p.start_values[None], p.values(take)]) if start_score is None else p.values(take)
        s = score(p, evaluate(p.points(values)), values)
        failures = failures.add(values, s, evals + np.arange(1, len(values) + 1), keep)
        if start_score is None:
            start_score = (int(s.top1[0]), float(s.set_prob[0]))
            s = Scores(*(a[1:] for a in vars(s).values()))
        evals += len(values)
        if progress:
            progress(len(values))
        if len(take) == len(z):
            es.tell(list(z), list(s.objective))
    settings = {"popsize": int(es.popsize), "sigma0": sigma0, "keep": keep, "stop": {k: str(v) for k, v in es.stop().items()}}
    return Result("cmaes", p, failures, evals, time.perf_counter() - start_clock, seed, budget, *start_score, settings=settings)


def group(run: str) -> str:
    """``search/<run>``; a one-line error for a bad run name."""
    return groups.path(names.SEARCH, run)


def to_dataset(r: Result) -> xr.Dataset:
    """The ``search/<run>`` group: dims ``factor`` (P) and ``failure`` (F, nearest
    first); ``start``, ``scale`` (factor); ``value`` (failure, factor);
    ``distance_from_start``, ``top1``, ``top1_name``, ``set_prob``, ``found_at``
    (failure); a map run adds ``failure_map`` (map_<a>, map_<b>) with the cell
    centres as coordinates. Attrs: method, model, object, class_set, start_point,
    descriptors (map), seed, evaluations, seconds, budget, definition, margin, settings."""
    p, f = r.problem, r.failures
    names_ = classes.imagenet_categories()
    ds = xr.Dataset(
        {
            "start": ("factor", p.start_values, {"long_name": "the start scene's value"}),
            "scale": ("factor", p.scale.astype(np.float64), {"long_name": "domain width used for normalising"}),
            "value": (("failure", "factor"), np.asarray(f.values, np.float64), {"long_name": "the failing point's value"}),
            "distance_from_start": ("failure", np.asarray(f.distance, np.float64), {"units": "1"}),
            "top1": ("failure", np.asarray(f.top1, np.int32)),
            "top1_name": ("failure", np.array([names_[int(c)] for c in f.top1], dtype=object)),
            "set_prob": ("failure", np.asarray(f.set_prob, np.float32), {"units": "1", "long_name": "class-set probability mass"}),
            "found_at": ("failure", np.asarray(f.found_at, np.int32), {"long_name": "evaluations spent when found"}),
        },
        coords={"factor": np.array(p.factors, dtype=object)},
        attrs={"method": r.method, "model": p.model, "object": p.start["object"], "class_set": json.dumps(p.class_set),
               "start_point": json.dumps(p.start), "seed": int(r.seed), "evaluations": int(r.evaluations),
               "seconds": float(r.seconds), "budget": int(r.budget), "definition": DEFINITION, "margin": p.margin,
               "size": p.size, "start_top1": int(r.start_top1), "start_set_prob": float(r.start_set_prob),
               "settings": json.dumps(r.settings, default=str)},
    )
    if r.failure_map is not None:
        a, b = r.descriptors
        ds = ds.assign_coords({f"map_{a}": r.centres[0], f"map_{b}": r.centres[1]})
        ds["failure_map"] = ((f"map_{a}", f"map_{b}"), np.asarray(r.failure_map, np.float64),
                             {"units": "1", "long_name": "least distance_from_start of a failure in the cell (NaN: none)"})
        ds.attrs["descriptors"] = json.dumps([a, b])
    return ds


def write(store: Any, run: str, r: Result) -> xr.Dataset:
    """Write (replace, once complete) ``search/<run>``; returns the dataset."""
    ds = to_dataset(r)
    groups.write(store, names.SEARCH, run, ds)
    return ds


def read(store: Any, run: str) -> xr.Dataset:
    return groups.read(store, names.SEARCH, run)


def runs(store: Any) -> list[str]:
    """The search runs in a store (names of ``search/*`` groups)."""
    return groups.names(store, names.SEARCH)
