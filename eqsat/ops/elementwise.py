"""Elementwise operators: one line of table each, from which shape rule, reference and cost follow.

An elementwise op broadcasts its inputs numpy-style and applies a scalar function per element. Its
``scalar`` template is the one definition code generators use to build fused kernels, so adding an
elementwise op here needs no change anywhere else.

The scalar language (a subset of Python expression syntax):

* operands ``{0}``, ``{1}``, ``{2}`` (the node's inputs) and attribute placeholders such as
  ``{alpha}``, which :func:`scalar_expr` fills with numeric literals (``inf`` and ``nan`` included);
* arithmetic ``+ - * /`` and unary ``-``, comparisons ``< <= > >= ==``, boolean ``and or not``,
  the conditional ``(a if c else b)``, numeric literals, and the functions of
  :data:`SCALAR_FUNCTIONS`, whose numpy implementations there define their meaning.

Arithmetic happens in the operands' dtype with C's rules: ``/`` on integers truncates toward zero
(as onnxruntime's Div does), integers wrap on overflow, literals take the other operand's dtype.
float16 operands are computed in float32 and rounded once at the end, as the references do.

Use :func:`scalar_expr` to turn a node into an expression rather than formatting ``OpDef.scalar``
directly: it also picks the variant a node's attributes or omitted inputs call for
(:data:`SCALAR_VARIANTS`: Gelu's tanh form, Mod's fmod form, Clip without bounds) and folds the
binary template of a variadic op (Max, Min, Sum) over all its operands (Mean then divides by
their count, :data:`VARIADIC_FINISH`). Dropout's template describes its
first output; its optional mask output is all true.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from onnx import TensorProto, helper
from scipy import special

from eqsat.errors import EqsatError, ShapeError
from eqsat.ir import Value
from eqsat.ops import (
    OPS,
    REQUIRED,
    Cost,
    OpDef,
    broadcast_shapes,
    const_of,
    default_cost,
    register,
    same_dtype,
)

FLOAT_TYPES = (np.float16, np.float32, np.float64)
FLOAT = frozenset(np.dtype(t) for t in FLOAT_TYPES)
SIGNED = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))
UNSIGNED = frozenset(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64))
NUMERIC = FLOAT | SIGNED | UNSIGNED
BOOL = frozenset({np.dtype(bool)})
ANY = NUMERIC | BOOL


# ------------------------------------------------------------------ references shared with scalars
def _div(a: np.ndarray, b: np.ndarray) -> Any:
    if a.dtype.kind == "f":
        return np.true_divide(a, b)
    quotient = np.floor_divide(a, b)  # x / 0 is undefined in ONNX; numpy gives 0
    if a.dtype.kind == "i":
        # C and onnxruntime truncate toward zero where numpy floors.
        quotient = quotient + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))
    return quotient


def _pow(base: np.ndarray, exponent: np.ndarray) -> Any:
    """``base ** exponent`` in base's dtype; the exponent may have any numeric dtype."""
    base, exponent = np.asarray(base), np.asarray(exponent)
    if base.dtype == exponent.dtype and base.dtype.kind == "f":
        return np.power(base, exponent)
    # onnxruntime computes mixed and integer powers in double and converts back (truncating).
    wide = np.power(base.astype(np.float64), exponent.astype(np.float64)).astype(base.dtype)
    if base.dtype.kind == "f" or exponent.dtype.kind == "f":
        return wide
    # Integer powers with exponent >= 0 are exact, also beyond double's 53 bits.
    exact = np.power(base, np.where(exponent < 0, 0, exponent).astype(base.dtype))
    return np.where(exponent < 0, wide, exact)


