"""What a colour expression can compute: its functions and operators, evaluated
on torch tensors (images) or numpy values (when an expression is checked).

:mod:`perturber.pipeline.expression` parses and checks an expression's text;
this module walks a checked tree. One table, :data:`FUNCTIONS`, defines each
function once in terms of a backend's primitives, so the numpy backend (no
torch needed) and the torch backend compute the same thing.
"""

from __future__ import annotations

import ast
import functools
import math
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

__all__ = ["FUNCTIONS", "BINARY", "COMPARE", "VARIABLES", "CONSTANTS", "MAX_EXPONENT", "backend", "backend_of", "evaluate"]

MAX_EXPONENT = 16  # largest |exponent| of ** and pow()

VARIABLES = ("r", "g", "b", "p")
CONSTANTS = {"pi": math.pi, "e": math.e}


# One evaluator serves torch tensors (images) and numpy values (exponents made
# of numbers alone are worked out when an expression is checked, without
# torch). A backend names the same primitives for either.


@functools.lru_cache(maxsize=None)
def backend(kind: str) -> SimpleNamespace:
    """The primitives of ``kind`` ("numpy" or "torch")."""
    if kind == "numpy":
        return SimpleNamespace(
            add=np.add, sub=np.subtract, mul=np.multiply, div=np.divide, remainder=np.remainder,
            lt=np.less, le=np.less_equal, gt=np.greater, ge=np.greater_equal, eq=np.equal, ne=np.not_equal,
            where=np.where, clamp=np.clip, minimum=np.minimum, maximum=np.maximum, pow=np.power,
            sin=np.sin, cos=np.cos, tan=np.tan, asin=np.arcsin, acos=np.arccos, atan=np.arctan, atan2=np.arctan2,
            exp=np.exp, log=np.log, sqrt=np.sqrt, abs=np.abs, floor=np.floor, ceil=np.ceil,
            broadcast_to=np.broadcast_to,
            constant=lambda value, like: np.asarray(float(value), dtype=like.dtype),
            as_float=lambda mask, like: np.asarray(mask).astype(like.dtype),
            as_array=lambda value, like: np.asarray(value, dtype=like.dtype),
            is_float=lambda value: value.dtype.kind == "f",
        )
    import torch  # heavy: only when tensors are evaluated

    return SimpleNamespace(
        add=torch.add, sub=torch.sub, mul=torch.mul, div=torch.div, remainder=torch.remainder,
        lt=torch.lt, le=torch.le, gt=torch.gt, ge=torch.ge, eq=torch.eq, ne=torch.ne,
        where=torch.where, clamp=torch.clamp, minimum=torch.minimum, maximum=torch.maximum, pow=torch.pow,
        sin=torch.sin, cos=torch.cos, tan=torch.tan, asin=torch.asin, acos=torch.acos, atan=torch.atan,
        atan2=torch.atan2, exp=torch.exp, log=torch.log, sqrt=torch.sqrt, abs=torch.abs, floor=torch.floor,
        ceil=torch.ceil, broadcast_to=torch.broadcast_to,
        constant=lambda value, like: torch.tensor(float(value), dtype=like.dtype, device=like.device),
        as_float=lambda mask, like: mask.to(like.dtype),
        as_array=lambda value, like: torch.as_tensor(value, dtype=like.dtype, device=like.device),
        is_float=lambda value: value.is_floating_point(),
    )


def backend_of(value: Any) -> SimpleNamespace:
    return backend("torch" if type(value).__module__.startswith("torch") else "numpy")


def _power(k: SimpleNamespace, base: Any, exponent: Any) -> Any:
    return k.pow(base, k.clamp(exponent, -MAX_EXPONENT, MAX_EXPONENT))


def _smoothstep(k: SimpleNamespace, edge0: Any, edge1: Any, x: Any) -> Any:
    t = k.clamp((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    # name: (number of arguments, implementation on a backend k and its arguments)
    "sin": (1, lambda k, x: k.sin(x)),
    "cos": (1, lambda k, x: k.cos(x)),
    "tan": (1, lambda k, x: k.tan(x)),
    "asin": (1, lambda k, x: k.asin(k.clamp(x, -1.0, 1.0))),
    "acos": (1, lambda k, x: k.acos(k.clamp(x, -1.0, 1.0))),
    "atan": (1, lambda k, x: k.atan(x)),
    "atan2": (2, lambda k, y, x: k.atan2(y, x)),  # atan2(y, x)
    "exp": (1, lambda k, x: k.exp(x)),
    "log": (1, lambda k, x: k.log(k.clamp(x, 1e-12, None))),
    "sqrt": (1, lambda k, x: k.sqrt(k.clamp(x, 0.0, None))),
    "abs": (1, lambda k, x: k.abs(x)),
    "min": (2, lambda k, a, b: k.minimum(a, b)),
    "max": (2, lambda k, a, b: k.maximum(a, b)),
    "clamp": (3, lambda k, x, lo, hi: k.minimum(k.maximum(x, lo), hi)),
    "floor": (1, lambda k, x: k.floor(x)),
    "ceil": (1, lambda k, x: k.ceil(x)),
    "fract": (1, lambda k, x: x - k.floor(x)),
    "mix": (3, lambda k, a, b, t: a + (b - a) * t),
    "step": (2, lambda k, edge, x: k.as_float(k.ge(x, edge), x)),
    "smoothstep": (3, _smoothstep),
    "pow": (2, _power),
}
"""Functions an expression may call: GLSL names and meanings (``log`` and
``sqrt`` clamp their argument to > 0 and >= 0, ``asin``/``acos`` to [-1, 1])."""

#: Operators an expression may use, and the backend primitive of each (``**`` clamps its exponent: :func:`_power`).
BINARY = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Mod: "remainder", ast.Pow: "pow"}
COMPARE = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}


def evaluate(node: ast.expr, names: dict[str, Any], like: Any, k: SimpleNamespace) -> Any:
    """Value of a checked ``node`` on backend ``k``; ``names`` maps r, g, b, p,
    pi, e to values. Numbers become 0-d values of the dtype (and device) of
    ``like``; the result broadcasts like the names it uses.
    """
    if isinstance(node, ast.Constant):
        return k.constant(node.value, like)
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = evaluate(node.operand, names, like, k)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = evaluate(node.left, names, like, k), evaluate(node.right, names, like, k)
        if isinstance(node.op, ast.Pow):
            return _power(k, left, right)
        return getattr(k, BINARY[type(node.op)])(left, right)
    if isinstance(node, ast.Compare):
        left, result = evaluate(node.left, names, like, k), None
        for op, right_node in zip(node.ops, node.comparators):
            right = evaluate(right_node, names, like, k)
            holds = k.as_float(getattr(k, COMPARE[type(op)])(left, right), like)
            result = holds if result is None else result * holds
            left = right
        return result
    if isinstance(node, ast.IfExp):
        test = evaluate(node.test, names, like, k)
        return k.where(test != 0, evaluate(node.body, names, like, k), evaluate(node.orelse, names, like, k))
    if isinstance(node, ast.Call):
        function = FUNCTIONS[node.func.id][1]
        return function(k, *[evaluate(arg, names, like, k) for arg in node.args])
    raise ValueError(f"{type(node).__name__} is not an expression node")  # unreachable after checking
