"""QLinearConv on the cpu target: the exact integer accumulator by a float64 conv, then a
requantizing kernel.

QLinearConv (the QOperator format's conv) sums (x - x_zero) * (w - w_zero) over each window
exactly, adds its int32 bias and requantizes: ``saturate(rint(float32(int32(acc)) * m) + y_zero)``
with ``m = x_scale * w_scale / y_scale`` per output channel (see
:func:`eqsat.ops.quant_linear.requantize`). Its numpy reference gathers patches in float64 and
multiplies with numpy (a QOperator ResNet-18 took 3.2x onnxruntime's time). Here the shifted
input goes through :mod:`eqsat.lowering.cpu_conv`'s conv (im2col or the planes' width and the
register tiles): in float32 where no sum of products of 8-bit values can pass 2**24 (depthwise
convs, 1x1 convs of a few hundred channels), else in float64, exact up to 2**53; either way
exact whatever the order of the sums. The bias rides in as the conv's. Winograd, whose transforms round, is
not used. :func:`requantize_channels` then computes the reference's float32 steps.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.cpu import Env, Lowering, Step
from eqsat.lowering.memory import Usage
from numba import njit

from eqsat.ir import Node, Value
from eqsat.ops.conv import window_geometry
from eqsat.ops.quant_linear import _multiplier

F = np.float32
# Integers, and sums of them, are exact in float32 below this.
EXACT_FLOAT32 = float(1 << 24)


@njit(cache=True, error_model="numpy", nogil=True)
def requantize_channels(acc, multiplier, zero, lo, hi, out):  # type: ignore[no-untyped-def]
    """out (N, M, P) = saturate(rint(float32(int32(acc)) * multiplier[m]) + zero) for the
    exact integer accumulator acc (float32 or float64, N x M x P): the reference's steps, the
    int32 wrap included."""
    for i in range(acc.shape[0]):
        for m in range(acc.shape[1]):
            scale = multiplier[m]
            src = acc[i, m]
            dst = out[i, m]
            for p in range(src.shape[0]):
                wrapped = np.int32(np.int64(src[p]))
                scaled = np.rint(F(wrapped) * scale)
                dst[p] = min(max(scaled, lo - zero), hi - zero) + zero


def exact_in_float32(x_dtype: np.dtype, x_zero: int, shifted_w: np.ndarray,
                     bias: np.ndarray | None) -> bool:  # fmt: skip
    """Whether no sum of a conv's products (input minus its zero point, by ``shifted_w``, the
    weights minus theirs, (M, C/G, ...)) plus its bias can pass 2**24, so float32 computes every
    sum exactly: a 1x1 conv of up to ~500 channels, any depthwise conv. float32 is 2-3x faster
    than float64 there, which is exact for any realistic depth."""
    info = np.iinfo(x_dtype)
    largest_x = max(x_zero - info.min, info.max - x_zero)
    largest_w = float(np.abs(shifted_w).max(initial=0))
    depth = int(np.prod(shifted_w.shape[1:], dtype=np.int64))
    largest_bias = 0.0 if bias is None else float(np.abs(bias).max(initial=0))
    return depth * largest_x * largest_w + largest_bias < EXACT_FLOAT32


def build(lowering: Lowering, node: Node) -> Step | None:
    """The step of a QLinearConv whose weights and quantization parameters are constants, or
    None (the reference runs it)."""
    from eqsat.lowering import cpu_conv, cpu_ops

    x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero = node.inputs[:8]
    bias = node.inputs[8] if len(node.inputs) > 8 else None
    out = node.outputs[0]
    params = (x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias)
    if x is None or out is None or x.const is not None or x.rank not in (3, 4):
        return None
    if any(p is not None and p.const is None for p in params) or None in params[:7]:
        return None
    m = w.shape[0]
    window = window_geometry(x.shape[2:], tuple(w.shape[2:]), node.attrs)
    per_channel = (-1,) + (1,) * (w.rank - 1)
    shifted_w = w.const.astype(np.float64) - np.broadcast_to(
        w_zero.const.reshape(-1).astype(np.float64), (m,)
    ).reshape(per_channel)
    exact32 = exact_in_float32(
        x.dtype, int(x_zero.const.reshape(())), shifted_w, None if bias is None else bias.const
    )
    real = np.dtype(np.float32 if exact32 else np.float64)
    conv_bias = np.zeros(m) if bias is None else bias.const.astype(np.float64).reshape(-1)
    conv_bias = conv_bias.astype(real)
    shifted_w = shifted_w.astype(real)
    # The conv on the shifted input, as an ordinary float64 Conv node of this step's own.
    xs = Value(f"{node.name}/shifted", x.shape, real)
    ws = Value(f"{node.name}/weights", w.shape, real, const=shifted_w)
    acc = Value(f"{node.name}/accumulator", out.shape, real)
    attrs = {k: v for k, v in node.attrs.items() if k != "epilogue"}
    conv = Node("Conv", [xs, ws], [acc], attrs, f"{node.name}/conv")
    step = cpu_conv.build(
        lowering, conv, xs, [], conv_bias, window,
        lambda purpose: cpu_ops._scratch(lowering, purpose),
        lambda: None,
    )  # fmt: skip
    assert step.bind is not None
    shifted = np.empty(x.shape, real)
    accumulator = np.empty(out.shape, real)
    own = {lowering.slot(xs): shifted, lowering.slot(acc): accumulator}
    run_conv = step.bind(own)
    assert run_conv is not None
    multiplier = np.ascontiguousarray(
        np.broadcast_to(
            _multiplier(x_scale.const.reshape(()), w_scale.const.reshape(-1), y_scale.const), (m,)
        ),
        np.float32,
    )
    info = np.iinfo(out.dtype)
    zero = F(y_zero.const.reshape(()))
    x_offset = float(x_zero.const.reshape(()))
    lo, hi = F(info.min), F(info.max)
    rows = (out.shape[0], m, int(np.prod(out.shape[2:], dtype=np.int64)))
    xi, o = lowering.slot(x), lowering.slot(out)

    def run(env: Env) -> None:
        np.subtract(env[xi], x_offset, out=shifted)
        for slot, array in own.items():  # for conv paths that read them from env (batches)
            env[slot] = array
        run_conv(env)
        requantize_channels(
            accumulator.reshape(rows), multiplier, zero, lo, hi, env[o].reshape(rows)
        )

    return Step(run, Usage([xi], [o], True), "conv", node.name)


__all__ = ["build", "exact_in_float32", "requantize_channels"]
