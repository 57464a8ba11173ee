"""frequency (Yin et al. 2019, "A Fourier perspective on model robustness in computer vision"): class-set
probability against each Laplacian band gain and against blur, and low- against
high-band sensitivity per model.

The study reads five cubes that share their *scenes* (every combination of
their other axes: object × yaw in ``workflows/studies/frequency.yaml``):

- ``freq_clean``: the scenes unchanged (every band gain 1, no blur): the control;
- ``freq_band_low``, ``freq_band_mid``, ``freq_band_high``: one band gain
  swept (0 removes the band, 1 leaves it, 4 amplifies it), the others at 1;
- ``freq_blur``: the Gaussian blur swept (standard deviation in pixels).

Per model, manipulation ``f``, level ``x`` (a gain, or a blur in pixels) and scene ``s``:

- ``set_prob``: the class-set probability (total softmax probability of the
  object's classes) of the manipulated image;
- ``in_set``: 1 when its top-1 class is one of the object's classes, else 0;
- ``drop``: ``set_prob`` of the clean scene minus ``set_prob`` at ``(f, x)``
  (positive: the manipulation costs probability); the *sensitivity* to a
  band is its ``drop`` at gain 0 (the band removed);
- ``low_minus_high``: ``drop(band_low, x) - drop(band_high, x)`` at every gain
  ``x`` both band cubes hold: positive where the low band matters more than
  the high band (at gain 0, removing it costs more; at gain 4, amplifying it).

Each is averaged over scenes (the independent unit), with percentile
bootstrap intervals that resample whole scenes (every variable together, so
the paired differences keep their pairing).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from perturber.pipeline import names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies.bootstrap import bootstrap
from perturber.pipeline.studies.samples import per_sample

__all__ = ["frequency", "per_scene", "figure", "CUBES", "CLEAN", "FACTORS"]

BANDS = ("band_low", "band_mid", "band_high")
FACTORS = (*BANDS, "blur")
#: The cube that holds the scenes unchanged, and the cube of each manipulation.
CLEAN = "freq_clean"
CUBES = {f: f"freq_{f}" for f in FACTORS}
#: The published comparison: (standard, adversarially trained) registry entries.
PUBLISHED_PAIR = ("resnet50", "resnet50_robust_linf_eps4")
VARIABLES = {
    "set_prob": ("class-set probability", "1"),
    "in_set": ("share of top-1 in the object's class set", "1"),
    "drop": ("drop in class-set probability from the clean image", "1"),
    "low_minus_high": ("drop(band_low) - drop(band_high) at this gain", "1"),
}

DEFINITION = (
    "Five cubes share their scenes (object × yaw): the clean scenes, and one cube per manipulation "
    "(band_low, band_mid, band_high: one Laplacian band gain swept from 0 (band removed) to 4, the others at 1; "
    "blur: a Gaussian blur of 0 to 4 px). Per model, manipulation and level (a gain, or a blur in pixels): "
    "`set_prob`, the mean over scenes of the class-set probability (total softmax probability of the object's "
    "classes, data/catalogue.yaml); `in_set`, the share of scenes whose top-1 class is in the object's class set; "
    "`drop`, the mean over scenes of the clean scene's class-set probability minus the manipulated one's. The "
    "*sensitivity* to a band is its `drop` at gain 0 (the band removed). `low_minus_high` at gain g is "
    "drop(band_low, g) − drop(band_high, g), paired per scene: positive where the low band matters more than "
    "the high band.")


def _values(cube: Cube, factor: str | None) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(scene axes, their grid values, {set_prob, in_set}: (scenes, levels, models)) of one cube;
    ``factor`` None: the clean cube (one level)."""
    scene_axes = [a for a in cube.axes if a != factor]
    s = per_sample(cube)[["set_prob", "in_set"]]
    order = [*scene_axes, *([factor] if factor else []), names.MODEL]
    s = s.transpose(*order).compute()
    scenes = int(np.prod([s.sizes[a] for a in scene_axes]))
    out = {v: s[v].values.reshape(scenes, -1, s.sizes[names.MODEL]) for v in ("set_prob", "in_set")}
    return scene_axes, {a: s[a].values for a in scene_axes}, out


def _same_scenes(name: str, axes: list[str], coords: dict[str, np.ndarray], clean_axes: list[str],
                 clean_coords: dict[str, np.ndarray]) -> None:
    if axes != clean_axes or any(not np.array_equal(coords[a], clean_coords[a]) for a in axes):
        raise StudyError(f"frequency: cube {name!r} has the scenes {', '.join(f'{a}={list(coords[a])}' for a in axes)}, "
                         f"but {CLEAN!r} has {', '.join(f'{a}={list(clean_coords[a])}' for a in clean_axes)}; "
                         "every frequency cube must vary the same scene axes with the same values")


