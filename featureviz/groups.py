"""Data-driven neuron groups, computed from a cube's stored activations.

The original Perturber offered hand-picked neuron groups per layer. Here they
come from the store: per layer, the neurons most activated by each object of
the cube, and the neurons whose activation changes most along each axis.
"""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np

__all__ = ["neuron_groups", "mean_activation", "labels"]


def labels(ds) -> list[str]:
    """The data-driven group labels of a cube (nothing is computed)."""
    axes = list(ds.attrs["axes"])
    if "object" in axes:
        objects = [str(o) for o in ds["object"].values]
    else:
        objects = [json.loads(ds.attrs["fixed"]).get("object", "the object")]
    return [f"most active for {o}" for o in objects] + [f"changes most along {a}" for a in axes if ds.sizes[a] >= 2]


@functools.lru_cache(maxsize=32)
def mean_activation(path: str, cube: str, variable: str) -> np.ndarray:
    """(*axes, neuron) float32: each stored neuron's spatial mean activation per
    sample, NaN where not computed; one dask pass over the variable, once per process."""
    from perturber.pipeline.store import open_cube

    ds = open_cube(path, cube)
    act = ds[variable]
    spatial = [d for d in act.dims if d.startswith(("ay_", "ax_"))]
    return act.astype("float32").mean(spatial).values


def neuron_groups(path: str, cube: str, variable: str, size: int = 8) -> dict[str, list[int]]:
    """label → positions along the variable's neuron dimension (stored order), e.g.
    ``"most active for dog"`` and ``"changes most along yaw"``.

    Most active for an object: the largest mean activation over the object's
    computed samples. Changes most along an axis: the largest spread (max - min)
    along the axis, averaged over every combination of the other axes.
    """
    from perturber.pipeline.store import open_cube

    ds = open_cube(path, cube)
    axes = list(ds.attrs["axes"])
    m = mean_activation(path, cube, variable)
    groups: dict[str, list[int]] = {}

    def top(score: np.ndarray) -> list[int]:
        score = np.where(np.isfinite(score), score, -np.inf)
        order = np.argsort(-score, kind="stable")[:size]
        return [int(i) for i in order if np.isfinite(score[i])]

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: chunks not computed
        if "object" in axes:
            k = axes.index("object")
            for i, obj in enumerate(str(o) for o in ds["object"].values):
                per = np.take(m, i, axis=k).reshape(-1, m.shape[-1])
                chosen = top(np.nanmean(per, axis=0))
                if chosen:
                    groups[f"most active for {obj}"] = chosen
        else:
            obj = json.loads(ds.attrs["fixed"]).get("object", "the object")
            chosen = top(np.nanmean(m.reshape(-1, m.shape[-1]), axis=0))
            if chosen:
                groups[f"most active for {obj}"] = chosen
        for k, axis in enumerate(axes):
            if ds.sizes[axis] < 2:
                continue
            spread = np.nanmax(m, axis=k) - np.nanmin(m, axis=k)
            chosen = top(np.nanmean(spread.reshape(-1, m.shape[-1]), axis=0))
            if chosen:
                groups[f"changes most along {axis}"] = chosen
    return groups
