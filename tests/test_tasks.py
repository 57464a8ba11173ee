"""Running Dask tasks: bounded submission and the local cluster's workers, on real LocalClusters."""

import os
import sys
import time

import cloudpickle
import pytest
from distributed import Client

from perturber.pipeline import tasks

# The workers do not have tests/ on their path: this module's functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x, threads=None):
    time.sleep(0.005)  # long enough that several tasks are in flight at once
    return x * x


def _fail_at(x, bad, threads=None):
    time.sleep(0.005)
    if x == bad:
        raise ValueError(f"task {x} failed")
    return x


def _where(x, threads=None):
    """(process id, torch threads, glibc's malloc thresholds and OpenMP's wait policy) of the worker that ran the task."""
    tasks.use_threads(threads)
    import torch

    time.sleep(0.2)  # every worker gets a task
    environ = tuple(os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "OMP_WAIT_POLICY"))
    return os.getpid(), torch.get_num_threads(), environ


@pytest.fixture(scope="module")
def cluster():
    with tasks.start_local_cluster(n_workers=2, threads_per_worker=1) as c:
        yield c


def _observed_run(cluster, n, window):
    """Run n squares from a generator; (total, most calls pulled ahead of the results,
    most tasks the scheduler held when a result arrived, results seen)."""
    results, ahead, held = [], [0], [0]

    def calls():
        for i in range(n):
            ahead[0] = max(ahead[0], i + 1 - len(results))  # this call's future and those not yet back
            yield f"square-{i}", _square, (i,)

    def on_result(r):
        held[0] = max(held[0], len(cluster.scheduler.tasks))
        results.append(r)
        return r

    total = tasks.run_tasks(calls(), cluster.scheduler_address, None, on_result, echo=lambda _: None, window=window)
    return total, ahead[0], held[0], results


@pytest.mark.parametrize("window", [3, None])
def test_a_generator_never_has_more_than_the_window_in_flight(cluster, window):
    n = 300
    total, ahead, held, results = _observed_run(cluster, n, window)
    expected_window = window or tasks.window_size(2)  # two workers of one thread
    assert total == sum(i * i for i in range(n)) and sorted(results) == [i * i for i in range(n)]
    assert ahead == expected_window  # the window is filled, never passed
    # The scheduler's count is bounded by the window, not by n: a released task
    # leaves it asynchronously (batched messages), so a few may linger while
    # the next ones arrive (seen: window + 1 on a loaded machine).
    assert 1 < held <= 2 * expected_window < n


@pytest.mark.parametrize("runner", ["dask", "in-process"])
def test_an_exception_in_one_task_is_raised_and_the_run_stops(request, runner):
    pulled = []

    def calls():
        for i in range(1000):
            pulled.append(i)
            yield f"fail-{i}", _fail_at, (i, 5)

    with pytest.raises(ValueError, match="task 5 failed"):
        if runner == "dask":
            cluster = request.getfixturevalue("cluster")
            tasks.run_tasks(calls(), cluster.scheduler_address, None, lambda r: 1, echo=lambda _: None, window=4)
        else:
            tasks.run_in_threads(calls(), tasks.WorkerPlan("threads", 2, 1), lambda r: 1)
    # the run stopped at the failure: the generator was not drained (in-process: a few calls queued per thread)
    assert len(pulled) < (1000 if runner == "dask" else 20)


