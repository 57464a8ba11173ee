"""The viewer's panels: one class per module, each showing one thing about the
current point (or the whole cube), each depending on the state's ``changed``
event (or on :class:`~perturber.viewer.state.Settled` for the slower ones).
A panel is anything Panel can lay out (it has ``__panel__``); the layout,
:mod:`perturber.viewer.app`, lists them.
"""
