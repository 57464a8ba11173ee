"""The fine-tuning loop: SGD on a registry model's network, one process or DDP.

Modes (``Config.mode``):

- ``standard``: plain fine-tuning on the training images;
- ``adversarial``: PGD in the loop (Madry et al. 2018): each step first
  attacks the current network on the batch (``attack_steps`` steps of
  :func:`perturber.pipeline.attack.pgd_step`, L2 or L∞, ε in [0, 1] pixel
  units of the model-input image, no random start, pushing away from the
  true label), with the network in **eval mode** (batch norm uses its running
  statistics, dropout is off, so the attack is a fixed function of the
  image); then trains on the attacked images in **train mode**;
- ``stylized``: the standard loop on a stylized ImageFolder, optionally mixed
  with the original images (Geirhos et al. 2019's SIN+IN: the union of both
  folders, shuffled together).

Defaults (the paper's): SGD with momentum 0.9, learning rate 0.003 (constant),
weight decay 0, global batch 128, every layer trained (none frozen), the
network's own 1000-way head kept. Images: shorter side resized to the model's
input size and centre-cropped, flipped horizontally at random (seeded).

Held-out accuracy at each checkpoint: clean top-1, and robust top-1 under the
training attack (ε, norm, steps, step size) when there is one (in standard
and stylized runs: when ``eps`` is given). Each process evaluates a slice
of the held-out images; the counts are summed.

Determinism: step s sees global batch s of :func:`perturber.pipeline.training.data.batch_keys`
(seed and epoch only); each process's RNG (dropout) is seeded with the seed
and its rank and saved in the resume file. A resumed run equals an
uninterrupted one bit for bit on the CPU; on GPUs up to floating-point noise
(torch's deterministic algorithms are not asked for, and cuDNN's backward
kernels sum in no fixed order). A DDP run equals one process with the same global batch up
to the order of floating-point sums (gradients are averaged; batch norm per
``bn``, :mod:`perturber.pipeline.training.distributed`). Dropout is the
exception to the latter: each process draws its own masks (seeded by rank, so
they are independent), so a network with dropout gets other (equally random)
masks in another world size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from perturber.pipeline import inference, models
from perturber.pipeline.attack import Attack, pgd_step
from perturber.pipeline.training import MODES, TrainingError, checkpoints, data
from perturber.pipeline.training.distributed import World, prepare_bn, set_train_mode, start, stop, sum_across, world_from_env

__all__ = ["Config", "Plan", "Result", "plan", "train", "evaluate", "KEEP", "RESUME_SETTINGS", "LOG_FIELDS"]

log = logging.getLogger("perturber.finetune")

#: Checkpoints a run keeps by default, per mode (the paper kept 17 adversarial and 7 stylized ones).
KEEP = {"adversarial": 17, "stylized": 7, "standard": 10}

#: Settings a resumed run must share with the run it resumes.
RESUME_SETTINGS = ("model", "mode", "data", "val", "val_fraction", "val_max", "seed", "batch", "lr", "momentum",
                   "weight_decay", "eps", "norm", "attack_steps", "attack_step_size", "bn", "flip", "precision", "run")

LOG_FIELDS = checkpoints.LOG_FIELDS


@dataclass(frozen=True)
class Config:
    """A fine-tuning run's settings (``perturber finetune``'s options, resolved).

    ``data``: the training folders (stylized mode: the stylized one, then the
    original one to mix in). ``eps`` in [0, 1] pixel units (L2: over the whole
    model-input image); ``attack_step_size`` default 2.5 ε / ``attack_steps``
    (Madry et al.'s rule). ``steps``: optimizer steps in all (default:
    ``epochs`` epochs); ``checkpoint_every`` default: steps / :data:`KEEP`.
    ``stop_after``: leave after that many steps in this invocation (resume
    later). ``val_max``: at most this many held-out images (None: all)."""

    model: str
    mode: str
    data: tuple[str, ...]
    out: str
    run: str
    val: str | None = None
    val_fraction: float = 0.1
    val_max: int | None = 1000
    seed: int = 0
    batch: int = 128
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    steps: int | None = None
    epochs: float = 1.0
    checkpoint_every: int | None = None
    stop_after: int | None = None
    eps: float | None = None
    norm: str = "l2"
    attack_steps: int = 7
    attack_step_size: float | None = None
    bn: str = "sync"
    flip: bool = True
    precision: str = "auto"
    workers: int | None = None
    progress: bool = True
    overwrite: bool = False

    def settings(self) -> dict[str, Any]:
        """The :data:`RESUME_SETTINGS`; the folders as absolute paths (symbolic links resolved)."""
        d = asdict(self)
        d["data"] = [_absolute(f) for f in self.data]
        d["val"] = _absolute(self.val) if self.val is not None else None
        return {k: d[k] for k in RESUME_SETTINGS}


def _absolute(folder: str) -> str:
    return str(Path(folder).expanduser().resolve())


@dataclass
class Plan:
    """What a run will do, worked out before any training: the base model, the
    attack (or None), the training and held-out images, steps in all and the
    checkpoint interval."""

    base: models.ModelSpec
    attack: Attack | None
    train: list[data.Sample]
    val: list[data.Sample]
    steps: int
    every: int


@dataclass
class Result:
    """What a run did: its last step, and the registry entries it wrote (name → step)."""

    step: int
    steps: int
    entries: dict[str, int] = field(default_factory=dict)
    out: str = ""


def plan(cfg: Config, world: int = 1) -> Plan:
    """Check everything and work out the run (one-line :class:`TrainingError` s)."""
    if cfg.mode not in MODES:
        raise TrainingError(f"--mode {cfg.mode}: choose {', '.join(MODES)}")
    base = models.spec(cfg.model)
    if cfg.mode == "adversarial" and cfg.eps is None:
        raise TrainingError("--mode adversarial needs --eps")
    if cfg.precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise TrainingError(f"--precision {cfg.precision}: mixed precision runs on GPUs only; this machine has none")
    attack = None
    if cfg.eps is not None:
        step = cfg.attack_step_size if cfg.attack_step_size is not None else 2.5 * cfg.eps / cfg.attack_steps
        attack = Attack(cfg.model, float(cfg.eps), cfg.norm, step=step)
    if cfg.batch % world:
        raise TrainingError(f"--batch {cfg.batch}: not divisible by the {world} processes (each takes an equal share)")
    options = ["--data", "--mix-original"]
    samples = [s for i, d in enumerate(cfg.data) for s in data.scan(d, options[min(i, 1)])]
    if cfg.val is not None:
        train, val = samples, data.scan(cfg.val, "--val")
    else:
        train, val = data.split(samples, cfg.val_fraction, cfg.seed)
    val = val[: cfg.val_max] if cfg.val_max is not None else val
    if len(train) < cfg.batch:
        raise TrainingError(f"--batch {cfg.batch}: more than the {len(train)} training images")
    steps = cfg.steps or max(1, round(cfg.epochs * (len(train) // cfg.batch)))
    every = cfg.checkpoint_every or math.ceil(steps / KEEP[cfg.mode])
    return Plan(base, attack, train, val, steps, every)


def _autocast(device: torch.device, precision: str):
    """Mixed precision on GPUs only: bf16 where supported ('auto'), else fp16."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext(), None
    dtype = torch.float16 if precision == "fp16" or not torch.cuda.is_bf16_supported() else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype), dtype


