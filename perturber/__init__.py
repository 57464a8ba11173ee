"""Perturber: how ImageNet CNNs respond when a 3D scene is perturbed.

The package has three parts, each a folder of the repository:

- :mod:`perturber.pipeline` (``pipeline/``): the factors, rendering, models,
  the one ``evaluate()`` engine, the precompute job, its Zarr store and the
  analysis of a cube;
- :mod:`perturber.viewer` (``viewer/``): the Panel viewer and its on-demand engine;
- :mod:`perturber.featureviz` (``featureviz/``): feature visualisation with lucent.

Importing ``perturber`` itself is cheap: it loads none of torch, pyrender or
panel; each part loads what it needs when it is imported.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("perturber")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "unknown"

__all__ = ["__version__"]
