"""Convs with few output positions on packed filters: out.T = patches.T @ w.T, the filters as
the register tiles' vector lanes (:func:`eqsat.lowering.cpu_microkernel.transposed_gemm`).

A 1x1 conv on a 7x7 plane is a GEMM of 49 columns. Tiles over the columns waste a third of
their lanes on partial tiles (49 = 24 + 24 + 1), BLAS packs the whole filter matrix on every
call for a product that reads it once (14-33 GFLOP/s on this machine), and :func:`small_conv`'s
blocked dot products ran at 24-41. With the filters packed once, at compile time, into panels
of one tile's width and the positions as the tiles' rows, the same products ran at 36-44
(MobileNetV2's 160 -> 960 on 7x7: 353 us against small_conv's 410 and BLAS's 890).

Serves the convs that :func:`small_conv` would take (at most 64 positions; a KxK window's
patches gathered first) and 1x1 convs with fewer than ``TRANSPOSED_COLUMNS`` positions from
``MIN_POINTWISE_DEPTH`` deep; single group, float32 or float64, up to ``MAX_DEPTH`` deep (a panel
stays in L2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from eqsat.lowering import cpu_microkernel
from eqsat.lowering.cpu_conv_kernels import small_patches

Conv = Callable[..., None]
# Read when a conv step is compiled (False: the blocked GEMMs and small_conv; for A/B runs).
ENABLED = True
# 1x1 convs with more positions than small_conv takes (64) come here from this depth on. On
# 14x14 planes (196 positions), one thread: 96 -> 576 and 64 -> 384 ran at 39-42 GFLOP/s here
# and 42-44 in OpenBLAS; 576 -> 96, 480 -> 120 and 384 -> 64 at 40-45 here and 14-31 in
# OpenBLAS (MobileNetV2's: 1.12-1.2x onnxruntime's time here with K <= 96, against 1.1 BLAS).
MIN_POINTWISE_DEPTH = 256
# With several threads those 1x1 convs keep the native lanes over channel spans
# (cpu_lanes.blocked_conv): this module's spans go through the Python pool, and MobileNetV2,
# EfficientNet-B0 and a MobileNetV3 ran 2-6% slower on two threads with it (interleaved A/B).
SPANS_LANES = True


def suits(geo: Any, dtype: np.dtype) -> bool:
    """Whether the conv of ``geo`` (a :class:`~eqsat.lowering.cpu_conv.Geometry`) takes this."""
    return (
        ENABLED
        and cpu_microkernel.ENABLED
        and np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))
        and geo.group == 1
        and not geo.direct
        and geo.k <= cpu_microkernel.MAX_DEPTH
        and (
            geo.small
            or (
                geo.pointwise
                and geo.p < cpu_microkernel.TRANSPOSED_COLUMNS
                and geo.k >= MIN_POINTWISE_DEPTH
                and not (SPANS_LANES and geo.channel_spans)
            )
        )
    )


def make_packed_conv(geo: Any, filters: np.ndarray, bias: np.ndarray, kernels: Any,
                     cols: np.ndarray, pool: Any) -> Conv:  # fmt: skip
    """``conv(x, out, *operands)`` for one image (as ``cpu_conv.make_conv``): the GEMM on the
    filters packed here, then the epilogue module's pass (``kernels.epilogue``, which adds the
    bias), by ``geo.channel_spans`` on ``pool`` where there are several."""
    weights = filters[0] if geo.pointwise else geo.filters_by_taps(filters)
    spans = geo.channel_spans or [(0, geo.m)]
    panels = [
        cpu_microkernel.pack_panels(np.ascontiguousarray(weights[m0:m1].T)) for m0, m1 in spans
    ]
    transposed_gemm, epilogue, p_ = cpu_microkernel.transposed_gemm, kernels.epilogue, geo.p
    if geo.pointwise:
        patches_of: Callable[[np.ndarray], np.ndarray] = lambda x: x  # noqa: E731
    else:
        shape, params = (geo.c, geo.h, geo.w), geo.params()
        ct = cols[: geo.p * geo.k].reshape(geo.p, geo.k)
        xt = cols[geo.p * geo.k : geo.cols_size()].reshape(geo.h, geo.w, geo.c)

        def patches_of(x: np.ndarray) -> np.ndarray:
            small_patches(x.reshape(shape), ct, xt, params)
            return ct.T

    if len(spans) == 1:
        whole = panels[0]

        def conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            transposed_gemm(whole, patches_of(x), out, 0)
            epilogue(out, 0, p_, bias, *operands)

        return conv
    pool_map, indices = pool.map, list(range(len(spans)))

    def conv_by_channels(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        b = patches_of(x)

        def part(j: int, worker: int) -> None:
            m0, m1 = spans[j]
            rows = out[m0:m1]
            transposed_gemm(panels[j], b, rows, 0)
            epilogue(rows, 0, p_, bias[m0:m1], *(t[m0:m1] for t in operands))

        pool_map(part, indices)

    return conv_by_channels
