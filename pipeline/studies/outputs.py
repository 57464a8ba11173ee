"""What a study writes besides its store group: a CSV, a PNG, an HTML figure and a Markdown report.

A table is tidy: every variable ``v`` with an interval has ``v_lo`` and
``v_hi`` beside it. :func:`default_figure` draws each such variable against
the table's first numeric dimension (lines with a shaded interval, one per
model) or, with none, as bars with error bars; a study with a better picture
registers its own ``figure``. Both figures are drawn from the table alone, so
the viewer redraws them from the store.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from perturber.pipeline import names

__all__ = ["plotting", "measured", "default_figure", "write_outputs", "markdown_table", "machine"]

#: Rows of the table shown in the report (the CSV holds all).
REPORT_ROWS = 64


def plotting() -> tuple[Any, Any]:
    """(matplotlib.pyplot on the Agg backend, holoviews with Bokeh loaded): what every study figure draws with,
    imported only when a figure is drawn."""
    import holoviews as hv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hv.extension("bokeh", logo=False)
    return plt, hv


def measured(ds: xr.Dataset) -> list[str]:
    """The variables that carry an interval (``v`` with ``v_lo`` and ``v_hi``), in table order."""
    return [str(v) for v in ds.data_vars if f"{v}_lo" in ds and f"{v}_hi" in ds]


def _label(ds: xr.Dataset, var: str) -> str:
    attrs = ds[var].attrs
    units = attrs.get("units", "")
    text = attrs.get("long_name", var)
    return f"{text} [{units}]" if units and units != "1" else text


def _numeric_dim(da: xr.DataArray) -> str | None:
    for d in da.dims:
        if d != names.MODEL and d in da.coords and np.issubdtype(da[d].dtype, np.number) and da.sizes[d] > 1:
            return str(d)
    return None


def _series(ds: xr.Dataset, var: str, x: str | None):
    """(label, DataArray of var, lo, hi) per line or bar group: every combination of the dimensions but ``x``."""
    da = ds[var]
    others = [d for d in da.dims if d != x]
    stacked = [(da, ds[f"{var}_lo"], ds[f"{var}_hi"])]
    if not others:
        return [("", *stacked[0])]
    flat = [a.stack(series=others) for a in stacked[0]]
    out = []
    for i in range(flat[0].sizes["series"]):
        key = flat[0]["series"].values[i]
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(str(k) for k in key)
        out.append((label, *(a.isel(series=i, drop=True) for a in flat)))
    return out


def default_figure(ds: xr.Dataset, title: str = "") -> tuple[Any, Any]:
    """(matplotlib Figure, HoloViews Layout) of every measured variable of ``ds``."""
    plt, hv = plotting()
    variables = measured(ds) or [str(v) for v in ds.data_vars][:1]
    fig, axes = plt.subplots(len(variables), 1, figsize=(8, 3.6 * len(variables)), squeeze=False)
    panels = []
    for ax, var in zip(axes[:, 0], variables):
        if f"{var}_lo" not in ds:
            ds = ds.assign({f"{var}_lo": ds[var], f"{var}_hi": ds[var]})
        x = _numeric_dim(ds[var])
        series = _series(ds, var, x)
        overlay = []
        if x:
            xs = ds[x].values
            for label, v, lo, hi in series:
                ax.plot(xs, v.values, marker="o", label=label or var)
                ax.fill_between(xs, lo.values, hi.values, alpha=0.2)
                overlay.append(hv.Curve((xs, v.values), x, var, label=label or var).opts(tools=["hover", "tap"]))
                overlay.append(hv.Spread((xs, v.values, v.values - lo.values, hi.values - v.values), x, [var, "lo", "hi"],
                                         label=label or var).opts(alpha=0.2))
            ax.set_xlabel(ds[x].attrs.get("long_name", x))
        else:
            labels = [label or var for label, *_ in series]
            values = np.array([float(v) for _, v, _, _ in series])
            lo = np.array([float(v) for _, _, v, _ in series])
            hi = np.array([float(v) for _, _, _, v in series])
            ax.bar(range(len(values)), values, yerr=np.abs(np.stack([values - lo, hi - values])), capsize=3, color="#4c72b0")
            ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
            overlay.append(hv.Bars(list(zip(labels, values)), "group", var).opts(tools=["hover", "tap"], xrotation=30))
            overlay.append(hv.ErrorBars(list(zip(labels, values, values - lo, hi - values)), "group", [var, "lo", "hi"]))
        ax.set_ylabel(_label(ds, var), fontsize=8)
        ax.grid(alpha=0.3)
        if x and len(series) > 1:
            ax.legend(fontsize=7, ncol=2)
        panels.append(hv.Overlay(overlay).opts(title=_label(ds, var)[:80], width=640, height=320, show_legend=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig, hv.Layout(panels).cols(1)


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if not np.isfinite(value) else f"{value:.3g}"
    return str(value)


def markdown_table(ds: xr.Dataset, rows: int = REPORT_ROWS) -> str:
    """The table as Markdown: each measured variable as ``value [lo, hi]``; one
    table per set of dimensions (a per-model summary is not repeated on every
    row of a per-level table); at most ``rows`` rows each."""
    shown = measured(ds)
    others = [str(v) for v in ds.data_vars if str(v) not in shown and not str(v).endswith(("_lo", "_hi"))
              and ds[v].ndim <= max((ds[s].ndim for s in shown), default=8)]
    groups: dict[tuple, list[str]] = {}
    for v in shown + others:
        groups.setdefault(tuple(ds[v].dims), []).append(v)
    if not groups:
        return ""
    return "\n\n".join(_one_table(ds, variables, shown, rows) for variables in groups.values())


def _one_table(ds: xr.Dataset, variables: list[str], shown: list[str], rows: int) -> str:
    frame = ds[variables].to_dataframe().reset_index()
    columns = [c for c in frame.columns if c not in variables and c in ds[variables[0]].dims] + variables
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.head(rows).iterrows():
        cells = []
        for c in columns:
            if c in shown:
                lo, hi = ds[f"{c}_lo"], ds[f"{c}_hi"]
                index = {d: row[d] for d in lo.dims}
                cells.append(f"{_cell(row[c])} [{_cell(float(lo.sel(index)))}, {_cell(float(hi.sel(index)))}]")
            else:
                cells.append(_cell(row[c]))
        lines.append("| " + " | ".join(cells) + " |")
    if len(frame) > rows:
        lines.append(f"\n({len(frame) - rows} more rows in the CSV)")
    return "\n".join(lines)


def machine() -> str:
    """This machine and the code's commit, for a report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{cpu}, {os.cpu_count()} cores; commit {commit or 'unknown'}"


