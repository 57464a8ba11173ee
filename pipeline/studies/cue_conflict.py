"""cue-conflict (Geirhos et al. 2019): does a model decide by an object's shape or by its texture?

The cube crosses shapes (its ``object`` axis: catalogue objects with class
sets) with textures (its ``texture`` axis: catalogue textures and patterns
with ``classes``, ``image:<id>``, box-projected on any shape) and views (every
other axis: yaw × pitch here).

*Categories.* Each shape's class set (its catalogue ``classes``) and each
texture's (its ``classes``: the texture cue) are the study's categories; sets
that share a class are merged into one category (the cat's ``@cats`` and the
tabby fur's tabby, tiger cat and Egyptian cat are one category, *cat*), so the
categories are disjoint. A category is named after its first shape (or texture).

*Images.* A conflict image puts a texture on a shape of another category; a
control image puts it on a shape of the same category (the cat's shape in
tabby fur: its own texture, through the same projection as every conflict).

*Decisions*, per image and model:

- top-1: a shape decision when the top-1 class (among 1000) is in the shape's
  category, a texture decision when it is in the texture's;
- forced choice (Geirhos' 16-class aggregation): the category with the
  highest mean (``aggregate='mean'``, as Geirhos; or ``'sum'``) softmax
  probability over its classes, among the study's categories; a shape or
  texture decision when it is the shape's or the texture's.

*Metrics* per model, for all images and per subset (a shape in every texture,
a texture on every shape): ``shape_bias_*`` = shape
decisions / (shape + texture decisions) over the conflict images;
``control_*`` = the share of control images decided for the shape's category;
``decided_top1`` = the share of conflict images whose top-1 fell in either
category. The independent unit is the *view*: decisions are counted per view
(over every shape × texture of that view), the bootstrap resamples views, and
each statistic is a ratio of sums over the resampled views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr

from perturber.pipeline import names, textures
from perturber.pipeline.analysis import Cube, class_mask, lazy
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies.bootstrap import bootstrap

__all__ = ["Categories", "categories", "per_view", "cue_conflict", "conflict_figure", "PUBLISHED"]

#: Geirhos et al. 2019 (16-class forced choice, shape bias): ImageNet ResNet-50, Stylized-ImageNet ResNet-50, humans.
PUBLISHED = {"ResNet-50 (ImageNet)": 0.22, "ResNet-50 (Stylized-ImageNet)": 0.81, "humans": 0.96}
#: The goal of the control: the share of own-texture images read as the shape's class.
CONTROL_GOAL = 0.5
#: Not computed / no category, in the per-sample category arrays.
NOT_COMPUTED, NO_CATEGORY = -2, -1
COUNTS = ("conflict_n", "shape_top1", "texture_top1", "shape_forced", "texture_forced",
          "control_n", "control_top1", "control_forced")


@dataclass(frozen=True)
class Categories:
    """The study's disjoint categories: ``names`` (K), ``masks`` (K, 1000) bool,
    the category of each shape (``shape``, (objects,)) and texture (``texture``, (textures,))."""

    names: list[str]
    masks: np.ndarray
    shape: np.ndarray
    texture: np.ndarray

    def lookup(self) -> np.ndarray:
        """(1000,) int: each class's category, :data:`NO_CATEGORY` for classes in none."""
        out = np.full(1000, NO_CATEGORY, dtype=np.int16)
        for k, mask in enumerate(self.masks):
            out[mask] = k
        return out

    def weights(self, aggregate: str) -> np.ndarray:
        """(1000, K): a category's mean (or summed) probability is ``p @ weights``."""
        w = self.masks.T.astype(np.float64)
        return w / w.sum(0) if aggregate == "mean" else w


def _label(texture: str) -> str:
    return texture.split(":", 1)[1] if texture.startswith(("image:", "pattern:")) else texture


def categories(objects: list[str], texture_values: list[str]) -> Categories:
    """Merge the class sets of the shapes and textures into disjoint categories (sets
    that share a class become one). A shape or texture without classes is a :class:`StudyError`."""
    items: list[tuple[str, np.ndarray]] = []
    for o in objects:
        mask = class_mask(o)
        if not mask.any():
            raise StudyError(f"cue-conflict: shape {o!r} has no classes (a mesh file?): use catalogue objects")
        items.append((o, mask))
    for t in texture_values:
        indices = textures.class_indices(t)
        if not indices:
            raise StudyError(f"cue-conflict: texture {t!r} has no classes; give its catalogue entry `classes:` "
                             f"(textures and patterns in data/catalogue.yaml)")
        mask = np.zeros(1000, dtype=bool)
        mask[indices] = True
        items.append((_label(t), mask))
    parent = list(range(len(items)))  # union-find; a group's root is its first member

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(items)):
        for j in range(i):
            if (items[i][1] & items[j][1]).any():
                a, b = sorted((root(i), root(j)))
                parent[b] = a
    roots = sorted({root(i) for i in range(len(items))})
    number = {r: k for k, r in enumerate(roots)}
    masks = np.stack([np.any([m for i, (_, m) in enumerate(items) if root(i) == r], axis=0) for r in roots])
    ids = np.array([number[root(i)] for i in range(len(items))], dtype=np.int16)
    return Categories([items[r][0] for r in roots], masks, ids[: len(objects)], ids[len(objects):])


