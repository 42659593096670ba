"""QOperator quantization: QLinearConv and QLinearMatMul, int8/uint8 in and out.

What the ONNX model zoo's int8 models (ResNet50-int8, MobileNetV2-int8, ...) and onnxruntime's
static quantizer in QOperator format are made of: the operands carry a scale and zero point each,
the integer products accumulate exactly, and the sum is requantized with the output's scale and
zero point. The references compute the accumulator exactly (float64 holds every integer product
sum below 2**53) and requantize as onnxruntime 1.32's MLAS does (``MlasRequantizeOutput``): the
multiplier is ``(x_scale * w_scale) / y_scale`` in float32 (float16 scales are widened first), the
int32 accumulator (bias added) is converted to float32 and multiplied by it, rounded half to even,
saturated and offset by the zero point.

One onnxruntime quirk is deliberately not copied: on AVX2 machines without VNNI its uint8 x int8
kernel adds pairs of products in int16 with saturation (vpmaddubsw), so with full-range int8
weights its results depend on the CPU. eqsat computes the exact integer result the operator
defines, which equals onnxruntime's whenever the weights fit in 7 bits (what its quantizer's
``reduce_range`` is for) and on VNNI machines.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, broadcast_shapes, register
from eqsat.ops.conv import (
    WINDOW_ATTRS,
    conv2col_matmul,
    conv_window,
    depthwise_conv,
    window_geometry,
)
from eqsat.ops.nn import check_dtype, io_cost, matmul_shape
from eqsat.ops.quant import INTEGER_OPERANDS

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
I32 = np.dtype(np.int32)


def _check_param(
    scale: Value, zero: Value, operand: Value, what: str, scale_dtypes: tuple[np.dtype, ...]
) -> None:
    """The scale is a float and the zero point has its operand's integer type."""
    check_dtype(scale.dtype, scale_dtypes, f"{what}_scale")
    if zero.dtype != operand.dtype:
        raise ShapeError(
            f"{what}_zero_point has dtype {zero.dtype}, but {what} is {operand.dtype}: "
            "a zero point must have its operand's type"
        )


def _required(inputs: list[Value | None], names: tuple[str, ...]) -> None:
    missing = [n for n, v in zip(names, inputs, strict=False) if v is None]
    if missing:
        raise ShapeError(f"required input(s) {missing} are missing")


QCONV_INPUTS = ("x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale",
                "y_zero_point")  # fmt: skip
QMATMUL_INPUTS = ("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale",
                  "y_zero_point")  # fmt: skip


def _per_tensor(param: Value, what: str) -> None:
    if param.size != 1 or param.rank > 1:
        raise ShapeError(
            f"{what} must be per tensor (a scalar or of shape (1,)), got {param.shape}"
        )


