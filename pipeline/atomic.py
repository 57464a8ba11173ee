"""Files written whole or not at all: a temporary file beside the target,
renamed over it once complete, removed if anything fails. A reader (another
process, a resumed run) never sees half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["replacing"]


@contextlib.contextmanager
def replacing(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A file object (``mode`` "wb" or "w") whose contents replace ``path`` when
    the block ends without an error; permissions 0644, as a plain ``open`` would
    give under the usual umask."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