def per_scene(cubes: dict[str, Cube]) -> xr.Dataset:
    """The study's quantities per scene, computed: ``set_prob``, ``in_set`` and
    ``drop`` (scene, factor, level, model), ``low_minus_high`` (scene, level, model).

    ``level`` is the sorted union of the manipulations' values (gains and blur
    pixels); NaN where a manipulation lacks a level.
    """
    clean = cubes[CLEAN]
    models = clean.models
    for factor, name in CUBES.items():
        cube = cubes[name]
        if factor not in cube.axes:
            raise StudyError(f"frequency: cube {name!r} must sweep {factor!r}; its axes are {', '.join(cube.axes)}")
        if cube.models != models:
            raise StudyError(f"frequency: cube {name!r} holds the models {cube.models}, {CLEAN!r} holds {models}")
    clean_axes, clean_coords, clean_values = _values(clean, None)
    if any(f in clean_axes for f in FACTORS):
        raise StudyError(f"frequency: the clean cube {CLEAN!r} must not sweep a band gain or blur (axes: {', '.join(clean_axes)})")
    swept = {f: [float(v) for v in cubes[CUBES[f]].ds[f].values] for f in FACTORS}
    levels = sorted({v for values in swept.values() for v in values})
    shape = (int(np.prod([len(v) for v in clean_coords.values()])), len(FACTORS), len(levels), len(models))
    data = {v: np.full(shape, np.nan, dtype=np.float64) for v in ("set_prob", "in_set")}
    for i, factor in enumerate(FACTORS):
        axes, coords, values = _values(cubes[CUBES[factor]], factor)
        _same_scenes(CUBES[factor], axes, coords, clean_axes, clean_coords)
        where = [levels.index(v) for v in swept[factor]]
        for v in data:
            data[v][:, i, where, :] = values[v]
    data["drop"] = clean_values["set_prob"][:, :, None, :] - data["set_prob"]  # (scene, 1, models) against every cell
    low, high = FACTORS.index("band_low"), FACTORS.index("band_high")
    dims = ("scene", "factor", "level", names.MODEL)
    ds = xr.Dataset({v: (dims, data[v], {"long_name": VARIABLES[v][0], "units": VARIABLES[v][1]}) for v in data},
                    coords={"factor": np.array(FACTORS, dtype=object),
                            "level": ("level", np.array(levels), {"long_name": "band gain (band_*) or blur (pixels)",
                                                                  "units": "gain or pixels"}),
                            names.MODEL: np.array(models, dtype=object)})
    ds["low_minus_high"] = (ds["drop"].isel(factor=low, drop=True) - ds["drop"].isel(factor=high, drop=True)).assign_attrs(
        long_name=VARIABLES["low_minus_high"][0], units="1")
    ds.attrs["clean_set_prob"] = [float(x) for x in np.nanmean(clean_values["set_prob"][:, 0, :], axis=0)]
    return ds


def _finding(table: xr.Dataset) -> str:
    """Our low- against high-band comparison per model (removal at gain 0, amplification at the
    largest gain both bands hold), next to Yin et al.'s."""
    if 0.0 not in table["level"].values:
        return "The band cubes hold no gain 0, so the band-removal sensitivities are not measured."
    both = table["low_minus_high"].isel({names.MODEL: 0}).dropna("level")["level"].values
    top = float(both.max())
    models = [str(m) for m in table[names.MODEL].values]
    parts, low_more, high_more = [], [], []
    for m in models:
        row = table.sel({names.MODEL: m})
        drop = {(f, g): float(row["drop"].sel(factor=f, level=g)) for f in ("band_low", "band_high") for g in (0.0, top)}
        d, lo, hi = (float(row[f"low_minus_high{s}"].sel(level=0.0)) for s in ("", "_lo", "_hi"))
        (low_more if lo > 0 else high_more if hi < 0 else []).append(m)
        text = (f"{m}: removing the low band costs {drop['band_low', 0.0]:.3f} of class-set probability, the high band "
                f"{drop['band_high', 0.0]:.3f} (difference {d:+.3f} [{lo:+.3f}, {hi:+.3f}])")
        if top > 1:
            text += f"; amplifying them ×{top:g} costs {drop['band_low', top]:.3f} and {drop['band_high', top]:.3f}"
        parts.append(text)
    verdict = (f"Removing the low band costs more than removing the high band for {len(low_more)} of {len(models)} models "
               f"(the interval of the difference above 0), the reverse for {len(high_more)}")
    return ("; ".join(parts) + f". {verdict}. Yin et al. find naturally trained models sensitive to high-frequency "
            "content that humans barely see, and adversarial training moving that sensitivity to low frequencies; "
            f"the published pair ({', '.join(PUBLISHED_PAIR)}) needs internet.")


def figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): class-set probability against each
    manipulation's level (one panel per manipulation, one line per model, shaded
    interval), ``low_minus_high`` against the gain, and each band's sensitivity
    (its drop at gain 0) per model."""
    plt, hv = outputs.plotting()
    panels = [("set_prob", f) for f in ds["factor"].values] + [("low_minus_high", None)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    hv_panels = []
    for ax, (var, factor) in zip(axes.ravel(), panels):
        sel = {} if factor is None else {"factor": factor}
        overlay = []
        for m in ds[names.MODEL].values:
            v, lo, hi = (ds[var + s].sel({**sel, names.MODEL: m}) for s in ("", "_lo", "_hi"))
            keep = np.isfinite(v.values)
            x = ds["level"].values[keep]
            ax.plot(x, v.values[keep], marker="o", label=str(m))
            ax.fill_between(x, lo.values[keep], hi.values[keep], alpha=0.2)
            overlay.append(hv.Curve((x, v.values[keep]), "level", var, label=str(m)).opts(tools=["hover", "tap"]))
            overlay.append(hv.Spread((x, v.values[keep], v.values[keep] - lo.values[keep], hi.values[keep] - v.values[keep]),
                                     "level", [var, "lo", "hi"], label=str(m)).opts(alpha=0.2))
        name = str(factor) if factor else "low band minus high band"
        ax.set_title(name)
        ax.set_xlabel("blur [pixels]" if factor == "blur" else "gain")
        ax.set_ylabel(VARIABLES[var][0], fontsize=8)
        if var == "low_minus_high":
            ax.axhline(0, color="k", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        hv_panels.append(hv.Overlay(overlay).opts(title=f"{name}: {VARIABLES[var][0]}", width=420, height=300,
                                                  show_legend=True))
    ax = axes.ravel()[len(panels)]
    if 0.0 in ds["level"].values:  # the sensitivities: each band removed
        models = [str(m) for m in ds[names.MODEL].values]
        width = 0.8 / len(models)
        rows = []
        for j, m in enumerate(models):
            v, lo, hi = (np.array([float(ds["drop" + s].sel({names.MODEL: m, "factor": b, "level": 0.0})) for b in BANDS])
                         for s in ("", "_lo", "_hi"))
            ax.bar(np.arange(len(BANDS)) + (j - (len(models) - 1) / 2) * width, v, width,
                   yerr=np.abs(np.stack([v - lo, hi - v])), capsize=2, label=m)
            rows += [(b, m, v[i], lo[i], hi[i]) for i, b in enumerate(BANDS)]
        ax.set_xticks(range(len(BANDS)), BANDS)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title("sensitivity: the band removed (gain 0)")
        ax.set_ylabel(VARIABLES["drop"][0], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
        hv_panels.append(hv.Bars(rows, ["band", "model"], ["drop", "lo", "hi"]).opts(
            tools=["hover", "tap"], title="sensitivity: drop with the band removed (gain 0)", width=420, height=300))
    else:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig, hv.Layout(hv_panels).cols(3)


@study("frequency", cube=(CLEAN, *CUBES.values()), definition=DEFINITION,
       unit="scene (one object from one view: a combination of the axes other than the manipulation)",
       control="The clean scene (every band gain 1, no blur) of the same object and view: every drop is measured "
               "from it, pair by pair; gain 1 in each band cube re-synthesises the clean image through the "
               "Laplacian pyramid, so its drop must be about 0 (a check of the band operation itself).",
       published="Yin et al. 2019 (NeurIPS), A Fourier perspective on model robustness in computer vision: naturally "
                 "trained models use high-frequency content that humans barely perceive (they classify high-pass filtered "
                 "images well above chance); adversarial training and Gaussian augmentation make models less sensitive "
                 "to high-frequency corruptions and more sensitive to low-frequency ones (Fourier heat maps of the error "
                 "under additive Fourier-basis noise).",
       published_models=PUBLISHED_PAIR, figure=figure)
def frequency(cubes: dict[str, Cube]) -> xr.Dataset:
    """The table: ``set_prob``, ``in_set``, ``drop`` (factor, level, model) and
    ``low_minus_high`` (level, model), each with its bootstrap interval over scenes."""
    scenes = per_scene(cubes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # levels a manipulation lacks: all-NaN, by design
        table = bootstrap(scenes, "scene")
    table.attrs["clean_set_prob"] = scenes.attrs["clean_set_prob"]
    table.attrs["finding"] = _finding(table)
    return table
