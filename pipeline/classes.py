"""ImageNet-1k class names, and the class sets objects are read as."""

from __future__ import annotations

import functools
from typing import Sequence

from perturber.pipeline import config
from perturber.pipeline.errors import PerturberError

__all__ = ["CLASS_SETS", "UnknownClass", "imagenet_wnids", "imagenet_categories", "indices"]

#: Named sets of ImageNet-1k classes, usable in the catalogue's ``classes``.
CLASS_SETS = {"@dogs": range(151, 269), "@cats": range(281, 286)}


class UnknownClass(PerturberError):
    """A class name that ImageNet-1k does not have."""


@functools.lru_cache(maxsize=1)
def _imagenet() -> tuple[tuple[str, str], ...]:
    """(WordNet ID, name) of the 1000 ImageNet-1k classes in index order:
    ``data/classes/imagenet.txt`` (sorted WordNet IDs, torchvision's names)."""
    lines = (config.DATA_DIR / "classes" / "imagenet.txt").read_text().splitlines()
    return tuple(tuple(line.split(" ", 1)) for line in lines if line.strip())


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet IDs in class-index order (sorted)."""
    return tuple(wnid for wnid, _ in _imagenet())


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (torchvision's names)."""
    return [name for _, name in _imagenet()]


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
