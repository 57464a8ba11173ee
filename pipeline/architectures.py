"""Untrained networks by name, and the adapter that puts a network's outputs in
ImageNet-1k's class order.

An architecture is a name of :data:`ARCHITECTURES`, ``torchvision:<model>``
(any of torchvision's classifiers) or ``timm:<model>`` (any of timm's:
:mod:`perturber.pipeline.timm_models`). Weights come from the registry entry
(:mod:`perturber.pipeline.models`).

Class lists. Our store, studies and viewer speak ImageNet-1k's 1000 classes in
index order (sorted WordNet IDs: ``data/classes/imagenet.txt``). A network
trained with another output order or extra outputs names a class list in its
registry entry (``classes: inception5h``): ``data/classes/<name>.txt`` gives,
per network output, its WordNet ID or ``-`` for an output outside ImageNet-1k.
:func:`adapt_outputs` then selects and reorders the outputs to the 1000
classes, so the network's logits are (B, 1000) in index order everywhere.
"""

from __future__ import annotations

import functools
import importlib
import types
from pathlib import Path
from typing import Callable

import torch
from efficientnet_lite_pytorch import EfficientNet

from perturber.pipeline import config
from perturber.pipeline.classes import imagenet_wnids
from perturber.pipeline.weights import ModelError

__all__ = ["ARCHITECTURES", "KNOWN", "build_architecture", "is_known", "class_index", "adapt_outputs"]


def _efficientnet_lite(variant: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        return EfficientNet.from_name(variant)

    return build


class _GlobalPoolFunctional:
    """``torch.nn.functional`` as lucent's InceptionV1 forward sees it, except
    that its head's fixed 7×7 average pool is a global average pool. At 224 px
    the two are the same (the map is 7×7); at other sizes lucent's pool fails
    (below 224) or silently makes several outputs per image (above), while the
    global pool gives the network's logits at any size, as Lucid's graph gives
    its hidden layers at any size and torchvision's GoogLeNet pools adaptively."""

    def __getattr__(self, name: str):
        return getattr(torch.nn.functional, name)

    @staticmethod
    def avg_pool2d(x: torch.Tensor, kernel_size, *args, **kwargs) -> torch.Tensor:
        if tuple(kernel_size) == (7, 7):
            return torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return torch.nn.functional.avg_pool2d(x, kernel_size, *args, **kwargs)


@functools.lru_cache(maxsize=1)
def _lucent_inceptionv1_class() -> type:
    module = importlib.import_module("lucent.modelzoo.inceptionv1.InceptionV1")  # only for this architecture
    base = module.InceptionV1
    # lucent's forward, its own code, reading F from a namespace where only the head's pool differs
    forward = types.FunctionType(base.forward.__code__, {**base.forward.__globals__, "F": _GlobalPoolFunctional()},
                                 "forward", base.forward.__defaults__, base.forward.__closure__)
    return type("LucidInceptionV1", (base,), {"forward": forward, "__module__": __name__, "__qualname__": "LucidInceptionV1"})


def __getattr__(name: str):
    """``LucidInceptionV1`` is made on first use (lucent loads then); pickle finds it here."""
    if name == "LucidInceptionV1":
        return _lucent_inceptionv1_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lucent_inceptionv1() -> torch.nn.Module:
    """Lucid's InceptionV1 ("inception5h", Szegedy et al.'s GoogLeNet as
    converted by ProGamerGov) through torch-lucent's module: 1008 logits.

    lucent's forward ends in a softmax; it is replaced by the identity so the
    network returns logits, as every other architecture does. Plain ReLUs
    (lucent's "redirected" ReLUs change gradients, not outputs). Any input
    size: :class:`_GlobalPoolFunctional`."""
    net = _lucent_inceptionv1_class()(pretrained=False, redirected_ReLU=False)
    net.softmax2 = torch.nn.Identity()
    return net


ARCHITECTURES: dict[str, Callable[[], torch.nn.Module]] = {
    "efficientnet_lite0": _efficientnet_lite("efficientnet-lite0"),
    "efficientnet_lite1": _efficientnet_lite("efficientnet-lite1"),
    "efficientnet_lite2": _efficientnet_lite("efficientnet-lite2"),
    "lucent_inceptionv1": _lucent_inceptionv1,
}

#: Inception networks without their auxiliary heads: their forward then returns
#: logits in training too (fine-tuning), and no parameter sits outside the loss
#: (DDP). Their pretrained files carry the heads: an entry drops them
#: (``drop_prefixes: [aux1., aux2.]``). No initialisation either: weights follow.
_TORCHVISION_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}

