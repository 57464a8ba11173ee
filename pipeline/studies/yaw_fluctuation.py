"""yaw-fluctuation (Perturber paper, Figs. 12–13): how much a prototype view's top-10 logits move as the camera turns.

A *view* is one combination of the cube's axes other than ``object`` and
``yaw`` (here pitch × distance); for each object, view and model the camera
sweeps the yaw grid. The *prototype* is the grid yaw nearest
``prototype_yaw`` (−23.3°; the grid ``linspace(−70, 70, 7)`` holds −23.33°
itself, so the prototype is one of the seven yaws and every yaw step is the
same 23.3°). Per object, view and model:

- ``C``: the ``top`` (10) classes with the highest logits at the prototype;
- ``fluctuation``: the mean over the classes of ``C`` of the mean absolute
  change of that class's logit between neighbouring yaws (logit units per
  yaw step: the total variation of the top-10 traces, divided by steps × 10);
- ``spread``: the standard deviation of all 1000 logits at the prototype;
- ``fluctuation_norm``: ``fluctuation / spread`` (dimensionless: a model
  whose logits are a constant multiple of another's gets the same value);
- ``top1_changes``: the number of neighbouring yaw pairs whose top-1 class
  (among 1000) differs (0 to steps).

Logits are read lazily, in one blockwise pass over whole yaw sweeps: each
block picks ``C`` at its prototype, keeps only those classes' logits along the
sweep and reduces them, so no whole-cube logits array is ever in memory.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import xarray as xr
from perturber.pipeline import names
from perturber.pipeline.analysis import Cube, lazy
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies.bootstrap import bootstrap

__all__ = ["bars_figure", "per_view", "yaw_fluctuation"]

#: The grid yaw chosen as the prototype must lie this close to ``prototype_yaw`` (degrees).
TOLERANCE = 0.5
#: The published comparison: (standard, adversarially trained) registry entries.
PUBLISHED_PAIR = ("resnet50", "resnet50_robust_l2_eps3")
#: The label of the row averaged over every object and view.
ALL = "all"
#: variable → (long name, units, short axis label)
VARIABLES = {
    "fluctuation": ("mean |Δ logit| of the prototype's top-10 classes per yaw step", "logit", "fluctuation [logit/step]"),
    "fluctuation_norm": ("fluctuation / std of the 1000 logits at the prototype", "1", "fluctuation / logit spread"),
    "top1_changes": ("top-1 changes between neighbouring yaws", "count", "top-1 changes"),
}


def _sweep(logits: np.ndarray, proto: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(..., yaw, 1000) logits of whole yaw sweeps → (fluctuation, spread), each (...) float32.

    C = the ``top`` classes with the highest logits at yaw index ``proto``;
    fluctuation = the mean over C of the mean |Δ logit| between neighbouring
    yaws; spread = the std of the 1000 logits at the prototype. NaN when any
    yaw of the sweep is not computed.
    """
    z = logits.astype(np.float32)
    at_proto = z[..., proto, :]
    chosen = np.argpartition(-np.nan_to_num(at_proto, nan=-np.inf), top - 1, axis=-1)[..., :top] if top < 1000 \
        else np.broadcast_to(np.arange(1000), at_proto.shape)
    traces = np.take_along_axis(z, chosen[..., None, :], axis=-1)  # (..., yaw, top)
    fluctuation = np.abs(np.diff(traces, axis=-2)).mean(axis=(-2, -1))
    return fluctuation.astype(np.float32), at_proto.std(-1).astype(np.float32)


