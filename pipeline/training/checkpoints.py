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

A run left with ``--stop-after`` between checkpoints also writes
``step-N.pt`` and the resume file at its last step, without registering the
file (nor evaluating); the resume file then also holds the training loss and
accuracy sums since the previous checkpoint. The resumed run removes that
file once it writes its next checkpoint.

Every file is written to a temporary name and renamed, so a killed run leaves
the previous version whole. The resume file is written last: a run killed
between a checkpoint and its resume file redoes those steps, and arrives at
the same checkpoint (the data order and RNG states are the same).
"""

from __future__ import annotations

import contextlib
import csv
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist

from perturber.pipeline import atomic, models, registry_file
from perturber.pipeline.training import TrainingError
from perturber.pipeline.weights import sha256_of

__all__ = ["checkpoint_path", "entry_name", "save_atomic", "save_checkpoint", "read_resume", "register", "unregister",
           "write_state", "open_log", "writing", "RESUME", "LOG_FIELDS"]

RESUME = "resume.pt"

#: The columns of log.csv.
LOG_FIELDS = ("step", "epoch", "loss", "accuracy", "lr", "images_per_s", "seconds", "clean_accuracy", "robust_accuracy", "checkpoint")


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / f"step-{step:06d}.pt"


def entry_name(run: str, step: int) -> str:
    """The registry name of run ``run``'s checkpoint after ``step`` steps."""
    return f"{run}-step{step}"


@contextlib.contextmanager
def writing(path: Path):
    """An OSError (disk full, no such folder, not writable) while writing ``path``: a one-line TrainingError."""
    try:
        yield
    except OSError as exc:
        raise TrainingError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename."""
    path = Path(path)
    with writing(path), atomic.replacing(path) as f:
        torch.save(obj, f)


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
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("settings"), dict)
            and isinstance(state.get("optimizer"), dict)):
        raise TrainingError(f"{path}: not a resume file of perturber finetune (no step, settings and optimizer state); "
                            "use --overwrite to start over")
    old = state.get("settings", {})
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed:
        k = changed[0]
        raise TrainingError(f"{out} holds a run with {k}={old.get(k)!r}, not {settings.get(k)!r}: use the same options to "
                            "resume it, another --name (and --out, if you gave one), or --overwrite")
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


def open_log(out: Path, start_step: int):
    """log.csv, opened for writing as a csv.DictWriter; rows up to ``start_step`` kept (later ones are redone now)."""
    path = Path(out) / "log.csv"
    rows = []
    with writing(path):
        if path.is_file() and start_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        f = open(path, "w", newline="")
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
    return f, writer


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def write_state(cfg, p, w, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler, device: torch.device, step: int,
                row: Mapping[str, Any], window: torch.Tensor, registered: bool = True) -> str | None:
    """Every process: hand its RNG state to process 0, which writes the
    checkpoint, registers it and writes the resume file last. The entry's name (process 0).
    ``registered=False`` (--stop-after between checkpoints): the checkpoint and
    the resume file only, with ``window`` (loss, correct and images since the
    previous checkpoint) so the next checkpoint's training means span the stop.

    ``cfg``, ``p`` and ``w``: the run's Config, Plan and World (:mod:`~perturber.pipeline.training.loop`)."""
    states = [None] * w.world
    if dist.is_initialized():
        dist.all_gather_object(states, _rng_state(device))
    else:
        states = [_rng_state(device)]
    name = None
    if w.main:
        out = Path(cfg.out)
        path = save_checkpoint(model, out, step)
        state = {"step": step, "settings": cfg.settings(), "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "rng": states, "entry": None}
        if not registered:
            state["window"] = window.clone()
    if w.main and registered:
        finetune = {"mode": cfg.mode, "step": step, "epoch": round(step / (len(p.train) // cfg.batch), 4),
                    "train_loss": float(window[0] / window[2]), "train_accuracy": float(window[1] / window[2]),
                    "clean_accuracy": row["clean_accuracy"], "robust_accuracy": row["robust_accuracy"],
                    "eps": cfg.eps, "norm": cfg.norm if cfg.eps is not None else None,
                    "attack_steps": cfg.attack_steps if cfg.eps is not None else None,
                    "attack_step_size": p.attack.alpha if p.attack is not None else None,
                    "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "batch": cfg.batch,
                    "seed": cfg.seed, "bn": cfg.bn, "processes": w.world, "data": state["settings"]["data"], "val": state["settings"]["val"],
                    "val_images": len(p.val), "train_images": len(p.train), "run": cfg.run}
        name = state["entry"] = register(p.base, cfg.run, path, step, finetune)
    if w.main:
        save_atomic(state, out / RESUME)
    if dist.is_initialized():
        dist.barrier()
    return name
