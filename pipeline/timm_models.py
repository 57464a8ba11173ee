"""timm's ImageNet classifiers in the registry: ``architecture: timm:<model>``.

An entry as short as ::

    convnext_tiny:
      architecture: timm:convnext_tiny
      weights: {timm: convnext_tiny.fb_in1k}

works: the weights are the file timm's pretrained config names on the
Hugging Face hub (verified against the hub's sha256, like every hub file),
and the input size, mean and std come from the same config. The friendly
layer names come from the model's feature info (timm's record of the stages
that feature extraction uses): ``stride4``, ``stride8``, … name the last
module at each output stride. Any field the entry gives wins.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import timm
import torch

from perturber.pipeline.errors import ModelError

__all__ = ["build", "pretrained_config", "hub_file", "feature_layers", "defaults"]


def _unknown(name: str) -> ModelError:
    close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
    hint = f" (similar: {', '.join(close)})" if close else ""
    return ModelError(f"unknown timm model {name!r}{hint}")


def build(architecture: str) -> torch.nn.Module:
    """An untrained timm network (no download)."""
    if not timm.is_model(architecture.split(".")[0]):
        raise _unknown(architecture)
    try:  # ViTs, Swins: any input size (feature visualisation shows a model its own image size)
        return timm.create_model(architecture, pretrained=False, dynamic_img_size=True)
    except TypeError:  # a convolutional family, which takes any size anyway
        return timm.create_model(architecture, pretrained=False)


def pretrained_config(tag: str) -> Any:
    """timm's pretrained config of ``<model>.<tag>`` (or a model's default weights)."""
    try:
        cfg = timm.models.get_pretrained_cfg(tag, allow_unregistered=False) if "." in tag else None
        if cfg is None and "." not in tag and timm.is_model(tag):
            cfg = timm.models.get_pretrained_cfg(tag)
    except RuntimeError:  # timm's answer to an unknown tag or a model without pretrained weights
        cfg = None
    if cfg is None:
        raise _unknown(tag)
    return cfg


def hub_file(tag: str, name: str = "") -> tuple[str, str]:
    """(Hugging Face repository, file) of timm's weights ``tag``."""
    cfg = pretrained_config(tag)
    if cfg.num_classes != 1000:
        raise ModelError(f"model {name!r}: timm's {tag} has {cfg.num_classes} classes, not ImageNet-1k's 1000")
    if not cfg.hf_hub_id:
        raise ModelError(f"model {name!r}: timm's weights {tag!r} are not on the Hugging Face hub; give a url with a sha256")
    return cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"


@functools.lru_cache(maxsize=32)
def feature_layers(architecture: str) -> dict[str, str]:
    """Friendly layer name → module path from the model's feature info:
    ``stride<r>`` for the module whose output has output stride r; where
    several share a stride (a ViT's blocks), ``feature<i>`` for the i-th.
    Built on the meta device: no memory, no weights."""
    with torch.device("meta"):
        model = build(architecture)
    info = getattr(model, "feature_info", None) or []
    modules = dict(model.named_modules())
    found = [(item.get("reduction"), item.get("module")) for item in info if isinstance(item, Mapping)]
    found = [(r, m) for r, m in found if m in modules]
    if len({r for r, _ in found}) == len(found):
        return {f"stride{r}": m for r, m in found}
    return {f"feature{i}": m for i, (_, m) in enumerate(found)}


def defaults(architecture: str, weights: Any, where: str) -> dict[str, Any]:
    """The fields a timm entry may leave out: input_size, mean, std (from the
    pretrained config of its ``timm`` weights, or of the architecture) and
    layers (:func:`feature_layers`)."""
    tag = weights.get("timm") if isinstance(weights, Mapping) else None
    try:
        cfg = pretrained_config(str(tag or architecture))
        layers = feature_layers(architecture)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    if cfg.num_classes != 1000:
        raise ModelError(f"{where}: timm's {tag or architecture} has {cfg.num_classes} classes, not ImageNet-1k's 1000")
    return {"input_size": int(cfg.input_size[-1]), "mean": list(cfg.mean), "std": list(cfg.std), "layers": layers}
