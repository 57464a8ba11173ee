"""Custom colour expressions: a small, sandboxed, GLSL-flavoured language.

The original tool let users type GLSL shader code to recolour an image. Here a
user types one *expression* over the per-pixel channels ``r``, ``g``, ``b``
(floats in [0, 1]) and one slider parameter ``p`` (a float per sample)::

    ((r - 0.5) * p + 0.5, (g - 0.5) * p + 0.5, (b - 0.5) * p + 0.5)   # contrast
    0.299 * r + 0.587 * g + 0.114 * b                                  # grey
    mix(r, 1 - r, p)                                                   # fade to negative

The text is parsed with :mod:`ast` and checked against a whitelist *before*
anything runs; evaluation walks the checked tree with torch (or numpy) operations
(:mod:`perturber.pipeline.expression_ops`), never with eval or exec.
User text is never given to ``eval``, ``exec`` or ``compile``, and nothing in
it can reach Python objects, attributes, imports or builtins.

The language:

* The whole expression is a tuple of three values (new r, g, b) or a single
  value (a grey level used for all three channels).
* Numbers (int or float literals, ``|x| <= MAX_CONSTANT``); names ``r g b p``
  and the constants ``pi e``; unary ``+ -``; binary ``+ - * / % **``.
* Comparisons ``< <= > >= == !=`` give 0.0 or 1.0. Chained comparisons are
  allowed and mean what they mean in Python: ``0.2 < r < 0.8`` is
  ``(0.2 < r) * (r < 0.8)``.
* ``x if cond else y`` picks ``x`` where ``cond != 0`` (both sides are computed).
* Calls, by bare name only, with positional arguments only: see ``FUNCTIONS``.
* Exponents (``a ** b`` and ``pow(a, b)``): an exponent made of numbers alone
  is worked out when the expression is checked and must lie in
  [-MAX_EXPONENT, MAX_EXPONENT], else the expression is rejected
  (``r ** 1000``, ``9 ** 9 ** 9``). An exponent that uses ``r g b`` or ``p``
  is allowed and clamped to that range per pixel when evaluated (``r ** p``).
  As in GLSL, a negative base with a fractional exponent has no value (NaN).
* ``%`` is the floor modulo of Python and GLSL's ``mod``.

Division by zero and the like give inf or NaN, never an error;
:func:`apply_expression` maps those to 0 or 1 and clamps to [0, 1].
Everything else (attributes, subscripts, strings, lambdas, comprehensions,
keywords, ``*args``, ``:=``, unknown names or functions, over-long or over-deep
text, text Python's parser warns about such as ``1if 1else 2``) raises
:class:`ExpressionError`, a PerturberError, with a one-line message; checking
prints nothing. tests/test_expression_fuzz.py fuzzes all of this.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perturber.pipeline.errors import PerturberError
from perturber.pipeline.expression_ops import (
    BINARY, COMPARE, CONSTANTS, FUNCTIONS, MAX_EXPONENT, VARIABLES, backend, backend_of, evaluate,
)

__all__ = [
    "DEFAULT_EXPRESSION",
    "FUNCTIONS",
    "MAX_CONSTANT",
    "MAX_DEPTH",
    "MAX_EXPONENT",
    "MAX_LENGTH",
    "MAX_NODES",
    "Expression",
    "ExpressionError",
    "apply_expression",
    "compile_expression",
]

#: The default: the original tool's contrast (p = 1 is the identity, p = 0 flat grey).
DEFAULT_EXPRESSION = "((r - 0.5) * p + 0.5, (g - 0.5) * p + 0.5, (b - 0.5) * p + 0.5)"

MAX_LENGTH = 500  # characters
MAX_NODES = 200  # AST nodes (values, operations and calls)
MAX_DEPTH = 30  # nesting depth of the AST, and of brackets in the text
MAX_CONSTANT = 1e6  # largest absolute value of a numeric literal


class ExpressionError(PerturberError):
    """An expression that is not allowed; the message says what is wrong, on one line.

    A PerturberError (so a ValueError), like every error a command reports in one line.
    """


_SYMBOLS = {
    ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
    ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^", ast.Invert: "~", ast.Not: "not",
    ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
}
# Constructs that are always refused, with their messages.
_REFUSED = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Slice: "subscripts are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Starred: "starred arguments are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.List: "lists are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.BoolOp: "'and' and 'or' are not allowed (use min, max or *)",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}
# AST leaves that are not values (load context, operator tokens): not counted.
_MARKERS = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)


@dataclass(frozen=True)
class Expression:
    """A checked colour expression; call it on channel tensors.

    Making one checks ``text`` fully (raises :class:`ExpressionError`);
    prefer :func:`compile_expression`, which caches by text.
    """

    text: str
    _values: tuple[ast.expr, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_values", _check(self.text))

    def __call__(self, r: Any, g: Any, b: Any, p: Any) -> tuple[Any, Any, Any]:
        """Evaluate on one channel each: r, g, b (B, H, W) float, p (B,) float;
        torch tensors (images) or numpy arrays.

        Returns new (r, g, b), each of the shape, dtype and device of ``r``,
        unclamped and possibly inf or NaN. They may be expanded views of one
        tensor or of the inputs themselves; copy before writing into them.
        """
        if not (r.shape == g.shape == b.shape):
            raise ValueError(f"r, g and b must have the same shape, got {tuple(r.shape)}, {tuple(g.shape)}, {tuple(b.shape)}")
        k = backend_of(r)
        if not k.is_float(r):
            raise ValueError(f"r, g and b must be floating point, got {r.dtype}")
        p, g, b = k.as_array(p, r), k.as_array(g, r), k.as_array(b, r)
        if p.ndim == 1 and r.ndim >= 1:
            p = p.reshape(p.shape + (1,) * (r.ndim - 1))  # (B,) -> (B, 1, 1)
        names = {"r": r, "g": g, "b": b, "p": p}
        names.update({name: k.constant(v, r) for name, v in CONSTANTS.items()})
        outputs = [k.broadcast_to(evaluate(node, names, r, k), r.shape) for node in self._values]
        if len(outputs) == 1:
            outputs *= 3
        return outputs[0], outputs[1], outputs[2]


@functools.lru_cache(maxsize=256)
def _compile_cached(text: str) -> Expression:
    return Expression(text)


def compile_expression(text: str) -> Expression:
    """Check ``text`` and return it as an :class:`Expression` (cached by text).

    Raises :class:`ExpressionError` with a one-line message if it is not allowed.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    return _compile_cached(text)


