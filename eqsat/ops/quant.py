"""Linear quantization: QuantizeLinear and DequantizeLinear, per tensor, per axis or per block;
dynamic quantization with integer arithmetic: DynamicQuantizeLinear, MatMulInteger, ConvInteger.

``scale`` (and the optional ``zero_point``) hold one value (per tensor), one per entry of ``axis``
(per axis), or, with ``block_size`` > 0, one per ``block_size`` consecutive entries along ``axis``
(blocked; the parameters then have the input's rank). The quantized types are the 8- and 16-bit
integers (and int32 as DequantizeLinear's input); the float8 and 4-/2-bit types numpy cannot hold
are refused. Quantization divides in float32 (float64 for float64 inputs), rounds half to even and
saturates, as onnxruntime does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, default_cost, normalize_axis, register
from eqsat.ops.conv import (
    WINDOW_ATTRS,
    conv2col_matmul,
    conv_window,
    depthwise_conv,
    window_geometry,
)
from eqsat.ops.elementwise import onnx_dtype
from eqsat.ops.nn import FLOAT_DTYPES, check_dtype, io_cost, matmul_shape

QUANTIZED = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16))
DEQUANTIZABLE = (*QUANTIZED, np.dtype(np.int32))


def _param_layout(x: Value, scale: Value, zero: Value | None, attrs: dict[str, Any]) -> None:
    """Check that scale (and zero point) fit per-tensor, per-axis or blocked quantization."""
    block = int(attrs["block_size"])
    # A scalar and a one-element vector both mean per tensor: onnxruntime's own quantizer writes
    # a (1,) scale with a () zero point for a bias.
    per_tensor = all(p.size == 1 and p.rank <= 1 for p in (scale, zero) if p is not None)
    if zero is not None and zero.shape != scale.shape and not per_tensor:
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


# ------------------------------------------------------- dynamic quantization (integer arithmetic)
# What onnxruntime's quantize_dynamic emits (and so many "model_quantized.onnx" files hold):
# activations quantized per run by DynamicQuantizeLinear, multiplied against uint8/int8 weights by
# MatMulInteger or ConvInteger into int32, then Cast and rescaled with ordinary float ops.
INTEGER_OPERANDS = (np.dtype(np.uint8), np.dtype(np.int8))


def _dql_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    check_dtype(inputs[0].dtype, (np.dtype(np.float32),), "x")
    u8 = np.dtype(np.uint8)
    return [(inputs[0].shape, u8), ((), np.dtype(np.float32)), ((), u8)]


def _dql_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    # onnxruntime's arithmetic, all in float32: the range is widened to include 0, its scale is
    # range / 255 (1 for an all-zero input), the zero point rounds half to even after clamping.
    x = arrays[0].astype(np.float32, copy=False)
    zero = np.float32(0)
    lo = min(zero, x.min()) if x.size else zero
    hi = max(zero, x.max()) if x.size else zero
    scale = np.float32((hi - lo) / np.float32(255)) if hi != lo else np.float32(1)
    zp = np.rint(np.clip(zero - lo / scale, 0, 255)).astype(np.uint8)
    y = np.clip(np.rint(x / scale) + np.float32(zp), 0, 255).astype(np.uint8)
    return [y, np.array(scale, np.float32), np.array(zp, np.uint8)]


register(
    OpDef(
        "DynamicQuantizeLinear",
        _dql_infer,
        _dql_reference,
        default_cost(6),  # min, max, divide, round, add, saturate
        min_outputs=3,
        max_outputs=3,
    )
)


def _zero_point(zp: Value | None, operand: Value, sizes: tuple[int, ...], what: str) -> None:
    """A zero point must match its operand's type and be per tensor or one per ``sizes`` entry."""
    if zp is None:
        return
    if zp.dtype != operand.dtype:
        raise ShapeError(f"{what} has dtype {zp.dtype}, its operand {operand.dtype}")
    if zp.shape not in ((), (1,), *((s,) for s in sizes)):
        allowed = " or ".join(f"({s},)" for s in sizes)
        raise ShapeError(f"{what} must be a scalar or of shape {allowed}, got {zp.shape}")


def _shifted(x: np.ndarray, zp: np.ndarray | None, axis_shape: tuple[int, ...]) -> np.ndarray:
    """``x - zp`` in float64, where integer products and sums of any realistic size are exact."""
    out = x.astype(np.float64)
    if zp is not None and zp.size:
        out -= zp.astype(np.float64).reshape(axis_shape if zp.size > 1 else ())
    return out


def _mmi_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    a, b = inputs[0], inputs[1]
    check_dtype(a.dtype, INTEGER_OPERANDS, "A")
    check_dtype(b.dtype, INTEGER_OPERANDS, "B")
    shape = matmul_shape(a.shape, b.shape)
    rows = a.shape[-2] if a.rank > 1 else 1
    _zero_point(inputs[2] if len(inputs) > 2 else None, a, (rows,), "a_zero_point")
    _zero_point(inputs[3] if len(inputs) > 3 else None, b, (b.shape[-1],), "b_zero_point")
    return [(shape, np.dtype(np.int32))]


def _mmi_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    a, b = arrays[0], arrays[1]
    a_zp = arrays[2] if len(arrays) > 2 else None
    b_zp = arrays[3] if len(arrays) > 3 else None
    y = np.matmul(_shifted(a, a_zp, (-1, 1)), _shifted(b, b_zp, (-1,)))
    return [np.asarray(y).astype(np.int64).astype(np.int32)]


def _mmi_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    return io_cost(2 * outputs[0].size * inputs[0].shape[-1], inputs, outputs)


register(OpDef("MatMulInteger", _mmi_infer, _mmi_reference, _mmi_cost, min_inputs=2, max_inputs=4))


def _ci_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, w = inputs[0], inputs[1]
    check_dtype(x.dtype, INTEGER_OPERANDS, "x")
    check_dtype(w.dtype, INTEGER_OPERANDS, "w")
    window = conv_window([x, w], attrs)
    _zero_point(inputs[2] if len(inputs) > 2 else None, x, (), "x_zero_point")
    _zero_point(inputs[3] if len(inputs) > 3 else None, w, (w.shape[0],), "w_zero_point")
    return [((x.shape[0], w.shape[0], *window.out), np.dtype(np.int32))]


def _ci_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, w = arrays[0], arrays[1]
    x_zp = arrays[2] if len(arrays) > 2 else None
    w_zp = arrays[3] if len(arrays) > 3 else None
    # Padding holds x's zero point, so it adds nothing: pad the shifted input with zeros.
    xs = _shifted(x, x_zp, ())
    ws = _shifted(w, w_zp, (-1,) + (1,) * (w.ndim - 1))
    window = window_geometry(xs.shape[2:], tuple(ws.shape[2:]), attrs)
    group = int(attrs["group"])
    if group == xs.shape[1] and ws.shape[0] == group:
        y = depthwise_conv(xs, ws, window)
    else:
        y = conv2col_matmul(xs, ws, group, window)
    return [np.rint(y).astype(np.int64).astype(np.int32)]


def _ci_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x, w = inputs[0], inputs[1]
    macs = outputs[0].size * (x.shape[1] // int(attrs["group"])) * math.prod(w.shape[2:])
    return io_cost(2 * macs, inputs, outputs)


register(
    OpDef(
        "ConvInteger",
        _ci_infer,
        _ci_reference,
        _ci_cost,
        min_inputs=2,
        max_inputs=4,
        attrs={**WINDOW_ATTRS, "group": 1, "kernel_shape": []},
    )
)
