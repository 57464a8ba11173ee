"""A tiny ImageFolder of our own renders, and a small model in a user registry, for tests/test_finetune.py.

Three classes, each folder named one of the three ways ``perturber finetune``
accepts: a WordNet ID (the dog: golden retriever), a class name (the cat:
tabby) and an ImageNet index (the truck: 867, trailer truck). Each object is
rendered by the real EGL renderer at 8 yaws x 2 backgrounds (white, meadow),
64 px: 48 PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
import yaml
from PIL import Image

from perturber.pipeline import scene
from perturber.pipeline.weights import sha256_of

#: folder name → (object, ImageNet index).
CLASSES = {"n02099601": ("dog", 207), "tabby": ("cat", 281), "867": ("truck", 867)}
YAWS = (-135, -90, -45, 0, 45, 90, 135, 180)
BACKGROUNDS = ("white", "meadow")
SIZE = 64


def render_folder(root: Path) -> Path:
    """Write the ImageFolder under ``root``; returns ``root``."""
    for folder, (obj, _) in CLASSES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for yaw in YAWS:
            for bg in BACKGROUNDS:
                rgba = scene.render({"object": obj, "yaw": yaw, "pitch": 15, "background": bg}, size=SIZE)
                Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(root / folder / f"{obj}_{bg}_{yaw:+04d}.png")
    return root


def small_model(folder: Path, seed: int = 0) -> Path:
    """A registry YAML with ``tiny``: torchvision's resnet18 (batch norm, no
    dropout), random weights (seeded) in a local file, 64 px input."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    weights = folder / "resnet18-random.pt"
    torch.save(net.state_dict(), weights)
    path = folder / "tiny-models.yaml"
    path.write_text(yaml.safe_dump({"tiny": {
        "architecture": "torchvision:resnet18", "weights": {"file": str(weights), "sha256": sha256_of(weights)},
        "input_size": SIZE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "layers": {"block4": "layer4"}, "description": "resnet18, random weights (tests)"}}))
    return path
