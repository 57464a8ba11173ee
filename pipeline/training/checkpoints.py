"""A fine-tuning run's files: checkpoints, the resume file, registry entries.

The output folder of run R holds:

- ``step-000500.pt``: the network's state dict after 500 optimizer steps, a
  plain ``torch.save`` of CPU tensors with the architecture's own keys
  (``torch.load(path, weights_only=True)`` reads it; so does the registry);
- ``resume.pt``: where to go on from the last checkpoint: its step and file,
  the optimizer's state (momentum buffers), every process's RNG states, the
  gradient scaler's state, and the settings that must not change on resume;
- ``log.csv`` (one row per step), ``launch.json`` (the settings handed to
  torchrun's processes), and TensorBoard events when tensorboard is installed.

Each checkpoint becomes the registry entry ``R-step500`` in the user's
registry (:func:`perturber.pipeline.config.user_registry`), so the viewer,
precompute, studies and featureviz can use it at once:
architecture, input size, mean, std, layers and classes are the base
model's; ``weights`` is the checkpoint file and its sha256;
``checkpoint_of`` the base model; ``finetune`` the mode, step, epoch, the
mean training loss and accuracy since the previous checkpoint, the
held-out clean and robust accuracy, and the run's settings.

Every file is written to a temporary name and renamed, so a killed run leaves
the previous version whole. The resume file is written last: a run killed
between a checkpoint and its resume file redoes those steps, and arrives at
the same checkpoint (the data order and RNG states are the same).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from perturber.pipeline import models, registry_file
from perturber.pipeline.training import TrainingError
from perturber.pipeline.weights import sha256_of

__all__ = ["checkpoint_path", "entry_name", "save_atomic", "save_checkpoint", "read_resume", "register", "unregister", "RESUME"]

RESUME = "resume.pt"


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / f"step-{step:06d}.pt"


def entry_name(run: str, step: int) -> str:
    """The registry name of run ``run``'s checkpoint after ``step`` steps."""
    return f"{run}-step{step}"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: torch.nn.Module, out: Path, step: int) -> Path:
    """The network's state dict (CPU copies) as ``step-NNNNNN.pt``; its path."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    path = checkpoint_path(out, step)
    save_atomic(state, path)
    return path


def read_resume(out: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resume file of ``out`` (None when there is none), refused with one line
    when it was written with other ``settings`` (those a resumed run must share)."""
    path = Path(out) / RESUME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise TrainingError(f"{path}: not a readable resume file ({type(exc).__name__}); use --overwrite to start over") from None
    old = state.get("settings", {})
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed:
        k = changed[0]
        raise TrainingError(f"{out} holds a run with {k}={old.get(k)!r}, not {settings.get(k)!r}: use the same options to "
                            "resume it, another --out, or --overwrite")
    if not checkpoint_path(out, state["step"]).is_file():
        raise TrainingError(f"{path}: its checkpoint {checkpoint_path(out, state['step']).name} is missing; use --overwrite")
    return state


def _plain(value: Any) -> Any:
    """YAML-safe: floats, ints, strings, None, lists and dicts of them."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def register(base: models.ModelSpec, run: str, path: Path, step: int, finetune: Mapping[str, Any]) -> str:
    """Write checkpoint ``path`` as registry entry ``run-stepN`` into the user's
    registry (module docstring); returns the entry's name."""
    name = entry_name(run, step)
    entry = {
        "architecture": base.architecture,
        "weights": {"file": str(Path(path).resolve()), "sha256": sha256_of(path)},
        "input_size": base.input_size,
        "mean": list(base.mean),
        "std": list(base.std),
        "layers": dict(base.layers),
        "classes": base.classes,
        "description": f"{base.name} fine-tuned ({finetune.get('mode')}), run {run}, step {step}",
        "licence": base.licence,
        "provenance": f"perturber finetune: run {run}, step {step}, from {base.name}",
        "checkpoint_of": base.name,
        "finetune": _plain(dict(finetune)),
    }
    registry_file.write_entries({name: entry})
    return name


def unregister(run: str) -> list[str]:
    """Remove run ``run``'s checkpoint entries from the user's registry (a run
    started over with ``--overwrite``); the names removed."""
    names = [n for n in registry_file.read_entries() if re.fullmatch(re.escape(run) + r"-step\d+", str(n))]
    if names:
        registry_file.remove_entries(names)
    return names