def per_view(cube: Cube, prototype_yaw: float = -23.3, top: int = 10) -> xr.Dataset:
    """``fluctuation``, ``spread``, ``fluctuation_norm`` and ``top1_changes`` per
    object, view and model: dims (*the cube's axes but yaw, model), computed.

    NaN where any yaw of the view is not computed.
    """
    if "yaw" not in cube.axes:
        raise StudyError(f"yaw-fluctuation needs a cube with a yaw axis; this one has {', '.join(cube.axes)}")
    if not 1 <= int(top) <= 1000:
        raise StudyError(f"yaw-fluctuation: top must be 1..1000 classes, got {top}")
    yaws = np.sort(cube.ds["yaw"].values.astype(float))
    if len(yaws) < 2:
        raise StudyError(f"yaw-fluctuation needs at least 2 yaws; the cube has {len(yaws)}")
    proto = float(yaws[np.argmin(np.abs(yaws - float(prototype_yaw)))])
    if abs(proto - float(prototype_yaw)) > TOLERANCE:
        raise StudyError(f"yaw-fluctuation: the prototype yaw {prototype_yaw:g}° is not on the cube's yaw grid "
                         f"(nearest {proto:g}°); set --param prototype_yaw=<a grid yaw>")
    logits = lazy(cube.ds[names.LOGITS]).sortby("yaw").chunk({"yaw": -1})  # each block holds whole yaw sweeps
    fluctuation, spread = xr.apply_ufunc(
        _sweep, logits, input_core_dims=[["yaw", names.CLASS]], output_core_dims=[[], []],
        kwargs={"proto": int(np.flatnonzero(yaws == proto)[0]), "top": int(top)}, dask="parallelized",
        output_dtypes=[np.float32, np.float32])
    top1 = lazy(cube.ds[names.TOP_CLASS]).isel({names.RANK: 0}, drop=True).sortby("yaw").astype(np.float32)
    top1 = top1.where(top1 >= 0)
    step = top1.diff("yaw")
    changes = xr.where(step.notnull(), (step != 0).astype(np.float32), np.nan).sum("yaw", skipna=False)
    fluctuation, spread, changes = dask.compute(fluctuation, spread, changes)  # one pass over the logits
    out = xr.Dataset({"fluctuation": fluctuation, "spread": spread, "fluctuation_norm": fluctuation / spread,
                      "top1_changes": changes})
    out.attrs["prototype_yaw"] = proto
    return out


def _units(values: xr.Dataset, views: list[str]) -> xr.Dataset:
    """Stack the view axes into one plain ``view`` dimension (0..n-1)."""
    if not views:
        return values.expand_dims(view=[0])
    stacked = values.stack(view=views)
    return stacked.drop_vars([*views, "view"]).assign_coords(view=np.arange(stacked.sizes["view"]))


