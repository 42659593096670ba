"""Grouped convs by spans of groups on eqsat's thread pool.

A grouped conv (ResNeXt's 32 groups, RegNet's 16-channel groups) whose output positions make
one block of rows offered the pool nothing to share: the blocks are its chunks, and the spans of
output channels that ungrouped convs split into (:attr:`~eqsat.lowering.cpu_conv.Geometry
.channel_spans`) would cut through groups. Its groups are independent: each has its own input
channels, patches, filters and output channels. So the pool takes spans of whole groups
(``Geometry.group_spans``), each worker gathering and multiplying its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import cpu_microkernel


def wide_group_spans(geo: Any, filters: np.ndarray, bias: np.ndarray, kernels: Any,
                      phases: np.ndarray, fill: Any, mine: list[tuple[np.ndarray, np.ndarray]],
                      gemm_out: np.ndarray, pool: Any) -> Any:  # fmt: skip
    """``conv(x, out, *operands)`` (as :func:`~eqsat.lowering.cpu_conv.make_conv` makes it)
    for a grouped conv on the planes' width whose positions make one block: ``fill`` copies x
    into ``phases``, then the pool takes ``geo.group_spans`` (``geo`` a
    :class:`~eqsat.lowering.cpu_conv.Geometry`). Each worker gathers and multiplies its groups
    (:func:`~eqsat.lowering.cpu_microkernel.grouped_wide_gemm`, into its own column buffer of
    ``mine``) into ``gemm_out``'s rows, then applies the epilogue to their output channels.
    The pool's probes keep the map on one thread where two run it no faster (the 2-vCPU
    development VM, whose vCPUs share one core's FMA units)."""
    mg, cg = geo.m // geo.group, geo.c // geo.group
    (r0, r1), taps = geo.blocks[0], (geo.kh, geo.kw, geo.dh, geo.dw)
    ow, wp, epilogue_wide = geo.ow, geo.wp, kernels.epilogue_wide
    grouped_wide_gemm, tiles = cpu_microkernel.grouped_wide_gemm, cpu_microkernel.ENABLED
    spans, pool_map = geo.group_spans, pool.map

    def conv_wide_groups(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        fill(x)

        def part(span: tuple[int, int], worker: int) -> None:
            g0, g1 = span
            m0, m1 = g0 * mg, g1 * mg
            grouped_wide_gemm(
                phases[g0 * cg : g1 * cg], mine[worker][0], filters[g0:g1], gemm_out[m0:m1],
                r0, r1, taps, tiles,
            )  # fmt: skip
            epilogue_wide(
                out[m0:m1], gemm_out[m0:m1], r0, r1, ow, wp, bias[m0:m1],
                *(t[m0:m1] for t in operands),
            )  # fmt: skip

        pool_map(part, spans)

    return conv_wide_groups


__all__ = ["wide_group_spans"]
