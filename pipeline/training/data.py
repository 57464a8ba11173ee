"""Training images: an ImageFolder mapped to ImageNet's 1000 classes, the
held-out split, and a data order that depends on the seed and the epoch only.

Folder layout (ImageNet's train/val): ``ROOT/<class>/<image>``. A class
folder's name is, in this order of trial:

1. a WordNet ID of ImageNet-1k (``n02085620``; ``data/classes/imagenet.txt``);
2. an ImageNet class index, 0-999 (``207``);
3. an exact ImageNet class name (``golden retriever``; torchvision's names,
   :func:`perturber.pipeline.classes.imagenet_categories`); a name two classes
   share (``crane``, ``maillot``) is refused as ambiguous.

Anything else is a one-line :class:`TrainingError`, as are a missing or empty
folder and a class folder without images. Images are read with PIL, made
RGB, resized (shorter side to the model's input size S, bilinear) and
centre-cropped to S × S: a sample is a (3, S, S) uint8 tensor; the loop
divides by 255 to get the [0, 1] images that :mod:`perturber.pipeline.attack`
and :func:`perturber.pipeline.inference.preprocess` work on.

The data order of epoch e is a permutation drawn from a generator seeded with
(seed, e), and so is each image's horizontal flip: step s of a run always
sees the same global batch, whatever the number of processes and however
often the run was resumed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image

from perturber.pipeline import classes
from perturber.pipeline.training import TrainingError

__all__ = ["Sample", "folder_class", "scan", "split", "epoch_order", "batch_keys", "Images", "EXTENSIONS"]

#: Image file suffixes read (case-insensitive), as torchvision's ImageFolder.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    """One training image: its file and its ImageNet-1k class index (0-999)."""

    path: str
    label: int


@functools.lru_cache(maxsize=1)
def _lookups() -> tuple[dict[str, int], dict[str, list[int]]]:
    wnids = {w: i for i, w in enumerate(classes.imagenet_wnids())}
    names: dict[str, list[int]] = {}
    for i, name in enumerate(classes.imagenet_categories()):
        names.setdefault(name, []).append(i)
    return wnids, names


def folder_class(name: str, where: str = "") -> int:
    """The ImageNet-1k index of a class folder's name (module docstring), or a one-line error."""
    wnids, names = _lookups()
    if name in wnids:
        return wnids[name]
    if name.isascii() and name.isdigit() and int(name) < 1000:
        return int(name)
    if name in names:
        if len(names[name]) > 1:
            raise TrainingError(f"class folder {name!r}{where}: the name of ImageNet classes "
                                f"{' and '.join(map(str, names[name]))}; name the folder by WordNet ID or index")
        return names[name][0]
    raise TrainingError(f"class folder {name!r}{where}: not an ImageNet WordNet ID (n01440764), class index (0-999) "
                        "or class name (golden retriever)")


def scan(root: str | Path, option: str = "--data") -> list[Sample]:
    """Every image under ``root``'s class folders, sorted by class folder and file
    name; hidden files and folders and files of other suffixes are skipped."""
    path = Path(root).expanduser()
    where = f"{option} {root}"
    if not path.exists():
        raise TrainingError(f"{where}: no such folder")
    if not path.is_dir():
        raise TrainingError(f"{where}: not a folder")
    try:
        folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise TrainingError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if not folders:
        raise TrainingError(f"{where}: has no class folders (ImageFolder layout: {root}/<class>/<image>)")
    samples: list[Sample] = []
    for folder in folders:
        label = folder_class(folder.name, f" in {root}")
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(folder).parts))
        if not files:
            raise TrainingError(f"{where}: class folder {folder.name!r} has no images ({', '.join(EXTENSIONS[:3])}, ...)")
        samples.extend(Sample(str(f), label) for f in files)
    return samples


def _generator(*seeds: int) -> torch.Generator:
    mixed = 0
    for s in seeds:
        mixed = (mixed * 1_000_003 + int(s)) % (2**62)
    return torch.Generator().manual_seed(mixed)


def split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, held out): per class, round(fraction · n) images, chosen by a
    generator seeded with ``seed``, are held out. The held-out list is
    interleaved in a seeded order, so its first N are a fair subset."""
    if fraction <= 0:
        return list(samples), []
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    held: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        k = int(fraction * len(members) + 0.5)
        order = torch.randperm(len(members), generator=_generator(seed, 7, label)).tolist()
        held.update(members[j] for j in order[:k])
    if not held:
        raise TrainingError(f"--val-fraction {fraction}: holds out no image (every class has too few); raise it or give --val")
    if len(held) == len(samples):
        raise TrainingError(f"--val-fraction {fraction}: holds out every image; lower it")
    val = sorted(held)
    val = [val[j] for j in torch.randperm(len(val), generator=_generator(seed, 11)).tolist()]
    return [s for i, s in enumerate(samples) if i not in held], [samples[i] for i in val]


@functools.lru_cache(maxsize=2)  # every step of an epoch asks again: one permutation per epoch, not per step
def epoch_order(n: int, seed: int, epoch: int) -> tuple[list[int], list[bool]]:
    """(the permutation of the n images for ``epoch``, whether each image is flipped)."""
    g = _generator(seed, 3, epoch)
    order = torch.randperm(n, generator=g).tolist()
    flips = (torch.rand(n, generator=g) < 0.5).tolist()
    return order, flips


def batch_keys(n: int, batch: int, step: int, seed: int, rank: int, world: int, flip: bool) -> list[tuple[int, bool]]:
    """This process's share of global batch ``step`` (0-based): (image index,
    flipped) pairs. An epoch is n // batch steps (the last partial batch is
    dropped, so every global batch has ``batch`` images); process ``rank`` of
    ``world`` takes the rank-th of ``world`` equal slices."""
    per_epoch = n // batch
    epoch, j = divmod(step, per_epoch)
    order, flips = epoch_order(n, seed, epoch)
    share = batch // world
    chosen = order[j * batch + rank * share : j * batch + (rank + 1) * share]
    return [(i, flip and flips[i]) for i in chosen]


class Images(torch.utils.data.Dataset):
    """Map-style dataset: key (index, flipped) → ((3, S, S) uint8 image, class index)."""

    def __init__(self, samples: Sequence[Sample], size: int):
        self.samples = list(samples)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flipped = key
        s = self.samples[index]
        try:
            with Image.open(s.path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = self.size / min(w, h)
                im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
                if flipped:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise TrainingError(f"{s.path}: not a readable image ({type(exc).__name__})") from None
        return x.view(self.size, self.size, 3).permute(2, 0, 1).contiguous(), s.label


def loader(images: Images, keys: Iterator[list[tuple[int, bool]]], workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (B, 3, S, S) uint8 and (B,) long for each list of keys, read by
    ``workers`` processes (0: in this one), in order. A reading process's
    TrainingError is re-raised as its own one line (torch's DataLoader wraps
    it in the worker's traceback)."""
    batches = iter(torch.utils.data.DataLoader(images, batch_sampler=keys, num_workers=workers,
                                               persistent_workers=False, pin_memory=torch.cuda.is_available()))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except TrainingError as exc:
            raise TrainingError(_original_message(str(exc))) from None
        yield batch


def _original_message(text: str) -> str:
    """The message of a TrainingError raised in a DataLoader worker: torch
    re-raises it as 'Caught TrainingError in DataLoader worker process N.
    Original Traceback ...', whose last line is 'perturber...TrainingError: MESSAGE'."""
    last = text.rstrip().splitlines()[-1] if text.strip() else text
    marker = "TrainingError: "
    return last.split(marker, 1)[1] if marker in last and "\n" in text else text
