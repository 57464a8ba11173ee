"""Cluster recipes (workflows/clusters/*.yaml): start a Dask cluster to run a precompute on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from perturber.pipeline.errors import PerturberError, one_line

__all__ = ["ClusterError", "load_recipe", "build"]


class ClusterError(PerturberError):
    """A cluster recipe is invalid; the message is one line."""


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and check a recipe: ``kind`` (slurm, pbs), ``jobs`` and ``cluster`` keyword arguments."""
    path = Path(path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterError(f"{path}: cannot read the cluster recipe ({one_line(exc)})") from None
    if not isinstance(recipe, dict) or recipe.get("kind") not in ("slurm", "pbs"):
        raise ClusterError(f"{path}: kind must be slurm or pbs")
    if not isinstance(recipe.get("jobs", 1), int) or recipe.get("jobs", 1) < 1:
        raise ClusterError(f"{path}: jobs must be a positive whole number")
    if not isinstance(recipe.get("cluster", {}), dict):
        raise ClusterError(f"{path}: cluster must map SLURMCluster/PBSCluster arguments")
    return recipe


def build(path: str | Path, scale: bool = True):
    """The dask-jobqueue cluster object of a recipe, scaled to its ``jobs`` when ``scale``."""
    import dask_jobqueue

    recipe = load_recipe(path)
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[recipe["kind"]]
    kwargs = {k: v for k, v in recipe.get("cluster", {}).items() if v is not None}
    cluster = cls(**kwargs)
    if scale:
        cluster.scale(jobs=recipe.get("jobs", 1))
    return cluster
