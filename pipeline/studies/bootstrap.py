"""Bootstrap confidence intervals over a study's independent unit.

A study first reduces its cube to one row per independent unit (a scene, a
view, a shuffle seed: whatever was drawn independently), then asks for the
statistic with a percentile interval::

    per_view = xr.DataArray(..., dims=("view", "model"))      # one value per view and model
    table = bootstrap(per_view, unit="view")                   # mean over views, with its 95 % interval
    table["value"], table["value_lo"], table["value_hi"]        # dims ("model",)

Resampling draws ``unit`` indices with replacement ``n`` times (fixed seed:
the same table every run) and recomputes the statistic on each draw; the
interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
draws (Efron's percentile interval). Units with NaN (not computed) are
ignored by the default NaN-aware mean.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import xarray as xr

__all__ = ["bootstrap", "DRAWS", "LEVEL", "SEED"]

#: Bootstrap draws, interval level and seed of every study (recorded in each table's attributes).
DRAWS = 1000
LEVEL = 0.95
SEED = 0
#: Most unit values held at once while resampling (draws are taken in batches below it).
MAX_ELEMENTS = 20_000_000


def _mean(unit: str) -> Callable[[xr.Dataset], xr.Dataset]:
    return lambda ds: ds.mean(unit, skipna=True)


def _weighted_sum(v: xr.DataArray, unit: str, weights: np.ndarray) -> xr.DataArray:
    """Sums over ``unit`` of ``v`` weighted by each draw's unit counts ``weights`` (draws, units): dims (draw, ...)."""
    v = v.transpose(unit, ...)
    flat = np.asarray(v.values, dtype=np.float64).reshape(v.shape[0], -1)
    rest = v.isel({unit: 0}, drop=True)
    return xr.DataArray((weights @ flat).reshape((len(weights), *rest.shape)), dims=("draw", *rest.dims),
                        coords=rest.coords, attrs=v.attrs)


def _mean_by_sums(ds: xr.Dataset, unit: str) -> tuple[xr.Dataset, Callable[[xr.Dataset], xr.Dataset], bool]:
    """The NaN-aware mean over ``unit`` as a ratio of sums: (data with NaN as 0
    and a count of values per variable, the statistic, ``sums=True``)."""
    variables = [str(v) for v in ds.data_vars]
    counts = {f"_count_{v}": ds[v].notnull().astype(np.float64) for v in variables}
    data = ds.fillna(0).assign(counts)

    def mean(d: xr.Dataset) -> xr.Dataset:
        with np.errstate(all="ignore"):
            return xr.Dataset({v: (d[v].sum(unit) / d[f"_count_{v}"].sum(unit)).assign_attrs(ds[v].attrs)
                               for v in variables})

    return data, mean, True


def bootstrap(data: xr.DataArray | xr.Dataset, unit: str, statistic: Callable[[xr.Dataset], xr.Dataset | xr.DataArray] | None = None,
              n: int = DRAWS, level: float = LEVEL, seed: int = SEED, name: str = "value",
              sums: bool = False) -> xr.Dataset:
    """The statistic of ``data`` and its bootstrap interval, resampling along ``unit``.

    ``data``: a DataArray (called ``name`` unless it has a name) or a Dataset of per-unit values,
    with ``unit`` among its dimensions (computed in memory: reduce a cube to its
    units first). ``statistic``: Dataset → Dataset or DataArray, reducing
    ``unit`` (default: the NaN-aware mean over ``unit``); it sees every
    variable resampled together, so a ratio of sums resamples units, not
    numerators and denominators apart. Returns a Dataset with, for every
    variable ``v`` the statistic gives, ``v`` (on all the data), ``v_lo`` and
    ``v_hi``, over the dimensions the statistic leaves.

    ``sums``: the statistic reads the data only through sums over ``unit``
    (a ratio of sums, say): each draw is then the data weighted by how often
    it drew each unit, one matrix product instead of a copy of the resampled
    data (the same draws and intervals, and fast for tens of thousands of units).
    """
    ds = data.to_dataset(name=data.name or name) if isinstance(data, xr.DataArray) else data
    if unit not in ds.dims:
        raise ValueError(f"bootstrap: {unit!r} is not a dimension of the data ({', '.join(map(str, ds.dims))})")
    ds = ds.load()
    stat = statistic or _mean(unit)
    if statistic is None and all(unit in v.dims for v in ds.data_vars.values()):
        ds, stat, sums = _mean_by_sums(ds, unit)  # the same NaN-aware mean, as sums: fast for many units

    def as_dataset(x: xr.Dataset | xr.DataArray) -> xr.Dataset:
        return x.to_dataset(name=x.name or name) if isinstance(x, xr.DataArray) else x

    estimate = as_dataset(stat(ds))
    units = ds.sizes[unit]
    rng = np.random.default_rng(seed)
    draws_index = rng.integers(0, units, size=(n, units))
    per_draw = max(1, int(np.prod([s for d, s in ds.sizes.items()])))
    # a batch holds the resampled data (per_draw values a draw), or with sums each draw's unit counts and sums
    batch = max(1, MAX_ELEMENTS // (max(units, per_draw // units) if sums else per_draw))
    pieces = []
    for start in range(0, n, batch):
        idx = draws_index[start:start + batch]
        if sums:  # sum over unit of the resampled data = the data weighted by each unit's draw count
            flat = (idx + np.arange(len(idx))[:, None] * units).ravel()
            weights = np.bincount(flat, minlength=idx.size).reshape(idx.shape).astype(np.float64)
            resampled = ds.map(lambda v, w=weights: _weighted_sum(v, unit, w) if unit in v.dims else v).expand_dims(unit)
        else:
            resampled = ds.isel({unit: xr.DataArray(idx, dims=("draw", unit))})
        pieces.append(as_dataset(stat(resampled)))
    draws = xr.concat(pieces, dim="draw")
    q = [(1 - level) / 2, (1 + level) / 2]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a quantity NaN in every draw (nothing computed) stays NaN
        bounds = draws.quantile(q, dim="draw", skipna=True)
    out = estimate.copy()
    for var in estimate.data_vars:
        attrs = dict(estimate[var].attrs)
        out[f"{var}_lo"] = bounds[var].isel(quantile=0, drop=True).assign_attrs(
            {**attrs, "long_name": f"{attrs.get('long_name', var)}: lower end of the {level:.0%} bootstrap interval"})
        out[f"{var}_hi"] = bounds[var].isel(quantile=1, drop=True).assign_attrs(
            {**attrs, "long_name": f"{attrs.get('long_name', var)}: upper end of the {level:.0%} bootstrap interval"})
    out.attrs.update({"bootstrap_unit": unit, "bootstrap_units": units, "bootstrap_draws": n,
                      "bootstrap_level": level, "bootstrap_seed": seed})
    return out
