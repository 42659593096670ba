"""Numba kernels of the im2col + GEMM convolutions of :mod:`eqsat.lowering.cpu_conv`.

Patch copies into column buffers (row by row from the input or its phase split, or one run per
tap from zero-bordered phase planes) and the BLAS-free conv for a handful of output positions.
They are ordinary modules with ``cache=True``, so Numba compiles each signature once per machine.
:func:`direct_runner` binds the direct conv (no im2col, for few output channels) to its buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}


@njit(**JIT)
def _valid(off, stride, size, count):  # type: ignore[no-untyped-def]
    """The range of output positions o with 0 <= o*stride + off < size (off may be negative)."""
    lo = max(0, (-off + stride - 1) // stride)
    hi = min(count, (size - off + stride - 1) // stride)
    return lo, max(lo, hi)


@njit(**JIT)
def phase_split(x, xs):  # type: ignore[no-untyped-def]
    """x (C, H, W) -> xs (C, H, S, WQ): xs[c, h, p, j] = x[c, h, j*S + p] (S = the stride)."""
    c_, h_, w_ = x.shape
    s_ = xs.shape[2]
    for c in range(c_):
        for h in range(h_):
            src = x[c, h]
            for p in range(s_):
                dst = xs[c, h, p]
                for j in range((w_ - p + s_ - 1) // s_):
                    dst[j] = src[j * s_ + p]


@njit(**JIT)
def _gather_inside(x, cols, oh0, oh1, geometry):  # type: ignore[no-untyped-def]
    """:func:`im2col_block` for an unsplit input whose taps all fall inside it (no padding: a
    ViT's patch embedding, kernel = stride = 16 or 32). Each input row is sliced once for all
    of its taps, and the gather indexes it directly: slicing per tap and output row, with the
    zero fills around each, cost 40-50 ns a row, and CLIP's 32x32 patches (7 outputs a row)
    took 1 ms to gather against 2.5 ms for the GEMM."""
    ow_, kh_, kw_, sh, sw, dh, dw, _, _, _ = geometry
    for c in range(x.shape[0]):
        for kh in range(kh_):
            first = (c * kh_ + kh) * kw_
            for oh in range(oh0, oh1):
                src = x[c, oh * sh + kh * dh, 0]
                base = (oh - oh0) * ow_
                for kw in range(kw_):
                    row, off = first + kw, kw * dw
                    for i in range(ow_):
                        cols[row, base + i] = src[off + i * sw]


@njit(**JIT)
def im2col_block(xs, cols, oh0, oh1, geometry):  # type: ignore[no-untyped-def]
    """Output rows oh0 <= oh < oh1 of the patches of xs (C, H, SW, WQ) (the phase split input;
    (C, H, 1, W), the input itself, when not split) into cols (C*KH*KW, (oh1-oh0)*OW).
    geometry: (OW, KH, KW, SH, SW, DH, DW, PH, PW, W).

    Each row is copied between slices by an index from 0: indexed from a computed offset, the
    loop kept Numba's negative-index wraparound and did not vectorize (2x slower).
    """
    ow_, kh_, kw_, sh, sw, dh, dw, ph, pw, w_ = geometry
    c_, h_ = xs.shape[0], xs.shape[1]
    split = xs.shape[2] == sw
    inside = (oh1 - 1) * sh + (kh_ - 1) * dh < h_ and (ow_ - 1) * sw + (kw_ - 1) * dw < w_
    if not split and ph == 0 and pw == 0 and inside:
        _gather_inside(xs, cols, oh0, oh1, geometry)
        return
    for c in range(c_):
        for kh in range(kh_):
            for kw in range(kw_):
                dst = cols[(c * kh_ + kh) * kw_ + kw]
                off = kw * dw - pw
                lo, hi = _valid(off, sw, w_, ow_)
                # Tap position ow*sw + off is element ow + q of phase p.
                p = off % sw
                q = (off - p) // sw
                for oh in range(oh0, oh1):
                    ih = oh * sh - ph + kh * dh
                    base = (oh - oh0) * ow_
                    if ih < 0 or ih >= h_:
                        dst[base : base + ow_] = 0
                        continue
                    dst[base : base + lo] = 0
                    d = dst[base + lo : base + hi]
                    if split:
                        s = xs[c, ih, p, lo + q : hi + q]
                        for i in range(hi - lo):
                            d[i] = s[i]
                    else:  # not split (a large stride or one column of taps): a gather
                        s = xs[c, ih, 0, lo * sw + off :]
                        for i in range(hi - lo):
                            d[i] = s[i * sw]
                    dst[base + hi : base + ow_] = 0


def _pair_splitter(pairs: int):  # type: ignore[no-untyped-def]
    """An intrinsic ``split(src, s0, dst, e0, o0)``: elements e0 + k of dst = elements s0 + 2k
    of src, elements o0 + k = s0 + 2k + 1, for k < ``pairs``, offsets in elements from each
    array's first (any rank: the caller knows the layout): two vector loads, two in-register
    shuffles, two vector stores. No views are made (each costs an atomic reference count,
    ~30 ns a row on short rows)."""

    @intrinsic
    def split(typingctx, src, s0, dst, e0, o0):  # type: ignore[no-untyped-def]
        if not all(isinstance(a, types.Array) for a in (src, dst)) or src.dtype != dst.dtype:
            return None
        signature = types.void(src, types.int64, dst, types.int64, types.int64)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            source = context.make_array(sig.args[0])(context, builder, args[0])
            target = context.make_array(sig.args[2])(context, builder, args[2])
            element = context.get_data_type(sig.args[0].dtype)
            align = context.get_abi_sizeof(element)
            whole = ir.VectorType(element, 2 * pairs).as_pointer()
            both = builder.load(builder.bitcast(builder.gep(source.data, [args[1]]), whole),
                                align=align)  # fmt: skip
            half = ir.VectorType(element, pairs).as_pointer()
            for offset, first in ((args[3], 0), (args[4], 1)):
                lanes = [2 * k + first for k in range(pairs)]
                mask = ir.Constant(ir.VectorType(ir.IntType(32), pairs), lanes)
                picked = builder.shuffle_vector(both, both, mask)
                where = builder.bitcast(builder.gep(target.data, [offset]), half)
                builder.store(picked, where, align=align)
            return context.get_dummy_value()

        return signature, codegen

    return split


_split_pairs = _pair_splitter(16)
_split_pairs8 = _pair_splitter(8)


@njit(**JIT)
def fill_phases(x, phases, ph, pw):  # type: ignore[no-untyped-def]
    """x (C, H, W) into the zero-bordered phase planes (C, SH, SW, RQ, WQ): element (h, w) of
    the input padded by (ph, pw) goes to phase (h % SH, w % SW), position (h // SH, w // SW)."""
    fill_phase_rows(x, phases, ph, pw, 0, x.shape[1])


@njit(**JIT)
def fill_phase_rows(x, phases, ph, pw, h0, h1):  # type: ignore[no-untyped-def]
    """:func:`fill_phases` for input rows h0 <= h < h1 only (a block of a wide conv fills the
    rows its taps read just before its product, while they stay in cache; with stride 1 the
    planes are the padded input and each row a plain copy)."""
    c_, h_, w_ = x.shape
    sh, sw = phases.shape[1], phases.shape[2]
    h0, h1 = max(0, h0), min(h_, h1)
    if sh == 1 and sw == 1 and pw == 0 and phases.shape[4] == w_:
        # Rows that meet end to end (no padding on the left, none past them): one run per
        # channel. Row by row, Magika's (256, 512, 1) input took 400 us, one value per row.
        for c in range(c_):
            src = x[c].reshape(-1)[h0 * w_ : h1 * w_]
            dst = phases[c, 0, 0].reshape(-1)[(h0 + ph) * w_ : (h1 + ph) * w_]
            for t in range(src.shape[0]):
                dst[t] = src[t]
        return
    if sw == 1:
        for c in range(c_):
            for h in range(h0, h1):
                a, i = (h + ph) % sh, (h + ph) // sh
                src = x[c, h]
                dst = phases[c, a, 0, i, pw : pw + w_]
                for t in range(w_):
                    dst[t] = src[t]
        return
    if sw == 2:
        _fill_pairs(x, phases, ph, pw, h0, h1)
        return
    for c in range(c_):
        for h in range(h0, h1):
            a, i = (h + ph) % sh, (h + ph) // sh
            src = x[c, h]
            for b in range(sw):
                first_b = (b - pw) % sw  # the first input column of phase b
                dst = phases[c, a, b, i, (first_b + pw) // sw :]
                for t in range((w_ - first_b + sw - 1) // sw):
                    dst[t] = src[first_b + t * sw]


@njit(**JIT)
def _fill_pairs(x, phases, ph, pw, h0, h1):  # type: ignore[no-untyped-def]
    """:func:`fill_phase_rows` for two column phases (x and phases C-contiguous), with no row
    views and no division per row, in sweeps over the rows, each its own function (any other
    store or call in a loop's function kept LLVM from vectorizing it: 512x14x14 28 us alone,
    47 with the edge stores in its loop, 70-78 with the block calls in the function): rows of
    16 column pairs or more 16 at a time by :func:`_split_pairs`, of 8 to 15 pairs 8 at a time
    (256x28x28: 67 -> 38 us), the last block overlapping the one before (no scalar
    remainder, whose loop cost more than the blocks), shorter ones by indexing (LLVM's own
    vectorized deinterleave cost ~45 ns a row to set up, 3.5x the copy on 14x14 inputs, and
    moved 13-16 GB/s on long rows), then the unpaired edge columns."""
    w_ = x.shape[2]
    first = (-pw) % 2
    pairs = (w_ - first) // 2
    if pairs >= 8:
        _pair_blocks(x, phases, ph, pw, h0, h1, 16 if pairs >= 16 else 8)
    else:
        _short_pairs(x, phases, ph, pw, h0, h1)
    if first == 1 or (w_ - first) % 2 == 1:
        _pair_edges(x, phases, ph, pw, h0, h1)


@njit(**JIT)
def _pair_blocks(x, phases, ph, pw, h0, h1, width):  # type: ignore[no-untyped-def]
    sh, rq, wq = phases.shape[1], phases.shape[3], phases.shape[4]
    first = (-pw) % 2
    j0 = (first + pw) // 2
    pairs = (x.shape[2] - first) // 2
    last = pairs - width
    row = x.strides[1] // x.itemsize
    for c in range(x.shape[0]):
        a, i = (h0 + ph) % sh, (h0 + ph) // sh
        xc = x[c]
        pc = phases[c]
        for h in range(h0, h1):
            even = (a * 2 * rq + i) * wq + j0
            source = h * row + first
            if width == 16:
                for t in range(0, last, 16):
                    _split_pairs(xc, source + 2 * t, pc, even + t, even + rq * wq + t)
                _split_pairs(xc, source + 2 * last, pc, even + last, even + rq * wq + last)
            else:
                for t in range(0, last, 8):
                    _split_pairs8(xc, source + 2 * t, pc, even + t, even + rq * wq + t)
                _split_pairs8(xc, source + 2 * last, pc, even + last, even + rq * wq + last)
            a += 1
            if a == sh:
                a = 0
                i += 1


@njit(**JIT)
def _pair_edges(x, phases, ph, pw, h0, h1):  # type: ignore[no-untyped-def]
    sh, w_ = phases.shape[1], x.shape[2]
    first = (-pw) % 2
    j0 = (first + pw) // 2
    pairs = (w_ - first) // 2
    odd = (w_ - first) % 2 == 1
    for c in range(x.shape[0]):
        a, i = (h0 + ph) % sh, (h0 + ph) // sh
        xc = x[c]
        pc = phases[c]
        for h in range(h0, h1):
            if first == 1:
                pc[a, 1, i, pw // 2] = xc[h, 0]
            if odd:
                pc[a, 0, i, j0 + pairs] = xc[h, w_ - 1]
            a += 1
            if a == sh:
                a = 0
                i += 1


@njit(**JIT)
def _short_pairs(x, phases, ph, pw, h0, h1):  # type: ignore[no-untyped-def]
    sh = phases.shape[1]
    first = (-pw) % 2
    j0 = (first + pw) // 2
    pairs = (x.shape[2] - first) // 2
    for c in range(x.shape[0]):
        a, i = (h0 + ph) % sh, (h0 + ph) // sh
        xc = x[c]
        pc = phases[c]
        for h in range(h0, h1):
            for t in range(pairs):
                pc[a, 0, i, j0 + t] = xc[h, first + 2 * t]
                pc[a, 1, i, j0 + t] = xc[h, first + 2 * t + 1]
            a += 1
            if a == sh:
                a = 0
                i += 1


@njit(**JIT)
def im2col_wide(phases, cols, r0, r1, kh_, kw_, dh, dw):  # type: ignore[no-untyped-def]
    """Patches of output rows r0 <= oh < r1 computed on the phase planes' width WQ: tap
    (kh, kw) of every output reads phase ((kh*dh) % SH, (kw*dw) % SW) at a fixed offset, so
    row (c, kh, kw) of cols (C*KH*KW, (r1-r0)*WQ) is one contiguous run of that plane,
    flattened. The columns past OW in each output row are garbage that the GEMM computes and
    the epilogue skips (with stride 1, the planes are just the padded input)."""
    c_, sh, sw, rq, wq = phases.shape
    n = (r1 - r0) * wq
    # One view of every plane, flattened, made once: a reshape per row cost more than copying
    # rows of 63 values (ResNet's and RegNet's 7x7 convs: 185 us -> 84 for 400 channels).
    planes = phases.reshape(c_ * sh * sw, rq * wq)
    for c in range(c_):
        for kh in range(kh_):
            a, i = (kh * dh) % sh, (kh * dh) // sh
            for kw in range(kw_):
                b, j = (kw * dw) % sw, (kw * dw) // sw
                start = (r0 + i) * wq + j
                src = planes[(c * sh + a) * sw + b, start : start + n]
                dst = cols[(c * kh_ + kh) * kw_ + kw]
                for t in range(n):
                    dst[t] = src[t]


@njit(**JIT)
def direct_conv(phases, w, out, p0, p1, ow_, kw_, dh, dw):  # type: ignore[no-untyped-def]
    """Columns p0 <= p < p1 of out (M, OH*OW) = the conv of the zero-bordered phase planes
    (C, SH, SW, RQ, WQ) (see :func:`fill_phases`) with w (M, C/G, KH*KW), no bias.

    For convs with few output channels, where im2col writes C*KH*KW values per output for a
    GEMM too thin to pay for them (basic-pitch's 8-channel 3x39 conv ran at 13 GFLOP/s that
    way). Tap (kh, kw) of a run of outputs of one row reads a contiguous run of one plane; two
    output channels' rows accumulate four taps per pass over slices from 0 (which LLVM
    vectorizes; the slices and the output block stay in L1 for a chunk of ~1-2K columns)."""
    c_, sh, sw = phases.shape[0], phases.shape[1], phases.shape[2]
    m_, cg, taps = w.shape
    mg = m_ // (c_ // cg)
    # Each tap's plane (a, b) and offsets (rows, columns) from the output position.
    plane_a = np.empty(taps, np.int64)
    plane_b = np.empty(taps, np.int64)
    drow = np.empty(taps, np.int64)
    dcol = np.empty(taps, np.int64)
    for t in range(taps):
        kh, kw = t // kw_, t % kw_
        plane_a[t], drow[t] = (kh * dh) % sh, (kh * dh) // sh
        plane_b[t], dcol[t] = (kw * dw) % sw, (kw * dw) // sw
    p = p0
    while p < p1:
        oh = p // ow_
        ow0 = p - oh * ow_
        n = min(ow_ - ow0, p1 - p)
        for m in range(m_):
            o = out[m, p : p + n]
            for i in range(n):
                o[i] = 0
        for c in range(c_):
            g = c // cg
            ci = c - g * cg
            m0, m1 = g * mg, (g + 1) * mg
            pairs = m0 + (mg - mg % 2)
            t = 0
            if mg == 1:
                # One output channel: eight taps per pass halve its loads and stores per tap.
                o = out[m0, p : p + n]
                u = w[m0, ci]
                while taps - t >= 8:
                    j = ow0 + dcol[t]
                    s0 = phases[c, plane_a[t], plane_b[t], oh + drow[t], j : j + n]
                    j = ow0 + dcol[t + 1]
                    s1 = phases[c, plane_a[t + 1], plane_b[t + 1], oh + drow[t + 1], j : j + n]
                    j = ow0 + dcol[t + 2]
                    s2 = phases[c, plane_a[t + 2], plane_b[t + 2], oh + drow[t + 2], j : j + n]
                    j = ow0 + dcol[t + 3]
                    s3 = phases[c, plane_a[t + 3], plane_b[t + 3], oh + drow[t + 3], j : j + n]
                    j = ow0 + dcol[t + 4]
                    s4 = phases[c, plane_a[t + 4], plane_b[t + 4], oh + drow[t + 4], j : j + n]
                    j = ow0 + dcol[t + 5]
                    s5 = phases[c, plane_a[t + 5], plane_b[t + 5], oh + drow[t + 5], j : j + n]
                    j = ow0 + dcol[t + 6]
                    s6 = phases[c, plane_a[t + 6], plane_b[t + 6], oh + drow[t + 6], j : j + n]
                    j = ow0 + dcol[t + 7]
                    s7 = phases[c, plane_a[t + 7], plane_b[t + 7], oh + drow[t + 7], j : j + n]
                    u0, u1, u2, u3 = u[t], u[t + 1], u[t + 2], u[t + 3]
                    u4, u5, u6, u7 = u[t + 4], u[t + 5], u[t + 6], u[t + 7]
                    for i in range(n):
                        o[i] = (
                            o[i] + u0 * s0[i] + u1 * s1[i] + u2 * s2[i] + u3 * s3[i]
                            + u4 * s4[i] + u5 * s5[i] + u6 * s6[i] + u7 * s7[i]
                        )  # fmt: skip
                    t += 8
            while t < taps:
                j = ow0 + dcol[t]
                s0 = phases[c, plane_a[t], plane_b[t], oh + drow[t], j : j + n]
                if taps - t >= 4:
                    j = ow0 + dcol[t + 1]
                    s1 = phases[c, plane_a[t + 1], plane_b[t + 1], oh + drow[t + 1], j : j + n]
                    j = ow0 + dcol[t + 2]
                    s2 = phases[c, plane_a[t + 2], plane_b[t + 2], oh + drow[t + 2], j : j + n]
                    j = ow0 + dcol[t + 3]
                    s3 = phases[c, plane_a[t + 3], plane_b[t + 3], oh + drow[t + 3], j : j + n]
                    for m in range(m0, pairs, 2):
                        u, v = w[m, ci], w[m + 1, ci]
                        u0, u1, u2, u3 = u[t], u[t + 1], u[t + 2], u[t + 3]
                        v0, v1, v2, v3 = v[t], v[t + 1], v[t + 2], v[t + 3]
                        o = out[m, p : p + n]
                        q = out[m + 1, p : p + n]
                        for i in range(n):
                            a0, a1, a2, a3 = s0[i], s1[i], s2[i], s3[i]
                            o[i] = o[i] + u0 * a0 + u1 * a1 + u2 * a2 + u3 * a3
                            q[i] = q[i] + v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3
                    for m in range(pairs, m1):
                        u = w[m, ci]
                        u0, u1, u2, u3 = u[t], u[t + 1], u[t + 2], u[t + 3]
                        o = out[m, p : p + n]
                        for i in range(n):
                            o[i] = o[i] + u0 * s0[i] + u1 * s1[i] + u2 * s2[i] + u3 * s3[i]
                    t += 4
                else:
                    for m in range(m0, m1):
                        u0 = w[m, ci, t]
                        o = out[m, p : p + n]
                        for i in range(n):
                            o[i] = o[i] + u0 * s0[i]
                    t += 1
        p += n


# Weight bytes per channel tile of :func:`small_conv` (a quarter of this machine's 512 KiB L2).
SMALL_TILE_BYTES = 128 * 1024


@njit(cache=True, error_model="numpy", nogil=True)
def small_patches(x, ct, xt, geometry):  # type: ignore[no-untyped-def]
    """The patches ct (P, K) of x (C, H, W), K ordered (kh, kw, c), for convs with few output
    positions: x is first transposed into xt (H, W, C), so that each tap of each position
    copies C contiguous values (gathered straight from x, with a stride of H*W per value, the
    copies took as long as :func:`small_conv`'s multiply). With no dilation along W, a window
    row that lies inside the input is one run of KW*C values (an STFT's 512-tap 1-D conv on one
    channel: 7.8 us tap by tap, 0.3 as runs)."""
    ow_, kh_, kw_, sh, sw, dh, dw, ph, pw, w_ = geometry
    c_, h_ = x.shape[0], x.shape[1]
    rows = xt.reshape(h_, w_ * c_)
    for ih in range(h_):
        dst = rows[ih]
        if c_ == 1:  # a copy (channel by channel, the stores' stride slowed many channels)
            src = x[0, ih]
            for iw in range(w_):
                dst[iw] = src[iw]
            continue
        for iw in range(w_):
            pixel = xt[ih, iw]
            for c in range(c_):
                pixel[c] = x[c, ih, iw]
    run = kw_ * c_
    for p in range(ct.shape[0]):
        oh = p // ow_
        ow = p - oh * ow_
        row = ct[p]
        iw0 = ow * sw - pw
        inside = dw == 1 and iw0 >= 0 and iw0 + kw_ <= w_
        for kh in range(kh_):
            ih = oh * sh - ph + kh * dh
            if inside and 0 <= ih < h_:
                src_run = rows[ih, iw0 * c_ : iw0 * c_ + run]
                dst_run = row[kh * run : (kh + 1) * run]
                for i in range(run):
                    dst_run[i] = src_run[i]
                continue
            for kw in range(kw_):
                iw = ow * sw - pw + kw * dw
                seg = row[(kh * kw_ + kw) * c_ : (kh * kw_ + kw + 1) * c_]
                if ih < 0 or ih >= h_ or iw < 0 or iw >= w_:
                    for c in range(c_):
                        seg[c] = 0
                else:
                    src = xt[ih, iw]
                    for c in range(c_):
                        seg[c] = src[c]


@njit(cache=True, error_model="numpy", fastmath={"contract", "reassoc"}, nogil=True)
def small_conv(x, w, bias, ct, xt, out, geometry):  # type: ignore[no-untyped-def]
    """out (M, P) = w (M, K) @ patches + bias for convs with few output positions (P <= 64).

    BLAS spends more on packing the weights than on the multiply at these sizes (a 128x387x4
    GEMM ran at 25 GFLOP/s). The patches are gathered first (:func:`small_patches`: ct (P, K),
    K ordered (kh, kw, c), and w must be too); each output is then a dot product over
    contiguous K; reassociation lets the dot products vectorize.
    """
    p_ = out.shape[1]
    k_ = w.shape[1]
    small_patches(x, ct[:p_], xt, geometry)
    # Blocks of 4 positions x 2 output channels: each weight loaded serves four positions and
    # each patch value two channels, eight sums in registers (55-88 GFLOP/s, more than BLAS for
    # up to ~64 positions; 8 positions x 1 channel reached 41-86, 4 x 4 spilled: 16).
    m_ = w.shape[0]
    fours = p_ - p_ % 4
    # Channels in tiles of about SMALL_TILE_BYTES of weights: each tile is reused by every
    # position block while it is in L2 (streamed from memory once per block of positions, a
    # 512x512 pointwise conv of 49 positions ran at 49 GFLOP/s; BLAS: 65).
    tile = max(2, SMALL_TILE_BYTES // (k_ * w.itemsize) // 2 * 2)
    for m0 in range(0, m_, tile):
        m1 = min(m0 + tile, m_)
        pairs = m1 - (m1 - m0) % 2
        for p0 in range(0, fours, 4):
            c0, c1, c2, c3 = ct[p0], ct[p0 + 1], ct[p0 + 2], ct[p0 + 3]
            for m in range(m0, pairs, 2):
                wr, wq = w[m], w[m + 1]
                s0 = s1 = s2 = s3 = bias[m]
                t0 = t1 = t2 = t3 = bias[m + 1]
                for k in range(k_):
                    a, b = wr[k], wq[k]
                    x0, x1, x2, x3 = c0[k], c1[k], c2[k], c3[k]
                    s0 += a * x0
                    s1 += a * x1
                    s2 += a * x2
                    s3 += a * x3
                    t0 += b * x0
                    t1 += b * x1
                    t2 += b * x2
                    t3 += b * x3
                o, q = out[m, p0 : p0 + 4], out[m + 1, p0 : p0 + 4]
                o[0], o[1], o[2], o[3] = s0, s1, s2, s3
                q[0], q[1], q[2], q[3] = t0, t1, t2, t3
            for m in range(pairs, m1):
                wr = w[m]
                s0 = s1 = s2 = s3 = bias[m]
                for k in range(k_):
                    a = wr[k]
                    s0 += a * c0[k]
                    s1 += a * c1[k]
                    s2 += a * c2[k]
                    s3 += a * c3[k]
                o = out[m, p0 : p0 + 4]
                o[0], o[1], o[2], o[3] = s0, s1, s2, s3
    for p in range(fours, p_):
        cp = ct[p]
        for m in range(m_):
            wr = w[m]
            s = bias[m]
            for k in range(k_):
                s += wr[k] * cp[k]
            out[m, p] = s


def direct_runner(shape: tuple[int, int, int], weights: np.ndarray, bias: np.ndarray,
                  epilogue: Any, spans: list[tuple[int, int]], planes: tuple[int, int, int, int],
                  geometry: tuple[int, ...], pool: Any) -> Any:  # fmt: skip
    """``conv(x, out, *operands)`` for one image x (C, H*W) of ``shape`` through
    :func:`direct_conv` by ``spans`` of output columns (the chunks of ``pool``, when given),
    each followed by ``epilogue(out, p0, p1, bias, *operands)`` while it is in cache.

    weights (M, C/G, KH*KW); planes (SH, SW, RQ, WQ), the phase planes' shape past C, filled once
    per image; geometry (OW, KW, DH, DW, PH, PW)."""
    ow, kw, dh, dw, ph, pw = geometry
    # Borders stay zero: runs only write the input's positions.
    phases = np.zeros((shape[0], *planes), weights.dtype)
    interior = phases[:, 0, 0, ph : ph + shape[1], pw : pw + shape[2]]
    strided = planes[:2] != (1, 1)
    copyto = np.copyto
    parallel = pool is not None and len(spans) > 1

    def conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        if strided:
            fill_phases(x.reshape(shape), phases, ph, pw)
        else:
            copyto(interior, x.reshape(shape))
        if parallel:

            def span(s: tuple[int, int], worker: int) -> None:
                direct_conv(phases, weights, out, s[0], s[1], ow, kw, dh, dw)
                epilogue(out, s[0], s[1], bias, *operands)

            pool.map(span, spans)
            return
        for p0, p1 in spans:
            direct_conv(phases, weights, out, p0, p1, ow, kw, dh, dw)
            epilogue(out, p0, p1, bias, *operands)

    return conv


__all__ = [
    "direct_conv",
    "direct_runner",
    "fill_phase_rows",
    "fill_phases",
    "im2col_block",
    "im2col_wide",
    "phase_split",
    "small_conv",
]