def _attack_autocast(device: torch.device, precision: str):
    """The attack's precision: training's, except fp16 becomes fp32. PGD takes
    the input gradient without loss scaling, and for a confidently classified
    image it underflows fp16 (bf16 has fp32's range)."""
    amp, dtype = _autocast(device, precision)
    return contextlib.nullcontext() if dtype == torch.float16 else amp


def _attacked(net: torch.nn.Module, spec: models.ModelSpec, x: torch.Tensor, y: torch.Tensor, attack: Attack, steps: int,
              amp) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1]: PGD on ``net`` (preprocessed as ``spec``) in eval mode (the caller restores its mode)."""
    net.eval()
    delta = torch.zeros_like(x)
    with amp:
        for _ in range(steps):
            delta = pgd_step(x, delta, attack, y, net, spec)
    return (x + delta).clamp(0, 1).detach()


def evaluate(net: torch.nn.Module, images: data.Images, spec: models.ModelSpec, attack: Attack | None, attack_steps: int,
             w: World, device: torch.device, batch: int, precision: str = "fp32") -> tuple[float | None, float | None]:
    """(clean top-1, robust top-1 under ``attack`` or None) on ``images``, in
    eval mode; process r of w takes images r, r + w, ... (None: no images)."""
    amp, _ = _autocast(device, precision)
    attack_amp = _attack_autocast(device, precision)
    mine = list(range(w.rank, len(images), w.world))
    counts = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(mine), batch):
        x, y = images_batch(images, [(j, False) for j in mine[i : i + batch]], device)
        net.eval()
        with torch.no_grad(), amp:
            counts[0] += (net(inference.preprocess(x, spec)).argmax(1) == y).sum().item()
        if attack is not None:
            adv = _attacked(net, spec, x, y, attack, attack_steps, attack_amp)
            with torch.no_grad(), amp:
                counts[1] += (net(inference.preprocess(adv, spec)).argmax(1) == y).sum().item()
        counts[2] += len(y)
    counts = sum_across(counts.to(device)).cpu()
    if counts[2] == 0:
        return None, None
    return float(counts[0] / counts[2]), (float(counts[1] / counts[2]) if attack is not None else None)


def images_batch(images: data.Images, keys: list[tuple[int, bool]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) float in [0, 1] and (B,) labels on ``device``, read in this process."""
    items = [images[k] for k in keys]
    x = torch.stack([im for im, _ in items]).to(device).float().div_(255)
    return x, torch.tensor([label for _, label in items], device=device)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: only when tensorboard is installed
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _seed(seed: int, rank: int) -> None:
    torch.manual_seed((seed * 1_000_003 + 101 * (rank + 1)) % (2**62))


