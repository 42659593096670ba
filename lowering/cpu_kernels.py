"""Hand-written Numba kernels of the CPU target: im2col for GEMM convolutions, direct depthwise conv.

Both work on 2-D convolutions in NCHW with float32 or float64 data. They are ordinary modules with
``cache=True``, so Numba compiles each signature once per machine. Padding is handled by computing
each tap's valid output range up front, so the innermost loops have no bounds checks and vectorize.
"""

from __future__ import annotations

from numba import njit, prange

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
def _depthwise_plane(x, w, b, out, n, c, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    h_, w_ = x.shape[2], x.shape[3]
    oh_, ow_ = out.shape[2], out.shape[3]
    kh_, kw_ = w.shape[1], w.shape[2]
    bias = b[c]
    for oh in range(oh_):
        for ow in range(ow_):
            out[n, c, oh, ow] = bias
        for kh in range(kh_):
            ih = oh * sh - ph + kh * dh
            if ih < 0 or ih >= h_:
                continue
            for kw in range(kw_):
                wv = w[c, kh, kw]
                off = kw * dw - pw
                lo, hi = _valid(off, sw, w_, ow_)
                for ow in range(lo, hi):
                    out[n, c, oh, ow] += wv * x[n, c, ih, ow * sw + off]


@njit(**JIT)
def depthwise(x, w, b, out, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    """out[n, c] = b[c] + sum over taps of w[c, kh, kw] * x[n, c, shifted]; w is (C, KH, KW)."""
    for nc in range(x.shape[0] * x.shape[1]):
        _depthwise_plane(x, w, b, out, nc // x.shape[1], nc % x.shape[1], sh, sw, dh, dw, ph, pw)


@njit(parallel=True, **JIT)
def depthwise_parallel(x, w, b, out, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    """:func:`depthwise` with the (n, c) planes spread over Numba's threads."""
    for nc in prange(x.shape[0] * x.shape[1]):
        _depthwise_plane(x, w, b, out, nc // x.shape[1], nc % x.shape[1], sh, sw, dh, dw, ph, pw)
