"""Assemble docs/studies.md from its introduction and each study's section (docs/studies/<name>.md).

    .venv/bin/python scripts/studies_doc.py

Each section is written by whoever ran the study here (its figure and table as
run, with the machine and the commit); this script only puts them in the
order of :data:`perturber.pipeline.studies.BUILTIN`.
"""

from __future__ import annotations

from pathlib import Path

from perturber.pipeline import studies

DOCS = Path(__file__).resolve().parents[1] / "docs"

INTRO = """\
# Studies

`perturber study NAME` turns a store into a finding: it computes the cubes the
study needs (`workflows/studies/NAME.yaml`, at full size; resumable, on the
same Dask options as `perturber precompute`), computes the metric with
bootstrap confidence intervals, and writes a tidy table (CSV, and the store's
`studies/NAME` group, which plain `xarray.open_zarr(store, group="studies/NAME")`
opens), a PNG, an interactive HTML figure and a Markdown report with the
definition, the control condition and the published reference next to ours.
`perturber study --list` lists them with their parameters.

Common definitions:

- an object's **class set**: the ImageNet-1k classes it should read as
  (`classes` in data/catalogue.yaml: every dog breed for the dog, the five
  domestic cats for the cat, ...);
- **top-1 in set**: the top-1 class among the 1000 is in the object's class set;
- **class-set probability**: the total softmax probability of the class set
  (the store's `expected_prob`);
- **intervals**: 95 % percentile bootstrap intervals, 1000 draws, seed 0,
  resampling the study's *independent unit* (named in each section): the
  analysis first reduces the cube to one value per unit, then resamples units
  (`perturber.pipeline.studies.bootstrap`).

The published results used models that do not ship offline (torchvision's and
MadryLab's ResNet-50s, the Stylized-ImageNet ResNet-50, Lucid's InceptionV1).
Each report names the registry entries and the one command a user with
internet runs for the published comparison; the numbers below are
EfficientNet-Lite0/1/2 (pip-shipped), run on this project's 2-core machine.
The analyses run out of core with dask (docs/benchmarks.md, "Study analysis
out of core").
"""

#: The searches' sections (``perturber fool``, ``perturber search``), after the studies.
SEARCHES = ("fooling-gradient", "fooling-evolution", "search")

SEARCHES_INTRO = """\
# Searches

Two commands search for inputs that break a model rather than measure a fixed
grid. `perturber fool` looks in pixel space for fooling images (Nguyen et al.
2015): gradient ascent with Yosinski et al.'s regularisers, and evolution with
a direct or a CPPN encoding inside MAP-Elites with one archive cell per
ImageNet class; results go to the store's `fooling/<run>` group. `perturber
search` looks in factor space, off the grid: the smallest change of a scene's
continuous factors that flips a model away from the object's class set
(CMA-ES), and failure maps over two factors (MAP-Elites); results go to
`search/<run>`. Both groups open with plain `xarray.open_zarr`, and the viewer
shows them (Searches section).
"""


def main() -> None:
    names = {module: module.replace("_", "-") for module in studies.BUILTIN}
    names["units_directions"] = "units-vs-directions"
    parts = [INTRO]
    for module in studies.BUILTIN:
        section = DOCS / "studies" / f"{names[module]}.md"
        parts.append(section.read_text() if section.exists() else f"## {names[module]}\n\nNot run here yet.\n")
    parts.append(SEARCHES_INTRO)
    for name in SEARCHES:
        section = DOCS / "studies" / f"{name}.md"
        parts.append(section.read_text() if section.exists() else f"## {name}\n\nNot run here yet.\n")
    (DOCS / "studies.md").write_text("\n".join(p.rstrip() + "\n" for p in parts))
    print(f"wrote {DOCS / 'studies.md'}")


if __name__ == "__main__":
    main()