def onnx_dtype(to: Any) -> np.dtype:
    """The numpy dtype of ONNX ``TensorProto`` data type number ``to`` (Cast's ``to``)."""
    if isinstance(to, bool) or not isinstance(to, int | np.integer):
        raise ShapeError(f"Cast: 'to' must be an ONNX TensorProto data type number, got {to!r}")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(int(to)))
        name = TensorProto.DataType.Name(int(to))
    except (KeyError, TypeError, ValueError):
        raise ShapeError(f"Cast: 'to' = {to} is not an ONNX data type number") from None
    if dtype not in ANY:
        raise ShapeError(f"Cast to {name} is not supported (only bool, integers, float16/32/64)")
    return dtype


def _cast(x: Any, to: int) -> Any:
    return np.asarray(x).astype(onnx_dtype(to))


# Scalar functions a code generator must provide, with numpy implementations that define them:
# min/max propagate NaN (unlike C's fmin/fmax); rint rounds half to even; sign(NaN) is NaN; mod
# takes the divisor's sign (Python's %), fmod the dividend's (C's fmod); pow(a, b) is in a's
# dtype (an integer a is computed in double and truncated, exactly when b >= 0); cast(x, to)
# converts like ONNX Cast to data type number ``to`` (floats to integers truncate toward zero).
# log1p (for Softplus), mod (Mod) and cast (Cast) joined the original libm-style set.
SCALAR_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "exp": np.exp, "log": np.log, "log1p": np.log1p, "sqrt": np.sqrt, "tanh": np.tanh,
    "erf": special.erf, "abs": np.abs, "floor": np.floor, "ceil": np.ceil, "sin": np.sin,
    "cos": np.cos, "min": np.minimum, "max": np.maximum, "pow": _pow, "isnan": np.isnan,
    "rint": np.rint, "sign": np.sign, "fmod": np.fmod, "mod": np.mod, "cast": _cast,
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh,
    "cosh": np.cosh, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
    "isinf": np.isinf, "bitand": np.bitwise_and, "bitor": np.bitwise_or,
    "bitxor": np.bitwise_xor, "bitnot": np.invert,
}  # fmt: skip

# Templates that replace OpDef.scalar when an attribute has a value, or ("omitted", indices) when
# those optional inputs are omitted; the first match wins.
SCALAR_VARIANTS: dict[str, dict[tuple[str, Any], str]] = {}
# Ops taking 1..N operands, whose binary template folds left over them.
VARIADIC: set[str] = set()
# Variadic ops that are not a plain fold: (fold template, finish template over the fold and the
# operand count {n}); their OpDef.scalar is the two-operand result (Mean's ((a + b) / 2)).
VARIADIC_FINISH: dict[str, tuple[str, str]] = {}


