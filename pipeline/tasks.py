"""Dask tasks: running calls on a cluster, and what each task does first.

Every long computation here (precompute tasks, feature-visualisation
batches, live points, PGD steps) is a plain function run as a Dask task. A
task function takes a ``threads`` keyword and calls :func:`use_threads`
first: Dask's worker processes would otherwise run torch single-threaded,
whatever ``OMP_NUM_THREADS`` says.

:func:`run_tasks` submits calls from an iterable as a bounded window of
futures (a few per worker thread), so millions of tasks never become
millions of futures. :func:`plan_workers` decides the local cluster it
starts: one worker per GPU where CUDA devices are visible (dask-cuda's
``LocalCUDACluster`` when installed, else one process per device pinned with
``CUDA_VISIBLE_DEVICES``), otherwise worker processes sharing the CPU cores.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import socket
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import dask
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, as_completed
from distributed.worker_memory import parse_memory_limit

from perturber.pipeline.errors import PerturberError, one_line
from perturber.pipeline.pools import kept_pool, torch_threads

__all__ = ["SchedulerError", "use_threads", "start_local_cluster", "connect", "check_scheduler", "run_tasks",
           "run_windowed", "run_in_threads", "CONNECT_TIMEOUT", "WorkerPlan", "plan_workers", "local_plan",
           "in_process_plan", "task_threads", "visible_devices", "start_workers", "window_size"]

#: Seconds to wait for a Dask scheduler to answer.
CONNECT_TIMEOUT = 10.0
#: Futures in flight per worker thread: one running and two waiting, so no worker idles between tasks.
WINDOW_PER_THREAD = 3
#: The least window (a job queue's workers may not have arrived when the first tasks go out).
MIN_WINDOW = 8
#: Seconds between two looks at the cluster's size while tasks run (workers come and go).
WINDOW_REFRESH_S = 5.0


class SchedulerError(PerturberError):
    """A Dask scheduler cannot be reached; the message is one line."""


def use_threads(threads: int | None) -> None:
    """Run torch on ``threads`` CPU threads in this process (None: leave it)."""
    if threads:
        import torch  # heavy: the tasks that call this use torch anyway

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _preserving_environment(start: Callable[[], Any]) -> Any:
    """``start()``, with this process's environment and torch threads put back afterwards.

    Starting a LocalCluster sets OMP_NUM_THREADS=1 (and MKL/OpenBLAS,
    MALLOC_TRIM_THRESHOLD_) in the caller's own environment and drops its
    torch threads to one; any later computation here, or a subprocess started
    from here, would then run single-threaded and round differently.
    """
    saved = dict(os.environ)
    try:
        with torch_threads():
            return start()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_local_cluster(**kwargs: Any):
    """A LocalCluster of worker processes on 127.0.0.1 that leaves this process as it was."""
    return _preserving_environment(lambda: LocalCluster(processes=True, dashboard_address="127.0.0.1:0",
                                                        silence_logs=logging.ERROR, **kwargs))


@dataclass(frozen=True)
class WorkerPlan:
    """The local cluster :func:`run_tasks` starts.

    - ``kind``: 'cpu' (a LocalCluster of worker processes), 'dask-cuda'
      (``dask_cuda.LocalCUDACluster``, one worker per GPU), 'devices' (one
      worker process per GPU, each seeing only its own through
      ``CUDA_VISIBLE_DEVICES``) or 'threads' (task threads in this process,
      :func:`in_process_plan`).
    - ``workers``: worker processes, each running one task at a time.
    - ``threads``: torch CPU threads of each worker (the cores shared out).
    - ``devices``: each worker's ``CUDA_VISIBLE_DEVICES`` value, in order.
    """

    kind: str
    workers: int
    threads: int
    devices: tuple[str, ...] = ()


def plan_workers(cpus: int, devices: Sequence[str] = (), dask_cuda: bool = False, workers: int | None = None,
                 tasks: int | None = None) -> WorkerPlan:
    """The local cluster for ``cpus`` cores and the visible CUDA ``devices`` (their names).

    With devices: one worker per device (``workers``, when given, uses the
    first ``workers`` of them), through dask-cuda when ``dask_cuda``. Without:
    ``workers`` processes (default: one per core, no more than ``tasks``).
    Either way the cores are shared out as torch threads.
    """
    cpus = max(1, cpus)
    if devices:
        chosen = tuple(devices)[: workers or len(devices)]
        return WorkerPlan("dask-cuda" if dask_cuda else "devices", len(chosen), max(1, cpus // len(chosen)), chosen)
    n = workers or max(1, min(cpus, cpus if tasks is None else tasks))
    return WorkerPlan("cpu", n, max(1, cpus // n))


def in_process_plan(workers: int | None = None, compile: bool = False) -> WorkerPlan:
    """How :func:`run_in_threads` shares this machine: without a GPU, ``workers``
    task threads (default: one per core) on the cores shared out as torch
    threads; with one, a single task on every core (the tasks share the GPU
    through its own batching). With ``compile``, a single task too: a compiled
    model's activation captures cannot tell threads apart
    (:func:`perturber.pipeline.inference.capture`).

    Two tasks on one torch thread each beat one task on two (EfficientNet-Lite
    benchmark sweep on 2 cores: 22-26 against 19-20 samples/s): half of a
    task's time is in operations too small to split across cores well."""
    cpus = os.cpu_count() or 1
    if compile or visible_devices():
        return WorkerPlan("threads", 1, cpus)
    n = max(1, min(cpus, workers or cpus))
    return WorkerPlan("threads", n, max(1, cpus // n))


def task_threads(scheduler: str | None, workers: int | None = None, compile: bool = False) -> int | None:
    """The torch CPU threads each task runs on: in-process, a task thread's
    share (:func:`in_process_plan`); on a local cluster, a worker's share
    (:func:`plan_workers`, for more tasks than cores); None for a running
    scheduler's workers (unknown here)."""
    if scheduler == "synchronous":
        return in_process_plan(workers, compile).threads
    if scheduler is None:
        return local_plan(workers).threads
    return None


def local_plan(workers: int | None = None, tasks: int | None = None) -> WorkerPlan:
    """The local cluster :func:`run_tasks` starts on this machine (:func:`plan_workers`)."""
    dask_cuda = importlib.util.find_spec("dask_cuda") is not None
    return plan_workers(os.cpu_count() or 1, visible_devices(), dask_cuda, workers, tasks)


def visible_devices() -> tuple[str, ...]:
    """The CUDA devices this process may use, named as ``CUDA_VISIBLE_DEVICES``
    names them (indices or UUIDs); () without CUDA. Starts no CUDA context."""
    import torch  # heavy: only where a cluster is started, and the tasks use torch anyway

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return tuple(str(i) for i in range(count))
    return tuple(d.strip() for d in listed.split(",") if d.strip())[:count]


def start_workers(plan: WorkerPlan):
    """Start the local cluster of ``plan`` on 127.0.0.1; this process's environment is left as it was.

    Dask's workers start with MALLOC_TRIM_THRESHOLD_=65536; setting it also
    turns off glibc's adaptive mmap threshold, so every activation buffer over
    128 KiB is mmapped and unmapped per layer (measured: 2.2x slower chunks,
    half the time in the kernel). Both thresholds are raised. OpenMP threads
    wait passively (OMP_WAIT_POLICY): torch's spinning threads, on cores that
    anything else also uses, made a 2-thread worker 4-10x slower on a 2-core
    CPU (docs/benchmarks.md). All must be set before a worker starts, hence
    pre-spawn-environ; a variable already in the environment wins.
    """
    settings = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(1 << 30),
                "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(1 << 25),
                "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": str(plan.threads),
                "distributed.nanny.pre-spawn-environ.OMP_WAIT_POLICY": "PASSIVE",
                "distributed.nanny.pre-spawn-environ.PYOPENGL_PLATFORM": "egl",
                "distributed.worker.profile.enabled": False}
    with dask.config.set(settings):
        if plan.kind == "cpu":
            return start_local_cluster(n_workers=plan.workers, threads_per_worker=1)
        if plan.kind == "dask-cuda":
            import dask_cuda  # optional: only on GPU machines that have it

            return _preserving_environment(lambda: dask_cuda.LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=list(plan.devices), threads_per_worker=1, dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR))
        memory = parse_memory_limit("auto", 1, plan.workers, logger=logging.getLogger(__name__))
        workers = {i: {"cls": Nanny, "options": {"host": "127.0.0.1", "nthreads": 1, "memory_limit": memory,
                                                 "silence_logs": logging.ERROR, "env": {"CUDA_VISIBLE_DEVICES": device}}}
                   for i, device in enumerate(plan.devices)}
        scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
        return _preserving_environment(lambda: SpecCluster(workers=workers, scheduler=scheduler,
                                                           silence_logs=logging.ERROR))


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