def bars_figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): per variable, bars per object grouped by model, with intervals."""
    plt, hv = outputs.plotting()
    variables = [v for v in VARIABLES if v in ds]
    objects = [str(o) for o in ds["object"].values]
    models = [str(m) for m in ds[names.MODEL].values]
    fig, axes = plt.subplots(len(variables), 1, figsize=(8, 3.2 * len(variables)), squeeze=False)
    width = 0.8 / len(models)
    panels = []
    for ax, var in zip(axes[:, 0], variables):
        rows = []
        for j, model in enumerate(models):
            v, lo, hi = (ds[var + s].sel(model=model).values.astype(float) for s in ("", "_lo", "_hi"))
            x = np.arange(len(objects)) + (j - (len(models) - 1) / 2) * width
            ax.bar(x, v, width, yerr=np.abs(np.stack([v - lo, hi - v])), capsize=2, label=model)
            rows += [(o, model, vi, li, hi_) for o, vi, li, hi_ in zip(objects, v, lo, hi)]
        ax.set_xticks(np.arange(len(objects)), objects)
        ax.set_ylabel(VARIABLES[var][2], fontsize=8)
        ax.set_title(VARIABLES[var][0], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
        bars = hv.Bars(rows, ["object", "model"], [var, "lo", "hi"]).opts(tools=["hover", "tap"], multi_level=True)
        panels.append(bars.opts(title=VARIABLES[var][0][:80], width=720, height=300, xrotation=30))
    fig.suptitle(f"{title}: prototype yaw {ds.attrs.get('prototype_yaw', -23.3):.3g}°, 95 % bootstrap intervals")
    fig.tight_layout()
    return fig, hv.Layout(panels).cols(1)


@study("yaw-fluctuation", cube="yaw_fluctuation",
       definition=("Per object, view (pitch × distance) and model, with the prototype at the grid yaw nearest −23.3° "
                   "(the 7 yaws linspace(−70°, 70°, 7) include −23.33°): C = the 10 classes with the highest logits at "
                   "the prototype. `fluctuation` = mean over the classes of C of the mean absolute change of the "
                   "class's logit between neighbouring yaws (logit units per 23.3° step). `fluctuation_norm` = "
                   "fluctuation / the standard deviation of all 1000 logits at the prototype view (dimensionless, "
                   "invariant to a model's logit scale). `top1_changes` = how many of the 6 neighbouring yaw pairs "
                   "change the top-1 class (among 1000). Each is the mean over the object's 4 views (object = dog, "
                   "...) or over all 16 object-views (object = all)."),
       unit="view: one pitch × distance combination of one object (4 per object, 16 for 'all')",
       control=("Logit scale: a model with larger logits fluctuates more in raw units for no other reason, so "
                "fluctuation_norm divides by each view's logit spread, and top1_changes counts decisions, which "
                "no scale changes. A ranking of models that holds raw but not normalised is a scale effect."),
       published=("Sietzen et al., Interactive Analysis of CNN Robustness (Perturber), CGF 2021, Figs. 12–13: the "
                  "adversarially trained ResNet-50 fluctuates more than the standard ResNet-50 on 3 of 4 objects."),
       published_models=PUBLISHED_PAIR, figure=bars_figure)
def yaw_fluctuation(cube: Cube, prototype_yaw: float = -23.3, top: int = 10) -> xr.Dataset:
    """Table: ``fluctuation``, ``fluctuation_norm``, ``top1_changes`` (each with
    ``_lo``/``_hi``), dims (object: the cube's objects then ``all``, model)."""
    values = per_view(cube, prototype_yaw, top)[list(VARIABLES)]
    views = [a for a in cube.axes if a not in ("object", "yaw")]
    if "object" not in values.dims:
        values = values.expand_dims(object=cube.objects)
    per_object = bootstrap(_units(values, views), unit="view")
    overall = bootstrap(_units(values, ["object", *views]), unit="view").expand_dims(object=[ALL])
    table = xr.concat([per_object, overall], dim="object", combine_attrs="override")
    table = table.assign_coords(object=np.array([str(o) for o in table["object"].values], dtype=object))
    table = table.transpose("object", names.MODEL)
    for var, (long_name, units, _) in VARIABLES.items():
        for suffix in ("", "_lo", "_hi"):
            table[var + suffix].attrs.update({"long_name": long_name + {"": "", "_lo": " (lower)", "_hi": " (upper)"}[suffix],
                                              "units": units})
    table.attrs["prototype_yaw"] = values.attrs.get("prototype_yaw", prototype_yaw)
    table.attrs["bootstrap_units"] = f"{per_object.attrs['bootstrap_units']} per object, {overall.attrs['bootstrap_units']} for all"
    table.attrs["finding"] = finding(table)
    return table


def _pair(models: list[str]) -> tuple[str, str]:
    """The two models to compare: the published pair when present, else the first and last."""
    return PUBLISHED_PAIR if set(PUBLISHED_PAIR) <= set(models) else (models[0], models[-1])


def finding(table: xr.Dataset) -> str:
    """Which of two models fluctuates more on how many objects, raw and normalised, and the overall ranking.

    "Apart" counts the objects whose two intervals do not overlap (a conservative test of a difference).
    """
    models = [str(m) for m in table[names.MODEL].values]
    published = ("Published: the adversarially trained ResNet-50 fluctuates more than the standard one on 3 of 4 "
                 "objects")
    if len(models) < 2:
        return f"One model ({models[0]}): nothing to compare. {published}."
    a, b = _pair(models)
    objects = [o for o in table["object"].values if o != ALL]
    parts, ranking, wins = [], {}, {}
    for var, label in (("fluctuation", "raw"), ("fluctuation_norm", "normalised")):
        at = {m: {s: table[var + s].sel(model=m) for s in ("", "_lo", "_hi")} for m in (a, b)}
        more = [o for o in objects if float(at[b][""].sel(object=o)) > float(at[a][""].sel(object=o))]
        apart = [o for o in objects if float(at[b]["_lo"].sel(object=o)) > float(at[a]["_hi"].sel(object=o))
                 or float(at[a]["_lo"].sel(object=o)) > float(at[b]["_hi"].sel(object=o))]
        va, vb = float(at[a][""].sel(object=ALL)), float(at[b][""].sel(object=ALL))
        ranking[label], wins[label] = vb > va, len(more)
        parts.append(f"{label}: {b} fluctuates more than {a} on {len(more)} of {len(objects)} objects "
                     f"(intervals apart on {len(apart)}; all object-views: {vb:.3g} vs {va:.3g})")
    flip = ("the overall ranking flips after normalisation" if ranking["raw"] != ranking["normalised"]
            else "the overall ranking is the same raw and normalised")
    ch = table["top1_changes"].sel(object=ALL)
    changes = f"top-1 changes per sweep: {float(ch.sel(model=b)):.2g} ({b}) vs {float(ch.sel(model=a)):.2g} ({a})"
    if (a, b) == PUBLISHED_PAIR:
        published += f"; here {wins['raw']} of {len(objects)} raw and {wins['normalised']} normalised"
    else:
        published += f" (models not in this run: `--models {','.join(PUBLISHED_PAIR)}`)"
    return f"{'; '.join(parts)}; {flip}; {changes}. {published}."
