"""Plugins: factors (and their implementations) from other packages.

A package adds factors by naming the module that declares them under the
entry-point group ``perturber.plugins`` in its ``pyproject.toml``::

    [project.entry-points."perturber.plugins"]
    vignette = "my_package.vignette"

The module registers its factors the way Perturber's own are registered
(``@image_op(Factor(...), order=...)``, ``@scene_setter(...)``; see
CONTRIBUTING.md). :func:`load` imports every such module once per process:
the ``perturber`` command calls it before it reads its options, and
``evaluate()`` before it computes, so Dask workers have the plugins too
(they must be installed where the workers run).
"""

from __future__ import annotations

import importlib.metadata

from perturber.pipeline.errors import PerturberError, one_line

__all__ = ["GROUP", "PluginError", "load"]

#: The entry-point group plugins are listed under.
GROUP = "perturber.plugins"

_loaded: dict[str, str] = {}  # entry-point name -> module, once imported in this process
_scanned = False


class PluginError(PerturberError):
    """A plugin could not be imported; the message is one line."""


def load() -> dict[str, str]:
    """Import every plugin (the first call in a process; later calls return at
    once): entry-point name → module. A plugin that fails is a :class:`PluginError`."""
    global _scanned
    if _scanned:
        return dict(_loaded)
    for entry in importlib.metadata.entry_points(group=GROUP):
        try:
            entry.load()
        except Exception as exc:
            raise PluginError(f"plugin {entry.name!r} ({entry.value}) cannot be loaded: {one_line(exc, typed=True)}") from None
        _loaded[entry.name] = entry.value
    _scanned = True
    return dict(_loaded)
