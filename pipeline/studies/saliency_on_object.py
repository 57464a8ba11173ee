"""saliency-on-object (Tsipras et al. 2019): the share of input-gradient mass that falls on the object.

Per sample (a stored model-input image x, (S, S, 3), with its stored object
``mask``: the render's alpha a ∈ [0, 1] before the image factors) and model:

- ``c``: the class whose logit is differentiated. ``target="object"`` (the
  default): the class of the object's set (data/catalogue.yaml) with the
  highest logit on x, the analogue of Tsipras et al.'s gradient of the loss
  of the true label; it asks where the evidence *for the object* lies, and
  does not switch to a background class ("valley", "library") when the
  background wins the top-1. ``target="top1"``: the top-1 class among 1000;
- saliency ``s(p) = Σ_channels |∂ logit_c / ∂ x(p)|`` at every pixel p of the
  stored image (S × S, before the model's own resize; raw, not normalised);
- ``share = Σ_p s(p) a(p) / Σ_p s(p)``: the share of the saliency on the object;
- ``area = Σ_p a(p) / S²``: the object's share of the image, the chance level
  (a uniform saliency map has share = area);
- ``edge_share``: the same share for a model-free map, the Sobel gradient
  magnitude of the image summed over channels (control: how much any
  edge-like map concentrates on the object just because the object holds
  the image's edges, as on a plain background).

Per scene (a combination of the cube's scene-factor axes: object × view) the
values are grouped by every image-factor axis (the background) and model.
The table holds the mean over scenes of ``share``, ``area`` and
``edge_share``, and ``ratio = mean share / mean area`` (1 = chance), with
bootstrap intervals resampling scenes (ratio of means within each draw).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from perturber.pipeline import factors, inference, models, names
from perturber.pipeline import store as zstore
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies.bootstrap import bootstrap
from perturber.pipeline.studies.samples import set_table

__all__ = ["saliency_on_object", "share_on_object", "input_saliency", "edge_map", "per_sample", "figure", "maps_figure"]

TARGETS = ("object", "top1")
#: The published comparison: (standard, adversarially trained) registry entries.
PUBLISHED_PAIR = ("resnet50", "resnet50_robust_l2_eps3")
CONTROLS = {"area": "chance (area)", "edge_share": "edge map"}
VARIABLES = {
    "share": ("share of the input-gradient saliency on the object", "1"),
    "area": ("object area share of the image (chance)", "1"),
    "ratio": ("saliency share / area (1 = chance)", "1"),
    "edge_share": ("share of a Sobel edge map on the object (model-free control)", "1"),
}


def share_on_object(saliency: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share, area) of each map: ``saliency`` (..., S, S) ≥ 0, ``mask`` (..., S, S) in [0, 1].

    share = Σ saliency·mask / Σ saliency (NaN for an all-zero map); area = mean of the mask.
    """
    s = np.asarray(saliency, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    total = s.sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (s * m).sum((-2, -1)) / total, np.nan)
    return share, m.mean((-2, -1))


def input_saliency(x: torch.Tensor, model: str, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S, S) raw saliency Σ_channels |∂ logit_c / ∂ x| of images x (B, 3, S, S) in [0, 1].

    c: each image's highest-logit class among ``allowed`` (B, 1000) bool, or
    its top-1 class when ``allowed`` is None.
    """
    spec = models.spec(model)
    net = models.load_model(model, x.device)
    x = x.detach().clone().requires_grad_(True)
    logits = net(inference.preprocess(x, spec)).float()
    with torch.no_grad():
        scores = logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))
        classes = scores.argmax(1)
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), x)  # eval mode: images do not interact
    return grad.abs().sum(1)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """(B, S, S) Sobel gradient magnitude of images x (B, 3, S, S) in [0, 1], summed over channels
    (edges replicated at the border, so the frame adds no edge). Computed on
    the 8-bit levels, so a flat region is exactly 0."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.T])[:, None].repeat(3, 1, 1, 1)  # (6, 1, 3, 3): x and y per channel
    padded = torch.nn.functional.pad((x * 255.0).round(), (1, 1, 1, 1), mode="replicate")
    g = torch.nn.functional.conv2d(padded, kernels, groups=3).view(x.shape[0], 3, 2, *x.shape[-2:])
    return g.pow(2).sum(2).sqrt().sum(1) / 255.0


