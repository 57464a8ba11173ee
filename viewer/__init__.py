"""perturber.viewer: the Panel + HoloViews viewer of precomputed stores.

:mod:`.state` holds where the user is (``param.Parameterized`` classes),
:mod:`.panels` one view per module, :mod:`.app` the layout and the server;
:mod:`.stores` keeps the open store handles, :mod:`.live` is the on-demand
engine, :mod:`.html` the image encoding and the stylesheet (``style.css``).
:func:`show` (:mod:`.notebook`) displays the viewer inline in Jupyter.

Importing this package loads none of them (a Dask worker computing live
points imports :mod:`.live` only): ``show`` loads :mod:`.notebook`, and with
it Panel and the app, when it is first asked for.
"""

import importlib
from typing import Any

__all__ = ["show"]


def __getattr__(name: str) -> Any:
    """``perturber.viewer.show``, loaded on first use (PEP 562)."""
    if name == "show":
        return importlib.import_module("perturber.viewer.notebook").show
    raise AttributeError(f"module 'perturber.viewer' has no attribute {name!r}")
