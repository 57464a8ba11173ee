"""Property-based fuzzing of the colour-expression sandbox (issue 12).

Whatever text a user types as a colour expression, the sandbox either
evaluates it quickly to a finite image batch of the right shape, or refuses it
with one line (an ExpressionError, which is a PerturberError). Nothing else may
happen: no other exception, no hang, no warning on stderr, no import, no file
written, no attribute set, no change to the environment.

Inputs come from four strategies: random bytes and text, random Python syntax
trees (anything ``ast`` can express, hostile names and attributes included,
unparsed with ``ast.unparse``), templates of known attacks (power towers, huge
repetitions, deep nesting, huge constants), and random trees of the allowed
language itself, so that evaluation is exercised as much as checking.
Deterministic (derandomize, no example database): 5,500 examples in about
25 s on two cores. Each case is checked afresh (``Expression(text)``), since
``compile_expression`` caches by text.
"""

from __future__ import annotations

import ast
import builtins
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perturber.pipeline import factors
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.expression import MAX_LENGTH, Expression, ExpressionError, apply_expression
from perturber.pipeline.expression_ops import CONSTANTS, FUNCTIONS, VARIABLES

TIME_LIMIT = 2.0  # seconds per expression: checking and evaluating
SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------ canaries
# What an escape from the sandbox would touch: a file, a module, an attribute.

CANARY_DIR = Path(tempfile.mkdtemp(prefix="perturber-fuzz-canary-"))
CANARY_FILE = CANARY_DIR / "pwned"


class Sentinel:
    """An object an expression would have to reach to set ``touched``."""

    touched = False


SENTINEL = Sentinel()
IMAGES = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
P = torch.tensor([0.5, 2.0])


def _state() -> tuple:
    return (set(sys.modules), dict(os.environ), os.getcwd(), set(vars(builtins)),
            sorted(CANARY_DIR.iterdir()), Path("pwned").exists(), SENTINEL.touched, Sentinel.touched)


def check_sandbox(text, capsys) -> str:
    """The property, for one input: returns "ok" (evaluated) or "refused"."""
    capsys.readouterr()
    before = _state()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            Expression(text)  # checks afresh: compile_expression caches by text, and hypothesis replays
            out = apply_expression(IMAGES, text, P)
            outcome = "ok"
        except ExpressionError as exc:
            outcome, message = "refused", str(exc)
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT, f"{text!r} took {elapsed:.2f} s"
    assert [str(w.message) for w in caught] == [], f"{text!r} warned"
    assert capsys.readouterr() == ("", ""), f"{text!r} printed"
    assert _state() == before, f"{text!r} had a side effect"
    if outcome == "ok":
        assert out.shape == IMAGES.shape and out.dtype == IMAGES.dtype
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    else:
        assert isinstance(ExpressionError("x"), PerturberError)
        assert message and "\n" not in message and len(message) < 300, repr(message)
        message.encode("utf-8")  # printable anywhere: no lone surrogates echoed back
        with pytest.raises(PerturberError) as info:  # the factor's option says the same, in one line
            factors.validate({"expression": text})
        assert "\n" not in str(info.value)
    return outcome


def test_error_is_a_perturber_error():
    """Commands report any PerturberError in one line and exit 2; the sandbox's error must be one."""
    assert issubclass(ExpressionError, PerturberError)


