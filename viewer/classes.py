"""Classes by name: the viewer's searchable class field, and an example image of a class.

- :class:`ClassChoice`: a parameter whose value stays plain (what a URL holds):
  an ImageNet-1k index 0..999, a class set's name (``"@dogs"``, where the view
  can use a set) or one special word (the landscape's :data:`TOP`, PGD's
  :data:`UNTARGETED`);
- :class:`ClassField`: a text field over the 1000 names shown with their index
  ("golden retriever (207)"), the class sets ("any dog breed (@dogs)") and the
  special choice, searched case-insensitively anywhere in the label; typed text
  that names nothing gets one line under the field;
- :func:`example`: the first image (by file name) of a class in an ImageNet
  validation folder (:func:`set_example_folder`) as a thumbnail. Layouts: class
  folders ``DIR/<wnid>/*.JPEG`` (the training layout, and the validation images
  sorted into class folders), or the flat validation folder with Kaggle's
  ``LOC_val_solution.csv`` in ``DIR`` (images in ``DIR`` or
  ``DIR/ILSVRC/Data/CLS-LOC/val``). The devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` numbers classes by the devkit's own
  IDs (meta.mat), so it is not read.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import logging
import os
import warnings
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import panel as pn
import param
from PIL import Image

from perturber.pipeline import classes
from perturber.pipeline.errors import PerturberError
from perturber.viewer import html

__all__ = ["TOP", "UNTARGETED", "SET_LABELS", "ClassChoice", "ClassField", "UnknownClassText", "ExampleFolderError",
           "parse", "label", "indices", "set_example_folder", "example_folder", "example", "Example"]

log = logging.getLogger(__name__)

TOP = "top"  #: the landscape's class: the left model's top class at the current point
UNTARGETED = "none"  #: PGD without a target: push the original prediction down
SPECIAL_LABELS = {TOP: "top class here", UNTARGETED: "untargeted (suppress the prediction)"}
#: What the catalogue's class sets (:data:`perturber.pipeline.classes.CLASS_SETS`) are called on the page.
SET_LABELS = {"@dogs": "any dog breed", "@cats": "any cat"}
THUMBNAIL = 64  # px, the longer side of an example image
MAX_BYTES = 64 << 20  # an example file larger than this is not decoded


class UnknownClassText(PerturberError):
    """Text in a class field that names no class, set or choice of the field."""


class ExampleFolderError(PerturberError):
    """A folder of example images the viewer cannot use."""


# ------------------------------------------------------------------ values and their labels

def _set_label(name: str) -> str:
    return f"{SET_LABELS.get(name, name)} ({name})"


def label(value: Any) -> str:
    """What a field shows for a value: ``golden retriever (207)``, ``any dog breed (@dogs)``, ``top class here``."""
    if isinstance(value, str):
        return SPECIAL_LABELS.get(value) or _set_label(value)
    return f"{classes.imagenet_categories()[int(value)]} ({int(value)})"


def valid(value: Any, special: tuple[str, ...] = (), sets: bool = False) -> bool:
    """Whether ``value`` is an index 0..999, a class set (``sets``) or one of ``special``."""
    if isinstance(value, str):
        return value in special or (sets and value in classes.CLASS_SETS)
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000


@functools.lru_cache(maxsize=8)
def options(special: tuple[str, ...] = (), sets: bool = False) -> tuple[str, ...]:
    """Every label a field offers: its special choices, the sets (``sets``), then the 1000 classes in index order."""
    return tuple([label(s) for s in special] + ([_set_label(s) for s in classes.CLASS_SETS] if sets else [])
                 + [label(i) for i in range(len(classes.imagenet_categories()))])


@functools.lru_cache(maxsize=8)
def _lookup(special: tuple[str, ...], sets: bool) -> dict[str, Any]:
    """Lower-cased text → value: labels, bare names, indices, set names and special words."""
    out: dict[str, Any] = {}
    for i, name in enumerate(classes.imagenet_categories()):
        out[name.lower()] = out[str(i)] = out[label(i).lower()] = i
    for s in classes.CLASS_SETS if sets else ():
        out[s.lower()] = out[SET_LABELS.get(s, s).lower()] = out[_set_label(s).lower()] = s
    for s in special:
        out[s.lower()] = out[SPECIAL_LABELS.get(s, s).lower()] = s
    return out


def parse(text: str, special: tuple[str, ...] = (), sets: bool = False) -> Any:
    """The value a field's text names, case-insensitively: a label, a bare class name,
    an index, a set's name or label, a special word, or part of exactly one label;
    :class:`UnknownClassText` otherwise."""
    key = " ".join(str(text).split()).lower()
    table = _lookup(tuple(special), bool(sets))
    found = table.get(key)
    if found is not None:
        return found
    matches = [o for o in options(tuple(special), bool(sets)) if key in o.lower()] if key else []
    if len(matches) == 1:
        return table[matches[0].lower()]
    shown = str(text).strip()[:60]
    if matches:
        raise UnknownClassText(f"{shown!r} is part of {len(matches)} names: pick one of the list")
    what = "an ImageNet class, class set" if sets else "an ImageNet class"
    raise UnknownClassText(f"{shown!r} is not {what} or index 0-999: type part of a name and pick one of the list")


def indices(value: Any) -> list[int]:
    """ImageNet indices of a class or a class set (not of a special word)."""
    if isinstance(value, str):
        return list(classes.CLASS_SETS[value])
    return [int(value)]


class ClassChoice(param.Parameter):
    """A class, a class set (``sets``) or one of ``special``; see :func:`valid`."""

    special: tuple[str, ...] = ()
    sets: bool = False

    def _validate(self, val: Any) -> None:
        super()._validate(val)
        if not valid(val, self.special, self.sets):
            raise ValueError(f"{self.name}: {val!r} is not a class index 0-999"
                             + (", a class set" if self.sets else "") + "".join(f" or {s!r}" for s in self.special))


class ClassField:
    """A searchable field bound to ``obj.<name>`` (a :class:`ClassChoice`), with
    a one-line message under it when the text names nothing."""

    def __init__(self, obj: param.Parameterized, name: str, title: str, width: int = 260, css_classes: list[str] | None = None):
        self.obj, self.name = obj, name
        p = obj.param[name]
        self.special, self.sets = tuple(p.special), bool(p.sets)
        self.input = pn.widgets.AutocompleteInput(
            label=title, options=list(options(self.special, self.sets)), value=label(getattr(obj, name)),
            case_sensitive=False, search_strategy="includes", restrict=False, min_characters=2, width=width,
            placeholder="type part of a class name", css_classes=["pt-class-field", *(css_classes or [])])
        self.message = html.pane("", width=width, visible=False, margin=(0, 10),
                                 css_classes=["pt-class-error", *(f"{c}-error" for c in css_classes or [])])
        self.input.param.watch(self._typed, "value")
        obj.param.watch(self._changed, name)
        self.view = pn.Column(self.input, self.message, margin=0)

    def __panel__(self) -> pn.Column:
        return self.view

    def _typed(self, event: Any) -> None:
        text = event.new or ""
        if not text.strip():
            return
        try:
            value = parse(text, self.special, self.sets)
        except UnknownClassText as exc:
            self.message.param.update(object=escape(str(exc)), visible=True)
            return
        self.message.param.update(object="", visible=False)
        setattr(self.obj, self.name, value)
        if text != label(value):
            self.input.value = label(value)  # "207", "Golden Retriever": shown as the list names it

    def _changed(self, event: Any) -> None:
        self.message.param.update(object="", visible=False)
        self.input.value = label(event.new)


# ------------------------------------------------------------------ example images

_FOLDER: Path | None = None
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_KAGGLE_VAL = Path("ILSVRC", "Data", "CLS-LOC", "val")
_SOLUTION = "LOC_val_solution.csv"


def set_example_folder(path: str | Path | None) -> None:
    """Show the first image of each class from an ImageNet folder (None: none);
    :class:`ExampleFolderError` (one line) when it is not a folder of either layout."""
    global _FOLDER
    if path is None:
        _FOLDER = None
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ExampleFolderError(f"--imagenet-val {path}: no such folder")
    if not (folder / _SOLUTION).is_file() and not any((folder / w).is_dir() for w in classes.imagenet_wnids()):
        raise ExampleFolderError(f"--imagenet-val {path}: neither class folders ({folder}/n01440764/…) "
                                 f"nor {_SOLUTION} in it")
    _FOLDER = folder.resolve()


def example_folder() -> Path | None:
    """The folder :func:`set_example_folder` set, or None."""
    return _FOLDER


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=2048)
def _first_in_folder(folder: str, wnid: str, mtime: int) -> str | None:
    """The first image file (by name) of ``folder/wnid`` (``mtime``: the class folder's, for the cache)."""
    try:
        with os.scandir(Path(folder, wnid)) as entries:
            files = sorted(e.name for e in entries if e.name.lower().endswith(_IMAGE_SUFFIXES) and e.is_file())
    except OSError:
        return None
    return str(Path(folder, wnid, files[0])) if files else None


@functools.lru_cache(maxsize=4)
def _solution(csv_path: str, mtime: int) -> dict[str, str]:
    """wnid → the first image ID (by name) of that class in a ``LOC_val_solution.csv``."""
    first: dict[str, str] = {}
    with open(csv_path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or not row[1].strip() or row[0] == "ImageId":
                continue
            wnid = row[1].split()[0]
            if wnid not in first or row[0] < first[wnid]:
                first[wnid] = row[0]
    return first


def _first_image(index: int) -> Path | None:
    """The first image of class ``index`` in the example folder, or None."""
    folder = _FOLDER
    if folder is None:
        return None
    wnid = classes.imagenet_wnids()[index]
    if (folder / wnid).is_dir():
        found = _first_in_folder(str(folder), wnid, _mtime(folder / wnid))
        return Path(found) if found else None
    solution = folder / _SOLUTION
    if solution.is_file():
        image_id = _solution(str(solution), _mtime(solution)).get(wnid)
        if image_id is not None:
            for where in (folder, folder / _KAGGLE_VAL):
                for suffix in (".JPEG", ".jpeg", ".jpg", ".png"):
                    if (where / f"{image_id}{suffix}").is_file():
                        return where / f"{image_id}{suffix}"
    return None


@functools.lru_cache(maxsize=4096)
def _thumbnail(path: str, mtime: int, size: int) -> str | None:
    """An image file as a JPEG thumbnail data URI (longer side ``size``), or None when
    it cannot be read safely (too large, a decompression bomb, broken, not an image)."""
    try:
        if os.path.getsize(path) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES >> 20} MiB")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a fraction of the size
                rgb = im.convert("RGB")
        rgb.thumbnail((size, size))
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=85)
    except Exception as exc:
        log.warning("example image %s cannot be read (%s)", path, type(exc).__name__)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass(frozen=True)
class Example:
    """An example image of a class: ``src`` a data URI (None: blank), ``title`` what it is."""

    src: str | None
    title: str


def example(index: int, size: int = THUMBNAIL) -> Example | None:
    """The first image of class ``index`` in the example folder as a thumbnail; a
    blank with a title when the class has none there or its file cannot be read;
    None when no folder is set."""
    if _FOLDER is None:
        return None
    name = classes.imagenet_categories()[index]
    path = _first_image(index)
    if path is None:
        return Example(None, f"no image of {name} in {_FOLDER}")
    src = _thumbnail(str(path), _mtime(path), size)
    return Example(src, f"{name}: {path.name}" if src else f"{path.name} cannot be read as an image")
