"""Configuration: every environment variable Perturber reads, in one place.

| variable | what it sets | default |
| --- | --- | --- |
| ``PERTURBER_CACHE`` | the cache folder: extracted meshes, morph fields, downloaded weights, measured batch sizes | ``$XDG_CACHE_HOME/perturber``, else ``~/.cache/perturber`` |
| ``PERTURBER_ASSET_DIR`` | extra folders (``os.pathsep``-separated) searched for asset files by name | none |
| ``PERTURBER_CATALOGUE`` | the asset catalogue (YAML) | ``data/catalogue.yaml`` |
| ``PERTURBER_CONFIG`` | the user's settings folder: ``models.yaml`` there is the user's model registry (pinned digests, fine-tuned checkpoints), read after ``data/models.yaml`` | ``$XDG_CONFIG_HOME/perturber``, else ``~/.config/perturber`` |
| ``PERTURBER_MODELS`` | extra model registries (YAML, ``os.pathsep``-separated), after the user's | none |

Each function reads the environment when it is called; nothing here is
cached. Caches elsewhere put what these functions return into their keys, so
a changed variable takes effect at once.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR", "cache_dir", "config_dir", "user_registry", "asset_dirs", "catalogue_path", "model_registries", "add_model_registries", "file_key"]

#: The catalogues shipped with Perturber (``data/`` in the repository).
DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def _paths(variable: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in os.environ.get(variable, "").split(os.pathsep) if p)


def cache_dir() -> Path:
    """The cache folder (created if missing)."""
    root = os.environ.get("PERTURBER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "perturber"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    """The user's settings folder (not created here)."""
    root = os.environ.get("PERTURBER_CONFIG") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "perturber"
    )
    return Path(root)


def user_registry() -> Path:
    """The user's model registry file, which Perturber itself writes (it may not exist yet)."""
    return config_dir() / "models.yaml"


def asset_dirs() -> tuple[Path, ...]:
    """Extra folders searched for asset files by base name."""
    return _paths("PERTURBER_ASSET_DIR")


def catalogue_path() -> Path:
    """The asset catalogue in use."""
    return Path(os.environ.get("PERTURBER_CATALOGUE") or DATA_DIR / "catalogue.yaml")


def model_registries() -> tuple[Path, ...]:
    """Every model registry in use: the built-in one, the user's (when it
    exists), then those of ``PERTURBER_MODELS``; a later entry of the same name wins."""
    user = user_registry()
    return (DATA_DIR / "models.yaml", *((user,) if user.is_file() else ()), *_paths("PERTURBER_MODELS"))


def add_model_registries(paths: list[str] | tuple[str, ...]) -> None:
    """Use these model registries too, in this process and in the processes it
    starts (Dask workers): they are added to ``PERTURBER_MODELS``."""
    known = [str(p) for p in _paths("PERTURBER_MODELS")]
    os.environ["PERTURBER_MODELS"] = os.pathsep.join([*known, *(os.path.abspath(p) for p in paths)])


def file_key(path: Path) -> tuple[str, int, int]:
    """(path, modification time in ns, size): a cache key that changes when the file does."""
    try:
        stat = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), stat.st_mtime_ns, stat.st_size)
