"""im2col + GEMM convolution (1-D and 2-D, any stride, dilation, padding and grouping) by blocks.

The output is computed in blocks of whole output rows. For each block the patches are copied
into a column buffer of bounded size (:data:`~eqsat.lowering.cpu_conv_geometry.BLOCK_BYTES`), one GEMM per group writes the
block's output, and a generated kernel (:func:`epilogue_source`) adds the bias and applies the
fused epilogue to it: no column buffer the size of the input times the kernel.

Most convs (strides up to 4, more than one tap, at most 25% wasted columns) compute on the
"wide" layout: the input is copied once into zero-bordered phase planes (``x`` padded, split by
row and column modulo the strides; for stride 1 just the padded input), where every tap of every
output reads one plane at a fixed offset. A tap's row of the column buffer is then a single
contiguous copy (:func:`im2col_wide`) and the GEMM computes each output row on the planes' width,
the epilogue dropping the extra columns; copying output rows one by one cost as much as the GEMM
with 10-wide outputs (with many output channels the extra columns cost more:
:data:`~eqsat.lowering.cpu_conv_geometry.WIDE_EXTRA_COLUMNS`). Other convs copy patches row by row (:func:`im2col_block`), from a
phase split of the input for small strides, by a strided gather for large ones (Silero's STFT
conv has stride 128). Convs with few output channels per group (<= :data:`~eqsat.lowering.cpu_conv_geometry.DIRECT_CHANNELS`) and rows
wide enough skip im2col and the GEMM: :func:`direct_conv` accumulates each tap straight from
the phase planes into the output. 1x1 stride-1 unpadded convs multiply slices of the input.
Single images of at most :data:`~eqsat.lowering.cpu_conv_geometry.SMALL_POSITIONS` output positions and :data:`~eqsat.lowering.cpu_conv_geometry.SMALL_WEIGHTS`
weights skip BLAS, whose packing costs more than the multiply there: :func:`small_conv` gathers
the patches and computes blocked dot products. Batches of images too small for a good GEMM each
run as one GEMM per group of images (:mod:`eqsat.lowering.cpu_conv_batch`). 1-D convs are 2-D
convs with one output row. Everything a run needs (views of planned buffers, block slices)
is prepared when the step is bound, so tiny convs pay a few calls only. The Numba kernels named
here live in :mod:`eqsat.lowering.cpu_conv_kernels`.

With several threads the blocks of one image are independent chunks for eqsat's pool
(:mod:`eqsat.lowering.cpu_threads`), each thread with its own column and output-block buffers,
the phase planes filled once per image before the blocks; when the positions make a single
block, the pool takes spans of output channels instead (:data:`~eqsat.lowering.cpu_conv_geometry.MIN_CHANNEL_SPAN`), the patches
gathered once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import (
    codegen,
    cpu_conv_batch,
    cpu_conv_groups,
    cpu_conv_packed,
    cpu_lanes,
    cpu_microkernel,
)
from eqsat.lowering.cpu import Env, Lowering, Step, StepFn
from eqsat.lowering.cpu_conv_epilogue import (
    classify_operands,
    epilogue_source,
    image_operand,
    load_epilogue,
    operand_array,
)
from eqsat.lowering.cpu_conv_geometry import Geometry
from eqsat.lowering.cpu_conv_kernels import (
    direct_runner,
    fill_phase_rows,
    im2col_block,
    im2col_wide,
    small_conv,
)
from eqsat.lowering.cpu_threads import Serial
from eqsat.lowering.memory import Usage

from eqsat.ir import Node, Value


def make_conv(geo: Geometry, filters: np.ndarray, bias: np.ndarray, kernels: Any,
              cols: np.ndarray, split: np.ndarray, wide: np.ndarray,
              plain: bool = False, pool: Any = None) -> Any:  # fmt: skip
    """``conv(x, out, *operands)`` for one image: x (C, H*W) contiguous, out (M, P) with its
    per-image epilogue operands (t1, ...) as :func:`epilogue_source` takes them.

    ``filters`` is (G, M/G, K); ``kernels`` the module of :func:`load_epilogue`; ``cols``,
    ``split`` and ``wide`` are scratch of :meth:`Geometry.cols_size`, :meth:`~Geometry.split_size`
    and :meth:`~Geometry.wide_size` elements (``cols`` and ``wide`` that many per thread of
    ``pool``, a :class:`~eqsat.lowering.cpu_threads.Pool` that takes the blocks as chunks);
    ``plain``: the epilogue only adds the bias.
    """
    if geo.direct:
        return direct_runner(
            (geo.c, geo.h, geo.w), filters.reshape(geo.m, geo.c // geo.group, geo.kh * geo.kw),
            bias, kernels.epilogue, geo.spans, (geo.sh, geo.sw, geo.rp, geo.wp),
            (geo.ow, geo.kw, geo.dh, geo.dw, geo.ph, geo.pw), pool,
        )  # fmt: skip
    if cpu_conv_packed.suits(geo, filters.dtype):
        return cpu_conv_packed.make_packed_conv(geo, filters, bias, kernels, cols, pool or Serial())
    if geo.small:
        ct = cols[: geo.p * geo.k].reshape(geo.p, geo.k)
        xt = cols[geo.p * geo.k : geo.cols_size()].reshape(geo.h, geo.w, geo.c)
        shape = (geo.c, geo.h, geo.w)
        params = geo.params()
        w0 = geo.filters_by_taps(filters)
        zero, epilogue = np.zeros_like(bias), kernels.epilogue
        if geo.channel_spans:
            return _small_by_channels(geo, w0, bias, kernels, cols, plain, pool or Serial())
        if plain:
            return lambda x, out: small_conv(x.reshape(shape), w0, bias, ct, xt, out, params)

        def conv_small(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            small_conv(x.reshape(shape), w0, bias, ct, xt, out, params)
            epilogue(out, 0, geo.p, zero, *operands)

        return conv_small
    pool = pool or Serial()
    lanes = cpu_lanes.blocked_conv(geo, filters, bias, kernels, cols, split, wide, pool)
    return lanes or _blocked_conv(geo, filters, bias, kernels, cols, split, wide, pool)


def _small_by_channels(geo: Geometry, w0: np.ndarray, bias: np.ndarray, kernels: Any,
                       cols: np.ndarray, plain: bool, pool: Any) -> Any:  # fmt: skip
    """:func:`small_conv` by spans of output channels on ``pool``, each worker gathering the
    patches into its own part of ``cols``."""
    size, shape, params = geo.cols_size(), (geo.c, geo.h, geo.w), geo.params()
    scratch = [
        (
            cols[t * size : t * size + geo.p * geo.k].reshape(geo.p, geo.k),
            cols[t * size + geo.p * geo.k : (t + 1) * size].reshape(geo.h, geo.w, geo.c),
        )
        for t in range(pool.threads)
    ]
    zero, epilogue, spans, p_ = np.zeros_like(bias), kernels.epilogue, geo.channel_spans, geo.p
    pool_map = pool.map

    def conv_small_channels(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        image = x.reshape(shape)

        def part(span: tuple[int, int], worker: int) -> None:
            m0, m1 = span
            ct, xt = scratch[worker]
            small_conv(image, w0[m0:m1], bias[m0:m1], ct, xt, out[m0:m1], params)
            if not plain:
                epilogue(out[m0:m1], 0, p_, zero[m0:m1], *(t[m0:m1] for t in operands))

        pool_map(part, spans)

    return conv_small_channels


def _gemm_epilogue(kernels: Any, gemm: Any, dtype: np.dtype, patches: bool) -> Any:
    """``gemm_epilogue(w, b, out, c0, c1, bias, *operands)``: out[:, c0:c1] = the epilogue of
    w @ b, column tile by column tile where the tiled GEMM computes it (the epilogue module's
    own; ``patches``: b is im2col's), else ``gemm`` and then the epilogue's pass."""
    if cpu_microkernel.ENABLED and cpu_lanes.available(dtype):
        fused = kernels.gemm_epilogue
        depth = cpu_microkernel.PATCH_MAX_DEPTH if patches else cpu_microkernel.MAX_DEPTH

        def tiled_then_epilogue(w: np.ndarray, b: np.ndarray, out: np.ndarray, c0: int, c1: int,
                                bias: np.ndarray, *operands: np.ndarray) -> None:  # fmt: skip
            fused(w, b, out, c0, c1, depth, bias, *operands)

        return tiled_then_epilogue
    epilogue = kernels.epilogue

    def gemm_then_epilogue(w: np.ndarray, b: np.ndarray, out: np.ndarray, c0: int, c1: int,
                           bias: np.ndarray, *operands: np.ndarray) -> None:  # fmt: skip
        gemm(w, b, out[:, c0:c1])
        epilogue(out, c0, c1, bias, *operands)

    return gemm_then_epilogue


def _blocked_conv(geo: Geometry, filters: np.ndarray, bias: np.ndarray, kernels: Any,
                   cols: np.ndarray, split: np.ndarray, wide: np.ndarray,
                   pool: Any) -> Any:  # fmt: skip
    """:func:`make_conv` by blocks of output rows, spread over ``pool``'s threads."""
    g, mg, cg = geo.group, geo.m // geo.group, geo.c // geo.group
    epilogue, epilogue_wide = kernels.epilogue, kernels.epilogue_wide
    params = geo.params()
    matmul = np.matmul  # grouped convs: a batch of GEMMs
    grouped_wide_gemm = cpu_microkernel.grouped_wide_gemm
    # grouped wide convs: each group's patches just before its product (needs BLAS from Numba)
    by_group = cpu_lanes.available(filters.dtype)
    tiles = cpu_microkernel.ENABLED
    patches = not geo.pointwise
    gemm = cpu_microkernel.conv_matmul(filters.dtype, patches)
    gemm_epilogue = _gemm_epilogue(kernels, gemm, filters.dtype, patches)
    w0, single = filters[0], g == 1
    k_all = geo.c * geo.kh * geo.kw
    cols_size, wide_size = geo.cols_size(), geo.wide_size()
    mine = [
        (cols[t * cols_size : (t + 1) * cols_size], wide[t * wide_size : (t + 1) * wide_size])
        for t in range(pool.threads)
    ]
    pool_map = pool.map
    spans = geo.channel_spans  # only for group 1, with several threads
    if spans:

        def by_channels(b: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            """out = w0 @ b and its epilogue, by spans of output channels on the pool."""

            def part(span: tuple[int, int], worker: int) -> None:
                m0, m1 = span
                gemm_epilogue(
                    w0[m0:m1], b, out[m0:m1], 0, geo.p, bias[m0:m1], *(t[m0:m1] for t in operands)
                )

            pool_map(part, spans)

    if geo.pointwise and spans:
        return by_channels  # the input is the GEMM's right-hand side
    if geo.pointwise:
        blocks = [(r0 * geo.ow, r1 * geo.ow) for r0, r1 in geo.blocks]

        def conv_pointwise(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            xg = x.reshape(g, cg, geo.p)
            og = out.reshape(g, mg, geo.p)

            def block(b: tuple[int, int], worker: int) -> None:
                c0, c1 = b
                if single:
                    gemm_epilogue(w0, x[:, c0:c1], out, c0, c1, bias, *operands)
                else:
                    matmul(filters, xg[:, :, c0:c1], out=og[:, :, c0:c1])
                    epilogue(out, c0, c1, bias, *operands)

            pool_map(block, blocks)

        return conv_pointwise
    if geo.wide:
        phases, fill = geo.phase_planes(cols.dtype)
        views = []
        for c, o in mine:  # per thread: each block's column buffer and GEMM output
            per = []
            for r0, r1 in geo.blocks:
                n = (r1 - r0) * geo.wp
                blk, ob = c[: k_all * n].reshape(k_all, n), o[: geo.m * n].reshape(geo.m, n)
                per.append((blk, ob, blk.reshape(g, geo.k, n), ob.reshape(g, mg, n)))
            views.append(per)
        kh, kw, dh, dw = geo.kh, geo.kw, geo.dh, geo.dw
        taps = (kh, kw, dh, dw)
        ow, wp = geo.ow, geo.wp
        indices = list(range(len(geo.blocks)))

        if geo.group_spans and by_group:  # one block: spans of groups on the pool
            return cpu_conv_groups.wide_group_spans(
                geo, filters, bias, kernels, phases, fill, mine, views[0][0][1], pool
            )
        # Patches read in place from the planes (no im2col) where the tiles take the product.
        in_place = geo.patches_in_place(filters.dtype)
        w_taps = geo.filters_by_taps(filters) if any(in_place) else w0
        offsets, planes = geo.tap_offsets(), phases.reshape(geo.c, -1)
        taps_gemm = cpu_microkernel.taps_gemm
        if spans:  # one block: its patches once, then the channels' GEMMs on the pool
            blk, ob = views[0][0][:2]
            r0, r1 = geo.blocks[0]
            block_planes = planes[:, r0 * wp :]

            def conv_wide_channels(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
                fill(x)
                if not in_place[0]:
                    im2col_wide(phases, blk, r0, r1, kh, kw, dh, dw)

                def part(span: tuple[int, int], worker: int) -> None:
                    m0, m1 = span
                    if in_place[0]:
                        taps_gemm(w_taps[m0:m1], block_planes, ob[m0:m1], offsets)
                    else:
                        gemm(w0[m0:m1], blk, ob[m0:m1])
                    epilogue_wide(
                        out[m0:m1], ob[m0:m1], r0, r1, ow, wp, bias[m0:m1],
                        *(t[m0:m1] for t in operands),
                    )  # fmt: skip

                pool_map(part, spans)

            return conv_wide_channels

        # Each block fills the input rows its taps read, then computes while they are in cache
        # (the phases of YOLOv8's 16-channel 160x160 stride-2 conv are 1.6 MB): rows two
        # blocks share are filled by both, with the same values.
        rows = [geo.input_rows(r0, r1) for r0, r1 in geo.blocks]
        image, ph, pw = (geo.c, geo.h, geo.w), geo.ph, geo.pw

        def conv_wide(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            xi = x.reshape(image)

            def block(j: int, worker: int) -> None:
                r0, r1 = geo.blocks[j]
                fill_phase_rows(xi, phases, ph, pw, *rows[j])
                blk, ob, grouped, grouped_out = views[worker][j]
                if in_place[j]:
                    taps_gemm(w_taps, planes[:, r0 * wp :], ob, offsets)
                elif single:
                    im2col_wide(phases, blk, r0, r1, kh, kw, dh, dw)
                    gemm(w0, blk, ob)
                elif by_group:
                    grouped_wide_gemm(phases, mine[worker][0], filters, ob, r0, r1, taps, tiles)
                else:
                    im2col_wide(phases, blk, r0, r1, kh, kw, dh, dw)
                    matmul(filters, grouped, out=grouped_out)
                epilogue_wide(out, ob, r0, r1, ow, wp, bias, *operands)

            pool_map(block, indices)

        return conv_wide
    source_of = geo.source_reader(split)
    bufs = [
        [
            c[: k_all * (r1 - r0) * geo.ow].reshape(k_all, (r1 - r0) * geo.ow)
            for r0, r1 in geo.blocks
        ]
        for c, _ in mine
    ]

    if spans:  # one block: its patches once, then the channels' GEMMs on the pool
        buf = bufs[0][0]

        def conv_cols_channels(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            im2col_block(source_of(x), buf, 0, geo.oh, params)
            by_channels(buf, out, *operands)

        return conv_cols_channels
    blocks = [(r0, r1, r0 * geo.ow, r1 * geo.ow) for r0, r1 in geo.blocks]
    indices = list(range(len(blocks)))

    def conv_cols(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        source = source_of(x)
        og = out.reshape(g, mg, geo.p)

        def block(j: int, worker: int) -> None:
            r0, r1, c0, c1 = blocks[j]
            buf = bufs[worker][j]
            im2col_block(source, buf, r0, r1, params)
            if single:
                gemm_epilogue(w0, buf, out, c0, c1, bias, *operands)
            else:
                matmul(filters, buf.reshape(g, geo.k, c1 - c0), out=og[:, :, c0:c1])
                epilogue(out, c0, c1, bias, *operands)

        pool_map(block, indices)

    return conv_cols


def build(lowering: Lowering, node: Node, x: Value, extras: list[Value], bias: np.ndarray,
          window: Any, scratch: Any, plain_epilogue: Any) -> Step:  # fmt: skip
    """The step of an im2col + GEMM conv (x rank 3 or 4, constant weights).

    ``scratch(purpose)`` gives the compile's shared scratch buffers (``.get(dtype, size)``);
    ``plain_epilogue()`` the separate in-place epilogue pass (``cpu_ops.Epilogue``), used when an
    operand of the fused epilogue is neither output-shaped, per-channel nor a scalar constant.
    """
    out = node.outputs[0]
    w = node.inputs[1]
    assert out is not None and w is not None and w.const is not None
    dtype = out.dtype
    group = int(node.attrs["group"])
    out_hw = int(np.prod(out.shape[2:], dtype=np.int64))
    flops = 2.0 * out.shape[1] * out_hw * (x.shape[1] // group) * int(np.prod(w.shape[2:]))
    parts = lowering.split(flops)  # per image: the pool takes one image's blocks at a time
    geo = Geometry(x.shape, w.shape, window, group, dtype.itemsize, parts, lowering.workers)
    shared = len(geo.channel_spans) > 1 or (len(geo.blocks) > 1 and not geo.small)
    shared = shared or len(geo.group_spans) > 1
    workers = lowering.workers if parts > 1 and shared else 1
    if geo.direct:
        workers = lowering.workers if parts > 1 and len(geo.spans) > 1 else 1
    per_group = 0
    if cpu_conv_batch.worth_batching(geo, dtype):
        threads = lowering.workers if lowering.split(flops * geo.n) > 1 else 1
        per_group = cpu_conv_batch.images_per_group(geo.n, geo.p, geo.k, dtype.itemsize, threads)
        workers = threads if per_group < geo.n else 1
    cols_size, gemm_size = geo.cols_size(), geo.wide_size()
    if per_group:
        cols_size, gemm_size = cpu_conv_batch.scratch_sizes(geo, per_group, dtype)
    filters = np.ascontiguousarray(w.const.reshape(group, geo.m // group, geo.k), dtype)
    fused = classify_operands(out.shape, str(node.attrs.get("epilogue", "{0}")), extras, dtype)
    kernel = None
    if fused is not None:
        try:
            kernel = load_epilogue(dtype, fused[0], [kind for _, kind in fused[1]])
        except codegen.Unsupported:
            fused = None
    epi = None
    if fused is None:
        kernel = load_epilogue(dtype, "{0}", [])
        epi = plain_epilogue()
    plain = fused is None or fused[0] == "{0}"
    lowering.kernels += 1
    cols_scratch, split_scratch, wide_scratch = scratch("im2col"), scratch("phase"), scratch("wide")
    cols_scratch.get(dtype, cols_size * workers)
    split_scratch.get(dtype, geo.split_size())
    wide_scratch.get(dtype, gemm_size * workers)
    x_slot = None if x.const is not None else lowering.slot(x)
    o = lowering.slot(out)
    n_, m_, p_ = geo.n, geo.m, geo.p
    hw = geo.h * geo.w
    x_const = None if x.const is None else np.ascontiguousarray(x.const, dtype).reshape(n_, -1, hw)
    # (constant or None, slot, kind)
    items = [
        (
            None if v.const is None else operand_array(v.const, kind, out.shape, dtype),
            None if v.const is not None else lowering.slot(v),
            kind,
        )
        for v, kind in (fused[1] if fused is not None else [])
    ]

    def bind(arrays: dict[int, np.ndarray]) -> StepFn:
        if per_group:
            return _bind_batched(arrays)
        conv = make_conv(
            geo,
            filters,
            bias,
            kernel,
            cols_scratch.get(dtype, geo.cols_size() * workers),
            split_scratch.get(dtype, geo.split_size()),
            wide_scratch.get(dtype, geo.wide_size() * workers),
            plain,
            lowering.pool if workers > 1 else None,
        )
        after = None if epi is None else epi.bound(o, arrays)
        fixed_out = arrays[o].reshape(n_, m_, p_) if o in arrays else None
        fixed_x = x_const
        if fixed_x is None and x_slot in arrays:
            fixed_x = arrays[x_slot].reshape(n_, -1, hw)
        fixed_ops: list[np.ndarray | None] = []
        for const, slot, kind in items:
            if const is None and slot in arrays:
                const = operand_array(arrays[slot], kind, out.shape, dtype)
            fixed_ops.append(const)
        if fixed_out is not None and fixed_x is not None and all(a is not None for a in fixed_ops):
            calls = [
                (fixed_x[i], fixed_out[i], *(image_operand(a, i) for a in fixed_ops))
                for i in range(n_)
            ]
            if len(calls) == 1 and after is None:
                args = calls[0]
                return lambda env: conv(*args)

            def run_fixed(env: Env) -> None:
                for args in calls:
                    conv(*args)
                if after is not None:
                    after(env)

            return run_fixed

        def run(env: Env) -> None:
            data = fixed_x
            if data is None:
                data = np.ascontiguousarray(env[x_slot]).reshape(n_, -1, hw)
            result = fixed_out if fixed_out is not None else env[o].reshape(n_, m_, p_)
            operands = [
                a if a is not None else operand_array(env[slot], kind, out.shape, dtype)
                for a, (_, slot, kind) in zip(fixed_ops, items, strict=True)
            ]
            for i in range(n_):
                conv(data[i], result[i], *(image_operand(a, i) for a in operands))
            if after is not None:
                after(env)

        return run

    def _bind_batched(arrays: dict[int, np.ndarray]) -> StepFn:
        conv = cpu_conv_batch.make_batched_conv(
            geo,
            filters,
            bias,
            kernel,
            cols_scratch.get(dtype, cols_size * workers),
            wide_scratch.get(dtype, gemm_size * workers),
            per_group,
            lowering.pool if workers > 1 else Serial(),
        )
        after = None if epi is None else epi.bound(o, arrays)

        def run(env: Env) -> None:
            data = x_const
            if data is None:
                data = np.ascontiguousarray(env[x_slot]).reshape(n_, -1, hw)
            operands = [
                const if const is not None else operand_array(env[slot], kind, out.shape, dtype)
                for const, slot, kind in items
            ]
            conv(data, env[o].reshape(n_, m_, p_), *operands)
            if after is not None:
                after(env)

        return run

    def unbound(env: Env) -> None:
        bind({})(env)

    reads = ([x_slot] if x_slot is not None else []) + ([] if epi is None else epi.reads())
    reads += [slot for const, slot, _ in items if slot is not None]
    return Step(unbound, Usage(reads, [o], True), "conv", node.name, bind)


__all__ = [
    "Geometry", "build", "classify_operands", "epilogue_source", "load_epilogue", "make_conv",
]  # fmt: skip
