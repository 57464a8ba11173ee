"""transfer: do adversarial examples made on one model fool the others? (Szegedy et al. 2014)

The cube ``scenes`` stores each scene's model-input image (``image``, uint8,
(*axes, y, x, channel)); every sample of the cube is one scene. For each
source model and each ε, PGD (:func:`perturber.pipeline.attack.pgd`,
untargeted: it ascends the cross-entropy of the source's clean top-1) runs on
a batch of scenes at once, and every model of the cube (the source itself:
the white-box cell; the others: transfer) is evaluated on the attacked images
clamp(x + δ, 0, 1). The control replaces δ by random noise of the same norm
(L∞: ±ε per pixel; L2: a random Gaussian direction scaled to ε), drawn with a
fixed seed per scene, evaluated the same way.

Per scene, target model t and perturbation: *flip* = 1 when t's top-1 on the
attacked image differs from t's top-1 on the clean image, else 0; *drop* = t's
class-set probability (softmax mass on the object's ImageNet classes) on the
clean image minus that on the attacked image. The table holds their means over
scenes with bootstrap intervals (the scene is the independent unit), per ε,
source and target ``model``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import xarray as xr

from perturber.pipeline import imageops, inference, models, names
from perturber.pipeline.analysis import Cube, softmax
from perturber.pipeline.attack import NORMS, Attack, AttackError, pgd
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies.bootstrap import bootstrap
from perturber.pipeline.studies.samples import set_table

__all__ = [
    "DEFAULT_EPS",
    "figure",
    "flips_and_drops",
    "noise_direction",
    "parse_eps",
    "per_scene",
    "scene_images",
    "summary",
    "transfer",
]

#: ε per norm when none is given (L∞: pixel units in [0, 1]; L2: over the whole stored image).
DEFAULT_EPS = {"linf": (1 / 255, 2 / 255, 4 / 255, 8 / 255), "l2": (0.25, 0.5, 1.0, 2.0)}

#: (x (B, 3, S, S), source model, ε, label (B,)) → δ (B, 3, S, S): how a source attacks (PGD by default).
AttackFn = Callable[[torch.Tensor, str, float, torch.Tensor], torch.Tensor]


def parse_eps(eps: Any, norm: str) -> tuple[float, ...]:
    """ε values from a number, a fraction ``"8/255"``, a comma-separated string or a list of those;
    None: :data:`DEFAULT_EPS`. A one-line :class:`StudyError` for anything else."""
    if eps is None:
        return DEFAULT_EPS[norm]
    items = [s for s in eps.split(",") if s.strip()] if isinstance(eps, str) else eps
    items = items if isinstance(items, (list, tuple)) else [items]
    out = []
    for item in items:
        try:
            value = float(Fraction(item.strip())) if isinstance(item, str) else float(item)
        except (ValueError, ZeroDivisionError, TypeError):
            raise StudyError(f"transfer: eps {item!r} is not a number (write 8/255, 0.03 or a list of them)") from None
        if not np.isfinite(value) or value <= 0:
            raise StudyError(f"transfer: eps must be positive and finite, not {item!r}")
        if norm == "linf" and value > 1:
            raise StudyError(f"transfer: an L-infinity eps above 1 allows any image (got {item!r}; 8/255 is 0.031)")
        out.append(value)
    if not out:
        raise StudyError("transfer: eps is empty (give at least one, e.g. 8/255)")
    return tuple(sorted(set(out)))


def set_probability(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(...) softmax mass of ``logits`` (..., 1000) on ``classes`` (..., 1000) bool; NaN where no class is set."""
    p = (softmax(logits) * classes).sum(-1)
    return np.where(classes.any(-1), p, np.nan)


def flips_and_drops(clean: np.ndarray, adv: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: flip (1.0 when the top-1 of ``adv`` differs from that of ``clean``, else 0.0) and
    drop (class-set probability on ``clean`` minus that on ``adv``; NaN for an object without classes).

    ``clean``, ``adv``: logits (..., 1000); ``classes``: (..., 1000) bool, the object's classes.
    """
    flip = (np.argmax(adv, -1) != np.argmax(clean, -1)).astype(np.float32)
    drop = set_probability(clean, classes) - set_probability(adv, classes)
    return flip, drop.astype(np.float32)


def noise_direction(scenes: Sequence[int], shape: tuple[int, int, int], norm: str, seed: int = 0) -> np.ndarray:
    """(B, *shape) float32 random directions of norm 1: L∞ random signs ±1, L2 a Gaussian
    direction divided by its length. Scene ``i``'s draw depends only on (seed, i), never on the batch."""
    out = np.empty((len(scenes), *shape), dtype=np.float32)
    for k, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, int(scene)])
        if norm == "linf":
            out[k] = rng.integers(0, 2, size=shape) * 2 - 1
        else:
            g = rng.standard_normal(shape)
            out[k] = g / np.linalg.norm(g)
    return out


