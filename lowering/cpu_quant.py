"""Dynamic quantization on the cpu target: DynamicQuantizeLinear and MatMulInteger.

What onnxruntime's ``quantize_dynamic`` writes (the ``model_quantized.onnx`` of many exported
transformer encoders): each activation is quantized per run to uint8 (DynamicQuantizeLinear),
multiplied against constant int8/uint8 weights into int32 (MatMulInteger), then cast and rescaled
by ordinary float ops. The numpy reference ran these at 2.4x onnxruntime's time on a quantized
BERT (numpy's integer matmul has no BLAS).

* :func:`quantize_dynamic` is the reference's float32 arithmetic in one Numba kernel: the range
  widened to include 0, the scale ``range / 255`` (1 for an all-zero input), the zero point and
  every value rounded half to even after a correctly rounded float32 division, so its bytes are
  the reference's (and onnxruntime's) exactly. An input with a NaN takes the reference.
* MatMulInteger's products are exact integers, computed by float32 GEMMs: (A - a_zp) @ (B - b_zp)
  = A @ B' - a_zp * colsum(B') with B' = B - b_zp prepared once as float32 (integers of at most
  255 in magnitude, exactly represented). A float32 sum of integer products is exact while every
  partial sum stays below 2**24, so K is cut into chunks of at most ``2**24 / (max|A| *
  max|B'|)`` (512 for uint8 activations by int8 weights), each chunk's product added into the
  int32 result. Weights that are not constant, or zero points per row of A, take the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import cpu_qlinear_conv
from eqsat.lowering.cpu import Env, Lowering, Step
from eqsat.lowering.memory import Usage
from numba import njit

from eqsat.ir import Node, Value

F = np.float32
# Integers up to this magnitude are exact in float32, and so is every sum of them below it.
EXACT_FLOAT32 = float(1 << 24)


@njit(cache=True, error_model="numpy", nogil=True)
def quantize_dynamic(x, y, scale_zp):  # type: ignore[no-untyped-def]
    """y (uint8, like x's flattened float32 values) and ``scale_zp`` = [scale, zero point] as
    DynamicQuantizeLinear computes them; returns False (nothing written) if x holds a NaN."""
    lo = F(0.0)
    hi = F(0.0)
    for i in range(x.size):
        v = x[i]
        if v != v:
            return False
        lo = min(lo, v)
        hi = max(hi, v)
    scale = (hi - lo) / F(255.0) if hi != lo else F(1.0)
    zp = np.rint(min(max(F(0.0) - lo / scale, F(0.0)), F(255.0)))
    for i in range(x.size):
        q = np.rint(x[i] / scale) + zp
        y[i] = np.uint8(min(max(q, F(0.0)), F(255.0)))
    scale_zp[0] = scale
    scale_zp[1] = zp
    return True


def _dynamic_quantize(lowering: Lowering, node: Node) -> Step | None:
    from eqsat import ops

    x = node.inputs[0]
    if x is None or x.const is not None or x.dtype != np.dtype(np.float32):
        return None
    outs = [None if v is None else lowering.slot(v) for v in node.outputs]
    xs = lowering.slot(x)
    opdef = ops.get(node.op, node.name)
    scale_zp = np.zeros(2, np.float32)

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(-1)
        y = np.empty(data.size, np.uint8)
        if quantize_dynamic(data, y, scale_zp):
            results = [y.reshape(x.shape), scale_zp[0].copy(), np.uint8(scale_zp[1])]
        else:  # a NaN: the reference's arithmetic, NaN scale included
            with np.errstate(all="ignore"):
                results = opdef.evaluate(node, [env[xs]])
        for slot, value, dtype in zip(outs, results, (np.uint8, np.float32, np.uint8), strict=True):
            if slot is not None:
                env[slot] = np.asarray(value, dtype)

    return Step(run, Usage([xs], [s for s in outs if s is not None], False), "kernel", node.name)


def _weights(b: np.ndarray, b_zp: np.ndarray | None) -> np.ndarray:
    """B - b_zp as float32 (exact: at most 255 in magnitude)."""
    shifted = b.astype(np.int32)
    if b_zp is not None and b_zp.size:
        shifted = shifted - b_zp.astype(np.int32).reshape(-1 if b_zp.size > 1 else ())
    return np.ascontiguousarray(shifted, np.float32)


@njit(cache=True, error_model="numpy", nogil=True)
def add_integers(product, result, colsum, zp, first):  # type: ignore[no-untyped-def]
    """result (int32) = (0 if ``first`` else result) + product (float32 holding exact integers)
    - zp * colsum (per column, applied with the first chunk)."""
    rows, n = product.shape
    for i in range(rows):
        p = product[i]
        r = result[i]
        if first:
            for j in range(n):
                r[j] = np.int32(np.int64(p[j]) - zp * colsum[j])
        else:
            for j in range(n):
                r[j] = np.int32(r[j] + np.int64(p[j]))


def _integer_product(lowering: Lowering, a: Value, a_zp: Value | None, b: Value,
                     b_zp: Value | None) -> tuple[Any, list[int]] | None:  # fmt: skip
    """``compute(env, result)``: result (rows, N) int32 = (A - a_zp) @ (B - b_zp) for A's rows
    (read from env), and the slots it reads; None where B or its zero point is not constant,
    B is not 2-D, or a_zp is not one value."""
    from eqsat.lowering import cpu_gemm

    if b.const is None or b.rank != 2 or a.rank < 1:
        return None
    if a_zp is not None and a_zp.size != 1:
        return None  # per-row zero points: the reference
    if b_zp is not None and b_zp.const is None:
        return None
    k, n = b.shape
    rows = int(np.prod(a.shape[:-1], dtype=np.int64)) if a.rank > 1 else 1
    if k == 0 or rows == 0 or n == 0:
        return None
    weights = _weights(b.const, None if b_zp is None else b_zp.const)
    colsum = weights.astype(np.int64).sum(axis=0)
    largest_a = 255 if a.dtype == np.dtype(np.uint8) else 128
    largest_b = max(1, int(np.abs(weights).max()))
    chunk = max(1, min(k, int(EXACT_FLOAT32 // (largest_a * largest_b))))
    count = lowering.split(2.0 * rows * k * n)
    products = []  # per chunk of K: its float32 rows of A and its product
    for k0 in range(0, k, chunk):
        k1 = min(k, k0 + chunk)
        part = np.ascontiguousarray(weights[k0:k1])
        mm = cpu_gemm.packed_matmul(part, rows, lowering.pool, count)
        if mm is None:
            mm = lambda x, y, o, part=part: np.matmul(x, part, out=o)  # noqa: E731
        products.append((k0, k1, np.empty((rows, k1 - k0), np.float32), mm))
    product = np.empty((rows, n), np.float32)
    a_slot = lowering.slot(a)
    zp_const = None if a_zp is None or a_zp.const is None else int(a_zp.const.reshape(-1)[0])
    zp_slot = None if a_zp is None or a_zp.const is not None else lowering.slot(a_zp)

    def compute(env: Env, result: np.ndarray) -> None:
        source = np.asarray(env[a_slot]).reshape(rows, k)
        zp = zp_const if zp_slot is None else int(np.asarray(env[zp_slot]).reshape(-1)[0])
        for i, (k0, k1, a_float, mm) in enumerate(products):
            np.copyto(a_float, source[:, k0:k1])
            mm(a_float, None, product)
            add_integers(product, result, colsum, zp or 0, i == 0)

    return compute, [a_slot] + ([zp_slot] if zp_slot is not None else [])


def _matmul_integer(lowering: Lowering, node: Node) -> Step | None:
    a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
    a_zp = node.inputs[2] if len(node.inputs) > 2 else None
    b_zp = node.inputs[3] if len(node.inputs) > 3 else None
    if a is None or b is None or out is None:
        return None
    made = _integer_product(lowering, a, a_zp, b, b_zp)
    if made is None:
        return None
    compute, reads = made
    o, shape = lowering.slot(out), (-1, b.shape[1])

    def run(env: Env) -> None:
        compute(env, env[o].reshape(shape))

    return Step(run, Usage(reads, [o], True), "gemm", node.name)


@njit(cache=True, error_model="numpy", nogil=True)
def requantize_columns(acc, multiplier, zero, lo, hi, out):  # type: ignore[no-untyped-def]
    """out (R, N) = saturate(rint(float32(acc) * multiplier[n]) + zero) for the int32
    accumulator acc (R, N): QLinearMatMul's requantization (eqsat.ops.quant_linear.requantize)."""
    for r in range(acc.shape[0]):
        src = acc[r]
        dst = out[r]
        for j in range(src.shape[0]):
            scaled = np.rint(F(src[j]) * multiplier[j])
            dst[j] = min(max(scaled, lo - zero), hi - zero) + zero


def _qlinear_matmul(lowering: Lowering, node: Node) -> Step | None:
    from eqsat.ops.quant_linear import _multiplier

    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = node.inputs[:8]
    out = node.outputs[0]
    params = (a_scale, a_zero, b_scale, b_zero, y_scale, y_zero)
    if a is None or b is None or out is None or any(p is None or p.const is None for p in params):
        return None
    if (
        any(p.dtype != np.dtype(np.float32) for p in (a_scale, b_scale, y_scale))
        or a_scale.size != 1
    ):
        return None
    made = _integer_product(lowering, a, a_zero, b, b_zero)
    if made is None:
        return None
    compute, reads = made
    n = b.shape[1]
    multiplier = np.ascontiguousarray(
        np.broadcast_to(
            _multiplier(a_scale.const.reshape(()), b_scale.const.reshape(-1), y_scale.const), (n,)
        ),
        np.float32,
    )
    accumulator = np.empty((out.size // n, n), np.int32)
    info = np.iinfo(out.dtype)
    zero, lo, hi = F(y_zero.const.reshape(())), F(info.min), F(info.max)
    o = lowering.slot(out)

    def run(env: Env) -> None:
        compute(env, accumulator)
        requantize_columns(accumulator, multiplier, zero, lo, hi, env[o].reshape(accumulator.shape))

    return Step(run, Usage(reads, [o], True), "gemm", node.name)


@njit(cache=True, error_model="numpy", nogil=True)
def quantize_linear(x, scale, zero, lo, hi, out):  # type: ignore[no-untyped-def]
    """out (A, C, B) = saturate(rint(x / scale[c]) + zero[c]) to [lo, hi], x float32 (A, C, B):
    QuantizeLinear per tensor (C = 1) or per axis, in the reference's float32 steps."""
    for a in range(x.shape[0]):
        for c in range(x.shape[1]):
            s = scale[c]
            z = zero[c]
            src = x[a, c]
            dst = out[a, c]
            for b in range(src.shape[0]):
                q = np.rint(src[b] / s) + z
                dst[b] = min(max(q, lo), hi)


@njit(cache=True, error_model="numpy", nogil=True)
def dequantize_linear(x, scale, zero, out):  # type: ignore[no-untyped-def]
    """out (A, C, B) float32 = (x - zero[c]) * scale[c]: DequantizeLinear of 8- or 16-bit x."""
    for a in range(x.shape[0]):
        for c in range(x.shape[1]):
            s = scale[c]
            z = zero[c]
            src = x[a, c]
            dst = out[a, c]
            for b in range(src.shape[0]):
                dst[b] = F(np.int32(src[b]) - z) * s


def _per_channel(node: Node, x: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]] | None:
    """A Q/DQ node's constant float32 scale and zero point, one per channel of the (outer,
    channels, inner) view of x; None where they are not constant, blocked or not float32."""
    scale = node.inputs[1]
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    if scale is None or scale.const is None or scale.dtype != np.dtype(np.float32):
        return None
    if (zero is not None and zero.const is None) or int(node.attrs.get("block_size", 0)):
        return None
    if int(node.attrs.get("precision", 0)) not in (0, 1):
        return None
    channels = scale.size
    if channels == 1:
        view = (1, 1, x.size)
    else:
        axis = int(node.attrs.get("axis", 1)) % x.rank
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        view = (outer, x.shape[axis], int(np.prod(x.shape[axis + 1 :], dtype=np.int64)))
    zeros = np.zeros(channels) if zero is None else zero.const.reshape(-1).astype(np.float64)
    return np.ascontiguousarray(scale.const.reshape(-1), np.float32), zeros, view


def _linear_step(lowering: Lowering, node: Node, kernel: Any, extra: tuple) -> Step:
    x, out = node.inputs[0], node.outputs[0]
    xs, o = lowering.slot(x), lowering.slot(out)
    view = extra[0]

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(view)
        kernel(data, *extra[1:], env[o].reshape(view))

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


def _quantize_linear(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or x.const is not None or x.dtype != np.dtype(np.float32):
        return None
    if out.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)) or x.size == 0:
        return None
    params = _per_channel(node, x)
    if params is None:
        return None
    scale, zeros, view = params
    info = np.iinfo(out.dtype)
    zero = zeros.astype(np.float32)
    return _linear_step(
        lowering, node, quantize_linear, (view, scale, zero, F(info.min), F(info.max))
    )


def _dequantize_linear(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or x.const is not None or out.dtype != np.dtype(np.float32):
        return None
    if x.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)) or x.size == 0:
        return None  # 16- and 32-bit inputs: the reference's int64 arithmetic
    params = _per_channel(node, x)
    if params is None:
        return None
    scale, zeros, view = params
    return _linear_step(lowering, node, dequantize_linear, (view, scale, zeros.astype(np.int32)))


_BUILDERS: dict[str, Any] = {
    "DynamicQuantizeLinear": _dynamic_quantize,
    "MatMulInteger": _matmul_integer,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
    "QLinearConv": cpu_qlinear_conv.build,
    "ConvInteger": cpu_qlinear_conv.build_integer,
    "QLinearMatMul": _qlinear_matmul,
}


def build_step(lowering: Lowering, node: Node) -> Step | None:
    builder = _BUILDERS.get(node.op)
    return None if builder is None else builder(lowering, node)


__all__ = [
    "add_integers", "build_step", "dequantize_linear", "quantize_dynamic", "quantize_linear",
    "requantize_columns",
]  # fmt: skip
