"""``perturber models``: the model registry, and fetching weights.

    perturber models                                   # every entry: source, size, status, description
    perturber models fetch resnet50_robust_l2_eps3     # download with a progress bar, resumable, verified
    perturber models fetch inceptionv1 --trust         # a URL without a digest: download once, pin its sha256

Status, without any network: ``ready`` (a local file: pip-shipped or a file
entry), ``cached`` (downloaded and verified before), ``needs download``,
``needs --trust`` (a URL that publishes no digest) or ``missing``.
How each source is verified: :mod:`perturber.pipeline.weights`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from perturber.pipeline.options import names_option


def add_parser(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", parents=list(parents), help="list the model registry; fetch weights (verified, resumable)",
                       description="List every registry entry with its weights' source, size, status and description; "
                                   "`perturber models fetch NAME` downloads weights with a progress bar, resumable, verified.")
    p.add_argument("words", nargs="*", metavar="[list|fetch] NAME",
                   help="list (the default) or fetch, then model names (comma- or space-separated): "
                        "the models to fetch, or the only ones to list")
    p.add_argument("--trust", action="store_true",
                   help="fetch: accept a URL that publishes no digest, and pin the downloaded file's sha256 "
                        "in your registry (PERTURBER_CONFIG/models.yaml) so later loads verify it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_models)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def _describe(s) -> str:
    text = s.description
    if s.checkpoint_of:
        f = s.finetune
        facts = [f"step {f['step']}" if "step" in f else "", f"{f['mode']}" if "mode" in f else ""]
        for key in ("clean_accuracy", "robust_accuracy"):
            if isinstance(f.get(key), (int, float)):
                facts.append(f"{key.split('_')[0]} {f[key]:.2f}")
        text = f"fine-tuned from {s.checkpoint_of} ({', '.join(x for x in facts if x)})" + (f"; {text}" if text else "")
    return text


def _action_and_names(words: Sequence[str]) -> tuple[str, list[str]]:
    action = words[0] if words and words[0] in ("list", "fetch") else "list"
    rest = words[1:] if words and words[0] in ("list", "fetch") else words
    return action, [n for word in rest for n in names_option(word)]


def list_models(names: Sequence[str] = ()) -> list[dict[str, str]]:
    """One row per registry entry (or only ``names``): name, source, size, status, description."""
    from perturber.pipeline import models, weights

    entries = models.registry()
    for name in names:
        models.spec(name)  # unknown names: one line listing the known ones
    rows = []
    for name, s in entries.items():
        if names and name not in names:
            continue
        st = weights.status(s)
        rows.append({"name": name, "source": weights.describe_source(s), "size": _size(st.size), "status": st.state,
                     "description": _describe(s)})
    return rows


def _print_table(rows: list[dict[str, str]]) -> None:
    columns = [("name", 28), ("status", 14), ("size", 9), ("source", 60), ("description", 0)]
    print("  ".join(f"{c.upper():<{w}}" if w else c.upper() for c, w in columns))
    for row in rows:
        cells = []
        for column, width in columns:
            text = row[column]
            if width and len(text) > width:
                text = text[: width - 1] + "…"
            cells.append(f"{text:<{width}}" if width else text)
        print("  ".join(cells).rstrip())


def fetch(name: str, trust: bool = False, progress: bool | None = None) -> str:
    """Download and verify the weights of ``name`` (pinning the digest when
    ``trust`` accepted a URL without one); returns a one-line report."""
    from perturber.pipeline import models, registry_file, weights

    s = models.spec(name)
    before = weights.status(s).state
    pin = trust and weights.needs_trust(s)  # a file downloaded before, never pinned, is pinned now
    path = weights.weights_file(s, fetch=True, trust=pin, progress=progress)
    size = _size(path.stat().st_size)
    if pin:  # a pin record, not a copy of the entry: later fixes of the entry itself still reach the user
        digest = weights.sha256_of(path)
        where = registry_file.write_entries({name: {"pin": {"url": str(s.weights["url"]), "sha256": digest}}})
        return f"{name}: {path} ({size}); trusted and pinned sha256 {digest} in {where}"
    verb = "already there" if before in ("ready", "cached") else "downloaded"
    how = weights.verification(s)
    checked = "unverified (no sha256 in its entry)" if how.startswith("unverified") else f"verified ({how})"
    return f"{name}: {verb}, {checked}: {path} ({size})"


def cmd_models(args) -> int:
    from perturber.pipeline.errors import PerturberError

    action, names = _action_and_names(args.words)
    if action == "list":
        _print_table(list_models(names))
        return 0
    if not names:
        raise PerturberError("models fetch: name the models to fetch (see `perturber models`)")
    for name in names:
        print(fetch(name, args.trust, progress=False if args.quiet else None), flush=True)
    return 0