def scene_images(cube: Cube) -> tuple[Any, list[str]]:
    """The cube's stored model inputs as (N, S, S, 3) uint8 (dask or numpy; each sample of the
    cube is a scene, in C order of its axes) and each scene's object."""
    ds = cube.ds
    if names.IMAGE not in ds:
        raise StudyError("transfer needs the stored model-input images, but this cube was computed with images: false; "
                         "set images: true in workflows/studies/transfer.yaml and recompute")
    grid = tuple(ds.sizes[a] for a in cube.axes)
    n = int(np.prod(grid))
    image = ds[names.IMAGE].transpose(*cube.axes, names.Y, names.X, names.CHANNEL).data
    image = image.reshape(n, *image.shape[len(grid):])
    if "object" in cube.axes:
        view = [1] * len(grid)
        view[cube.axes.index("object")] = len(cube.objects)
        objects = np.broadcast_to(np.array(cube.objects, dtype=object).reshape(view), grid).ravel().tolist()
    else:
        objects = [cube.objects[0]] * n
    return image, objects


def _logits(model: str, x: torch.Tensor) -> np.ndarray:
    """(B, 1000) float logits of ``model`` on x (B, 3, S, S) in [0, 1]."""
    net = models.load_model(model, x.device)
    with torch.no_grad():
        return net(inference.preprocess(x, models.spec(model))).float().cpu().numpy()


def pgd_attack(norm: str, steps: int, step: float) -> AttackFn:
    """The PGD of :mod:`perturber.pipeline.attack`: ``steps`` steps of ``step`` · ε, suppressing ``label``."""
    def attack(x: torch.Tensor, source: str, eps: float, label: torch.Tensor) -> torch.Tensor:
        return pgd(x, Attack(source, eps=eps, norm=norm, step=step * eps), steps, label=label)
    return attack


def per_scene(cube: Cube, eps: Sequence[float], norm: str, attack: AttackFn, batch: int = 16, seed: int = 0,
              device: torch.device | str = "cpu", progress: bool = True) -> xr.Dataset:
    """One row per scene: ``flip``, ``drop`` (scene, eps, source, model) under ``attack`` and
    ``noise_flip``, ``noise_drop`` (scene, eps, model) under same-norm noise; plus ``clean_in_set``
    (scene, model): 1.0 when the clean top-1 is one of the object's classes.

    Scenes go through in batches of ``batch`` (one PGD call per source, ε and batch).
    """
    from tqdm import tqdm

    images, objects = scene_images(cube)
    table = set_table(sorted(set(objects)))
    index = {o: i for i, o in enumerate(sorted(set(objects)))}
    classes_all = table[[index[o] for o in objects]]  # (N, 1000) bool
    n, ms, es = len(objects), cube.models, list(eps)
    flip = np.full((n, len(es), len(ms), len(ms)), np.nan, np.float32)
    drop = flip.copy()
    noise_flip = np.full((n, len(es), len(ms)), np.nan, np.float32)
    noise_drop = noise_flip.copy()
    clean_in_set = np.full((n, len(ms)), np.nan, np.float32)
    starts = range(0, n, batch)
    bar = tqdm(total=len(starts) * (len(ms) + 1) * len(es), desc="transfer (source, eps, batch)", unit="batch",
               file=sys.stderr, disable=not progress)
    for start in starts:
        rows = slice(start, min(n, start + batch))
        x = imageops.to_tensor(np.asarray(images[rows]), device).contiguous()
        classes = classes_all[rows]
        clean = {m: _logits(m, x) for m in ms}
        for j, m in enumerate(ms):
            top1 = clean[m].argmax(-1)
            clean_in_set[rows, j] = np.where(classes.any(-1), classes[np.arange(len(top1)), top1], np.nan)
        u = torch.from_numpy(noise_direction(range(rows.start, rows.stop), tuple(x.shape[1:]), norm, seed)).to(device)
        for i, source in enumerate([*ms, None]):  # None: the noise control
            label = None if source is None else torch.from_numpy(clean[source].argmax(-1)).to(device)
            for e, value in enumerate(es):
                delta = value * u if source is None else attack(x, source, value, label)
                adv = (x + delta).clamp(0, 1)
                for j, target in enumerate(ms):
                    f, d = flips_and_drops(clean[target], _logits(target, adv), classes)
                    if source is None:
                        noise_flip[rows, e, j], noise_drop[rows, e, j] = f, d
                    else:
                        flip[rows, e, i, j], drop[rows, e, i, j] = f, d
                bar.update(1)
    bar.close()
    coords = {"eps": np.array(es), "source": np.array(ms, dtype=object), names.MODEL: np.array(ms, dtype=object)}
    return xr.Dataset({
        "flip": (("scene", "eps", "source", names.MODEL), flip),
        "drop": (("scene", "eps", "source", names.MODEL), drop),
        "noise_flip": (("scene", "eps", names.MODEL), noise_flip),
        "noise_drop": (("scene", "eps", names.MODEL), noise_drop),
        "clean_in_set": (("scene", names.MODEL), clean_in_set),
    }, coords=coords)


