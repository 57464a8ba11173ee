"""Viewer state (``param.Parameterized``), apart from the views that show it.

- :class:`CubeState`: the point in a cube, the compared models, live compute;
  its ``changed`` event is what every panel depends on;
- :class:`Settled`: ticks after the quick views of a new point were sent;
- :class:`Landscape`: the response landscape's settings and probabilities;
- :class:`AttackState`: PGD at the current point.
"""

from perturber.viewer.state.attack import ALPHAS, AttackState
from perturber.viewer.state.cube import DAMAGED, NOT_COMPUTED, CubeState, Settled
from perturber.viewer.state.landscape import Landscape

__all__ = ["CubeState", "Settled", "Landscape", "AttackState", "ALPHAS", "NOT_COMPUTED", "DAMAGED"]
