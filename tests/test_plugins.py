"""Plugins found by entry point: a package's factors become the command's options, in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"

pytestmark = pytest.mark.slow


def _installed(tmp_path: Path, module: str) -> dict:
    """An environment in which a distribution lists ``module`` under the entry-point group perturber.plugins."""
    site = tmp_path / "site"
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[perturber.plugins]\ntoy = {module}\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{EXAMPLES}", "PYOPENGL_PLATFORM": "egl"}


def _perturber(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perturber", *args], env=env, cwd=ROOT, capture_output=True, text=True)


def test_an_installed_plugin_adds_its_factor_to_every_command(tmp_path):
    env = _installed(tmp_path, "vignette")
    done = _perturber(env, "render", "--size", "64", "--vignette", "1", "-o", str(tmp_path / "on.png"))
    assert done.returncode == 0, done.stderr
    corner = np.asarray(Image.open(tmp_path / "on.png"))[:6, :6, :3].astype(float)
    assert corner.mean() < 100  # the white background, darkened to nearly black at the corners
    bad = _perturber(env, "render", "--vignette", "2")
    assert bad.returncode == 2 and bad.stderr.strip() == "perturber: error: vignette=2.0 is outside its domain [0, 1] fraction"


def test_a_broken_plugin_is_one_line(tmp_path):
    env = _installed(tmp_path, "no_such_module_anywhere")
    out = _perturber(env, "render", "--help")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "plugin 'toy' (no_such_module_anywhere) cannot be loaded: ModuleNotFoundError" in out.stderr