def summary(per: xr.Dataset) -> xr.Dataset:
    """Per scene and ε: the white-box flip and drop (mean over the source = model cells), the transfer
    ones (mean over the source ≠ model cells; absent with one model) and the noise ones (mean over models)."""
    m = per.sizes[names.MODEL]
    diagonal = xr.DataArray(np.eye(m, dtype=bool), dims=("source", names.MODEL))
    out = {}
    for var in ("flip", "drop"):
        out[f"white_box_{var}"] = per[var].where(diagonal).mean(("source", names.MODEL))
        if m > 1:
            out[f"transfer_{var}"] = per[var].where(~diagonal).mean(("source", names.MODEL))
        out[f"noise_{var}"] = per[f"noise_{var}"].mean(names.MODEL)
    return xr.Dataset(out)


def _eps_label(value: float, norm: str) -> str:
    return f"{value * 255:.3g}/255" if norm == "linf" else f"{value:.3g}"


def _finding(s: xr.Dataset, norm: str, steps: int, scenes: int, models_: list[str]) -> str:
    """Two or three sentences: white box, transfer and noise at the largest ε, and where transfer
    clears the noise control, against Szegedy et al.'s MNIST result."""
    eps = [float(v) for v in s["eps"].values]
    at = s.sel(eps=eps[-1])

    def pct(var: str) -> str:
        return f"{100 * float(at[var]):.0f} % [{100 * float(at[var + '_lo']):.0f}, {100 * float(at[var + '_hi']):.0f}]"

    head = (f"At ε = {_eps_label(eps[-1], norm)} ({'L∞' if norm == 'linf' else 'L2'}, {steps} PGD steps, {scenes} scenes) "
            f"PGD flips the source model's own top-1 in {pct('white_box_flip')} of scenes")
    noise = f"same-norm random noise in {pct('noise_flip')}"
    if len(models_) < 2:
        return head + f" and {noise}. With one model there is no transfer pair: run it with --models a,b,c."
    reference = "Szegedy et al.'s MNIST nets (transfer 2–88 %, Gaussian noise of similar size 0–5 %)"
    apart = [_eps_label(e, norm) for e, a in zip(eps, (s["transfer_flip_lo"] > s["noise_flip_hi"]).values) if a]
    if apart and apart[-1] == _eps_label(eps[-1], norm):
        verdict = f"Transfer clears the noise control's interval at ε = {', '.join(apart)}: the order of {reference}."
    elif apart:
        verdict = f"Transfer clears the noise control's interval only at ε = {', '.join(apart)}, less clearly than on {reference}."
    else:
        verdict = f"Transfer does not clear the noise control's interval at any ε, unlike on {reference}."
    return (f"{head}, the other models' top-1 in {pct('transfer_flip')} (transfer: mean over source ≠ target) and {noise}; "
            f"the class-set probability drops by {float(at['white_box_drop']):.2f} (white box), "
            f"{float(at['transfer_drop']):.2f} (transfer) and {float(at['noise_drop']):.2f} (noise). {verdict}")


#: Line colours (matplotlib's default cycle as hex, which Bokeh reads too).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _short(model: str) -> str:
    return str(model).removeprefix("efficientnet_")


def figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): a flip-rate heatmap (source rows plus the noise control,
    target columns) per ε, and flip rate and class-set probability drop against ε per (source, target)."""
    plt, hv = outputs.plotting()
    norm = ds.attrs.get("norm", "linf")
    eps = [float(e) for e in ds["eps"].values]
    xs = np.array(eps) * (255 if norm == "linf" else 1)
    xlabel = "ε (×1/255, L∞)" if norm == "linf" else "ε (L2)"
    sources, targets = [str(v) for v in ds["source"].values], [str(v) for v in ds[names.MODEL].values]
    rows = [_short(s) for s in sources] + ["noise"]
    cols = max(len(eps), 2)
    fig = plt.figure(figsize=(max(9.0, 2.6 * cols), 8.0), layout="constrained")
    grid = fig.add_gridspec(2, cols, height_ratios=[1, 1.2])
    panels = []
    for k, e in enumerate(eps):
        m = np.vstack([ds["flip_rate"].sel(eps=e).transpose("source", names.MODEL).values,
                       ds["noise_flip_rate"].sel(eps=e).values[None]])
        ax = fig.add_subplot(grid[0, k])
        image = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if not v > 0.6 else "black")
        ax.set_xticks(range(len(targets)), [_short(t) for t in targets], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(f"flip rate, ε = {_eps_label(e, norm)}", fontsize=9)
        ax.set_xlabel("target (evaluated)", fontsize=8)
        if k == 0:
            ax.set_ylabel("source (attacked)", fontsize=8)
        # the target axis is the cube's model dimension (full names): a click there picks that model in the viewer
        cells = [(t, row, float(m[r, c])) for r, row in enumerate(rows) for c, t in enumerate(targets)]
        kdims = [hv.Dimension(names.MODEL, label="target (evaluated)"), hv.Dimension("source", label="source (attacked)")]
        panels.append((hv.HeatMap(cells, kdims, "flip rate") * hv.Labels([(t, r, f"{v:.2f}") for t, r, v in cells], kdims, "text"))
                      .opts(hv.opts.HeatMap(cmap="viridis", clim=(0, 1), colorbar=True, tools=["hover", "tap"], xrotation=30,
                                            width=320, height=300, title=f"flip rate, ε = {_eps_label(e, norm)}"),
                            hv.opts.Labels(text_font_size="8pt", text_color="white")))
    fig.colorbar(image, ax=fig.axes, shrink=0.4, location="top", label="flip rate") if eps else None
    half = cols // 2
    for where, var, label in ((grid[1, :half], "flip_rate", "flip rate"), (grid[1, half:], "set_prob_drop", "class-set probability drop")):
        ax = fig.add_subplot(where)
        curves = []
        for j, t in enumerate(targets):
            colour = PALETTE[j % len(PALETTE)]
            for s in sources:
                v, lo, hi = (ds[f"{var}{end}"].sel(source=s, model=t).values for end in ("", "_lo", "_hi"))
                name = f"{_short(s)} → {_short(t)}" + (" (white box)" if s == t else "")
                ax.plot(xs, v, "-" if s == t else "--", color=colour, marker="o" if s == t else ".", label=name)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.07)
                curves.append(hv.Curve((xs, v), xlabel, label, label=name).opts(
                    color=colour, line_dash="solid" if s == t else "dashed", tools=["hover", "tap"]))
            v = ds[f"noise_{var}"].sel(model=t).values
            ax.plot(xs, v, ":", color=colour, marker="x", label=f"noise → {_short(t)}")
            curves.append(hv.Curve((xs, v), xlabel, label, label=f"noise → {_short(t)}").opts(color=colour, line_dash="dotted"))
        if len(xs) > 1 and xs.min() > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:.3g}" for x in xs])
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        panels.append(hv.Overlay(curves).opts(title=f"{label} against ε (solid: white box, dashed: transfer, dotted: noise)",
                                              width=620, height=320, legend_position="right"))
    fig.suptitle(title)
    return fig, hv.Layout(panels).cols(max(len(eps), 1))


DEFINITION = (
    "Per scene (one stored model-input image x of the cube, S×S pixels in [0, 1]), source model s and ε: PGD on s "
    "(untargeted: ascend the cross-entropy of s's clean top-1; `steps` steps of `step`·ε, no random start; L∞ or L2 "
    "ball of radius ε around x, L2 over the whole S×S×3 image) gives δ; every model t of the cube is evaluated on "
    "clamp(x + δ, 0, 1). flip_rate(ε, s, t) = share of scenes whose t-top-1 on the attacked image differs from "
    "t's top-1 on the clean image; set_prob_drop(ε, s, t) = mean over scenes of t's class-set probability "
    "(softmax mass on the object's ImageNet classes) on the clean image minus that on the attacked image. "
    "s = t is the white-box cell; s ≠ t is transfer. noise_flip_rate and noise_set_prob_drop: the same for the "
    "random control (no source: the same for every s).")


@study("transfer", cube="scenes", definition=DEFINITION, unit="scene",
       control="Random noise of the same norm instead of δ: L∞ ±ε per pixel (random signs), L2 a Gaussian direction "
               "scaled to length ε, one fixed draw per scene (seed), clamped to [0, 1] like δ. Transfer means something "
               "only where it clearly exceeds this control.",
       published="Szegedy et al. 2014, 'Intriguing properties of neural networks', Table 2 (MNIST): adversarial "
                 "examples made for one network were misclassified by other networks at 2–88 % (e.g. made for "
                 "FC200-200-10, fed to FC10(10⁻⁴): 38.2 %; made for FC10(1), fed to FC100-100-10: 48.1 %), while "
                 "Gaussian noise of stddev 0.1, as large as the adversarial distortions (0.058–0.14 RMS), caused "
                 "5.0 %, 0 % and 0.8 % errors on FC10(10⁻⁴), FC100-100-10 and AE400-10. The Perturber paper attacks a "
                 "standard and an adversarially trained ResNet-50 and evaluates each on the other's perturbation.",
       published_models=("resnet50", "resnet50_robust_linf_eps4"), figure=figure)
def transfer(cube: Cube, eps: Any = None, norm: str = "linf", steps: int = 10, step: float = 0.125, batch: int = 16,
             seed: int = 0, device: str = "auto") -> xr.Dataset:
    """The matrix (eps, source, model) of flip rates and class-set probability drops, with the noise control."""
    if norm not in NORMS:
        raise StudyError(f"transfer: unknown norm {norm!r}; choose linf or l2")
    values = parse_eps(eps, norm)
    for name, v in (("steps", steps), ("batch", batch), ("seed", seed)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (0 if name == "seed" else 1):
            raise StudyError(f"transfer: {name} must be a whole number{'' if name == 'seed' else ' of at least 1'}, not {v!r}")
    if not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise StudyError(f"transfer: step is the PGD step as a fraction of eps, in (0, 1], not {step!r}")
    try:
        dev = models.best_device() if device == "auto" else torch.device(device)
    except (RuntimeError, TypeError):
        raise StudyError(f"transfer: unknown device {device!r} (auto, cpu, cuda)") from None
    scene_images(cube)  # no images: a one-line error before any model loads
    try:
        per = per_scene(cube, values, norm, pgd_attack(norm, steps, step), batch=batch, seed=seed, device=dev)
    except AttackError as exc:
        raise StudyError(f"transfer: {exc}") from None
    measured = {"flip": "flip_rate", "drop": "set_prob_drop", "noise_flip": "noise_flip_rate",
                "noise_drop": "noise_set_prob_drop"}
    table = bootstrap(per[list(measured)].rename(measured), unit="scene")
    for var in table.data_vars:
        base = str(var).removesuffix("_lo").removesuffix("_hi")
        text = ("flip rate: share of scenes whose top-1 changes" if "flip" in base else "drop in class-set probability")
        text += " under same-norm noise (control)" if base.startswith("noise_") else " under PGD from the source"
        end = "" if base == var else f" ({str(var).rsplit('_', 1)[1]} end of the 95 % interval)"
        table[var].attrs = {"long_name": text + end, "units": "1"}
    table["eps"].attrs = {"long_name": f"perturbation budget ε ({norm}, pixel values in [0, 1])", "units": "1"}
    if norm == "linf":  # the usual way to read an L∞ budget: in 8-bit grey levels
        table = table.assign_coords(eps_255=("eps", np.round(table["eps"].values * 255, 6), {"long_name": "ε × 255", "units": "1"}))
    table["source"].attrs = {"long_name": "model PGD attacked", "units": ""}
    table[names.MODEL].attrs = {"long_name": "target model, evaluated on the attacked image", "units": ""}
    s = bootstrap(summary(per), unit="scene")
    clean = per["clean_in_set"].mean("scene")
    table.attrs.update({
        "norm": norm, "steps": steps, "step_fraction": step, "scenes": per.sizes["scene"], "noise_seed": seed,
        "clean_in_set": json.dumps({str(m): round(float(v), 4) for m, v in zip(clean[names.MODEL].values, clean.values)}),
        "summary": json.dumps({str(v): [round(float(x), 4) for x in np.atleast_1d(s[v].values)] for v in s.data_vars}),
        "finding": _finding(s, norm, steps, per.sizes["scene"], list(cube.models)),
    })
    return table
