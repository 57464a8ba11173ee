"""Failure maps: MAP-Elites over two descriptor factors (pyribs).

The solution is the vector z (P,) of all searched factors' normalised offsets
from the start (:mod:`.factor_search`); its descriptors are the values of two
of them, a and b, in their own units; the archive is a grid of ``cells``
(A, B) over their domains. Each cell keeps the solution of highest ribs
objective ``-f`` (f: the penalty objective), so a failure beats every
non-failure and, among failures, the one of least distance from the start
(over all searched factors, as ``distance_from_start``). The failure map is
that distance in every cell whose elite is a failure, NaN elsewhere.

The first generation is ``batch`` points drawn uniformly in the domain box
(the start is scored with it); later ones are Gaussian mutations of random
elites (``GaussianEmitter``, ``sigma`` in normalised units), one generation =
one batched call of the evaluator.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from perturber.pipeline.searches import SearchError
from perturber.pipeline.searches.factor_search import PENALTY, Evaluate, Failures, Problem, Result, score

__all__ = ["parse_cells", "map_elites"]

MAX_CELLS = 64


def parse_cells(text: str) -> tuple[int, int]:
    """``'8x8'`` → (8, 8); each side 1..64."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        a, b = (int(v) for v in parts)
    except ValueError:
        raise SearchError(f"--cells {text!r}: expected AxB, e.g. 8x8") from None
    if not (1 <= a <= MAX_CELLS and 1 <= b <= MAX_CELLS):
        raise SearchError(f"--cells {text!r}: each side from 1 to {MAX_CELLS}")
    return a, b


def check_descriptors(p: Problem, descriptors: Sequence[str]) -> tuple[str, str]:
    """Two distinct searched factors, or a one-line error."""
    if len(descriptors) != 2 or descriptors[0] == descriptors[1]:
        raise SearchError(f"--map {','.join(descriptors)}: name two different factors, e.g. yaw,distance")
    for d in descriptors:
        if d not in p.factors:
            raise SearchError(f"--map factor {d!r} is not searched; add it to --factors ({','.join(p.factors)})")
    return descriptors[0], descriptors[1]


def map_elites(p: Problem, evaluate: Evaluate, descriptors: Sequence[str], cells: tuple[int, int], budget: int,
               seed: int = 0, batch: int = 16, sigma: float = 0.1,
               progress: Callable[[int], None] | None = None) -> Result:
    """Illuminate the failures over ``descriptors`` (two searched factors) with
    at most ``budget`` evaluations (the start counts as one)."""
    from ribs.archives import GridArchive
    from ribs.emitters import GaussianEmitter
    from ribs.schedulers import Scheduler

    a, b = check_descriptors(p, descriptors)
    if budget < 1:
        raise SearchError(f"budget {budget}: at least 1 evaluation")
    clock = time.perf_counter()
    ia, ib = p.factors.index(a), p.factors.index(b)
    zlo, zhi = p.z_bounds
    archive = GridArchive(solution_dim=len(p.factors), dims=cells, ranges=[(p.lo[ia], p.hi[ia]), (p.lo[ib], p.hi[ib])],
                          seed=seed, extra_fields={"found_at": ((), np.int32), "top1": ((), np.int32),
                                                   "set_prob": ((), np.float32)})
    initial = np.random.default_rng(seed).uniform(zlo, zhi, size=(batch, len(p.factors)))
    emitter = GaussianEmitter(archive, sigma=sigma, initial_solutions=initial, bounds=list(zip(zlo, zhi)),
                              batch_size=batch, seed=seed)
    scheduler = Scheduler(archive, [emitter])
    evals, start_score = 0, None
    while evals < budget:
        z = scheduler.ask()
        room = budget - evals - (start_score is None)
        take = z[:max(room, 0)]
        zs = np.concatenate([np.zeros((1, len(p.factors))), take]) if start_score is None else take
        values = p.values(zs)
        s = score(p, evaluate(p.points(values)), values)
        fields = {"found_at": evals + np.arange(1, len(zs) + 1, dtype=np.int32), "top1": s.top1.astype(np.int32),
                  "set_prob": s.set_prob.astype(np.float32)}
        rows = slice(0, len(zs))
        if start_score is None:
            start_score = (int(s.top1[0]), float(s.set_prob[0]))
            archive.add(zs[:1], -s.objective[:1], values[:1, [ia, ib]], **{k: v[:1] for k, v in fields.items()})
            rows = slice(1, len(zs))
        if len(take) == len(z):
            scheduler.tell(-s.objective[rows], values[rows][:, [ia, ib]], **{k: v[rows] for k, v in fields.items()})
        else:  # the budget ends inside a generation: keep what was evaluated
            archive.add(zs[rows], -s.objective[rows], values[rows][:, [ia, ib]], **{k: v[rows] for k, v in fields.items()})
        evals += len(zs)
        if progress:
            progress(len(zs))
    return _result(p, archive, (a, b), evals, time.perf_counter() - clock, seed, budget, start_score,
                   {"cells": list(cells), "batch": batch, "sigma": sigma, "emitter": "GaussianEmitter"})


def _result(p: Problem, archive, descriptors, evals, seconds, seed, budget, start_score, settings) -> Result:
    data = archive.data()
    failed = data["objective"] > -PENALTY
    values = p.values(data["solution"][failed])
    distance = p.distance(values)  # = -objective for a failure
    grid = archive.int_to_grid_index(data["index"][failed])
    fmap = np.full(archive.dims, np.nan)
    fmap[grid[:, 0], grid[:, 1]] = distance
    order = np.lexsort((data["found_at"][failed], distance))
    failures = Failures(values[order], distance[order], data["top1"][failed][order].astype(np.int32),
                        data["set_prob"][failed][order].astype(np.float32), data["found_at"][failed][order].astype(np.int32))
    centres = tuple((e[:-1] + e[1:]) / 2 for e in archive.boundaries)
    return Result("map-elites", p, failures, evals, seconds, seed, budget, *start_score, settings=settings,
                  descriptors=descriptors, centres=centres, failure_map=fmap)