KNOWN = f"known: {', '.join(ARCHITECTURES)}, torchvision:<name>, timm:<name>"


def is_known(name: str) -> bool:
    """Whether ``name`` has the form of an architecture (without building it)."""
    return name in ARCHITECTURES or any(name.startswith(p) and len(name) > len(p) for p in ("torchvision:", "timm:"))


def build_architecture(name: str) -> torch.nn.Module:
    """An untrained network: a name of :data:`ARCHITECTURES`, ``torchvision:<model>`` or ``timm:<model>``."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]()
    if name.startswith("torchvision:"):
        import torchvision  # heavy (it loads torch._dynamo): only for torchvision architectures

        model = name.split(":", 1)[1]
        if model not in torchvision.models.list_models():
            raise ModelError(f"unknown torchvision architecture {model!r}")
        return torchvision.models.get_model(model, weights=None, **_TORCHVISION_OPTIONS.get(model, {}))
    if name.startswith("timm:"):
        from perturber.pipeline import timm_models  # timm is heavy: only for timm architectures

        return timm_models.build(name.split(":", 1)[1])
    raise ModelError(f"unknown architecture {name!r} ({KNOWN})")


# --------------------------------------------------------------------------
# Class lists
# --------------------------------------------------------------------------


def _class_file(name: str) -> Path:
    path = Path(name) if name.endswith(".txt") else config.DATA_DIR / "classes" / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in (config.DATA_DIR / "classes").glob("*.txt"))
        raise ModelError(f"unknown class list {name!r} (known: {', '.join(known)}, or the path of a .txt file)")
    return path


@functools.lru_cache(maxsize=16)
def class_index(name: str) -> tuple[int, ...]:
    """For each of ImageNet-1k's 1000 classes in index order, the network output
    that scores it, for the class list ``name`` (module docstring). Every
    ImageNet-1k class must appear exactly once."""
    path = _class_file(name)
    outputs = [line.split()[0] if line.split() else "" for line in path.read_text().split("\n")]
    while outputs and not outputs[-1]:
        outputs.pop()
    wnids = imagenet_wnids()
    position = {wnid: i for i, wnid in enumerate(wnids)}
    index = [-1] * len(position)
    for output, wnid in enumerate(outputs):
        if wnid == "-":
            continue
        if wnid not in position:
            raise ModelError(f"class list {path.name}: line {output + 1} has {wnid!r}, not an ImageNet-1k WordNet ID (or -)")
        if index[position[wnid]] != -1:
            raise ModelError(f"class list {path.name}: {wnid} appears twice (lines {index[position[wnid]] + 1} and {output + 1})")
        index[position[wnid]] = output
    missing = [w for w, i in zip(wnids, index) if i == -1]
    if missing:
        raise ModelError(f"class list {path.name}: {len(missing)} ImageNet-1k classes missing (e.g. {missing[0]})")
    return tuple(index)


def adapt_outputs(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Make ``model`` return (B, 1000) logits in ImageNet-1k order for class list
    ``name``: a forward hook selects the outputs (its index is a non-persistent
    buffer, so it follows ``.to(device)`` and stays out of the state dict).
    Returns ``model`` itself."""
    model.register_buffer("perturber_class_index", torch.tensor(class_index(name), dtype=torch.long), persistent=False)

    def select(module: torch.nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return output.index_select(-1, module.perturber_class_index)

    model.register_forward_hook(select)
    return model