def _top_category(top1: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Category of each top-1 class (int, -1: not computed) → int16, NOT_COMPUTED where not computed."""
    cls = top1.astype(np.int64)
    return np.where(cls >= 0, lookup[np.clip(cls, 0, 999)], NOT_COMPUTED).astype(np.int16)


def _forced_choice(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., 1000) logits → (...) int16: the category with the highest aggregated softmax
    probability (the softmax's common denominator does not change the choice); NOT_COMPUTED for NaN."""
    z = logits.astype(np.float32)
    top = z.max(-1, keepdims=True)
    z -= top
    np.exp(z, out=z)
    choice = (z @ weights.astype(np.float32)).argmax(-1)
    return np.where(np.isfinite(top[..., 0]), choice, NOT_COMPUTED).astype(np.int16)


def per_view(cube: Cube, aggregate: str = "mean") -> tuple[xr.Dataset, Categories]:
    """Decision counts per view, subset and model (:data:`COUNTS`, dims (view, subset, model),
    computed), and the categories. ``subset``: 'all', then 'shape:<object>' for each
    shape (its images in every texture), then 'texture:<id>' for each texture (on every shape).

    Read out of core: the top-1 classes and logits go through dask, chunk by
    chunk, and only the counts (views × subsets × models) are held.
    """
    if not {"object", "texture"} <= set(cube.axes):
        raise StudyError(f"cue-conflict needs a cube with the axes object and texture (shapes × textures); "
                         f"this one has {', '.join(cube.axes)}")
    texture_values = [str(t) for t in cube.ds["texture"].values]
    cats = categories(cube.objects, texture_values)
    ds = cube.ds
    top_cat = xr.apply_ufunc(_top_category, lazy(ds[names.TOP_CLASS]).isel({names.RANK: 0}, drop=True),
                             kwargs={"lookup": cats.lookup()}, dask="parallelized", output_dtypes=[np.int16])
    forced = xr.apply_ufunc(_forced_choice, lazy(ds[names.LOGITS]), input_core_dims=[[names.CLASS]],
                            kwargs={"weights": cats.weights(aggregate)}, dask="parallelized", output_dtypes=[np.int16])
    shape_cat = xr.DataArray(cats.shape, dims=("object",))
    tex_cat = xr.DataArray(cats.texture, dims=("texture",))
    computed = top_cat != NOT_COMPUTED
    conflict, control = computed & (shape_cat != tex_cat), computed & (shape_cat == tex_cat)
    decisions = xr.Dataset({
        "conflict_n": conflict, "control_n": control,
        "shape_top1": conflict & (top_cat == shape_cat), "texture_top1": conflict & (top_cat == tex_cat),
        "shape_forced": conflict & (forced == shape_cat), "texture_forced": conflict & (forced == tex_cat),
        "control_top1": control & (top_cat == shape_cat), "control_forced": control & (forced == shape_cat),
    }).drop_vars(["object", "texture"], errors="ignore")
    by_shape, by_texture = dask.compute(decisions.sum("texture"), decisions.sum("object"))  # one pass over the cube
    subsets = [by_shape.sum("object").expand_dims(subset=["all"]),
               by_shape.rename(object="subset").assign_coords(subset=[f"shape:{o}" for o in cube.objects]),
               by_texture.rename(texture="subset").assign_coords(subset=[f"texture:{_label(t)}" for t in texture_values])]
    counts = xr.concat(subsets, dim="subset").astype(np.int64)
    view_axes = [a for a in cube.axes if a not in ("object", "texture")]
    if not view_axes:
        counts = counts.expand_dims(view=[0])
    else:
        counts = counts.stack(view=view_axes)
        counts = counts.drop_vars([*view_axes, "view"]).assign_coords(view=np.arange(counts.sizes["view"]))
    counts = counts.assign_coords(model=[str(m) for m in ds[names.MODEL].values])
    return counts.transpose("view", "subset", names.MODEL)[list(COUNTS)], cats


def _ratios(ds: xr.Dataset) -> xr.Dataset:
    s = ds.sum("view")

    def ratio(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
        return (a / b.where(b > 0)).astype(np.float64)

    return xr.Dataset({
        "shape_bias_top1": ratio(s["shape_top1"], s["shape_top1"] + s["texture_top1"]),
        "shape_bias_forced": ratio(s["shape_forced"], s["shape_forced"] + s["texture_forced"]),
        "control_top1": ratio(s["control_top1"], s["control_n"]),
        "control_forced": ratio(s["control_forced"], s["control_n"]),
        "decided_top1": ratio(s["shape_top1"] + s["texture_top1"], s["conflict_n"]),
    })


LONG_NAMES = {
    "shape_bias_top1": "shape bias, top-1 among 1000 classes",
    "shape_bias_forced": "shape bias, forced choice among the study's categories",
    "control_top1": "control: own-category texture read as the shape (top-1)",
    "control_forced": "control: own-category texture read as the shape (forced choice)",
    "decided_top1": "share of conflict images with top-1 in the shape's or texture's category",
}


def _pct(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{100 * v:.0f} %"


def _rows(table: xr.Dataset, kind: str) -> list[str]:
    return [str(s) for s in table["subset"].values if str(s).startswith(kind + ":")]


def finding(table: xr.Dataset) -> str:
    """Each model's shape bias (both decisions) and control against the published values,
    the shape bias per texture, and the shapes whose control fails."""
    models = [str(m) for m in table[names.MODEL].values]
    v = {var: table[var].sel(subset="all") for var in table.data_vars if "subset" in table[var].dims}
    parts = [f"{m}: shape bias {_pct(float(v['shape_bias_top1'].sel(model=m)))} "
             f"[{_pct(float(v['shape_bias_top1_lo'].sel(model=m)))}, {_pct(float(v['shape_bias_top1_hi'].sel(model=m)))}]"
             f" by top-1 ({_pct(float(v['decided_top1'].sel(model=m)))} of conflict images decided), "
             f"{_pct(float(v['shape_bias_forced'].sel(model=m)))} by forced choice; control "
             f"{_pct(float(v['control_top1'].sel(model=m)))} by top-1, {_pct(float(v['control_forced'].sel(model=m)))} "
             f"by forced choice" for m in models]
    nearest = {m: min(PUBLISHED, key=lambda k: abs(PUBLISHED[k] - float(v["shape_bias_forced"].sel(model=m))))
               for m in models if np.isfinite(float(v["shape_bias_forced"].sel(model=m)))}
    near = "; ".join(f"{m} is nearest {k}" for m, k in nearest.items())
    per_texture = ", ".join(f"{t.split(':', 1)[1]} " + "/".join(
        _pct(float(table["shape_bias_top1"].sel(subset=t, model=m))).replace(" %", "") for m in models) + " %"
        for t in _rows(table, "texture"))
    weak = [f"{s.split(':', 1)[1]} on {m} ({_pct(float(table['control_top1'].sel(subset=s, model=m)))})"
            for m in models for s in _rows(table, "shape")
            if not float(table["control_top1"].sel(subset=s, model=m)) >= CONTROL_GOAL]
    control = (f" The control (top-1) is below {_pct(CONTROL_GOAL)} for {', '.join(weak)}: there the shape is not read "
               f"even in its own texture, and its share of the bias means little." if weak else
               f" The control (top-1) reaches {_pct(CONTROL_GOAL)} for every shape and model.")
    return ("; ".join(parts) + ". Published (Geirhos et al. 2019, 16-class forced choice): "
            + ", ".join(f"{k} {_pct(p)}" for k, p in PUBLISHED.items()) + f"; by forced choice {near}. "
            + f"Shape bias (top-1) per texture, {'/'.join(models)}: {per_texture}." + control)


def conflict_figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): shape bias per model (top-1 and forced choice,
    all images) against the published values; the control per shape; the shape bias per
    shape and per texture. Bars with 95 % intervals, one colour per model."""
    plt, hv = outputs.plotting()
    models = [str(m) for m in ds[names.MODEL].values]
    shapes, textures_ = _rows(ds, "shape"), _rows(ds, "texture")
    spec = [("shape bias, all images", [("shape_bias_top1", "all", "top-1"), ("shape_bias_forced", "all", "forced choice")],
             PUBLISHED),
            ("control: the shape in a texture of its own category, read as the shape (top-1)",
             [("control_top1", s, s.split(":")[-1]) for s in ["all", *shapes]], {"goal": CONTROL_GOAL}),
            ("shape bias (top-1) per shape and per texture",
             [("shape_bias_top1", s, s.replace("shape:", "").replace("texture:", "in ")) for s in [*shapes, *textures_]], {})]
    fig, axes = plt.subplots(len(spec), 1, figsize=(9, 3.3 * len(spec)))
    panels = []
    for ax, (label, groups, lines) in zip(axes, spec):
        width = 0.8 / len(models)
        bars = []
        for i, model in enumerate(models):
            x = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
            v, lo, hi = (np.array([float(ds[var + suffix].sel(subset=s, model=model)) for var, s, _ in groups])
                         for suffix in ("", "_lo", "_hi"))
            ax.bar(x, v, width, yerr=np.abs(np.nan_to_num(np.stack([v - lo, hi - v]))), capsize=2, label=model)
            bars += [(name, model, float(value)) for (_, _, name), value in zip(groups, v)]
        for name, value in lines.items():
            ax.axhline(value, ls="--", lw=0.8, color="grey")
            ax.text(len(groups) - 0.5, value, f" {name}", fontsize=7, va="center", ha="left")
        ax.set_xticks(range(len(groups)), [name for _, _, name in groups], fontsize=8, rotation=15)
        ax.set_ylim(0, 1.05)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        overlay = [hv.Bars(bars, ["group", names.MODEL], "value").opts(tools=["hover", "tap"], multi_level=False)]
        overlay += [hv.HLine(value).opts(line_dash="dashed", color="grey") for value in lines.values()]
        panels.append(hv.Overlay(overlay).opts(title=label, width=760, height=300, ylim=(0, 1.05)))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: 95 % bootstrap intervals over views; dashed: published shape bias or the control's goal",
                 fontsize=9)
    fig.tight_layout()
    return fig, hv.Layout(panels).cols(1)


@study("cue-conflict", cube="cue_conflict",
       definition=("Shapes (catalogue objects) wear image textures (catalogue textures with `classes`, box-projected "
                   "without UVs) in every view. The class sets of the shapes and textures are merged where they share "
                   "a class into disjoint categories (cat + tabby fur + Siamese fur = cat). A conflict image puts a "
                   "texture on a shape of another category. Top-1 decision: shape when the top-1 class among 1000 is "
                   "in the shape's category, texture when in the texture's. Forced-choice decision (Geirhos' 16-class "
                   "aggregation): the category with the highest MEAN softmax probability over its classes, among the "
                   "study's categories. shape_bias = shape decisions / (shape + texture decisions) over the conflict "
                   "images; decided_top1 = share of conflict images whose top-1 is in either category. Per model, "
                   "over all images ('all'), per shape ('shape:dog': the dog in every texture) and per texture "
                   "('texture:leopard': the leopard pattern on every shape)."),
       unit="view: one yaw × pitch (every shape × texture of the view counted together; ratios of sums over views)",
       control=("Each shape in a texture of its own category (the dog in dog fur, the cat in tabby or Siamese fur, the "
                "teddy bear in its burlap), through the same box projection: `control_top1` / `control_forced` = the "
                f"share of these images decided for the shape's category. Goal: at least {CONTROL_GOAL:.0%} on "
                "EfficientNet-Lite2. Where a shape fails its control, its share of the shape bias means nothing."),
       published=("Geirhos et al., ImageNet-trained CNNs are biased towards texture, ICLR 2019 (16-class forced choice "
                  "on style-transfer cue-conflict images): ImageNet-trained ResNet-50 shape bias ≈ 22 %, humans ≈ 96 %, "
                  "ResNet-50 trained on Stylized-ImageNet ≈ 81 %."),
       published_models=("resnet50", "resnet50_stylized"),
       figure=conflict_figure)
def cue_conflict(cube: Cube, aggregate: str = "mean") -> xr.Dataset:
    """Table, dims (subset, model), subsets 'all', 'shape:<object>' and 'texture:<id>' (:func:`per_view`):
    :data:`LONG_NAMES` with ``_lo``/``_hi`` over views, and the image counts ``conflict_images``, ``control_images``."""
    if aggregate not in ("mean", "sum"):
        raise StudyError(f"cue-conflict: aggregate must be 'mean' or 'sum', got {aggregate!r}")
    counts, cats = per_view(cube, aggregate)
    table = bootstrap(counts, unit="view", statistic=_ratios, sums=True).transpose("subset", names.MODEL)
    for var, long_name in LONG_NAMES.items():
        for suffix, extra in (("", ""), ("_lo", " (lower)"), ("_hi", " (upper)")):
            table[var + suffix].attrs.update({"long_name": long_name + extra, "units": "1"})
    total = counts.sum("view")
    table["conflict_images"] = total["conflict_n"].assign_attrs(long_name="conflict images", units="1")
    table["control_images"] = total["control_n"].assign_attrs(long_name="control images", units="1")
    table.attrs.update({"aggregate": aggregate, "categories": ", ".join(cats.names), "finding": ""})
    table.attrs["finding"] = finding(table)
    return table
