"""ImageNet-9 (Xiao et al. 2020, the Backgrounds Challenge): read a user's IN-9 folder and evaluate models on it.

The test sets are released at github.com/MadryLab/backgrounds_challenge
(``backgrounds_challenge_data.tar.gz``), in this layout::

    <root>/<variant>/val/<class folder>/*.JPEG      e.g. bg_challenge/mixed_rand/val/00_dog/n02085620_1234.JPEG

with the variants ``original``, ``mixed_same``, ``mixed_rand``, ``only_fg``,
``no_fg`` (and, in the release, ``mixed_next``, ``only_bg_b``,
``only_bg_t``), each with the nine class folders :data:`CLASSES`; the
images are 224 × 224 RGB. A 1000-class ImageNet model's top-1 class is
mapped to IN-9 by :data:`IN_TO_IN9` (each IN-9 class covers a set of
ImageNet-1k index ranges; any other class maps to −1, never correct), as the
challenge's ``in9_eval.py`` does with ``in_to_in9.json``.

:func:`scan` checks the layout (one-line :class:`StudyError` naming what is
missing), :func:`evaluate` runs models on every image and returns whether
each was read correctly, :func:`table` turns that into accuracies with
bootstrap intervals over images and the BG-gap (mixed_same − mixed_rand).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import xarray as xr

from perturber.pipeline import inference, names
from perturber.pipeline.studies import StudyError
from perturber.pipeline.studies.bootstrap import bootstrap

__all__ = ["CLASSES", "VARIANTS", "IN_TO_IN9", "LOOKUP", "to_in9", "scan", "load_image", "evaluate", "table",
           "Folder"]

#: The nine class folders, in label order (the order torchvision's ImageFolder gives them; two names hold a space).
CLASSES = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
           "06_musical instrument", "07_primate", "08_fish")
#: Variants of the release, in the paper's order; the first five are the ones the study is about.
VARIANTS = ("original", "mixed_same", "mixed_rand", "only_fg", "no_fg", "mixed_next", "only_bg_b", "only_bg_t")
#: Image file suffixes read (case-insensitive).
SUFFIXES = (".jpeg", ".jpg", ".png")
#: Side of the challenge's images; other sizes are resized (shorter side 256) and centre-cropped to it.
SIDE = 224
#: Images per model call.
BATCH = 64

#: IN-9 label → the ImageNet-1k index ranges (first, last, inclusive) that map to it. Source: ``in_to_in9.json``
#: of github.com/MadryLab/backgrounds_challenge at commit 46d224bb02a296681eddbae44a49da9abb5ba038
#: (sha256 5b72ab44c804129744f5dff9372d8048c3b85da38d48385d73686ee0b0e7b638), compressed into runs; the
#: other 630 classes map to −1. Note that the domestic cats (281–285) and two dog breeds (171 Italian
#: greyhound, 172 whippet) map to −1.
IN_TO_IN9: dict[int, tuple[tuple[int, int], ...]] = {
    0: ((151, 170), (173, 268)),
    1: ((7, 24), (87, 100), (127, 146)),
    2: ((407, 408), (428, 428), (436, 436), (444, 444), (468, 468), (511, 511), (547, 547), (555, 555),
        (561, 561), (565, 565), (569, 569), (573, 573), (586, 586), (603, 603), (609, 609), (612, 612),
        (627, 627), (656, 656), (661, 661), (665, 665), (670, 671), (675, 675), (690, 690), (705, 705),
        (717, 717), (734, 734), (751, 751), (757, 757), (791, 791), (802, 803), (817, 817), (820, 820),
        (829, 829), (847, 847), (864, 864), (866, 867), (870, 870), (880, 880)),
    3: ((33, 68),),
    4: ((269, 280), (286, 299), (356, 362), (387, 388)),
    5: ((300, 326),),
    6: ((401, 402), (420, 420), (432, 432), (486, 486), (494, 494), (513, 513), (541, 541), (546, 546),
        (558, 558), (566, 566), (577, 577), (579, 579), (593, 594), (641, 642), (683, 684), (687, 687),
        (699, 699), (776, 776), (822, 822), (875, 875), (881, 881), (889, 889)),
    7: ((365, 384),),
    8: ((0, 6), (389, 397)),
}


def _lookup() -> np.ndarray:
    table = np.full(1000, -1, dtype=np.int64)
    for label, ranges in IN_TO_IN9.items():
        for first, last in ranges:
            table[first:last + 1] = label
    return table


#: (1000,) int: the IN-9 label of each ImageNet-1k class, −1 for none.
LOOKUP = _lookup()


def to_in9(top1: np.ndarray) -> np.ndarray:
    """ImageNet-1k class indices (any shape, int) → IN-9 labels 0..8, −1 for classes outside IN-9."""
    return LOOKUP[np.asarray(top1, dtype=np.int64)]


@dataclass(frozen=True)
class Folder:
    """One variant's images: ``paths`` and their IN-9 ``labels`` (int), sorted by class then name."""

    variant: str
    paths: tuple[Path, ...]
    labels: tuple[int, ...]


