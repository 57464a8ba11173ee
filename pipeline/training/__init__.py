"""Fine-tuning registry models on an ImageFolder: ``perturber finetune``.

- :mod:`~perturber.pipeline.training.data`: the ImageFolder (class folders
  named by WordNet ID, ImageNet index or class name → the 1000 ImageNet
  indices), the held-out split, the seeded data order and the stylized mix;
- :mod:`~perturber.pipeline.training.distributed`: torchrun / DDP set-up,
  batch-norm statistics over the global batch on the CPU;
- :mod:`~perturber.pipeline.training.checkpoints`: checkpoint and resume
  files, registry entries;
- :mod:`~perturber.pipeline.training.loop`: the training loop (standard,
  adversarial with PGD in the loop, stylized) and held-out evaluation;
- :mod:`~perturber.pipeline.training.finetune_cli`: the command.

How to reproduce the paper's fine-tuning: ``docs/finetune.md``.
"""

from __future__ import annotations

from perturber.pipeline.errors import PerturberError

__all__ = ["TrainingError", "MODES"]

#: Fine-tuning modes: plain, PGD in the loop (Madry et al. 2018), stylized images (Geirhos et al. 2019).
MODES = ("adversarial", "standard", "stylized")


class TrainingError(PerturberError):
    """Fine-tuning cannot run as asked; the message is one line."""
