"""The one writer of a cube's per-sample summaries and done marks.

Each precompute task writes its shard of the per-sample variables itself
and returns its summaries (top-1 class, top-1 probability, expected-class
probability; (*task region, model) each). The summaries live in large
chunks that span many tasks, and the done marks in one chunk, so concurrent
tasks must not write them (concurrent writes to one Zarr chunk lose data).
:class:`SummaryWriter` runs in the process that runs the job: it collects
what the tasks return and writes, per summary chunk touched, the chunk's
summaries whole and then the tasks' done marks.

It writes a summary chunk as soon as every task in it has arrived, and
everything it holds every so often (at least ``interval`` seconds, and at least
20 times as long as its last write took, so writing costs at most ~5% of the
run) and on :meth:`close` (a ``finally``: a failed or interrupted run keeps
the work that arrived). A kill loses at most the tasks that arrived since
the last write; a kill between a chunk's summaries and its marks leaves the
tasks unmarked: the next run computes them again and writes the same values.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Mapping

import numpy as np
import zarr

from perturber.pipeline import names
from perturber.pipeline.errors import one_line
from perturber.pipeline.spec import CubeSpec
from perturber.pipeline.store import StoreError, Tasks

__all__ = ["SummaryWriter", "summarise"]


def summarise(top_class: np.ndarray, top_prob: np.ndarray, expected: np.ndarray) -> dict[str, np.ndarray]:
    """The summaries of a task from its top-k arrays ((..., model, rank)) and
    expected-class probability ((..., model))."""
    return {names.TOP1_CLASS: np.asarray(top_class[..., 0], dtype=np.int16),
            names.TOP1_PROB: np.asarray(top_prob[..., 0], dtype=np.float32),
            names.EXPECTED_PROB: np.asarray(expected, dtype=np.float32)}


class SummaryWriter:
    """Collects tasks' summaries for one cube and writes them with their done marks.

    ``done``: the (task grid) bool marks read when the run started (updated
    as marks are written); ``interval``: fewest seconds between writes of
    incomplete summary chunks.
    """

    def __init__(self, cube: CubeSpec, store: Any, tasks: Tasks, done: np.ndarray,
                 storage_options: Mapping | None = None, interval: float = 0.5):
        self.cube, self.store, self.tasks, self.storage_options = cube, store, tasks, storage_options
        self.done = np.array(done, dtype=bool)
        self.interval = interval
        self.written = 0  # done marks written by this writer
        self._pending: dict[tuple[int, ...], dict[tuple[int, ...], Mapping[str, np.ndarray]]] = {}
        self._last = time.monotonic()
        self._took = 0.0  # seconds the last flush took
        # Tasks per summary chunk along each axis (a summary chunk cut to the axis holds all of its tasks).
        self._per = tuple(g if s >= n else max(1, s // t) for s, t, n, g in zip(tasks.summary, tasks.shape, tasks.cube, tasks.grid))

    def _chunk_of(self, index: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(i // p for i, p in zip(index, self._per))

    def _tasks_in(self, chunk: tuple[int, ...]) -> list[tuple[int, ...]]:
        ranges = [range(c * p, min((c + 1) * p, g)) for c, p, g in zip(chunk, self._per, self.tasks.grid)]
        return list(itertools.product(*ranges))

    def add(self, index: tuple[int, ...], summaries: Mapping[str, np.ndarray]) -> None:
        """Take task ``index``'s summaries ((*task region, model) each); write
        its summary chunk when complete, and everything when ``interval`` has passed."""
        chunk = self._chunk_of(index)
        self._pending.setdefault(chunk, {})[tuple(index)] = summaries
        if all(self.done[t] or t in self._pending[chunk] for t in self._tasks_in(chunk)):
            self._write(chunk)
        if time.monotonic() - self._last >= max(self.interval, 20 * self._took):
            self.flush()

    def flush(self) -> None:
        """Write every summary chunk that holds pending tasks."""
        start = time.monotonic()
        for chunk in list(self._pending):
            self._write(chunk)
        self._last = time.monotonic()
        self._took = self._last - start

    def close(self) -> None:
        self.flush()

    def _write(self, chunk: tuple[int, ...]) -> None:
        pending = self._pending.pop(chunk, {})
        if not pending:
            return
        group = zarr.open_group(self.store, path=self.cube.name, mode="r+", storage_options=self.storage_options, zarr_format=3)
        block = tuple(slice(c * p * t, min((c + 1) * p * t, n))
                      for c, p, t, n in zip(chunk, self._per, self.tasks.shape, self.tasks.cube))
        fresh = not any(self.done[t] for t in self._tasks_in(chunk))  # nothing of it in the store yet
        for name in names.SUMMARIES:
            target = group[name]
            try:
                values = (np.full(tuple(b.stop - b.start for b in block) + target.shape[-1:], target.fill_value, dtype=target.dtype)
                          if fresh else target[block])
            except Exception as exc:  # a checksum or codec error
                raise StoreError(f"{self.store}: a chunk of {name} in cube {self.cube.name!r} is damaged "
                                 f"({one_line(exc, typed=True, limit=100)}); `perturber verify {self.store} --repair`, "
                                 "then precompute again") from None
            for index, summaries in pending.items():
                local = tuple(slice(r.start - b.start, r.stop - b.start) for r, b in zip(self.tasks.region(index), block))
                values[local] = summaries[name]
            target[block] = values
        marks = group[names.DONE]
        for index in pending:
            self.done[index] = True
        marks[...] = self.done.astype(np.uint8)
        self.written += len(pending)
