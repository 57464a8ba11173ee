"""patch-shuffle (Zhang & Zhu): does a model still read the object when its image is cut into k × k patches and shuffled?

A *scene* is one combination of the cube's axes other than ``shuffle``,
``shuffle_seed`` and ``distance`` (here object × yaw). Per model, distance
and k (the ``shuffle`` axis, patches per side):

- ``share``: the share of samples whose top-1 class is one of the object's
  classes (:func:`~perturber.pipeline.studies.samples.per_sample`'s ``in_set``);
- ``set_prob``: the mean class-set probability (total softmax probability of
  the object's classes);
- ``k_keep``: the largest k such that ``share`` ≥ ``threshold`` (0.5) at every
  grid k up to it (0 when it fails already at the smallest k).

Each scene's value is first averaged over its shuffle seeds; the bootstrap
resamples scenes. The seeds of one scene are not independent of each other
(they share the scene, and at k = 1 they are the same image), the scenes are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from perturber.pipeline import names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies.bootstrap import bootstrap
from perturber.pipeline.studies.samples import per_sample

__all__ = ["k_keep", "patch_shuffle", "per_scene", "shuffle_figure"]

K = "shuffle"
SEED = "shuffle_seed"
#: Axes that are not part of a scene (the rest, object × yaw × ..., are).
NOT_SCENE = (K, SEED, "distance")
#: The published reference's k (patches per side) and model.
PUBLISHED_K = 7


def per_scene(cube: Cube) -> xr.Dataset:
    """``in_set`` and ``set_prob`` averaged over shuffle seeds: dims (scene, [distance,] shuffle, model), computed.

    ``scene`` numbers the combinations of the other axes; its coordinate
    ``scene_object`` names each one's object.
    """
    if K not in cube.axes:
        raise StudyError(f"patch-shuffle needs a cube with a shuffle axis; this one has {', '.join(cube.axes)}")
    if int(cube.ds[K].min()) < 1:
        raise StudyError("patch-shuffle: shuffle k must be at least 1 patch per side")
    samples = per_sample(cube)[["in_set", "set_prob"]]
    if SEED in samples.dims:
        samples = samples.mean(SEED, skipna=True)
    samples = samples.compute().sortby(K)
    scene_axes = [a for a in cube.axes if a not in NOT_SCENE]
    if "object" not in samples.dims:
        samples = samples.expand_dims(object=cube.objects)
        scene_axes = ["object", *scene_axes]
    stacked = samples.stack(scene=scene_axes)
    objects = np.array([str(o) for o in stacked["object"].values], dtype=object)  # the store's may be StringDType
    stacked = stacked.drop_vars([*scene_axes, "scene"])
    stacked = stacked.assign_coords(scene=np.arange(stacked.sizes["scene"]), scene_object=("scene", objects))
    order = ["scene", *(["distance"] if "distance" in stacked.dims else []), K, names.MODEL]
    return stacked.transpose(*order)


def k_keep(share: xr.DataArray, threshold: float = 0.5) -> xr.DataArray:
    """The largest k (``shuffle`` coordinate, ascending) with ``share`` ≥ ``threshold`` at
    every k up to it; 0 when the first fails. Reduces ``shuffle``; NaN counts as a failure."""
    ok = (share >= threshold).astype(np.int64).cumprod(K)
    return (ok * share[K]).max(K).astype(np.float64)


def _statistic(threshold: float):
    def stat(ds: xr.Dataset) -> xr.Dataset:
        m = ds.mean("scene", skipna=True)
        return xr.Dataset({"share": m["in_set"], "set_prob": m["set_prob"], "k_keep": k_keep(m["in_set"], threshold)})

    return stat


def shuffle_figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): share and set_prob against k, a line per model with its
    interval band, one column per distance; the threshold as a dashed line."""
    plt, hv = outputs.plotting()
    distances = ds["distance"].values.tolist() if "distance" in ds.dims else [None]
    variables = [("share", "share of top-1 in the object's class set"), ("set_prob", "class-set probability")]
    fig, axes = plt.subplots(len(variables), len(distances), figsize=(4.2 * len(distances), 3.4 * len(variables)),
                             squeeze=False, sharey="row")
    ks = ds[K].values
    panels = []
    for r, (var, label) in enumerate(variables):
        for c, d in enumerate(distances):
            ax = axes[r, c]
            sel = ds if d is None else ds.sel(distance=d)
            overlay = []
            for model in ds[names.MODEL].values:
                v, lo, hi = (sel[var + s].sel(model=model).values for s in ("", "_lo", "_hi"))
                ax.plot(ks, v, marker="o", label=str(model))
                ax.fill_between(ks, lo, hi, alpha=0.2)
                overlay += [hv.Curve((ks, v), K, var, label=str(model)).opts(tools=["hover", "tap"]),
                            hv.Spread((ks, v, v - lo, hi - v), K, [var, "lo", "hi"], label=str(model)).opts(alpha=0.2)]
            if var == "share":
                ax.axhline(ds.attrs.get("threshold", 0.5), color="grey", ls="--", lw=0.8)
            ax.set_title(f"distance {d:g}" if d is not None else "", fontsize=9)
            ax.set_xlabel("k (patches per side)")
            ax.set_ylabel(label if c == 0 else "", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            where = f", distance {d:g}" if d is not None else ""
            panels.append(hv.Overlay(overlay).opts(title=f"{label}{where}", width=420, height=300, show_legend=True))
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{title}: 95 % bootstrap intervals over scenes")
    fig.tight_layout()
    return fig, hv.Layout(panels).cols(len(distances))


@study("patch-shuffle", cube="patch_shuffle",
       definition=("Each image is cut into k × k patches (k = 1…10 patches per side; k = 1: unshuffled) that are "
                   "permuted by a seeded shuffle. Per model, distance and k: `share` = the share of samples whose "
                   "top-1 class (among 1000) is one of the object's classes; `set_prob` = the mean class-set "
                   "probability (total softmax probability of the object's classes). Each scene (object × yaw) is "
                   "first averaged over its shuffle seeds. `k_keep` = the largest k such that share ≥ 0.5 at every "
                   "k up to it (0: already below at k = 1)."),
       unit="scene: one object × yaw on white, averaged over its 3 shuffle seeds (12 scenes)",
       control=("k = 1, the unshuffled image of the same scenes: a model that does not read the object there "
                "has nothing to lose to the shuffle, so its curve means nothing; share at k = 1 is the first row "
                "of each model and distance."),
       published=("Zhang & Zhu, Interpreting Adversarially Trained Convolutional Neural Networks, ICML 2019, "
                  "as used in the Perturber paper (Sietzen et al., CGF 2021): a standard InceptionV1 keeps a "
                  "dog breed up to k = 7 patches per side. InceptionV1 is not in the model registry."),
       figure=shuffle_figure)
def patch_shuffle(cube: Cube, threshold: float = 0.5) -> xr.Dataset:
    """Table: ``share``, ``set_prob`` (dims shuffle, distance, model) and ``k_keep``
    (dims distance, model), each with ``_lo``/``_hi`` over scenes."""
    if not 0 < float(threshold) <= 1:
        raise StudyError(f"patch-shuffle: threshold must be in (0, 1], got {threshold}")
    scenes = per_scene(cube)
    table = bootstrap(scenes.drop_vars("scene_object"), unit="scene", statistic=_statistic(float(threshold)))
    dims = [K, *(["distance"] if "distance" in table.dims else []), names.MODEL]
    table = table.transpose(*dims, ...)
    info = {"share": ("share of top-1 in the object's class set", "1"), "set_prob": ("class-set probability", "1"),
            "k_keep": (f"largest k with share ≥ {float(threshold):g} up to it", "patches per side")}
    for var, (long_name, units) in info.items():
        for suffix in ("", "_lo", "_hi"):
            table[var + suffix].attrs.update({"long_name": long_name + {"": "", "_lo": " (lower)", "_hi": " (upper)"}[suffix],
                                              "units": units})
    table.attrs["threshold"] = float(threshold)
    table.attrs["finding"] = finding(table, scenes, float(threshold))
    return table


def finding(table: xr.Dataset, scenes: xr.Dataset, threshold: float) -> str:
    """k_keep per model and distance (all objects, then the dog alone), the k = 1 control, and the published k."""
    def fmt(values: xr.DataArray) -> str:
        parts = []
        for model in table[names.MODEL].values:
            v = values.sel(model=model)
            if "distance" in v.dims:
                text = ", ".join(f"{float(v.sel(distance=d)):g} at distance {float(d):g}" for d in v["distance"].values)
            else:
                text = f"{float(v):g}"
            parts.append(f"{model} {text}")
        return "; ".join(parts)

    k1 = table["share"].isel({K: 0})
    out = (f"Share ≥ {threshold:g} up to k = {fmt(table['k_keep'])} (all objects). "
           f"Control, share at k = {int(table[K][0])}: {fmt(k1.round(2))}.")
    dog = scenes.where(scenes["scene_object"] == "dog", drop=True)
    if dog.sizes["scene"]:
        out += f" The dog alone: k = {fmt(k_keep(dog['in_set'].mean('scene'), threshold))}."
    return out + f" Published: a standard InceptionV1 keeps a dog breed up to k = {PUBLISHED_K}."