def _report(study: Any, ds: xr.Dataset, store: str, files: dict[str, Path]) -> str:
    models = [str(m) for m in ds[names.MODEL].values] if names.MODEL in ds.coords else []
    b = ds.attrs
    interval = (f"{b['bootstrap_level']:.0%} percentile bootstrap intervals over {b['bootstrap_units']} independent "
                f"units ({b['bootstrap_unit']}), {b['bootstrap_draws']} draws, seed {b['bootstrap_seed']}."
                if "bootstrap_unit" in b else "")
    parts = [
        f"# Study: {study.name}",
        f"Store `{store}`, cube(s) `{ds.attrs.get('cube', '')}`, models {', '.join(f'`{m}`' for m in models) or '–'}; "
        f"{machine()}; {datetime.date.today().isoformat()}.",
        "## Definition", study.definition,
        "## Result", f"![{study.name}]({files['png'].name}) (interactive: [{files['html'].name}]({files['html'].name}))",
        markdown_table(ds), interval or "", (f"**Finding.** {b['finding']}" if b.get("finding") else ""),
        "## Control", study.control or "–",
        "## Published reference", study.published or "–",
    ]
    if study.published_models:
        models_arg = ",".join(study.published_models)
        parts += ["The published comparison used models that are not shipped offline. With internet, run:",
                  f"```\nperturber study {study.name} --store {store} --models {models_arg}\n```"]
    parts += ["## Files", "\n".join(f"- {kind}: `{path}`" for kind, path in files.items())]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_outputs(study: Any, ds: xr.Dataset, store: str, out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.csv``, ``figure.png``, ``figure.html`` and ``report.md`` to
    ``out_dir``; returns kind → path (``csv``, ``png``, ``html``, ``report``)."""
    import holoviews as hv
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "table.csv", "png": out / "figure.png", "html": out / "figure.html", "report": out / "report.md"}
    ds.to_dataframe().reset_index().to_csv(files["csv"], index=False) if ds.data_vars else files["csv"].write_text("")
    figure = study.figure or default_figure
    fig, interactive = figure(ds, title=study.name)
    fig.savefig(files["png"], dpi=110)
    plt.close(fig)
    hv.save(interactive, files["html"], backend="bokeh", resources="inline", title=study.name)
    files["report"].write_text(_report(study, ds, store, files))
    return files
