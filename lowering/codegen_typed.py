"""Numba code for fused elementwise expressions with integer or bool arithmetic or results.

:func:`translate_typed` gives every intermediate value the dtype the numpy reference
(:func:`eqsat.ops.fused.evaluate_body`) gives it, by evaluating each subexpression on one-element
operands, and writes integer arithmetic so that it wraps, divides and takes remainders exactly as
numpy does (an index normalisation ``cast(x < 0, int32) * (cast(x, int32) + n) + ...``). What it
cannot compute exactly (float ``mod``, float16, ``!=``, literals that do not fit) raises
:class:`~eqsat.lowering.codegen.Unsupported` and stays on the reference.
:func:`eqsat.lowering.codegen.kernel_source` falls back to it when the float translation refuses.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import numpy as np
from eqsat.lowering.codegen import (
    BOOL,
    FLOATS,
    FUNCTIONS,
    Unsupported,
    float_literal,
    parse_expression,
)

# Helpers of typed kernels; their arguments already have the operation's dtype. Numba computes
# narrow integers in int64, so callers wrap results back with np.<dtype>(...). b == -1 is kept
# from // and %: MIN // -1 traps in hardware, where numpy wraps to MIN (and MIN % -1 is 0).
TYPED_HELPERS = """
@njit(inline='always')
def sdiv(a, b, trunc):
    # numpy's floor_divide (0 for b == 0); trunc: the reference's correction toward zero.
    if b == 0:
        return a - a
    if b == -1:
        return -a
    q = a // b
    if trunc and a % b != 0 and (a < 0) != (b < 0):
        q += 1
    return q


@njit(inline='always')
def udiv(a, b):
    return a - a if b == 0 else a // b


@njit(inline='always')
def smod(a, b, c):
    # numpy's mod (the divisor's sign) or, with c, fmod (the dividend's sign); 0 for b == 0.
    if b == 0 or b == -1:
        return a - a
    r = a % b
    if c and r != 0 and (r < 0) != (a < 0):
        r -= b
    return r


@njit(inline='always')
def umod(a, b):
    return a - a if b == 0 else a % b


@njit(inline='always')
def isign(a):
    return (a - a) + (1 if a > 0 else (-1 if a < 0 else 0))