def window_size(threads: int) -> int:
    """Futures in flight for a cluster of ``threads`` worker threads in all."""
    return max(MIN_WINDOW, WINDOW_PER_THREAD * threads)


Call = tuple[str, Callable, tuple]


def run_tasks(calls: Iterable[Call], scheduler: str | None, workers: int | None,
              on_result: Callable[[Any], int], echo: Callable[[str], None] = print, window: int | None = None) -> int:
    """Run ``(key, function, args)`` calls as Dask tasks; returns the sum of ``on_result`` over the results.

    ``calls`` may be a generator: it is read as tasks finish, at most
    ``window`` futures in flight (:func:`run_windowed`). ``scheduler``: None
    starts a local cluster (:func:`plan_workers`: ``workers`` processes, torch
    threads shared out; one worker per GPU where there are GPUs);
    'synchronous' runs in this process; anything else is the address of a
    running scheduler. Every function takes a ``threads`` keyword (torch CPU
    threads for its process). A task's exception is raised here.
    """
    calls = iter(calls)
    if scheduler == "synchronous":
        return sum(on_result(fn(*args)) for _, fn, args in calls)
    threads = None
    if scheduler is None:
        first = list(itertools.islice(calls, os.cpu_count() or 1))  # fewer tasks than cores: fewer, wider workers
        plan = local_plan(workers, len(first))
        calls, threads = itertools.chain(first, calls), plan.threads
        cluster = start_workers(plan)
        client = Client(cluster)
    else:
        cluster, client = None, connect(scheduler)
    echo(f"dask dashboard: {client.dashboard_link}")
    try:
        return run_windowed(client, calls, on_result, threads, window)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_windowed(client: Client, calls: Iterable[Call], on_result: Callable[[Any], int], threads: int | None = None,
                 window: int | None = None) -> int:
    """Run ``calls`` on ``client``'s cluster, at most ``window`` futures in flight
    (default: :func:`window_size` of its worker threads, looked at again every
    few seconds); the sum of ``on_result`` over the results, each seen as its task finishes."""
    calls = iter(calls)
    size = window or window_size(sum(client.nthreads().values()))
    looked = time.monotonic()
    pending = as_completed()

    def top_up() -> None:
        for key, fn, args in itertools.islice(calls, max(0, size - pending.count())):
            pending.add(client.submit(fn, *args, threads=threads, pure=False, key=key))

    top_up()
    total = 0
    for future in pending:
        result = future.result()
        future.release()
        total += on_result(result)
        if window is None and time.monotonic() - looked > WINDOW_REFRESH_S:
            size, looked = window_size(sum(client.nthreads().values())), time.monotonic()
        top_up()
    return total


def run_in_threads(calls: Iterable[Call], plan: WorkerPlan, on_result: Callable[[Any], int]) -> int:
    """Run ``(key, function, args)`` calls in this process, ``plan.workers`` at a
    time in threads, each function given ``threads=plan.threads``; the sum of
    ``on_result`` (called in this thread) over the results, as calls finish.

    ``calls`` is read as calls finish (a few queued per thread). A call's
    exception is raised here once the running calls have stopped; the calls
    not yet started are dropped. The process's torch threads are put back
    afterwards (a task thread's setting is also the default of new threads).
    """
    calls = iter(calls)
    with torch_threads():
        if plan.workers <= 1:
            return sum(on_result(fn(*args, threads=plan.threads)) for _, fn, args in calls)
        total, pending, pool = 0, set(), kept_pool("task", plan.workers)
        try:
            while True:
                for _, fn, args in itertools.islice(calls, max(0, WINDOW_PER_THREAD * plan.workers - len(pending))):
                    pending.add(pool.submit(fn, *args, threads=plan.threads))
                if not pending:
                    return total
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    total += on_result(future.result())
        finally:
            for future in pending:
                future.cancel()
            wait(pending)  # no call is left running when this returns or raises
