"""Dask's cost per task: a no-op task on a LocalCluster, windowed against all at once.

    python benchmarks/scheduler_overhead.py [--write docs/benchmarks.md] [--tasks N]

For 1 and 2 worker processes (one thread each, as the precompute starts
them), the wall time per task of N no-op tasks from the first submit to the
last result read, in microseconds:

- all at once: every future submitted first, then read with ``as_completed``
  (how ``run_tasks`` submitted before the window);
- windowed: :func:`perturber.pipeline.tasks.run_windowed` with its default
  window (a few futures per worker thread) and with a window 8x larger.

A precompute task takes seconds (a shard of renders and model calls), so
what matters is that the overhead per task stays far below that.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date

import distributed
from distributed import Client, as_completed

from perturber.pipeline import tasks

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402


def noop(i: int, threads: int | None = None) -> int:
    return i


def all_at_once(client: Client, n: int, tag: str) -> float:
    """Seconds per task, every future submitted before the first is read."""
    start = time.perf_counter()
    futures = [client.submit(noop, i, pure=False, key=f"{tag}-{i}") for i in range(n)]
    total = sum(f.result() for f in as_completed(futures))
    assert total == n * (n - 1) // 2
    del futures
    return (time.perf_counter() - start) / n


def windowed(client: Client, n: int, tag: str, window: int | None) -> float:
    """Seconds per task through run_windowed."""
    start = time.perf_counter()
    total = tasks.run_windowed(client, ((f"{tag}-{i}", noop, (i,)) for i in range(n)), lambda r: r, window=window)
    assert total == n * (n - 1) // 2
    return (time.perf_counter() - start) / n


def measure(workers: int, n: int, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` microseconds per task for each way, on one cluster."""
    with tasks.start_local_cluster(n_workers=workers, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        default = tasks.window_size(workers)
        ways = {
            "all at once": lambda tag: all_at_once(client, n, tag),
            f"windowed, default window ({default})": lambda tag: windowed(client, n, tag, None),
            f"windowed, window {8 * default}": lambda tag: windowed(client, n, tag, 8 * default),
        }
        windowed(client, 200, "warm", None)
        best = {name: float("inf") for name in ways}
        for r in range(repeats):  # interleaved, so a busy moment does not fall on one way only
            for name, way in ways.items():
                best[name] = min(best[name], way(f"{name}-{r}"))
    return {name: s * 1e6 for name, s in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", metavar="MD", help="replace this benchmark's section of a markdown file")
    ap.add_argument("--tasks", type=int, default=3000, help="no-op tasks per measurement (default 3000)")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per way; the best is kept (default 3)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rows = {w: measure(w, args.tasks, args.repeats) for w in (1, 2)}
    ways = list(rows[1])
    lines = [
        "## Scheduler overhead",
        "",
        f"Measured {date.today().isoformat()} with `python benchmarks/scheduler_overhead.py` on {report.cpu()}, "
        f"dask/distributed {distributed.__version__}. {args.tasks} no-op tasks on a LocalCluster of worker processes "
        f"(one thread each); wall time from the first submit to the last result read, per task, best of {args.repeats}; "
        f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        "| workers | " + " | ".join(f"{w} (µs/task)" for w in ways) + " |",
        "| ---: | " + " | ".join("---:" for _ in ways) + " |",
        *[f"| {w} | " + " | ".join(f"{r[k]:.0f}" for k in ways) + " |" for w, r in rows.items()],
        "",
        f"At most {max(max(r.values()) for r in rows.values()) / 1000:.1f} ms per task here. A precompute task is a "
        "shard of renders and model calls, seconds to minutes long (6 to 20 s for the 1,728-sample benchmark "
        "sweep on this machine), so Dask's share of a run is under 0.1%; the window bounds the futures, and the "
        "memory of the scheduler and of the submitting process, by the cluster's size instead of the cube's.",
        "",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