def check_params(target: str = "object", batch: int = 16) -> None:
    """A one-line StudyError for a bad parameter (before any cube is computed)."""
    if target not in TARGETS:
        raise StudyError(f"saliency-on-object: target must be {' or '.join(TARGETS)}, got {target!r}")
    if isinstance(batch, bool) or not (isinstance(batch, int) and batch >= 1):
        raise StudyError(f"saliency-on-object: batch must be a whole number >= 1, got {batch!r}")


def _check(cube: Cube, target: str, batch: int) -> tuple[list[str], list[str]]:
    """(scene axes, group axes) of a cube this study can read, or a one-line StudyError."""
    ds = cube.ds
    name = ds.attrs.get("cube", "the cube")
    check_params(target, batch)
    for var, key in ((names.IMAGE, "images"), (names.MASK, "mask")):
        if var not in ds:
            raise StudyError(f"saliency-on-object needs the cube's {var} variable; cube {name!r} has none "
                             f"(its spec needs `{key}: true`)")
    scene = [a for a in cube.axes if factors.get(a).kind == "scene"]
    group = [a for a in cube.axes if a not in scene]
    if not scene:
        raise StudyError(f"saliency-on-object resamples scenes: cube {name!r} needs a scene axis (object, yaw, ...), "
                         f"it has {', '.join(cube.axes)}")
    if "shuffle" in group or int(cube.fixed.get("shuffle", 1)) != 1:
        raise StudyError("saliency-on-object: patch shuffling moves pixels off the object mask (the render's alpha, "
                         "before the image factors); use a cube without shuffle")
    if target == "object":
        bare = [o for o in cube.objects if not set_table([o]).any()]
        if bare:
            raise StudyError(f"saliency-on-object: object {bare[0]!r} has no classes for target=object; "
                             f"use --param target=top1")
    return scene, group


def _sample_done(cube: Cube) -> np.ndarray:
    """(*axes) bool: the samples whose task is written."""
    marks = cube.ds[names.DONE].values.astype(bool)
    for k, c in enumerate(zstore.task_shape(cube.ds)):
        marks = np.repeat(marks, c, axis=k)
    return marks[tuple(slice(0, cube.ds.sizes[a]) for a in cube.axes)]


def per_sample(cube: Cube, target: str = "object", batch: int = 16, device: str | None = None) -> xr.Dataset:
    """``share`` (scene, *group axes, model), ``area`` and ``edge_share`` (scene, *group axes), computed.

    ``scene`` numbers the combinations of the scene-factor axes (C order);
    NaN for samples not computed. Reads the images and masks one scene at a
    time and runs every model on ``batch`` images at once.
    """
    scene_axes, group_axes = _check(cube, target, batch)
    ds = cube.ds
    dev = torch.device(device) if device else models.best_device()
    scene_shape = tuple(ds.sizes[a] for a in scene_axes)
    group_shape = tuple(ds.sizes[a] for a in group_axes)
    n_scenes, n_groups, n_models = int(np.prod(scene_shape)), int(np.prod(group_shape)), len(cube.models)
    order = [*scene_axes, *group_axes]
    image = ds[names.IMAGE].transpose(*order, names.Y, names.X, names.CHANNEL)
    mask = ds[names.MASK].transpose(*order, names.Y, names.X)
    done = np.transpose(_sample_done(cube), [cube.axes.index(a) for a in order]).reshape(n_scenes, n_groups)
    table = torch.from_numpy(set_table(cube.objects)).to(dev)
    obj_of_scene = (np.unravel_index(np.arange(n_scenes), scene_shape)[scene_axes.index("object")]
                    if "object" in scene_axes else np.zeros(n_scenes, dtype=int))
    share = np.full((n_scenes * n_groups, n_models), np.nan)
    area = np.full(n_scenes * n_groups, np.nan)
    edge = np.full(n_scenes * n_groups, np.nan)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, images, masks, objects)

    def flush() -> None:
        rows = np.concatenate([p[0] for p in pending])
        x = torch.from_numpy(np.concatenate([p[1] for p in pending])).to(dev).permute(0, 3, 1, 2).float() / 255.0
        a = np.concatenate([p[2] for p in pending]).astype(np.float64) / 255.0
        allowed = table[torch.from_numpy(np.concatenate([p[3] for p in pending])).to(dev)] if target == "object" else None
        for m, model in enumerate(cube.models):
            share[rows, m] = share_on_object(input_saliency(x, model, allowed).cpu().numpy(), a)[0]
        edge[rows], area[rows] = share_on_object(edge_map(x).cpu().numpy(), a)
        pending.clear()

    for s in range(n_scenes):
        keep = np.flatnonzero(done[s])
        if not len(keep):
            continue
        index = np.unravel_index(s, scene_shape) if scene_shape else ()
        imgs = image[index].values.reshape(n_groups, ds.sizes[names.Y], ds.sizes[names.X], 3)[keep]
        masks = mask[index].values.reshape(n_groups, ds.sizes[names.Y], ds.sizes[names.X])[keep]
        pending.append((s * n_groups + keep, imgs, masks, np.full(len(keep), obj_of_scene[s])))
        if sum(len(p[0]) for p in pending) >= batch:
            flush()
    if pending:
        flush()
    dims = ("scene", *group_axes)
    coords = {a: ds[a].values for a in group_axes}
    return xr.Dataset({
        "share": ((*dims, names.MODEL), share.reshape(n_scenes, *group_shape, n_models)),
        "area": (dims, area.reshape(n_scenes, *group_shape)),
        "edge_share": (dims, edge.reshape(n_scenes, *group_shape)),
    }, coords={**coords, names.MODEL: np.array(cube.models, dtype=object)})


