"""Running registry models on images: preprocessing, activations, batch sizes.

:func:`run_models` is the one place that runs every model of a list on a
batch; the evaluate() engine, attacks, the store's layout and feature
visualisation all go through it (or through :func:`preprocess` and
:func:`capture` when they need gradients).

Activations are captured by module path with forward hooks that copy the
output (an in-place ReLU after the hooked module would otherwise overwrite
it); a module that runs several times per forward pass is addressed as
``path@k``.

Precision (:data:`PRECISIONS`, from exact to fast): ``float32`` (the default
memory layout), ``channels_last`` (float32, NHWC; the default everywhere, as
models load), ``bf16`` and ``fp16`` (bfloat16 or float16 autocast, NHWC).
Which one a model may use on a GPU is decided by :mod:`perturber.pipeline.devices`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from perturber.pipeline import atomic, config, models
from perturber.pipeline.errors import one_line
from perturber.pipeline.pools import torch_threads

__all__ = ["preprocess", "capture", "Outputs", "run_models", "layer_shapes", "tuned_batch_size", "batch_rates",
           "batch_sizes", "classify", "network", "precision_context", "PRECISIONS", "DEFAULT_PRECISION", "compiled_models"]

#: The precisions a model can run in, from exact to fast (module docstring);
#: bf16 and fp16 are equally fast on a GPU, and fp16 keeps 3 more bits of mantissa.
PRECISIONS = ("float32", "channels_last", "bf16", "fp16")
#: What every model runs in unless told otherwise (models load in channels_last).
DEFAULT_PRECISION = "channels_last"


def preprocess(images: torch.Tensor, s: models.ModelSpec, resize: bool = True) -> torch.Tensor:
    """RGB (B, 3, H, W) in [0, 1] → the model's input: resized to ``input_size``
    (bilinear, antialiased; unless ``resize`` is False, as feature visualisation
    does: the network sees the optimised image at its own size) and normalised
    with its mean and std."""
    x = images
    if resize and (x.shape[-1] != s.input_size or x.shape[-2] != s.input_size):
        x = torch.nn.functional.interpolate(x, size=(s.input_size, s.input_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(s.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(s.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def capture(model: torch.nn.Module, paths: Sequence[str], detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of modules ``paths`` during forward passes in the block.

    Yields a dict path → tensor, filled by each forward pass that this thread
    runs (another thread may run the same model at the same time). The tensor
    is a copy (an in-place op later in the network cannot change it). A module
    that runs several times per pass must be named ``path@k`` (k-th call, from 0).
    """
    if not paths:  # nothing to record: no hooks (torch.compile then traces the model whole)
        yield {}
        return
    modules = dict(model.named_modules())
    wanted: dict[str, dict[int | None, str]] = {}
    for p in paths:
        base, _, index = p.partition("@")
        if base not in modules:
            raise models.ModelError(f"no layer {base!r} in this model")
        if index and not index.isdigit():
            raise models.ModelError(f"layer {p!r}: the call index after @ must be a number")
        wanted.setdefault(base, {})[int(index) if index else None] = p
    out: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []

    owner = threading.get_ident()

    def mine() -> bool:
        # Inside torch.compile the check is left out: tracing threading.get_ident would split the
        # graph (and let another instance of the model reuse the pieces), so a compiled model's
        # captures are for one thread at a time.
        return torch.compiler.is_compiling() or threading.get_ident() == owner

    def hook_for(base: str):
        def hook(module, inputs, output):
            if not mine():
                return
            k = calls.get(base, 0)
            calls[base] = k + 1
            t = output.detach() if detach else output
            for index, name in wanted[base].items():
                if index is None and k == 1:
                    raise models.ModelError(f"layer {base!r} runs more than once per forward pass; name a call as {base}@0, {base}@1, ...")
                if index is None or index == k:
                    out[name] = t.clone()

        return hook

    for base in wanted:
        handles.append(modules[base].register_forward_hook(hook_for(base)))
    pre = model.register_forward_pre_hook(lambda *_: calls.clear() if mine() else None)
    try:
        yield out
    finally:
        pre.remove()
        for h in handles:
            h.remove()