def apply_expression(images: Any, text: str | Expression, p: Any) -> Any:
    """Recolour ``images`` with the expression ``text`` at slider values ``p``.

    images (B, 3, H, W) float RGB torch tensor in [0, 1]; p (B,) float (or a
    scalar for all samples). Returns a new (B, 3, H, W) tensor in [0, 1] on the
    same device: NaN becomes 0, +inf 1 and -inf 0, then everything is clamped
    to [0, 1]. Raises :class:`ExpressionError` for a bad expression,
    ValueError for bad shapes.
    """
    import torch  # heavy: checking an expression does not need it

    expression = text if isinstance(text, Expression) else compile_expression(text)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    p = torch.as_tensor(p, dtype=images.dtype, device=images.device)
    if p.ndim == 0:
        p = p.expand(images.shape[0])
    if p.shape != images.shape[:1]:
        raise ValueError(f"p must be ({images.shape[0]},), got {tuple(p.shape)}")
    out = torch.stack(expression(images[:, 0], images[:, 1], images[:, 2], p), dim=1)
    return torch.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


# --------------------------------------------------------------------- checking


def _check(text: str) -> tuple[ast.expr, ...]:
    """Parse and check ``text``; return the 1 or 3 value trees. Runs nothing."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is too long ({len(text)} > {MAX_LENGTH} characters)")
    source = text.strip()
    if not source:
        raise ExpressionError("expression is empty")
    brackets = _bracket_depth(source)
    if brackets > MAX_DEPTH:
        raise ExpressionError(f"expression is nested too deeply ({brackets} > {MAX_DEPTH} levels)")

    try:
        tree = _parse(source)
    except SyntaxError as exc:
        raise ExpressionError(_syntax_message(exc, text, source)) from None
    except UnicodeEncodeError as exc:  # a lone surrogate: how argv decodes bytes that are not UTF-8
        column = exc.start + 1 + len(text) - len(text.lstrip())
        raise ExpressionError(f"syntax error at column {column}: not valid text (bytes that are not UTF-8?)") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise ExpressionError(f"syntax error: {_one_line(str(exc)) or type(exc).__name__}") from None

    nodes = [n for n in ast.walk(tree.body) if not isinstance(n, _MARKERS)]
    if len(nodes) > MAX_NODES:
        raise ExpressionError(f"expression is too complex ({len(nodes)} > {MAX_NODES} nodes)")
    depth = _depth(tree.body)
    if depth > MAX_DEPTH:
        raise ExpressionError(f"expression is nested too deeply ({depth} > {MAX_DEPTH} levels)")

    values = tree.body.elts if isinstance(tree.body, ast.Tuple) else [tree.body]
    for value in values:
        _check_node(value, source)
    if len(values) not in (1, 3):
        raise ExpressionError(f"expected 1 or 3 values, got {len(values)}")
    return tuple(values)


_FILENAME = "<colour expression>"  # what the parser's warnings about the text are attributed to
_PARSE_LOCK = threading.Lock()


def _parse(source: str) -> ast.Expression:
    """``ast.parse`` in eval mode; a warning about the text (printed on stderr,
    e.g. ``1if 1else 2``, which a later Python refuses) is a SyntaxError instead.
    Other threads' warnings are shown as usual; ``catch_warnings`` swaps
    process-wide state, so two parses must not overlap."""
    with _PARSE_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("error", module=re.escape(_FILENAME))
        return ast.parse(source, filename=_FILENAME, mode="eval")


def _check_node(node: ast.AST, source: str) -> None:
    """Raise ExpressionError unless ``node`` and everything under it is allowed."""
    if type(node) in _REFUSED:
        raise ExpressionError(_REFUSED[type(node)])

    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, (str, bytes)):
            raise ExpressionError("strings are not allowed")
        if type(value) not in (int, float):  # bool, None, complex, Ellipsis
            raise ExpressionError(f"{_snippet(node, source)} is not allowed (only numbers are)")
        if not abs(value) <= MAX_CONSTANT:  # also catches inf and NaN
            raise ExpressionError(f"constant {_snippet(node, source)} is too large (at most {MAX_CONSTANT:g})")

    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ExpressionError(f"'{node.id}' is a function; call it as {node.id}(...)")
        if node.id not in VARIABLES and node.id not in CONSTANTS:
            raise ExpressionError(f"unknown name '{node.id}' (allowed: {', '.join(VARIABLES + tuple(CONSTANTS))})")

    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.UAdd, ast.USub)):
            raise ExpressionError(f"operator '{_SYMBOLS.get(type(node.op), '?')}' is not allowed")
        _check_node(node.operand, source)

    elif isinstance(node, ast.BinOp):
        if type(node.op) not in BINARY:
            hint = " (use floor(a / b))" if isinstance(node.op, ast.FloorDiv) else ""
            raise ExpressionError(f"operator '{_SYMBOLS.get(type(node.op), '?')}' is not allowed{hint}")
        _check_node(node.left, source)
        _check_node(node.right, source)
        if isinstance(node.op, ast.Pow):
            _check_exponent(node.right)

    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in COMPARE:
                raise ExpressionError(f"operator '{_SYMBOLS.get(type(op), '?')}' is not allowed")
        for operand in [node.left, *node.comparators]:
            _check_node(operand, source)

    elif isinstance(node, ast.IfExp):
        for part in (node.test, node.body, node.orelse):
            _check_node(part, source)

    elif isinstance(node, ast.Call):
        _check_call(node, source)

    elif isinstance(node, ast.Tuple):
        raise ExpressionError("tuples are only allowed around the whole expression, as (r, g, b)")

    else:
        raise ExpressionError(f"{type(node).__name__} is not allowed")


def _check_call(node: ast.Call, source: str) -> None:
    if not isinstance(node.func, ast.Name):
        _check_node(node.func, source)  # attribute access, a call of a call, ...
        raise ExpressionError("only functions called by name are allowed")
    name = node.func.id
    if name not in FUNCTIONS:
        raise ExpressionError(f"function '{name}' is not allowed (allowed: {', '.join(FUNCTIONS)})")
    if node.keywords:
        if any(k.arg is None for k in node.keywords):
            raise ExpressionError("starred arguments are not allowed")
        raise ExpressionError(f"keyword arguments are not allowed ({name}({node.keywords[0].arg}=...))")
    for arg in node.args:
        _check_node(arg, source)
    arity = FUNCTIONS[name][0]
    if len(node.args) != arity:
        plural = "argument" if arity == 1 else "arguments"
        raise ExpressionError(f"{name}() takes {arity} {plural}, got {len(node.args)}")
    if name == "pow":
        _check_exponent(node.args[1])


def _check_exponent(node: ast.expr) -> None:
    """Reject an exponent made of numbers alone that is outside [-MAX_EXPONENT, MAX_EXPONENT].

    ``node`` has been checked already, so working it out here is safe: its
    own exponents are within range and it only does float arithmetic.
    """
    if any(isinstance(n, ast.Name) and n.id in VARIABLES for n in ast.walk(node)):
        return  # clamped per pixel when evaluated
    like = np.zeros((), dtype=np.float64)
    k = backend("numpy")
    names = {name: k.constant(v, like) for name, v in CONSTANTS.items()}
    with np.errstate(all="ignore"):  # 1 / 0 is inf, as for images
        value = float(evaluate(node, names, like, k))
    if math.isnan(value):
        raise ExpressionError("exponent is not a number")
    if not abs(value) <= MAX_EXPONENT:
        raise ExpressionError(f"exponent {_format(value)} is too large (at most {MAX_EXPONENT})")


def _depth(root: ast.AST) -> int:
    """Nesting depth of the value nodes under ``root`` (a lone name is 1), without recursion."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node) if not isinstance(child, _MARKERS))
    return deepest


def _bracket_depth(text: str) -> int:
    """Deepest nesting of (), [] and {} in ``text``, read as plain characters."""
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _syntax_message(exc: SyntaxError, text: str, source: str) -> str:
    message = _one_line(exc.msg or "invalid syntax")
    line, column = exc.lineno or 1, exc.offset
    if not column or column < 1:
        return f"syntax error: {message}"
    if line == 1:
        column += len(text) - len(text.lstrip())  # columns of what the user typed
        return f"syntax error at column {column}: {message}"
    return f"syntax error at line {line}, column {column}: {message}"


def _snippet(node: ast.AST, source: str, limit: int = 24) -> str:
    """What the user typed for ``node``, on one line and shortened."""
    text = _one_line(ast.get_source_segment(source, node) or type(node).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _format(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


