"""The viewer's panels: one class per module, each showing one thing about the
current point (or the whole cube), each depending on the state's ``changed``
event (or on :class:`~perturber.viewer.state.Settled` for the slower ones).
A panel is anything Panel can lay out (it has ``__panel__``); the layout,
:mod:`perturber.viewer.app`, lists them.
"""

import functools


@functools.cache
def bokeh_plots() -> None:
    """HoloViews' Bokeh backend, loaded once per process (``hv.extension`` costs
    ~0.1 s a call, and a session called it once per plotting panel)."""
    import holoviews as hv

    hv.extension("bokeh", logo=False)
