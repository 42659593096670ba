"""Numba source for elementwise kernels, generated from scalar expressions of the operator table.

A kernel applies one scalar expression (an elementwise op's ``scalar_expr`` or a fused node's
``body``/``epilogue``) to N broadcast inputs. :func:`plan_broadcast` collapses the output shape to
the fewest loop levels that keep every input's broadcast pattern (so ``x + bias[C,1,1]`` over NCHW
becomes a 3-level loop whose innermost level is contiguous for every operand, and ``a + b`` of equal
shapes a single flat loop); :func:`kernel_source` writes the loops and the expression as a module
for the kernel cache. The source depends on the expression, ranks, broadcast patterns, dtypes and
whether the outer loop is parallel, never on the sizes, so one compiled kernel serves every node of
the same form.

Kernels are generated for float32/float64 arithmetic with bool conditions (comparisons, ``Where``,
logic) and integer or bool operands cast to the kernel's float (an attention mask's
``(1 - cast(mask)) * -10000``). Expressions with integer or bool arithmetic or results (an index
normalisation ``cast(x < 0, int32) * (cast(x, int32) + n) + ...``) take :func:`eqsat.lowering.codegen_typed.translate_typed`
instead: every intermediate value gets the dtype the numpy reference
(:func:`eqsat.ops.fused.evaluate_body`) gives it, and integers wrap, divide and take remainders
exactly as there. What neither computes exactly (float ``mod``, float16, ``!=``) is reported as
unsupported and left to the numpy reference. In float32 kernels every literal is a float32
constant and exp/tanh/erf use :mod:`eqsat.lowering.cpu_math`'s approximations.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import math
import re
from dataclasses import dataclass

import numpy as np
from eqsat.lowering import cpu_math, cpu_stream

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
BOOL = np.dtype(bool)
# Functions of the scalar language a kernel can compute, per float dtype: name -> code template.
_COMMON = {
    "log": "np.log({0})",
    "log1p": "np.log1p({0})",
    "sqrt": "np.sqrt({0})",
    "abs": "abs({0})",
    "floor": "np.floor({0})",
    "ceil": "np.ceil({0})",
    "sin": "np.sin({0})",
    "cos": "np.cos({0})",
    "tan": "np.tan({0})",
    "asin": "np.arcsin({0})",
    "acos": "np.arccos({0})",
    "atan": "np.arctan({0})",
    "sinh": "np.sinh({0})",
    "cosh": "np.cosh({0})",
    "asinh": "np.arcsinh({0})",
    "acosh": "np.arccosh({0})",
    "atanh": "np.arctanh({0})",
    "min": "fmin({0}, {1})",
    "max": "fmax({0}, {1})",
    "isnan": "({0} != {0})",
    "rint": "np.rint({0})",
    "sign": "fsign({0}, ONE, ZERO)",
    "pow": "({0} ** {1})",
}
FUNCTIONS = {
    np.dtype(np.float32): {
        **_COMMON,
        "exp": "exp_f32({0})",
        "tanh": "tanh_f32({0})",
        "erf": "erf_f32({0})",
    },
    np.dtype(np.float64): {
        **_COMMON,
        "exp": "np.exp({0})",
        "tanh": "np.tanh({0})",
        "erf": "math.erf({0})",
    },
}
_OPERAND = re.compile(r"\{(\d+)\}")
_HELPERS_HASH = hashlib.sha256(
    (inspect.getsource(cpu_math) + inspect.getsource(cpu_stream)).encode()
).hexdigest()[:16]
# Bump when the generated code's form changes, so that cached kernels of the old form are unused.
# It names the helpers' hash too: Numba's cache does not notice when an inlined helper changes,
# and other generated modules (Winograd's output transforms) put this version in their source.
CODEGEN_VERSION = f"3.{_HELPERS_HASH}"


def module_header(comments: list[str], ctype: str, constants: dict[str, float]) -> list[str]:
    """The opening lines of every generated kernel module: imports and typed constants.

    The version (which includes the helpers' hash) is part of the source, so kernels cached on
    disk are recompiled when either changes.
    """
    lines = [f"# eqsat generated kernel; codegen {CODEGEN_VERSION}"]
    lines += [f"# {comment}" for comment in comments]
    lines += [
        "import math",
        "import numpy as np",
        "from numba import njit, prange, types",
        "from eqsat.lowering.cpu_math import exp_f32, tanh_f32, erf_f32, fmax, fmin, fsign",
        "from eqsat.lowering.cpu_stream import stream_fence, stream_vector",
        "",
        f"ONE = {ctype}(1.0)",
        f"ZERO = {ctype}(0.0)",
    ]
    lines += [f"{name} = {ctype}({float_literal(v)})" for name, v in constants.items()]
    return lines


class Unsupported(Exception):
    """The expression uses something the generated kernels do not compute."""


# ONNX data type numbers of the float dtypes a kernel computes in (Cast's ``to``).
_ONNX_FLOATS = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}


class _Translate(ast.NodeTransformer):
    def __init__(self, dtype: np.dtype, cast_only: frozenset[str] = frozenset()):
        self.dtype = dtype
        self.functions = FUNCTIONS[dtype]
        self.constants: dict[str, float] = {}
        # Integer operands: C arithmetic on them is not generated, only their cast to the float.
        self.cast_only = cast_only
        self._casting = False

    def _const(self, value: float) -> ast.Name:
        name = f"C{len(self.constants)}"
        for known, v in self.constants.items():
            if v == value or (math.isnan(v) and math.isnan(value)):
                return ast.Name(known, ast.Load())
        self.constants[name] = value
        return ast.Name(name, ast.Load())

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise Unsupported(f"literal {node.value!r}")
        return self._const(float(node.value))

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == "inf":
            return self._const(math.inf)
        if node.id == "nan":
            return self._const(math.nan)
        if re.fullmatch(r"x\d+", node.id):
            if node.id in self.cast_only and not self._casting:
                raise Unsupported(f"integer operand {node.id} outside a cast")
            return node
        raise Unsupported(f"name {node.id!r}")

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        # Bitwise on bools: no short-circuit branch, so the loop stays vectorizable.
        op: ast.operator = ast.BitAnd() if isinstance(node.op, ast.And) else ast.BitOr()
        values = [self.visit(v) for v in node.values]
        result = values[0]
        for v in values[1:]:
            result = ast.BinOp(result, op, v)
        return result

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        if not isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
            raise Unsupported(f"operator {type(node.op).__name__}")
        reciprocal = self._reciprocal(node.right) if isinstance(node.op, ast.Div) else None
        if reciprocal is not None:
            # x / c as x * (1 / c): a division costs 5-10x a multiplication and stops
            # hard-swish's x * min(max(x / 6 + 0.5, 0), 1) from keeping up with memory (conv
            # epilogue 0.47 -> 0.28 ns per element on the 2-core VM). Within an ulp of x / c,
            # and the same at zero, infinities and NaN.
            return ast.BinOp(self.visit(node.left), ast.Mult(), self._const(reciprocal))
        return self.generic_visit(node)

    def _reciprocal(self, divisor: ast.AST) -> float | None:
        """1 / ``divisor`` in the kernel's dtype, where the divisor is a literal whose
        reciprocal is a normal number (not for integers: the operands are floats here)."""
        negative = isinstance(divisor, ast.UnaryOp) and isinstance(divisor.op, ast.USub)
        literal = divisor.operand if negative else divisor  # type: ignore[attr-defined]
        if not isinstance(literal, ast.Constant) or isinstance(literal.value, bool):
            return None
        if not isinstance(literal.value, int | float):
            return None
        value = -float(literal.value) if negative else float(literal.value)
        info = np.finfo(self.dtype)
        with np.errstate(all="ignore"):
            reciprocal = self.dtype.type(1) / self.dtype.type(value)
        if not np.isfinite(reciprocal) or abs(reciprocal) < info.tiny:
            return None
        return float(reciprocal)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id == "cast":
            return self._cast(node)
        if not isinstance(node.func, ast.Name) or node.func.id not in self.functions:
            raise Unsupported(f"function {ast.unparse(node.func)}")
        name = node.func.id
        if name == "pow" and isinstance(node.args[1], ast.Constant):
            # Integer and half powers are the common ones (LayerNorm's x**2, RMS's sqrt).
            exponent = node.args[1].value
            base = self.visit(node.args[0])
            if exponent == 1:
                return base
            if exponent == 2:
                return ast.BinOp(base, ast.Mult(), base)
            if exponent == 3:
                return ast.BinOp(ast.BinOp(base, ast.Mult(), base), ast.Mult(), base)
            if exponent == 0.5:
                return ast.parse(f"np.sqrt({ast.unparse(base)})", mode="eval").body
            node.args[0] = base
            node.args[1] = self.visit(node.args[1])
        else:
            node.args = [self.visit(a) for a in node.args]
        code = self.functions[name].format(*(ast.unparse(a) for a in node.args))
        return ast.parse(code, mode="eval").body

    def _cast(self, node: ast.Call) -> ast.AST:
        """``cast(x, to)`` to the kernel's own float dtype (integers and bools round to nearest)."""
        to = node.args[1] if len(node.args) == 2 else None
        if not isinstance(to, ast.Constant) or _ONNX_FLOATS.get(to.value) != self.dtype:
            raise Unsupported(f"cast other than to {self.dtype}: {ast.unparse(node)}")
        self._casting = True
        try:
            inner = self.visit(node.args[0])
        finally:
            self._casting = False
        return ast.parse(f"np.{self.dtype}({ast.unparse(inner)})", mode="eval").body


def translate(
    expr: str, dtype: np.dtype, cast_only: frozenset[int] = frozenset()
) -> tuple[str, dict[str, float]]:
    """Numba code for scalar expression ``expr`` (operands ``x0``, ``x1``, ...) in float ``dtype``.

    Returns the code and the literal constants it names (``C0``, ``C1``, ...). Operands in
    ``cast_only`` (integers) may only appear inside a ``cast`` to ``dtype``.
    """
    if dtype not in FUNCTIONS:
        raise Unsupported(f"dtype {dtype}")
    tree = parse_expression(expr)
    translator = _Translate(dtype, frozenset(f"x{i}" for i in cast_only))
    body = translator.visit(tree.body)
    return ast.unparse(body), translator.constants


def parse_expression(expr: str) -> ast.Expression:
    """``expr`` (operands ``{i}``) parsed with operands ``x<i>``; :class:`Unsupported` unless it
    uses only the scalar language's syntax."""
    text = _OPERAND.sub(lambda m: f"x{m.group(1)}", expr)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise Unsupported(f"not an expression: {expr!r}") from exc
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise Unsupported(f"{type(node).__name__} in {expr!r}")
    return tree


_ALLOWED = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call,
    ast.Name, ast.Constant, ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd,
    ast.Not, ast.And, ast.Or, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq,
)  # fmt: skip