@pytest.mark.parametrize("text", ["1if 1else 2", "r if g else 0else", "r if 1else g", "0x1for", "'\\d'"])
def test_parser_warnings_are_refusals_not_stderr(text):
    """Python's parser warns (on stderr) about some text it still accepts; the sandbox refuses it in one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ExpressionError, match="syntax error|strings"):
            Expression(text)
    assert [str(w.message) for w in caught] == []


def test_bytes_that_are_not_utf8_are_named_as_such():
    """argv decodes bytes that are not UTF-8 to lone surrogates (surrogateescape); the error says where, in words."""
    text = b"  r + \xff".decode("utf-8", "surrogateescape")
    with pytest.raises(ExpressionError, match=r"^syntax error at column 7: not valid text \(bytes that are not UTF-8\?\)$"):
        Expression(text)


# ------------------------------------------------------------ (a) bytes, text


@pytest.mark.timeout(120)
@settings(max_examples=1000, **SETTINGS)
@given(data=st.binary(max_size=80), how=st.sampled_from(["utf-8", "latin-1", "surrogateescape", "raw"]))
def test_random_bytes(data, how, capsys):
    """Bytes as they may reach the sandbox: decoded, mis-decoded (argv's surrogateescape) or raw."""
    if how == "raw":
        text = data
    elif how == "surrogateescape":
        text = data.decode("utf-8", "surrogateescape")
    else:
        text = data.decode(how, "replace")
    check_sandbox(text, capsys)


ALPHABET = st.sampled_from(list("rgbpe0123456789.+-*/%<>=!(),:;[]{}'\"#_ \t\nijx@~^&|\\\x00")
                           + ["if", "else", "sin", "pow", "**", "lambda", "__", "\u00e9", "\u200b", "\ud800"])


@pytest.mark.timeout(120)
@settings(max_examples=1000, **SETTINGS)
@given(text=st.one_of(st.text(max_size=60), st.lists(ALPHABET, max_size=40).map("".join)))
def test_random_text(text, capsys):
    check_sandbox(text, capsys)


# ---------------------------------------------------- (b) random syntax trees

NAMES = [*VARIABLES, *CONSTANTS, *FUNCTIONS, "x", "__import__", "open", "eval", "exec", "getattr", "setattr",
         "globals", "locals", "vars", "compile", "breakpoint", "input", "print", "os", "sys", "torch", "np",
         "__builtins__", "__class__", "SENTINEL", "Sentinel", "self", "_"]
ATTRIBUTES = ["__class__", "__bases__", "__subclasses__", "__globals__", "__dict__", "__init__", "__code__",
              "__builtins__", "__import__", "__getattribute__", "__setattr__", "__reduce__", "mro", "system",
              "sum", "numpy", "touched", "real", "T"]
STRINGS = ["a", "os", "touch pwned", "pwned", str(CANARY_FILE), "w", "touched", "__import__('os')"]
NUMBERS = st.one_of(
    st.integers(-20, 20),
    st.integers(),
    st.floats(allow_nan=False),  # infinities unparse as 1e309
    st.sampled_from([9, 10, 16, 17, 99, 1e6, 1e6 + 1, 10**10, 10**100, 1e308, 0.5, 1e-320]),
)
CONSTANT_VALUES = st.one_of(NUMBERS, st.sampled_from(STRINGS), st.just(b"a"),
                            st.sampled_from([None, True, False, ..., 1j]))
UNARY = [ast.UAdd, ast.USub, ast.Not, ast.Invert]
BINARY = [ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.Pow, ast.FloorDiv, ast.MatMult, ast.LShift,
          ast.RShift, ast.BitOr, ast.BitAnd, ast.BitXor]
COMPARE = [ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot]
ops = lambda kinds: st.sampled_from(kinds).map(lambda kind: kind())  # noqa: E731
store = lambda: ast.Name("x", ast.Store())  # noqa: E731
args0 = ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def _children(node_: st.SearchStrategy) -> st.SearchStrategy:
    """Every kind of expression node, over ``node`` children."""
    node = st.deferred(lambda: node_)  # keeps the strategy's repr short (nested, it grows exponentially)
    some = st.lists(node, max_size=4)
    comprehension = node.map(lambda it: [ast.comprehension(store(), it, [], 0)])
    keyword = st.builds(ast.keyword, st.sampled_from(["x", "r", None]), node)
    call_args = st.lists(st.one_of(node, node.map(ast.Starred)), max_size=4)
    function = st.one_of(st.sampled_from(NAMES).map(ast.Name), st.builds(ast.Attribute, node, st.sampled_from(ATTRIBUTES)), node)
    return st.one_of(
        st.builds(ast.UnaryOp, ops(UNARY), node),
        st.builds(ast.BinOp, node, ops(BINARY), node),
        st.builds(ast.BoolOp, ops([ast.And, ast.Or]), st.lists(node, min_size=2, max_size=3)),
        st.integers(1, 3).flatmap(lambda n: st.builds(ast.Compare, node, st.lists(ops(COMPARE), min_size=n, max_size=n),
                                                      st.lists(node, min_size=n, max_size=n))),
        st.builds(ast.IfExp, node, node, node),
        st.builds(ast.Call, function, call_args, st.lists(keyword, max_size=2)),
        st.builds(ast.Attribute, node, st.sampled_from(ATTRIBUTES)),
        st.builds(ast.Subscript, node, st.one_of(node, st.builds(ast.Slice, node, node))),
        st.builds(ast.Lambda, st.just(args0), node),
        st.builds(ast.ListComp, node, comprehension),
        st.builds(ast.GeneratorExp, node, comprehension),
        st.builds(ast.Tuple, some), st.builds(ast.List, some), st.builds(ast.Set, st.lists(node, min_size=1, max_size=3)),
        st.lists(st.tuples(node, node), max_size=3).map(lambda kv: ast.Dict([k for k, _ in kv], [v for _, v in kv])),
        st.builds(ast.NamedExpr, st.just(store()), node),
        st.builds(lambda v: ast.JoinedStr([ast.FormattedValue(v, -1, None)]), node),
        st.builds(ast.Await, node), st.builds(ast.Yield, node),
    )


LEAF = st.one_of(st.sampled_from([*VARIABLES, *CONSTANTS]).map(ast.Name),
                 st.floats(-1e6, 1e6, allow_nan=False).map(ast.Constant), st.integers(-20, 20).map(ast.Constant))


def _allowed(node_: st.SearchStrategy) -> st.SearchStrategy:
    node = st.deferred(lambda: node_)
    calls = [st.builds(lambda name, a: ast.Call(ast.Name(name), a, []), st.just(name),
                       st.lists(node, min_size=arity, max_size=arity))
             for name, (arity, _) in FUNCTIONS.items()]
    return st.one_of(
        st.builds(ast.UnaryOp, ops([ast.UAdd, ast.USub]), node),
        st.builds(ast.BinOp, node, ops([ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.Pow]), node),
        st.integers(1, 3).flatmap(lambda n: st.builds(
            ast.Compare, node, st.lists(ops([ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq]), min_size=n, max_size=n),
            st.lists(node, min_size=n, max_size=n))),
        st.builds(ast.IfExp, node, node, node),
        *calls,
    )


ALLOWED_VALUE = st.recursive(LEAF, _allowed, max_leaves=25)
ALLOWED = st.one_of(ALLOWED_VALUE, st.lists(ALLOWED_VALUE, min_size=3, max_size=3).map(ast.Tuple))

# Any node, allowed or not, over any leaf: refusals come from deep inside allowed trees too.
ANY_TREE = st.recursive(
    st.one_of(LEAF, st.sampled_from(NAMES).map(ast.Name), CONSTANT_VALUES.map(ast.Constant)),
    lambda node: st.one_of(_allowed(node), _children(node)), max_leaves=12)


def unparse(node: ast.expr) -> str | None:
    try:
        return ast.unparse(ast.fix_missing_locations(ast.Expression(node)))
    except Exception:  # a tree ast cannot write out (it says so while unparsing, not later)
        return None


@pytest.mark.slow
@pytest.mark.timeout(120)
@settings(max_examples=1500, **SETTINGS)
@given(tree=ANY_TREE)
def test_random_syntax_trees(tree, capsys):
    text = unparse(tree)
    if text is not None:
        check_sandbox(text, capsys)


# ----------------------------------------------------- known attack templates

_n = st.integers(0, 320)
ATTACKS = st.one_of(
    st.lists(st.integers(0, 99).map(str), min_size=2, max_size=5).map(" ** ".join),  # 9 ** 9 ** 9
    st.lists(st.integers(0, 99).map(str), min_size=1, max_size=4).map(lambda xs: "r ** " + " ** ".join(xs)),
    st.sampled_from(["'a' * 10 ** 10", "[0] * 10 ** 10", "r * 10 ** 10", "(r,) * 10 ** 10", "'a' * 9 ** 9 ** 9",
                     "pow(9, pow(9, 9))", "r ** (9 ** 9)", "r ** -(9 ** 9)", "r ** (1 / 0)", "r ** (0 ** -1)",
                     "r ** (10 ** 16 ** 16)", "r ** ((1e6 ** 16) ** 16)", "exp(exp(exp(1e6)))", "r % 0",
                     "r ** (16 % 0)", "r ** (0 if 1 else 99)", "r ** (99 if r else 0)", "r ** (1 < 2)",
                     "r ** step(0, 1) ** 16", "r ** clamp(99, 0, 16)", "r ** atan2(0, 0)", "r ** (pi * 5)",
                     "r ** (e ** e ** e)", "().__class__.__base__.__subclasses__()", "[].__class__.__mro__",
                     "(lambda: 0).__globals__", "__import__('os').system('touch pwned')",
                     "getattr(SENTINEL, '__class__')", "setattr(SENTINEL, 'touched', True)",
                     "SENTINEL.__setattr__('touched', 1)", "vars(Sentinel).update(touched=1)",
                     "open('pwned', 'w').write('x')", "__builtins__['__import__']('os')", "breakpoint()",
                     "(r, g, b)[0]", "r if r else __import__('os')", "sin(r)(g)", "r.sum()",
                     "1if 1else 2", "0x1for", "1_000", "0o17", "0b11", "1__0", "r\\\n+ g", "r # x\n+ g",
                     "(r\n,\ng\n,\nb)", "\ufeffr", "\u0440", "\uff52", "\U0001d42b", "ℯ", "r\x0c+g"]),
    _n.map(lambda n: "sin(" * n + "r" + ")" * n),
    _n.map(lambda n: "(" * n + "r" + ")" * n),
    _n.map(lambda n: "[" * n + "r" + "]" * n),
    _n.map(lambda n: "-" * n + "r"),
    _n.map(lambda n: "not " * n + "r"),
    _n.map(lambda n: "r" + " + r" * n),
    _n.map(lambda n: "r" + " ** r" * n),
    _n.map(lambda n: "r" + " < r" * n),
    _n.map(lambda n: "r if r else " * n + "r"),
    _n.map(lambda n: "1" + "0" * n),
    _n.map(lambda n: f"1e{n}"),
    _n.map(lambda n: f"1e-{n}"),
    _n.map(lambda n: "0." + "0" * n + "1"),
    _n.map(lambda n: "r" + " " * n),
    _n.map(lambda n: f"r ** {n}"),
    _n.map(lambda n: f"r ** -{n} + g ** {n / 16}"),
    st.integers(0, 10**6).map(lambda n: f"r * {n} * {n} * {n} * {n}"),
)


@pytest.mark.timeout(120)
@settings(max_examples=1000, **SETTINGS)
@given(text=ATTACKS)
def test_known_attacks(text, capsys):
    check_sandbox(text, capsys)


# -------------------------------------- random trees of the allowed language



@pytest.mark.slow
@pytest.mark.timeout(120)
def test_random_allowed_expressions(capsys):
    """Trees of the language itself mostly evaluate (so evaluation is fuzzed too), each to a finite image."""
    outcomes = []

    @settings(max_examples=1000, **SETTINGS)
    @given(tree=ALLOWED)
    def run(tree):
        text = unparse(tree)
        if text is not None and len(text) <= MAX_LENGTH:
            outcomes.append(check_sandbox(text, capsys))

    run()
    assert outcomes.count("ok") > len(outcomes) / 2, f"{outcomes.count('ok')} of {len(outcomes)} evaluated"
