"""Shared by the benchmarks: the machine's description and docs/benchmarks.md sections."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu() -> str:
    """'<CPU model>, <n> cores'."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def write_section(path: str, text: str) -> None:
    """Replace the ``## `` section of ``path`` whose title is the first line of ``text``
    (or append it), keeping every other section."""
    title = text.splitlines()[0].strip()
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    sections = old.split("\n## ")
    head, rest = sections[0], ["## " + s for s in sections[1:]]
    replaced = False
    for i, section in enumerate(rest):
        if section.splitlines()[0].strip() == title:
            rest[i] = text.rstrip() + "\n"
            replaced = True
    if not replaced:
        rest.append(text.rstrip() + "\n")
    with open(path, "w") as f:
        f.write(head.rstrip() + "\n\n" + "\n".join(s.rstrip() + "\n" for s in rest))


def publish(lines: list[str], path: str | None) -> None:
    """Print a benchmark's section and, when ``path`` is given, write it there."""
    text = "\n".join(lines)
    print(text)
    if path:
        write_section(path, text)
