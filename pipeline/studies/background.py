"""background (Xiao et al.'s Background Challenge, as the Perturber paper used it): does the background decide?

**In-scene.** Every object of the cube, seen from every view (yaw × pitch),
is composited on every background of the cube's ``background`` axis (the
catalogue's photos and colours) and on ``none`` (transparent, which a model
sees as black: the object alone, as IN-9's only_fg). An *object-view* is one
combination of every axis but ``background``; it is the independent unit.
A sample is *correct* when its top-1 class among the 1000 is one of the
object's classes (data/catalogue.yaml; ``in_set`` of
:func:`~perturber.pipeline.studies.samples.per_sample`). Per model:

- ``accuracy`` on background b: the share of object-views correct on b;
- ``adversarial``: the share of object-views correct on *every* background
  of the axis but ``none`` (Xiao et al.'s adversarial-background accuracy:
  correct on all backgrounds tested; no background flips the decision).
  ``none`` is not required: it is the control, and it looks like ``black``,
  which the catalogue holds;
- ``adversarial_given_none``: among the object-views correct on ``none``,
  the share correct on every background (the views the model knows alone
  that no background takes away).

Chance, per row: ``chance`` is the best constant classifier's accuracy
(Xiao et al.'s reference: "a model that always predicts dog has 11 %"):
always answering the one class that lies in the most object-views' class
sets; it is the same for ``accuracy`` and ``adversarial`` (a constant answer
is never flipped) and undefined for ``adversarial_given_none``.
``chance_random`` is a uniformly random top-1 among the 1000 classes: the mean
over object-views of |class set| / 1000 (to the power of the number of
backgrounds for ``adversarial``).

**IN-9** (:mod:`.in9`), with the parameter ``in9=<folder>``: the cube's
models on every image of each variant present, accuracy per variant with
intervals over images, and the BG-gap (mixed_same − mixed_rand).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from perturber.pipeline import names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies import in9 as in9_data
from perturber.pipeline.studies.bootstrap import bootstrap
from perturber.pipeline.studies.samples import per_sample, set_table

__all__ = ["background", "per_scene", "in_scene_table", "chance", "figure", "NONE"]

#: The background value that leaves the object alone (transparent: black to the model).
NONE = "none"
#: The published adversarial-background accuracies on IN-9 (Xiao et al. 2020, as the Perturber paper quotes them).
PUBLISHED = {"resnet50": 0.223, "resnet50_robust_l2_eps3": 0.123}
#: Xiao et al.'s IN-9 table for the standard ResNet-50 (github.com/MadryLab/backgrounds_challenge README).
PUBLISHED_IN9 = {"original": 0.956, "mixed_same": 0.862, "mixed_rand": 0.789, "bg_gap": 0.073}
IN9_HINT = ("IN-9 not evaluated: download the test sets of github.com/MadryLab/backgrounds_challenge (releases), "
            "unpack them and add `--param in9=<folder>` (the folder holding original/, mixed_same/, mixed_rand/, ...).")


def per_scene(cube: Cube) -> xr.Dataset:
    """Per object-view: ``correct`` (scene, background, model), 1.0/0.0 (NaN: not
    computed, or an object without classes), and ``robust`` (scene, model): 1.0
    when correct on every background but ``none`` (NaN when any is NaN).
    Coordinates: ``background``, ``model`` and ``object`` along ``scene``."""
    if "background" not in cube.axes:
        raise StudyError(f"the background study needs a cube with a background axis; this one has {', '.join(cube.axes)}")
    backgrounds = [str(b) for b in cube.ds["background"].values]
    tested = [b for b in backgrounds if b != NONE]
    if not tested:
        raise StudyError("the background study needs at least one background besides 'none' on the cube's background axis")
    others = [a for a in cube.axes if a != "background"]
    in_set = per_sample(cube)["in_set"].transpose(*others, "background", names.MODEL)
    values = np.asarray(in_set.data.compute() if in_set.chunks else in_set.values, dtype=np.float32)
    scenes = int(np.prod([cube.ds.sizes[a] for a in others])) if others else 1
    values = values.reshape(scenes, len(backgrounds), len(cube.models))
    if "object" in others:  # each object-view's object, for the chance levels
        grid = np.meshgrid(*[np.arange(cube.ds.sizes[a]) for a in others], indexing="ij")
        objects = np.array(cube.objects, dtype=object)[grid[others.index("object")].ravel()]
    else:
        objects = np.array([cube.objects[0]] * scenes, dtype=object)
    correct = xr.DataArray(values, dims=("scene", "background", names.MODEL),
                           coords={"background": np.array(backgrounds, dtype=object),
                                   names.MODEL: np.array(cube.models, dtype=object), "object": ("scene", objects)})
    if np.isnan(values).all():
        raise StudyError("the background study found no computed sample of an object with ImageNet classes "
                         "(objects: " + ", ".join(cube.objects) + ")")
    robust = correct.sel(background=tested).min("background", skipna=False)
    return xr.Dataset({"correct": correct, "robust": robust})


def chance(objects: np.ndarray, tested: int) -> dict[str, tuple[float, float]]:
    """Chance levels for object-views of these ``objects`` (one per view; objects without classes
    are left out) and ``tested`` backgrounds: kind → (best constant classifier, uniformly random top-1),
    kinds ``accuracy``, ``adversarial`` and ``adversarial_given_none``."""
    ids, counts = np.unique(np.asarray(objects, dtype=str), return_counts=True)
    table = set_table(list(ids))
    keep = table.any(1)
    table, w = table[keep], counts[keep] / counts[keep].sum()
    constant = float((w[:, None] * table).sum(0).max())
    p = table.sum(1) / 1000
    return {"accuracy": (constant, float((w * p).sum())),
            "adversarial": (constant, float((w * p ** tested).sum())),
            "adversarial_given_none": (float("nan"), float("nan"))}


def _statistic(ds: xr.Dataset) -> xr.DataArray:
    """Accuracy per background, adversarial and adversarial_given_none, over ``scene`` (see the module)."""
    rows = [ds.correct.mean("scene").rename(background="condition"),
            ds.robust.mean("scene").expand_dims(condition=["adversarial"])]
    if NONE in ds["background"].values:
        alone = ds.correct.sel(background=NONE, drop=True)
        ok = alone.notnull() & ds.robust.notnull()
        with np.errstate(all="ignore"):
            given = (ds.robust * alone).where(ok).sum("scene") / alone.where(ok).sum("scene")
        rows.append(given.where(alone.where(ok).sum("scene") > 0).expand_dims(condition=["adversarial_given_none"]))
    return xr.concat(rows, dim="condition").rename("accuracy")


def in_scene_table(scenes: xr.Dataset) -> xr.Dataset:
    """The in-scene rows: ``accuracy`` (+ intervals over object-views), ``chance``,
    ``chance_random`` and ``units`` (object-views with a class set), dims (condition, model)."""
    data = scenes.drop_vars("object")
    table = bootstrap(data, unit="scene", statistic=_statistic)
    tested = int((scenes["background"] != NONE).sum())
    levels = chance(scenes["object"].values, tested)
    kinds = ["accuracy" if c not in levels else c for c in table["condition"].values]
    units = int(scenes.correct.notnull().any(("background", names.MODEL)).sum())
    return table.assign(chance=("condition", [levels[k][0] for k in kinds]),
                        chance_random=("condition", [levels[k][1] for k in kinds]),
                        units=("condition", [units] * len(kinds)))


def _pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:.1f} %"


def _finding(ds: xr.Dataset) -> str:
    adv = ds.sel(condition="adversarial")
    parts = [f"{m} {_pct(float(adv.accuracy.sel(model=m)))} [{_pct(float(adv.accuracy_lo.sel(model=m)))}, "
             f"{_pct(float(adv.accuracy_hi.sel(model=m)))}]" for m in ds[names.MODEL].values]
    text = (f"In-scene adversarial-background accuracy: {'; '.join(parts)} (chance, a constant classifier: "
            f"{_pct(float(adv.chance))}); published on IN-9: ResNet-50 22.3 %, adversarially trained 12.3 %, chance 11.1 %.")
    models = [str(m) for m in ds[names.MODEL].values]
    if all(m in models for m in PUBLISHED):
        ours = {m: float(adv.accuracy.sel(model=m)) for m in PUBLISHED}
        same = ours["resnet50_robust_l2_eps3"] < ours["resnet50"]
        text += (f" The adversarially trained model is {'below' if same else 'not below'} the standard one here"
                 f"{', as published' if same else ', unlike the published result'}.")
    if "in9_bg_gap" in ds["condition"].values:
        gap = ds.accuracy.sel(condition="in9_bg_gap")
        text += (" IN-9 BG-gap (mixed_same − mixed_rand): " + "; ".join(f"{m} {_pct(float(gap.sel(model=m)))}" for m in models)
                 + f" (published, ResNet-50: {_pct(PUBLISHED_IN9['bg_gap'])}).")
    elif not any(str(c).startswith("in9_") for c in ds["condition"].values):
        text += " " + IN9_HINT
    return text


def figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): accuracy per condition, one bar per model with its
    interval and the constant-classifier chance as a black tick; in-scene and IN-9 rows in separate panels."""
    plt, hv = outputs.plotting()
    parts = [p for p in ("in-scene", "IN-9") if p in set(ds["part"].values)]
    models = [str(m) for m in ds[names.MODEL].values]
    fig, axes = plt.subplots(len(parts), 1, figsize=(max(8, 0.9 * ds.sizes["condition"]), 3.8 * len(parts)), squeeze=False)
    panels = []
    width = 0.8 / max(len(models), 1)
    for ax, part in zip(axes[:, 0], parts):
        sub = ds.where(ds["part"] == part, drop=True)
        conditions = [str(c) for c in sub["condition"].values]
        x = np.arange(len(conditions))
        rows = []
        for i, m in enumerate(models):
            v, lo, hi = (sub[k].sel(model=m).values.astype(float) for k in ("accuracy", "accuracy_lo", "accuracy_hi"))
            err = np.abs(np.nan_to_num(np.stack([v - lo, hi - v])))
            ax.bar(x + (i - (len(models) - 1) / 2) * width, v, width, yerr=err, capsize=2, label=m)
            rows += [(c, m, 100 * a, 100 * b, 100 * d) for c, a, b, d in zip(conditions, v, lo, hi)]
        ax.scatter(x, sub["chance"].values.astype(float), marker="_", s=400, color="black", zorder=3,
                   label="chance (constant classifier)")
        ax.set_xticks(x, conditions, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy" if part == "in-scene" else "IN-9 accuracy (BG-gap: difference)", fontsize=8)
        ax.set_title(f"{part}: top-1 in the object's class set" if part == "in-scene" else "IN-9 (Xiao et al. 2020)",
                     fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        if "adversarial" in conditions:  # the per-background rows, then the summaries over backgrounds
            ax.axvline(conditions.index("adversarial") - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(min(0.0, float(np.nanmin(sub["accuracy_lo"].values)) - 0.05), 1.3)
        ax.set_yticks([t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= 1.0 + 1e-9])  # the headroom is the legend's
        ax.legend(fontsize=7, ncol=len(models) + 1, loc="upper left")
        bars = hv.Bars(rows, ["condition", "model"], ["accuracy %", "lo %", "hi %"])
        panels.append(bars.opts(tools=["hover", "tap"], xrotation=45, width=900, height=360, title=part,
                                multi_level=False))
    fig.suptitle(title)
    fig.tight_layout()
    return fig, hv.Layout(panels).cols(1)


def _folders(in9: Any, in9_limit: Any) -> list | None:
    """The IN-9 folders to evaluate (None without ``in9``); a bad folder is a one-line error."""
    if in9 in (None, ""):
        return None
    return in9_data.scan(in9, None if in9_limit in (None, "") else in9_limit)


@study("background", cube="background_scenes",
       definition="In-scene: every object-view (object × yaw × pitch) on every background of the catalogue and on "
                  "'none' (transparent, black to the model). A sample is correct when its top-1 class among the 1000 "
                  "is one of the object's classes (data/catalogue.yaml). Per model: accuracy on each background = the "
                  "share of object-views correct on it; adversarial = the share of object-views correct on every "
                  "background of the axis except 'none' (Xiao et al.'s adversarial-background accuracy: no background "
                  "flips the decision); adversarial_given_none = the same share among the object-views correct on "
                  "'none'. chance = the best constant classifier (always the class in the most object-views' sets; "
                  "Xiao et al.'s 'always dog' reference, 11.1 % on IN-9); chance_random = a uniformly random top-1 "
                  "among 1000 (mean |class set| / 1000, to the power of the number of backgrounds for adversarial). "
                  "IN-9 (parameter in9=<folder>): top-1 among 1000 mapped to the nine IN-9 classes by the challenge's "
                  "in_to_in9 table (other classes: wrong); accuracy per variant (original, mixed_same, mixed_rand, "
                  "only_fg, no_fg, ...) and the BG-gap = accuracy(mixed_same) − accuracy(mixed_rand).",
       unit="object-view (object × yaw × pitch: one render, shared by every background); IN-9 rows: image "
            "(the BG-gap: the foreground both mixed variants share)",
       control="'none' (the object alone on black, like IN-9's only_fg) and the plain colours (white, grey, black): "
               "a model that misreads the object alone cannot be judged on what backgrounds take away; "
               "adversarial_given_none measures the flips among the views it reads alone. On IN-9: original and only_fg.",
       published="Xiao et al. 2020 (Noise or Signal: The Role of Image Backgrounds in Object Recognition), as the "
                 "Perturber paper used it, on IN-9: adversarial-background accuracy of the standard ResNet-50 22.3 %, "
                 "adversarially trained ResNet-50 12.3 %, chance (always 'dog') 11.1 %. IN-9 table, ResNet-50: "
                 "original 95.6 %, mixed_same 86.2 %, mixed_rand 78.9 %, BG-gap 7.3 %.",
       published_models=("resnet50", "resnet50_robust_l2_eps3"),
       figure=figure, check=lambda in9=None, in9_limit=None: _folders(in9, in9_limit) and None)
def background(cube: Cube, in9: Any = None, in9_limit: Any = None) -> xr.Dataset:
    """The study's table: dims (condition, model); conditions: each background, ``adversarial``,
    ``adversarial_given_none``, then ``in9_<variant>`` and ``in9_bg_gap`` with ``in9``."""
    folders = _folders(in9, in9_limit)
    scenes = per_scene(cube)
    table = in_scene_table(scenes)
    n_scenes = int(table["units"].values[0])
    table = table.assign_coords(part=("condition", ["in-scene"] * table.sizes["condition"]))
    attrs = dict(table.attrs)
    unit = "object-view (object × yaw × pitch)"
    if folders is not None:
        per_image = in9_data.evaluate(folders, cube.models)
        rows = in9_data.table(per_image)
        rows = rows.assign_coords(part=("condition", ["IN-9"] * rows.sizes["condition"]))
        table = xr.concat([table, rows], dim="condition", combine_attrs="drop")
        unit += f"; the in9 rows resample {per_image.sizes['image']} images (the BG-gap: foregrounds)"
    table["condition"] = table["condition"].astype(object)
    table.attrs.update({**attrs, "bootstrap_unit": unit, "bootstrap_units": n_scenes})
    for var, text in [("accuracy", "share correct (top-1 in the object's class set; IN-9: mapped top-1 = label)"),
                      ("chance", "chance: best constant classifier"), ("chance_random", "chance: uniformly random top-1")]:
        table[var].attrs.update({"long_name": text, "units": "1"})
    table["units"].attrs.update({"long_name": "independent units (object-views or images)", "units": "1"})
    table.attrs["finding"] = _finding(table)
    return table
