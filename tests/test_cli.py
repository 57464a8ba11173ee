import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from perturber.pipeline import cli, commands, factors


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "perturber", *args], capture_output=True, text=True, cwd=cwd)


def test_render_writes_the_requested_image(tmp_path):
    out = tmp_path / "out.png"
    proc = run("render", "--object", "dog", "--yaw", "30", "--pitch", "10", "--background", "meadow",
               "--size", "128", "-o", str(out), "--depth", str(tmp_path / "d.npy"))
    assert proc.returncode == 0, proc.stderr
    image = np.asarray(Image.open(out))
    assert image.shape == (128, 128, 4) and (image[..., 3] == 255).all()
    assert np.load(tmp_path / "d.npy").shape == (128, 128)
    assert "CC BY 3.0" in proc.stdout and "Green Meadow" in proc.stdout  # attributions


def test_help_lists_every_factor():
    proc = run("render", "--help")
    for name in factors.FACTORS:
        assert f"--{name.replace('_', '-')}" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--object", "unicorn"], "object='unicorn' is not a known object"),
        (["--yaw", "999"], "yaw=999.0 is outside its domain"),
        (["--object", "missing.obj"], "mesh file not found"),
        (["--size", "5"], "--size must be between"),
        (["--yaww", "5"], "unknown factor 'yaww' (did you mean 'yaw'?)"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    proc = run("render", *args, "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x.png").exists()


def test_broken_mesh_file_exits_2(tmp_path):
    bad = tmp_path / "broken.obj"
    bad.write_text("v 0 0 0\nv 1 nan 0\nv 0 1 0\nf 1 2 3\n")
    proc = run("render", "--object", str(bad), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "broken.obj: mesh has non-finite vertex coordinates" in proc.stderr


def test_parse_sweep():
    assert commands.parse_sweep("yaw=0,45,90") == ("yaw", [0.0, 45.0, 90.0])
    assert commands.parse_sweep("morph-t=0:1:3") == ("morph_t", [0.0, 0.5, 1.0])
    assert commands.parse_sweep("background=white,meadow") == ("background", ["white", "meadow"])
    with pytest.raises(factors.FactorError, match="outside"):
        commands.parse_sweep("pitch=0,100")
    with pytest.raises(commands.CLIError):
        commands.parse_sweep("yaw")


def test_contact_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    code = cli.main(["sheet", "--objects", "dog,cat:dog", "--sweep", "yaw=0,90,180", "--size", "64",
                     "--quiet", "-o", str(out)])
    assert code == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[1] == 3 * 68 + 4 and sheet.shape[0] > 2 * 64
    # Three different views of the dog in the first row.
    row = sheet[4 + 18 + 18 : 4 + 18 + 18 + 64]
    tiles = [row[:, 4 + j * 68 : 4 + j * 68 + 64].astype(int) for j in range(3)]
    assert np.abs(tiles[0] - tiles[1]).mean() > 3 and np.abs(tiles[1] - tiles[2]).mean() > 3


def test_assets_lists_status_and_licence():
    proc = run("assets")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    dog = next(line for line in lines if " dog " in line)
    assert "CC-BY-3.0" in dog and dog.rstrip().endswith("ok")