# ------------------------------------------------------------------ the table builder
def elementwise(
    name: str,
    reference: Callable[..., Any],
    scalar: str,
    *,
    arity: int = 1,
    min_inputs: int | None = None,
    flops: float = 1.0,
    dtypes: frozenset[np.dtype] = NUMERIC,
    attrs: dict[str, Any] | None = None,
    result: Any = "same",
    other_inputs: dict[int, frozenset[np.dtype]] | None = None,
    scalar_inputs: tuple[int, ...] = (),
    check: Callable[[list[Value | None], dict[str, Any]], None] | None = None,
    variadic: bool = False,
    variants: dict[tuple[str, Any], str] | None = None,
) -> OpDef:
    """Register an elementwise op.

    ``reference(*arrays, **attrs)`` computes it in numpy (omitted inputs are ``None``) and returns
    one array, or a tuple for several outputs. The inputs not in ``other_inputs`` must share one
    dtype from ``dtypes``; ``other_inputs`` maps the rest to their allowed dtypes. ``result`` gives
    the output dtype: ``"same"`` (the shared dtype), ``"bool"``, or ``fn(attrs) -> dtype``; a tuple
    of those for several outputs. ``scalar_inputs`` must hold one element and do not broadcast
    into the output shape. ``check(inputs, attrs)`` raises ShapeError for what else is wrong.
    """
    results = result if isinstance(result, tuple) else (result,)
    others = dict(other_inputs or {})
    required = arity if min_inputs is None else min_inputs

    def infer(inputs: list[Value | None], attrs: dict[str, Any], num_outputs: int) -> list[Any]:
        missing = [i for i in range(required) if inputs[i] is None]
        if missing:
            raise ShapeError(f"{name}: input(s) {missing} are required, not optional")
        main = [v for i, v in enumerate(inputs) if v is not None and i not in others]
        dtype = same_dtype(main, f"{name}'s inputs")
        if dtype not in dtypes:
            raise ShapeError(f"{name} does not take {dtype} inputs, only {_describe(dtypes)}")
        for i, v in enumerate(inputs):
            if v is None:
                continue
            if i in others and v.dtype not in others[i]:
                raise ShapeError(
                    f"{name}: input {i} ({v.name!r}) has dtype {v.dtype}, expected "
                    f"{_describe(others[i])}"
                )
            if i in scalar_inputs and v.size != 1:
                raise ShapeError(
                    f"{name}: input {i} ({v.name!r}) must be a scalar, got shape {list(v.shape)}"
                )
        if check is not None:
            check(inputs, attrs)
        shape = broadcast_shapes(
            *(v.shape for i, v in enumerate(inputs) if v is not None and i not in scalar_inputs)
        )
        kinds = {"same": dtype, "bool": np.dtype(bool)}
        return [(shape, kinds[r] if isinstance(r, str) else r(attrs)) for r in results][
            :num_outputs
        ]

    def run(arrays: list[np.ndarray | None], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
        args: list[np.ndarray | None] = []
        for i, a in enumerate(arrays):
            if a is not None and i in scalar_inputs:
                a = a.reshape(())
            if a is not None and a.dtype == np.float16:
                a = a.astype(np.float32)  # round once at the end, as onnxruntime's kernels do
            args.append(a)
        with np.errstate(all="ignore"):  # inf/nan follow IEEE rules, also when folding
            produced = reference(*args, **attrs)
            produced = produced if isinstance(produced, tuple) else (produced,)
            # Casting inf or nan to an integer (T5's log-bucketed positions) warns in numpy only.
            return [
                None if out is None else np.asarray(r).astype(out.dtype, copy=False)
                for r, out in zip(produced, outs, strict=False)
            ]

    if variadic:
        VARIADIC.add(name)
    if variants:
        SCALAR_VARIANTS[name] = dict(variants)
    return register(
        OpDef(
            name,
            infer,
            run,
            _fold_cost(flops) if variadic else default_cost(flops),
            min_inputs=required,
            max_inputs=2**31 - 1 if variadic else arity,
            max_outputs=len(results),
            attrs=dict(attrs or {}),
            scalar=scalar,
            elementwise=True,
        )
    )


def _describe(dtypes: frozenset[np.dtype]) -> str:
    names = ", ".join(sorted(map(str, dtypes)))
    for label, group in (("numeric", NUMERIC), ("floating-point", FLOAT)):
        if dtypes == group:
            return f"{label} ({names})"
    return names


def _fold_cost(flops: float) -> Callable[..., Cost]:
    """Cost of a variadic op: ``flops`` per output element for each operand after the first."""

    def cost(
        inputs: list[Value | None], outputs: list[Value | None], attrs: dict[str, Any]
    ) -> Cost:
        operands = sum(v is not None for v in inputs)
        return default_cost(flops * max(operands - 1, 0))(inputs, outputs, attrs)

    return cost


def scalar_expr(op: str, operands: Sequence[str | None], attrs: Mapping[str, Any]) -> str:
    """The scalar expression of elementwise ``op`` applied to ``operands``.

    ``operands`` are expressions for the node's inputs (``None`` for omitted optional ones),
    ``attrs`` its complete attributes (``Node.attrs``).
    """
    opdef = OPS.get(op)
    if opdef is None or not opdef.elementwise or opdef.scalar is None:
        raise EqsatError(f"{op} is not an elementwise operator")
    template = opdef.scalar
    omitted = tuple(i for i, o in enumerate(operands) if o is None)
    if op not in VARIADIC:
        omitted += tuple(range(len(operands), opdef.max_inputs))
    for (key, value), variant in SCALAR_VARIANTS.get(op, {}).items():
        if (key == "omitted" and value == omitted) or (
            key != "omitted" and attrs.get(key) == value
        ):
            template = variant
            break
    literals = {k: _literal(v) for k, v in attrs.items() if isinstance(v, int | float | np.number)}
    args = [o if o is not None else "" for o in operands]
    if op in VARIADIC_FINISH:
        fold, finish = VARIADIC_FINISH[op]
        total = functools.reduce(lambda acc, x: fold.format(acc, x), args)
        return total if len(args) == 1 else finish.format(total, n=len(args))
    if op in VARIADIC:
        return functools.reduce(lambda acc, x: template.format(acc, x, **literals), args)
    return template.format(*args, **literals)


def _literal(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "(-inf)"
    return repr(value)


# ------------------------------------------------------------------ checks of particular ops
def _check_mod(_: list[Value | None], attrs: dict[str, Any]) -> None:
    if attrs["fmod"] not in (0, 1):
        raise ShapeError(f"Mod: fmod must be 0 or 1, got {attrs['fmod']!r}")


def _check_gelu(_: list[Value | None], attrs: dict[str, Any]) -> None:
    if attrs["approximate"] not in ("none", "tanh"):
        raise ShapeError(
            f"Gelu: approximate must be 'none' or 'tanh', got {attrs['approximate']!r}"
        )


def _check_inference(inputs: list[Value | None], attrs: dict[str, Any]) -> None:
    mode = inputs[2] if len(inputs) > 2 else None
    if mode is not None and bool(np.asarray(const_of(mode, "Dropout's training_mode")).any()):
        raise ShapeError(
            "Dropout with training_mode true (random masking) is not supported: eqsat compiles "
            "inference graphs, where Dropout passes its input through"
        )


def _dropout(x: np.ndarray, ratio: Any = None, training_mode: Any = None, **_: Any) -> Any:
    return x, np.ones(np.shape(x), dtype=bool)


def _clip(x: np.ndarray, low: Any = None, high: Any = None) -> Any:
    # min(max(x, low), high): when low > high every element becomes high, as ONNX says.
    if low is not None:
        x = np.maximum(x, low)
    if high is not None:
        x = np.minimum(x, high)
    return x


def _gelu(x: np.ndarray, approximate: str) -> Any:
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1 + special.erf(x * 0.7071067811865476))


def _float_unary(name: str, reference: Callable[..., Any], scalar: str, flops: float) -> None:
    elementwise(name, reference, scalar, flops=flops, dtypes=FLOAT)


def _compare(name: str, reference: Callable[..., Any], scalar: str, dtypes: frozenset) -> None:
    elementwise(name, reference, scalar, arity=2, dtypes=dtypes, result="bool")


# --- arithmetic -------------------------------------------------------------------------------
elementwise("Add", np.add, "({0} + {1})", arity=2)
elementwise("Sub", np.subtract, "({0} - {1})", arity=2)
elementwise("Mul", np.multiply, "({0} * {1})", arity=2)
elementwise("Div", _div, "({0} / {1})", arity=2)
elementwise("Pow", _pow, "pow({0}, {1})", arity=2, flops=20, other_inputs={1: NUMERIC})
# Opset 21 allows fmod=0 for integers only; floats take opset 28's floor semantics (numpy's mod).
elementwise(
    "Mod",
    lambda a, b, fmod: np.fmod(a, b) if fmod else np.mod(a, b),
    "mod({0}, {1})",
    arity=2,
    flops=5,
    attrs={"fmod": 0},
    check=_check_mod,
    variants={("fmod", 1): "fmod({0}, {1})"},
)
elementwise("Max", lambda *xs: functools.reduce(np.maximum, xs), "max({0}, {1})", variadic=True)
elementwise("Min", lambda *xs: functools.reduce(np.minimum, xs), "min({0}, {1})", variadic=True)
elementwise("Neg", np.negative, "(-{0})", dtypes=SIGNED | FLOAT)
elementwise("Abs", np.abs, "abs({0})")
elementwise("Sign", np.sign, "sign({0})")
elementwise(
    "Clip",
    _clip,
    "min(max({0}, {1}), {2})",
    arity=3,
    min_inputs=1,
    flops=2,
    scalar_inputs=(1, 2),
    variants={
        ("omitted", (1, 2)): "{0}",
        ("omitted", (1,)): "min({0}, {2})",
        ("omitted", (2,)): "max({0}, {1})",
    },
)

# --- float functions --------------------------------------------------------------------------
_float_unary("Reciprocal", lambda x: 1 / x, "(1 / {0})", 1)
_float_unary("Sqrt", np.sqrt, "sqrt({0})", 4)
_float_unary("Exp", np.exp, "exp({0})", 10)
_float_unary("Log", np.log, "log({0})", 10)
_float_unary("Erf", special.erf, "erf({0})", 15)
_float_unary("Tanh", np.tanh, "tanh({0})", 15)
_float_unary("Sin", np.sin, "sin({0})", 15)
_float_unary("Cos", np.cos, "cos({0})", 15)
_float_unary("Floor", np.floor, "floor({0})", 1)
_float_unary("Ceil", np.ceil, "ceil({0})", 1)
_float_unary("Round", np.rint, "rint({0})", 1)  # half to even, like ONNX

# --- activations ------------------------------------------------------------------------------
elementwise("Relu", lambda x: np.maximum(x, 0), "max({0}, 0)", dtypes=SIGNED | FLOAT)
_float_unary("Sigmoid", lambda x: 1 / (1 + np.exp(-x)), "(1 / (1 + exp(-{0})))", 12)
elementwise(
    "HardSigmoid",
    lambda x, alpha, beta: np.minimum(np.maximum(alpha * x + beta, 0), 1),
    "min(max({alpha} * {0} + {beta}, 0), 1)",
    flops=4,
    dtypes=FLOAT,
    attrs={"alpha": 0.2, "beta": 0.5},
)
_float_unary(
    "HardSwish",
    lambda x: x * np.minimum(np.maximum(x / 6 + 0.5, 0), 1),
    "({0} * min(max({0} / 6 + 0.5, 0), 1))",
    5,
)
elementwise(
    "LeakyRelu",
    lambda x, alpha: np.where(x >= 0, x, alpha * x),
    "({0} if {0} >= 0 else {alpha} * {0})",
    flops=2,
    dtypes=FLOAT,
    attrs={"alpha": 0.01},
)
elementwise(
    "Elu",
    lambda x, alpha: np.where(x > 0, x, alpha * (np.exp(x) - 1)),
    "({0} if {0} > 0 else {alpha} * (exp({0}) - 1))",
    flops=12,
    dtypes=FLOAT,
    attrs={"alpha": 1.0},
)
# max(x, 0) + log1p(exp(-|x|)) is log(1 + exp(x)) without overflow for large x.
_float_unary(
    "Softplus",
    lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x))),
    "(max({0}, 0) + log1p(exp(-abs({0}))))",
    24,
)
elementwise(
    "Gelu",
    _gelu,
    "(0.5 * {0} * (1 + erf({0} * 0.7071067811865476)))",
    flops=20,
    dtypes=FLOAT,
    attrs={"approximate": "none"},
    check=_check_gelu,
    # 0.5 x (1 + tanh(u)) is x * sigmoid(2u), exactly: one exp and one division, where the tanh
    # form took 2x as long on the cpu target (its tanh computes a polynomial and an exp, then
    # picks one).
    variants={
        ("approximate", "tanh"): (
            "({0} / (1 + exp(-1.5957691216057308 * ({0} + 0.044715 * {0} * {0} * {0}))))"
        )
    },
)

