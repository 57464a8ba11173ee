"""perturber.viewer: the Panel + HoloViews viewer of precomputed stores.

:mod:`.state` holds where the user is (``param.Parameterized`` classes),
:mod:`.panels` one view per module, :mod:`.app` the layout and the server;
:mod:`.stores` keeps the open store handles, :mod:`.live` is the on-demand
engine, :mod:`.html` the image encoding and the stylesheet (``style.css``).
"""
