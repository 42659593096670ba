"""Linear Resize of the last two axes on the CPU (bilinear upsampling in segmentation heads,
FPNs and depth decoders).

Each resized axis is one pass that replays the reference's index and weight tables
(:func:`eqsat.ops.resize.linear_taps`), in the reference's order (rows, then columns) and with
its roundings (``x[i0] * w0 + x[i1] * w1``, products rounded, no contraction), so the result is
the reference's bit for bit.

A row pass blends two whole input rows per output row: it vectorizes. A column pass read in
place gathers two elements per output (``src[i0[j]]``), which does not vectorize and ran ten
times slower than a copy of its output. So float32 images whose column pass is wide enough
run in bands of output rows (:func:`resize_bands`): the band's rows (blended, when the rows
are resized too) are transposed by 8x8 register blocks
(:func:`eqsat.lowering.cpu_moves.swap_blocks32`), the column pass runs as a row pass over the
transposed band, and the result is transposed back into the output. A band is a whole plane
where the plane's output fits in :data:`BAND_BYTES` (one image of a decoder, in L2), else as
many rows as do. On a Zen 5 core, against the gathering pass: 32x112x112 -> 224x224 990 -> 340
us, 256x28x28 x4 2000 -> 760, 1x512x512 x2 660 -> 290. With several threads each takes a
range of planes (each thread its own band buffers).

Small planes (output rows under :data:`MIN_BAND_COLUMNS` wide or input rows under 8) and
float64 keep the gathering pass, which is as fast there.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering import cpu_threads
from eqsat.lowering.cpu import Env, Lowering, Step
from eqsat.lowering.cpu_moves import _block_order, swap_blocks32
from eqsat.lowering.memory import Usage
from numba import njit

from eqsat.ir import Node

# Output bytes of a band: a whole plane up to this (224x224 float32 is 196 KiB), else as
# many rows as fit (512-wide rows: bands of 64 rows beat 32 and 16 by 20-30%).
BAND_BYTES = 256 << 10
# Narrowest output row, and fewest input columns, that the transposing column pass takes.
MIN_BAND_COLUMNS = 16
MIN_BAND_INPUT_COLUMNS = 8


# No contraction: each output is round(a * u) + round(b * v), as the numpy reference computes it.
@njit(cache=True, error_model="numpy", nogil=True)
def resize_linear_rows(x, out, i0, i1, w0, w1):  # type: ignore[no-untyped-def]
    """out (P, OH, W): row oh of each plane of x (P, H, W) is x[i0[oh]] * w0[oh] + x[i1[oh]] * w1[oh]."""
    for p in range(x.shape[0]):
        for oh in range(out.shape[1]):
            a, b = x[p, i0[oh]], x[p, i1[oh]]
            u, v = w0[oh], w1[oh]
            dst = out[p, oh]
            for j in range(dst.shape[0]):
                dst[j] = a[j] * u + b[j] * v


@njit(cache=True, error_model="numpy", nogil=True)
def resize_linear_cols(x, out, i0, i1, w0, w1):  # type: ignore[no-untyped-def]
    """out (P, H, OW): column ow of each plane of x (P, H, W) is x[:, i0[ow]] * w0[ow] + x[:,
    i1[ow]] * w1[ow]."""
    for p in range(x.shape[0]):
        for h in range(x.shape[1]):
            src = x[p, h]
            dst = out[p, h]
            for j in range(dst.shape[0]):
                dst[j] = src[i0[j]] * w0[j] + src[i1[j]] * w1[j]


@njit(cache=True, error_model="numpy", nogil=True)
def resize_bands(x, out, p0, p1, rows, ri0, ri1, rw0, rw1, ci0, ci1, cw0, cw1,
                 blended, swapped, columns, in_order, out_order):  # type: ignore[no-untyped-def]  # fmt: skip
    """Planes [p0, p1) of out (P, OH, OW) from x (P, H, W) float32, by bands of
    ``blended.shape[0]`` output rows: the band's rows (blended by the row tables when ``rows``,
    else x's own: OH == H), transposed into ``swapped`` (W, n), the column tables applied to
    its rows into ``columns`` (OW, n), transposed into the band of out. ``in_order`` and
    ``out_order``: how the full bands' two transposes walk (:func:`swap_blocks32`)."""
    band = blended.shape[0]
    oh_, ow_, w_ = out.shape[1], out.shape[2], x.shape[2]
    for p in range(p0, p1):
        plane = x[p]
        for r0 in range(0, oh_, band):
            n = min(band, oh_ - r0)
            if rows:
                for r in range(n):
                    a, b = plane[ri0[r0 + r]], plane[ri1[r0 + r]]
                    u, v = rw0[r0 + r], rw1[r0 + r]
                    dst = blended[r]
                    for j in range(w_):
                        dst[j] = a[j] * u + b[j] * v
                source = blended[:n]
            else:
                source = plane[r0 : r0 + n]
            band_in = swapped[: w_ * n].reshape((w_, n))
            swap_blocks32(
                source.view(np.uint32).reshape((1, n, w_)),
                band_in.view(np.uint32).reshape((1, w_, n)),
                in_order,
            )
            band_out = columns[: ow_ * n].reshape((ow_, n))
            for j in range(ow_):
                a, b = band_in[ci0[j]], band_in[ci1[j]]
                u, v = cw0[j], cw1[j]
                dst = band_out[j]
                for r in range(n):
                    dst[r] = a[r] * u + b[r] * v
            swap_blocks32(
                band_out.view(np.uint32).reshape((1, ow_, n)),
                out[p, r0 : r0 + n].view(np.uint32).reshape((1, n, ow_)),
                out_order,
            )