# --- logic and comparison ---------------------------------------------------------------------
elementwise("Not", np.logical_not, "(not {0})", dtypes=BOOL)
elementwise("And", np.logical_and, "({0} and {1})", arity=2, dtypes=BOOL)
elementwise("Or", np.logical_or, "({0} or {1})", arity=2, dtypes=BOOL)
_compare("Equal", np.equal, "({0} == {1})", ANY)
_compare("Greater", np.greater, "({0} > {1})", NUMERIC)
_compare("GreaterOrEqual", np.greater_equal, "({0} >= {1})", NUMERIC)
_compare("Less", np.less, "({0} < {1})", NUMERIC)
_compare("LessOrEqual", np.less_equal, "({0} <= {1})", NUMERIC)
elementwise("IsNaN", np.isnan, "isnan({0})", dtypes=FLOAT, result="bool")
elementwise(
    "Where",
    np.where,
    "({1} if {0} else {2})",
    arity=3,
    dtypes=ANY,
    other_inputs={0: BOOL},
)

# --- conversions and no-ops at inference ------------------------------------------------------
# The conversion itself is the final astype to the inferred dtype. 'saturate' only concerns the
# float8 types, which eqsat does not support; it defaults to None (not given) because export
# writes set attributes and onnxruntime refuses 'saturate' on other Casts.
elementwise(
    "Cast",
    lambda x, to, saturate: x,
    "cast({0}, {to})",
    dtypes=ANY,
    attrs={"to": REQUIRED, "saturate": None},
    result=lambda attrs: onnx_dtype(attrs["to"]),
)
elementwise("Identity", lambda x: x, "{0}", flops=0, dtypes=ANY)
elementwise(
    "Dropout",
    _dropout,
    "{0}",
    arity=3,
    min_inputs=1,
    flops=0,
    dtypes=FLOAT,
    attrs={"seed": None},
    result=("same", "bool"),
    other_inputs={1: FLOAT, 2: BOOL},
    scalar_inputs=(1, 2),
    check=_check_inference,
)

