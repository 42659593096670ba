"""Depthwise convs with the channels as the SIMD lanes, for small planes (LLVM IR intrinsics
that :mod:`eqsat.lowering.cpu_depthwise`'s generated ``lanes`` kernels call).

:mod:`eqsat.lowering.cpu_depthwise`'s plane kernel vectorizes over the output positions of one
channel: on a 7x7 or 14x14 plane each channel is a few short loops, copies in and out and a
call, about 200 ns a channel (MobileNetV2's 960-channel 7x7 conv: 194 us; onnxruntime's NCHWc
kernel, the channels as lanes, 126). Here a block of ``L`` channels (one SIMD vector: 16 float32
on AVX-512, 8 on AVX2; half as many float64) is computed at once:

- :func:`gather_block`: the block's planes transposed into a zero-bordered buffer of ``L``
  lanes per position, ``L`` rows at a time by an in-register transpose (each input row read as
  vectors);
- :func:`lane_conv`: each output position's ``L`` sums, the bias plus one fused multiply-add per
  tap of a contiguous vector of the buffer (the strides and dilations are only where it reads),
  stored to ``res`` (positions x ``L``);
- :func:`scatter_block`: ``res`` transposed back into the block's output planes.

The epilogue is then a pass over the block's output planes, in the generated kernel.
"""

from __future__ import annotations

import hashlib
import re
from functools import partial
from pathlib import Path

import numpy as np
from eqsat.lowering import codegen, cpu_microkernel, kernel_cache
from eqsat.lowering.cpu_depthwise import ROW_WISE
from eqsat.lowering.cpu_tile_ir import VECTOR_BYTES, Vectors
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Depthwise convs with at most this many output positions per channel take these kernels. One
# thread, 3x3, against the plane kernel: 7x7 outputs 0.38-0.44x its time, 14x14 0.68-0.77x,
# 28x28 1.02-1.05x (the transposes in and out cost what the plane kernel's short loops save).
# Output rows of ROW_WISE or more keep the plane kernel (PP-OCR's recognizer, 5x5 on 3x80
# planes: 1-2.5% slower with these, or within noise).
# Those figures are AVX2's 8 lanes; with AVX-512's 16 (a Zen 5 core, conv + ReLU6): 3x3 on
# 28x28 0.80x, on 40x40 0.90x, on 56x56 1.09x.
MAX_POSITIONS = 1600 if VECTOR_BYTES == 64 else 400
# ... and with more than 9 taps at most this many: 5x5 on 7x7 outputs 0.48-0.58x, on 14x14
# 0.96x, on 20x20 1.07x (the 25 taps' weights no longer fit in registers); 7x7 on 7x7 0.51x,
# on 14x14 0.89x. With 16 lanes: 5x5 on 14x14 0.48x, on 28x28 0.84-0.94x; 7x7 on 24x24 1.03x.
MAX_POSITIONS_WIDE = 196
MAX_POSITIONS_5X5 = 784 if VECTOR_BYTES == 64 else MAX_POSITIONS_WIDE
# Read when a depthwise step is compiled (False: the plane kernel only; for A/B runs).
ENABLED = True
# Taps per independent partial sum of an output (see lane_conv).
SUM_GROUP = 3


# Bytes of a block's vector: the machine's. AVX-512's 16 float32 channels a block against
# AVX2's 8 (a Zen 5 core, one thread): 5x5 on 576x7x7 24.7 -> 18.4 us, on 240x14x14 39 ->
# 19; 3x3 on 480x14x14 37 -> 26, on 960x7x7 20 -> 17.
LANE_BYTES = VECTOR_BYTES


def lanes_of(itemsize: int) -> int:
    """Channels per block: one SIMD vector's lanes."""
    return LANE_BYTES // itemsize


