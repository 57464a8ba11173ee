"""``perturber study``: a study's YAML, the cubes it needs, its analysis and its outputs, in one command.

A study's YAML (``workflows/studies/<name>.yaml``) is a sweep spec (the
cubes the study reads, at full size) with one more section::

    name: yaw-fluctuation
    study:
      params: {prototype_yaw: -23.3}      # keyword arguments of the analysis function
    budget: 5000
    cubes:
      yaw_views: {axes: ..., models: [...]}

:func:`run` computes every missing chunk of those cubes with the precompute
job (resumable, on the same Dask options as ``perturber precompute``), runs
the analysis registered under the study's name, writes its table to the
store's ``studies/<name>`` group and the CSV, figures and report to a folder
(:mod:`.outputs`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from perturber.pipeline import run as precompute_run
from perturber.pipeline import spec as sweep_spec
from perturber.pipeline import yamlsafe
from perturber.pipeline.fields import Fields
from perturber.pipeline.studies import STUDIES, StudyError, analyse, check_params, get, load_builtin, outputs, write_table

__all__ = ["StudyFile", "study_files", "load", "run", "report_dir", "DEFAULT_STORE", "listing"]

#: Where the built-in studies' YAML files are (a source checkout's workflows/studies).
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "workflows" / "studies"
#: The store ``perturber study`` uses without ``--store``.
DEFAULT_STORE = "data/generated/studies.zarr"


@dataclasses.dataclass(frozen=True)
class StudyFile:
    """A study's YAML: the name, the analysis parameters and the cubes (a validated sweep spec)."""

    name: str
    path: Path
    params: Mapping[str, Any]
    sweep: sweep_spec.SweepSpec


def study_files() -> dict[str, Path]:
    """name → YAML of every study file found (``PERTURBER_STUDIES`` folders first, then the built-in ones)."""
    folders = [Path(p) for p in os.environ.get("PERTURBER_STUDIES", "").split(os.pathsep) if p] + [BUILTIN_DIR]
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def _path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise StudyError(f"{name}: no such study file")
        return path
    files = study_files()
    if name not in files:
        get(name)  # an unknown name: the registry's message, with a suggestion
        raise StudyError(f"study {name!r} has no YAML in {BUILTIN_DIR} (or PERTURBER_STUDIES)")
    return files[name]


def load(name: str, models: list[str] | None = None, prune: int | None = None, force: bool = False) -> StudyFile:
    """Read a study's YAML (a name or a path); ``models`` replaces every cube's
    models, ``prune`` keeps the first N values of every axis."""
    path = _path(name)
    data = yamlsafe.load_file(path, StudyError)
    f = Fields(str(path), StudyError)
    data = dict(f.mapping(data, "", "name, study, budget and cubes"))
    section = dict(f.mapping(data.pop("study", {}), "study", "params"))
    unknown = sorted(set(section) - {"params"})
    if unknown:
        raise f.fail("study", f"unknown key {unknown[0]!r} (known: params)")
    study_name = str(data.get("name", path.stem))
    get(study_name)
    params = dict(f.mapping(section.get("params"), "study.params", "parameter names to values"))
    sweep = sweep_spec.parse_spec(data, name=str(path), force=force)
    if models:
        sweep = dataclasses.replace(sweep, cubes=tuple(dataclasses.replace(c, models=tuple(models)) for c in sweep.cubes))
        sweep = sweep_spec.parse_spec(yamlsafe.loads(sweep.to_yaml(), str(path), StudyError), name=str(path), force=force)
    if prune:
        sweep = sweep.prune(prune)
    return StudyFile(study_name, path, params, sweep)


def report_dir(store: str, name: str) -> Path:
    """Where a study's CSV, figures and report go: ``<store>-studies/<name>`` beside a local store."""
    base = str(store).rstrip("/")
    base = base[:-5] if base.endswith(".zarr") else base
    if "://" in base:
        base = Path(base.split("://", 1)[1]).name
    return Path(f"{base}-studies") / name


def listing() -> list[tuple[str, str, str]]:
    """(name, YAML path or '', the first sentence of the definition and the
    parameters with their defaults) of every study."""
    load_builtin()
    files = study_files()
    out = []
    for name in sorted(set(STUDIES) | set(files)):
        s = STUDIES.get(name)
        text = s.definition.split(". ")[0].rstrip(".") + "." if s else "(no analysis registered)"
        if s and s.params:
            text += " Parameters: " + ", ".join(f"{k}={v!r}" for k, v in s.params.items()) + "."
        out.append((name, str(files.get(name, "")), text))
    return out


def run(name: str, store: str | None = None, models: list[str] | None = None, prune: int | None = None,
        params: Mapping[str, Any] | None = None, scheduler: str | None = None, workers: int | None = None,
        overwrite: bool = False, compute: bool = True, out_dir: str | Path | None = None, progress: bool = True,
        force: bool = False, echo: Callable[[str], None] = print) -> tuple[Any, dict[str, Path]]:
    """Compute what the study needs, analyse, and write everything; returns (table, files)."""
    store = store or DEFAULT_STORE
    sf = load(name, models, prune, force)
    study = get(sf.name)
    merged = check_params(study, {**sf.params, **(params or {})})
    missing = [c for c in study.cubes if c not in {cube.name for cube in sf.sweep.cubes}]
    if missing:
        raise StudyError(f"{sf.path}: study {sf.name!r} reads the cube {missing[0]!r}, which the file does not define")
    if compute:
        report = precompute_run.precompute(sf.sweep, store, scheduler=scheduler, workers=workers, overwrite=overwrite,
                                           progress=progress, echo=echo)
        if report.samples:
            echo(f"computed {report.samples} samples of {', '.join(c.name for c in sf.sweep.cubes)} in {report.seconds:.1f} s")
    table = analyse(sf.name, store, merged)
    write_table(table, store, sf.name)
    files = outputs.write_outputs(study, table, store, out_dir or report_dir(store, sf.name))
    return table, files
