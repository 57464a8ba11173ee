"""Dask tasks: running a list of calls on a cluster, and what each task does first.

Every long computation here (precompute chunks, feature-visualisation
batches, live points, PGD steps) is a plain function run as a Dask task. A
task function takes a ``threads`` keyword and calls :func:`use_threads`
first: Dask's worker processes would otherwise run torch single-threaded,
whatever ``OMP_NUM_THREADS`` says.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Callable

import dask
from distributed import Client, LocalCluster, as_completed

from perturber.pipeline.errors import PerturberError, one_line

__all__ = ["SchedulerError", "use_threads", "start_local_cluster", "connect", "check_scheduler", "run_tasks",
           "CONNECT_TIMEOUT"]

#: Seconds to wait for a Dask scheduler to answer.
CONNECT_TIMEOUT = 10.0


class SchedulerError(PerturberError):
    """A Dask scheduler cannot be reached; the message is one line."""


def use_threads(threads: int | None) -> None:
    """Run torch on ``threads`` CPU threads in this process (None: leave it)."""
    if threads:
        import torch  # heavy: the tasks that call this use torch anyway

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def start_local_cluster(**kwargs: Any):
    """A LocalCluster of worker processes on 127.0.0.1 that leaves this process as it was.

    Starting one sets OMP_NUM_THREADS=1 (and MKL/OpenBLAS, MALLOC_TRIM_THRESHOLD_)
    in the caller's own environment and drops its torch threads to one; any
    later computation here, or a subprocess started from here, would then run
    single-threaded and round differently. Both are put back.
    """
    saved = dict(os.environ)
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    try:
        return LocalCluster(processes=True, dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, **kwargs)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if threads is not None:
            sys.modules["torch"].set_num_threads(threads)


def connect(address: str, timeout: float = CONNECT_TIMEOUT) -> Client:
    """A client of the running Dask scheduler at ``address``, or a one-line
    :class:`SchedulerError` within ``timeout`` seconds. A closed TCP port is
    reported at once (Dask itself would retry until the timeout)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls", "ws", "wss"):
            host, port = parse_host_port(location)
            if not 1 <= int(port) <= 65535:
                raise ValueError(f"port {port} is not in 1..65535")
            socket.create_connection((host, port), timeout=timeout).close()
        return Client(address, timeout=f"{timeout}s")
    except (OSError, ValueError, TypeError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise SchedulerError(f"cannot reach the Dask scheduler at {address}: {reason}") from None


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse an unreachable scheduler before a command starts its work."""
    connect(address, timeout).close()


def run_tasks(calls: list[tuple[str, Callable, tuple]], scheduler: str | None, workers: int | None,
              on_result: Callable[[Any], int], echo: Callable[[str], None] = print) -> int:
    """Run ``(key, function, args)`` calls as Dask tasks; returns the sum of ``on_result`` over the results.

    ``scheduler``: None starts a LocalCluster sized to the machine (``workers``
    processes, one thread each, torch threads shared out); 'synchronous' runs in
    this process; anything else is the address of a running scheduler. Every
    function takes a ``threads`` keyword (torch CPU threads for its process).
    """
    if scheduler == "synchronous":
        return sum(on_result(fn(*args)) for _, fn, args in calls)
    threads = None
    if scheduler is None:
        n = workers or max(1, min(len(calls), os.cpu_count() or 1))
        threads = max(1, (os.cpu_count() or 1) // n)
        # Dask's workers start with MALLOC_TRIM_THRESHOLD_=65536; setting it
        # also turns off glibc's adaptive mmap threshold, so every activation
        # buffer over 128 KiB is mmapped and unmapped per layer (measured: 2.2x
        # slower chunks, half the time in the kernel). Raise both thresholds;
        # they must be set before a worker starts, hence pre-spawn-environ.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(1 << 30),
                              "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(1 << 25),
                              "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": str(threads),
                              "distributed.nanny.pre-spawn-environ.PYOPENGL_PLATFORM": "egl"}):
            cluster = start_local_cluster(n_workers=n, threads_per_worker=1)
        client = Client(cluster)
    else:
        cluster, client = None, connect(scheduler)
    echo(f"dask dashboard: {client.dashboard_link}")
    total = 0
    try:
        futures = [client.submit(fn, *args, threads=threads, pure=False, key=key) for key, fn, args in calls]
        for future in as_completed(futures):
            total += on_result(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return total