def _statistic(d: xr.Dataset) -> xr.Dataset:
    share, area = d["share"].mean("scene"), d["area"].mean("scene")
    out = xr.Dataset({"share": share, "area": area, "ratio": share / area, "edge_share": d["edge_share"].mean("scene")})
    for var, (long_name, units) in VARIABLES.items():
        out[var].attrs.update(long_name=long_name, units=units)
    return out


def _span(v: xr.DataArray, fmt: str) -> str:
    lo, hi = float(v.min()), float(v.max())
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


def _finding(t: xr.Dataset) -> str:
    cells = t["ratio"].size
    above = int((t["ratio_lo"] > 1).sum())
    beyond = int((t["share_lo"] > t["edge_share_hi"]).sum())
    text = (f"Over {t.attrs['bootstrap_units']} scenes, the share of |∂ logit/∂ x| on the object is "
            f"{_span(t['share'], '.0%')} against an object area of {_span(t['area'], '.0%')} (ratio "
            f"{_span(t['ratio'], '.2f')}; its interval lies above chance in {above} of {cells} model × background cells, "
            f"and above the model-free edge map's share, {_span(t['edge_share'], '.0%')}, in {beyond}).")
    models_ = [str(m) for m in t[names.MODEL].values]
    if all(m in models_ for m in PUBLISHED_PAIR):
        std, rob = (float(t["ratio"].sel({names.MODEL: m}).mean()) for m in PUBLISHED_PAIR)
        verdict = "more" if rob > std else "not more"
        return text + (f" Averaged over backgrounds, the adversarially trained ResNet-50 concentrates {verdict} than the "
                       f"standard one (ratio {rob:.2f} against {std:.2f}), where Tsipras et al. show it concentrates more.")
    return text + (" Tsipras et al. show (qualitatively, with no number) that adversarially trained models' gradients "
                   "concentrate on the object while standard models' look noisy; these models are all standard, so "
                   "this measures the standard side only.")


def figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): per background, the share per model (bars with intervals)
    beside the area (chance) and the edge map's share; below, the ratio share / area."""
    plt, hv = outputs.plotting()
    groups = [d for d in ds["area"].dims]
    flat = ds.stack(group=groups) if groups else ds.expand_dims(group=[0])
    labels = [", ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in flat["group"].values] if groups else [""]
    model_list = [str(m) for m in ds[names.MODEL].values]
    width = 0.8 / (len(model_list) + 2)
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.4 * len(labels)), 7), squeeze=False)
    xs = np.arange(len(labels))
    bars: list[tuple[str, str, float]] = []  # (background, model or control, share) for the interactive figure
    for panel, var in zip(axes[:, 0], ("share", "ratio")):
        for k, model in enumerate(model_list):
            v, lo, hi = (flat[f"{var}{s}"].sel({names.MODEL: model}).values for s in ("", "_lo", "_hi"))
            panel.bar(xs + (k - len(model_list) / 2) * width, v, width, yerr=np.abs([v - lo, hi - v]), capsize=2, label=model)
            if var == "share":
                bars += [(lab, model, float(x)) for lab, x in zip(labels, v)]
        if var == "share":
            area, edge = flat["area"].values, flat["edge_share"].values
            panel.hlines(area, xs - 0.45, xs + 0.45, colors="k", linestyles="--", label=VARIABLES["area"][0])
            panel.errorbar(xs + (len(model_list) / 2 + 0.5) * width, edge, fmt="x", color="grey", markersize=9,
                           yerr=np.abs([edge - flat["edge_share_lo"].values, flat["edge_share_hi"].values - edge]),
                           label=VARIABLES["edge_share"][0])
            bars += [(lab, CONTROLS[name], float(x)) for name in CONTROLS for lab, x in zip(labels, flat[name].values)]
            panel.set_ylim(0, 1.15)
        else:
            panel.axhline(1.0, color="k", lw=0.8, ls="--")
        panel.set_xticks(xs, labels)
        panel.set_ylabel(VARIABLES[var][0], fontsize=8)
        panel.grid(alpha=0.3, axis="y")
        panel.legend(fontsize=7, ncol=2, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    share = hv.Bars(bars, ["group", "series"], "share").opts(tools=["hover", "tap"], width=760, height=340,
                                                             multi_level=True, xrotation=90, title=VARIABLES["share"][0])
    ratio = hv.Bars([(g, m, float(flat["ratio"].sel({names.MODEL: m}).values[i])) for i, g in enumerate(labels)
                     for m in model_list], ["group", "series"], "ratio").opts(tools=["hover", "tap"], width=760, height=300,
                                                                             xrotation=90, title=VARIABLES["ratio"][0])
    return fig, hv.Layout([share, ratio * hv.HLine(1.0).opts(color="black", line_dash="dashed")]).cols(1)


def maps_figure(cube: Cube, points: list[dict[str, Any]], target: str = "object") -> Any:
    """A matplotlib Figure: per point of the cube (axis → value), the image, its mask and each model's
    saliency map (scaled to its 99th percentile), titled with the map's share on the object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check(cube, target, 1)
    table = torch.from_numpy(set_table(cube.objects))
    fig, axes = plt.subplots(len(points), 2 + len(cube.models), figsize=(2.2 * (2 + len(cube.models)), 2.3 * len(points)),
                             squeeze=False)
    for row, point in zip(axes, points):
        image = cube.ds[names.IMAGE].sel(point).values
        a = cube.ds[names.MASK].sel(point).values / 255.0
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        obj = cube.objects.index(str(point.get("object", cube.objects[0])))
        allowed = table[[obj]] if target == "object" else None
        row[0].imshow(image)
        row[0].set_title(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in point.values()), fontsize=7)
        row[1].imshow(a, cmap="gray", vmin=0, vmax=1)
        row[1].set_title(f"mask (area {a.mean():.0%})", fontsize=7)
        for ax, model in zip(row[2:], cube.models):
            m = input_saliency(x, model, allowed)[0].numpy()
            ax.imshow(m, cmap="gray", vmin=0, vmax=np.quantile(m, 0.99) or 1.0)
            ax.set_title(f"{model.replace('efficientnet_', '')}: share {share_on_object(m, a)[0]:.0%}", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


@study("saliency-on-object", cube="saliency_on_object",
       definition="Per model and background: the share of the input-gradient saliency that falls on the object. "
                  "Saliency s(p) = Σ over colour channels of |∂ logit_c / ∂ x(p)| at every pixel of the stored model "
                  "input x (raw, not normalised), where c is the highest-logit class of the object's class set "
                  "(data/catalogue.yaml; --param target=top1: the top-1 class). share = Σ s·a / Σ s with a the stored "
                  "object mask (the render's alpha before the image factors, in [0, 1]); area = mean of a (chance: a "
                  "uniform map's share); ratio = mean share / mean area over scenes (1 = chance); edge_share: the share "
                  "of a Sobel edge map of the image (model-free). Means over scenes (object × view).",
       unit="scene", control="The object's area share (a uniform saliency map's share, chance: ratio 1), and the share "
                             "of a model-free Sobel edge map of the same image: on a plain background every edge is the "
                             "object's, so any edge-like map concentrates there; a model only looks at the object beyond "
                             "that where its share exceeds edge_share (photo backgrounds).",
       published="Tsipras et al. 2019 (Robustness May Be at Odds with Accuracy, Fig. 2): the loss gradients of "
                 "adversarially trained models align with perceptually relevant features (the object's outline and "
                 "parts); those of standard models look noisy, spread over the image. Qualitative: no share is published.",
       published_models=PUBLISHED_PAIR, figure=figure, check=check_params)
def saliency_on_object(cube: Cube, target: str = "object", batch: int = 16) -> xr.Dataset:
    values = per_sample(cube, target=target, batch=batch)
    table = bootstrap(values, unit="scene", statistic=_statistic)
    table.attrs["target"] = target
    table.attrs["finding"] = _finding(table)
    return table