def scan(root: str | Path, limit: int | None = None) -> list[Folder]:
    """The variants present under ``root`` (in :data:`VARIANTS` order), each checked:
    ``<root>/<variant>/val/`` holds the nine class folders, each with at least one image.
    ``limit``: at most this many images per class (the first by name). A
    missing root, no variant, or a variant missing a class folder or images
    is a one-line :class:`StudyError` naming it."""
    base = Path(str(root)).expanduser()
    if not base.is_dir():
        raise StudyError(f"in9: {base} is not a folder (expected the IN-9 test data, "
                         f"<root>/<variant>/val/<class>/*.JPEG, from github.com/MadryLab/backgrounds_challenge releases)")
    present = [v for v in VARIANTS if (base / v).is_dir()]
    if not present:
        raise StudyError(f"in9: {base} holds none of the IN-9 variant folders ({', '.join(VARIANTS[:5])})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise StudyError(f"in9_limit must be a whole number >= 1, got {limit!r}")
    folders = []
    for variant in present:
        val = base / variant / "val"
        if not val.is_dir():
            raise StudyError(f"in9: {val} is missing (each variant holds its images in val/<class>/)")
        paths, labels = [], []
        for label, name in enumerate(CLASSES):
            folder = val / name
            if not folder.is_dir():
                raise StudyError(f"in9: the class folder {folder} is missing (IN-9 has {', '.join(CLASSES)})")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
            if not files:
                raise StudyError(f"in9: {folder} holds no images (*.JPEG)")
            files = files[: int(limit)] if limit is not None else files
            paths += files
            labels += [label] * len(files)
        folders.append(Folder(variant, tuple(paths), tuple(labels)))
    return folders


def load_image(path: Path) -> np.ndarray:
    """(224, 224, 3) uint8 RGB: the file as the challenge feeds it (its images are 224 × 224 and
    used as they are); another size is resized (shorter side 256, bilinear) and centre-cropped to 224."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (SIDE, SIDE):
                w, h = im.size
                scale = 256 / min(w, h)
                im = im.resize((max(SIDE, round(w * scale)), max(SIDE, round(h * scale))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - SIDE) // 2, (h - SIDE) // 2
                im = im.crop((left, top, left + SIDE, top + SIDE))
            return np.asarray(im, dtype=np.uint8)
    except OSError as exc:
        raise StudyError(f"in9: cannot read the image {path} ({exc})") from None


def _predict(images: np.ndarray, models: Sequence[str]) -> dict[str, np.ndarray]:
    """(B, 224, 224, 3) uint8 → model → (B,) top-1 ImageNet-1k class."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    out = inference.run_models(x, list(models), batch_size=BATCH)
    return {m: o.logits.argmax(1).numpy() for m, o in out.items()}


def evaluate(folders: Sequence[Folder], models: Sequence[str],
             predict: Callable[[np.ndarray, Sequence[str]], dict[str, np.ndarray]] = _predict) -> xr.Dataset:
    """Every image of every folder through every model.

    Returns a Dataset over ``image`` (all variants' images, concatenated) and
    ``model``: ``correct`` (image, model) 1.0 when the top-1 class maps to
    the image's IN-9 label, else 0.0; ``top1`` (image, model) the ImageNet-1k
    class; coordinates ``variant``, ``label`` and ``key`` (``<class>/<file
    name>``: the same foreground across variants) along ``image``.
    ``predict``: (B, 224, 224, 3) uint8, models → model → (B,) top-1 classes.
    """
    paths = [p for f in folders for p in f.paths]
    labels = np.array([lab for f in folders for lab in f.labels], dtype=np.int64)
    variants = [f.variant for f in folders for _ in f.paths]
    top1 = {m: np.empty(len(paths), dtype=np.int64) for m in models}
    for start in range(0, len(paths), BATCH):
        batch = np.stack([load_image(p) for p in paths[start:start + BATCH]])
        for m, classes in predict(batch, models).items():
            top1[m][start:start + len(batch)] = classes
    stacked = np.stack([top1[m] for m in models], axis=1) if models else np.empty((len(paths), 0), np.int64)
    correct = (to_in9(stacked) == labels[:, None]).astype(np.float32)
    coords = {"variant": ("image", np.array(variants, dtype=object)), "label": ("image", labels),
              "key": ("image", np.array([f"{p.parent.name}/{p.stem}" for p in paths], dtype=object)),
              names.MODEL: np.array(list(models), dtype=object)}
    return xr.Dataset({"correct": (("image", names.MODEL), correct), "top1": (("image", names.MODEL), stacked)},
                      coords=coords)


def _chance(labels: np.ndarray) -> tuple[float, float]:
    """(best constant classifier, uniformly random top-1 over 1000) accuracy for these labels."""
    share = np.bincount(labels, minlength=len(CLASSES)) / max(len(labels), 1)
    coverage = np.bincount(LOOKUP[LOOKUP >= 0], minlength=len(CLASSES)) / 1000
    return float(share.max()), float((share * coverage).sum())


def table(per_image: xr.Dataset) -> xr.Dataset:
    """Accuracy per variant and model with 95 % bootstrap intervals over images, and the BG-gap.

    Rows (dim ``condition``): ``in9_<variant>`` for each variant present, and
    ``in9_bg_gap`` (accuracy on mixed_same − accuracy on mixed_rand; its
    interval resamples foregrounds, the ``key`` both variants share, so the two
    accuracies move together) when both are present. Variables: ``accuracy``
    (+ ``_lo``/``_hi``), ``chance`` (best constant classifier: the largest
    class share), ``chance_random`` (uniformly random top-1 among 1000 mapped
    to IN-9), ``units`` (images or foregrounds resampled).
    """
    rows = []
    for variant in [v for v in VARIANTS if v in set(per_image["variant"].values)]:
        sub = per_image.correct.where(per_image["variant"] == variant, drop=True).reset_coords(drop=True)
        t = bootstrap(sub.rename("accuracy"), unit="image")
        labels = per_image["label"].values[per_image["variant"].values == variant]
        const, rand = _chance(labels)
        rows.append(t.expand_dims(condition=[f"in9_{variant}"]).assign(
            chance=("condition", [const]), chance_random=("condition", [rand]), units=("condition", [sub.sizes["image"]])))
    found = set(per_image["variant"].values)
    if {"mixed_same", "mixed_rand"} <= found:
        pair = [per_image.correct.where(per_image["variant"] == v, drop=True).set_index(image="key")
                .reset_coords(drop=True) for v in ("mixed_same", "mixed_rand")]
        keys = sorted(set(pair[0]["image"].values) | set(pair[1]["image"].values))
        both = xr.Dataset({"same": pair[0].reindex(image=keys), "rand": pair[1].reindex(image=keys)}).drop_vars("image")
        gap = bootstrap(both, unit="image", statistic=lambda d: (d.same.mean("image") - d.rand.mean("image")).rename("accuracy"))
        rows.append(gap.expand_dims(condition=["in9_bg_gap"]).assign(
            chance=("condition", [0.0]), chance_random=("condition", [0.0]), units=("condition", [len(keys)])))
    out = xr.concat(rows, dim="condition", combine_attrs="drop")
    out.attrs.update({"in9_bootstrap_unit": "image (the BG-gap: foreground, the file both mixed variants share)",
                      "in9_images": int(per_image.sizes["image"])})
    return out