@dataclass(frozen=True)
class Broadcast:
    """Loop nest of a kernel: collapsed output ``shape``; per input, which levels it spans."""

    shape: tuple[int, ...]
    spans: tuple[tuple[bool, ...], ...]

    def input_shape(self, i: int) -> tuple[int, ...]:
        return tuple(d if s else 1 for d, s in zip(self.shape, self.spans[i], strict=True))


def plan_broadcast(out: tuple[int, ...], inputs: list[tuple[int, ...]]) -> Broadcast:
    """Collapse ``out`` into the fewest loop levels that keep each input's broadcast pattern."""
    dims = [i for i, d in enumerate(out) if d != 1]
    rank = len(out)
    patterns = []
    for shape in inputs:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        patterns.append([padded[i] != 1 for i in dims])
    shape: list[int] = []
    spans: list[list[bool]] = [[] for _ in inputs]
    for k, axis in enumerate(dims):
        column = [p[k] for p in patterns]
        if shape and all(s[-1] == c for s, c in zip(spans, column, strict=True)):
            shape[-1] *= out[axis]
            continue
        shape.append(out[axis])
        for s, c in zip(spans, column, strict=True):
            s.append(c)
    if not shape:  # a scalar result: one level of size 1
        return Broadcast((1,), tuple((False,) for _ in inputs))
    return Broadcast(tuple(shape), tuple(tuple(s) for s in spans))


