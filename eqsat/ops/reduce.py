"""Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/SumSquare/LogSum/LogSumExp, ArgMax and ArgMin.

The Reduce ops take the opset-18+ form: ``axes`` is an optional int64 second input that must be a
compile-time constant (the output shape depends on it), with attributes ``keepdims`` and
``noop_with_empty_axes``. Missing or empty ``axes`` reduces over every axis, unless
``noop_with_empty_axes`` is set; then the reduction runs over no axis at all, which leaves plain
reductions an identity but still applies the elementwise part of the composite ones (ReduceSumSquare
squares, ReduceL1/L2 take the absolute value), as onnxruntime does.

Reducing an empty extent yields the reduction's identity element: 0 for sums, 1 for products,
-inf/+inf (or the integer type's extreme) for Max/Min, NaN for Mean, -inf for LogSumExp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, normalize_axis, register
from eqsat.ops.shape import const_ints

FLOAT_KINDS = "f"
NUMERIC_KINDS = "biuf"


def _reduce_axes(inputs: list[Value | None], attrs: dict[str, Any]) -> tuple[int, ...] | None:
    """The normalized axes to reduce; ``()`` means none (noop), ``None`` means all of them."""
    data = inputs[0]
    axes_value = inputs[1] if len(inputs) > 1 else None
    axes = [] if axes_value is None else const_ints(axes_value, "input 'axes'")
    if not axes:
        return () if attrs["noop_with_empty_axes"] else None
    normalized = tuple(sorted(normalize_axis(a, data.rank, "reduction axis") for a in axes))
    if len(set(normalized)) != len(normalized):
        raise ShapeError(f"reduction axes {axes} repeat an axis")
    return normalized


def _reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...] | None, keep: bool) -> tuple:
    axes = tuple(range(len(shape))) if axes is None else axes
    if keep:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_cost(flops_per_input: float) -> Callable[..., Cost]:
    def cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
        data = inputs[0]
        return Cost(
            float(flops_per_input * data.size),
            float(sum(v.nbytes for v in inputs if v is not None)),
            float(sum(v.nbytes for v in outputs if v is not None)),
        )

    return cost


def _extreme(dtype: np.dtype, largest: bool) -> Any:
    """The identity element of Min (largest=True) or Max (largest=False) for ``dtype``."""
    if dtype.kind == "f":
        return np.inf if largest else -np.inf
    if dtype.kind == "b":
        return largest
    info = np.iinfo(dtype)
    return info.max if largest else info.min


def _max(x: np.ndarray, axis: tuple | None, keepdims: bool) -> np.ndarray:
    if x.dtype.kind == "b":
        return np.any(x, axis=axis, keepdims=keepdims)
    return np.max(x, axis=axis, keepdims=keepdims, initial=_extreme(x.dtype, False))


def _min(x: np.ndarray, axis: tuple | None, keepdims: bool) -> np.ndarray:
    if x.dtype.kind == "b":
        return np.all(x, axis=axis, keepdims=keepdims)
    return np.min(x, axis=axis, keepdims=keepdims, initial=_extreme(x.dtype, True))


def _mean(x: np.ndarray, axis: tuple | None, keepdims: bool) -> np.ndarray:
    total = np.sum(x, axis=axis, keepdims=keepdims, dtype=_accumulator(x.dtype))
    count = x.size // max(total.size, 1) if x.size else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if x.dtype.kind in "iu":
            # Integer mean truncates toward zero, as in onnxruntime.
            return np.trunc(total / count) if count else np.zeros_like(total)
        return total / np.float64(count) if count else np.full_like(total, np.nan)


def _accumulator(dtype: np.dtype) -> np.dtype:
    # float16 sums accumulate in float32 (as onnxruntime's kernels do) to avoid overflow and drift.
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _log_sum_exp(x: np.ndarray, axis: tuple | None, keepdims: bool) -> np.ndarray:
    work = x.astype(np.float32) if x.dtype == np.float16 else x
    if work.size == 0:
        return np.full(_reduced_shape(x.shape, axis, keepdims), -np.inf, work.dtype)
    peak = np.max(work, axis=axis, keepdims=True)
    # Shifting by the maximum keeps exp from overflowing; an infinite maximum is left unshifted.
    shift = np.where(np.isfinite(peak), peak, 0)
    total = np.sum(np.exp(work - shift), axis=axis, keepdims=True)
    result = np.log(total) + shift
    if not keepdims:
        result = result.reshape(_reduced_shape(x.shape, axis, False))
    return result


def _sum(x: np.ndarray, axis: tuple | None, keepdims: bool) -> np.ndarray:
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=_accumulator(x.dtype))


def _prod(x: np.ndarray, axis: tuple | None, keepdims: bool) -> np.ndarray:
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=_accumulator(x.dtype))


REDUCTIONS: dict[str, tuple[Callable[..., Any], float, str]] = {
    # name: (numpy form over (x, axis, keepdims), flops per input element, accepted dtype kinds)
    "ReduceSum": (_sum, 1.0, NUMERIC_KINDS.replace("b", "")),
    "ReduceMean": (_mean, 1.0, NUMERIC_KINDS.replace("b", "")),
    "ReduceMax": (_max, 1.0, NUMERIC_KINDS),
    "ReduceMin": (_min, 1.0, NUMERIC_KINDS),
    "ReduceProd": (_prod, 1.0, NUMERIC_KINDS.replace("b", "")),
    "ReduceL1": (lambda x, a, k: _sum(np.abs(x), a, k), 2.0, "iuf"),
    "ReduceL2": (lambda x, a, k: np.sqrt(_sum(np.square(x), a, k)), 2.0, "iuf"),
    "ReduceSumSquare": (lambda x, a, k: _sum(np.square(x), a, k), 2.0, "iuf"),
    "ReduceLogSum": (lambda x, a, k: np.log(_sum(x, a, k)), 1.0, FLOAT_KINDS),
    "ReduceLogSumExp": (_log_sum_exp, 4.0, FLOAT_KINDS),
}


def _register_reduction(name: str, fn: Callable[..., Any], flops: float, kinds: str) -> None:
    def infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
        data = inputs[0]
        if data.dtype.kind not in kinds:
            raise ShapeError(f"{name} does not accept dtype {data.dtype}")
        axes = _reduce_axes(inputs, attrs)
        return [(_reduced_shape(data.shape, axes, bool(attrs["keepdims"])), data.dtype)]

    def reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
        x = arrays[0]
        axes_array = arrays[1] if len(arrays) > 1 else None
        axes: tuple | None = None
        if axes_array is not None and np.asarray(axes_array).size:
            axes = tuple(int(a) % max(x.ndim, 1) for a in np.asarray(axes_array).reshape(-1))
        elif attrs["noop_with_empty_axes"]:
            axes = ()
        out = fn(x, axes, bool(attrs["keepdims"]))
        return [np.asarray(out).astype(outs[0].dtype, copy=False)]

    register(
        OpDef(
            name,
            infer,
            reference,
            _reduce_cost(flops),
            min_inputs=1,
            max_inputs=2,
            attrs={"keepdims": 1, "noop_with_empty_axes": 0},
            doc=f"{name} over the constant axes input (ONNX opset 18+ form).",
        )
    )


for _name, (_fn, _flops, _kinds) in REDUCTIONS.items():
    _register_reduction(_name, _fn, _flops, _kinds)


# ------------------------------------------------------------------ ArgMax / ArgMin
def _register_arg(name: str, pick: Callable[..., np.ndarray]) -> None:
    def infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
        data = inputs[0]
        if data.dtype.kind not in NUMERIC_KINDS:
            raise ShapeError(f"{name} does not accept dtype {data.dtype}")
        if data.rank == 0:
            raise ShapeError(f"{name} needs an input of rank >= 1")
        axis = normalize_axis(attrs["axis"], data.rank)
        if data.shape[axis] == 0:
            raise ShapeError(f"{name} over axis {axis} of extent 0 has no result")
        shape = _reduced_shape(data.shape, (axis,), bool(attrs["keepdims"]))
        return [(shape, np.dtype(np.int64))]

    def reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
        x = arrays[0]
        axis = attrs["axis"] % x.ndim
        if attrs["select_last_index"]:
            # numpy returns the first extreme; on the reversed axis that is the last one.
            flipped = pick(np.flip(x, axis), axis=axis)
            index = x.shape[axis] - 1 - flipped
        else:
            index = pick(x, axis=axis)
        if attrs["keepdims"]:
            index = np.expand_dims(index, axis)
        return [np.asarray(index, np.int64)]

    register(
        OpDef(
            name,
            infer,
            reference,
            _reduce_cost(1.0),
            attrs={"axis": 0, "keepdims": 1, "select_last_index": 0},
            doc=f"{name}: int64 index of the extreme along one axis; ties take the first index "
            "unless select_last_index.",
        )
    )


_register_arg("ArgMax", np.argmax)
_register_arg("ArgMin", np.argmin)
