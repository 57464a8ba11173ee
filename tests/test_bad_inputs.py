"""The bad-input corpus (issue 12): one row per bad input, run through the real command line.

Each case runs ``python -m perturber ...`` in a subprocess (a hang is a
failure: every case has a timeout) and asserts the house rules: the exit code
(2 for an input error), stderr is exactly one line (``perturber: error: ...``,
or one warning line where the input is accepted), no traceback anywhere, a
keyword or two that any sensible message holds, no output left behind where
the input was refused, and, for stores, every file under the store unchanged
(sha256 before and after).

The fixtures are real: a 2-sample store precomputed once per module
(``--scheduler synchronous``), real glTF exported by trimesh, real files in a
folder the process cannot write. Cases run a few at a time (see
:data:`JOBS`); no case starts a LocalCluster. ``benchmarks/bad_inputs.py``
runs the same cases and writes the table of docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from bad_inputs.runner import GROUPS, Case, World, check, cli, damaged, mesh, registry, run_all, spec, write

pytestmark = pytest.mark.slow

# ------------------------------------------------------------ fixtures of cases

TRI = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
ZEROS = "0" * 64  # unquoted, YAML reads the integer 0
HEX = '"' + "a" * 64 + '"'  # a well-formed sha256 (of no file here)
X_SHA256 = '"' + hashlib.sha256(b"x").hexdigest() + '"'  # of a file holding b"x"


def cube(**fields) -> str:
    """A one-cube spec around the tiny one, with ``fields`` replaced (YAML flow text)."""
    body = {"axes": "{object: [dog], yaw: [0, 90]}", "models": "[efficientnet_lite0]", "size": "64", **fields}
    return "name: bad\ncubes:\n  views:\n" + "".join(f"    {k}: {v}\n" for k, v in body.items())


FEATUREVIZ = "size: 32\nsteps: 2\nbatch: 4\nparameterisations: [pixel]\nmodels:\n  efficientnet_lite0:\n    layers: {head: 2}\n"

# The "billion laughs": 9 aliases of 9 aliases ... (9**9 'lol's) where the spec is walked (a factor's value).
LAUGHS = "".join(f"{k}: &{k} [{','.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))
BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + LAUGHS + "name: x\ncubes: {v: {axes: {object: *i}}}\n"


def registry_entry(sha256: str, weights: str = "file: w.pt") -> str:
    return (f"bad:\n  architecture: efficientnet_lite0\n  weights: {{{weights}, sha256: {sha256}}}\n"
            "  input_size: 224\n  mean: [0.485, 0.456, 0.406]\n  std: [0.229, 0.224, 0.225]\n  classes: imagenet\n")


def gltf(change=None, uri=None):
    """A real glTF box exported by trimesh, then broken by ``change(tree)`` or given buffer ``uri``."""

    def make(path: Path) -> None:
        import trimesh

        path.parent.mkdir(parents=True, exist_ok=True)
        trimesh.creation.box().export(path)
        tree = json.loads(path.read_text())
        if change:
            change(tree)
        if uri:
            tree["buffers"][0]["uri"] = uri
        path.write_text(json.dumps(tree))

    return make


def read_only(tmp: Path, world: World) -> None:
    world.read_only_folder(tmp / "ro")


def port_in_use(tmp: Path, world: World):
    """Hold a listening socket on 127.0.0.1; its port goes into {tmp}/port. Returns its cleanup."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    (tmp / "port").write_text(str(sock.getsockname()[1]))
    return sock.close


def view_on_busy_port():
    def build(tmp: Path, world: World):
        close = port_in_use(tmp, world)
        setup = cli("view", "{store}", "--port", (tmp / "port").read_text())(tmp, world)
        setup.cleanup = close
        return setup

    return build


def foreign_zarr(tmp: Path, world: World) -> None:
    """A Zarr store whose group 'views' (the tiny spec's cube) was written by someone else."""
    import zarr

    group = zarr.open_group(str(tmp / "store.zarr"), mode="w").create_group("views")
    group.create_array("x", shape=(3,), dtype="f4")[...] = 1.0


def corrupt(relative: str, body: bytes | None = None, truncate: bool = False):
    """A damage(store): overwrite, truncate or (body None, not truncate) delete one file."""

    def damage(store: Path) -> None:
        path = store / relative
        if truncate:
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        elif body is None:
            path.unlink()
        else:
            path.write_bytes(body)

    return damage


