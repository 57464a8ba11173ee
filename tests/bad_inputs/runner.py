"""How the bad-input corpus (tests/test_bad_inputs.py) runs: its fixtures, its
case builders, one subprocess per case, the checks and the markdown table.

A :class:`Case` is one row: an id, a group, a builder that makes the case's
files in its own folder and returns a :class:`Setup` (the command line, the
stores to checksum, the paths that must not appear), the keywords the message
should hold (any one of them, case-insensitive) and the exit codes allowed.
Command lines hold placeholders: ``{tmp}`` (the case's folder), ``{spec}``
(a real 2-sample spec) and ``{store}`` (a fresh copy of its real store).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("specs", "stores", "models", "meshes", "expressions", "cli", "viewer")
JOBS = int(os.environ.get("PERTURBER_CORPUS_JOBS", "3"))  # cases run at once
MEMORY_LIMIT = 8 << 30  # bytes of address space per case: a runaway allocation fails instead of swamping the machine

TINY_SPEC = """\
name: tiny
cubes:
  views:
    axes: {object: [dog], yaw: [0, 90]}
    models: [efficientnet_lite0]
    layers: [head]
    neurons: {head: 2}
    images: false
    size: 64
"""


class World:
    """The module's real fixtures, under ``base``: the tiny spec, and its store
    (precomputed on first use, once, by the real command line)."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.spec = self.base / "tiny.yaml"
        self.spec.write_text(TINY_SPEC)
        self._store: Path | None = None
        self._lock = threading.Lock()
        self._frozen: list[Path] = []

    @property
    def store(self) -> Path:
        with self._lock:
            if self._store is None:
                out = self.base / "tiny.zarr"
                done = subprocess.run(
                    [sys.executable, "-m", "perturber", "precompute", str(self.spec), "--out", str(out),
                     "--scheduler", "synchronous", "--quiet"], cwd=self.base, capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    raise RuntimeError(f"the corpus's store could not be made: {done.stderr.strip()[-500:]}")
                self._store = out
            return self._store

    def read_only_folder(self, path: Path) -> Path:
        """An existing folder nobody can write into, not even root (chattr +i when root)."""
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            path.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            raise RuntimeError("cannot make a read-only folder here (running as root, chattr +i failed)")
        with self._lock:
            self._frozen.append(path)
        return path

    def close(self) -> None:
        """Make the read-only folders writable again, so the temporary tree can be removed."""
        for path in self._frozen:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(path)], capture_output=True)
            else:
                path.chmod(0o755)


@dataclass
class Setup:
    """What a case runs: ``argv`` after ``perturber``; ``stores`` are checksummed
    before and after; ``absent`` must not exist afterwards; ``env`` is added."""

    argv: list
    stores: list[Path] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None


Builder = Callable[[Path, World], Setup]


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    build: Builder
    expect: tuple[str, ...]  # the output holds one of these (any case); () for none
    code: int | tuple[int, ...] = 2
    timeout: float = 60.0

    @property
    def codes(self) -> tuple[int, ...]:
        return self.code if isinstance(self.code, tuple) else (self.code,)


@dataclass
class Result:
    code: int | None  # None: it hung (killed at the case's timeout)
    stdout: str
    stderr: str
    seconds: float
    intact: bool | None  # every store file unchanged; None when the case has no store
    left_behind: list[str]
    error: str = ""  # the case could not be set up

    @property
    def message(self) -> str:
        """The line a user sees: stderr's first line, else stdout's."""
        for text in (self.stderr, self.stdout):
            lines = [line for line in text.splitlines() if line.strip()]
            if lines:
                return lines[0].strip()
        return ""


# ----------------------------------------------------------------- builders


def _fill(arg, tmp: Path, world: World, setup: Setup):
    if isinstance(arg, bytes) or "{" not in str(arg):
        return arg
    if "{store}" in arg and not any(p.name == "store.zarr" for p in setup.stores):
        shutil.copytree(world.store, tmp / "store.zarr")
        setup.stores.append(tmp / "store.zarr")
    return arg.replace("{tmp}", str(tmp)).replace("{spec}", str(world.spec)).replace("{store}", str(tmp / "store.zarr"))


def cli(*argv, absent: Sequence[str] = (), prepare: Callable[[Path, World], object] | None = None,
        store: str | None = None, env: dict | None = None) -> Builder:
    """A command line with placeholders; ``prepare(tmp, world)`` makes files first
    (it may return a cleanup function); ``store`` (a path with placeholders) is checksummed too."""

    def build(tmp: Path, world: World) -> Setup:
        setup = Setup([], env=dict(env or {}))
        cleanup = prepare(tmp, world) if prepare else None
        setup.argv = [_fill(a, tmp, world, setup) for a in argv]
        setup.absent = [Path(_fill(a, tmp, world, setup)) for a in absent]
        if store:
            setup.stores.append(Path(_fill(store, tmp, world, setup)))
        setup.cleanup = cleanup if callable(cleanup) else None
        return setup

    return build


def write(name: str, body: str | bytes) -> Callable[[Path, World], None]:
    """prepare= that writes one file into the case's folder."""

    def prepare(tmp: Path, world: World) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)

    return prepare