# --- more arithmetic and activations ----------------------------------------------------------
INTEGER = SIGNED | UNSIGNED


def _check_prelu(inputs: list[Value | None], _: dict[str, Any]) -> None:
    x, slope = inputs
    if broadcast_shapes(x.shape, slope.shape) != x.shape:  # unidirectional: slope -> X
        raise ShapeError(f"PRelu: slope {slope.shape} does not broadcast to X's shape {x.shape}")


def _isinf(x: np.ndarray, detect_positive: int, detect_negative: int) -> Any:
    return (np.isposinf(x) & bool(detect_positive)) | (np.isneginf(x) & bool(detect_negative))


def _shrink(x: np.ndarray, bias: float, lambd: float) -> Any:
    # Integer inputs are shifted by the float bias and truncated back, as ONNX and onnxruntime
    # do; the scalar form's literals take X's dtype instead (only a fractional bias differs).
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))


elementwise(
    "PRelu",
    lambda x, slope: np.where(x < 0, slope * x, x),
    "({1} * {0} if {0} < 0 else {0})",
    arity=2,
    flops=2,
    dtypes=SIGNED | UNSIGNED | FLOAT,
    check=_check_prelu,
)
elementwise("Sum", lambda *xs: functools.reduce(np.add, xs), "({0} + {1})", dtypes=FLOAT,
            variadic=True)  # fmt: skip
