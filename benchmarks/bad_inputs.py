"""The bad-input corpus as a table: run every case of tests/test_bad_inputs.py
through the real command line and write what each one printed.

    python benchmarks/bad_inputs.py --write docs/reliability.md

Writes the section "## Bad inputs" of the markdown file (the other sections
stay): one row per case with its exit code, the one line it printed, whether
its stores were left byte-identical (sha256 of every file; n.a. without a
store) and whether it met every rule of the corpus test. Takes a few minutes
on 2 cores (PERTURBER_CORPUS_JOBS cases at a time, default 3).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the corpus and its runner (tests/bad_inputs/); before this folder
sys.path.insert(1, str(ROOT / "benchmarks"))

import report  # noqa: E402
import test_bad_inputs as corpus  # noqa: E402
from bad_inputs.runner import JOBS, World, check, run_all, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="MARKDOWN", help="replace the '## Bad inputs' section of this file")
    parser.add_argument("-k", metavar="TEXT", default="", help="only the cases whose id holds TEXT")
    args = parser.parse_args()

    cases = [c for c in corpus.CASES if args.k in c.id]
    base = Path(tempfile.mkdtemp(prefix="perturber-bad-inputs-"))
    world = World(base)
    start = time.monotonic()
    try:
        results = run_all(cases, world)
    finally:
        world.close()
        shutil.rmtree(base, ignore_errors=True)
    seconds = time.monotonic() - start
    failing = [c for c in cases if check(c, results[c.id])]
    for c in cases:
        print(f"{results[c.id].seconds:6.1f} s  {c.id}", file=sys.stderr)

    lines = [
        "## Bad inputs",
        "",
        f"{date.today().isoformat()}, {report.cpu()}, `python benchmarks/bad_inputs.py` ({len(cases)} cases, "
        f"{JOBS} at a time, {seconds:.0f} s in all; the same cases as `pytest tests/test_bad_inputs.py`).",
        "Each case runs `python -m perturber ...` in a subprocess. *As required*: the exit code (2 for an input",
        "error; verify reports damage with 1), stderr one line (`perturber: error: ...`, or one warning where the",
        "input is accepted), no traceback, a keyword of the problem in the message, no output left behind, every",
        "store file unchanged (sha256). Messages are cut at 220 characters; `{tmp}` is the case's temporary folder.",
        "",
        *table(cases, results, base),
        "",
        f"{len(cases) - len(failing)} of {len(cases)} cases as required"
        + (f"; not yet: {', '.join(f'`{c.id}`' for c in failing)}." if failing else "."),
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
