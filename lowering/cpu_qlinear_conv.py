"""QLinearConv on the cpu target: the exact integer accumulator by a float conv, then a
requantizing kernel.

QLinearConv (the QOperator format's conv) sums (x - x_zero) * (w - w_zero) over each window
exactly, adds its int32 bias and requantizes: ``saturate(rint(float32(int32(acc)) * m) + y_zero)``
with ``m = x_scale * w_scale / y_scale`` per output channel (see
:func:`eqsat.ops.quant_linear.requantize`). Its numpy reference gathers patches in float64 and
multiplies with numpy (a QOperator ResNet-18 took 3.2x onnxruntime's time). Depthwise convs take
the depthwise kernels (:mod:`eqsat.lowering.cpu_depthwise_step`); the others go through
:mod:`eqsat.lowering.cpu_conv` (im2col or the planes' width and the register tiles), on the input
minus its zero point. Every sum stays exact whatever its order: in float32 where no sum of
products of 8-bit values can pass 2**24 (depthwise convs, 1x1 convs of a few hundred channels);
else as float32 convs over chunks of input channels short enough for that, added up in float64;
past :data:`MAX_CHUNKS` chunks, one float64 conv. The bias rides in as the conv's (in the float64
total when chunked). Winograd, whose transforms round, is not used. ConvInteger takes the same
sums as int32. :func:`requantize_channels` then computes the reference's float32 steps.
"""

from __future__ import annotations

from typing import Any

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
# At most this many float32 convs over chunks of input channels; deeper convs run in float64.
MAX_CHUNKS = 16


@njit(cache=True, error_model="numpy", nogil=True)
def requantize_channels(acc, multiplier, zero, lo, hi, out, wrap):  # type: ignore[no-untyped-def]
    """out (N, M, P) = saturate(rint(float32(int32(acc)) * multiplier[m]) + zero) for the
    exact integer accumulator acc (N x M x P): the reference's steps, the int32 wrap included
    where ``wrap``; without it (a float32 accumulator, whose integers are below 2**24 and so
    the same in int32 and float32) the loop has no conversions and vectorizes."""
    for i in range(acc.shape[0]):
        for m in range(acc.shape[1]):
            scale = multiplier[m]
            src = acc[i, m]
            dst = out[i, m]
            for p in range(src.shape[0]):
                value = F(np.int32(np.int64(src[p]))) if wrap else F(src[p])
                scaled = np.rint(value * scale)
                dst[p] = min(max(scaled, lo - zero), hi - zero) + zero


@njit(cache=True, error_model="numpy", nogil=True)
def add_chunk(acc, total, bias, first):  # type: ignore[no-untyped-def]
    """total (N, M, P) float64 = (bias[m] if ``first`` else total) + acc (float32 integers)."""
    for i in range(acc.shape[0]):
        for m in range(acc.shape[1]):
            src = acc[i, m]
            dst = total[i, m]
            b = bias[m]
            if first:
                for p in range(src.shape[0]):
                    dst[p] = b + src[p]
            else:
                for p in range(src.shape[0]):
                    dst[p] += src[p]


@njit(cache=True, error_model="numpy", nogil=True)
def shift(x, offset, out):  # type: ignore[no-untyped-def]
    """out = x - offset, 8-bit integers to the conv's float type (flat arrays)."""
    for i in range(x.size):
        out[i] = x[i] - offset


def _float_conv(lowering: Lowering, node: Node, x_shape: tuple[int, ...], span: tuple[int, int],
                weights: np.ndarray, bias: np.ndarray, window: Any, out_shape: tuple[int, ...],
                depthwise: bool) -> tuple[np.ndarray, np.ndarray, dict, Any]:  # fmt: skip
    """The conv of input channels span[0]:span[1] of an input shaped ``x_shape`` (shifted) by
    ``weights``, as an ordinary float Conv node of the step's own: its input and accumulator
    buffers, their slots, and its run."""
    from eqsat.lowering import cpu_conv, cpu_depthwise_step, cpu_ops

    real = weights.dtype
    c0, c1 = span
    part_shape = (x_shape[0], c1 - c0, *x_shape[2:])
    tag = f"{node.name}/{c0}"
    xs = Value(f"{tag}/shifted", part_shape, real)
    ws = Value(f"{tag}/weights", weights.shape, real, const=weights)
    acc = Value(f"{tag}/accumulator", out_shape, real)
    attrs = {k: v for k, v in node.attrs.items() if k != "epilogue"}
    conv = Node("Conv", [xs, ws], [acc], attrs, f"{tag}/conv")
    if depthwise:  # the depthwise kernels (float32: nine products never pass 2**24)
        step = cpu_depthwise_step.build(lowering, conv, xs, [], bias, window)
    else:
        step = cpu_conv.build(
            lowering, conv, xs, [], bias, window,
            lambda purpose: cpu_ops._scratch(lowering, purpose),
            lambda: None,
        )  # fmt: skip
    shifted, accumulator = np.empty(part_shape, real), np.empty(out_shape, real)
    own = {lowering.slot(xs): shifted, lowering.slot(acc): accumulator}
    run_conv = (step.bind(own) if step.bind is not None else None) or step.run
    return shifted, accumulator, own, run_conv


