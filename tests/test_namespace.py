"""One import namespace (perturber), cheap to import, without import cycles."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import perturber

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"pipeline": "perturber.pipeline", "viewer": "perturber.viewer", "featureviz": "perturber.featureviz",
         "perturber": "perturber"}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """A fresh interpreter outside the repository (its folders are not on the path)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)


def test_import_perturber_is_cheap(tmp_path):
    code = ("import sys, perturber, perturber.pipeline.factors, perturber.pipeline.cli; "
            "print(perturber.__version__); print(sorted(m for m in ('torch', 'panel', 'pyrender', 'trimesh') if m in sys.modules))")
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    version, heavy = out.stdout.split("\n")[:2]
    assert version == perturber.__version__ != "unknown"
    assert heavy == "[]"  # the factors and the command's options load none of them


def test_the_generic_names_are_not_installed(tmp_path):
    for name in ("pipeline", "viewer", "featureviz"):
        out = _python(f"import {name}", tmp_path)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, name
    out = _python("import perturber.pipeline.factors, perturber.viewer, perturber.featureviz", tmp_path)
    assert out.returncode == 0, out.stderr


def test_version_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "perturber", "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"perturber {perturber.__version__}"


def test_the_wheel_holds_one_package_with_its_data(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for folder in ("perturber", "pipeline", "viewer", "featureviz", "data"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "generated"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("perturber-*.whl"))
    files = zipfile.ZipFile(wheel).namelist()
    assert {f.split("/")[0] for f in files} == {"perturber", wheel.name.split("-py")[0] + ".dist-info"}
    for needed in ("perturber/py.typed", "perturber/pipeline/factors.py", "perturber/viewer/style.css",
                   "perturber/viewer/panels/top5.py", "perturber/data/catalogue.yaml", "perturber/data/models.yaml"):
        assert needed in files, needed


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    out = {}
    for folder, package in PARTS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(perturber modules imported at module level, those imported inside functions)."""
    tree = ast.parse(path.read_text())
    top, inner = set(), set()
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perturber"):
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("perturber")]
        else:
            continue
        (inner if id(node) in nested else top).update(n for n in names if n in modules)
    return top, inner


def test_no_import_cycles_and_no_hidden_imports():
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    # Imports inside functions only where a light module must not load a heavy one: the command line
    # loads torch, Dask or panel once its options are read, each command what it needs; the processes
    # that submit chunks and live points do not load the renderer, which the Dask workers load.
    hidden = {(name, target) for name, (_, inner) in graph.items() for target in inner}
    commands = {"perturber.pipeline.commands", "perturber.pipeline.searches.fool_cli", "perturber.pipeline.searches.search_cli",
                "perturber.pipeline.models_cli", "perturber.pipeline.training.finetune_cli",
                "perturber.pipeline.export_cli"}
    allowed = {(name, target) for name, target in hidden if name in commands}
    allowed |= {("perturber.pipeline.cli", "perturber.pipeline.commands"), ("perturber.viewer.live", "perturber.pipeline.engine"),
                ("perturber.pipeline.run", "perturber.pipeline.engine"),
                ("perturber.pipeline.searches.factor_search", "perturber.pipeline.engine"),
                # timm takes seconds to import: only for a timm entry
                ("perturber.pipeline.models", "perturber.pipeline.timm_models"),
                ("perturber.pipeline.architectures", "perturber.pipeline.timm_models"),
                ("perturber.pipeline.weights", "perturber.pipeline.timm_models")}
    assert hidden <= allowed, sorted(hidden - allowed)

    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        seen[name] = 1
        for target in sorted(graph[name][0]):
            if target == name:
                continue
            if seen.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in seen:
                visit(target, path + [target])
        seen[name] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])


def test_no_module_is_over_about_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, long
