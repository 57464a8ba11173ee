"""Cubes with known contents, without rendering: for the metrics' tests and the analysis benchmark.

:func:`cube_dataset` puts given logits into the exact layout of a store's cube
group (every variable, coordinate and attribute of
:func:`perturber.pipeline.store.template`), with the top-k classes, their
probabilities and the class-set probability derived from the logits as the
precompute derives them. :func:`write_store` writes such a cube task by
task (shard by shard) into a real store, for out-of-core benchmarks::

    cube = spec.parse_spec({"cubes": {"c": {"axes": {"object": ["dog"], "yaw": [0, 90]},
                                            "models": ["efficientnet_lite0"]}}}).cubes[0]
    logits = np.zeros(cube.shape + (1, 1000)); logits[..., 0, 207] = 10   # a golden retriever everywhere
    Cube(cube_dataset(cube, logits)).misread("efficientnet_lite0")       # all False
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np
import xarray as xr

from perturber.pipeline import factors, names, summaries
from perturber.pipeline import store as zstore
from perturber.pipeline.analysis import class_mask
from perturber.pipeline.spec import CubeSpec

__all__ = ["derived", "cube_dataset", "write_store"]


def _layout(cube: CubeSpec) -> zstore.Layout:
    return zstore.Layout(activations={})


def derived(cube: CubeSpec, logits: np.ndarray, object_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The per-sample variables of the precompute from logits (..., models, 1000);
    ``object_ids`` (...) names each sample's object."""
    z = logits.astype(np.float32)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    k = cube.top_k
    top = np.argpartition(-p, k - 1, axis=-1)[..., :k] if k < p.shape[-1] else np.broadcast_to(np.arange(k), p.shape)
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(p, top, -1), axis=-1, kind="stable"), -1)
    distinct, which = np.unique(object_ids.astype(str), return_inverse=True)
    masks = np.stack([class_mask(o) for o in distinct]).astype(np.float32)  # (objects, 1000)
    set_prob = np.einsum("...mc,...c->...m", p, masks[which.reshape(object_ids.shape)])
    top_prob = np.take_along_axis(p, order, -1).astype(np.float32)
    return {names.LOGITS: logits.astype(np.float16), names.TOP_CLASS: order.astype(np.int16), names.TOP_PROB: top_prob,
            **summaries.summarise(order, top_prob, set_prob)}


def _objects(cube: CubeSpec, shape: tuple[int, ...], index: tuple[slice, ...] | None = None) -> np.ndarray:
    if "object" not in cube.axis_names:
        return np.full(shape, str(cube.fixed.get("object", factors.get("object").default)), dtype=object)
    k = cube.axis_names.index("object")
    values = np.array(dict(cube.axes)["object"], dtype=object)
    if index is not None:
        values = values[index[k]]
    view = [1] * len(shape)
    view[k] = len(values)
    return np.broadcast_to(values.reshape(view), shape)


def cube_dataset(cube: CubeSpec, logits: np.ndarray, images: np.ndarray | None = None) -> xr.Dataset:
    """An in-memory cube Dataset with these logits, (*cube.shape, models, 1000), every task done.

    ``images`` (*cube.shape, S, S, 3) uint8 when the cube stores images.
    """
    ds = zstore.template(cube, _layout(cube)).compute()
    values = derived(cube, np.asarray(logits), _objects(cube, cube.shape))
    for name, v in values.items():
        ds[name].values[...] = v
    if images is not None and names.IMAGE in ds:
        ds[names.IMAGE].values[...] = images
    ds[names.DONE].values[...] = 1
    return ds


def write_store(cube: CubeSpec, store: Any, logits_of: Callable[[tuple[slice, ...], np.random.Generator], np.ndarray],
                seed: int = 0, progress: Callable[[int], None] | None = None) -> None:
    """Write ``cube`` into ``store`` without rendering: each task's logits are
    ``logits_of(slices, rng)``, (*task region shape, models, 1000). No activations or images."""
    if cube.layers or cube.images:
        raise ValueError("write_store makes cubes without layers or images")
    ds = zstore.template(cube, _layout(cube))
    ds.attrs["batch_sizes"] = "{}"
    zstore.write_template(ds, store, cube.name, zstore.encoding(ds, cube, _layout(cube)))
    tasks = zstore.tasks(cube, store)
    writer = summaries.SummaryWriter(cube, store, tasks, zstore.done_mask(cube, store))
    rng = np.random.default_rng(seed)
    try:
        for index in itertools.product(*(range(n) for n in tasks.grid)):
            slices = tasks.region(index)
            logits = logits_of(slices, rng)
            values = derived(cube, logits, _objects(cube, logits.shape[: len(slices)], slices))
            zstore.write_task(cube, store, slices, {k: v for k, v in values.items() if k not in names.SUMMARIES})
            writer.add(index, {k: values[k] for k in names.SUMMARIES})
            if progress is not None:
                progress(int(np.prod(logits.shape[: len(slices)])))
    finally:
        writer.close()
