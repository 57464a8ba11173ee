"""Processes of a fine-tuning run: torchrun / DistributedDataParallel set-up,
and batch-norm statistics over the global batch.

A run is one process, or ``world`` processes started by torchrun
(``torch.distributed.run``), which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous. The backend is NCCL on GPUs (one GPU per
process: ``cuda:LOCAL_RANK``) and gloo on the CPU.

Batch norm under DDP. In train mode a BatchNorm layer normalises with the
statistics of the batch it sees; under DDP that is each process's slice, not
the global batch, so a DDP run is not the one-process run with the same
global batch. ``torch.nn.SyncBatchNorm`` computes global statistics, but in
torch 2.14 it refuses CPU tensors ("SyncBatchNorm expected input tensor to be
on GPU ..."; checked with two gloo processes). So ``--bn`` chooses:

- ``sync`` (default): statistics over the global batch: torch's SyncBatchNorm
  on GPUs (timm's SyncBatchNormAct for timm's BatchNormAct2d, which applies
  the layer's activation after normalising: torch's converter would drop it),
  :class:`GlobalBatchNorm` and its kin (below: two all-reduces per layer,
  differentiable) on the CPU. Running statistics are updated with the global
  batch's, as one process would. One process: plain batch norm. Other
  subclasses of batch norm are refused (their extra behaviour would be lost).
- ``frozen``: batch-norm layers stay in eval mode while training: the
  pretrained running statistics normalise, and are not updated; the affine
  weights (γ, β) still train. Needs no communication; the same in any world size.
- ``local``: each process's own batch statistics (what plain DDP does);
  process 0's running statistics are broadcast at each forward pass. Not
  equivalent to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from perturber.pipeline.training import TrainingError

__all__ = ["World", "world_from_env", "start", "stop", "GlobalBatchNorm", "GlobalBatchNorm1d", "GlobalBatchNorm3d",
           "GlobalBatchNormAct2d", "prepare_bn", "set_train_mode", "sum_across", "BN_MODES"]

BN_MODES = ("sync", "frozen", "local")


@dataclass(frozen=True)
class World:
    """This process's place: rank of world processes; local_rank picks its GPU."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Process 0 writes checkpoints, the registry and the logs."""
        return self.rank == 0


def world_from_env() -> World:
    """The place torchrun gave this process (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), else one process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise TrainingError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (set by torchrun)") from None


def start(w: World) -> torch.device:
    """Join the process group (world > 1) and return this process's device."""
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{w.local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if w.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=w.rank, world_size=w.world)
    return device


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over all processes (``t`` itself with one); not differentiable."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


class _SumAcross(torch.autograd.Function):
    """all-reduce (sum) whose gradient is the all-reduced gradient: each process's
    input feeds every process's output, so each receives the sum of the
    gradients. (torch.distributed.nn.functional.all_reduce does this too, but
    is deprecated in torch 2.14.)"""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _Global:
    """Train-mode statistics of the global batch across processes (mean, then
    the mean squared deviation from it: two all-reduces, differentiable), over
    every dimension but the channels'; in eval mode, or in one process, the
    plain batch-norm layer it is mixed into."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = (0, *range(2, x.ndim))
        shape = (1, c) + (1,) * (x.ndim - 2)
        xf = x.float()
        count = _SumAcross.apply(torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device))
        mean = _SumAcross.apply(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = _SumAcross.apply(centred.square().sum(dims)) / count  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1.0)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalBatchNorm(_Global, torch.nn.BatchNorm2d):
    """BatchNorm2d with the global batch's statistics (:class:`_Global`), for the
    CPU where SyncBatchNorm refuses to run. Same state dict keys as BatchNorm2d."""


class GlobalBatchNorm1d(_Global, torch.nn.BatchNorm1d):
    """BatchNorm1d with the global batch's statistics."""


class GlobalBatchNorm3d(_Global, torch.nn.BatchNorm3d):
    """BatchNorm3d with the global batch's statistics."""


class GlobalBatchNormAct2d(GlobalBatchNorm):
    """timm's BatchNormAct2d (batch norm, then its ``drop`` and ``act`` children)
    with the global batch's statistics; the same children, so the same state dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


_GLOBAL = {torch.nn.BatchNorm1d: GlobalBatchNorm1d, torch.nn.BatchNorm2d: GlobalBatchNorm, torch.nn.BatchNorm3d: GlobalBatchNorm3d}


def _is_timm_bn_act(module: torch.nn.Module) -> bool:
    """Exactly timm's BatchNormAct2d (checked without importing timm, which takes seconds)."""
    t = type(module)
    return t.__name__ == "BatchNormAct2d" and t.__module__.startswith("timm.")


def _check_bn_types(model: torch.nn.Module) -> bool:
    """Refuse batch-norm layers ``--bn sync`` cannot convert faithfully (subclasses
    other than timm's BatchNormAct2d); whether there is a BatchNormAct2d."""
    timm_layers = False
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or type(m) in _GLOBAL:
            continue
        if _is_timm_bn_act(m):
            timm_layers = True
            continue
        raise TrainingError(f"--bn sync: layer {name or 'the network'} is a {type(m).__module__}.{type(m).__name__}, "
                            "a batch-norm subclass global statistics would drop the behaviour of; "
                            "use --bn frozen or --bn local")
    return timm_layers


def _to_global(module: torch.nn.Module) -> torch.nn.Module:
    kind = GlobalBatchNormAct2d if _is_timm_bn_act(module) else _GLOBAL.get(type(module))
    if kind is not None:
        out = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if kind is GlobalBatchNormAct2d:
            out.drop, out.act = module.drop, module.act
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, _to_global(child))
    return module


def prepare_bn(model: torch.nn.Module, bn: str, w: World, device: torch.device) -> torch.nn.Module:
    """Convert ``model``'s batch-norm layers for ``bn`` (module docstring) when
    world > 1: torch's SyncBatchNorm on GPUs (timm's converter when the network
    has timm's BatchNormAct2d, which keeps their activations), the Global*
    layers above on the CPU. Other batch-norm subclasses are refused."""
    if bn not in BN_MODES:
        raise TrainingError(f"--bn {bn}: choose {', '.join(BN_MODES)}")
    if bn != "sync" or w.world == 1:
        return model
    timm_layers = _check_bn_types(model)
    if device.type == "cuda":
        if timm_layers:
            from timm.layers import convert_sync_batchnorm  # lazily: timm takes seconds to import

            return convert_sync_batchnorm(model)
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global(model)


def set_train_mode(model: torch.nn.Module, bn: str) -> None:
    """Train mode for a training step; batch-norm layers stay in eval mode with ``--bn frozen``."""
    model.train()
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