def train(cfg: Config, w: World | None = None, p: Plan | None = None) -> Result:
    """Run (or resume) ``cfg`` (its :func:`plan` ``p`` when worked out already);
    returns what was done. Only process 0 writes files."""
    w = w or world_from_env()
    p = p or plan(cfg, w.world)
    device = start(w)
    try:
        return _train(cfg, p, w, device)
    finally:
        stop()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _train(cfg: Config, p: Plan, w: World, device: torch.device) -> Result:
    out = Path(cfg.out)
    if w.main:
        with checkpoints.writing(out):
            out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                for f in [out / checkpoints.RESUME, out / "log.csv", *out.glob("step-*.pt")]:
                    f.unlink(missing_ok=True)
        if cfg.overwrite:
            checkpoints.unregister(cfg.run)
    _barrier()
    resume = checkpoints.read_resume(out, cfg.settings())
    start_step = int(resume["step"]) if resume else 0
    model = models.build_trained(p.base)
    if resume:
        model.load_state_dict(torch.load(checkpoints.checkpoint_path(out, start_step), map_location="cpu", weights_only=True))
    model = prepare_bn(model, cfg.bn, w, device).to(device, memory_format=torch.channels_last)
    net = model
    if w.world > 1:
        # buffers (running statistics) are the same everywhere with sync and frozen; local: process 0's win
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                        forward_sync_buffers=cfg.bn == "local")
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp, dtype = _autocast(device, cfg.precision)
    attack_amp = _attack_autocast(device, cfg.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    _seed(cfg.seed, w.rank)
    if resume:
        opt.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        states = resume.get("rng", [])
        if w.rank < len(states) and len(states) == w.world:  # another world size: fresh per-rank seeds
            torch.set_rng_state(states[w.rank]["cpu"])
            if device.type == "cuda" and "cuda" in states[w.rank]:
                torch.cuda.set_rng_state(states[w.rank]["cuda"], device)

    train_images, val_images = data.Images(p.train, p.base.input_size), data.Images(p.val, p.base.input_size)
    end = p.steps if cfg.stop_after is None else min(p.steps, start_step + cfg.stop_after)
    share = cfg.batch // w.world
    keys = (data.batch_keys(len(p.train), cfg.batch, s, cfg.seed, w.rank, w.world, cfg.flip) for s in range(start_step, end))
    workers = cfg.workers if cfg.workers is not None else (8 if device.type == "cuda" else 0)
    batches = data.loader(train_images, keys, workers)
    logf, writer = checkpoints.open_log(out, start_step) if w.main else (None, None)
    board = _tensorboard(out) if w.main else None
    bar = tqdm(total=p.steps, initial=start_step, unit="step", disable=not (w.main and cfg.progress), dynamic_ncols=True)
    result = Result(step=start_step, steps=p.steps, out=str(out))
    window = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images since the last checkpoint
    if resume and resume.get("window") is not None:  # resumed where --stop-after stopped between checkpoints
        window += resume["window"]
    # the state --stop-after wrote between checkpoints (not registered): removed once the next state is written
    stale = checkpoints.checkpoint_path(out, start_step) if resume and resume.get("entry") is None else None
    began = tick = time.perf_counter()  # tick: the end of the previous step, so the rate counts reading the batch
    try:
        for step, (x, y) in enumerate(batches, start=start_step):
            x, y = x.to(device, non_blocking=True).float().div_(255), y.to(device, non_blocking=True)
            if p.attack is not None and cfg.mode == "adversarial":
                x = _attacked(model, p.base, x, y, p.attack, cfg.attack_steps, attack_amp)
            set_train_mode(net, cfg.bn)
            with amp:
                logits = net(inference.preprocess(x, p.base))
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            stats = sum_across(torch.stack([loss.detach().double() * share, (logits.argmax(1) == y).sum().double(),
                                            torch.tensor(float(share), dtype=torch.float64, device=device)])).cpu()
            window += stats
            done = step + 1
            rate = cfg.batch / (time.perf_counter() - tick)
            row = {"step": done, "epoch": round(done / (len(p.train) // cfg.batch), 4), "loss": float(stats[0] / stats[2]),
                   "accuracy": float(stats[1] / stats[2]), "lr": opt.param_groups[0]["lr"], "images_per_s": round(rate, 2),
                   "seconds": round(time.perf_counter() - began, 3)}
            if done % p.every == 0 or done == p.steps:
                clean, robust = evaluate(model, val_images, p.base, p.attack, cfg.attack_steps, w, device, share, cfg.precision)
                row.update(clean_accuracy=clean, robust_accuracy=robust)
                name = checkpoints.write_state(cfg, p, w, model, opt, scaler, device, done, row, window)
                if name:
                    result.entries[name] = done
                    row["checkpoint"] = name
                    note = (f"step {done}: training loss {window[0] / window[2]:.4f}, accuracy {window[1] / window[2]:.3f}; "
                            f"held-out clean {_pct(clean)}, robust {_pct(robust)}; registered as {name}")
                    if cfg.progress:
                        bar.write(note)
                    else:
                        log.info(note)
                window.zero_()
            elif done == end:  # --stop-after between checkpoints: the state to resume from, not registered
                checkpoints.write_state(cfg, p, w, model, opt, scaler, device, done, row, window, registered=False)
            if (done % p.every == 0 or done == end) and stale is not None and w.main:
                stale.unlink(missing_ok=True)
                stale = None
            if writer is not None:
                writer.writerow(row)
                logf.flush()
            if board is not None:
                for k in ("loss", "accuracy", "images_per_s", "clean_accuracy", "robust_accuracy"):
                    if row.get(k) is not None:
                        board.add_scalar(f"finetune/{k}", row[k], done)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", img_s=f"{rate:.1f}")
            bar.update(1)
            result.step = done
            tick = time.perf_counter()  # after evaluation and checkpoints: they are not training time
    finally:
        bar.close()
        if logf is not None:
            logf.close()
        if board is not None:
            board.close()
    return result


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"

