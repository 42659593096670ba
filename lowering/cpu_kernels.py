"""Hand-written Numba kernels of the CPU target: im2col, row-wise reductions, attention, pooling.

im2col (whole or by blocks of output rows) feeds GEMM convolutions (depthwise convs are generated
by :mod:`eqsat.lowering.cpu_depthwise`); row kernels
(mean, softmax, layer norm) and a flat gather serve :mod:`eqsat.lowering.cpu_misc`; the masked
softmax and 2-D pools serve :mod:`eqsat.lowering.cpu_data`. Convs work
on 2-D NCHW float32 or float64 data. They are ordinary modules with
``cache=True``, so Numba compiles each signature once per machine. Padding is handled by computing
each tap's valid output range up front, so the innermost loops have no bounds checks and vectorize.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.cpu_math import exp_f32
from numba import njit

JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}


@njit(**JIT)
def _valid(off, stride, size, count):  # type: ignore[no-untyped-def]
    """The range of output positions o with 0 <= o*stride + off < size (off may be negative)."""
    lo = max(0, (-off + stride - 1) // stride)
    hi = min(count, (size - off + stride - 1) // stride)
    return lo, max(lo, hi)


@njit(**JIT)
def im2col(x, cols, oh_, ow_, kh_, kw_, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    """x (C, H, W) -> cols (C*KH*KW, OH*OW): column p of row (c, kh, kw) is the tap's input."""
    c_, h_, w_ = x.shape
    for c in range(c_):
        for kh in range(kh_):
            for kw in range(kw_):
                row = (c * kh_ + kh) * kw_ + kw
                off = kw * dw - pw
                lo, hi = _valid(off, sw, w_, ow_)
                for oh in range(oh_):
                    ih = oh * sh - ph + kh * dh
                    base = oh * ow_
                    if ih < 0 or ih >= h_:
                        for ow in range(ow_):
                            cols[row, base + ow] = 0
                        continue
                    for ow in range(lo):
                        cols[row, base + ow] = 0
                    for ow in range(lo, hi):
                        cols[row, base + ow] = x[c, ih, ow * sw + off]
                    for ow in range(hi, ow_):
                        cols[row, base + ow] = 0


