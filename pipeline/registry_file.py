"""Writing the user's model registry (``config.user_registry()``): digests
pinned by ``perturber models fetch --trust`` and fine-tuned checkpoints
registered by ``perturber finetune``.

Writes are whole-file replacements through a temporary file and a rename,
under an exclusive lock, so a reader never sees half a file and two writers
(two fine-tuning runs) never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from perturber.pipeline import atomic, config, yamlsafe
from perturber.pipeline.errors import ModelError, one_line

__all__ = ["write_entries", "remove_entries", "read_entries"]

_HEADER = ("# Perturber's user model registry, written by `perturber models fetch --trust` and\n"
           "# `perturber finetune` (entries of the same name here override the built-in ones).\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_entries(path: Path | None = None) -> dict[str, Any]:
    """The entries of the user's registry (empty when it does not exist)."""
    path = Path(path or config.user_registry())
    if not path.is_file():
        return {}
    data = yamlsafe.load_file(path, ModelError) or {}
    if not isinstance(data, Mapping):
        raise ModelError(f"model registry {path} must map model names to entries")
    return dict(data)


def _write(path: Path, entries: Mapping[str, Any]) -> None:
    with atomic.replacing(path, "w") as f:
        f.write(_HEADER)
        yaml.safe_dump(dict(entries), f, sort_keys=False, default_flow_style=None, width=120)


def _rewrite(path: Path, change) -> Path:
    try:
        with _locked(path):
            _write(path, change(read_entries(path)))
    except OSError as exc:  # a settings folder that is a file, read-only, a full disk
        raise ModelError(f"cannot write the model registry {path} ({one_line(exc)})") from None
    return path


def write_entries(entries: Mapping[str, Mapping[str, Any]], path: Path | None = None) -> Path:
    """Add or replace ``entries`` (name → plain YAML-able entry) in the user's
    registry; returns its path."""
    added = {str(k): dict(v) for k, v in entries.items()}
    return _rewrite(Path(path or config.user_registry()), lambda old: {**old, **added})


def remove_entries(names: list[str], path: Path | None = None) -> Path:
    """Remove ``names`` from the user's registry (absent names are ignored)."""
    return _rewrite(Path(path or config.user_registry()), lambda old: {k: v for k, v in old.items() if k not in names})