elementwise(
    "Mean",
    lambda *xs: functools.reduce(np.add, xs) / np.asarray(len(xs), xs[0].dtype),
    "(({0} + {1}) / 2)",
    dtypes=FLOAT,
    variadic=True,
)
VARIADIC_FINISH["Mean"] = ("({0} + {1})", "({0} / {n})")
elementwise(
    "Selu",
    lambda x, alpha, gamma: gamma * np.where(x > 0, x, alpha * (np.exp(x) - 1)),
    "({gamma} * ({0} if {0} > 0 else {alpha} * (exp({0}) - 1)))",
    flops=13,
    dtypes=FLOAT,
    attrs={"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
)
elementwise(
    "Celu",
    lambda x, alpha: np.maximum(x, 0) + np.minimum(0, alpha * (np.exp(x / alpha) - 1)),
    "(max({0}, 0) + min(0, {alpha} * (exp({0} / {alpha}) - 1)))",
    flops=15,
    dtypes=FLOAT,
    attrs={"alpha": 1.0},
)
elementwise(
    "ThresholdedRelu",
    lambda x, alpha: np.where(x > alpha, x, 0),
    "({0} if {0} > {alpha} else 0)",
    dtypes=FLOAT,
    attrs={"alpha": 1.0},
)
_float_unary("Softsign", lambda x: x / (1 + np.abs(x)), "({0} / (1 + abs({0})))", 3)
_float_unary(
    "Mish",
    lambda x: x * np.tanh(np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))),
    "({0} * tanh(max({0}, 0) + log1p(exp(-abs({0})))))",
    40,
)
elementwise(
    "Shrink",
    _shrink,
    "({0} + {bias} if {0} < -{lambd} else ({0} - {bias} if {0} > {lambd} else 0))",
    flops=3,
    attrs={"bias": 0.0, "lambd": 0.5},
)
for _name, _fn in (("Tan", "tan"), ("Asin", "asin"), ("Acos", "acos"), ("Atan", "atan"),
                   ("Sinh", "sinh"), ("Cosh", "cosh"), ("Asinh", "asinh"), ("Acosh", "acosh"),
                   ("Atanh", "atanh")):  # fmt: skip
    _float_unary(_name, SCALAR_FUNCTIONS[_fn], f"{_fn}({{0}})", 20)

