"""Hand-written Numba kernels of the CPU target: row-wise reductions, attention, pooling, scatter.

Row kernels (mean, softmax, layer norm), nearest resizing, a flat gather and the non-overlapping
ConvTranspose's scatter (unfused epilogues) serve :mod:`eqsat.lowering.cpu_misc`; the masked
softmax, the average pool and the generic max pool (windows too wide for the generated ones of
:mod:`eqsat.lowering.cpu_depthwise`) serve :mod:`eqsat.lowering.cpu_data` (convolutions' kernels
live in :mod:`eqsat.lowering.cpu_conv`, :mod:`eqsat.lowering.cpu_winograd` and
:mod:`eqsat.lowering.cpu_depthwise`). They are ordinary modules with ``cache=True``, so Numba
compiles each signature once per machine.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.cpu_math import exp_f32, row_max, row_max_f32, row_square_deviation, row_sum
from numba import njit

JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}


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


@njit(**{**JIT, "fastmath": {"contract", "reassoc"}})
def row_mean(x, out):  # type: ignore[no-untyped-def]
    """out[r, 0] = mean of row r of x, accumulated in float64.

    Reassociation lets LLVM split the sum over vector lanes and several accumulators: in strict
    order each add waited on the last (GlobalAveragePool ran at half onnxruntime's speed).
    """
    for r in range(x.shape[0]):
        row = x[r]
        total = 0.0
        for i in range(row.shape[0]):
            total += row[i]
        out[r, 0] = total / row.shape[0]


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
def layer_norm_rows(x, out, scale, bias, eps):  # type: ignore[no-untyped-def]
    """(x - mean) / sqrt(var + eps) * scale + bias per row; statistics in float64, through
    :mod:`cpu_math`'s vectorized row reductions (scalar float64 loops took ~3 ns per element)."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        row = x[r]
        mean = row_sum(row) / n
        inv = 1.0 / np.sqrt(row_square_deviation(row, mean) / n + eps)
        dst = out[r]
        for i in range(n):
            dst[i] = (row[i] - mean) * inv * scale[i] + bias[i]


@njit(**JIT)
def rms_norm_rows(x, out, scale, eps):  # type: ignore[no-untyped-def]
    """x / sqrt(mean(x^2) + eps) * scale per row, the mean of squares in float64 lanes."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        row = x[r]
        inv = 1.0 / np.sqrt(row_square_deviation(row, 0.0) / n + eps)
        dst = out[r]
        for i in range(n):
            dst[i] = row[i] * inv * scale[i]


@njit(**JIT)
def resize_nearest(x, out, rows, cols, factor):  # type: ignore[no-untyped-def]
    """out[p, i, j] = x[p, rows[i], cols[j]] over (P, H, W) -> (P, OH, OW).

    ``factor`` > 0 says ``cols[j] == j // factor`` (integer upsampling): each row is written as
    repeats, which for a fixed 2x vectorizes as interleaving stores and runs at the speed of a
    fill. Otherwise each row is a gather, and a row whose source row is the previous one's is a
    copy of it instead.
    """
    oh_, ow_ = out.shape[1], out.shape[2]
    w_ = x.shape[2]
    for p in range(x.shape[0]):
        for i in range(oh_):
            dst = out[p, i]
            src = x[p, rows[i]]
            if factor == 2:
                for j in range(w_):
                    v = src[j]
                    dst[2 * j] = v
                    dst[2 * j + 1] = v
            elif factor > 0:
                for j in range(w_):
                    v = src[j]
                    for k in range(factor):
                        dst[factor * j + k] = v
            elif i > 0 and rows[i] == rows[i - 1]:
                prev = out[p, i - 1]
                for j in range(ow_):
                    dst[j] = prev[j]
            else:
                for j in range(ow_):
                    dst[j] = src[cols[j]]


@njit(**JIT)
def gather(x, index, out):  # type: ignore[no-untyped-def]
    """out[i] = x[index[i]] over flat arrays."""
    for i in range(index.shape[0]):
        out[i] = x[index[i]]


@njit(**JIT)
def masked_softmax_rows(s, mask, index, scale, nan_to_zero):  # type: ignore[no-untyped-def]
    """In place: each row of s (B, S, L) becomes softmax(row * scale + mask row).

    mask is (G, S or 1, L or 1); batch b uses mask group index[b]. Each pass over a row is a
    separate loop that LLVM vectorizes (the max and the sum through :mod:`cpu_math`'s reordering
    reductions); one fused scalar loop ran at ~7 ns per score. A NaN score still makes its row
    NaN, through its exponential and so the sum; so do a row of -inf scores (-inf - -inf) and a
    +inf score (inf - inf). A row is NaN exactly when its sum is (the sum is >= 1 otherwise), so
    ``nan_to_zero`` (Attention's attribute) tests the sum once per row and writes zeros.
    """
    ms, ml = mask.shape[1] > 1, mask.shape[2] > 1
    for b in range(s.shape[0]):
        m = mask[index[b]]
        for r in range(s.shape[1]):
            row = s[b, r]
            mrow = m[r if ms else 0]
            if ml:
                for i in range(row.shape[0]):
                    row[i] = row[i] * scale + mrow[i]
            else:
                add = mrow[0]
                for i in range(row.shape[0]):
                    row[i] = row[i] * scale + add
            top = row_max(row)
            for i in range(row.shape[0]):
                row[i] = np.exp(row[i] - top)
            total = row_sum(row)
            if nan_to_zero and total != total:
                row[:] = 0.0
                continue
            inv = 1.0 / total
            for i in range(row.shape[0]):
                row[i] = row[i] * inv


@njit(**JIT)
def masked_softmax_rows_f32(s, mask, index, scale, nan_to_zero):  # type: ignore[no-untyped-def]
    """:func:`masked_softmax_rows` for float32 with :func:`cpu_math.exp_f32`."""
    ms, ml = mask.shape[1] > 1, mask.shape[2] > 1
    k = np.float32(scale)
    for b in range(s.shape[0]):
        m = mask[index[b]]
        for r in range(s.shape[1]):
            row = s[b, r]
            mrow = m[r if ms else 0]
            if ml:
                for i in range(row.shape[0]):
                    row[i] = row[i] * k + mrow[i]
            else:
                add = mrow[0]
                for i in range(row.shape[0]):
                    row[i] = row[i] * k + add
            top = row_max_f32(row)
            for i in range(row.shape[0]):
                row[i] = exp_f32(row[i] - top)
            total = row_sum(row)
            if nan_to_zero and total != total:
                row[:] = 0.0
                continue
            inv = np.float32(1.0 / total)
            for i in range(row.shape[0]):
                row[i] = row[i] * inv


@njit(**JIT)
def max_pool2d(x, out, kh_, kw_, sh, sw, dh, dw, ph, pw):  # type: ignore[no-untyped-def]
    """MaxPool over NCHW float x into out; taps outside the input are skipped (padding is -inf).

    A row of outputs at a time, one kernel tap at a time over the outputs whose tap is in range:
    branch-free inner loops that LLVM vectorizes (a per-output tap loop with bounds checks ran
    ppocr_det's 3x3 pool at ~10x the time). Taps are visited in the same order per output.
    """
    h_, w_ = x.shape[2], x.shape[3]
    oh_, ow_ = out.shape[2], out.shape[3]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = x[n, c]
            for oh in range(oh_):
                row = out[n, c, oh]
                row[:] = -np.inf
                for a in range(kh_):
                    ih = oh * sh - ph + a * dh
                    if ih < 0 or ih >= h_:
                        continue
                    src = plane[ih]
                    for b in range(kw_):
                        off = b * dw - pw
                        # Outputs ow with 0 <= ow * sw + off < w_.
                        lo = 0 if off >= 0 else (sw - 1 - off) // sw
                        hi = min((w_ - 1 - off) // sw + 1, ow_) if off <= w_ - 1 else 0
                        for ow in range(lo, hi):
                            v = src[ow * sw + off]
                            best = row[ow]
                            # NaN propagates, as with np.maximum in the reference.
                            row[ow] = v if (v > best or v != v) else best


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


@njit(**{**JIT, "inline": "always"})
def _store_rows(out, r0, n, last, s0, s1, s2):  # type: ignore[no-untyped-def]
    """Column n of a partial block: rows r0.. up to ``last`` (2 or 3 rows)."""
    out[r0, n] = s0
    out[r0 + 1, n] = s1
    if r0 + 2 <= last:
        out[r0 + 2, n] = s2


# Bytes of weights per tile of :func:`rows_matmul`: every block of rows reuses a tile while it
# is in L2 (a quarter of this machine's 512 KiB).
ROWS_TILE_BYTES = 128 * 1024


def rows_tile(k: int, itemsize: int) -> int:
    """Rows of w per tile of :func:`rows_matmul` for dot products over ``k``: a multiple of 4."""
    return max(4, ROWS_TILE_BYTES // (k * itemsize) // 4 * 4)


@njit(**{**JIT, "fastmath": {"contract", "reassoc"}})
def rows_matmul(x, w, start, out, tile):  # type: ignore[no-untyped-def]
    """out (R, S) = start (S,) + x (R, K) @ w (S, K)^T, as dot products over contiguous K.

    Blocks of 4 rows of x x 2 rows of w keep eight sums in registers, each w value loaded
    serving four rows and each x value two (55-88 GFLOP/s; 4 x 4 spilled: 16); rows of x left
    over take 4 rows of w at a time. w is taken in tiles of ROWS_TILE_BYTES that every block of
    rows of x reuses while the tile is in cache: weights larger than the cache are then read
    from memory once, not once per block (7 rows by GPT-2's 768x2304 weights: 705 -> ~250 us).
    ``tile`` (a multiple of 4, :func:`rows_tile`) also fixes which loop computes each output: a
    call on the tiles ``w[a:b]`` (``a`` a multiple of ``tile``) gives the same bits there as one
    call on all of ``w``, which is how a product split over threads matches its unsplit run.
    For GEMMs of a few rows by constant weights (a batch-8 MLP: BLAS packs all of w on every
    call, 80 us for 8 rows by 784x256 weights, 58 here) and convs of a few output positions
    (:func:`eqsat.lowering.cpu_conv_kernels.small_conv`, with ``out`` the transposed view of its
    (channels, positions) output and ``start`` its bias).
    """
    r_, k_ = x.shape
    s_ = w.shape[0]
    # Rows in blocks of 4; 2 or 3 rows left over make one more block whose missing rows repeat
    # the last row (computed, not stored): a row on its own streams the tile once per row.
    fours = r_ - r_ % 4 + (4 if r_ % 4 >= 2 else 0)
    last = r_ - 1
    for n0 in range(0, s_, tile):
        n1 = min(n0 + tile, s_)
        pairs = n1 - (n1 - n0) % 2
        for r0 in range(0, fours, 4):
            x0, x1 = x[r0], x[min(r0 + 1, last)]
            x2, x3 = x[min(r0 + 2, last)], x[min(r0 + 3, last)]
            full = r0 + 3 <= last
            for n in range(n0, pairs, 2):
                wa, wb = w[n], w[n + 1]
                s0 = s1 = s2 = s3 = start[n]
                t0 = t1 = t2 = t3 = start[n + 1]
                for k in range(k_):
                    a, b = wa[k], wb[k]
                    v0, v1, v2, v3 = x0[k], x1[k], x2[k], x3[k]
                    s0 += a * v0
                    s1 += a * v1
                    s2 += a * v2
                    s3 += a * v3
                    t0 += b * v0
                    t1 += b * v1
                    t2 += b * v2
                    t3 += b * v3
                if full:
                    out[r0, n], out[r0 + 1, n], out[r0 + 2, n], out[r0 + 3, n] = s0, s1, s2, s3
                    out[r0, n + 1], out[r0 + 1, n + 1] = t0, t1
                    out[r0 + 2, n + 1], out[r0 + 3, n + 1] = t2, t3
                else:
                    _store_rows(out, r0, n, last, s0, s1, s2)
                    _store_rows(out, r0, n + 1, last, t0, t1, t2)
            for n in range(pairs, n1):
                wa = w[n]
                s0 = s1 = s2 = s3 = start[n]
                for k in range(k_):
                    a = wa[k]
                    s0 += a * x0[k]
                    s1 += a * x1[k]
                    s2 += a * x2[k]
                    s3 += a * x3[k]
                if full:
                    out[r0, n], out[r0 + 1, n], out[r0 + 2, n], out[r0 + 3, n] = s0, s1, s2, s3
                else:
                    _store_rows(out, r0, n, last, s0, s1, s2)
        quads = n1 - (n1 - n0) % 4
        for r in range(fours, r_):
            xr = x[r]
            for n in range(n0, quads, 4):
                w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
                s0, s1, s2, s3 = start[n], start[n + 1], start[n + 2], start[n + 3]
                for k in range(k_):
                    v = xr[k]
                    s0 += w0[k] * v
                    s1 += w1[k] * v
                    s2 += w2[k] * v
                    s3 += w3[k] * v
                out[r, n], out[r, n + 1], out[r, n + 2], out[r, n + 3] = s0, s1, s2, s3
            for n in range(quads, n1):
                wa = w[n]
                s0 = start[n]
                for k in range(k_):
                    s0 += wa[k] * xr[k]
                out[r, n] = s0


@njit(cache=True, nogil=True)
def repeat_blocks(x, out):  # type: ignore[no-untyped-def]
    """out (outer, r, inner)[o, k] = x (outer, inner)[o] for every k: Tile along one axis. Flat
    offsets, no row views (a view per block cost its reference count: 65536 blocks of 16)."""
    outer, r, inner = out.shape
    src = x.reshape(-1)
    dst = out.reshape(-1)
    for o in range(outer):
        start = o * inner
        for k in range(r):
            at = (o * r + k) * inner
            for j in range(inner):
                dst[at + j] = src[start + j]
