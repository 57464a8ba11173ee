"""Reading the YAML files users give Perturber (sweep specs, feature-visualisation
specs, cluster recipes, model registries): one loader with limits.

``yaml.safe_load`` only refuses Python objects. A 389-byte file of nested
aliases (the "billion laughs") still expands, for any code that walks or
prints it, to billions of values, and a deep nesting overflows the stack. So:

* the file is read as UTF-8, at most :data:`MAX_BYTES` (1 MiB; a spec is a few KiB);
* its node graph (composed by libyaml when available) is checked before any
  Python object is built: at most :data:`MAX_NODES` nodes counting every alias
  in full, at most :data:`MAX_DEPTH` levels, no alias inside its own anchor,
  no key twice in one mapping;
* then it is constructed with PyYAML's safe constructor (plain data only).

Every problem is a one-line :class:`YamlError` (or the caller's subclass of
:class:`~perturber.pipeline.errors.PerturberError`) naming the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from perturber.pipeline.errors import PerturberError, one_line

__all__ = ["YamlError", "MAX_BYTES", "MAX_NODES", "MAX_DEPTH", "read_text", "loads", "load_file"]

#: Largest file read (bytes).
MAX_BYTES = 1 << 20
#: Most nodes a document may expand to, each alias counted as the whole node it names.
MAX_NODES = 1_000_000
#: Deepest nesting of sequences and mappings, aliases expanded.
MAX_DEPTH = 64



class _Composer(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # libyaml composes ~5x faster
    """YAML 1.1 as PyYAML reads it, plus YAML 1.2's exponent floats without a
    dot: ``1e-10`` is a number, as a user means it, not the string '1e-10'."""


yaml.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                           list("-+0123456789"), Loader=_Composer)
_MERGE = "tag:yaml.org,2002:merge"


class YamlError(PerturberError):
    """A YAML file cannot be read or is refused; the message is one line."""


def read_text(path: str | Path, error: type[PerturberError] = YamlError, limit: int = MAX_BYTES) -> str:
    """The text of ``path``: UTF-8, at most ``limit`` bytes, else a one-line ``error``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or one_line(exc)})") from None
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        raise error(f"{path}: larger than {size}; a YAML file for Perturber is a few KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def loads(text: str, where: str = "<string>", error: type[PerturberError] = YamlError) -> Any:
    """Parse one YAML document within the limits above (None for an empty one)."""
    try:
        node = yaml.compose(text, Loader=_Composer)
        if node is None:
            return None
        _check_graph(node, where, error)
        return yaml.constructor.SafeConstructor().construct_document(node)
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    except RecursionError:
        raise error(f"{where}: nested more than {MAX_DEPTH} levels deep") from None


def load_file(path: str | Path, error: type[PerturberError] = YamlError) -> Any:
    """Read and parse a YAML file within the limits above."""
    return loads(read_text(path, error), str(path), error)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_graph(root: yaml.Node, where: str, error: type[PerturberError]) -> None:
    """Refuse a node graph that is too big or too deep once aliases are expanded,
    that is recursive, or that has a key twice in a mapping. Iterative and
    memoised by node: an alias bomb is measured without being expanded."""
    size: dict[int, int] = {}  # id(node) → nodes it expands to
    depth: dict[int, int] = {}  # id(node) → levels it expands to
    open_nodes: set[int] = set()  # the current path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        line = node.start_mark.line + 1
        if finished:
            open_nodes.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise error(f"{where}: line {line}: expands to more than {MAX_NODES} values (aliases of aliases?)")
            if depth[key] > MAX_DEPTH:
                raise error(f"{where}: line {line}: nested more than {MAX_DEPTH} levels deep")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise error(f"{where}: line {line}: an alias refers to a node that contains it")
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, where, error)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _check_keys(node: yaml.MappingNode, where: str, error: type[PerturberError]) -> None:
    seen: set[str] = set()
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
            if k.value in seen:
                raise error(f"{where}: line {k.start_mark.line + 1}: key {k.value!r} appears twice in one mapping")
            seen.add(k.value)
