"""Sandboxed colour expressions: real evaluation against references, a hostile corpus, gradients."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from perturber.pipeline import expression as ex
from perturber.pipeline.expression import (
    DEFAULT_EXPRESSION,
    Expression,
    ExpressionError,
    apply_expression,
    compile_expression,
)


def images(batch=2, size=5, seed=0, dtype=torch.float32):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_default_expression_is_contrast():
    x = images()
    assert torch.allclose(apply_expression(x, DEFAULT_EXPRESSION, torch.ones(2)), x, atol=1e-6, rtol=0)
    expected = ((x - 0.5) * 2 + 0.5).clamp(0, 1)
    assert torch.allclose(apply_expression(x, DEFAULT_EXPRESSION, torch.full((2,), 2.0)), expected, atol=1e-6)


def test_p_is_per_sample():
    x, p = images(batch=3), torch.tensor([0.0, 0.5, 3.0])
    out = apply_expression(x, DEFAULT_EXPRESSION, p)
    for i in range(3):
        assert torch.allclose(out[i : i + 1], apply_expression(x[i : i + 1], DEFAULT_EXPRESSION, p[i : i + 1]))
    assert not torch.allclose(out[0], out[2])


def _references(r, g, b, p):
    """numpy references: (B, H, W) channels, p (B, 1, 1)."""
    return {
        "(g, r, b)": (g, r, b),
        "0.299*r + 0.587*g + 0.114*b": (0.299 * r + 0.587 * g + 0.114 * b,) * 3,
        "mix(r, 1 - r, p)": (r + (1 - 2 * r) * p,) * 3,
        "step(0.5, r)": ((r >= 0.5).astype(float),) * 3,
        "r if r > p else 0": (np.where(r > p, r, 0.0),) * 3,
        "clamp(sin(r*pi), 0, 1)": (np.clip(np.sin(r * np.pi), 0, 1),) * 3,
        "fract(r*4)": (r * 4 - np.floor(r * 4),) * 3,
        "atan2(g, r)/pi": (np.arctan2(g, r) / np.pi,) * 3,
        "(smoothstep(0.2, 0.8, r), sqrt(g), log(b + 1) / log(2))": (
            np.clip((r - 0.2) / 0.6, 0, 1) ** 2 * (3 - 2 * np.clip((r - 0.2) / 0.6, 0, 1)),
            np.sqrt(g),
            np.log(b + 1) / np.log(2),
        ),
        "(min(r, g), max(g, b), abs(r - b))": (np.minimum(r, g), np.maximum(g, b), np.abs(r - b)),
        "(r ** 2, r ** p, pow(g, 0.5))": (r**2, r**p, g**0.5),
        "((r*7) % 1, floor(g*3)/3, ceil(b*3)/3)": ((r * 7) % 1, np.floor(g * 3) / 3, np.ceil(b * 3) / 3),
        "0.25 < r <= 0.75": (((0.25 < r) & (r <= 0.75)).astype(float),) * 3,
        "(r == r, r != r, -(-b))": (np.ones_like(r), np.zeros_like(r), b),
        "(exp(-r), cos(g) * e / e, tan(b) / 2)": (np.exp(-r), np.cos(g), np.tan(b) / 2),
        "(asin(r) / pi, acos(g) / pi, atan(b))": (np.arcsin(r) / np.pi, np.arccos(g) / np.pi, np.arctan(b)),
        "0.5": (np.full_like(r, 0.5),) * 3,
        "p / 4": (np.broadcast_to(p / 4, r.shape),) * 3,
    }


@pytest.mark.parametrize("text", list(_references(*(np.zeros((1, 1, 1)),) * 4)))
def test_matches_numpy_reference(text):
    x, p = images(batch=3, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    r, g, b = (x[:, i].numpy() for i in range(3))
    expected = np.clip(np.stack(_references(r, g, b, p.numpy()[:, None, None])[text], axis=1), 0, 1)
    out = apply_expression(x, text, p)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


def test_call_keeps_shape_dtype_and_broadcasts_constants():
    x = images(batch=2, size=3)
    r, g, b = compile_expression("(0.5, p, r * 0 + 1)")(x[:, 0], x[:, 1], x[:, 2], torch.tensor([0.1, 0.2]))
    for channel in (r, g, b):
        assert channel.shape == (2, 3, 3) and channel.dtype == torch.float32
    assert (r == 0.5).all() and torch.equal(g[1], torch.full((3, 3), 0.2)) and (b == 1).all()


def test_non_finite_values_are_sanitised():
    x = images()
    x[0, 0, 0, 0] = 0.0
    out = apply_expression(x, "(r / 0, -r / 0, log(0) * 0)", torch.ones(2))
    assert torch.isfinite(out).all()
    assert out[0, 0, 0, 0] == 0  # 0/0 = nan -> 0
    assert (out[:, 0].flatten()[1:] == 1).all()  # +inf -> 1
    assert (out[:, 1].flatten()[1:] == 0).all()  # -inf -> 0
    huge = apply_expression(x, "(r * 1e6 ** 16, (r - 2) ** 0.5, pow(r + 1, p * 1000))", torch.ones(2))
    assert torch.isfinite(huge).all() and ((huge >= 0) & (huge <= 1)).all()


def test_compile_is_cached_and_expressions_are_values():
    assert compile_expression("r + g") is compile_expression("r + g")
    assert Expression("r + g") == compile_expression("r + g")
    with pytest.raises(ExpressionError):
        Expression("open('x')")  # cannot be built unchecked


def test_leading_whitespace_comments_and_newlines_are_fine():
    x = images()
    out = apply_expression(x, "  (b,\n   g,  # keep green\n   r)  ", torch.ones(2))
    assert torch.equal(out, x.flip(1))


def test_limits_are_exactly_the_documented_ones():
    compile_expression("r" + " " * (ex.MAX_LENGTH - 1))
    compile_expression("(" * ex.MAX_DEPTH + "r" + ")" * ex.MAX_DEPTH)
    compile_expression("-" * (ex.MAX_DEPTH - 1) + "r")
    compile_expression("r ** 16 + r ** -16 + pow(r, 16)")
    compile_expression("1e6 + -1e6")
    compile_expression("r<" * (ex.MAX_NODES - 2) + "r")
    with pytest.raises(ExpressionError, match="too long"):
        compile_expression("r" + " " * ex.MAX_LENGTH)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("-" * ex.MAX_DEPTH + "r")
    with pytest.raises(ExpressionError, match="too complex"):
        compile_expression("r<" * ex.MAX_NODES + "r")  # a flat chain: shallow but big
    with pytest.raises(ExpressionError, match="exponent 17"):
        compile_expression("r ** (8 * 2 + 1)")


MARKER = "pwned-by-expression"

HOSTILE = [
    ("__import__('os').system('touch {marker}')", "attribute access"),
    ("__import__('os')", "function '__import__'"),
    ("open('/etc/passwd')", "function 'open'"),
    ("open('{marker}', 'w')", "function 'open'"),
    ("exec('open(\"{marker}\", \"w\")')", "function 'exec'"),
    ("eval('1')", "function 'eval'"),
    ("getattr(r, 'x')", "function 'getattr'"),
    ("r.__class__", "attribute access"),
    ("().__class__.__bases__", "attribute access"),
    ("r.sum()", "attribute access"),
    ("r[0]", "subscripts"),
    ("[x for x in (1,2)]", "comprehensions"),
    ("sum(x for x in (r, g))", "function 'sum'"),
    ("lambda: 1", "lambda"),
    ("(lambda: 1)()", "lambda"),
    ("(x := 1)", "assignment"),
    ("'a'*3", "strings"),
    ("b'a'", "strings"),
    ("f'{r}'", "f-strings"),
    ("9**9**9", "exponent 387420489 is too large"),
    ("2**100000", "exponent 100000 is too large"),
    ("r**1000", "exponent 1000 is too large"),
    ("pow(r, 1000)", "exponent 1000 is too large"),
    ("r ** -(99)", "exponent -99 is too large"),
    ("1e400", "constant 1e400 is too large"),
    ("10000000", "constant 10000000 is too large"),
    ("r" + "+r" * 5000, "too long"),
    ("(" * 200 + "r" + ")" * 200, "nested too deeply"),
    ("sin(" * 40 + "r" + ")" * 40, "nested too deeply"),
    ("-" * 499 + "r", "too complex (500 > 200 nodes)"),
    ("r<" * 240 + "r", "too complex"),
    ("x", "unknown name 'x' (allowed: r, g, b, p, pi, e)"),
    ("__builtins__", "unknown name '__builtins__'"),
    ("sin", "'sin' is a function"),
    ("sin(r, g)", "sin() takes 1 argument, got 2"),
    ("clamp(r)", "clamp() takes 3 arguments, got 1"),
    ("sin(x=r)", "keyword arguments"),
    ("max(*r)", "starred"),
    ("max(**r)", "starred"),
    ("r(1)", "function 'r'"),
    ("sin(r)(g)", "called by name"),
    ("True", "True is not allowed"),
    ("None", "None is not allowed"),
    ("1j", "1j is not allowed"),
    ("...", "is not allowed"),
    ("r and g", "'and' and 'or'"),
    ("not r", "operator 'not'"),
    ("~r", "operator '~'"),
    ("r // 2", "operator '//'"),
    ("r @ g", "operator '@'"),
    ("r in g", "operator 'in'"),
    ("[r, g, b]", "lists"),
    ("{r: g}", "dicts"),
    ("((r, g), b, p)", "tuples are only allowed"),
    ("r, g", "expected 1 or 3 values, got 2"),
    ("()", "expected 1 or 3 values, got 0"),
    ("r, g, b, p", "expected 1 or 3 values, got 4"),
    ("r; g", "syntax error at column 2"),
    ("import os", "syntax error at column 1"),
    ("r = 1", "syntax error"),
    ("r +", "syntax error"),
    ("(r,\n g +)", "syntax error at line 2"),
    ("r\x00", "syntax error"),
    ("", "empty"),
    ("   ", "empty"),
    ("\n\t", "empty"),
    ("r" * 10_000, "too long (10000 > 500 characters)"),
    (7, "must be a string"),
]


@pytest.mark.parametrize("template, fragment", HOSTILE, ids=[repr(t)[:40] for t, _ in HOSTILE])
def test_hostile_expressions_are_rejected_without_running(template, fragment, tmp_path):
    marker = tmp_path / MARKER
    text = template.replace("{marker}", str(marker)) if isinstance(template, str) else template
    with pytest.raises(ExpressionError) as info:
        apply_expression(images(), text, torch.ones(2))
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and 0 < len(message) < 300
    assert not marker.exists() and not list(tmp_path.iterdir())


def test_random_token_soup_only_ever_raises_expression_error():
    tokens = "r g b p pi e 0 1 0.5 1e6 16 + - * / ** % < == != ( ) , if else sin( atan2( clamp( mix( x . [ ] ' : = lambda".split()
    rng = np.random.default_rng(0)
    x, compiled = images(size=3), 0
    for _ in range(1500):
        text = " ".join(rng.choice(tokens, size=rng.integers(1, 12)))
        try:
            out = apply_expression(x, text, torch.tensor([0.5, 2.0]))
        except ExpressionError as error:
            assert "\n" not in str(error)
            continue
        compiled += 1
        assert out.shape == x.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert compiled > 50  # the soup does reach evaluation


def test_module_never_evaluates_text():
    tree = ast.parse(Path(ex.__file__).read_text())
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__", "getattr", "globals", "locals"}


def test_gradcheck():
    x = (0.1 + 0.8 * images(batch=2, size=3, dtype=torch.float64)).requires_grad_()
    p = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    # values stay inside (0, 1), so the final clamp is inactive
    assert torch.autograd.gradcheck(lambda x, p: apply_expression(x, "(r*p, g*g, sin(b))", p), (x, p))

    smooth = compile_expression("(mix(r, g, p), atan2(g, r + 1) * exp(-p), smoothstep(0, 1, b) + r ** p)")
    r, g, b = (x[:, i].detach().clone().requires_grad_() for i in range(3))
    assert torch.autograd.gradcheck(lambda r, g, b, p: torch.stack(smooth(r, g, b, p)), (r, g, b, p))


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        apply_expression(torch.rand(2, 4, 3, 3), "r", torch.ones(2))
    with pytest.raises(ValueError, match="p must be"):
        apply_expression(torch.rand(2, 3, 3, 3), "r", torch.ones(3))
    out = apply_expression(torch.rand(2, 3, 3, 3), "p", 0.25)  # a scalar p is for every sample
    assert (out == 0.25).all()


@pytest.mark.gpu
def test_runs_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x, p = images(batch=3), torch.tensor([0.5, 1.0, 2.0])
    text = "(mix(r, 1 - r, p), step(0.5, g) * p, r if b > 0.5 else clamp(sin(b * pi), 0, 1))"
    out = apply_expression(x.cuda(), text, p.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), apply_expression(x, text, p), atol=1e-6)
    assert torch.isfinite(apply_expression(x.cuda(), "(r / 0, -g / 0, log(0) * 0)", p.cuda())).all()