def largest_product(x_dtype: np.dtype, x_zero: int, shifted_w: np.ndarray) -> float:
    """The largest |(x - x_zero) * (w - w_zero)| a conv can sum."""
    info = np.iinfo(x_dtype)
    return max(x_zero - info.min, info.max - x_zero) * float(np.abs(shifted_w).max(initial=0))


def exact_in_float32(x_dtype: np.dtype, x_zero: int, shifted_w: np.ndarray,
                     bias: np.ndarray | None) -> bool:  # fmt: skip
    """Whether no sum of a conv's products (input minus its zero point, by ``shifted_w``, the
    weights minus theirs, (M, C/G, ...)) plus its bias can pass 2**24, so float32 computes every
    sum exactly: a 1x1 conv of up to ~500 channels, any depthwise conv. float32 is 2-3x faster
    than float64 there, which is exact for any realistic depth."""
    depth = int(np.prod(shifted_w.shape[1:], dtype=np.int64))
    largest_bias = 0.0 if bias is None else float(np.abs(bias).max(initial=0))
    return depth * largest_product(x_dtype, x_zero, shifted_w) + largest_bias < EXACT_FLOAT32


def _exact_conv(lowering: Lowering, node: Node, x: Value, x_zero: int | None, w: np.ndarray,
                w_zero: np.ndarray | None, bias: np.ndarray | None,
                out_shape: tuple[int, ...]) -> tuple[Any, bool]:  # fmt: skip
    """``compute(env, offset) -> acc``: the exact integer sums of ``node``'s conv of
    (x - offset) by (w - w_zero), plus ``bias``, as a float array (N, M, P); and whether that
    array is float32 (integers below 2**24) rather than float64. ``x_zero`` (None: known only
    at run time) bounds the sums."""
    from eqsat.lowering.cpu_ops import DEPTHWISE_TAPS

    m = w.shape[0]
    window = window_geometry(x.shape[2:], tuple(w.shape[2:]), node.attrs)
    per_channel = (-1,) + (1,) * (w.ndim - 1)
    shifted_w = w.astype(np.float64)
    if w_zero is not None:
        shifted_w = shifted_w - np.broadcast_to(
            w_zero.reshape(-1).astype(np.float64), (m,)
        ).reshape(per_channel)
    info = np.iinfo(x.dtype)
    # A zero point known only at run time may be either end of x's range: the widest shifts.
    zeros = (info.min, info.max) if x_zero is None else (x_zero,)
    exact32 = all(exact_in_float32(x.dtype, z, shifted_w, bias) for z in zeros)
    real = np.dtype(np.float32 if exact32 else np.float64)
    conv_bias = np.zeros(m) if bias is None else bias.astype(np.float64).reshape(-1)
    channels, group = x.shape[1], int(node.attrs["group"])
    depthwise = x.rank == 4 and group == channels == m and np.prod(window.kernel) <= DEPTHWISE_TAPS
    spans = [(0, channels)]
    if not exact32 and group == 1:
        # float32 convs over chunks of input channels whose sums stay below 2**24, added up
        # in float64: 2-3x faster than one float64 conv (ResNet's 3x3 convs: 2 to 9 chunks)
        bound = max(largest_product(x.dtype, z, shifted_w) for z in zeros)
        step_c = int(EXACT_FLOAT32 // max(1.0, bound * float(np.prod(shifted_w.shape[2:]))))
        if step_c >= 1 and -(-channels // step_c) <= MAX_CHUNKS:
            spans = [(c0, min(channels, c0 + step_c)) for c0 in range(0, channels, step_c)]
            real = np.dtype(np.float32)
    chunked = len(spans) > 1
    convs = [
        _float_conv(lowering, node, x.shape, (c0, c1), shifted_w[:, c0:c1].astype(real),
                    np.zeros(m, real) if chunked else conv_bias.astype(real),
                    window, out_shape, depthwise)
        for c0, c1 in spans
    ]  # fmt: skip
    total = np.empty(out_shape, np.float64) if chunked else None
    rows = (out_shape[0], m, int(np.prod(out_shape[2:], dtype=np.int64)))
    xi = lowering.slot(x)

    def compute(env: Env, offset: float) -> np.ndarray:
        data = env[xi]
        for i, ((c0, c1), (shifted, accumulator, own, run_conv)) in enumerate(
            zip(spans, convs, strict=True)
        ):
            part = data if not chunked else data[:, c0:c1]
            shift(np.ascontiguousarray(part).reshape(-1), real.type(offset), shifted.reshape(-1))
            for slot, array in own.items():  # for conv paths that read them from env (batches)
                env[slot] = array
            run_conv(env)
            if chunked:
                add_chunk(accumulator.reshape(rows), total.reshape(rows), conv_bias, i == 0)
        return (total if chunked else convs[0][1]).reshape(rows)

    return compute, exact32


def build(lowering: Lowering, node: Node) -> Step | None:
    """The step of a QLinearConv whose weights and quantization parameters are constants, or
    None (the reference runs it)."""
    x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero = node.inputs[:8]
    bias = node.inputs[8] if len(node.inputs) > 8 else None
    out = node.outputs[0]
    params = (x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias)
    if x is None or out is None or x.const is not None or x.rank not in (3, 4):
        return None
    if any(p is not None and p.const is None for p in params) or None in params[:7]:
        return None
    m = w.shape[0]
    offset = int(x_zero.const.reshape(()))
    compute, exact32 = _exact_conv(
        lowering, node, x, offset, w.const, w_zero.const,
        None if bias is None else bias.const, out.shape,
    )  # fmt: skip
    multiplier = np.ascontiguousarray(
        np.broadcast_to(
            _multiplier(x_scale.const.reshape(()), w_scale.const.reshape(-1), y_scale.const), (m,)
        ),
        np.float32,
    )
    info = np.iinfo(out.dtype)
    zero = F(y_zero.const.reshape(()))
    lo, hi = F(info.min), F(info.max)
    rows = (out.shape[0], m, int(np.prod(out.shape[2:], dtype=np.int64)))
    xi, o = lowering.slot(x), lowering.slot(out)

    def run(env: Env) -> None:
        acc = compute(env, offset)
        requantize_channels(acc, multiplier, zero, lo, hi, env[o].reshape(rows), not exact32)

    return Step(run, Usage([xi], [o], True), "conv", node.name)


@njit(cache=True, error_model="numpy", nogil=True)
def to_int32(acc, out):  # type: ignore[no-untyped-def]
    """out = int32(acc) for exact integers held as floats, wrapping like the reference."""
    flat, dst = acc.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        dst[i] = np.int32(np.int64(flat[i]))


def build_integer(lowering: Lowering, node: Node) -> Step | None:
    """The step of a ConvInteger whose weights (and their zero point) are constants: the exact
    sums, as int32. x's zero point may come at run time (a DynamicQuantizeLinear's)."""
    x, w = node.inputs[0], node.inputs[1]
    x_zero = node.inputs[2] if len(node.inputs) > 2 else None
    w_zero = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    if x is None or w is None or out is None or x.const is not None or x.rank not in (3, 4):
        return None
    if w.const is None or (w_zero is not None and w_zero.const is None):
        return None
    if x_zero is not None and x_zero.size != 1:
        return None
    # x's zero point: none (0), a constant, or a run-time value (None here: read per run)
    runtime = x_zero is not None and x_zero.const is None
    offset = None if runtime else 0 if x_zero is None else int(x_zero.const.reshape(()))
    compute, _ = _exact_conv(
        lowering,
        node,
        x,
        offset,
        w.const,
        None if w_zero is None else w_zero.const,
        None,
        out.shape,
    )
    zero_slot = lowering.slot(x_zero) if runtime else None
    xi, o = lowering.slot(x), lowering.slot(out)

    def run(env: Env) -> None:
        at = offset if zero_slot is None else int(np.asarray(env[zero_slot]).reshape(()))
        to_int32(compute(env, at), env[o])

    reads = [xi] + ([zero_slot] if zero_slot is not None else [])
    return Step(run, Usage(reads, [o], True), "conv", node.name)


__all__ = [
    "add_chunk", "build", "build_integer", "exact_in_float32", "largest_product",
    "requantize_channels", "shift", "to_int32",
]  # fmt: skip