@pytest.mark.slow
def test_the_local_cluster_shares_the_cores_among_its_workers():
    cpus = os.cpu_count() or 1
    workers = min(2, cpus)
    seen = []
    total = tasks.run_tasks(((f"where-{i}", _where, (i,)) for i in range(4 * workers)), None, workers,
                            lambda r: seen.append(r) or 1, echo=lambda _: None)
    assert total == 4 * workers
    assert len({pid for pid, _, _ in seen}) == workers and os.getpid() not in {pid for pid, _, _ in seen}
    assert {threads for _, threads, _ in seen} == {max(1, cpus // workers)}
    # Dask's MALLOC_TRIM_THRESHOLD_=65536 would turn off glibc's adaptive mmap threshold; a value set here wins
    wanted = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(1 << 25), "OMP_WAIT_POLICY": "PASSIVE"}
    assert {environ for _, _, environ in seen} == {tuple(os.environ.get(k, v) for k, v in wanted.items())}


def test_the_plan_for_a_cpu_machine():
    assert tasks.plan_workers(2) == tasks.WorkerPlan("cpu", 2, 1)
    assert tasks.plan_workers(8, workers=2) == tasks.WorkerPlan("cpu", 2, 4)
    assert tasks.plan_workers(8, tasks=1) == tasks.WorkerPlan("cpu", 1, 8)  # one task: one worker, every core
    assert tasks.plan_workers(2, tasks=0) == tasks.WorkerPlan("cpu", 1, 2)


def test_the_plan_for_gpus_is_one_worker_per_device():
    four = ("0", "1", "2", "3")
    assert tasks.plan_workers(16, four) == tasks.WorkerPlan("devices", 4, 4, four)
    assert tasks.plan_workers(16, four, dask_cuda=True) == tasks.WorkerPlan("dask-cuda", 4, 4, four)
    assert tasks.plan_workers(16, four, workers=2) == tasks.WorkerPlan("devices", 2, 8, ("0", "1"))
    assert tasks.plan_workers(2, four).threads == 1  # fewer cores than devices: still one worker each
    uuids = ("GPU-5c1a", "GPU-77d0")  # CUDA_VISIBLE_DEVICES may name devices by UUID
    assert tasks.plan_workers(8, uuids).devices == uuids


def test_each_device_worker_sees_only_its_device():
    """The fallback without dask-cuda really starts: one worker process per device name,
    CUDA_VISIBLE_DEVICES set in each (no CUDA needed to check the pinning)."""
    plan = tasks.WorkerPlan("devices", 2, 1, ("0", "1"))
    before = dict(os.environ)
    with tasks.start_workers(plan) as c, Client(c) as client:
        client.wait_for_workers(2)
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        threads = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert sorted(seen.values()) == ["0", "1"]
    assert set(threads.values()) == {"1"}
    assert dict(os.environ) == before  # this process's environment is left as it was


@pytest.mark.gpu
def test_visible_devices_are_the_cuda_devices():
    import torch

    assert len(tasks.visible_devices()) == torch.cuda.device_count() > 0


def test_in_process_tasks_run_in_threads_each_on_its_share_of_the_cores():
    import threading

    import torch

    before = torch.get_num_threads()
    both_running = threading.Barrier(2, timeout=30)  # passes only if two calls run at the same time
    seen = []

    def meet(i, threads=None):
        torch.set_num_threads(threads)  # what a task's use_threads does
        both_running.wait()
        return threading.current_thread().name, torch.get_num_threads()

    plan = tasks.WorkerPlan("threads", 2, 1)
    total = tasks.run_in_threads(((f"meet-{i}", meet, (i,)) for i in range(4)), plan,
                                 lambda r: seen.append((r, threading.current_thread())) or 1)
    assert total == 4
    assert {name.startswith("perturber-task") for (name, _), _ in seen} == {True}
    assert {threads for (_, threads), _ in seen} == {1}
    assert {t for _, t in seen} == {threading.main_thread()}  # results are handled in the calling thread
    assert torch.get_num_threads() == before  # put back for this process
    # The task threads stay for the next run (each keeps its renderer: an OpenGL context, meshes uploaded)
    def ident(i, threads=None):
        both_running.wait()
        return threading.get_ident()

    runs = []
    for _ in range(2):
        got = []
        tasks.run_in_threads(((f"id-{i}", ident, (i,)) for i in range(2)), plan, lambda r: got.append(r) or 1)
        runs.append(set(got))
    assert runs[0] == runs[1] and len(runs[0]) == 2
    cpus = os.cpu_count() or 1
    if not tasks.visible_devices():  # without a GPU: a task thread per core, each on one torch thread
        assert tasks.in_process_plan() == tasks.WorkerPlan("threads", cpus, 1)
        assert tasks.in_process_plan(1) == tasks.WorkerPlan("threads", 1, cpus)
        assert tasks.task_threads("synchronous") == 1
        # compiled models: one task thread (a compiled model's captures cannot tell threads apart)
        assert tasks.in_process_plan(compile=True) == tasks.in_process_plan(2, compile=True) == tasks.WorkerPlan("threads", 1, cpus)
        assert tasks.task_threads("synchronous", compile=True) == cpus
