"""The store's studies as the viewer reads them, and where a click on a study's figure takes the explorer.

A study's table is the group ``studies/<name>`` that ``perturber study``
writes (:func:`perturber.pipeline.studies.write_table`): a small tidy
Dataset, one dimension per grouping (``yaw``, ``k``, ``object``, ``model``,
...), attrs ``study``, ``cube``, ``definition``, ``unit``, ``control``,
``published``, ``finding``. It is read when a study is chosen, not before.

:class:`StudyView` turns a click on the figure (a value along one of the
table's dimensions) into a move of the explorer's
:class:`~perturber.viewer.state.CubeState`: a dimension that is a factor axis
of the explored cube (its own name, :data:`ALIASES`, or the coordinate's
``factor`` attribute) snaps to the nearest grid value; a model becomes the
left model; anything else is one line saying which cube to open instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import param
import xarray as xr

from perturber.pipeline import factors, groups, names
from perturber.pipeline.studies import StudyError

__all__ = ["ALIASES", "study_names", "read_table", "StudyView"]

#: Table dimensions named otherwise than the factor they vary (a coordinate's
#: ``factor`` attribute says the same for any other dimension).
ALIASES = {"k": "shuffle", "scene": "object", "objects": "object"}


def study_names(path: str) -> list[str]:
    """The studies in the store at ``path`` (:func:`perturber.pipeline.groups.names`
    under ``studies/``); a store that cannot be listed is a one-line :class:`StudyError`."""
    try:
        return groups.names(path, names.STUDIES)
    except Exception as exc:
        raise StudyError(f"{path}: cannot list its studies ({type(exc).__name__})") from None


def read_table(path: str, name: str) -> xr.Dataset:
    """The table of study ``name`` (in memory: a table is small); a group that
    cannot be read is a one-line :class:`StudyError` naming the command that writes it again."""
    try:
        ds = xr.open_zarr(path, group=names.study_group(name), chunks=None, consolidated=False).load()
    except Exception as exc:
        raise StudyError(f"study {name!r} cannot be read ({type(exc).__name__}); "
                         f"`perturber study {name} --store {path}` writes it again") from None
    if not ds.data_vars:
        raise StudyError(f"study {name!r} holds no table; `perturber study {name} --store {path}` writes it again")
    return ds


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class StudyView(param.Parameterized):
    """One study of the store shown beside the explorer ``state`` (a :class:`CubeState`)."""

    note = param.String(default="", doc="One line: where the last click moved the explorer, or why it did not")

    def __init__(self, path: str, state: Any, name: str, table: xr.Dataset, **params: Any):
        super().__init__(**params)
        self.path, self.state, self.study, self.table = path, state, name, table
        self.cubes = [c for c in str(table.attrs.get("cube", "")).split(",") if c]

    # ------------------------------------------------------------------ which cube

    def same_cube(self) -> bool:
        """Whether the study read the cube being explored (a study of unknown cube counts as it)."""
        return not self.cubes or self.state.cube in self.cubes

    def open_hint(self) -> str:
        """One line: the study's cube is not the explored one, and how to open it."""
        cube = self.cubes[0]
        return (f"this study reads cube {cube!r}, not the one being explored ({self.state.cube!r}): "
                f"open it with `perturber view {self.path} --cube {cube}`")

    # ------------------------------------------------------------------ a click

    def axis_of(self, dim: str) -> str | None:
        """The factor a table dimension varies, or None."""
        attr = self.table[dim].attrs.get("factor") if dim in self.table.coords else None
        if attr:
            return str(attr)
        if dim in factors.FACTORS:
            return dim
        return ALIASES.get(dim)

    def points(self, dim: str, x: Any) -> list[tuple[str, Any]]:
        """(table dimension, coordinate value) of a click at ``x`` along the figure's
        ``dim``: a number snaps to the nearest coordinate; a category (a bar's
        label, e.g. ``"dog, efficientnet_lite0"``) names one value per dimension."""
        table = self.table
        x_num = _number(x)
        if dim in table.coords and x_num is not None and np.issubdtype(table[dim].dtype, np.number):
            coords = table[dim].values
            return [(dim, coords[int(np.argmin(np.abs(coords.astype(float) - x_num)))].item())]
        found = []
        for part in str(x).split(", "):
            for d in table.dims:
                if d not in table.coords:
                    continue
                hit = next((v for v in table[d].values if part in (str(v), _label(v))), None)
                if hit is not None:
                    found.append((str(d), hit.item() if isinstance(hit, np.generic) else hit))
                    break
        return found or [(dim, x)]

    def moves(self, dim: str, x: Any) -> dict[str, Any]:
        """The explorer parameters a click at ``x`` along ``dim`` sets: axis → nearest grid value, ``model_a``."""
        state = self.state
        out: dict[str, Any] = {}
        for d, value in self.points(dim, x):
            if d == names.MODEL and value in state.param["model_a"].objects:
                out["model_a"] = value
                continue
            axis = self.axis_of(d)
            if axis not in state.axes:
                continue
            grid = list(state.param[axis].objects)
            if factors.get(axis).numeric:
                number = _number(value)
                if number is not None:
                    out[axis] = grid[int(np.argmin([abs(float(v) - number) for v in grid]))]
            else:
                match = next((v for v in grid if str(v) == str(value)), None)
                if match is not None:
                    out[axis] = match
        return out

    def tap(self, dim: str, x: Any) -> None:
        """A click at ``x`` along the figure's ``dim``: move the explorer there (one
        ``changed`` event), or say in :attr:`note` why not. Never raises."""
        if x is None:
            return
        try:
            moves = self.moves(dim, x)
        except Exception as exc:  # a figure we did not foresee: one line, not a traceback
            self.note = f"cannot place {dim} = {_label(x)} in the explorer ({type(exc).__name__})"
            return
        if not moves:
            self.note = self.open_hint() if not self.same_cube() else (
                f"{dim} = {_label(x)} is not an axis of cube {self.state.cube!r}: the explorer stays where it is")
            return
        self.state.param.update(**moves)
        where = ", ".join(f"{a} = {_label(v)}" for a, v in moves.items())
        self.note = f"explorer moved to {where}" + ("" if self.same_cube() else f" ({self.open_hint()})")
