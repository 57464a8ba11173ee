"""The viewer inline in a Jupyter notebook: ``perturber.viewer.show(store)``.

The same app as ``perturber view`` (:func:`perturber.viewer.app.build_app`:
the controls beside the model input, the top-5 of two models and the tabs),
returned as a Panel layout that Jupyter renders inline as a cell's last
expression (or through ``display``). No server is needed: without one, every
section is built at once (:func:`perturber.viewer.sessions.defer`), and the
widgets talk to the kernel through Jupyter's comms.

    >>> import perturber.viewer
    >>> perturber.viewer.show("demo.zarr")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import panel as pn

from perturber.pipeline.errors import PerturberError
from perturber.viewer import app, stores
from perturber.viewer.live import LiveEngine

__all__ = ["show", "NotebookError"]


class NotebookError(PerturberError):
    """What :func:`show` was given cannot be shown; the message is one line."""


def show(store: str | Path, cube: str | None = None, engine: Any = None) -> pn.Row:
    """The viewer of ``cube`` (default: the store's first) of the Zarr ``store``,
    for Jupyter to display inline.

    ``engine``: None (grid points only), ``"local"`` (start a Dask LocalCluster
    here for live compute), the address of a running Dask scheduler, or a
    :class:`~perturber.viewer.live.LiveEngine` (shared between several views).
    Raises :class:`NotebookError` (one line) for a store without that cube; a
    :class:`~perturber.viewer.stores.StoreError` for a path that is no store.
    """
    pn.extension()  # in a notebook: loads Bokeh's and Panel's JavaScript into the page, once
    path = str(store)
    cubes = stores.cube_names(path)
    name = cube or cubes[0]
    if name not in cubes:
        raise NotebookError(f"cube {name!r}: no such cube in {path} (it has: {', '.join(cubes)})")
    if isinstance(engine, str):
        engine = LiveEngine(scheduler=None if engine == "local" else engine)
    return app.build_app(path, name, engine=engine)