@njit(**JIT)
def im2col_rows(x, cols, oh0, oh1, ow_, kh_, kw_, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    """:func:`im2col` of output rows ``oh0 <= oh < oh1`` only: cols is (C*KH*KW, rows*OW).

    A block of rows keeps the column buffer in cache between this copy and the GEMM reading it;
    stride 1 (the common case) gets a loop the compiler can vectorize.
    """
    c_, h_, w_ = x.shape
    for c in range(c_):
        for kh in range(kh_):
            for kw in range(kw_):
                dst = cols[(c * kh_ + kh) * kw_ + kw]
                off = kw * dw - pw
                lo, hi = _valid(off, sw, w_, ow_)
                for oh in range(oh0, oh1):
                    ih = oh * sh - ph + kh * dh
                    base = (oh - oh0) * ow_
                    if ih < 0 or ih >= h_:
                        dst[base : base + ow_] = 0
                        continue
                    src = x[c, ih]
                    dst[base : base + lo] = 0
                    if sw == 1:
                        for ow in range(lo, hi):
                            dst[base + ow] = src[ow + off]
                    else:
                        for ow in range(lo, hi):
                            dst[base + ow] = src[ow * sw + off]
                    dst[base + hi : base + ow_] = 0


@njit(**JIT)
def spread_blocks(blocks, out):  # type: ignore[no-untyped-def]
    """blocks (C, KH, KW, H, W) -> out (C, H*KH, W*KW): out[c, h*KH+a, w*KW+b] = blocks[c, a, b, h, w].

    The copy of a non-overlapping ConvTranspose; numpy's strided copy of the same ran ~5x slower.
    """
    c_, kh_, kw_, h_, w_ = blocks.shape
    for c in range(c_):
        for h in range(h_):
            for a in range(kh_):
                row = out[c, h * kh_ + a]
                for b in range(kw_):
                    src = blocks[c, a, b, h]
                    for w in range(w_):
                        row[w * kw_ + b] = src[w]


@njit(**JIT)
def row_mean(x, out):  # type: ignore[no-untyped-def]
    """out[r, 0] = mean of row r of x (accumulated in float64)."""
    for r in range(x.shape[0]):
        total = 0.0
        for i in range(x.shape[1]):
            total += x[r, i]
        out[r, 0] = total / x.shape[1]


@njit(**JIT)
def softmax_rows(x, out):  # type: ignore[no-untyped-def]
    """Softmax of each row of x (max, then exponentials and their sum, then one scaling)."""
    for r in range(x.shape[0]):
        top = x[r, 0]
        for i in range(1, x.shape[1]):
            top = max(top, x[r, i])
        total = 0.0
        for i in range(x.shape[1]):
            e = np.exp(x[r, i] - top)
            out[r, i] = e
            total += e
        inv = 1.0 / total
        for i in range(x.shape[1]):
            out[r, i] = out[r, i] * inv


@njit(**JIT)
def softmax_rows_f32(x, out):  # type: ignore[no-untyped-def]
    """:func:`softmax_rows` for float32 with :func:`cpu_math.exp_f32`, which vectorizes."""
    for r in range(x.shape[0]):
        top = x[r, 0]
        for i in range(1, x.shape[1]):
            top = max(top, x[r, i])
        total = 0.0
        for i in range(x.shape[1]):
            e = exp_f32(x[r, i] - top)
            out[r, i] = e
            total += e
        inv = np.float32(1.0 / total)
        for i in range(x.shape[1]):
            out[r, i] = out[r, i] * inv


@njit(**JIT)
def layer_norm_rows(x, out, scale, bias, eps):  # type: ignore[no-untyped-def]
    """(x - mean) / sqrt(var + eps) * scale + bias per row; statistics in float64."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        total = 0.0
        for i in range(n):
            total += x[r, i]
        mean = total / n
        square = 0.0
        for i in range(n):
            d = x[r, i] - mean
            square += d * d
        inv = 1.0 / np.sqrt(square / n + eps)
        for i in range(n):
            out[r, i] = (x[r, i] - mean) * inv * scale[i] + bias[i]


@njit(**JIT)
def gather(x, index, out):  # type: ignore[no-untyped-def]
    """out[i] = x[index[i]] over flat arrays."""
    for i in range(index.shape[0]):
        out[i] = x[index[i]]


@njit(**JIT)
def masked_softmax_rows(s, mask, index, scale):  # type: ignore[no-untyped-def]
    """In place: each row of s (B, S, L) becomes softmax(row * scale + mask row).

    mask is (G, S or 1, L or 1); batch b uses mask group index[b].
    """
    ms, ml = mask.shape[1] > 1, mask.shape[2] > 1
    for b in range(s.shape[0]):
        m = mask[index[b]]
        for r in range(s.shape[1]):
            row = s[b, r]
            mrow = m[r if ms else 0]
            top = -np.inf
            for i in range(row.shape[0]):
                v = row[i] * scale + mrow[i if ml else 0]
                row[i] = v
                top = max(top, v)
            total = 0.0
            for i in range(row.shape[0]):
                e = np.exp(row[i] - top)
                row[i] = e
                total += e
            inv = 1.0 / total
            for i in range(row.shape[0]):
                row[i] = row[i] * inv


@njit(**JIT)
def masked_softmax_rows_f32(s, mask, index, scale):  # type: ignore[no-untyped-def]
    """:func:`masked_softmax_rows` for float32 with :func:`cpu_math.exp_f32`."""
    ms, ml = mask.shape[1] > 1, mask.shape[2] > 1
    k = np.float32(scale)
    for b in range(s.shape[0]):
        m = mask[index[b]]
        for r in range(s.shape[1]):
            row = s[b, r]
            mrow = m[r if ms else 0]
            top = np.float32(-np.inf)
            if ml:
                for i in range(row.shape[0]):
                    v = row[i] * k + mrow[i]
                    row[i] = v
                    top = max(top, v)
            else:
                for i in range(row.shape[0]):
                    v = row[i] * k + mrow[0]
                    row[i] = v
                    top = max(top, v)
            total = 0.0
            for i in range(row.shape[0]):
                e = exp_f32(row[i] - top)
                row[i] = e
                total += e
            inv = np.float32(1.0 / total)
            for i in range(row.shape[0]):
                row[i] = row[i] * inv


@njit(**JIT)
def max_pool2d(x, out, kh_, kw_, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    """MaxPool over NCHW x into out; taps outside the input are skipped (padding is -inf)."""
    h_, w_ = x.shape[2], x.shape[3]
    oh_, ow_ = out.shape[2], out.shape[3]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = x[n, c]
            for oh in range(oh_):
                for ow in range(ow_):
                    best = -np.inf
                    for a in range(kh_):
                        ih = oh * sh - ph + a * dh
                        if ih < 0 or ih >= h_:
                            continue
                        for b in range(kw_):
                            iw = ow * sw - pw + b * dw
                            if iw >= 0 and iw < w_:
                                v = plane[ih, iw]
                                # NaN propagates, as with np.maximum in the reference.
                                best = v if (v > best or v != v) else best
                    out[n, c, oh, ow] = best


@njit(**JIT)
def average_pool2d(x, out, inverse, kh_, kw_, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    """AveragePool over NCHW x: the sum of in-range taps times ``inverse[oh, ow]``."""
    h_, w_ = x.shape[2], x.shape[3]
    oh_, ow_ = out.shape[2], out.shape[3]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = x[n, c]
            for oh in range(oh_):
                for ow in range(ow_):
                    total = 0.0
                    for a in range(kh_):
                        ih = oh * sh - ph + a * dh
                        if ih < 0 or ih >= h_:
                            continue
                        for b in range(kw_):
                            iw = ow * sw - pw + b * dw
                            if iw >= 0 and iw < w_:
                                total += plane[ih, iw]
                    out[n, c, oh, ow] = total * inverse[oh, ow]