# --- more logic and bit operations ------------------------------------------------------------
elementwise(
    "IsInf",
    _isinf,
    "((({0} == inf) and not ({detect_positive} == 0)) or "
    "(({0} == (-inf)) and not ({detect_negative} == 0)))",
    flops=2,
    dtypes=FLOAT,
    attrs={"detect_positive": 1, "detect_negative": 1},
    result="bool",
)
elementwise("Xor", np.logical_xor, "(({0} or {1}) and not ({0} and {1}))", arity=2, dtypes=BOOL)
elementwise("BitwiseAnd", np.bitwise_and, "bitand({0}, {1})", arity=2, dtypes=INTEGER)
elementwise("BitwiseOr", np.bitwise_or, "bitor({0}, {1})", arity=2, dtypes=INTEGER)
elementwise("BitwiseXor", np.bitwise_xor, "bitxor({0}, {1})", arity=2, dtypes=INTEGER)
elementwise("BitwiseNot", np.invert, "bitnot({0})", dtypes=INTEGER)


# --- CastLike: Cast to another tensor's dtype -------------------------------------------------
# Not elementwise in the table's sense: the result's dtype comes from an input, which a scalar
# template cannot name; the target's shape does not broadcast into the result.
def _castlike_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, like = inputs
    for v, what in ((x, "input"), (like, "target_type")):
        if v.dtype not in ANY:
            raise ShapeError(f"CastLike: {what} has unsupported dtype {v.dtype}")
    return [(x.shape, like.dtype)]


def _castlike_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    return [np.asarray(arrays[0]).astype(outs[0].dtype)]


register(
    OpDef(
        "CastLike",
        _castlike_infer,
        _castlike_reference,
        default_cost(1),
        min_inputs=2,
        max_inputs=2,
        attrs={"saturate": None},
        type_only_inputs=(1,),
    )
)
