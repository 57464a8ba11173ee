"""units-vs-directions (Szegedy et al. 2014, "Intriguing properties of neural networks"):
are a layer's units more interpretable than random directions in its activation space?

For one model and layer, a sample's activation vector ``a`` (neurons,) is the
spatial mean of the stored activation map of each stored channel
(:meth:`~perturber.pipeline.analysis.Cube.mean_activation`, one dask pass).
A *member* scores every computed sample:

- a *unit* (stored channel ``j``): ``a[j]``;
- a *direction* ``d``: ``a · d``, with ``d`` a Gaussian vector over the stored
  channels scaled to unit length (``seed``: the same directions every run; as
  many directions as stored units).

Its top-k set is the ``k`` samples with the highest scores (ties: lower flat
index first). The set's *coherence* over a factor axis is the share of the
set holding that factor's most common value (``max_v count(v) / k``: 1 when
all ``k`` samples share it). *Chance* is the expected coherence of a uniformly
random ``k``-subset of the computed samples, computed exactly from the
factor's value counts (:func:`chance_coherence`).

Per model, layer and factor the table holds the mean coherence of the units,
of the directions and their difference, with bootstrap intervals over the
members (the independent unit: the ``i``-th unit and the ``i``-th direction
are resampled together; they are independent draws, so the pairing is
arbitrary), and chance. The image grid of the first ``show`` units' and
directions' top-k model inputs travels in the table's attributes (a JPEG
mosaic, :func:`grid`), so the figure is drawn from the table alone.
"""

from __future__ import annotations

import base64
import io
import json
from math import comb
from typing import Any, Sequence

import numpy as np
import xarray as xr

from perturber.pipeline import names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, outputs, study
from perturber.pipeline.studies.bootstrap import bootstrap

__all__ = ["units_vs_directions", "top_k", "coherence", "chance_coherence", "random_directions", "grid", "figure"]

#: Side of one thumbnail of the image grid, in pixels.
THUMB = 48
VARIABLES = {
    "units": "mean coherence of the units' top-k sets",
    "directions": "mean coherence of the random directions' top-k sets",
    "difference": "units minus directions",
    "chance": "expected coherence of a random k-subset",
}

DEFINITION = (
    "For each model and stored layer, a sample's activation vector is the spatial mean of each stored channel's "
    "activation map. A unit (stored channel j) scores each computed sample by its j-th component; a random direction "
    "d (a Gaussian vector over the stored channels scaled to unit length, fixed seed, as many as stored units) by the "
    "dot product with d. A member's top-k set is the k samples with the highest scores. Its coherence over a factor "
    "axis is the share of the k samples holding that factor's most common value (max_v count(v) / k). Per model, "
    "layer and factor: `units` and `directions`, the mean coherence over the members; `difference`, units minus "
    "directions; `chance`, the exact expected coherence of a uniformly random k-subset of the computed samples.")


