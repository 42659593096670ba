"""Linear quantization: QuantizeLinear and DequantizeLinear, per tensor, per axis or per block.

``scale`` (and the optional ``zero_point``) hold one value (per tensor), one per entry of ``axis``
(per axis), or, with ``block_size`` > 0, one per ``block_size`` consecutive entries along ``axis``
(blocked; the parameters then have the input's rank). The quantized types are the 8- and 16-bit
integers (and int32 as DequantizeLinear's input); the float8 and 4-/2-bit types numpy cannot hold
are refused. Quantization divides in float32 (float64 for float64 inputs), rounds half to even and
saturates, as onnxruntime does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import OpDef, default_cost, normalize_axis, register
from eqsat.ops.elementwise import onnx_dtype
from eqsat.ops.nn import FLOAT_DTYPES, check_dtype

QUANTIZED = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16))
DEQUANTIZABLE = (*QUANTIZED, np.dtype(np.int32))


def _param_layout(x: Value, scale: Value, zero: Value | None, attrs: dict[str, Any]) -> None:
    """Check that scale (and zero point) fit per-tensor, per-axis or blocked quantization."""
    block = int(attrs["block_size"])
    if zero is not None and zero.shape != scale.shape:
        raise ShapeError(f"zero point {zero.shape} must have the scale's shape {scale.shape}")
    if block < 0:
        raise ShapeError(f"block_size must be >= 0, got {block}")
    if block == 0 and scale.size == 1 and scale.rank <= 1:
        return
    if x.rank == 0:
        raise ShapeError(f"a scalar input takes a scalar scale, got {scale.shape}")
    axis = normalize_axis(int(attrs["axis"]), x.rank)
    if block == 0:
        if scale.shape != (x.shape[axis],):
            raise ShapeError(
                f"per-axis scale must have shape ({x.shape[axis]},) for axis {axis} of input "
                f"{x.shape}, got {scale.shape}"
            )
        return
    want = list(x.shape)
    want[axis] = -(-x.shape[axis] // block)
    if scale.shape != tuple(want):
        raise ShapeError(
            f"blocked scale must have shape {tuple(want)} for block_size {block} on axis {axis} "
            f"of input {x.shape}, got {scale.shape}"
        )


def _expand(param: np.ndarray, x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """``param`` broadcastable against ``x``."""
    block = int(attrs["block_size"])
    if block == 0 and param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    axis = normalize_axis(int(attrs["axis"]), x.ndim)
    if block == 0:
        return param.reshape((-1,) + (1,) * (x.ndim - 1 - axis))
    return np.repeat(param, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)


# --------------------------------------------------------------------------------- QuantizeLinear
def _quantized_dtype(zero: Value | None, attrs: dict[str, Any]) -> np.dtype:
    wanted = int(attrs["output_dtype"])
    if zero is not None:
        dtype = zero.dtype
        if wanted and onnx_dtype(wanted) != dtype:
            raise ShapeError(
                f"output_dtype {onnx_dtype(wanted)} differs from y_zero_point's {dtype}"
            )
    else:
        dtype = onnx_dtype(wanted) if wanted else np.dtype(np.uint8)
    if dtype not in QUANTIZED:
        raise ShapeError(
            f"quantizing to {dtype} is not supported (only uint8, int8, uint16, int16)"
        )
    return dtype


def _q_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, scale = inputs[0], inputs[1]
    zero = inputs[2] if len(inputs) > 2 else None
    if x.dtype not in (*FLOAT_DTYPES, np.dtype(np.int32)):
        raise ShapeError(f"x must be float16/32/64 or int32, got {x.dtype}")
    check_dtype(scale.dtype, FLOAT_DTYPES, "y_scale")
    if int(attrs["precision"]) not in (0, 1, 10, 11):
        raise ShapeError(f"precision {attrs['precision']} is not a float type (float16/32/64)")
    _param_layout(x, scale, zero, attrs)
    return [(x.shape, _quantized_dtype(zero, attrs))]


def _q_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, scale = arrays[0], arrays[1]
    zero = arrays[2] if len(arrays) > 2 else None
    precision = int(attrs["precision"])
    dt = np.dtype(np.float64) if np.float64 in (x.dtype, scale.dtype) else np.dtype(np.float32)
    if precision:
        dt = np.promote_types(onnx_dtype(precision), np.float32)
    q = np.rint(x.astype(dt) / _expand(scale, x, attrs).astype(dt))
    if zero is not None:
        q = q + _expand(zero, x, attrs).astype(dt)
    info = np.iinfo(outs[0].dtype)
    return [np.clip(q, info.min, info.max).astype(outs[0].dtype)]


register(
    OpDef(
        "QuantizeLinear",
        _q_infer,
        _q_reference,
        default_cost(4),  # divide, round, add, saturate
        min_inputs=2,
        max_inputs=3,
        attrs={"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0, "precision": 0},
    )
)


# ------------------------------------------------------------------------------- DequantizeLinear
def _dq_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, scale = inputs[0], inputs[1]
    zero = inputs[2] if len(inputs) > 2 else None
    if x.dtype not in DEQUANTIZABLE:
        raise ShapeError(f"x must be an 8-, 16- or 32-bit integer, got {x.dtype}")
    if zero is not None and zero.dtype != x.dtype:
        raise ShapeError(f"x_zero_point must have x's dtype {x.dtype}, got {zero.dtype}")
    check_dtype(scale.dtype, FLOAT_DTYPES, "x_scale")
    _param_layout(x, scale, zero, attrs)
    wanted = int(attrs["output_dtype"])
    if wanted and onnx_dtype(wanted) != scale.dtype:
        raise ShapeError(f"output_dtype {onnx_dtype(wanted)} differs from x_scale's {scale.dtype}")
    return [(x.shape, scale.dtype)]


def _dq_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, scale = arrays[0], arrays[1]
    zero = arrays[2] if len(arrays) > 2 else None
    dt = np.dtype(np.float64) if scale.dtype == np.float64 else np.dtype(np.float32)
    # The difference is exact in int64 (and in float32 for 8- and 16-bit inputs).
    shifted = x.astype(np.int64)
    if zero is not None:
        shifted = shifted - _expand(zero, x, attrs).astype(np.int64)
    y = shifted.astype(dt) * _expand(scale, x, attrs).astype(dt)
    return [y.astype(outs[0].dtype)]


register(
    OpDef(
        "DequantizeLinear",
        _dq_infer,
        _dq_reference,
        default_cost(2),  # subtract, multiply
        min_inputs=2,
        max_inputs=3,
        attrs={"axis": 1, "block_size": 0, "output_dtype": 0},
    )
)