PRE = ("precompute", "{spec}", "--scheduler", "synchronous", "--quiet", "--out")  # then the store
RENDER = ("render", "-o", "{tmp}/out.png", "--size", "32")
PREDICT = ("predict", "--size", "32")
VIEW = dict(timeout=40.0)  # a view that is wrongly accepted serves until killed

# ------------------------------------------------------------------ the corpus

CASES = [
    # Specs: precompute (or featureviz) of a bad spec file; no store may appear.
    # 1e-10 is a number as in YAML 1.2 (PyYAML alone reads it as a string), and so is 1.0e-10.
    Case("spec-range-step-1e-10", "specs", spec(cube(axes="{object: [dog], yaw: {range: [-180, 180, 1e-10]}}")), ("budget",)),
    Case("spec-range-step-1.0e-10", "specs", spec(cube(axes="{object: [dog], yaw: {range: [-180, 180, 1.0e-10]}}")), ("values", "too many", "budget")),
    Case("spec-range-step-1.0e-10-force", "specs", spec(cube(axes="{object: [dog], yaw: {range: [-180, 180, 1.0e-10]}}"), "--force"), ("values", "too many", "limit")),
    Case("spec-linspace-count-1e12", "specs", spec(cube(axes="{object: [dog], yaw: {linspace: [0, 1, 1e12]}}")), ("budget",)),
    Case("spec-linspace-count-1.0e+12", "specs", spec(cube(axes="{object: [dog], yaw: {linspace: [0, 1, 1.0e+12]}}")), ("values", "too many", "budget")),
    Case(f"spec-yaml-alias-bomb-{len(BOMB)}-bytes", "specs", spec(BOMB), ("alias", "nodes", "expand")),
    Case("spec-linspace-two-values", "specs", spec(cube(axes="{object: [dog], yaw: {linspace: [0, 90]}}")), ("linspace", "three", "3")),
    Case("spec-linspace-four-values", "specs", spec(cube(axes="{object: [dog], yaw: {linspace: [0, 90, 3, 4]}}")), ("linspace", "three", "3")),
    Case("spec-linspace-negative-count", "specs", spec(cube(axes="{object: [dog], yaw: {linspace: [0, 90, -3]}}")), ("count",)),
    Case("spec-linspace-count-2.7", "specs", spec(cube(axes="{object: [dog], yaw: {linspace: [0, 90, 2.7]}}")), ("whole", "count")),
    Case("spec-models-5", "specs", spec(cube(models="5")), ("models",)),
    Case("spec-models-a-string", "specs", spec(cube(models="efficientnet_lite0"), "--dry-run"), (), code=(0, 2)),
    Case("spec-fixed-a-list", "specs", spec(cube(fixed="[1, 2]")), ("fixed",)),
    Case("spec-not-utf8", "specs", spec(b"name: caf\xe9\ncubes: {}\n"), ("utf-8", "utf8")),
    Case("spec-oversized-2-MiB", "specs", spec("# padding\n" * 210_000 + cube()), ("larger", "large", "size")),
    Case("spec-unknown-factor", "specs", spec(cube(axes="{object: [dog], wobble: [1, 2]}")), ("wobble",)),
    Case("spec-value-out-of-range", "specs", spec(cube(axes="{object: [dog], yaw: [0, 500]}")), ("500",)),
    Case("spec-value-nan", "specs", spec(cube(axes="{object: [dog], yaw: [.nan]}")), ("nan", "finite", "number")),
    Case("spec-empty-file", "specs", spec(""), ("empty", "mapping", "cubes")),
    Case("spec-bad-yaml", "specs", spec("cubes: [unclosed\n"), ("yaml",)),
    Case("spec-missing-file", "specs", cli("precompute", "{tmp}/missing.yaml", "--out", "{tmp}/out.zarr"), ("no such", "not found", "cannot read")),
    Case("featureviz-size-negative", "specs", spec(FEATUREVIZ.replace("size: 32", "size: -5"), command="featureviz"), ("size",)),
    Case("featureviz-unknown-model", "specs", spec(FEATUREVIZ.replace("efficientnet_lite0:", "nope:"), command="featureviz"), ("nope",)),
    # Stores: precompute, verify and view of damaged or odd stores; every file of a store must stay as it was.
    Case("store-path-is-a-file", "stores", cli(*PRE, "{tmp}/file.zarr", prepare=write("file.zarr", "not a store"), store="{tmp}/file.zarr"), ("file", "directory")),
    Case("store-in-read-only-folder", "stores", cli(*PRE, "{tmp}/ro/new.zarr", prepare=read_only, store="{tmp}/ro"), ("writ", "permi", "read-only"), timeout=30.0),
    Case("store-from-another-spec", "stores", cli("precompute", "{tmp}/other.yaml", "--scheduler", "synchronous", "--quiet", "--out", "{store}", prepare=write("other.yaml", cube())), ("different spec", "overwrite")),
    Case("store-corrupt-zarr-json", "stores", damaged(corrupt("zarr.json", b"{not json"), *PRE, "{tmp}/store.zarr"), ("damaged", "corrupt", "zarr.json")),
    Case("store-corrupt-group-zarr-json", "stores", damaged(corrupt("views/zarr.json", b"\x00" * 10), *PRE, "{tmp}/store.zarr"), ("damaged", "corrupt", "zarr.json")),
    Case("store-foreign-zarr", "stores", cli(*PRE, "{tmp}/store.zarr", prepare=foreign_zarr, store="{tmp}/store.zarr"), ("perturber", "not a")),
    Case("verify-truncated-chunk", "stores", damaged(corrupt("views/logits/c/0/1/0/0", truncate=True), "verify", "{tmp}/store.zarr", "--quiet"), ("checksum", "damaged"), code=1),
    Case("verify-deleted-chunk", "stores", damaged(corrupt("views/logits/c/0/0/0/0"), "verify", "{tmp}/store.zarr", "--quiet"), ("missing",), code=1),
    Case("verify-not-a-store", "stores", cli("verify", "{tmp}/empty", prepare=write("empty/readme.txt", "hello"), store="{tmp}/empty"), ("store",)),
    Case("verify-missing-store", "stores", cli("verify", "{tmp}/missing.zarr"), ("no such", "not found", "does not exist", "no zarr store", "not a zarr store")),
    Case("view-corrupt-zarr-json", "stores", damaged(corrupt("zarr.json", b"{not json"), "view", "{tmp}/store.zarr"), ("damaged", "corrupt", "zarr.json"), **VIEW),
    Case("view-not-a-store", "stores", cli("view", "{tmp}/empty", prepare=write("empty/readme.txt", "hello"), store="{tmp}/empty"), ("store",), **VIEW),
    Case("view-missing-store", "stores", cli("view", "{tmp}/missing.zarr"), ("no such", "not found", "does not exist", "no zarr store", "not a zarr store"), **VIEW),
    # Model registries (--models-file): checksums are strings of 64 hex digits; files stay where they are said to be.
    Case("models-sha256-64-zeros-unquoted", "models", registry(registry_entry(ZEROS)), ("sha256",)),
    Case("models-sha256-not-hex", "models", registry(registry_entry("z" * 64)), ("sha256",)),
    Case("models-weights-missing-file", "models", registry(registry_entry(HEX)), ("w.pt", "no such", "not found")),
    Case("models-weights-wrong-sha256", "models", registry(registry_entry(HEX), files={"w.pt": b"not weights"}), ("sha256", "checksum")),
    Case("models-weights-url-refused-port", "models", registry(registry_entry('"' + "a" * 64 + '"', weights="url: 'http://127.0.0.1:1/w.pt'")), ("127.0.0.1", "download", "connect")),
    Case("models-registry-a-list", "models", registry("- a\n- b\n"), ("mapping", "map model names")),
    Case("models-unknown-architecture", "models", registry(registry_entry(X_SHA256).replace("architecture: efficientnet_lite0", "architecture: nope"), files={"w.pt": b"x"}), ("nope", "architecture")),
    Case("models-file-missing", "models", cli("predict", "--models-file", "{tmp}/missing.yaml"), ("no such", "not found", "missing.yaml")),
    Case("models-env-file-missing", "models", cli(*PREDICT, env={"PERTURBER_MODELS": "/nonexistent/models.yaml"}), ("no such", "not found", "models.yaml")),
    Case("models-url-without-digest", "models", registry("bad:\n  architecture: efficientnet_lite0\n  weights: {url: 'http://127.0.0.1:1/w.pt'}\n"
                                                         "  input_size: 224\n  mean: [0, 0, 0]\n  std: [1, 1, 1]\n"), ("--trust",)),
    Case("models-hub-refused-port", "models", cli(*PREDICT[:1], "--models-file", "{tmp}/models.yaml", "--models", "bad", "--size", "32",
                                                 prepare=write("models.yaml", "bad:\n  architecture: torchvision:resnet18\n  weights: {huggingface: a/b, filename: w.ckpt}\n"
                                                               "  input_size: 224\n  mean: [0, 0, 0]\n  std: [1, 1, 1]\n"),
                                                 env={"HF_ENDPOINT": "http://127.0.0.1:1"}), ("127.0.0.1", "hub")),
    Case("models-unknown-class-list", "models", registry(registry_entry(HEX).replace("classes: imagenet", "classes: cifar10")), ("class list", "cifar10")),
    Case("models-unknown-timm-architecture", "models", registry(registry_entry(X_SHA256).replace("architecture: efficientnet_lite0", "architecture: timm:resnet9000"),
                                                                files={"w.pt": b"x"}), ("resnet9000",)),
    Case("models-fetch-unknown", "models", cli("models", "fetch", "nope"), ("nope",)),
    # Meshes: render --object FILE; the PNG must not appear.
    Case("mesh-obj-latin1-byte", "meshes", mesh("caf\u00e9.obj", "# mod\u00e8le\n".encode("latin-1") + TRI.encode()), (), code=(0, 2)),
    Case("mesh-obj-coordinates-1e308", "meshes", mesh("huge.obj", "v 0 0 0\nv 1e308 0 0\nv 0 1e308 0\nf 1 2 3\n"), ("1e+308", "coordinates", "finite")),
    Case("mesh-obj-nan-vertices", "meshes", mesh("nan.obj", "v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"), ("nan", "finite")),
    Case("mesh-obj-no-faces", "meshes", mesh("points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n"), ("face", "triangle")),
    Case("mesh-obj-face-index-out-of-range", "meshes", mesh("index.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99\n"), ("face", "vertex", "index")),
    Case("mesh-obj-empty-file", "meshes", mesh("empty.obj", ""), ("empty", "face", "vertices")),
    Case("mesh-obj-binary-garbage", "meshes", mesh("garbage.obj", bytes(range(256)) * 64), ("garbage.obj",)),
    Case("mesh-3ds", "meshes", mesh("box.3ds", b"MM\x00\x00"), ("supported", "format")),
    Case("mesh-dae-broken", "meshes", mesh("broken.dae", "<?xml version='1.0'?>\n<COLLADA><library_geometries><geometry"), ("broken.dae",)),
    Case("mesh-gltf-trimesh-assertion", "meshes", mesh("box.gltf", gltf(lambda t: t["bufferViews"][1].update(byteLength=10000))), ("bufferview", "buffer")),
    Case("mesh-obj-mtllib-traversal", "meshes", mesh("trav.obj", "mtllib ../../../../etc/passwd\n" + TRI), ("outside",)),
    Case("mesh-obj-mtllib-absolute", "meshes", mesh("abs.obj", "mtllib /etc/passwd\n" + TRI), ("absolute", "outside")),
    Case("mesh-gltf-buffer-uri-traversal", "meshes", mesh("trav.gltf", gltf(uri="../../etc/passwd")), ("outside",)),
    Case("mesh-missing-file", "meshes", cli(*RENDER, "--object", "{tmp}/missing.obj", absent=["{tmp}/out.png"]), ("not found", "no such", "missing")),
    Case("mesh-a-directory", "meshes", cli(*RENDER, "--object", "{tmp}/dir.obj", absent=["{tmp}/out.png"], prepare=write("dir.obj/x", "")), ("directory", "not a file", "dir.obj")),
    # Expressions: the colour expression (--expression) is refused before the render.
    Case("expression-import", "expressions", cli(*RENDER, "--expression", "__import__('os').system('touch pwned')", absent=["{tmp}/out.png", "{tmp}/pwned"]), ("attribute", "__import__")),
    Case("expression-dunder-attribute", "expressions", cli(*RENDER, "--expression", "r.__class__.__bases__", absent=["{tmp}/out.png"]), ("attribute",)),
    Case("expression-power-tower", "expressions", cli(*RENDER, "--expression", "9**9**9", absent=["{tmp}/out.png"]), ("exponent",)),
    Case("expression-string-repetition", "expressions", cli(*RENDER, "--expression", "'a'*10**10", absent=["{tmp}/out.png"]), ("string",)),
    Case("expression-deep-nesting", "expressions", cli(*RENDER, "--expression", "(" * 200 + "r" + ")" * 200, absent=["{tmp}/out.png"]), ("nested",)),
    Case("expression-too-long", "expressions", cli(*RENDER, "--expression", "r+" * 5000 + "r", absent=["{tmp}/out.png"]), ("too long",)),
    Case("expression-parser-warning", "expressions", cli(*RENDER, "--expression", "1if 1else 2", absent=["{tmp}/out.png"]), ("syntax",)),
    Case("expression-not-utf8-argv", "expressions", cli(*RENDER, "--expression", b"r\xff", absent=["{tmp}/out.png"]), ("syntax", "character", "utf")),
    Case("expression-open-file", "expressions", cli(*RENDER, "--expression", "open('pwned', 'w')", absent=["{tmp}/out.png", "{tmp}/pwned"]), ("open",)),
    # Command-line options, each checked before any render, model or cluster.
    Case("precompute-workers-minus-1", "cli", cli("precompute", "{spec}", "--quiet", "--out", "{tmp}/out.zarr", "--workers=-1"), ("workers",)),
    Case("precompute-workers-0", "cli", cli("precompute", "{spec}", "--quiet", "--out", "{tmp}/out.zarr", "--workers", "0"), ("workers",)),
    Case("precompute-scheduler-closed-port", "cli", cli("precompute", "{spec}", "--quiet", "--out", "{tmp}/out.zarr", "--scheduler", "tcp://127.0.0.1:1"), ("127.0.0.1:1", "scheduler", "connect"), timeout=30.0),
    Case("precompute-scheduler-bad-address", "cli", cli("precompute", "{spec}", "--quiet", "--out", "{tmp}/out.zarr", "--scheduler", "nonsense://x"), ("scheduler", "address")),
    Case("precompute-prune-0", "cli", cli(*PRE, "{tmp}/out.zarr", "--prune", "0"), ("prune",)),
    Case("precompute-cluster-missing", "cli", cli("precompute", "{spec}", "--quiet", "--out", "{tmp}/out.zarr", "--cluster", "{tmp}/missing.yaml"), ("no such", "cannot read", "missing.yaml")),
    Case("render-output-a-directory", "cli", cli("render", "-o", "{tmp}", "--size", "32"), ("directory",)),
    Case("render-output-xyz", "cli", cli("render", "-o", "{tmp}/x.xyz", "--size", "32", absent=["{tmp}/x.xyz"]), (".xyz", "png")),
    Case("render-output-read-only-folder", "cli", cli("render", "-o", "{tmp}/ro/x.png", "--size", "32", prepare=read_only, store="{tmp}/ro"), ("writ", "permi", "read-only")),
    Case("render-size-0", "cli", cli("render", "-o", "{tmp}/x.png", "--size", "0", absent=["{tmp}/x.png"]), ("size",)),
    Case("render-size-100000", "cli", cli("render", "-o", "{tmp}/x.png", "--size", "100000", absent=["{tmp}/x.png"]), ("size",)),
    Case("render-yaw-nan", "cli", cli(*RENDER, "--yaw", "nan", absent=["{tmp}/out.png"]), ("yaw",)),
    Case("render-yaw-1e999", "cli", cli(*RENDER, "--yaw", "1e999", absent=["{tmp}/out.png"]), ("yaw",)),
    Case("render-unknown-object", "cli", cli(*RENDER, "--object", "nope", absent=["{tmp}/out.png"]), ("nope",)),
    Case("render-unknown-option", "cli", cli(*RENDER, "--wobble", "1"), ("wobble", "unrecognized")),
    Case("unknown-command", "cli", cli("wobble"), ("wobble", "invalid choice")),
    Case("predict-top-k-5000", "cli", cli(*PREDICT, "--top-k", "5000"), ("top-k",)),
    Case("predict-top-k-0", "cli", cli(*PREDICT, "--top-k", "0"), ("top-k",)),
    Case("predict-models-comma", "cli", cli(*PREDICT, "--models", ","), ("models",)),
    Case("predict-unknown-model", "cli", cli(*PREDICT, "--models", "nope"), ("nope",)),
    Case("sheet-objects-comma", "cli", cli("sheet", "--objects", ",", "-o", "{tmp}/s.png", absent=["{tmp}/s.png"]), ("objects",)),
    Case("sheet-sweep-count-1e12", "cli", cli("sheet", "--sweep", "yaw=0:1:1e12", "-o", "{tmp}/s.png", absent=["{tmp}/s.png"]), ("sweep", "count")),
    # Searches: every option is checked before a model loads; no store may appear.
    Case("fool-class-unknown", "cli", cli("fool", "--model", "efficientnet_lite0", "--method", "gradient", "--classes", "notaclass",
                                          "--store", "{tmp}/f.zarr", absent=["{tmp}/f.zarr"]), ("notaclass",)),
    Case("fool-population-0", "cli", cli("fool", "--model", "efficientnet_lite0", "--population", "0", "--store", "{tmp}/f.zarr",
                                         absent=["{tmp}/f.zarr"]), ("population",)),
    Case("fool-scheduler-closed-port", "cli", cli("fool", "--model", "efficientnet_lite0", "--scheduler", "tcp://127.0.0.1:1",
                                                  "--store", "{tmp}/f.zarr", absent=["{tmp}/f.zarr"]),
         ("127.0.0.1:1", "scheduler", "connect"), timeout=30.0),
    Case("search-factor-not-continuous", "cli", cli("search", "--object", "dog", "--factors", "background", "--store", "{tmp}/s.zarr",
                                                    absent=["{tmp}/s.zarr"]), ("background", "continuous")),
    Case("search-yaw-1000", "cli", cli("search", "--object", "dog", "--yaw", "1000", "--store", "{tmp}/s.zarr",
                                       absent=["{tmp}/s.zarr"]), ("yaw",)),
    Case("search-budget-0", "cli", cli("search", "--object", "dog", "--budget", "0", "--store", "{tmp}/s.zarr",
                                       absent=["{tmp}/s.zarr"]), ("budget",)),
    Case("search-map-factor-not-searched", "cli", cli("search", "--object", "dog", "--factors", "yaw,pitch", "--map", "yaw,hue",
                                                      "--store", "{tmp}/s.zarr", absent=["{tmp}/s.zarr"]), ("hue",)),
    # The viewer: view options are checked before the server starts (a wrongly accepted one serves until killed).
    Case("view-port-minus-1", "viewer", cli("view", "{store}", "--port", "-1"), ("port",), **VIEW),
    Case("view-port-99999", "viewer", cli("view", "{store}", "--port", "99999"), ("port",), **VIEW),
    Case("view-port-in-use", "viewer", view_on_busy_port(), ("port", "in use"), **VIEW),
    Case("view-cube-nope", "viewer", cli("view", "{store}", "--cube", "nope"), ("nope",), **VIEW),
    Case("view-address-public-without-allow-remote", "viewer", cli("view", "{store}", "--address", "0.0.0.0"), ("allow-remote",), **VIEW),
    Case("view-address-not-an-address", "viewer", cli("view", "{store}", "--address", "not an address!"), ("address",), **VIEW),
    Case("view-engine-bad-address", "viewer", cli("view", "{store}", "--engine", "nonsense://x"), ("engine", "address"), **VIEW),
    Case("view-models-file-missing", "viewer", cli("view", "{store}", "--models-file", "{tmp}/missing.yaml"), ("no such", "missing.yaml"), **VIEW),
    Case("view-tab-unknown", "viewer", cli("view", "{store}", "--tab", "Nope"), ("--tab", "no such tab", "Studies"), **VIEW),
    Case("view-imagenet-val-missing", "viewer", cli("view", "{store}", "--imagenet-val", "{tmp}/nope"), ("imagenet-val", "no such folder"), **VIEW),
    Case("view-imagenet-val-not-imagenet", "viewer", cli("view", "{store}", "--imagenet-val", "{tmp}/photos",
                                                         prepare=write("photos/cat.txt", "not a class folder")),
         ("imagenet-val", "neither class folders"), **VIEW),
]



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("bad-inputs"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def results(request, world):
    """Run every selected case of this module at once (a few in parallel); id -> Result."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params]
    return run_all(wanted, world)


def test_the_corpus_covers_every_group():
    assert len(CASES) >= 60
    assert {case.group for case in CASES} == set(GROUPS)
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, results):
    problems = check(case, results[case.id])
    assert not problems, "; ".join(problems)


def test_runner_sees_a_silent_success(world, tmp_path):
    """The checks themselves: a command that succeeds where an error is due is reported, not passed."""
    from bad_inputs.runner import Case, cli

    case = Case("sanity", "cli", cli("--version"), ("error",))
    problems = check(case, run_all([case], world)[case.id])
    assert any("exit code 0" in p for p in problems), problems
    assert Path(world.base).exists()
