"""Store names: every variable, dimension and group name of a store, in one place.

A store holds one group per cube, plus groups for feature visualisations,
studies, fooling images and searches. Inside a cube group
(``xarray.open_zarr(store, group=cube)``):

| name | what |
| --- | --- |
| ``logits``, ``top_class``, ``top_prob``, ``image`` | per-sample results (sharded) |
| ``top1_class``, ``top1_prob``, ``expected_prob`` | per-sample summaries (large chunks) |
| ``done`` | the task marks |
| ``mask`` | the object mask (the render's alpha), on request (``mask: true``) |
| ``act_<model>_<layer>`` | activations, dims ``neuron_…``, ``ay_…``, ``ax_…`` with the same suffix |
| ``model``, ``rank``, ``class``, ``class_name``, ``y``, ``x``, ``channel`` | coordinates |
| ``task_<axis>`` | dimensions of ``done`` (``chunk_<axis>`` in format-1 stores) |

In the ``featureviz`` group, per target ``<model>_<layer>`` (``_dir`` for
random directions; ``<model>_logits`` for class logits): ``fv_<target>``,
``objective_<target>``, ``fvdone_<target>``, ``direction_<target>`` and the
dimensions ``unit_<target>``, ``fvchunk_<target>``, ``channel_<target>``.

Model names and layer paths can hold ``.`` and ``@`` (``_blocks.3``,
``path@1``); :func:`mangle` turns them into ``_`` in every name. Code that
needs the model or layer of a variable reads its ``model`` and ``layer``
attributes (:func:`activation_variables`), never a slice of its name.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "LOGITS", "TOP_CLASS", "TOP_PROB", "EXPECTED_PROB", "TOP1_CLASS", "TOP1_PROB", "SUMMARIES", "IMAGE", "MASK", "DONE",
    "MODEL", "RANK", "CLASS", "CLASS_NAME", "Y", "X", "CHANNEL",
    "FEATUREVIZ", "STUDIES", "FOOLING", "SEARCH", "NOT_CUBES",
    "mangle", "task_dim", "activation", "Activation", "activation_variables",
    "fv_target", "fv_names", "fv_variables", "FeatureVizNames", "study_group",
]

# Per-sample variables of a cube.
LOGITS = "logits"
TOP_CLASS = "top_class"
TOP_PROB = "top_prob"
EXPECTED_PROB = "expected_prob"
TOP1_CLASS = "top1_class"
TOP1_PROB = "top1_prob"
#: The per-sample summaries, (*axes, model) each, in large chunks.
SUMMARIES = (TOP1_CLASS, TOP1_PROB, EXPECTED_PROB)
IMAGE = "image"
MASK = "mask"
DONE = "done"

# Coordinates (dimensions) of a cube besides its axes.
MODEL = "model"
RANK = "rank"
CLASS = "class"
CLASS_NAME = "class_name"
Y, X, CHANNEL = "y", "x", "channel"

# Groups of a store that are not cubes.
FEATUREVIZ = "featureviz"
STUDIES = "studies"
FOOLING = "fooling"
SEARCH = "search"
NOT_CUBES = (FEATUREVIZ, STUDIES, FOOLING, SEARCH)


def mangle(text: str) -> str:
    """A model or layer name as it appears inside a store name (``.`` and ``@`` become ``_``)."""
    return text.replace(".", "_").replace("@", "_")


def task_dim(axis: str) -> str:
    """The dimension of ``done`` along ``axis`` (one mark per task, a shard)."""
    return f"task_{axis}"


class Activation(NamedTuple):
    """The names of one model's activations of one layer in a cube."""

    variable: str  # act_<model>_<layer>
    neuron: str  # dimension (and coordinate): the stored channel indices
    ay: str  # dimension: rows of the activation map
    ax: str  # dimension: columns of the activation map
    model: str = ""
    layer: str = ""


def activation(model: str, layer: str) -> Activation:
    """Names of ``model``'s activations of ``layer`` (a friendly name or a module path)."""
    suffix = mangle(f"{model}_{layer}")
    return Activation(f"act_{suffix}", f"neuron_{suffix}", f"ay_{suffix}", f"ax_{suffix}", model, layer)


def activation_variables(ds: Any, model: str | None = None) -> list[Activation]:
    """Every activation variable of a cube dataset (of ``model`` only, when given),
    read from the variables' ``model`` and ``layer`` attributes."""
    out = []
    for name, var in ds.data_vars.items():
        if not str(name).startswith("act_") or "model" not in var.attrs or "layer" not in var.attrs:
            continue
        names = activation(str(var.attrs["model"]), str(var.attrs["layer"]))
        if names.variable == name and (model is None or names.model == model):
            out.append(names)
    return out


class FeatureVizNames(NamedTuple):
    """The names of one feature-visualisation target in the ``featureviz`` group."""

    target: str
    images: str  # fv_<target>
    objective: str  # objective_<target>
    done: str  # fvdone_<target>
    direction: str  # direction_<target>
    unit: str  # dimension: channel, direction or class index
    chunk: str  # dimension of done
    channel: str  # dimension of direction: the layer's channels


def fv_target(model: str, layer: str, kind: str = "channel") -> FeatureVizNames:
    """Names of the visualisations of ``model``'s ``layer`` (``"logits"`` for class
    logits); ``kind`` ``direction`` for random directions."""
    return fv_names(mangle(f"{model}_{layer}") + ("_dir" if kind == "direction" else ""))


def fv_names(target: str) -> FeatureVizNames:
    """The names that belong to a feature-visualisation target."""
    return FeatureVizNames(target, f"fv_{target}", f"objective_{target}", f"fvdone_{target}", f"direction_{target}",
                           f"unit_{target}", f"fvchunk_{target}", f"channel_{target}")


def fv_variables(ds: Any) -> list[tuple[FeatureVizNames, Any]]:
    """Every feature-visualisation target of a ``featureviz`` dataset with its
    image variable, read from the variables' ``model``, ``layer`` and ``kind`` attributes."""
    out = []
    for name, var in ds.data_vars.items():
        if not str(name).startswith("fv_") or not {"model", "layer", "kind"} <= set(var.attrs):
            continue
        n = fv_target(str(var.attrs["model"]), str(var.attrs["layer"]), str(var.attrs["kind"]))
        if n.images == name:
            out.append((n, var))
    return out


def study_group(name: str) -> str:
    """The group of a study's results."""
    return f"{STUDIES}/{name}"
