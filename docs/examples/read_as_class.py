"""Worked example (CONTRIBUTING.md): a study.

A study turns a cube into a finding: an analysis function of a
:class:`~perturber.pipeline.analysis.Cube` that returns a tidy xarray
Dataset, registered under its name with the cube it reads.
:func:`perturber.pipeline.studies.run_study` writes the result to the
store's ``studies/<name>`` group.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import study


@study("read_as_class", cube="views",
       definition="Per object and model: the share of the computed samples whose top-1 class is one of the "
                  "object's classes (data/catalogue.yaml).")
def read_as_class(cube: Cube) -> xr.Dataset:
    share = np.full((len(cube.objects), len(cube.models)), np.nan)
    samples = np.zeros(share.shape, dtype=int)
    for i, row in enumerate(cube.summary()):
        o, m = divmod(i, len(cube.models))
        share[o, m], samples[o, m] = row.reads_as_class, row.samples
    return xr.Dataset(
        {"share": (("object", "model"), share, {"long_name": "share of samples read as one of the object's classes", "units": "1"}),
         "samples": (("object", "model"), samples, {"long_name": "computed samples", "units": "1"})},
        coords={"object": np.array(cube.objects, dtype=object), "model": np.array(cube.models, dtype=object)},
    )
