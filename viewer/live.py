"""The on-demand engine: live results for points the store does not hold.

Off-grid values and factors a cube holds fixed are evaluated with the same
:func:`pipeline.engine.evaluate` as the precompute, as Dask tasks (a
LocalCluster by default, or a running scheduler), whose worker processes keep
the models loaded between requests. Work is bounded: results are cached (LRU),
at most ``max_pending`` requests run at once, each waits at most ``timeout``
seconds, and a new request of a session cancels that session's stale one.
:meth:`LiveEngine.with_values` is a view of the engine that sets some factors
in every point it is asked for (a session's uploaded mesh as the object).

:class:`Work` is that bound, for any long call: a served viewer never runs
one on its event loop, but in a thread of :meth:`Work.start` (PGD, saliency),
counted with the live points against the same ``max_pending``;
:data:`LOCAL` bounds the work the viewer's own process does when no engine is
configured.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
import psutil
import torch
from distributed import Client

from perturber.pipeline import inference
from perturber.pipeline import models as registry
from perturber.pipeline.attack import Attack, blend, label_for, pgd
from perturber.pipeline.errors import PerturberError, one_line
from perturber.pipeline.imageops import to_tensor
from perturber.pipeline.tasks import start_local_cluster, use_threads

__all__ = ["Work", "LOCAL", "LiveEngine", "Overlay", "LiveResult", "EngineError", "evaluate_point", "attack_task"]


class EngineError(PerturberError):
    """Live compute failed or is not available; the message is one line for the UI."""


@dataclass
class LiveResult:
    """One point evaluated live: the model input (S, S, 3) uint8; per model the
    logits (1000,) float32 and activations layer → (N, h, w) float32 of the
    neurons asked for."""

    image: np.ndarray
    logits: dict[str, np.ndarray]
    activations: dict[str, dict[str, np.ndarray]]
    seconds: float


def evaluate_point(point: Mapping[str, Any], models: Sequence[str], layers: Sequence[str],
                   neurons: Mapping[str, Sequence[int]], size: int, threads: int | None = None) -> LiveResult:
    """The task a worker runs (models stay loaded in its process between calls)."""
    from perturber.pipeline import engine  # the renderer loads on the engine's worker, not in the viewer's process

    use_threads(threads)
    start = time.perf_counter()
    ev = engine.evaluate([dict(point)], list(models), layers=list(layers), neurons=dict(neurons), size=size, batch_size=1)
    return LiveResult(
        image=np.asarray(ev.images[0]),
        logits={m: ev.logits[m][0].numpy().astype(np.float32) for m in models},
        activations={m: {layer: a[0].numpy() for layer, a in ev.activations[m].items()} for m in models},
        seconds=time.perf_counter() - start,
    )


class Work:
    """A bound on long calls in flight: at most ``max_pending`` at once over
    every owner (a session, or a session's attack); :meth:`start` runs one in a
    thread, so a served viewer's event loop never waits for it."""

    def __init__(self, max_pending: int = 4, name: str = "the viewer"):
        self.max_pending, self.name = max_pending, name
        self._pending: dict[str, Any] = {}  # owner → its in-flight future (Dask's or a thread's)
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None

    def running(self) -> int:
        return sum(1 for f in self._pending.values() if not f.done())

    def _admit(self, owner: str, replace: bool) -> None:
        """Under the lock: refuse (EngineError) when the bound is reached, or
        when ``owner``'s last call still runs and may not be ``replace``d (cancelled)."""
        for done in [o for o, f in self._pending.items() if f.done()]:
            del self._pending[done]
        stale = self._pending.get(owner)
        if stale is not None:
            if not replace:
                raise EngineError("already running here: wait for it to finish, or reset")
            stale.cancel()
            del self._pending[owner]
        running = self.running()
        if running >= self.max_pending:
            raise EngineError(f"{self.name} is busy ({running} requests running); try again in a moment")

    def start(self, owner: str, fn: Any, *args: Any, **kwargs: Any) -> Future:
        """``fn(*args, **kwargs)`` in a thread, counted against ``max_pending``;
        EngineError (one line) when refused."""
        with self._lock:
            self._admit(owner, replace=False)
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=self.max_pending, thread_name_prefix="perturber-work")
            future = self._threads.submit(fn, *args, **kwargs)
            self._pending[owner] = future
        return future

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)


#: The viewer process's own long calls (PGD and saliency without an engine): two at once.
LOCAL = Work(max_pending=2, name="the viewer")


