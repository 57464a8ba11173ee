"""How a cube is cut into files: inner chunks, shards (the unit of work) and summary chunks.

A cube's per-sample variables (logits, top-k, images, masks, activations)
are stored with Zarr v3's sharding codec: each file (a *shard*) holds many
inner chunks, and one precompute task computes and writes one whole shard
(writes into a shard are not safe concurrently, so tasks are shard-aligned).

- **inner chunk** (:attr:`CubeSpec.chunk_shape`): what a point read decodes;
  by default one scene with its image-factor axes whole.
- **shard** (:func:`shard_shape`): a whole number of inner chunks along each
  axis, grown from the innermost axis outwards until the biggest variable's
  shard holds about :data:`SHARD_BYTES` (uncompressed), or until the cube
  stays under :data:`FILE_BUDGET` files, whichever needs more samples per
  shard; a cube keeps at least :data:`MIN_TASKS` tasks (a task per chunk
  when it has fewer chunks), so a small cube still runs in parallel. ``shards: {axis: n}`` in
  the spec sets it instead.
- **summary chunk** (:func:`summary_chunk_shape`): the per-sample summaries
  (top-1 class and probability, expected-class probability) in chunks of
  whole shards, about :data:`SUMMARY_CELLS` values each, so whole-cube views
  read a few files.

Worked example, a 10M-sample cube (8 objects x 100 yaws x 50 pitches x 10
distances x 25 hues, two models, 224 px images, 3 activation layers: 8
sharded variables): inner chunks of 25 samples (the hues of one scene). The
image shard would reach 128 MB at 891 samples, but 10M samples x 8
variables / 40,000 files asks for 2,000: shards of 1 x 1 x 8 x 10 x 25
samples (300 MB of images uncompressed), 5,600 tasks (50 pitches in shards
of 8 make 7), 44,800 shard files; summary chunks of 2.5M samples, 4 files
per summary.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["SHARD_BYTES", "FILE_BUDGET", "MIN_TASKS", "SUMMARY_CELLS", "grow", "shard_shape", "summary_chunk_shape",
           "grid", "region", "files"]

#: Target uncompressed bytes of the biggest variable's shard.
SHARD_BYTES = 128 * 2**20
#: Most files a cube's per-sample arrays should take, whatever its size.
FILE_BUDGET = 40_000
#: Fewest tasks a cube is cut into (when it has that many inner chunks).
MIN_TASKS = 16
#: Values per summary chunk (int16 top-1 classes: 8 MiB uncompressed).
SUMMARY_CELLS = 4 * 2**20


def grow(shape: Sequence[int], unit: Sequence[int], samples: int) -> tuple[int, ...]:
    """The smallest block of whole ``unit`` blocks, grown from the last axis
    outwards, that holds at least ``samples`` samples (or the whole cube).

    ``shape``: the cube's axis lengths; ``unit``: the block to grow (each
    entry divides the result, so a shard is whole inner chunks). A grown
    axis may exceed its length by less than a unit (Zarr allows a last,
    partial shard)."""
    out = list(unit)
    for k in reversed(range(len(shape))):
        have = math.prod(out)
        if have >= samples:
            break
        units_here = math.ceil(shape[k] / unit[k])
        need = math.ceil(samples / have)
        out[k] = unit[k] * min(units_here, need)
    return tuple(out)


def shard_shape(shape: Sequence[int], chunk: Sequence[int], bytes_per_sample: Sequence[int],
                hint: Mapping[int, int] | None = None) -> tuple[int, ...]:
    """Samples per shard along each axis.

    ``bytes_per_sample``: each sharded variable's uncompressed bytes per
    sample; ``hint``: axis position → samples per shard (rounded up to whole
    inner chunks), which replaces the choice along that axis.
    """
    samples = math.prod(shape)
    biggest = max(bytes_per_sample, default=1) or 1
    want = max(SHARD_BYTES // biggest, math.ceil(samples * len(bytes_per_sample) / FILE_BUDGET), 1)
    chunks = math.prod(math.ceil(n / c) for n, c in zip(shape, chunk))
    per_chunk = math.prod(chunk)
    want = min(want, per_chunk * max(1, chunks // MIN_TASKS))  # fewer chunks than MIN_TASKS: a task per chunk
    out = list(grow(shape, chunk, want))
    for k, n in (hint or {}).items():
        out[k] = min(chunk[k] * math.ceil(n / chunk[k]), chunk[k] * math.ceil(shape[k] / chunk[k]))
    return tuple(out)


def summary_chunk_shape(shape: Sequence[int], shard: Sequence[int], models: int) -> tuple[int, ...]:
    """Samples per summary chunk along each axis: whole shards, about
    :data:`SUMMARY_CELLS` values (samples x models) each (at most the axis)."""
    out = grow(shape, shard, max(1, SUMMARY_CELLS // max(models, 1)))
    return tuple(min(c, n) for c, n in zip(out, shape))


def grid(shape: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    """Blocks along each axis."""
    return tuple(math.ceil(n / b) for n, b in zip(shape, block))


def region(shape: Sequence[int], block: Sequence[int], index: Sequence[int]) -> tuple[slice, ...]:
    """The samples of block ``index`` along each axis."""
    return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, shape))


def files(shape: Sequence[int], shard: Sequence[int], summary: Sequence[int], variables: int, summaries: int = 3) -> int:
    """Files the cube's arrays take once every task is written (metadata and coordinates aside)."""
    return variables * math.prod(grid(shape, shard)) + summaries * math.prod(grid(shape, summary)) + 1
