"""CPU steps for the memory-bound ops that profiling showed worth a kernel of their own.

* GlobalAveragePool, Softmax, LayerNormalization and RMSNormalization over the innermost axes:
  one Numba kernel each, one pass over each row while it is in cache
  (:mod:`eqsat.lowering.cpu_kernels`; float32 Softmax:
  :func:`eqsat.lowering.cpu_softmax.softmax_rows_f32`, three vectorized passes);
* GlobalMaxPool: numpy's row max into the planned buffer
  (:func:`eqsat.lowering.cpu_moves.global_max_pool`);
* BatchNormalization (inference): a generated elementwise kernel ``x * scale + shift`` with the
  per-channel constants folded at compile time;
* Resize in linear mode: :mod:`eqsat.lowering.cpu_resize`;
* Resize in nearest mode: source indices come from running the op's reference once, at compile
  time, on an array of element indices, so they match the reference exactly; when they are a
  source row per output row and a source column per output column (resizing the last two axes),
  a kernel copies rows (repeated rows once, integer upsampling as repeats), else a flat gather;
* ConvTranspose whose stride equals its kernel (no overlap: upsampling heads) as one GEMM and a
  generated scatter that adds the bias and applies the fused epilogue as it stores (epilogues
  with tensor operands: a strided copy, then the epilogue in place; depthwise ones as one
  broadcast multiply); on several threads, each takes a span of output channels through both
  (PP-OCR's 24-channel 80x80 -> 160x160 head, 1.5 ms, ran on one thread);
* Softmax over another axis: :func:`eqsat.lowering.cpu_softmax.softmax_axis`;
* LSTM, GRU and RNN: one generated kernel per layer (:mod:`eqsat.lowering.cpu_recurrent`).

Anything else returns ``None`` and runs on the numpy reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import (
    cpu_deform,
    cpu_kernels,
    cpu_moves,
    cpu_recurrent,
    cpu_resize,
    cpu_softmax,
    cpu_threads,
)
from eqsat.lowering.cpu import ElementwiseKernel, Env, Lowering, Step
from eqsat.lowering.memory import Usage

from eqsat import ops
from eqsat.ir import Node, Value

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# Fewest output channels a thread takes in a ConvTranspose split by channels.
MIN_SPAN_CHANNELS = 8


def build_step(lowering: Lowering, node: Node) -> Step | None:
    if node.op in cpu_recurrent.OPS:
        return cpu_recurrent.build_step(lowering, node)
    builder = _BUILDERS.get(node.op)
    out = node.outputs[0]
    if builder is None or out is None or out.dtype not in FLOATS:
        return None
    if any(v is not None for v in node.outputs[1:]):
        return None  # optional statistics outputs: the reference computes them
    x = node.inputs[0]
    if x is None or x.const is not None:
        return None
    return builder(lowering, node)


def _rows(
    lowering: Lowering, node: Node, kernel: Any, *extra: Any, axis: int | None = None
) -> Step:
    """A step running ``kernel(x2d, out2d, *extra)`` over rows: of the output's innermost axis,
    or, given ``axis``, of the axes from ``axis`` on (x and the output then shaped alike)."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    xs, o = lowering.slot(x), lowering.slot(out)
    if axis is None:
        rows = int(np.prod(out.shape[:-1], dtype=np.int64)) if out.rank else 1
    else:
        rows = x.size // max(int(np.prod(x.shape[axis:], dtype=np.int64)), 1)
    in_shape = (rows, x.size // max(rows, 1))
    out_shape = (rows, out.size // max(rows, 1))

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(in_shape)
        kernel(data, env[o].reshape(out_shape), *extra)

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


def _global_average(lowering: Lowering, node: Node) -> Step | None:
    x = node.inputs[0]
    assert x is not None
    if x.rank < 3:
        return None
    return _rows(lowering, node, cpu_kernels.row_mean)


def _inner_axis(node: Node, x: Value) -> bool:
    """The op's axis (and every axis after it) forms contiguous rows."""
    axis = int(node.attrs["axis"]) % x.rank
    return all(d == 1 for d in x.shape[axis + 1 :]) if node.op == "Softmax" else True


def _softmax(lowering: Lowering, node: Node) -> Step | None:
    x = node.inputs[0]
    assert x is not None
    if x.rank == 0:
        return None
    if not _inner_axis(node, x):
        return cpu_softmax.softmax_axis(lowering, node)
    axis = int(node.attrs["axis"]) % x.rank
    out = node.outputs[0]
    assert out is not None
    f32 = out.dtype == np.float32
    kernel = cpu_softmax.softmax_rows_f32 if f32 else cpu_kernels.softmax_rows
    return _rows(lowering, node, kernel, axis=axis)


def _per_row(const: np.ndarray, x: Value, axis: int, dtype: np.dtype) -> np.ndarray:
    """A normalization's constant scale or bias broadcast to one flat row of the axes it
    normalizes."""
    return np.ascontiguousarray(np.broadcast_to(const, x.shape[axis:]), dtype).reshape(-1)


def _layer_norm(lowering: Lowering, node: Node) -> Step | None:
    x = node.inputs[0]
    out = node.outputs[0]
    assert x is not None and out is not None
    if x.rank == 0 or any(v is not None and v.const is None for v in node.inputs[1:3]):
        return None
    axis = int(node.attrs["axis"]) % x.rank
    scale, bias = (
        _per_row(np.zeros(1, out.dtype) if v is None else v.const, x, axis, out.dtype)
        for v in [*node.inputs[1:3], None][:2]
    )
    kernel, eps = cpu_kernels.layer_norm_rows, float(node.attrs["epsilon"])
    return _rows(lowering, node, kernel, scale, bias, eps, axis=axis)


def _rms_norm(lowering: Lowering, node: Node) -> Step | None:
    x, scale = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    assert x is not None and out is not None and scale is not None
    if x.rank == 0 or scale.const is None or x.dtype != np.float32:
        return None
    axis = int(node.attrs["axis"]) % x.rank
    weights = _per_row(scale.const, x, axis, out.dtype)
    kernel, eps = cpu_kernels.rms_norm_rows, float(node.attrs["epsilon"])
    return _rows(lowering, node, kernel, weights, eps, axis=axis)


def _batch_norm(lowering: Lowering, node: Node) -> Step | None:
    if int(node.attrs["training_mode"]):
        return None
    x, *params = node.inputs
    out = node.outputs[0]
    assert x is not None and out is not None
    if x.rank < 2 or any(p is None or p.const is None for p in params):
        return None
    scale, bias, mean, var = (np.asarray(p.const, np.float64) for p in params)  # type: ignore[union-attr]
    mul = scale / np.sqrt(var + float(node.attrs["epsilon"]))
    add = bias - mean * mul
    channel = (x.shape[1],) + (1,) * (x.rank - 2)
    kernel = ElementwiseKernel(
        lowering,
        "(({0} * {1}) + {2})",
        [
            (x.shape, x.dtype, None),
            (channel, out.dtype, mul.astype(out.dtype).reshape(channel)),
            (channel, out.dtype, add.astype(out.dtype).reshape(channel)),
        ],
        out.shape,
        out.dtype,
    )
    xs, o = lowering.slot(x), lowering.slot(out)

    def run(env: Env) -> None:
        kernel(env[o], [env[xs], None, None])

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


def _resize(lowering: Lowering, node: Node) -> Step | None:
    x = node.inputs[0]
    out = node.outputs[0]
    assert x is not None and out is not None
    if node.attrs["mode"] == "linear":
        return cpu_resize.resize_linear(lowering, node)
    if node.attrs["mode"] != "nearest" or x.size >= 1 << 31:
        return None
    if any(v is not None and v.const is None for v in node.inputs[1:]):
        return None
    opdef = ops.get("Resize", node.name)
    ids = np.arange(x.size, dtype=np.float64).reshape(x.shape)
    consts = [None if v is None else v.const for v in node.inputs[1:]]
    (source,) = opdef.evaluate(node, [ids, *consts])[:1]
    (shifted,) = opdef.evaluate(node, [ids + 1.0, *consts])[:1]
    source = np.asarray(source)
    if source.shape != out.shape or not np.array_equal(np.asarray(shifted), source + 1.0):
        return None  # extrapolated positions (tf_crop_and_resize): the reference fills them
    xs, o = lowering.slot(x), lowering.slot(out)
    planes = _planes(x, out, source)
    if planes is not None:
        rows, cols, factor = planes
        p_ = int(np.prod(x.shape[:-2], dtype=np.int64))
        in_shape, out_shape = (p_, *x.shape[-2:]), (p_, *out.shape[-2:])

        def run_planes(env: Env) -> None:
            data = np.ascontiguousarray(env[xs]).reshape(in_shape)
            cpu_kernels.resize_nearest(data, env[o].reshape(out_shape), rows, cols, factor)

        return Step(run_planes, Usage([xs], [o], True), "kernel", node.name)
    index = np.ascontiguousarray(source.reshape(-1), np.int32)

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(-1)
        cpu_kernels.gather(data, index, env[o].reshape(-1))

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


def _planes(x: Value, out: Value, source: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """For a resize of the last two axes only whose source index map is separable, the source
    row of each output row, the source column of each output column, and the integer
    upsampling factor of the columns (0 when they are not ``j // factor``); else None."""
    if x.rank < 2 or x.shape[:-2] != out.shape[:-2] or out.size == 0:
        return None
    h_, w_ = x.shape[-2:]
    oh_, ow_ = out.shape[-2:]
    index = source.reshape(-1, oh_, ow_).astype(np.int64)
    rows = index[0, :, 0] // w_
    cols = index[0, 0, :] % w_
    base = np.arange(index.shape[0], dtype=np.int64) * (h_ * w_)
    expected = base[:, None, None] + rows[None, :, None] * w_ + cols[None, None, :]
    if not np.array_equal(index, expected):
        return None
    factor = ow_ // w_ if ow_ % w_ == 0 else 0
    if factor and not np.array_equal(cols, np.arange(ow_) // factor):
        factor = 0
    return rows.astype(np.int64), np.ascontiguousarray(cols, np.int64), factor


def _conv_transpose(lowering: Lowering, node: Node) -> Step | None:
    from eqsat.lowering.cpu_ops import Epilogue, _split

    base, extras = _split(node)
    x, w = base[0], base[1]
    b = base[2] if len(base) > 2 else None
    out = node.outputs[0]
    assert x is not None and out is not None
    attrs = node.attrs
    if w is None or w.const is None or x.rank != 4 or (b is not None and b.const is None):
        return None
    ci, co, kh, kw = w.shape
    n_, _, h_, w_ = x.shape
    group = int(attrs["group"])
    depthwise = group == ci and co == 1
    if depthwise:
        co = ci
    plain = (
        (group == 1 or depthwise)
        and list(attrs["strides"]) == [kh, kw]
        and not any(attrs["pads"])
        and all(d == 1 for d in attrs["dilations"] or [1])
        and not any(attrs["output_padding"] or [])
        and attrs["auto_pad"] in ("NOTSET", "VALID")
        and out.shape == (n_, co, h_ * kh, w_ * kw)
    )
    if not plain:
        return None
    if depthwise:
        return _depthwise_transpose(lowering, node, x, w.const, b, extras)
    weights = np.ascontiguousarray(
        w.const.transpose(1, 2, 3, 0).reshape(co * kh * kw, ci), out.dtype
    )
    tmp = np.empty((co * kh * kw, h_ * w_), out.dtype)
    blocks = tmp.reshape(co, kh, kw, h_, w_)
    xs, o = lowering.slot(x), lowering.slot(out)
    spread = _fused_spread(lowering, node, extras, b, co, (kh, kw))
    if spread is not None:
        kernel, bias = spread
        flops = 2.0 * co * kh * kw * ci * h_ * w_
        spans = cpu_threads.chunks(co, min(lowering.split(flops), co // MIN_SPAN_CHANNELS))
        return _fused_spread_step(lowering, node, x, weights, blocks, kernel, bias, spans)
    tail = [] if b is None else [(None, b.const.astype(out.dtype), (1, co, 1, 1))]
    expr = "{0}" if b is None else f"({{0}} + {{{len(extras) + 1}}})"
    epi = Epilogue(lowering, node, expr, extras, tail)

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs])
        result = env[o]
        for i in range(n_):
            np.matmul(weights, data[i].reshape(ci, h_ * w_), out=tmp)
            cpu_kernels.spread_blocks(blocks, result[i])
        epi(env, result)

    return Step(run, Usage([xs, *epi.reads()], [o], True), "conv", node.name)


def _fused_spread_step(
    lowering: Lowering,
    node: Node,
    x: Value,
    weights: np.ndarray,
    blocks: np.ndarray,
    kernel: Any,
    bias: np.ndarray,
    spans: list[tuple[int, int]],
) -> Step:
    """The fused stride = kernel ConvTranspose: per image, the GEMM into ``blocks`` and the
    generated scatter ``kernel``; with several ``spans`` of output channels, each is a chunk of
    the pool, through its rows of the GEMM and its part of the scatter."""
    n_, ci, h_, w_ = x.shape
    taps = blocks.shape[1] * blocks.shape[2]
    tmp = blocks.reshape(-1, h_ * w_)
    parts = []
    for c0, c1 in spans:
        rows = slice(c0 * taps, c1 * taps)
        parts.append((weights[rows], tmp[rows], blocks[c0:c1], bias[c0:c1], c0, c1))
    xs, o = lowering.slot(x), lowering.slot(node.outputs[0])
    matmul = np.matmul

    def span(item: tuple[Any, ...], worker: int) -> None:
        (rows, dest, block, b, c0, c1), image, out = item
        matmul(rows, image, out=dest)
        kernel(block, b, out[c0:c1])

    if len(parts) > 1:
        assert lowering.pool is not None
        pool_map = lowering.pool.map

        def run(env: Env) -> None:
            data = np.ascontiguousarray(env[xs])
            result = env[o]
            for i in range(n_):
                image, out = data[i].reshape(ci, h_ * w_), result[i]
                pool_map(span, [(part, image, out) for part in parts])
    else:
        whole = parts[0]

        def run(env: Env) -> None:
            data = np.ascontiguousarray(env[xs])
            result = env[o]
            for i in range(n_):
                span((whole, data[i].reshape(ci, h_ * w_), result[i]), 0)

    return Step(run, Usage([xs], [o], True), "conv", node.name)


def _fused_spread(
    lowering: Lowering,
    node: Node,
    extras: list[Value],
    b: Value | None,
    co: int,
    kernel: tuple[int, int],
) -> tuple[Any, np.ndarray] | None:
    """The generated scatter with the bias and epilogue applied as it stores, and the bias it
    takes (a per-channel constant added by the epilogue folded in); None when the epilogue has
    tensor operands left (:func:`cpu_depthwise.spread_source`)."""
    from eqsat.lowering import codegen, cpu_depthwise

    out = node.outputs[0]
    assert out is not None
    bias = np.zeros(co, out.dtype) if b is None else np.asarray(b.const, out.dtype).reshape(co)
    epilogue = str(node.attrs.get("epilogue", "{0}"))
    epilogue, bias = cpu_depthwise.fold_channel_add(epilogue, [v.const for v in extras], bias)
    scalars = cpu_depthwise.scalar_constants(extras)
    try:
        kernel = cpu_depthwise.load_spread(
            out.dtype, kernel, cpu_depthwise.inline_scalars(epilogue, scalars)
        )
    except codegen.Unsupported:
        return None
    lowering.kernels += 1
    return kernel, np.ascontiguousarray(bias, out.dtype)


def _depthwise_transpose(
    lowering: Lowering, node: Node, x: Value, w: np.ndarray, b: Value | None, extras: list[Value]
) -> Step:
    """Depthwise ConvTranspose with stride = kernel: each input pixel times its channel's
    (KH, KW) kernel is one output block, one broadcast multiply; bias and epilogue in place."""
    from eqsat.lowering.cpu_ops import Epilogue

    out = node.outputs[0]
    assert out is not None and (b is None or b.const is not None)
    n_, c_, h_, w_ = x.shape
    kh, kw = w.shape[2:]
    taps = np.ascontiguousarray(w.reshape(1, c_, 1, kh, 1, kw), out.dtype)
    tail = [] if b is None else [(None, b.const.astype(out.dtype), (1, c_, 1, 1))]
    expr = "{0}" if b is None else f"({{0}} + {{{len(extras) + 1}}})"
    epi = Epilogue(lowering, node, expr, extras, tail)
    xs, o = lowering.slot(x), lowering.slot(out)
    blocks = (n_, c_, h_, kh, w_, kw)

    def run(env: Env) -> None:
        data = env[xs].reshape(n_, c_, h_, 1, w_, 1)
        result = env[o]
        np.multiply(data, taps, out=result.reshape(blocks))
        epi(env, result)

    return Step(run, Usage([xs, *epi.reads()], [o], True), "conv", node.name)


_BUILDERS: dict[str, Any] = {
    "DeformConv": cpu_deform.build,
    "GlobalAveragePool": _global_average,
    "GlobalMaxPool": cpu_moves.global_max_pool,
    "Softmax": _softmax,
    "LayerNormalization": _layer_norm,
    "RMSNormalization": _rms_norm,
    "BatchNormalization": _batch_norm,
    "Resize": _resize,
    "ConvTranspose": _conv_transpose,
    "FusedConvTranspose": _conv_transpose,
}

__all__ = ["build_step"]
