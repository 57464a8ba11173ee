"""This process's threads: pools kept for its life, and torch's CPU threads within a block.

A kept thread keeps its thread-local state between calls: its renderer (an
OpenGL context with meshes and textures uploaded,
:func:`perturber.pipeline.scene.default_renderer`). The render threads of the
engine and the in-process task threads of a precompute are such pools.
No heavy import here: the engine must not import Dask, the task runner not torch.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

__all__ = ["kept_pool", "torch_threads"]

_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def kept_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool ``name`` of ``threads`` threads (named ``perturber-<name>_<i>``),
    created on first use and then reused."""
    with _lock:
        if (name, threads) not in _pools:
            _pools[name, threads] = ThreadPoolExecutor(threads, thread_name_prefix=f"perturber-{name}")
        return _pools[name, threads]


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[None]:
    """Torch on ``threads`` CPU threads in the block (None: as they are; the
    calls in it may set their own), and this process's count put back when
    the block ends."""
    torch = sys.modules.get("torch")
    if threads and torch is None:
        import torch  # heavy: whoever sets torch's threads uses torch
    saved = torch.get_num_threads() if torch else None
    try:
        if threads and threads != saved:
            torch.set_num_threads(threads)
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and saved is not None and torch.get_num_threads() != saved:
            torch.set_num_threads(saved)
