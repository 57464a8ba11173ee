"""Searches for inputs that break a model.

- In pixel space (``perturber fool``): fooling images after Nguyen et al. 2015:
  gradient ascent with the readability regularisers of Yosinski et al. 2015
  (:mod:`.gradient`), and evolution with a direct or a CPPN encoding
  (:mod:`.encodings`) inside MAP-Elites with one archive cell per ImageNet
  class (:mod:`.mapelites`, on pyribs' archive). Results go to the store's
  ``fooling/<run>`` group (:mod:`.fooling`).
- In factor space (``perturber search``): the smallest change of a scene's
  continuous factors that flips a model away from the object's class set
  (CMA-ES), and a failure map over two factors (MAP-Elites)
  (:mod:`.factor_search`). Results go to ``search/<run>``.

Every image here is (B, 3, S, S) float in [0, 1] (the model input the
precompute stores), or (B, S, S, 3) uint8 once stored.
"""

from perturber.pipeline.errors import PerturberError

__all__ = ["SearchError"]


class SearchError(PerturberError):
    """A search cannot run as asked; the message is one line."""