def _tables(index: np.ndarray, weight: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    i0, i1 = (np.ascontiguousarray(index[:, t], np.int64) for t in range(2))
    w0, w1 = (np.ascontiguousarray(weight[:, t], dtype) for t in range(2))
    return i0, i1, w0, w1


def resize_linear(lowering: Lowering, node: Node) -> Step | None:
    """The step of a linear Resize of the last two axes with constant scales or sizes (not
    tf_crop_and_resize, not antialiased downsampling); None where the reference runs it."""
    from eqsat.lowering.cpu_data import _view

    from eqsat.ops.resize import linear_taps

    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    attrs = node.attrs
    if x.rank < 2 or out.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        return None
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" or x.size == 0:
        return None
    if any(v is not None and v.const is None for v in node.inputs[1:]):
        return None
    consts = [None if v is None or v.const.size == 0 else v.const for v in node.inputs[1:4]]
    scales, sizes = (consts + [None] * 3)[1:3]
    tables, shape = linear_taps(x.shape, attrs, scales, sizes)
    if not tables and tuple(shape) == out.shape == x.shape:
        # No axis resized (a decoder's upsampling to the size it already has: SegFormer's
        # first branch, SSDlite's 320 -> 320): the reference's result is its input.
        return _view(lowering, node)
    if not tables or tuple(shape) != out.shape or any(a < x.rank - 2 for a, _, _ in tables):
        return None
    if any(index.shape[1] != 2 for _, index, _ in tables):  # antialiased downsampling
        return None
    dtype = out.dtype
    planes = int(np.prod(x.shape[:-2], dtype=np.int64))
    by_axis = {axis - x.rank + 2: _tables(index, weight, dtype) for axis, index, weight in tables}
    h_, w_ = x.shape[-2:]
    oh_, ow_ = out.shape[-2:]
    lowering.kernels += 1
    wide = ow_ >= MIN_BAND_COLUMNS and w_ >= MIN_BAND_INPUT_COLUMNS
    if 1 in by_axis and dtype == np.float32 and wide:
        return _banded_step(lowering, node, planes, by_axis, (h_, w_, oh_, ow_))
    xs, o = lowering.slot(x), lowering.slot(out)
    passes = []
    for axis, tables_k in sorted(by_axis.items()):
        kernel = resize_linear_rows if axis == 0 else resize_linear_cols
        h_, w_ = (oh_, w_) if axis == 0 else (h_, ow_)
        passes.append((kernel, tables_k, (h_, w_)))
    # The first pass writes a scratch plane stack when a second one follows.
    scratch = np.empty((planes, *passes[0][2]), dtype) if len(passes) == 2 else None

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(planes, *x.shape[-2:])
        result = env[o].reshape(planes, *out.shape[-2:])
        for k, (kernel, tables_k, _) in enumerate(passes):
            target = scratch if k == 0 and scratch is not None else result
            kernel(data, target, *tables_k)
            data = target

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


def _banded_step(lowering: Lowering, node: Node, planes: int,
                 by_axis: dict[int, tuple[np.ndarray, ...]],
                 sizes: tuple[int, int, int, int]) -> Step:  # fmt: skip
    """:func:`resize_bands` over the planes, split among the pool's threads by planes."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    h_, w_, oh_, ow_ = sizes
    band = oh_ if oh_ * ow_ * 4 <= BAND_BYTES else max(8, BAND_BYTES // (4 * ow_) // 8 * 8)
    band = min(band, oh_)
    rows = 0 in by_axis
    row_tables = by_axis[0] if rows else _tables(np.zeros((1, 2)), np.zeros((1, 2)), np.float32)
    orders = [_block_order(band, w_), _block_order(ow_, band)]
    # None: rows a multiple of 4 KiB apart (one cache set); the other walk avoids that.
    in_order, out_order = (bool(v) if v is not None else True for v in orders)
    work = float(planes * (oh_ * w_ + oh_ * ow_) * 4)
    spans = cpu_threads.chunks(planes, lowering.split(work))

    def buffers() -> tuple[np.ndarray, ...]:
        return (
            np.empty((band, w_), np.float32),
            np.empty(band * w_, np.float32),
            np.empty(band * ow_, np.float32),
        )

    scratch = [buffers() for _ in range(max(1, lowering.workers))]
    xs, o = lowering.slot(x), lowering.slot(out)
    tables = (rows, *row_tables, *by_axis[1])

    def span(item: tuple[int, int, np.ndarray, np.ndarray], worker: int) -> None:
        p0, p1, data, result = item
        resize_bands(data, result, p0, p1, *tables, *scratch[worker], in_order, out_order)

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(planes, h_, w_)
        result = env[o].reshape(planes, oh_, ow_)
        if len(spans) == 1:
            span((0, planes, data, result), 0)
        else:
            assert lowering.pool is not None
            lowering.pool.map(span, [(p0, p1, data, result) for p0, p1 in spans])

    return Step(run, Usage([xs], [o], True), "kernel", node.name)