def transposed(builder, rows: list) -> list:  # type: ignore[no-untyped-def]
    """``L`` vectors (4, 8, or any power of two) as rows of a matrix -> its columns, in LLVM IR.
    4 and 8 lanes by the shuffles x86 has cheaply: interleaves and shuffles within 128-bit
    halves, then (8 lanes) one swap of halves per column (a perfect shuffle's rounds each
    crossed the halves: 24 slow permutes). Other counts (AVX-512's 16) swap the off-diagonal
    blocks of size n/2, then n/4, ... 1, each two-source permute one instruction there
    (vpermt2ps). Also :mod:`eqsat.lowering.cpu_moves`' 8x8 blocks of transposes."""
    lanes = rows[0].type.count
    i32 = ir.IntType(32)

    def mix(a, b, order: list[int]):  # type: ignore[no-untyped-def]
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, len(order)), order))

    if lanes == 4:
        t = [mix(rows[i], rows[i + 1], o) for i in (0, 2) for o in ([0, 4, 2, 6], [1, 5, 3, 7])]
        return [mix(t[a], t[a + 2], o) for o in ([0, 1, 4, 5], [2, 3, 6, 7]) for a in (0, 1)]
    if lanes != 8:
        rows, size = list(rows), lanes // 2
        while size:
            low = [p if (p // size) % 2 == 0 else lanes + p - size for p in range(lanes)]
            high = [p + size if (p // size) % 2 == 0 else lanes + p for p in range(lanes)]
            for i in range(lanes):
                if (i // size) % 2 == 0:
                    j = i + size
                    rows[i], rows[j] = mix(rows[i], rows[j], low), mix(rows[i], rows[j], high)
            size //= 2
        return rows
    low, high = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = [mix(rows[i], rows[i + 1], o) for i in (0, 2, 4, 6) for o in (low, high)]
    pairs, odd = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    quads = [mix(t[a], t[a + 2], o) for a in (0, 1, 4, 5) for o in (pairs, odd)]
    halves = ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])
    return [mix(quads[c], quads[c + 4], o) for o in halves for c in range(4)]


class _Vectors(Vectors):
    """:class:`~eqsat.lowering.cpu_tile_ir.Vectors` and the transpose of ``L`` of them."""

    def transpose(self, rows: list):  # type: ignore[no-untyped-def]
        """``L`` vectors as rows of a matrix -> its columns (:func:`transposed`)."""
        return transposed(self.builder, rows)


def _data(context, builder, array_type, value):  # type: ignore[no-untyped-def]
    return context.make_array(array_type)(context, builder, value).data


def _is_float(array: types.Type, ndim: int) -> bool:
    return (
        isinstance(array, types.Array)
        and array.ndim == ndim
        and array.dtype
        in (
            types.float32,
            types.float64,
        )
    )


def _groups(v, builder, count):  # type: ignore[no-untyped-def]
    """Groups of L of ``count`` items: the last one shifted back to end at ``count`` (it
    overlaps the one before, which writes the same values again) where ``count`` >= L, so that
    every group is whole; else one group of ``count`` (masked). Returns (groups, start_of)."""
    lanes = v.const(v.lanes)
    groups = builder.sdiv(builder.add(count, v.const(v.lanes - 1)), lanes)
    last = builder.sub(count, lanes)

    def start_of(index):  # type: ignore[no-untyped-def]
        start = builder.mul(index, lanes)
        shifted = builder.select(builder.icmp_signed(">", start, last), last, start)
        return builder.select(builder.icmp_signed("<", last, v.const(0)), start, shifted)

    return groups, start_of


@intrinsic
def gather_block(typingctx, x, pad, c0, ph, pw, wp):  # type: ignore[no-untyped-def]
    """pad[(ih + ph) * wp + pw + iw, c] = x[min(c0 + c, C - 1), ih, iw] for the L lanes c of
    the block from channel c0 (past the last channel: its copy, never stored), x (C, H, W) and
    pad (rows, L) both C-contiguous. The rest of pad is left as it is (its zero border).

    Each channel's plane is read as one flat run of H*W values, L at a time (rows of a 7x7 plane
    are shorter than a vector); the L vectors of a group are transposed in registers and each
    position's L channels stored to its place in pad."""
    if not (_is_float(x, 3) and _is_float(pad, 2) and x.dtype == pad.dtype):
        return None
    signature = types.void(x, pad, *([types.int64] * 4))

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = _Vectors(context, builder, sig.args[0].dtype, LANE_BYTES)
        lanes = v.lanes
        view = context.make_array(sig.args[0])(context, builder, args[0])
        channels, height, width = cgutils.unpack_tuple(builder, view.shape, 3)
        src, dst = view.data, _data(context, builder, sig.args[1], args[1])
        c0, ph, pw, wp = args[2:]
        plane = builder.mul(height, width)
        last = builder.sub(channels, v.const(1))
        starts = []
        for c in range(lanes):
            channel = builder.add(c0, v.const(c))
            clamped = builder.select(builder.icmp_signed("<", channel, last), channel, last)
            starts.append(builder.mul(clamped, plane))
        groups, start_of = _groups(v, builder, plane)
        # f0 // W in floating point: an integer division per group took a sixth of the time.
        # (f0 + 1/2) / W is at least 1/(2W) from an integer, far beyond a double's rounding.
        double = ir.DoubleType()
        inverse = builder.fdiv(ir.Constant(double, 1.0), builder.sitofp(width, double))

        def gather(mask) -> None:  # type: ignore[no-untyped-def]
            with cgutils.for_range(builder, groups) as steps:
                f0 = start_of(steps.index)
                vectors = [v.load(v.at(src, builder.add(s, f0)), mask) for s in starts]
                columns = v.transpose(vectors)
                middle = builder.fadd(builder.sitofp(f0, double), ir.Constant(double, 0.5))
                ih = builder.fptosi(builder.fmul(middle, inverse), v.i64)
                iw = builder.sub(f0, builder.mul(ih, width))
                for k in range(lanes):
                    inside = builder.icmp_signed("<", builder.add(f0, v.const(k)), plane)
                    with builder.if_then(inside, likely=True):
                        row = builder.add(builder.mul(builder.add(ih, ph), wp), pw)
                        position = builder.add(row, iw)
                        v.store(columns[k], v.at(dst, builder.mul(position, v.const(lanes))))
                    wrap = builder.icmp_signed("==", builder.add(iw, v.const(1)), width)
                    iw = builder.select(wrap, v.const(0), builder.add(iw, v.const(1)))
                    ih = builder.select(wrap, builder.add(ih, v.const(1)), ih)

        # Masked loads only for planes shorter than a vector: they took half of the time.
        short = builder.icmp_signed("<", plane, v.const(lanes))
        with builder.if_else(short, likely=False) as (partial, whole):
            with partial:
                gather(v.mask(plane))
            with whole:
                gather(None)
        return context.get_dummy_value()

    return signature, codegen


def lane_conv(kh: int, kw: int, dh: int, dw: int, reduce: str = "sum"):  # type: ignore[no-untyped-def]
    """An intrinsic ``conv(pad, taps, bias, res, oh, ow, wp, sh, sw)``: res[oh' * ow + ow'] =
    bias + sum over taps (i, j) of taps[i * kw + j] * pad[(oh' * sh + i * dh) * wp + ow' * sw +
    j * dw], every term an L-lane vector (pad (rows, L), taps (KH*KW, L), bias (L,), res
    (positions, L), all C-contiguous). ``reduce="max"``: the max of the pad terms instead
    (NaN-propagating, ``llvm.maximum``), taps and bias unread: a max pool."""

    @intrinsic
    def conv(typingctx, pad, taps, bias, res, oh, ow, wp, sh, sw):  # type: ignore[no-untyped-def]
        arrays = (pad, taps, res)
        if not all(_is_float(a, 2) for a in arrays) or not _is_float(bias, 1):
            return None
        if not pad.dtype == taps.dtype == bias.dtype == res.dtype:
            return None
        signature = types.void(pad, taps, bias, res, *([types.int64] * 5))

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            v = _Vectors(context, builder, sig.args[0].dtype, LANE_BYTES)
            pad_, taps_, bias_, res_ = (
                builder.bitcast(_data(context, builder, t, a), v.vec.as_pointer())
                for t, a in zip(sig.args[:4], args[:4], strict=True)
            )
            oh_, ow_, wp_, sh_, sw_ = args[4:]
            count = kh * kw
            if reduce == "max":
                maximum = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(v.vec, [v.vec, v.vec]),
                    f"llvm.maximum.v{v.lanes}{'f32' if v.vec.element == ir.FloatType() else 'f64'}",
                )
                weights, start = [], None
            else:
                weights = [v.load(builder.gep(taps_, [v.const(t)])) for t in range(count)]
                start = v.load(bias_)
            offsets = [
                builder.add(builder.mul(wp_, v.const(i * dh)), v.const(j * dw))
                for i in range(kh)
                for j in range(kw)
            ]
            with cgutils.for_range(builder, oh_) as rows:
                top = builder.mul(builder.mul(rows.index, sh_), wp_)
                first = builder.mul(rows.index, ow_)
                with cgutils.for_range(builder, ow_) as columns:
                    q = builder.add(top, builder.mul(columns.index, sw_))
                    # Independent partial sums of SUM_GROUP taps: one chain of nine waits
                    # on each multiply-add's latency in turn.
                    sums = []
                    for g in range(0, len(offsets), SUM_GROUP):
                        total = start if g == 0 else None
                        for t in range(g, min(g + SUM_GROUP, len(offsets))):
                            value = v.load(builder.gep(pad_, [builder.add(q, offsets[t])]))
                            if reduce == "max":
                                total = (
                                    value
                                    if total is None
                                    else builder.call(maximum, [total, value])
                                )
                            elif total is None:
                                total = builder.fmul(weights[t], value)
                            else:
                                total = builder.call(v.fma, [weights[t], value, total])
                        sums.append(total)
                    join = (
                        (lambda a, b: builder.call(maximum, [a, b]))
                        if reduce == "max"
                        else builder.fadd
                    )
                    while len(sums) > 1:
                        sums = [
                            join(sums[i], sums[i + 1]) if i + 1 < len(sums) else sums[i]
                            for i in range(0, len(sums), 2)
                        ]
                    v.store(sums[0], builder.gep(res_, [builder.add(first, columns.index)]))
            return context.get_dummy_value()

        return signature, codegen

    return conv


@intrinsic
def scatter_block(typingctx, res, out, c0):  # type: ignore[no-untyped-def]
    """out[c0 + c, p] = res[p, c] for the block's channels (those below C) and every position p
    of out (C, P) (rows contiguous); res (positions rounded up to L, L) C-contiguous. Groups
    of L positions are transposed in registers, each channel's L values stored as one vector
    (the last group shifted back to end at P: masked stores are slow on some x86 cores)."""
    if not (_is_float(res, 2) and _is_float(out, 2) and res.dtype == out.dtype):
        return None
    signature = types.void(res, out, types.int64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = _Vectors(context, builder, sig.args[0].dtype, LANE_BYTES)
        lanes = v.lanes
        src = _data(context, builder, sig.args[0], args[0])
        view = context.make_array(sig.args[1])(context, builder, args[1])
        channels, positions = cgutils.unpack_tuple(builder, view.shape, 2)
        item = v.const(context.get_abi_sizeof(v.real))
        stride = builder.sdiv(cgutils.unpack_tuple(builder, view.strides, 2)[0], item)
        dst, c0 = view.data, args[2]
        groups, start_of = _groups(v, builder, positions)
        mask = v.mask(positions)  # all lanes but where P is shorter than a vector
        short = builder.icmp_signed("<", positions, v.const(lanes))
        with cgutils.for_range(builder, groups) as steps:
            p0 = start_of(steps.index)
            rows = [
                v.load(v.at(src, builder.mul(builder.add(p0, v.const(k)), v.const(lanes))))
                for k in range(lanes)
            ]
            columns = v.transpose(rows)
            for c in range(lanes):
                channel = builder.add(c0, v.const(c))
                with builder.if_then(builder.icmp_signed("<", channel, channels), likely=True):
                    ptr = v.at(dst, builder.add(builder.mul(channel, stride), p0))
                    with builder.if_else(short, likely=False) as (partial, full):
                        with partial:
                            v.store(columns[c], ptr, mask)
                        with full:
                            v.store(columns[c], ptr)
        return context.get_dummy_value()

    return signature, codegen


_SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def suits(dtype: np.dtype, out_hw: tuple[int, ...], taps: int) -> bool:
    """Whether a depthwise conv of ``dtype`` with output planes ``out_hw`` and ``taps`` taps
    takes these kernels (where the CPU has vector fused multiply-add: see
    cpu_microkernel.ENABLED)."""
    positions = int(np.prod(out_hw))
    most = MAX_POSITIONS if taps <= 9 else MAX_POSITIONS_5X5 if taps <= 25 else MAX_POSITIONS_WIDE
    floats = (np.dtype(np.float32), np.dtype(np.float64))
    return (
        ENABLED
        and cpu_microkernel.ENABLED
        and np.dtype(dtype) in floats
        and positions <= most
        and out_hw[-1] < ROW_WISE  # rows that wide are long loops in the plane kernel
    )


def buffers(dtype: np.dtype, in_hw: tuple[int, int], out_hw: tuple[int, int],
            kernel: tuple[int, int], strides: tuple[int, int], dilations: tuple[int, int],
            pads: tuple[int, int], fill: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """(pad, res, wp): a bordered buffer of the input planes (the border ``fill``: 0, or -inf
    for a max), L lanes per position, rows ``wp`` wide and tall enough for every tap's read;
    and the outputs' (positions, L)."""
    lanes = lanes_of(np.dtype(dtype).itemsize)
    (h, w), (oh, ow), (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (
        in_hw,
        out_hw,
        kernel,
        strides,
        dilations,
        pads,
    )
    wp = max(pw + w, (ow - 1) * sw + (kw - 1) * dw + 1)
    hp = max(ph + h, (oh - 1) * sh + (kh - 1) * dh + 1)
    pad = np.full((hp * wp, lanes), fill, dtype)
    res = np.zeros((max(oh * ow, lanes), lanes), dtype)
    return pad, res, wp


def pack_taps(taps: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Taps (C, KH*KW) and bias (C,) by blocks of L channels: (blocks, KH*KW, L) and
    (blocks, L), the last block padded with zeros."""
    lanes = lanes_of(taps.dtype.itemsize)
    c, kk = taps.shape
    blocks = -(-c // lanes)
    padded = np.zeros((blocks * lanes, kk), taps.dtype)
    padded[:c] = taps
    wv = np.ascontiguousarray(padded.reshape(blocks, lanes, kk).transpose(0, 2, 1))
    bv = np.zeros(blocks * lanes, taps.dtype)
    bv[:c] = bias
    return wv, bv.reshape(blocks, lanes)


def source(dtype: np.dtype, kernel: tuple[int, int], strides: tuple[int, int],
           dilations: tuple[int, int], pads: tuple[int, int], epilogue: str,
           reduce: str = "sum") -> str:  # fmt: skip
    """A module with ``kernel(x, wv, bv, out, pad, res, wp)``: x (N, C, H, W), ``wv``/``bv`` of
    :func:`pack_taps`, out (N, C, OH, OW), ``pad``, ``res`` and ``wp`` of :func:`buffers`.
    ``epilogue`` may only use ``{0}``; it is applied to ``res`` before the transpose out.
    ``reduce="max"``: a max pool (``pad``'s border -inf; the taps and bias unread)."""
    if dtype not in codegen.FLOATS:
        raise codegen.Unsupported(f"dtype {dtype}")
    code, constants = codegen.translate(epilogue, dtype)
    if re.search(r"\bx[1-9]\d*\b", code):
        raise codegen.Unsupported(f"epilogue with tensor operands: {epilogue!r}")
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, strides, dilations, pads
    ctype = f"np.{dtype}"
    arr = partial(codegen.array_type, dtype)
    signature = (
        f"types.void({arr(4, True)}, {arr(3, True)}, {arr(2, True)}, {arr(4, False)}, "
        f"{arr(2, False)}, {arr(2, False)}, types.int64)"
    )
    comments = [
        f"depthwise lanes {kernel} strides {strides} dilations {dilations} pads {pads} {reduce}",
        f"epilogue: {epilogue}; lanes {_SOURCE_HASH}",
    ]
    lines = codegen.module_header(comments, ctype, constants)
    lines += [
        "from eqsat.lowering.cpu_depthwise_lanes import gather_block, lane_conv, scatter_block",
        "",
        f"conv = lane_conv({kh}, {kw}, {dh}, {dw}, {reduce!r})",
        "",
        "",
        f"@njit({signature}, cache=True, error_model='numpy', fastmath={{'contract'}}, nogil=True)",
        "def kernel(x, wv, bv, out, pad, res, wp):",
        "    n_, c_ = x.shape[0], x.shape[1]",
        "    oh_, ow_ = out.shape[2], out.shape[3]",
        "    p_ = oh_ * ow_",
        "    lanes = wv.shape[2]",
        "    done = res.reshape(-1)[: p_ * lanes]",
        "    for n in range(n_):",
        "        flat = out[n].reshape(c_, p_)",
        "        for blk in range(wv.shape[0]):",
        "            c0 = blk * lanes",
        f"            gather_block(x[n], pad, c0, {ph}, {pw}, wp)",
        f"            conv(pad, wv[blk], bv[blk], res, oh_, ow_, wp, {sh}, {sw})",
    ]
    if code != "x0":
        lines += [
            "            for i in range(done.shape[0]):",
            "                x0 = done[i]",
            f"                done[i] = {code}",
        ]
    lines.append("            scatter_block(res, flat, c0)")
    return "\n".join(lines) + "\n"


def load(*args: object) -> object:
    """The compiled ``kernel`` for :func:`source` of ``args``."""
    return kernel_cache.load(source(*args)).kernel  # type: ignore[arg-type]