"""
_INTEGER_FUNCTIONS = {"min": "fmin({0}, {1})", "max": "fmax({0}, {1})", "abs": "abs({0})"}
_INTEGER_FUNCTIONS |= {"bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})"}
_INTEGER_FUNCTIONS |= {"bitnot": "(~{0})", "sign": "isign({0})"}
_BOOL_FUNCTIONS = {"bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})"}
_BOOL_FUNCTIONS |= {"bitnot": "(not {0})"}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "=="}
_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
_KNOWN = {np.dtype(t) for t in _INTS} | {BOOL, *FLOATS}


@dataclass(frozen=True)
class _Typed:
    """A translated subexpression: code of numpy ``dtype``, or a literal ``value`` that, as in
    the reference, takes its dtype from what it meets."""

    code: str = ""
    dtype: np.dtype | None = None
    value: int | float | None = None


class _TypedTranslate:
    """Scalar expression -> Numba code whose every value has the reference's numpy dtype."""

    def __init__(self, in_dtypes: list[np.dtype]):
        from eqsat.ops.elementwise import onnx_dtype
        from eqsat.ops.fused import evaluate_body

        self._evaluate, self._onnx_dtype = evaluate_body, onnx_dtype
        self._samples = [np.zeros(1, d) for d in in_dtypes]
        self.dtypes = in_dtypes
        self.constants: dict[str, str] = {}

    def dtype_of(self, node: ast.expr) -> np.dtype:
        """The reference's dtype of ``node`` (evaluated on one-element operands)."""
        body = re.sub(r"\bx(\d+)\b", r"{\1}", ast.unparse(node))
        try:
            dtype = np.asarray(self._evaluate(body, self._samples)).dtype
        except Exception as exc:  # the reference rejects it: leave it the reference's error
            raise Unsupported(f"{ast.unparse(node)}: {exc}") from exc
        if dtype not in _KNOWN:
            raise Unsupported(f"{ast.unparse(node)} of dtype {dtype}")
        return dtype

    def const(self, value: int | float, dtype: np.dtype) -> str:
        try:
            with np.errstate(all="raise"):
                typed = np.asarray(value, dtype)
        except (OverflowError, FloatingPointError, ValueError) as exc:
            raise Unsupported(f"literal {value!r} as {dtype}") from exc
        literal = float_literal(float(typed)) if dtype.kind == "f" else repr(typed.item())
        text = f"np.{'bool_' if dtype == BOOL else dtype}({literal})"
        for name, known in self.constants.items():
            if known == text:
                return name
        name = f"K{len(self.constants)}"
        self.constants[name] = text
        return name

    def conv(self, v: _Typed, dtype: np.dtype) -> str:
        """``v`` converted as numpy's astype (and a ufunc's input casting) converts it."""
        if v.dtype is None:
            assert v.value is not None
            return self.const(v.value, dtype)
        if v.dtype == dtype:
            return v.code
        if dtype == BOOL:
            return f"({v.code} != 0)"
        return f"np.{dtype}({v.code})"

    def visit(self, node: ast.expr) -> _Typed:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise Unsupported(f"literal {node.value!r}")
            return _Typed(value=node.value)
        if isinstance(node, ast.Name):
            if node.id in ("inf", "nan"):
                return _Typed(value=float(node.id))
            if re.fullmatch(r"x\d+", node.id):
                return _Typed(node.id, self.dtypes[int(node.id[1:])])
            raise Unsupported(f"name {node.id!r}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            v = self.visit(node.operand)
            if isinstance(node.op, ast.UAdd) or (v.dtype is None and isinstance(v.value, float)):
                # +literal is the literal; -float literal a numpy float64, which the reference
                # takes for a Python float (its subclass): both stay literals.
                return v if isinstance(node.op, ast.UAdd) else _Typed(value=-v.value)
        literal = isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant)
        if not literal and not any(
            isinstance(n, ast.Name) and n.id[0] == "x" for n in ast.walk(node)
        ):
            # numpy scalars from literal arithmetic are typed unlike literals and operands.
            raise Unsupported(f"literal arithmetic {ast.unparse(node)}")
        out = self.dtype_of(node)
        return _Typed(self._typed(node, out), out)

    def _pair(self, a: _Typed, b: _Typed) -> tuple[_Typed, _Typed]:
        # The reference's _typed: a literal takes the dtype of a numeric (not bool) other side.
        if a.dtype is None and b.dtype is not None and b.dtype.kind in "iuf":
            a = _Typed(self.conv(a, b.dtype), b.dtype)
        if b.dtype is None and a.dtype is not None and a.dtype.kind in "iuf":
            b = _Typed(self.conv(b, a.dtype), a.dtype)
        return a, b

    def _typed(self, node: ast.expr, out: np.dtype) -> str:
        """Code of ``node``, whose reference dtype is ``out``."""
        wrap = (lambda c: f"np.{out}({c})") if out.kind in "iu" else (lambda c: c)
        if isinstance(node, ast.BinOp):
            a, b = self._pair(self.visit(node.left), self.visit(node.right))
            x, y = self.conv(a, out), self.conv(b, out)
            if isinstance(node.op, ast.Div):
                return self._divide(a, b, x, y, out)
            op = _ARITH.get(type(node.op))
            if op is None or (out == BOOL and op == "-"):
                raise Unsupported(f"operator {type(node.op).__name__} on {out}")
            if out == BOOL:  # numpy's add and multiply of bools are or and and
                return f"({x} {'|' if op == '+' else '&'} {y})"
            return wrap(f"({x} {op} {y})")
        if isinstance(node, ast.UnaryOp):
            v = self.visit(node.operand)
            if v.dtype is None:  # -int literal: a numpy int64, typed unlike a literal
                if not isinstance(node.op, ast.USub):
                    raise Unsupported(f"{ast.unparse(node)}")
                return self.const(-v.value, out)  # type: ignore[operator]
            if isinstance(node.op, ast.Not):  # numpy's logical_not: x == 0 (NaN is true)
                return f"(not {v.code})" if v.dtype == BOOL else f"({v.code} == 0)"
            if out == BOOL:
                raise Unsupported(f"negation of bool {ast.unparse(node)}")
            return wrap(f"(-{self.conv(v, out)})")
        if isinstance(node, ast.Compare):
            left, parts = self.visit(node.left), []
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.visit(right_node)
                symbol = _COMPARE.get(type(op))
                if symbol is None:
                    raise Unsupported(f"comparison {type(op).__name__}")
                a, b = self._pair(left, right)
                common = np.result_type(*(v.value if v.dtype is None else v.dtype for v in (a, b)))
                if {a.dtype, b.dtype} & {np.dtype(np.uint64)} and common.kind == "f":
                    raise Unsupported("comparison of uint64 with a signed integer")
                parts.append(f"({self.conv(a, common)} {symbol} {self.conv(b, common)})")
                left = right
            return f"({' & '.join(parts)})" if len(parts) > 1 else parts[0]
        if isinstance(node, ast.BoolOp):
            values = [self.conv(self.visit(v), BOOL) for v in node.values]
            return f"({(' & ' if isinstance(node.op, ast.And) else ' | ').join(values)})"
        if isinstance(node, ast.IfExp):
            test = self.conv(self.visit(node.test), BOOL)
            a, b = self.visit(node.body), self.visit(node.orelse)
            return f"({self.conv(a, out)} if {test} else {self.conv(b, out)})"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self._call(node.func.id, node, out)
        raise Unsupported(f"{type(node).__name__}")

    def _divide(self, a: _Typed, b: _Typed, x: str, y: str, out: np.dtype) -> str:
        # The reference (elementwise._div): true division when the dividend is a float, else
        # floor division, corrected toward zero when the dividend is signed.
        kind = a.dtype.kind if a.dtype is not None else "?"
        if kind == "f" and out.kind == "f":
            return f"({x} / {y})"
        if kind not in "iu" or out.kind not in "iu" or b.dtype is None or b.dtype.kind not in "iu":
            raise Unsupported(f"division of {a.dtype} by {b.dtype}")
        if out.kind == "u":
            return f"np.{out}(udiv({x}, {y}))"
        return f"np.{out}(sdiv({x}, {y}, {kind == 'i'}))"

    def _call(self, name: str, node: ast.Call, out: np.dtype) -> str:
        if name == "cast":
            to = node.args[1] if len(node.args) == 2 else None
            if not isinstance(to, ast.Constant) or self._onnx_dtype(to.value) != out:
                raise Unsupported(f"cast {ast.unparse(node)}")
            return self.conv(self.visit(node.args[0]), out)
        args = [self.visit(a) for a in node.args]
        if name in ("mod", "fmod") and out.kind in "iu":
            x, y = (self.conv(v, out) for v in args)
            if out.kind == "u":
                return f"np.{out}(umod({x}, {y}))"
            return f"np.{out}(smod({x}, {y}, {name == 'fmod'}))"
        table = {"b": _BOOL_FUNCTIONS, "i": _INTEGER_FUNCTIONS, "u": _INTEGER_FUNCTIONS}
        template = table.get(out.kind, FUNCTIONS.get(out, {})).get(name)
        if template is None or (name in ("pow", "isnan", "sign") and out.kind == "f"):
            raise Unsupported(f"function {name} giving {out}")
        if out.kind == "f" and any(v.dtype not in (None, out) for v in args):
            raise Unsupported(f"function {name} of {[str(v.dtype) for v in args]}")
        if name == "abs" and any(v.dtype is not None and v.dtype.kind == "u" for v in args):
            return self.conv(args[0], out)
        code = template.format(*(self.conv(v, out) for v in args))
        return f"np.{out}({code})" if out.kind in "iu" else code


def translate_typed(
    expr: str, in_dtypes: list[np.dtype], out_dtype: np.dtype
) -> tuple[str, dict[str, str]]:
    """Numba code for ``expr`` with the reference's dtype rules, converted to ``out_dtype``.

    Returns the code and the typed constants it names (``K0``, ... -> ``np.int32(3)``).
    """
    if any(d not in _KNOWN for d in (*in_dtypes, out_dtype)):
        raise Unsupported(f"dtypes {[str(d) for d in in_dtypes]} -> {out_dtype}")
    tree = parse_expression(expr)
    translator = _TypedTranslate(in_dtypes)
    result = translator.visit(tree.body)
    return translator.conv(result, out_dtype), translator.constants


__all__ = ["TYPED_HELPERS", "translate_typed"]
