"""Stores that survive any kill and whose damage is found: the template marker
written last, crc32c checksums, ``perturber verify [--repair]``, writability
checked before any work. Real renders, real models, real Zarr, real processes."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from perturber.pipeline import run, spec, store, verify
from perturber.pipeline.store import StoreError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KILLS = 12

TINY = {
    "name": "tiny",
    "cubes": {
        "views": {
            "axes": {"object": ["dog"], "yaw": [0.0, 90.0], "hue": [0, 120]},
            "chunks": {"yaw": 1, "hue": 1},
            "models": ["efficientnet_lite0"],
            "layers": ["stage4"],
            "neurons": {"stage4": 2},
            "size": 64,
        }
    },
}


def _files(path: Path) -> dict[str, str]:
    """sha256 of every file of a store, metadata included."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _count(path: Path) -> int:
    n = 0
    for _, _, files in os.walk(path):
        n += len(files)
    return n


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perturber", *map(str, args)], cwd=ROOT, capture_output=True, text=True, **kw)


def _start(spec_path: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "perturber", "precompute", str(spec_path), "--out", str(out), "--quiet", "--scheduler", "synchronous"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(spec path, an uninterrupted run's store)."""
    folder = tmp_path_factory.mktemp("tiny")
    spec_path = folder / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    reference = folder / "reference.zarr"
    result = _cli("precompute", spec_path, "--out", reference, "--quiet", "--scheduler", "synchronous")
    assert result.returncode == 0, result.stderr[-2000:]
    return spec_path, reference


def _state(out: Path) -> str:
    try:
        return store.group_state(str(out), "views")[0]
    except StoreError as exc:
        return f"error: {exc}"


def test_kills_at_any_moment_resume_to_the_same_bytes(tiny):
    """SIGKILLs, each once the store has grown by 1 to 12 files since its run
    started (template writing included), then a run to the end: every file of
    the store is byte-identical to an uninterrupted run's. (12 kills here;
    benchmarks/kill_loop.py kills at random moments, 30 times.)"""
    spec_path, reference = tiny
    rng = random.Random(12)
    kills, landed = 0, []
    trial = 0
    while kills < KILLS:
        out = spec_path.parent / f"killed-{trial}.zarr"
        trial += 1
        while True:
            start = _count(out) if out.exists() else 0
            step = rng.randint(1, 12)
            proc = _start(spec_path, out)
            while proc.poll() is None and (_count(out) if out.exists() else 0) < start + step:
                time.sleep(0.002)
            if proc.poll() is not None:  # the run finished before the kill
                assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
                break
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            landed.append(_state(out))
        assert _files(out) == _files(reference), f"trial {trial}: the resumed store differs"
    assert not any(s.startswith("error") for s in landed), landed
    assert landed.count("incomplete") >= 2, f"too few kills landed while the template was written: {landed}"


def test_an_interrupted_template_is_completed_not_refused(tiny, tmp_path):
    spec_path, reference = tiny
    cube = spec.load_spec(spec_path).cubes[0]
    out = tmp_path / "t.zarr"
    ds = store.template(cube, store.layout(cube))
    ds.attrs["batch_sizes"] = xr.open_zarr(reference, group="views").attrs["batch_sizes"]
    # What a kill just before the marker leaves: the whole template, no marker.
    half = ds.drop_vars(["done", "logits"])
    half.attrs = {k: v for k, v in ds.attrs.items() if k != store.MARK}
    half.to_zarr(out, group="views", mode="w", compute=False, zarr_format=3, consolidated=False)
    assert store.group_state(str(out), "views")[0] == "incomplete"
    result = _cli("precompute", spec_path, "--out", out, "--quiet", "--scheduler", "synchronous")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _files(out) == _files(reference)


def _codec_names(array) -> list[str]:
    """The array's codecs, and inside a shard the inner chunks' codecs."""
    out = []
    for codec in array.metadata.codecs:
        d = codec.to_dict()
        out.append(d["name"])
        out += [inner["name"] if isinstance(inner, dict) else inner.to_dict()["name"]
                for inner in d.get("configuration", {}).get("codecs", ())]
    return out


def test_every_array_has_a_checksum(tiny):
    _, reference = tiny
    group = zarr.open_group(str(reference), path="views", mode="r")
    sharded = 0
    for name, array in group.arrays():
        assert "crc32c" in _codec_names(array), name
        sharded += array.shards is not None
    assert sharded >= 4  # logits, top_class, top_prob, image: one file per task


def test_verify_finds_damage_and_repair_recomputes_exactly_it(tiny, tmp_path):
    import shutil

    spec_path, reference = tiny
    out = tmp_path / "damaged.zarr"
    shutil.copytree(reference, out)
    assert verify.find_damage(str(out), progress=False)[0] == []
    truncated = out / "views" / "logits" / "c" / "0" / "0" / "1" / "0" / "0"
    truncated.write_bytes(truncated.read_bytes()[:100])
    (out / "views" / "image" / "c" / "0" / "1" / "0" / "0" / "0" / "0").unlink()
    result = _cli("verify", out, "--quiet")
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1 and not result.stderr
    assert sorted(lines[:2]) == [
        "damaged chunk: group 'views' task object=dog yaw=0 hue=120: logits: checksum mismatch",
        "damaged chunk: group 'views' task object=dog yaw=90 hue=0: image: chunk file missing",
    ]
    # A precompute alone does not see it; repair clears exactly those two marks.
    before = _files(out)
    assert _cli("verify", out, "--quiet", "--repair").returncode == 0
    done = zarr.open_group(str(out), mode="r")["views"]["done"][...]
    assert done[0].tolist() == [[1, 0], [0, 1]]
    changed = {k for k in _files(out) if _files(out).get(k) != before.get(k)} | (set(before) - set(_files(out)))
    assert all(k.startswith("views/done/") for k in changed), changed
    report = run.precompute(spec.load_spec(spec_path), str(out), scheduler="synchronous", progress=False, echo=lambda _: None)
    assert report.written == {"views": 2} and report.samples == 2
    assert _files(out) == _files(reference)
    assert _cli("verify", out, "--quiet").returncode == 0


def test_a_chunk_of_fill_values_is_written_so_it_is_not_taken_for_damage(tmp_path):
    black = {"name": "black", "cubes": {"black": {"axes": {"fade": [1.0]}, "fixed": {"object": "dog"},
                                                  "models": ["efficientnet_lite0"], "size": 32}}}
    out = tmp_path / "b.zarr"
    run.precompute(spec.parse_spec(black), str(out), scheduler="synchronous", progress=False, echo=lambda _: None)
    assert not xr.open_zarr(out, group="black")["image"].values.any()  # all black: the image's fill value
    assert verify.find_damage(str(out), progress=False)[0] == []


def test_verify_of_what_is_not_a_store(tmp_path):
    result = _cli("verify", tmp_path / "nothing.zarr", "--quiet")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no Zarr store" in result.stderr


def _read_only_place(tmp_path: Path) -> Path:
    """A folder this process cannot write: a chmod 555 folder, or /sys for root (which ignores modes)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_a_store_that_cannot_be_written_fails_at_once_in_one_line(tiny, tmp_path):
    spec_path, _ = tiny
    cache = tmp_path / "cache"  # batch-size tuning would write its cache here: it must not start
    env = {**os.environ, "PERTURBER_CACHE": str(cache)}
    place = _read_only_place(tmp_path)
    result = _cli("precompute", spec_path, "--out", place / "new.zarr", "--quiet", "--scheduler", "synchronous", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "not writable" in result.stderr, result.stderr
    assert not cache.exists()
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    result = _cli("precompute", spec_path, "--out", a_file, "--quiet", "--scheduler", "synchronous", env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is a file" in result.stderr, result.stderr
    assert a_file.read_text() == "not a store" and not cache.exists()


def test_overwrite_replaces_a_cube_of_another_spec(tiny, tmp_path):
    import shutil

    spec_path, reference = tiny
    out = tmp_path / "o.zarr"
    shutil.copytree(reference, out)
    other = spec.parse_spec({**TINY, "cubes": {"views": {**TINY["cubes"]["views"], "size": 48}}})
    cube = other.cubes[0]
    with pytest.raises(StoreError, match="different spec"):
        store.create_or_check(cube, str(out))
    assert store.group_state(str(out), "views")[0] == "complete"
    assert store.create_or_check(cube, str(out), overwrite=True)
    attrs = store.group_state(str(out), "views")[1]
    assert attrs[store.MARK] == cube.sha256()
    assert np.array_equal(xr.open_zarr(out, group="views")["done"].values, np.zeros((1, 2, 2)))


def test_an_empty_group_is_an_interrupted_template_but_a_foreign_one_is_refused(tmp_path):
    """xarray creates the group before its attributes: a kill in between leaves
    an empty group, which holds nothing to lose; a group with data is never taken for one."""
    out = tmp_path / "e.zarr"
    zarr.open_group(str(out), mode="w").create_group("views")
    assert store.group_state(str(out), "views")[0] == "incomplete"
    zarr.open_group(str(out), path="views", mode="r+").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(StoreError, match="not written by Perturber"):
        store.group_state(str(out), "views")
