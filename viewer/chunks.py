"""Reading a few stored chunks of a local store without Zarr's machinery.

A view reads a handful of inner chunks per control change (a point's
top-5, image and activations; a heatmap's column of chunks). Through
zarr-python each costs a few milliseconds of asynchronous bookkeeping around
a decode of a fraction of that; read here, a chunk is two file reads (a
shard's index entry, then the chunk's bytes), a checksum and a zstd decode.

Only the codecs Perturber's stores use are read this way: inner chunks
``bytes`` (little-endian) → ``zstd`` → ``crc32c``, either as one file per
chunk (store format 1) or inside shards (format 2: Zarr v3's
``sharding_indexed``, index ``bytes`` → ``crc32c`` at the end). Any other
array, or a store that is not a local folder, returns None from
:func:`reader`, and the caller reads through Zarr as before. The answers are
Zarr's (tests/test_viewer_scale.py compares them): a missing chunk reads as
the fill value, a chunk whose checksum or decoding fails raises :class:`BadChunk`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd

from perturber.pipeline.errors import PerturberError

__all__ = ["Reader", "reader", "BadChunk"]

_ZSTD = Zstd()
log = logging.getLogger("perturber.viewer")
_EMPTY = 2**64 - 1  # a shard index entry of a chunk that was never written


class BadChunk(PerturberError):
    """A stored chunk whose checksum or decoding fails (the message names its file: for the log, not the page)."""


def _plain(codecs: list[dict]) -> bool:
    """Whether ``codecs`` (metadata) are bytes (little-endian) → zstd → crc32c."""
    names = [c["name"] for c in codecs]
    return names == ["bytes", "zstd", "crc32c"] and codecs[0].get("configuration", {}).get("endian", "little") == "little"


_INDEXES: dict[tuple[str, int, int], list[tuple[int, int]]] = {}  # (shard file, size, mtime) → its index


def _shard_index(name: str, f: Any, stat: os.stat_result, chunks: int) -> list[tuple[int, int]]:
    """(offset, size) of each inner chunk of the open shard ``f`` (checked), kept
    per file version (its name, size and modification time: a shard rewritten
    by a repair is read again)."""
    key = (name, stat.st_size, stat.st_mtime_ns)
    found = _INDEXES.get(key)
    if found is None:
        if stat.st_size < 16 * chunks + 4:
            raise BadChunk(f"{name}: shorter than its index")
        f.seek(-(16 * chunks + 4), os.SEEK_END)
        raw = f.read(16 * chunks + 4)
        if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise BadChunk(f"{name}: shard index checksum")
        pairs = np.frombuffer(raw, dtype="<u8", count=2 * chunks).reshape(chunks, 2)
        found = [(int(o), int(n)) for o, n in pairs]
        if len(_INDEXES) >= 8192:
            _INDEXES.clear()
        _INDEXES[key] = found
    return found


@dataclass(frozen=True)
class Reader:
    """The stored layout of one array: ``inner`` (the chunk a read decodes),
    ``outer`` (the file: a shard, or the chunk itself), ``folder`` (the array's)."""

    folder: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    inner: tuple[int, ...]
    outer: tuple[int, ...]
    sharded: bool
    separator: str

    def _file(self, outer: tuple[int, ...]) -> str:
        return os.path.join(self.folder, "c" + self.separator + self.separator.join(map(str, outer)))

    def chunk(self, index: tuple[int, ...]) -> np.ndarray | None:
        """The inner chunk at chunk-grid ``index``, decoded ((inner) shaped); None when never written."""
        per = [o // i for o, i in zip(self.outer, self.inner)]
        outer = tuple(k // p for k, p in zip(index, per))
        name = self._file(outer)
        try:
            f = open(name, "rb")
        except FileNotFoundError:
            return None
        with f:
            if self.sharded:
                local = 0
                for k, p in zip(index, per):
                    local = local * p + k % p
                offset, size = _shard_index(name, f, os.fstat(f.fileno()), int(np.prod(per)))[local]
                if offset == _EMPTY and size == _EMPTY:
                    return None
                f.seek(offset)
                data = f.read(size)
            else:
                data = f.read()
        if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
            raise BadChunk(f"{name}: chunk checksum")
        try:
            return np.frombuffer(_ZSTD.decode(data[:-4]), dtype=self.dtype.newbyteorder("<")).reshape(self.inner)
        except Exception as exc:
            raise BadChunk(f"{name}: {type(exc).__name__}") from None

    def select(self, sel: Mapping[int, int], on_bad: Any = None) -> np.ndarray:
        """``array[index]`` where ``sel`` maps dimensions to one position each and
        the other dimensions are whole (dimensions with a position dropped).
        ``on_bad``: None raises :class:`BadChunk`; a value fills a bad chunk's cells instead."""
        ranges = [[sel[d]] if d in sel else range(n) for d, n in enumerate(self.shape)]
        out = np.full([len(r) for d, r in enumerate(ranges) if d not in sel], self.fill, dtype=self.dtype)
        blocks = [sorted({i // c for i in r}) for r, c in zip(ranges, self.inner)]
        for index in itertools.product(*blocks):
            try:
                chunk = self.chunk(index)
            except BadChunk as exc:
                if on_bad is None:
                    raise
                log.warning("%s; read as not computed (`perturber verify` finds damaged chunks)", exc)
                chunk = np.full(self.inner, on_bad, dtype=self.dtype)
            if chunk is None:
                continue  # never written: the fill value
            source, target = [], []
            for d, (k, c, n) in enumerate(zip(index, self.inner, self.shape)):
                lo, hi = k * c, min((k + 1) * c, n)
                if d in sel:
                    source.append(sel[d] - lo)
                else:
                    source.append(slice(0, hi - lo))
                    target.append(slice(lo, hi))
            out[tuple(target)] = chunk[tuple(source)]
        return out


@functools.lru_cache(maxsize=256)
def reader(path: str, cube: str, variable: str) -> Reader | None:
    """A :class:`Reader` of ``cube/variable`` in the local store ``path``; None
    when the store is not a local folder or the array's codecs are others."""
    folder = os.path.join(path, cube, variable)
    if not os.path.isdir(folder):
        return None
    try:
        arr = zarr.open_array(path, path=f"{cube}/{variable}", mode="r")
    except Exception:
        return None
    meta = arr.metadata.to_dict()
    encoding = meta.get("chunk_key_encoding", {})
    if meta.get("zarr_format") != 3 or encoding.get("name") != "default":
        return None
    separator = encoding.get("configuration", {}).get("separator", "/")
    outer = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = meta["codecs"]
    if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        config = codecs[0]["configuration"]
        index = [c["name"] for c in config.get("index_codecs", [])]
        if not _plain(config["codecs"]) or index != ["bytes", "crc32c"] or config.get("index_location", "end") != "end":
            return None
        inner, sharded = tuple(config["chunk_shape"]), True
    elif _plain(codecs):
        inner, sharded = outer, False
    else:
        return None
    dtype = np.dtype(arr.dtype)
    return Reader(folder, tuple(arr.shape), dtype, arr.fill_value, inner, outer, sharded, separator)
