"""Cluster recipes (workflows/clusters/*.yaml): start a Dask cluster to run a precompute on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perturber.pipeline import yamlsafe
from perturber.pipeline.errors import PerturberError, one_line
from perturber.pipeline.fields import Fields, show

__all__ = ["ClusterError", "load_recipe", "build", "MAX_JOBS"]

#: Most jobs a recipe may request (a typo of 10000 would flood a queue).
MAX_JOBS = 1000


class ClusterError(PerturberError):
    """A cluster recipe is invalid; the message is one line."""


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and check a recipe: ``kind`` (slurm, pbs), ``jobs`` and ``cluster`` keyword arguments."""
    path = Path(path)
    recipe = yamlsafe.load_file(path, ClusterError)  # UTF-8, at most 1 MiB, aliases bounded
    f = Fields(str(path), ClusterError)
    recipe = dict(f.mapping(recipe, "", "kind, jobs and cluster to values", empty=False))
    unknown = sorted(set(recipe) - {"kind", "jobs", "cluster"})
    if unknown:
        raise f.fail("", f"unknown key {unknown[0]!r} (known: cluster, jobs, kind)")
    if recipe.get("kind") not in ("slurm", "pbs"):
        raise f.fail("kind", f"must be slurm or pbs, got {show(recipe.get('kind'))}")
    recipe["jobs"] = f.whole(recipe.get("jobs", 1), "jobs", 1, MAX_JOBS)
    recipe["cluster"] = dict(f.mapping(recipe.get("cluster"), "cluster", "SLURMCluster/PBSCluster arguments to values"))
    return recipe


def build(path: str | Path, scale: bool = True):
    """The dask-jobqueue cluster object of a recipe, scaled to its ``jobs`` when ``scale``."""
    import dask_jobqueue

    recipe = load_recipe(path)
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[recipe["kind"]]
    kwargs = {k: v for k, v in recipe["cluster"].items() if v is not None}
    try:
        cluster = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # an argument the class does not take, or a bad value
        raise ClusterError(f"{path}: cluster: {one_line(exc)}") from None
    if scale:
        cluster.scale(jobs=recipe["jobs"])
    return cluster