_CONTIGUOUS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # channels_last model → a float32 copy in NCHW
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # eager model → torch.compile(model)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise models.ModelError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")


def network(name: str, device: str | torch.device, precision: str = DEFAULT_PRECISION,
            compile: bool = False) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.nn.Module]:
    """(what to call, the module whose layers :func:`capture` hooks) for model
    ``name`` on ``device`` in ``precision``.

    ``float32`` uses a copy of the model in the default (NCHW) layout, made once
    per loaded model. ``compile``: the model through :func:`torch.compile`
    (inductor), made once per loaded model and layout; it compiles on its first
    call (and again for a new batch size). The hooks go on the eager module,
    which the compiled one traces.
    """
    _check_precision(precision)
    net = models.load_model(name, device)
    if precision == "float32":
        if net not in _CONTIGUOUS:
            _CONTIGUOUS[net] = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
        net = _CONTIGUOUS[net]
    if not compile:
        return net, net
    if net not in _COMPILED:
        _COMPILED[net] = torch.compile(net)
    return _COMPILED[net], net


def compiled_models() -> list[torch.nn.Module]:
    """The eager models compiled in this process so far (:func:`network` with ``compile``)."""
    return list(_COMPILED.keys())


def precision_context(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The autocast of ``precision`` on ``device`` (bf16, fp16: bfloat16, float16 autocast; else none)."""
    _check_precision(precision)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return contextlib.nullcontext() if half is None else torch.autocast(torch.device(device).type, dtype=half)


def _layout(x: torch.Tensor, precision: str) -> torch.Tensor:
    """``x`` (B, 3, H, W) in the memory layout of ``precision``."""
    return x.contiguous() if precision == "float32" else x.contiguous(memory_format=torch.channels_last)


def _compile_error(name: str, exc: Exception) -> models.ModelError:
    """torch.compile failed (no C compiler for the CPU, no Triton for a GPU, an op it cannot trace): one line."""
    return models.ModelError(f"{name}: torch.compile failed ({one_line(exc, typed=True)}); run without --compile")


@torch.no_grad()
def classify(model: torch.nn.Module, images: np.ndarray, size: int = 224) -> torch.Tensor:
    """Softmax probabilities (B, 1000) for uint8 RGB(A) images (B, H, W, C) and an
    ImageNet-normalised model of input side ``size``. Alpha is dropped."""
    x = torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2).float() / 255.0
    s = models.ModelSpec("", "", {}, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    device = next(model.parameters()).device
    return model(preprocess(x.to(device), s)).softmax(dim=1).cpu()


@dataclass
class Outputs:
    """One model's outputs for B images, on the CPU: ``logits`` (B, 1000)
    float32; ``activations`` layer → (B, N, h, w) float32, the neurons
    (channels) ``neurons[layer]`` of each layer asked for, in that order."""

    logits: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    neurons: dict[str, list[int]] = field(default_factory=dict)


def _per_model(value, name: str):
    """``value`` for model ``name``: one value for all models, or a mapping model → value."""
    return value.get(name) if isinstance(value, Mapping) else value


def batch_sizes(names: Sequence[str], device: str | torch.device, batch_size: int | Mapping[str, int] | None = None,
                precision: str | Mapping[str, str] | None = None) -> dict[str, int]:
    """model → the batch size :func:`run_models` uses: ``batch_size`` (one for all
    or per model), else the model's measured best (:func:`tuned_batch_size`)."""
    return {name: int(_per_model(batch_size, name) or tuned_batch_size(
        name, str(device), precision=_per_model(precision, name) or DEFAULT_PRECISION)) for name in names}


def run_models(images: torch.Tensor, names: Sequence[str], layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
               neurons: Mapping[str, Sequence[int]] | None = None, device: str | torch.device | None = None,
               batch_size: int | Mapping[str, int] | None = None, precision: str | Mapping[str, str] | None = None,
               compile: bool = False) -> dict[str, Outputs]:
    """Every model of ``names`` on the same images: model → :class:`Outputs`.

    images (B, 3, H, W) float RGB in [0, 1]; each model resizes them to its own
    input size. ``layers``: friendly layer names (or module paths) to record,
    the same for every model or per model; ``neurons``: layer → channel indices
    to keep (default: all). Runs on ``device`` (default: CUDA when available)
    in batches of ``batch_size`` (one for all models or per model; default:
    each model's measured best, :func:`tuned_batch_size`), in ``precision`` (one
    of :data:`PRECISIONS` for all or per model; default ``channels_last``),
    through :func:`torch.compile` when ``compile``. Gradients are off.
    """
    device = torch.device(device) if device is not None else models.best_device()
    images = images.to(device)
    steps = batch_sizes(names, device, batch_size, precision)
    out: dict[str, Outputs] = {}
    for name in names:
        s = models.spec(name)
        wanted = list(layers.get(name, ()) if isinstance(layers, Mapping) else (layers or ()))
        paths = [s.layer_path(layer) for layer in wanted]
        chosen_precision = _per_model(precision, name) or DEFAULT_PRECISION
        call, net = network(name, device, chosen_precision, compile)
        step = steps[name]
        logits, acts = [], {layer: [] for layer in wanted}
        with torch.no_grad(), capture(net, paths) as captured, precision_context(chosen_precision, device):
            for start in range(0, len(images), step):
                x = _layout(preprocess(images[start : start + step].float(), s), chosen_precision)
                logits.append(_forward(call, x, name, compile).float())
                for layer, path in zip(wanted, paths):
                    acts[layer].append(_chosen(captured[path], (neurons or {}).get(layer), name, layer))
        activations = {layer: torch.cat(v) for layer, v in acts.items()}
        out[name] = Outputs(
            logits=torch.cat(logits).cpu(),
            activations=activations,
            neurons={layer: list((neurons or {}).get(layer) or range(a.shape[1])) for layer, a in activations.items()},
        )
    return out


def _forward(call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, name: str, compiled: bool) -> torch.Tensor:
    if not compiled:
        return call(x)
    try:
        return call(x)
    except models.ModelError:
        raise
    except Exception as exc:  # torch._dynamo's BackendCompilerFailed, InductorError, a missing compiler...
        raise _compile_error(name, exc) from exc


def _chosen(a: torch.Tensor, chosen: Sequence[int] | None, model: str, layer: str) -> torch.Tensor:
    """The channels ``chosen`` (default: all) of an activation map, as float32 on the CPU."""
    if a.ndim != 4:
        raise models.ModelError(f"layer {layer!r} of {model} gives {a.ndim}-D output, not a map")
    if chosen is not None:
        if max(chosen, default=-1) >= a.shape[1] or min(chosen, default=0) < 0:
            raise models.ModelError(f"layer {layer!r} of {model} has {a.shape[1]} channels; neuron out of range")
        a = a[:, list(chosen)]
    return a.float().cpu()


def layer_shapes(name: str, layers: Sequence[str], size: int = 224) -> dict[str, tuple[int, int, int]]:
    """layer → (channels, rows, columns) of ``name``'s activation maps, from one
    forward pass of a black image of side ``size`` on the CPU."""
    outputs = run_models(torch.zeros(1, 3, size, size), [name], layers=list(layers), device="cpu", batch_size=1)[name]
    return {layer: tuple(a.shape[1:]) for layer, a in outputs.activations.items()}


#: The batch sizes :func:`tuned_batch_size` tries, per device type: a CPU is
#: fastest at small batches (activations stay in cache), a GPU needs large ones.
CANDIDATES = {"cpu": (1, 2, 4, 8, 16), "cuda": (16, 32, 64, 128, 256)}


def device_label(device: str | torch.device, threads: int | None = None) -> str:
    """The device as its results depend on it: the GPU's name, or the CPU and its
    torch threads (``threads``, default this process's)."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu-{threads or torch.get_num_threads()}threads"


#: Interleaved passes over every candidate when tuning: each size keeps its best
#: pass, so a busy moment on a shared machine falls on every size, not on one.
TUNING_ROUNDS = 3


def tuned_batch_size(name: str, device: str, candidates: tuple[int, ...] | None = None,
                     precision: str = DEFAULT_PRECISION, threads: int | None = None) -> int:
    """The fastest batch size for model ``name`` on ``device`` in ``precision``, measured once.

    The best batch size is a property of the machine, not of the model
    (EfficientNet-Lite0 on a 2-core CPU: 92 images/s at batch 4, 34 at 32);
    the result is cached on disk (in ``PERTURBER_CACHE``) per model, device,
    thread count and precision, with the rates it was chosen from.
    ``candidates``: default :data:`CANDIDATES` of the device's type (a GPU up
    to 256). ``threads``: the torch CPU threads the model will run on (a
    Dask worker's share of the cores; default this process's), set while
    measuring. Each candidate is timed :data:`TUNING_ROUNDS` times, interleaved.
    """
    _check_precision(precision)
    dev = torch.device(device)
    candidates = tuple(candidates or CANDIDATES.get(dev.type, CANDIDATES["cpu"]))
    threads = None if dev.type == "cuda" else (threads or torch.get_num_threads())
    return _tuned_batch_size(name, str(dev), device_label(dev, threads), candidates, precision, config.cache_dir(), threads)


@functools.lru_cache(maxsize=16)
def _tuned_batch_size(name: str, device: str, label: str, candidates: tuple[int, ...], precision: str, cache: Path,
                      threads: int | None) -> int:
    path = cache / "batch-sizes.json"
    key = (f"{name}|{label}" + ("" if precision == DEFAULT_PRECISION else f"|{precision}")
           + ("" if candidates == CANDIDATES["cpu"] else "|" + ",".join(map(str, candidates))))
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict) and known[key].get("rounds") == TUNING_ROUNDS:
        return int(known[key]["batch"])  # a bare number was measured in one pass, which load could skew: measured again
    with torch_threads(threads):
        rates = batch_rates(name, torch.device(device), candidates, precision)
    best = max(candidates, key=lambda bs: rates[bs])
    try:
        known = json.loads(path.read_text())  # another process may have added its own since
    except (OSError, ValueError):
        known = {}
    known[key] = {"batch": best, "rounds": TUNING_ROUNDS, "images_per_s": {str(bs): round(r, 1) for bs, r in rates.items()}}
    with atomic.replacing(path, "w") as f:
        f.write(json.dumps(known, indent=1, sort_keys=True))
    return best


@torch.no_grad()
def batch_rates(name: str, dev: torch.device, candidates: tuple[int, ...], precision: str = DEFAULT_PRECISION) -> dict[int, float]:
    """Batch size → the best images/s of :data:`TUNING_ROUNDS` interleaved passes over as many images as the largest batch."""
    s = models.spec(name)
    net, _ = network(name, dev, precision)
    n = max(candidates)
    x = _layout(preprocess(torch.rand(n, 3, s.input_size, s.input_size, device=dev), s), precision)
    rates = dict.fromkeys(candidates, 0.0)
    with precision_context(precision, dev):
        for bs in candidates:
            net(x[:bs])  # warm-up
        for _ in range(TUNING_ROUNDS):
            for bs in candidates:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
                for i in range(0, n, bs):
                    net(x[i : i + bs])
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                rates[bs] = max(rates[bs], n / (time.perf_counter() - start))
    return rates
