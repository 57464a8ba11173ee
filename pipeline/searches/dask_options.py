"""Dask for ``perturber fool`` and ``perturber search``: the client their options ask for.

The searches keep their state (an archive, a CMA-ES) in the command's
process and send batches of candidates as tasks (the options are
:func:`perturber.pipeline.options.add_dask_options`); ``--scheduler ADDRESS``
uses a running cluster, ``--cluster YAML`` starts one from a recipe, and
``--workers N`` starts a LocalCluster. Without any of them (or with
``--scheduler synchronous``) everything runs in the command's process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Iterator

import dask
from distributed import Client

from perturber.pipeline import clusters, tasks
from perturber.pipeline.searches import SearchError

__all__ = ["check", "client"]


def check(args: argparse.Namespace) -> None:
    """One of the options at most; a scheduler that answers (before any work)."""
    if sum(x is not None for x in (args.scheduler, args.cluster, args.workers)) > 1:
        raise SearchError("give one of --scheduler, --cluster or --workers")
    if args.scheduler not in (None, "synchronous"):
        tasks.check_scheduler(args.scheduler)


@contextlib.contextmanager
def client(args: argparse.Namespace) -> Iterator[tuple[object, int | None]]:
    """(Dask client or None, torch threads per task) for the options given."""
    if args.scheduler in (None, "synchronous") and not args.cluster and not args.workers:
        yield None, None
        return
    cluster, threads = None, None
    if args.scheduler:
        dask_client = tasks.connect(args.scheduler)
    else:
        if args.cluster:
            cluster = clusters.build(args.cluster)
        else:
            threads = max(1, (os.cpu_count() or 1) // args.workers)
            with dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": str(threads),
                                  "distributed.nanny.pre-spawn-environ.PYOPENGL_PLATFORM": "egl"}):
                cluster = tasks.start_local_cluster(n_workers=args.workers, threads_per_worker=1)
        dask_client = Client(cluster)
    try:
        print(f"dask dashboard: {dask_client.dashboard_link}")
        yield dask_client, threads
    finally:
        dask_client.close()
        if cluster is not None:
            cluster.close()
