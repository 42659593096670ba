"""Elementwise operators: one line of table each, from which shape rule, reference and cost follow.

An elementwise op broadcasts its inputs numpy-style and applies a scalar function per element. Its
``scalar`` template is the one definition code generators use to build fused kernels, so adding an
elementwise op here needs no change anywhere else.

The scalar language: operands ``{0}``, ``{1}``, ``{2}``; arithmetic ``+ - * /``, comparisons
``< <= > >= ==``, boolean ``and or not``, conditional ``(a if c else b)``, numeric literals, attribute
placeholders such as ``{alpha}``, and the functions in :data:`SCALAR_FUNCTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import OpDef, broadcast_shapes, default_cost, register, same_dtype

# Scalar functions a code generator must provide (with their usual libm meaning).
SCALAR_FUNCTIONS = (
    "exp", "log", "sqrt", "tanh", "erf", "abs", "floor", "ceil", "sin", "cos", "min", "max",
    "pow", "isnan", "rint", "sign", "fmod",
)  # fmt: skip

FLOAT_TYPES = (np.float16, np.float32, np.float64)


def elementwise(
    name: str,
    reference: Callable[..., Any],
    scalar: str,
    *,
    arity: int = 1,
    flops: float = 1.0,
    attrs: dict[str, Any] | None = None,
    result: str = "same",
    min_inputs: int | None = None,
) -> OpDef:
    """Register an elementwise op.

    ``reference(*arrays, **attrs)`` computes it in numpy; ``result`` says the output dtype:
    ``"same"`` (the inputs' common dtype), ``"bool"``, or ``"last"`` (dtype of the last input, for
    Where whose first input is the condition).
    """

    def infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
        present = [v for v in inputs if v is not None]
        shape = broadcast_shapes(*(v.shape for v in present))
        if result == "bool":
            same_dtype(present)
            dtype = np.dtype(bool)
        elif result == "last":
            dtype = same_dtype(present[1:], "value inputs")
        else:
            dtype = same_dtype(present)
        return [(shape, dtype)]

    def run(arrays: list[np.ndarray | None], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
        out = reference(*arrays, **attrs)
        return [np.asarray(out).astype(outs[0].dtype, copy=False)]

    return register(
        OpDef(
            name,
            infer,
            run,
            default_cost(flops),
            min_inputs=arity if min_inputs is None else min_inputs,
            max_inputs=arity,
            attrs=dict(attrs or {}),
            scalar=scalar,
            elementwise=True,
        )
    )


def _float_only(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def checked(x: np.ndarray, **attrs: Any) -> Any:
        if x.dtype.type not in FLOAT_TYPES:
            raise ShapeError(f"{name} needs a floating-point input, got {x.dtype}")
        return fn(x, **attrs)

    return checked


# --- arithmetic -------------------------------------------------------------------------------
elementwise("Add", np.add, "({0} + {1})", arity=2)
elementwise("Sub", np.subtract, "({0} - {1})", arity=2)
elementwise("Mul", np.multiply, "({0} * {1})", arity=2)
elementwise("Neg", np.negative, "(-{0})")

# --- activations ------------------------------------------------------------------------------
elementwise("Relu", lambda x: np.maximum(x, x.dtype.type(0)), "max({0}, 0)")
elementwise(
    "Sigmoid",
    _float_only("Sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    "(1 / (1 + exp(-{0})))",
    flops=4,
)

# --- no-ops at inference ------------------------------------------------------------------------
elementwise("Identity", lambda x: x, "{0}", flops=0)
