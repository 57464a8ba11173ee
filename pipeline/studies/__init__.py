"""Studies: from a store to a finding, as a tidy table, figures and a report.

A study is an analysis function registered with :func:`study` under its
name, with the cube(s) it reads, the definition of what it measures, its
independent unit (what the bootstrap resamples), its control condition and
the published result it is compared with::

    @study("read_as_class", cube="views", definition="Per object and model: ...")
    def read_as_class(cube: Cube) -> xr.Dataset: ...

The function takes the :class:`~perturber.pipeline.analysis.Cube` (a dict
of them when ``cube`` names several) and, as keyword arguments, the study's
``params`` (from its YAML, or ``--param`` on the command line); it returns a
tidy xarray Dataset: one variable per measured quantity (``v``, with
``v_lo``/``v_hi`` from :func:`~perturber.pipeline.studies.bootstrap.bootstrap`),
one dimension per grouping (model, object, k, ...).

:func:`run_study` runs one on a store and writes the result to the group
``studies/<name>``, which plain ``xarray.open_zarr(store, group=...)`` opens;
the ``perturber study`` command (:mod:`.runner`) also computes the cubes a
study needs (``workflows/studies/<name>.yaml``) and writes the CSV, figures
and report (:mod:`.outputs`). The built-in studies live in this package, one
module each.
"""

from __future__ import annotations

import difflib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import xarray as xr

import perturber
from perturber.pipeline import groups, names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.store import StoreError, group_state, open_cube

__all__ = ["Study", "StudyError", "study", "get", "run_study", "analyse", "check_params", "STUDIES", "load_builtin"]

#: The built-in studies' modules (imported by :func:`load_builtin`).
BUILTIN = ("yaw_fluctuation", "background", "cue_conflict", "patch_shuffle", "frequency", "transfer",
           "units_directions", "saliency_on_object")


class StudyError(PerturberError):
    """A study cannot run as asked; the message is one line."""


@dataclass(frozen=True)
class Study:
    """A registered study.

    - ``cube``: the cube group it reads (a tuple: several, given as a dict);
    - ``definition``: what it measures, precisely (the report's first section);
    - ``unit``: the independent unit its intervals resample (``"view"``, ``"seed"``, ...);
    - ``control``: the control condition, and why the result means nothing without it;
    - ``published``: the published result it is compared with, and its source;
    - ``published_models``: registry entries a user with internet runs for the
      published comparison (``perturber study NAME --models a,b``);
    - ``figure``: the table → (matplotlib Figure, HoloViews object), or None
      for the default (:func:`perturber.pipeline.studies.outputs.default_figure`);
    - ``check``: called with the parameters before any cube is computed; raises
      a one-line :class:`StudyError` for a bad one (a missing folder, ...).
    """

    name: str
    cube: str | tuple[str, ...]
    definition: str
    analyse: Callable[..., xr.Dataset]
    unit: str = ""
    control: str = ""
    published: str = ""
    published_models: tuple[str, ...] = ()
    figure: Callable[[xr.Dataset], tuple[Any, Any]] | None = None
    check: Callable[..., None] | None = None

    @property
    def cubes(self) -> tuple[str, ...]:
        return (self.cube,) if isinstance(self.cube, str) else tuple(self.cube)

    @property
    def params(self) -> dict[str, Any]:
        """The analysis function's keyword parameters and their defaults."""
        sig = inspect.signature(self.analyse)
        return {n: p.default for n, p in list(sig.parameters.items())[1:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


STUDIES: dict[str, Study] = {}


def study(name: str, cube: str | tuple[str, ...], definition: str, **info: Any) -> Callable:
    """Register the decorated function as the study ``name`` of the cube group(s)
    ``cube``; ``info``: the other fields of :class:`Study`."""
    def register(fn: Callable[..., xr.Dataset]) -> Callable[..., xr.Dataset]:
        known = STUDIES.get(name)
        if known is not None and (known.analyse.__module__, known.analyse.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"study {name!r} is already registered")  # the same function again (a reload) replaces itself
        STUDIES[name] = Study(name, cube, definition, fn, **info)
        return fn

    return register


def load_builtin() -> None:
    """Import the built-in studies (each registers itself)."""
    import importlib

    for module in BUILTIN:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise


def get(name: str) -> Study:
    """The study ``name``, or a one-line :class:`StudyError` with a suggestion."""
    load_builtin()
    if name not in STUDIES:
        hint = difflib.get_close_matches(name, STUDIES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise StudyError(f"unknown study {name!r}{extra}; known: {', '.join(sorted(STUDIES)) or 'none'}")
    return STUDIES[name]


def check_params(s: Study, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` if the analysis takes each of them and the study's ``check``
    accepts them; else a one-line :class:`StudyError`."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(s.params))
    if unknown:
        raise StudyError(f"study {s.name!r} has no parameter {unknown[0]!r} (it has: {', '.join(s.params) or 'none'})")
    if s.check is not None:
        s.check(**params)
    return params


def analyse(name: str, store: Any, params: Mapping[str, Any] | None = None,
            storage_options: Mapping | None = None) -> xr.Dataset:
    """Run the study ``name`` on its cube(s) of ``store`` and return its table (nothing is written).

    A cube the store lacks is a one-line :class:`StudyError` that names it and
    the command that computes it.
    """
    s = get(name)
    params = check_params(s, params)
    cubes = {}
    for cube in s.cubes:
        try:
            state, _ = group_state(store, cube, storage_options)
            if state != "complete":
                raise KeyError(cube)
            cubes[cube] = Cube(open_cube(store, cube, storage_options))
        except (KeyError, FileNotFoundError, StoreError):
            raise StudyError(f"study {name!r} needs the cube {cube!r}, which the store does not hold; compute it with "
                             f"`perturber study {name} --store {store}` (or `perturber precompute "
                             f"workflows/studies/{name}.yaml --out {store}`)") from None
    first = cubes[s.cubes[0]] if isinstance(s.cube, str) else cubes
    result = s.analyse(first, **params)
    result.attrs.update({"study": name, "cube": ",".join(s.cubes), "definition": s.definition,
                         "unit": s.unit, "control": s.control, "published": s.published,
                         "cube_spec_sha256": ",".join(c.ds.attrs.get("spec_sha256", "") for c in cubes.values()),
                         "params": json.dumps(params, sort_keys=True, default=str),
                         "perturber_version": perturber.__version__})
    return result


def run_study(name: str, store: Any, storage_options: Mapping | None = None,
              params: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Run the study ``name`` on its cube(s) of ``store``; write its table to
    the group ``studies/<name>`` and return it."""
    result = analyse(name, store, params, storage_options)
    write_table(result, store, name, storage_options)
    return result


def write_table(result: xr.Dataset, store: Any, name: str, storage_options: Mapping | None = None) -> None:
    """Write a study's table to the store's group ``studies/<name>`` (replacing an earlier one once complete)."""
    result = result.copy()
    for var in list(result.variables):  # text as variable-length strings (Zarr v3 has no fixed-width unicode)
        if result[var].dtype.kind == "U":
            result[var] = result[var].astype(object)
    groups.write(store, names.STUDIES, name, result, storage_options)