def spec(body: str | bytes, *extra: str, command: str = "precompute") -> Builder:
    """A spec file run by ``precompute`` (or ``featureviz``) into a new store that must not appear."""
    return cli(command, "{tmp}/spec.yaml", "--out", "{tmp}/out.zarr", "--scheduler", "synchronous", "--quiet",
               *extra, absent=["{tmp}/out.zarr"], prepare=write("spec.yaml", body))


def mesh(name: str, body: str | bytes | Callable[[Path], None], *extra: str) -> Builder:
    """``render --object FILE``; the PNG must not appear."""
    prepare = (lambda tmp, world: body(tmp / name)) if callable(body) else write(name, body)
    return cli("render", "--object", f"{{tmp}}/{name}", "-o", "{tmp}/out.png", "--size", "32", *extra,
               absent=["{tmp}/out.png"], prepare=prepare)


def registry(body: str, *extra: str, files: dict | None = None) -> Builder:
    """``predict --models-file FILE --models bad``, with more ``files`` (name: bytes) beside it."""

    def prepare(tmp: Path, world: World) -> None:
        for name, data in {"models.yaml": body, **(files or {})}.items():
            write(name, data)(tmp, world)

    return cli("predict", "--models-file", "{tmp}/models.yaml", "--models", "bad", "--size", "32", *extra, prepare=prepare)


def damaged(damage: Callable[[Path], None], *argv: str) -> Builder:
    """A copy of the real store, damaged by ``damage(store)``, then ``argv``; checksummed around the command."""

    def prepare(tmp: Path, world: World) -> None:
        shutil.copytree(world.store, tmp / "store.zarr")
        damage(tmp / "store.zarr")

    return cli(*argv, prepare=prepare, store="{tmp}/store.zarr")


# -------------------------------------------------------------- running


def checksums(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path``), folders listed too."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(path.rglob("*")) if path.exists() else []:
        out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def run_case(case: Case, world: World) -> Result:
    tmp = world.base / "cases" / case.id
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        setup = case.build(tmp, world)
    except Exception as exc:  # the fixture, not the command: reported as the case's failure
        return Result(None, "", "", 0.0, None, [], error=f"setup failed: {type(exc).__name__}: {exc}")
    before = [checksums(p) for p in setup.stores]
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl", **setup.env}
    if "PERTURBER_MODELS" not in setup.env:
        env.pop("PERTURBER_MODELS", None)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "perturber", *setup.argv], cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (OSError, ValueError):
        pass  # it already ended
    try:
        out, err = proc.communicate(timeout=case.timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and anything it started
        out, err = proc.communicate()
        code = None
    seconds = time.monotonic() - start
    if setup.cleanup:
        setup.cleanup()
    intact = None if not setup.stores else all(checksums(p) == b for p, b in zip(setup.stores, before))
    left = [str(p) for p in setup.absent if p.exists()]
    return Result(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), seconds, intact, left)


def run_all(cases: Sequence[Case], world: World, jobs: int = JOBS) -> dict[str, Result]:
    """Run ``cases``, ``jobs`` at a time; id -> Result."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip([c.id for c in cases], pool.map(lambda c: run_case(c, world), cases)))


def check(case: Case, result: Result) -> list[str]:
    """What is wrong with ``result`` by the house rules; [] when the case passes."""
    if result.error:
        return [result.error]
    if result.code is None:
        return [f"hung: no answer in {case.timeout:g} s"]
    problems = []
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = f"(stderr: {lines[0][:160]!r}, {len(lines)} lines)" if lines else "(stderr empty)"
    if result.code not in case.codes:
        problems.append(f"exit code {result.code}, expected {' or '.join(map(str, case.codes))} {shown}")
    if "Traceback" in result.stdout + result.stderr:
        problems.append("a traceback in the output")
    if result.code == 2 and not (len(lines) == 1 and lines[0].startswith("perturber: error: ")):
        problems.append(f"stderr is not one 'perturber: error:' line {shown}")
    elif result.code != 2 and len(lines) > 1:
        problems.append(f"stderr has {len(lines)} lines {shown}")
    text = (result.stderr + result.stdout).lower()
    if case.expect and not any(k.lower() in text for k in case.expect):
        problems.append(f"the message names none of {case.expect} {shown}")
    if result.intact is False:
        problems.append("the store changed")
    if result.left_behind and result.code != 0:  # a refused input leaves nothing behind
        problems.append(f"left behind {', '.join(result.left_behind)}")
    return problems


def table(cases: Sequence[Case], results: dict[str, Result], base: Path | None = None) -> list[str]:
    """The markdown rows of the corpus table (header included); paths under
    ``base`` (the World's folder) read {tmp} (the case's folder) and {base}."""
    rows = ["| case | exit code | message | stores intact | as required |", "| --- | --- | --- | --- | --- |"]
    for case in cases:
        r = results[case.id]
        code = "hung" if r.code is None and not r.error else ("setup failed" if r.error else str(r.code))
        message = r.error or r.message or "(nothing)"
        if base is not None:
            message = message.replace(str(Path(base) / "cases" / case.id), "{tmp}").replace(str(base), "{base}")
        message = message.replace("|", "\\|").replace("`", "'")
        if len(message) > 220:
            message = message[:217] + "..."
        intact = "n.a." if r.intact is None else ("yes" if r.intact else "**no**")
        ok = "yes" if not check(case, r) else "**no**"
        rows.append(f"| `{case.id}` | {code} | {message} | {intact} | {ok} |")
    return rows