def requantize(acc: np.ndarray, multiplier: Any, zero: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``saturate(round_half_even(float32(acc) * multiplier) + zero)`` as onnxruntime's MLAS.

    ``acc`` is the exact integer accumulator; onnxruntime holds it in int32, so it wraps there
    (the spec allows 32-bit overflow) before the float32 conversion, which rounds above 2**24.
    """
    wrapped = acc.astype(np.int64).astype(I32)
    scaled = np.rint(wrapped.astype(F32) * np.asarray(multiplier, F32))
    info = np.iinfo(dtype)
    # Clamping before adding the zero point (as MLAS does) keeps the sum in float32's exact range.
    zp = zero.astype(F32)
    return (np.clip(scaled, info.min - zp, info.max - zp) + zp).astype(dtype)


def _multiplier(a_scale: np.ndarray, b_scale: np.ndarray, y_scale: np.ndarray) -> np.ndarray:
    """``(a_scale * b_scale) / y_scale`` in float32: onnxruntime's order (it differs in the last
    bit from ``a_scale * (b_scale / y_scale)`` often enough to move a rounding tie)."""
    return (a_scale.astype(F32) * b_scale.astype(F32)) / y_scale.astype(F32).reshape(())


# ----------------------------------------------------------------------------------- QLinearConv
def _qconv_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    _required(inputs, QCONV_INPUTS)
    x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero = inputs[:8]
    bias = inputs[8] if len(inputs) > 8 else None
    check_dtype(x.dtype, INTEGER_OPERANDS, "x")
    check_dtype(w.dtype, INTEGER_OPERANDS, "w")
    check_dtype(y_zero.dtype, INTEGER_OPERANDS, "y_zero_point")
    _check_param(x_scale, x_zero, x, "x", (F32,))
    _check_param(w_scale, w_zero, w, "w", (F32,))
    check_dtype(y_scale.dtype, (F32,), "y_scale")
    for param, what in (
        (x_scale, "x_scale"),
        (x_zero, "x_zero_point"),
        (y_scale, "y_scale"),
        (y_zero, "y_zero_point"),
    ):
        _per_tensor(param, what)
    m = w.shape[0] if w.rank else 0
    for param, what in ((w_scale, "w_scale"), (w_zero, "w_zero_point")):
        if not (param.size == 1 and param.rank <= 1) and param.shape != (m,):
            raise ShapeError(
                f"{what} must be per tensor or per output channel (shape ({m},)), got {param.shape}"
            )
    if bias is not None:
        check_dtype(bias.dtype, (I32,), "B")
    window = conv_window([x, w, bias], attrs)  # Conv's shape rule, bias shape included
    return [((x.shape[0], m, *window.out), y_zero.dtype)]


def _qconv_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero = arrays[:8]
    bias = arrays[8] if len(arrays) > 8 else None
    m = w.shape[0]
    per_channel = (-1,) + (1,) * (w.ndim - 1)
    # Padding holds x's zero point, so it adds nothing: pad the shifted input with zeros.
    xs = x.astype(np.float64) - x_zero.astype(np.float64).reshape(())
    w_zero = np.broadcast_to(w_zero.reshape(-1), (m,))
    ws = w.astype(np.float64) - w_zero.astype(np.float64).reshape(per_channel)
    window = window_geometry(xs.shape[2:], tuple(ws.shape[2:]), attrs)
    group = int(attrs["group"])
    if group == xs.shape[1] and m == group:
        acc = depthwise_conv(xs, ws, window)
    else:
        acc = conv2col_matmul(xs, ws, group, window)
    spatial = (1,) * (x.ndim - 2)
    acc = acc.astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64).reshape(1, -1, *spatial)
    scale = np.broadcast_to(w_scale.reshape(-1), (m,))
    multiplier = _multiplier(x_scale.reshape(()), scale, y_scale).reshape(1, -1, *spatial)
    return [requantize(acc, multiplier, y_zero.reshape(()), outs[0].dtype)]


def _qconv_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x, w, y = inputs[0], inputs[3], outputs[0]
    macs = y.size * (x.shape[1] // int(attrs["group"])) * math.prod(w.shape[2:])
    return io_cost(2 * macs + 4 * y.size, inputs, outputs)  # + scale, round, add, saturate


register(
    OpDef(
        "QLinearConv",
        _qconv_infer,
        _qconv_reference,
        _qconv_cost,
        min_inputs=8,
        max_inputs=9,
        attrs={**WINDOW_ATTRS, "group": 1, "kernel_shape": []},
    )
)


# --------------------------------------------------------------------------------- QLinearMatMul
def _matmul_param(param: Value, operand: Value, contracted: int, what: str) -> None:
    """Per tensor, or one value per row of ``a`` / column of ``b``: a shape that broadcasts
    against the operand without growing it and is 1 on the contracted axis (``contracted`` is -1
    for a, -2 for b). A 1-D parameter of b holds one value per column."""
    if param.size == 1 and param.rank <= 1:
        return
    shape = param.shape
    fits = operand.rank >= 2 and (
        (contracted == -2 and param.rank == 1 and shape[0] == operand.shape[-1])
        or (param.rank >= 2 and shape[contracted] == 1)
    )
    if fits:
        try:
            fits = broadcast_shapes(shape, operand.shape) == operand.shape
        except ShapeError:
            fits = False
    if not fits:
        per = "row (shape [..., M, 1])" if contracted == -1 else "column (shape [..., 1, N])"
        raise ShapeError(f"{what} must be per tensor or per {per} of {operand.shape}, got {shape}")


def _qmatmul_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    _required(inputs, QMATMUL_INPUTS)
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = inputs
    check_dtype(a.dtype, INTEGER_OPERANDS, "a")
    check_dtype(b.dtype, INTEGER_OPERANDS, "b")
    check_dtype(y_zero.dtype, INTEGER_OPERANDS, "y_zero_point")
    scales = (F32, F16)
    _check_param(a_scale, a_zero, a, "a", scales)
    _check_param(b_scale, b_zero, b, "b", scales)
    check_dtype(y_scale.dtype, scales, "y_scale")
    if len({a_scale.dtype, b_scale.dtype, y_scale.dtype}) != 1:
        raise ShapeError(
            f"a_scale, b_scale and y_scale must share one dtype, got {a_scale.dtype}, "
            f"{b_scale.dtype} and {y_scale.dtype}"
        )
    shape = matmul_shape(a.shape, b.shape)
    for param, operand, axis, what in (
        (a_scale, a, -1, "a_scale"),
        (a_zero, a, -1, "a_zero_point"),
        (b_scale, b, -2, "b_scale"),
        (b_zero, b, -2, "b_zero_point"),
    ):
        _matmul_param(param, operand, axis, what)
    _per_tensor(y_scale, "y_scale")
    _per_tensor(y_zero, "y_zero_point")
    return [(shape, y_zero.dtype)]


def _as_operand_param(param: np.ndarray) -> np.ndarray:
    """A parameter in the broadcasting form :func:`_matmul_param` accepted."""
    return param.reshape(()) if param.size == 1 and param.ndim <= 1 else param


def _qmatmul_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = arrays
    a_scale, a_zero, b_scale, b_zero = map(_as_operand_param, (a_scale, a_zero, b_scale, b_zero))
    acc = np.matmul(
        a.astype(np.float64) - a_zero.astype(np.float64),
        b.astype(np.float64) - b_zero.astype(np.float64),
    )
    multiplier = _multiplier(a_scale, b_scale, y_scale)
    if a.ndim < 2 or b.ndim < 2:  # 1-D operands take per-tensor parameters only
        multiplier = multiplier.reshape(())
    return [requantize(np.asarray(acc), multiplier, y_zero.reshape(()), outs[0].dtype)]


def _qmatmul_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    y = outputs[0]
    return io_cost(2 * y.size * inputs[0].shape[-1] + 4 * y.size, inputs, outputs)


register(
    OpDef(
        "QLinearMatMul",
        _qmatmul_infer,
        _qmatmul_reference,
        _qmatmul_cost,
        min_inputs=8,
        max_inputs=8,
    )
)
