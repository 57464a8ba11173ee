import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import refuse
from PIL import Image

from perturber.pipeline import cli, commands, factors

SPEC = Path(__file__).resolve().parents[1] / "workflows" / "demo.yaml"


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


@pytest.mark.parametrize("text, message", [
    ("yaw=-180:180:1000000000000", "--sweep yaw=-180:180:1000000000000: count must be a whole number in 1..1000, got 1000000000000"),
    ("yaw=0:90:2.7", "--sweep yaw=0:90:2.7: count must be a whole number in 1..1000, got 2.7"),
    ("yaw=0:90:-3", "count must be a whole number in 1..1000, got -3"),
    ("yaw=0:nan:3", "--sweep yaw=0:nan:3: stop must be a finite number, got nan"),
    ("yaw=0,,90", "--sweep yaw=0,,90: an empty value between commas"),
    ("yaw=", "--sweep yaw=: no values"),
])
def test_sweeps_are_counted_before_they_are_made(text, message):
    start = time.perf_counter()
    with pytest.raises(commands.CLIError, match=re.escape(message)):
        commands.parse_sweep(text)
    assert time.perf_counter() - start < 1.0


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working folder with a sub-folder 'dir', a file 'file' and a file 'f.zarr'."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "f.zarr").write_text("x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["render", "-o", "dir"], "argument -o/--output: dir: is a folder; give a file name"),
    (["render", "-o", "x.xyz"], "argument -o/--output: x.xyz: cannot write .xyz; write .png"),
    (["render", "-o", "file/x.png"], "argument -o/--output: file/x.png: file is a file, not a folder"),
    (["render", "--depth", "depth"], "argument --depth: depth: cannot write a file without a suffix; write .npy"),
    (["sheet", "-o", "x.gif"], "argument -o/--output: x.gif: cannot write .gif; write .png, .jpg or .jpeg"),
    (["predict", "--save-input", "dir"], "argument --save-input: dir: is a folder; give a file name"),
    (["predict", "--activation-figure", "a.png"], "--activation-figure needs --layer"),
    (["predict", "--layer", "stage4", "--activation-figure", "a.gif"],
     "argument --activation-figure: a.gif: cannot write .gif; write .png, .pdf or .svg"),
    (["attack", "-o", "x.h5"], "argument -o/--output: x.h5: cannot write .h5; write .npz or .zarr"),
    (["attack", "-o", "f.zarr"], "argument -o/--output: f.zarr: is a file, not a Zarr store"),
    (["predict", "--top-k", "5000"], "argument --top-k: must be a whole number in 1..1000, got '5000'"),
    (["predict", "--top-k", "0"], "argument --top-k: must be a whole number in 1..1000, got '0'"),
    (["predict", "--models", ","], "argument --models: ',': an empty name before or after a comma"),
    (["predict", "--models", ""], "argument --models: '': give at least one name"),
    (["predict", "--models", "efficientnet_lite0,efficientnet_lite0"], "'efficientnet_lite0' is listed twice"),
    (["predict", "--layer", ""], "argument --layer: must not be empty"),
    (["predict", "--layer", "stage4", "--neurons", "0"], "argument --neurons: must be a whole number in 1..100, got '0'"),
    (["sheet", "--objects", ","], "argument --objects: ',': an empty name before or after a comma"),
    (["sheet", "--objects", "dog,,cat"], "argument --objects: 'dog,,cat': an empty name before or after a comma"),
    (["sheet", "--sweep", "yaw=0:90:1000000000000"], "count must be a whole number in 1..1000"),
    (["attack", "--steps", "0"], "argument --steps: must be a whole number in 1..10000, got '0'"),
    (["attack", "--target", "1000"], "argument --target: must be a whole number in 0..999, got '1000'"),
    (["attack", "--eps", "nan"], "--eps: 'nan' must be a positive finite number"),
    (["attack", "--eps", "1/0"], "--eps: '1/0' is not a number (write 0.03 or 8/255)"),
    (["attack", "--step", "inf"], "--step: 'inf' must be a positive finite number"),
    (["precompute", str(SPEC), "--out", "o.zarr", "--workers=-1"], "argument --workers: must be a whole number in 1..256, got '-1'"),
    (["precompute", str(SPEC), "--out", "o.zarr", "--workers=0"], "argument --workers: must be a whole number in 1..256, got '0'"),
    (["precompute", str(SPEC), "--out", "o.zarr", "--prune", "0"], "argument --prune: must be a whole number in 1..1000000, got '0'"),
    (["precompute", str(SPEC), "--out", "o.zarr", "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"],
     "--workers sizes the local cluster; with --scheduler the cluster has its own workers"),
    (["featureviz", "fv.yaml", "--out", "o.zarr", "--workers", "0"], "argument --workers: must be a whole number in 1..256, got '0'"),
    (["view", "s.zarr", "--port", "-1"], "argument --port: must be a whole number in 1..65535, got '-1'"),
    (["view", "s.zarr", "--port", "99999"], "argument --port: must be a whole number in 1..65535, got '99999'"),
    (["view", "dir"], "dir: not a Zarr store (GroupNotFoundError)"),
    (["view", "nowhere.zarr"], "nowhere.zarr: not a Zarr store (FileNotFoundError)"),
])
def test_bad_options_are_refused_before_any_work(place, capsys, argv, message):
    assert message in refuse(argv, capsys)
    assert sorted(p.name for p in place.iterdir()) == ["dir", "f.zarr", "file"]  # nothing written


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's /sys (unwritable, even for root)")
def test_an_unwritable_output_is_refused(capsys):
    assert refuse(["render", "-o", "/sys/x.png"], capsys) == "argument -o/--output: /sys/x.png: cannot write there (Permission denied)"


def test_an_unreachable_scheduler_is_one_line_at_once(tmp_path, capsys):
    message = refuse(["precompute", str(SPEC), "--out", str(tmp_path / "o.zarr"), "--scheduler", "tcp://127.0.0.1:1"], capsys)
    assert message == "cannot reach the Dask scheduler at tcp://127.0.0.1:1: Connection refused"
    assert not (tmp_path / "o.zarr").exists()  # before the store and its batch tuning


def test_view_checks_its_port_and_cube_before_serving(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    zarr.open_group(store, mode="w").create_group("views")
    assert refuse(["view", str(store), "--cube", "nope"], capsys) == f"--cube nope: no such cube in {store} (it has: views)"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert refuse(["view", str(store), "--port", str(port)], capsys) == (
            f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)")


def _double(x, threads=None):
    return 2 * x


def test_a_running_scheduler_is_reached_and_runs_the_tasks():
    from distributed import LocalCluster

    from perturber.pipeline import tasks

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        tasks.check_scheduler(cluster.scheduler_address)
        total = tasks.run_tasks([("a", _double, (2,)), ("b", _double, (3,))], cluster.scheduler_address, None,
                                on_result=lambda r: r, echo=lambda _: None)
    assert total == 10
