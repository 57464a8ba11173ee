"""Feature visualisation (lucent): batched optimisation of many units at once,
precomputed into the store's ``featureviz`` group."""

from perturber.pipeline.errors import PerturberError


class FeatureVizError(PerturberError):
    """A feature-visualisation spec or store cannot be used; the message is one line."""
