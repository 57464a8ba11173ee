"""Worked example (CONTRIBUTING.md): a scene factor from outside Perturber.

``stretch`` scales the object's height. Its scene setter runs before every
render and sets what the factor controls, at the default too (the renderer
keeps its scene between renders). Registered like :mod:`vignette`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from perturber.pipeline.factors import Factor, Interval
from perturber.pipeline.implementations import scene_setter

STRETCH = Factor("stretch", "scene", Interval(0.5, 2.0), 1.0, "factor",
                 "Scales the object's height (1: as it is).", "Object & shape")


@scene_setter(STRETCH, order=50)  # after the built-in setters (geometry 0 ... ambient 40)
def stretch(renderer: Any, params: Mapping[str, Any]) -> None:
    """Scale the object node about the object's centre along +y."""
    renderer.scene.set_pose(renderer.mesh_node, np.diag([1.0, float(params["stretch"]), 1.0, 1.0]))
