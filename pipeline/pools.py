"""Thread pools kept for the life of the process.

A kept thread keeps its thread-local state between calls: its renderer (an
OpenGL context with meshes and textures uploaded,
:func:`perturber.pipeline.scene.default_renderer`). The render threads of the
engine and the in-process task threads of a precompute are such pools.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["kept_pool"]

_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def kept_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool ``name`` of ``threads`` threads (named ``perturber-<name>_<i>``),
    created on first use and then reused."""
    with _lock:
        if (name, threads) not in _pools:
            _pools[name, threads] = ThreadPoolExecutor(threads, thread_name_prefix=f"perturber-{name}")
        return _pools[name, threads]