def random_directions(neurons: int, count: int, seed: int = 0) -> np.ndarray:
    """(neurons, count) float64: ``count`` Gaussian directions scaled to unit length."""
    d = np.random.default_rng(seed).standard_normal((neurons, count))
    return d / np.linalg.norm(d, axis=0, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(samples, members) scores → (members, k) sample positions, highest score first
    (ties: lower position first), without sorting every score."""
    samples, members = scores.shape
    out = np.empty((members, k), dtype=np.int64)
    for c in range(members):
        s = scores[:, c]
        kth = np.partition(s, samples - k)[samples - k]  # the k-th highest score
        candidates = np.flatnonzero(s >= kth)
        out[c] = candidates[np.lexsort((candidates, -s[candidates]))[:k]]
    return out


def coherence(values: np.ndarray) -> np.ndarray:
    """(members, k) value indices of one factor → (members,) share of the most common value."""
    k = values.shape[1]
    return np.array([np.bincount(row).max() / k for row in values])


def chance_coherence(counts: Sequence[int], k: int) -> float:
    """The expected coherence of a uniformly random ``k``-subset (without replacement)
    of samples whose factor values occur ``counts`` times, exactly:
    ``E[max_v n_v] / k`` with ``P(max <= t)`` counted by the coefficient of ``x^k``
    in ``prod_v sum_{j <= t} C(c_v, j) x^j``."""
    counts = [int(c) for c in counts if c > 0]
    total = sum(counts)
    if not 1 <= k <= total:
        raise ValueError(f"k must be 1..{total}, got {k}")
    subsets = comb(total, k)
    expected = 0  # sum over m = 1..k of P(max >= m), times the number of subsets
    for t in range(k):
        poly = [1]
        for c in counts:
            terms = [comb(c, j) for j in range(min(t, c) + 1)]
            prod = [0] * min(len(poly) + len(terms) - 1, k + 1)
            for i, a in enumerate(poly):
                for j, b in enumerate(terms[: k + 1 - i]):
                    prod[i + j] += a * b
            poly = prod
        at_most_t = poly[k] if len(poly) > k else 0
        expected += subsets - at_most_t
    return expected / (k * subsets)


def _layer_table(m: np.ndarray, shape: tuple[int, ...], axes: list[str], k: int, seed: int
                 ) -> tuple[xr.Dataset, np.ndarray, np.ndarray, np.ndarray]:
    """One model and layer: ``m`` (samples, neurons) mean activations (NaN: not computed).
    Returns per-member coherences (member, factor) of units and directions,
    chance (factor,), and the top-k flat sample indices of units and of directions (member, k)."""
    valid = np.flatnonzero(np.isfinite(m).all(1))
    if k > valid.size:
        raise StudyError(f"units-vs-directions: k = {k} but only {valid.size} samples are computed")
    a = m[valid].astype(np.float64)
    d = random_directions(a.shape[1], a.shape[1], seed)
    tops = {"units": valid[top_k(a, k)], "directions": valid[top_k(a @ d, k)]}
    position = np.unravel_index(np.arange(int(np.prod(shape))), shape)
    per_member = {kind: np.stack([coherence(position[i][t]) for i in range(len(axes))], axis=1) for kind, t in tops.items()}
    chance = np.array([chance_coherence(np.bincount(position[i][valid], minlength=shape[i]), k) for i in range(len(axes))])
    ds = xr.Dataset({kind: (("member", "factor"), v) for kind, v in per_member.items()})
    ds["difference"] = ds["units"] - ds["directions"]
    return ds, chance, tops["units"], tops["directions"]


def _points(cube: Cube, flat: np.ndarray) -> list[dict[str, Any]]:
    shape = tuple(cube.ds.sizes[a] for a in cube.axes)
    idx = np.unravel_index(flat, shape)
    values = {a: cube.axis_values(a) for a in cube.axes}
    return [{a: values[a][int(idx[i][s])] for i, a in enumerate(cube.axes)} for s in range(len(flat))]


def grid(cube: Cube, rows: list[tuple[str, np.ndarray]]) -> tuple[str, list[str], list[list[dict[str, Any]]]]:
    """A JPEG mosaic (base64) of the model-input images of each row's samples,
    ``THUMB`` pixels each, row labels, and each row's samples' axis values.
    ``rows``: (label, (k,) flat sample indices)."""
    from PIL import Image

    shape = tuple(cube.ds.sizes[a] for a in cube.axes)
    flat = np.concatenate([r for _, r in rows])
    idx = np.unravel_index(flat, shape)
    picks = {a: xr.DataArray(idx[i], dims="pick") for i, a in enumerate(cube.axes)}
    images = cube.ds[names.IMAGE].isel(picks).transpose("pick", names.Y, names.X, names.CHANNEL).values
    k = len(rows[0][1])
    mosaic = Image.new("RGB", (k * THUMB, len(rows) * THUMB), "white")
    for n, img in enumerate(images):
        thumb = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((THUMB, THUMB), Image.BILINEAR)
        mosaic.paste(thumb, ((n % k) * THUMB, (n // k) * THUMB))
    buffer = io.BytesIO()
    mosaic.save(buffer, format="JPEG", quality=85)
    return (base64.b64encode(buffer.getvalue()).decode("ascii"), [label for label, _ in rows],
            [_points(cube, r) for _, r in rows])


def _decode(text: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout): units' and directions' mean coherence
    per factor (bars with intervals) against chance (black ticks), and the image
    grid of the top-k sets (when the cube stored images)."""
    plt, hv = outputs.plotting()
    groups = [(str(m), str(l)) for m in ds[names.MODEL].values for l in ds["layer"].values]
    factors = [str(f) for f in ds["factor"].values]
    has_grid = bool(ds.attrs.get("topk_grid_jpeg"))
    rows = json.loads(ds.attrs.get("topk_grid_rows", "[]"))
    blocks = list(dict.fromkeys(r.split(" ")[0] for r in rows))  # one grid block per model, side by side
    per_block = max(1, len(rows) // max(len(blocks), 1))
    height = 0.5 * per_block if has_grid else 0
    fig = plt.figure(figsize=(max(4 * len(factors), 6 * len(blocks)), 4 + height))
    spec = fig.add_gridspec(2 if has_grid else 1, len(factors) * len(blocks) if has_grid else len(factors),
                            height_ratios=[4, height] if has_grid else [1])
    span = len(blocks) if has_grid else 1
    x = np.arange(len(groups))
    hv_bars = []
    for i, f in enumerate(factors):
        ax = fig.add_subplot(spec[0, i * span:(i + 1) * span])
        table = []
        for j, (kind, colour) in enumerate((("units", "#4c72b0"), ("directions", "#dd8452"))):
            v, lo, hi = (np.array([float(ds[kind + s].sel({names.MODEL: m, "layer": l, "factor": f})) for m, l in groups])
                         for s in ("", "_lo", "_hi"))
            ax.bar(x + (j - 0.5) * 0.38, v, 0.38, yerr=np.abs(np.stack([v - lo, hi - v])), capsize=2, color=colour, label=kind)
            table += [(f"{m} {l}", kind, v[n], lo[n], hi[n]) for n, (m, l) in enumerate(groups)]
        chance = np.array([float(ds["chance"].sel({names.MODEL: m, "layer": l, "factor": f})) for m, l in groups])
        ax.scatter(x, chance, marker="_", s=400, color="k", label="chance", zorder=3)
        ax.set_xticks(x, [f"{m.replace('efficientnet_', '')}\n{l}" for m, l in groups], fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"coherence over {f}")
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.set_ylabel("share of the top-k with the modal value")
            ax.legend(fontsize=7)
        table += [(f"{m} {l}", "chance", c, c, c) for (m, l), c in zip(groups, chance)]
        hv_bars.append(hv.Bars(table, ["group", "kind"], ["coherence", "lo", "hi"]).opts(
            tools=["hover", "tap"], xrotation=45, title=f"coherence over {f}", width=480, height=320))
    panels = hv_bars
    if has_grid:
        image = _decode(ds.attrs["topk_grid_jpeg"])
        h = image.shape[0] / max(len(rows), 1)
        for b, block in enumerate(blocks):
            ax = fig.add_subplot(spec[1, b * len(factors):(b + 1) * len(factors)])
            part = image[int(round(b * per_block * h)):int(round((b + 1) * per_block * h))]
            ax.imshow(part)
            ax.set_yticks((np.arange(per_block) + 0.5) * h, [r.split(" ", 1)[1] for r in rows[b * per_block:(b + 1) * per_block]],
                          fontsize=7)
            ax.set_xticks([])
            ax.set_title(f"{block}: top-{ds.attrs.get('k')} inputs (highest score left)", fontsize=9)
        rgb = hv.RGB(image, bounds=(0, 0, image.shape[1], image.shape[0])).opts(
            width=image.shape[1], height=image.shape[0], xaxis=None, yaxis=None, title="top-k model inputs")
        labels = hv.Labels([(2, image.shape[0] - (n + 0.15) * h, r) for n, r in enumerate(rows)]).opts(
            text_align="left", text_font_size="7pt", text_color="yellow")
        panels = hv_bars + [rgb * labels]
    fig.suptitle(title)
    fig.tight_layout()
    return fig, hv.Layout(panels).cols(2)


def _finding(table: xr.Dataset) -> str:
    diff_lo, diff_hi = table["difference_lo"].values, table["difference_hi"].values
    cells = diff_lo.size
    same = int(((diff_lo <= 0) & (diff_hi >= 0)).sum())
    above = int((diff_lo > 0).sum())
    below = int((diff_hi < 0).sum())
    mean = table[["units", "directions", "chance"]].mean([names.MODEL, "layer"])
    per_factor = ", ".join(f"{f}: units {float(mean['units'].sel(factor=f)):.2f}, directions "
                           f"{float(mean['directions'].sel(factor=f)):.2f}, chance {float(mean['chance'].sel(factor=f)):.2f}"
                           for f in table["factor"].values)
    agree = "agrees with" if same >= cells / 2 else "differs from"
    return (f"In {same} of {cells} (model, layer, factor) cells the units' mean coherence is indistinguishable from the "
            f"random directions' (the 95 % interval of the difference contains 0); units are more coherent in {above} "
            f"and less in {below}. Averaged over models and layers: {per_factor}. This {agree} Szegedy et al.'s "
            "qualitative finding that single units are no more interpretable than random directions.")


@study("units-vs-directions", cube="units_directions", definition=DEFINITION,
       unit="member: a stored unit or a random direction (the i-th unit and the i-th direction are resampled together)",
       control="Two: random directions in the same stored-channel space (Szegedy et al.'s own control: a unit is "
               "special only if it beats them), and chance, the coherence of k samples drawn at random from the cube "
               "(a top-k set is informative only above it).",
       published="Szegedy et al. 2014 (ICLR), Intriguing properties of neural networks, section 3: on MNIST and "
                 "ImageNet (an AlexNet-like network), the images that maximise a single unit and those that maximise a "
                 "random direction are equally semantically coherent, so 'the natural basis is not better than a random "
                 "basis for inspecting the properties' of a layer. The paper shows image rows and gives no numbers.",
       figure=figure)
def units_vs_directions(cube: Cube, k: int = 8, seed: int = 0, show: int = 2) -> xr.Dataset:
    """The table (model, layer, factor): ``units``, ``directions``, ``difference``
    (with bootstrap intervals over members) and ``chance``; the top-k image grid
    of the first ``show`` units and directions per model and layer in the attributes."""
    acts = cube.activations()
    if not acts:
        raise StudyError(f"units-vs-directions: the cube {cube.ds.attrs.get('cube', '')!r} stores no activations; "
                         "give it layers and neurons")
    k, show = int(k), int(show)
    if k < 1 or show < 0:
        raise StudyError(f"units-vs-directions: k must be >= 1 and show >= 0, got k={k}, show={show}")
    layers = list(dict.fromkeys(a.layer for a in acts))
    shape = tuple(cube.ds.sizes[a] for a in cube.axes)
    rows: list[tuple[str, np.ndarray]] = []
    tables: dict[tuple[str, str], xr.Dataset] = {}
    members = set()
    for act in acts:
        neurons = cube.ds.sizes[act.neuron]
        if neurons < 2:
            raise StudyError(f"units-vs-directions: {act.model} {act.layer} stores {neurons} neuron; "
                             "random directions need at least 2")
        m = cube.mean_activation(act.variable).reshape(-1, neurons)
        per_member, chance, top_units, top_dirs = _layer_table(m, shape, cube.axes, k, seed)
        t = bootstrap(per_member, "member")
        t["chance"] = ("factor", chance)
        tables[(act.model, act.layer)] = t
        members.add(neurons)
        channels = cube.ds[act.neuron].values
        rows += [(f"{act.model} {act.layer} unit {int(channels[i])}", top_units[i]) for i in range(min(show, neurons))]
        rows += [(f"{act.model} {act.layer} direction {i}", top_dirs[i]) for i in range(min(show, neurons))]
    empty = xr.full_like(next(iter(tables.values())), np.nan)
    table = xr.concat([xr.concat([tables.get((m, l), empty) for l in layers], dim="layer") for m in cube.models], dim=names.MODEL)
    table = table.assign_coords({names.MODEL: np.array(cube.models, dtype=object), "layer": np.array(layers, dtype=object),
                                 "factor": np.array(cube.axes, dtype=object)})
    for v in table.data_vars:
        base = str(v).removesuffix("_lo").removesuffix("_hi")
        table[v].attrs.update({"long_name": VARIABLES[base] + ("" if base == v else f" ({str(v)[-2:]} end of the interval)"),
                               "units": "1"})
    table.attrs.update({**next(iter(tables.values())).attrs, "bootstrap_units": ", ".join(map(str, sorted(members))),
                        "k": k, "seed": seed, "directions_per_layer": "as many as stored units"})
    if rows and names.IMAGE in cube.ds:
        jpeg, labels, points = grid(cube, rows)
        table.attrs.update({"topk_grid_jpeg": jpeg, "topk_grid_rows": json.dumps(labels),
                            "topk_grid_samples": json.dumps(points, default=str)})
    table.attrs["finding"] = _finding(table)
    return table
