"""Feature visualisation (lucent): batched optimisation of many units at once,
precomputed into the store's ``featureviz`` group; data-driven neuron groups."""


class FeatureVizError(ValueError):
    """A feature-visualisation spec or store cannot be used; the message is one line."""
