"""Where each factor is implemented: image ops and scene setters register here.

A factor is declared once (:mod:`perturber.pipeline.factors`: name, kind,
domain, default, units, doc); its implementation registers against its name
with a decorator next to the code:

- an image factor's op (:mod:`perturber.pipeline.imageops`) with :func:`image_op`;
- a scene factor's setter (:mod:`perturber.pipeline.scene`) with :func:`scene_setter`.

Either decorator also accepts a :class:`~perturber.pipeline.factors.Factor`
instead of a name, which declares it there and then: a plugin's factor is
declared and implemented in one place. ``tests/test_implementations.py``
fails when a factor has no implementation or an implementation names an
unknown factor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from perturber.pipeline import factors
from perturber.pipeline.factors import Factor

__all__ = ["ImageOp", "image_op", "registered_ops", "SceneSetter", "scene_setter", "registered_setters", "implemented",
           "scratch_registry"]


@dataclass(frozen=True)
class ImageOp:
    """An op and the image factors it implements (its arguments after the images, in order)."""

    fn: Callable[..., Any]
    factors: tuple[str, ...]
    order: float
    seeds: tuple[str, ...] = ()  # factors that only seed the op: they alone never make it act
    rgba: bool = False  # takes and returns (B, 4, H, W) straight-alpha images instead of RGB
    skip_at_default: bool = True  # False: the defaults are not the identity (the background is painted)

    def acting(self, params: Sequence[Mapping[str, Any]]) -> list[int]:
        """The rows of a batch of validated factor values that the op changes
        (every row when its defaults are not the identity)."""
        if not self.skip_at_default:
            return list(range(len(params)))
        acting = [name for name in self.factors if name not in self.seeds]
        return [i for i, p in enumerate(params) if any(p[name] != factors.get(name).default for name in acting)]

    def at_identity(self, params: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the op can be skipped for this batch of validated factor values."""
        return not self.acting(params)


_OPS: list[ImageOp] = []


def image_op(*names: str | Factor, order: float, seeds: Sequence[str] = (), rgba: bool = False,
             skip_at_default: bool = True) -> Callable:
    """Register the decorated function as the op of the image factors ``names``.

    A name is a declared factor, or a :class:`Factor` to declare here (a
    plugin's). ``order`` places the op among the others (the table in
    :mod:`perturber.pipeline.imageops`); ``seeds`` are factors that only
    seed it (shared seeds may serve several ops); ``rgba`` ops see the alpha
    channel. A factor has one op. The op is
    ``fn(images (B, C, H, W), *values)``, one value per name, in order. The
    same function registered again (a module reloaded) replaces itself.
    """
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        declared = tuple(factors.declare(n, "image").name for n in names)
        others = [op for op in _OPS if not _same(op.fn, fn)]
        taken = {f for op in others for f in op.factors if f not in op.seeds}
        clash = [n for n in declared if n in taken and n not in seeds]
        if clash:
            raise ValueError(f"image factor {clash[0]!r} already has an op")
        if any(op.order == order for op in others):
            raise ValueError(f"another image op already has order {order:g}")
        others.append(ImageOp(fn, declared, float(order), tuple(seeds), rgba, skip_at_default))
        _OPS[:] = sorted(others, key=lambda op: op.order)
        return fn

    return register


def registered_ops() -> list[ImageOp]:
    """Every registered op, in the order :func:`apply_image_factors` applies them."""
    return list(_OPS)


@dataclass(frozen=True)
class SceneSetter:
    """A function that sets part of the 3D scene from factor values, before every render."""

    fn: Callable[[Any, Mapping[str, Any]], None]
    factors: tuple[str, ...]
    order: float


_SETTERS: list[SceneSetter] = []


def scene_setter(*names: str | Factor, order: float) -> Callable:
    """Register the decorated function as a setter of the scene factors ``names``.

    The setter is ``fn(renderer, params)``: before every render it sets what
    its factors control on the renderer (:class:`perturber.pipeline.scene.Renderer`),
    from the validated factor values ``params``, whatever they are (the
    renderer keeps its scene between renders, so a setter that changed
    something must set it back at the defaults). Setters run in ascending
    ``order``; a factor may be served by several setters. The same function
    registered again (a module reloaded) replaces itself.
    """
    def register(fn: Callable[[Any, Mapping[str, Any]], None]) -> Callable[[Any, Mapping[str, Any]], None]:
        declared = tuple(factors.declare(n, "scene").name for n in names)
        others = [s for s in _SETTERS if not _same(s.fn, fn)]
        if any(s.order == order for s in others):
            raise ValueError(f"another scene setter already has order {order:g}")
        others.append(SceneSetter(fn, declared, float(order)))
        _SETTERS[:] = sorted(others, key=lambda s: s.order)
        return fn

    return register


def _same(a: Callable, b: Callable) -> bool:
    """Whether two functions are one definition (the same module and name)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def registered_setters() -> list[SceneSetter]:
    """Every registered scene setter, in the order a render runs them."""
    return list(_SETTERS)


def implemented(kind: str) -> set[str]:
    """Names of the factors of ``kind`` (``scene`` or ``image``) that some registered implementation names."""
    found = _OPS if kind == "image" else _SETTERS
    return {name for impl in found for name in impl.factors}


@contextlib.contextmanager
def scratch_registry() -> Iterator[None]:
    """Undo, when the block ends, every factor and implementation registered in it
    (trying a factor out in a notebook; tests of plugins)."""
    declared, ops, setters = dict(factors.FACTORS), list(_OPS), list(_SETTERS)
    try:
        yield
    finally:
        factors.FACTORS.clear()
        factors.FACTORS.update(declared)
        _OPS[:] = ops
        _SETTERS[:] = setters
