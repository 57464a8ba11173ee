"""ImageNet-1k class names, and the class sets objects are read as."""

from __future__ import annotations

import functools
from typing import Sequence

from perturber.pipeline.errors import PerturberError

__all__ = ["CLASS_SETS", "UnknownClass", "imagenet_categories", "indices"]

#: Named sets of ImageNet-1k classes, usable in the catalogue's ``classes``.
CLASS_SETS = {"@dogs": range(151, 269), "@cats": range(281, 286)}


class UnknownClass(PerturberError):
    """A class name that ImageNet-1k does not have."""


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (shipped with torchvision)."""
    from torchvision.models import ResNet50_Weights  # heavy: only when the names are needed

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def indices(names: Sequence[str]) -> list[int]:
    """ImageNet-1k indices of class names and class sets (:data:`CLASS_SETS`), in the order given."""
    categories = imagenet_categories()
    out: list[int] = []
    for name in names:
        if name in CLASS_SETS:
            out.extend(CLASS_SETS[name])
        elif name in categories:
            out.append(categories.index(name))
        else:
            raise UnknownClass(f"{name!r} is not an ImageNet class name")
    return out
