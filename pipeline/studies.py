"""Studies: from a cube of a store to a finding, as a tidy table in the store.

A study is an analysis function of a :class:`~perturber.pipeline.analysis.Cube`
that returns an xarray Dataset (one variable per measured quantity, one
dimension per grouping: model, object, ...), registered with :func:`study`
under its name, with the cube it reads and the definition of what it
measures::

    @study("read_as_class", cube="views", definition="Per object and model: ...")
    def read_as_class(cube: Cube) -> xr.Dataset: ...

:func:`run_study` runs one on a store and writes the result to the group
``studies/<name>``, which plain ``xarray.open_zarr(store, group=...)`` opens.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import xarray as xr

import perturber
from perturber.pipeline import names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.store import StoreError, consolidated_ok, open_cube

__all__ = ["Study", "StudyError", "study", "get", "run_study", "STUDIES"]


class StudyError(PerturberError):
    """A study cannot run as asked; the message is one line."""


@dataclass(frozen=True)
class Study:
    """A registered study: its name, the cube it reads, what it measures, and the analysis."""

    name: str
    cube: str
    definition: str
    analyse: Callable[[Cube], xr.Dataset]


STUDIES: dict[str, Study] = {}


def study(name: str, cube: str, definition: str) -> Callable:
    """Register the decorated function as the study ``name`` of the cube group ``cube``."""
    def register(fn: Callable[[Cube], xr.Dataset]) -> Callable[[Cube], xr.Dataset]:
        known = STUDIES.get(name)
        if known is not None and (known.analyse.__module__, known.analyse.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"study {name!r} is already registered")  # the same function again (a reload) replaces itself
        STUDIES[name] = Study(name, cube, definition, fn)
        return fn

    return register


def get(name: str) -> Study:
    """The study ``name``, or a one-line :class:`StudyError` with a suggestion."""
    if name not in STUDIES:
        hint = difflib.get_close_matches(name, STUDIES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise StudyError(f"unknown study {name!r}{extra}; known: {', '.join(sorted(STUDIES)) or 'none'}")
    return STUDIES[name]


def run_study(name: str, store: Any, storage_options: Mapping | None = None) -> xr.Dataset:
    """Run the study ``name`` on its cube of ``store``; write and return its table."""
    s = get(name)
    try:
        ds = open_cube(store, s.cube, storage_options)
    except (KeyError, FileNotFoundError, StoreError) as exc:
        raise StudyError(f"study {name!r} needs the cube {s.cube!r}, which the store does not hold "
                         f"(compute it with perturber precompute; {type(exc).__name__})") from None
    result = s.analyse(Cube(ds))
    result.attrs.update({"study": name, "cube": s.cube, "definition": s.definition,
                         "cube_spec_sha256": ds.attrs.get("spec_sha256", ""), "perturber_version": perturber.__version__})
    with consolidated_ok():
        result.to_zarr(store, group=names.study_group(name), mode="w", zarr_format=3, consolidated=True,
                       storage_options=storage_options)
    return result