def array_type(dtype: np.dtype, rank: int, readonly: bool) -> str:
    """The Numba type, as source text, of a C-contiguous array of ``dtype`` and ``rank`` (for a
    generated kernel's eager signature)."""
    # Inputs are typed read-only: writable arrays convert to that, and constants are read-only.
    name = "boolean" if dtype == BOOL else str(dtype)
    flag = ", readonly=True" if readonly else ""
    return f"types.Array(types.{name}, {rank}, 'C'{flag})"


def kernel_source(
    expr: str,
    in_dtypes: list[np.dtype],
    out_dtype: np.dtype,
    spans: tuple[tuple[bool, ...], ...],
    parallel: bool,
    alias: int | None = None,
    stream: bool = False,
) -> str:
    """A module defining ``kernel(out, x0, x1, ...)`` that writes ``expr`` of the inputs into out.

    Every array is C-contiguous with the collapsed rank; inputs have size 1 on levels they do not
    span. ``alias``: the input that is ``out`` itself (an in-place update); the kernel reads it
    through ``out``, because LLVM cannot prove that two distinct arguments do not overlap and
    runs the scalar loop when they do. ``stream``: a flat (rank 1) kernel writes its output
    with non-temporal stores (:mod:`eqsat.lowering.cpu_stream`; for arrays larger than the
    cache). Raises :class:`Unsupported` when the expression or dtypes are not generated here.
    """
    ints = frozenset(i for i, d in enumerate(in_dtypes) if d.kind in "iu")
    floats = {d for d in in_dtypes if d != BOOL and d.kind not in "iu"} | ({out_dtype} - {BOOL})
    dtype = floats.pop() if len(floats) == 1 else np.dtype(np.float32)
    typed: dict[str, str] | None = None
    try:
        if floats or dtype not in FLOATS or out_dtype not in (*FLOATS, BOOL):
            raise Unsupported(f"dtypes {[str(d) for d in in_dtypes]} -> {out_dtype}")
        code, constants = translate(expr, dtype, ints)
    except Unsupported:
        # Integer or bool arithmetic: the reference's dtype rules, without FMA contraction
        # (a float rounded differently can truncate to another integer).
        from eqsat.lowering.codegen_typed import TYPED_HELPERS, translate_typed

        code, typed = translate_typed(expr, list(in_dtypes), out_dtype)
        constants, dtype = {}, np.dtype(np.float32)
    rank = len(spans[0]) if spans else 1
    idx = [f"i{k}" for k in range(rank)]
    loads = []
    for i, span in enumerate(spans):
        index = ", ".join(ix if s else "0" for ix, s in zip(idx, span, strict=True))
        # An operand of another dtype than out's shares its bytes, not its values.
        source = "out" if i == alias and in_dtypes[i] == out_dtype else f"x{i}"
        loads.append(f"{source}[{index}]")
    sig_types = [array_type(out_dtype, rank, False)]
    sig_types += [array_type(d, rank, True) for d in in_dtypes]
    signature = f"types.void({', '.join(sig_types)})"
    args = ", ".join(["out"] + [f"x{i}" for i in range(len(spans))])
    ctype = f"np.{dtype}"
    lines = module_header([f"expr: {expr}"], ctype, constants)
    # Integer operands (a quantized model's int32 sums times their scales, plus the bias)
    # without FMA contraction either: a fused a * s + b rounds once where the reference rounds
    # twice, and the DynamicQuantizeLinear after it then lands on the other side of a rounding
    # step now and then (quantize_dynamic's ResNet-18: 0.3% of the logits' range off).
    fastmath = "False" if ints else "{'contract'}"
    if typed is not None:
        lines += [f"{name} = {value}" for name, value in typed.items()]
        lines += TYPED_HELPERS.split("\n")
        fastmath = "False"
    lines += [
        "",
        "",
        f"@njit({signature}, cache=True, error_model='numpy', fastmath={fastmath}, "
        f"nogil=True, parallel={parallel})",
        f"def kernel({args}):",
    ]
    # Values read inside the loop body are bound to the operand names the expression uses.
    body = [f"x{i}_ = {load}" for i, load in enumerate(loads)]
    code = re.sub(r"\bx(\d+)\b", lambda m: f"x{m.group(1)}_", code)
    body.append(f"out[{', '.join(idx)}] = {code}")
    indent = "    "
    if stream and rank == 1 and not parallel and out_dtype != BOOL:
        lines += [f"{indent}{line}" for line in _streamed_loop(body, out_dtype)]
    elif parallel and rank == 1:
        # One flat level: split it into chunks so that prange has work to hand out.
        lines += [
            f"{indent}n = out.shape[0]",
            f"{indent}chunks = (n + 16383) // 16384",
            f"{indent}for c in prange(chunks):",
            f"{indent * 2}for i0 in range(c * 16384, min(n, (c + 1) * 16384)):",
        ]
        lines += [f"{indent * 3}{b}" for b in body]
    else:
        for k in range(rank):
            loop = "prange" if (parallel and k == 0) else "range"
            lines.append(f"{indent * (k + 1)}for i{k} in {loop}(out.shape[{k}]):")
        lines += [f"{indent * (rank + 1)}{b}" for b in body]
    return "\n".join(lines) + "\n"