class LiveEngine(Work):
    """Live evaluation on a Dask cluster, with an LRU cache, a bound on pending
    work (live points and :meth:`Work.start` calls together), a timeout and
    cancellation of stale requests."""

    def __init__(self, scheduler: str | None = None, cache_size: int = 256, max_pending: int = 4,
                 timeout: float = 60.0, threads: int | None = None):
        super().__init__(max_pending, name="the engine")
        self.timeout = timeout
        self._cache: collections.OrderedDict[str, LiveResult] = collections.OrderedDict()
        self._cache_size = cache_size
        self.threads = threads or max(1, (os.cpu_count() or 1))
        try:
            if scheduler is None:
                self._cluster = start_local_cluster(n_workers=1, threads_per_worker=1)
                self.client = Client(self._cluster)
            else:
                self._cluster = None
                self.client = Client(scheduler, timeout="10s")
        except Exception as exc:
            raise EngineError(f"cannot start or reach the engine ({one_line(exc, typed=True)})") from None
        self.where = "a local Dask cluster" if scheduler is None else f"the Dask scheduler at {scheduler}"

    @staticmethod
    def key(point: Mapping[str, Any], models: Sequence[str], layers: Sequence[str], neurons: Mapping[str, Sequence[int]],
            size: int) -> str:
        return json.dumps([sorted(point.items()), list(models), list(layers), sorted((k, list(v)) for k, v in neurons.items()), size],
                          default=str)

    def cached(self, key: str) -> LiveResult | None:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    def submit(self, session: str, point: Mapping[str, Any], models: Sequence[str], layers: Sequence[str],
               neurons: Mapping[str, Sequence[int]], size: int):
        """(key, future) for one point; the session's previous request, if still
        running, is cancelled. Raises EngineError when too much is pending."""
        key = self.key(point, models, layers, neurons, size)
        with self._lock:
            self._admit(session, replace=True)
            future = self.client.submit(evaluate_point, dict(point), list(models), list(layers), dict(neurons), size,
                                        threads=self.threads, pure=False)
            self._pending[session] = future
        return key, future

    def _wait(self, future) -> Any:
        """The future's value within ``timeout``; a one-line EngineError otherwise."""
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            future.cancel()
            raise EngineError(f"no result within {self.timeout:.0f} s") from None
        except BaseException as exc:  # concurrent.futures' or asyncio's CancelledError included
            if type(exc).__name__ == "CancelledError":
                raise EngineError("cancelled: a newer request replaced it") from None
            if not isinstance(exc, Exception):
                raise
            raise EngineError(one_line(exc, typed=True)) from None

    def result(self, key: str, future) -> LiveResult:
        """Wait (at most ``timeout``) and cache; a one-line EngineError otherwise."""
        value = self._wait(future)
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return value

    def evaluate(self, session: str, point: Mapping[str, Any], models: Sequence[str], layers: Sequence[str] = (),
                 neurons: Mapping[str, Sequence[int]] | None = None, size: int = 224) -> tuple[LiveResult, bool]:
        """(result, from cache) for one point, blocking."""
        neurons = neurons or {}
        key = self.key(point, models, layers, neurons, size)
        hit = self.cached(key)
        if hit is not None:
            return hit, True
        key, future = self.submit(session, point, models, layers, neurons, size)
        return self.result(key, future), False

    def call(self, fn, *args: Any) -> Any:
        """Run ``fn(*args, threads=...)`` as one task on the engine and wait for it
        (PGD steps); one-line EngineError on failure or timeout."""
        return self._wait(self.client.submit(fn, *args, threads=self.threads, pure=False))

    def with_values(self, values: Mapping[str, Any]) -> "Overlay":
        """This engine, setting ``values`` (factor → value) in every point it is asked for."""
        return Overlay(self, values)

    def on_this_machine(self) -> bool:
        """Whether every worker runs on this machine, so it can read a file the viewer
        wrote (a local cluster's do; a scheduler's workers are asked where they are)."""
        if self._cluster is not None:
            return True
        try:
            hosts = {urlparse(address).hostname for address in self.client.scheduler_info()["workers"]}
            here = {"localhost", socket.gethostname(), *(a.address for addrs in psutil.net_if_addrs().values() for a in addrs)}
        except Exception:  # the scheduler went away: not known to be here
            return False
        return bool(hosts) and hosts <= here

    def close(self) -> None:
        super().close()
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


class Overlay:
    """A :class:`LiveEngine` that sets ``values`` in every point: its cache keys,
    requests and results are the engine's for the point with those values, and
    everything else (the bound on pending work, :meth:`Work.start`, ``call``,
    ``timeout``) is the engine's own. A session swaps its engine for one to show
    an uploaded mesh at every point it visits (``{"object": path}``)."""

    def __init__(self, engine: LiveEngine, values: Mapping[str, Any]):
        self.engine, self.values = engine, dict(values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def key(self, point: Mapping[str, Any], *args: Any) -> str:
        return self.engine.key({**point, **self.values}, *args)

    def submit(self, session: str, point: Mapping[str, Any], *args: Any):
        return self.engine.submit(session, {**point, **self.values}, *args)

    def evaluate(self, session: str, point: Mapping[str, Any], *args: Any, **kwargs: Any) -> tuple[LiveResult, bool]:
        return self.engine.evaluate(session, {**point, **self.values}, *args, **kwargs)


def attack_task(x: np.ndarray, delta: np.ndarray, model: str, eps: float, norm: str, target: int | None,
                label: int | None, steps: int, alphas: Sequence[float], models: Sequence[str],
                threads: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """``steps`` PGD steps from ``delta`` on the model input ``x`` (S, S, 3) uint8,
    then every model on clamp(x + α δ) for each α in one batch.

    Returns (δ (3, S, S) float32, the label attacked, logits (α, model, 1000) float32).
    """
    use_threads(threads)
    device = registry.best_device()
    xt = to_tensor(x, device).contiguous()
    attack = Attack(model, eps=eps, norm=norm, target=target)
    lab = torch.tensor([label], device=device) if label is not None else label_for(xt, attack)
    d = pgd(xt, attack, steps, delta=torch.tensor(delta)[None].to(device), label=lab) if steps else torch.tensor(delta)[None].to(device)
    if not alphas or not models:
        return d[0].cpu().numpy().astype(np.float32), int(lab[0]), None
    batch = blend(xt, d, alphas)
    outputs = inference.run_models(batch, models, device=device, batch_size=len(batch))
    logits = np.stack([outputs[m].logits.numpy() for m in models], axis=1)
    return d[0].cpu().numpy().astype(np.float32), int(lab[0]), logits