def _streamed_loop(body: list[str], out_dtype: np.dtype) -> list[str]:
    """The flat loop of ``body`` (indexed by i0, writing ``out[i0] = ...``) as blocks computed
    into an L1 buffer and streamed to out (see :mod:`eqsat.lowering.cpu_stream`), after a head
    that aligns out to a line; out's data not aligned to its items (a view of raw bytes) takes
    the plain loop."""
    size = out_dtype.itemsize
    block = cpu_stream.BLOCK_BYTES // size
    lanes = cpu_stream.LINE_BYTES // size
    # Each block reads slices indexed from 0: indexed from b0 + j, Numba's wraparound of
    # negative indices kept the loop scalar (5x slower).
    sources = sorted(set(re.findall(r"\b(x\d+|out)\[i0\]", "\n".join(body))))
    blocked = [line.replace("out[i0] =", "buf[j] =") for line in body]
    blocked = [re.sub(r"\b(x\d+|out)\[i0\]", r"\1_block[j]", line) for line in blocked]
    return [
        "n = out.shape[0]",
        "address = out.ctypes.data",
        f"head = n if address % {size} else min(n, (-address) % {cpu_stream.LINE_BYTES} // {size})",
        "for i0 in range(head):",
        *(f"    {line}" for line in body),
        f"buf = np.empty({block}, out.dtype)",
        f"end = head + (n - head) // {block} * {block}",
        f"for b0 in range(head, end, {block}):",
        *(f"    {name}_block = {name}[b0 : b0 + {block}]" for name in sources),
        f"    for j in range({block}):",
        *(f"        {line}" for line in blocked),
        f"    for v in range(0, {block}, {lanes}):",
        "        stream_vector(out, b0 + v, buf, v)",
        "for i0 in range(end, n):",
        *(f"    {line}" for line in body),
        "stream_fence()",
    ]


def float_literal(value: float) -> str:
    if math.isnan(value):
        return "np.nan"
    if math.isinf(value):
        return "np.inf" if value > 0 else "-np.inf"
    return repr(value)
