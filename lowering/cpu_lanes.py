"""Native chunk loops ("lanes") for steps split over eqsat's pool: each thread of a map runs one
``nogil`` Numba call that claims chunks from a shared atomic counter and computes them, taking
the GIL once per map rather than per chunk. Blocked im2col + GEMM convs compute each block's
patches, GEMM (:func:`eqsat.lowering.cpu_blas.gemm`) and fused epilogue in a lane.

Lanes compile on first use, per epilogue module, with the kernels they call linked in. A lane
must call an eagerly typed kernel with the types of its signature: the depthwise convs' first
lanes called their unrolled plane kernel on writable slices, where the kernel takes read-only
C-contiguous arrays, which compiled it again (PP-OCRv4's detector on 2 threads, empty kernel
cache: a first run of 102 s against 23). Their lanes now pass C-contiguous views of the
signature's types (:func:`eqsat.lowering.cpu_depthwise_step.lane_source`): compile 50 s and
first run 0.1 s, as without them.

The Python chunks they replace took the GIL two or three times per block: around ``np.matmul``
and each kernel call. With two threads those hand-overs collide, and a thread that finds the
GIL held sleeps and pays a wake-up; a map of 8 blocks of a 32-channel 3x3 conv on 28x28 took
420 us in Python chunks and 346 us in lanes on the 2-core VM. The calling thread returns as soon
as the counter says every chunk has finished, and a worker's lane, out of chunks, polls for the
pool's next job before it takes the GIL back (:func:`eqsat.lowering.cpu_threads.lane_wait`).

:func:`lane` writes a lane's source into a generated kernel module, next to the kernels it
calls; :func:`imports` names the hash of the modules lanes call and the BLAS flavour, so a change
to either recompiles them rather than loading stale machine code. :func:`runner` runs a lane on
a pool.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from eqsat.lowering import cpu_blas, cpu_conv_kernels, cpu_microkernel, cpu_spin, cpu_threads
from eqsat.lowering.cpu_conv_kernels import im2col_block, im2col_wide

_CALLEES_HASH = hashlib.sha256(
    "".join(
        inspect.getsource(m) for m in (cpu_blas, cpu_conv_kernels, cpu_microkernel, cpu_spin)
    ).encode()
).hexdigest()[:16]


def available(dtype: np.dtype) -> bool:
    """Whether convs of ``dtype`` run their blocks in lanes (else in Python chunks)."""
    return cpu_blas.AVAILABLE and np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))


def lane(name: str, params: str, chunks: str, prologue: list[str], body: list[str]) -> list[str]:
    """The source of lane ``name(counter, posted, wait, <params>)``: ``prologue`` once, then
    ``body`` (which sees the chunk's index as ``j``) for every chunk it claims, ``chunks`` the
    expression of their count. Chunks are claimed from the counter's CLAIMED slot and counted,
    once done, in its FINISHED slot, which the calling thread polls (``Pool.map``'s
    ``counter``). Out of chunks, a worker's lane polls for the pool's next job before it takes
    the GIL back (``cpu_threads.lane_wait``); the calling thread's lane posts the map's job
    on entry (``cpu_threads.caller_wait``) and returns at once when out of chunks."""
    return [
        "",
        "",
        "@njit(cache=True, error_model='numpy', nogil=True)",
        f"def {name}(counter, posted, wait, {params}):",
        "    if wait[3] != 0:",  # the calling thread posts its map's job (cpu_threads.Pool.map)
        "        lane_post(posted, wait[3])",
        "        wait[3] = 0",
        *(f"    {line}" for line in prologue),
        "    while True:",
        f"        j = lane_increment(counter, {cpu_blas.CLAIMED})",
        f"        if j >= {chunks}:",
        "            lane_spin_while(posted, 0, wait[0], wait[1], wait[2])",
        "            return",
        *(f"        {line}" for line in body),
        f"        lane_increment(counter, {cpu_blas.FINISHED})",
    ]


def imports() -> list[str]:
    """The imports :func:`lane` needs, and the hash of what lanes call (a generated module that
    has them recompiles when one changes, rather than loading stale machine code)."""
    return [
        f"# lanes {_CALLEES_HASH}; blas {cpu_blas.FLAVOR}",
        "from eqsat.lowering.cpu_blas import increment as lane_increment",
        "from eqsat.lowering.cpu_spin import post_from_native as lane_post",
        "from eqsat.lowering.cpu_spin import spin_while as lane_spin_while",
    ]


def conv_lanes(count: int) -> list[str]:
    """The conv lanes of an epilogue module whose kernels take ``count`` operands."""
    args = "".join(f", t{i + 1}" for i in range(count))
    rows = "".join(f", t{i + 1}[m0:m1]" for i in range(count))
    # Each group's GEMM: filters (G, M/G, K/G) by its rows of the patches into its output rows.
    groups = [
        "for gi in range(g):",
        "    gemm(filters[gi], cols_[gi * kg : (gi + 1) * kg], dest[gi * mg : (gi + 1) * mg])",
    ]
    # One group: the GEMM and its epilogue by column tiles (the epilogue module's gemm_epilogue)
    # up to ``depth`` deep (cpu_microkernel.suits).
    fused = cpu_microkernel.ENABLED
    then = [*groups, f"epilogue(out, c0, c1, bias{args})"]
    if fused:
        then = [
            "if g == 1:",
            f"    gemm_epilogue(filters[0], cols_, out, c0, c1, depth, bias{args})",
            "else:",
            *(f"    {line}" for line in then),
        ]
    shape = ["g, mg, kg = filters.shape"]
    return [
        *imports(),
        cpu_microkernel.lane_gemm_import(),
        f"PATCH_DEPTH = {cpu_microkernel.PATCH_MAX_DEPTH}",
        f"POINTWISE_DEPTH = {cpu_microkernel.MAX_DEPTH}",
        "from eqsat.lowering.cpu_conv_kernels import fill_phase_rows, im2col_block, im2col_wide",
        "from eqsat.lowering.cpu_microkernel import grouped_wide_gemm, taps_gemm",
        f"TILES = {cpu_microkernel.ENABLED}",
        *lane(
            "lane_cols", f"blocks, source, cols, worker, filters, out, bias, params{args}",
            "blocks.shape[0]", shape,
            [
                "r0, r1, c0, c1 = blocks[j, 0], blocks[j, 1], blocks[j, 2], blocks[j, 3]",
                "cols_ = cols[worker, : g * kg * (c1 - c0)].reshape(g * kg, c1 - c0)",
                "im2col_block(source, cols_, r0, r1, params)",
                "dest = out[:, c0:c1]",
                "depth = PATCH_DEPTH",
                *then,
            ],
        ),
        *lane(
            "lane_pointwise", f"blocks, x, filters, out, bias{args}", "blocks.shape[0]", shape,
            [
                "c0, c1 = blocks[j, 0], blocks[j, 1]",
                "cols_ = x[:, c0:c1]",
                "dest = out[:, c0:c1]",
                "depth = POINTWISE_DEPTH",
                *then,
            ],
        ),
        *lane(
            "lane_wide",
            f"blocks, phases, cols, wide, worker, filters, out, bias, taps, w_taps, offsets, image, pads{args}",
            "blocks.shape[0]",
            [*shape, "kh, kw, dh, dw, ow_, wp = taps", "planes = phases.reshape(phases.shape[0], -1)"],
            [
                "r0, r1 = blocks[j, 0], blocks[j, 1]",
                "fill_phase_rows(image, phases, pads[0], pads[1], blocks[j, 3], blocks[j, 4])",
                "n = (r1 - r0) * wp",
                "dest = wide[worker, : g * mg * n].reshape(g * mg, n)",
                "if blocks[j, 2]:  # the patches read in place",
                "    taps_gemm(w_taps, planes[:, r0 * wp :], dest, offsets)",
                "elif g == 1:",
                "    cols_ = cols[worker, : kg * n].reshape(kg, n)",
                "    im2col_wide(phases, cols_, r0, r1, kh, kw, dh, dw)",
                "    gemm(filters[0], cols_, dest)",
                "else:",
                "    grouped_wide_gemm(phases, cols[worker], filters, dest, r0, r1, (kh, kw, dh, dw), TILES)",
                f"epilogue_wide(out, dest, r0, r1, ow_, wp, bias{args})",
            ],
        ),
        *lane(
            "lane_channels", f"spans, cols_, w0, out, depth, bias{args}", "spans.shape[0]",
            ["p_ = out.shape[1]"],
            [
                "m0, m1 = spans[j, 0], spans[j, 1]",
                *(
                    [f"gemm_epilogue(w0[m0:m1], cols_, out[m0:m1], 0, p_, depth, bias[m0:m1]{rows})"]
                    if fused
                    else [
                        "gemm(w0[m0:m1], cols_, out[m0:m1])",  # BLAS's (tiles disabled)
                        f"epilogue(out[m0:m1], 0, p_, bias[m0:m1]{rows})",
                    ]
                ),
            ],
        ),
        *lane(
            "lane_channels_wide", f"spans, cols_, w0, wide, out, bias, taps, offsets{args}",
            "spans.shape[0]", ["r0, r1, ow_, wp = taps"],
            [
                "m0, m1 = spans[j, 0], spans[j, 1]",
                "if offsets.shape[0]:  # cols_ the planes, read in place (w0 by taps)",
                "    taps_gemm(w0[m0:m1], cols_, wide[m0:m1], offsets)",
                "else:",
                "    gemm(w0[m0:m1], cols_, wide[m0:m1])",
                f"epilogue_wide(out[m0:m1], wide[m0:m1], r0, r1, ow_, wp, bias[m0:m1]{rows})",
            ],
        ),
    ]  # fmt: skip


Conv = Callable[..., None]
# Thread id -> the (lane, arguments) of the lane calls a dry run on that thread made, for
# compiling them ahead (eqsat.lowering.lane_prefetch.compile_lanes_ahead): a lane compiles on
# its first call, which is the first run's.
RECORDING: dict[int, list[tuple[Any, tuple[Any, ...]]]] = {}


def runner(pool: Any, chunks: int) -> Callable[..., None]:
    """``run(lane, *args)``: ``lane(counter, posted, wait, *args)`` on enough threads of
    ``pool`` (more than one) for ``chunks`` (more than one) chunks, the ``worker`` index (for
    per-thread buffers) replacing ``None`` in ``args``."""
    new_counter = cpu_blas.counter
    lanes = list(range(min(pool.threads, chunks)))
    pool_map = pool.map
    lane_wait, caller_wait = cpu_threads.lane_wait, cpu_threads.caller_wait

    def spread(lane: Callable[..., None], *args: Any) -> None:
        counter = new_counter()
        at = [i for i, a in enumerate(args) if a is None]
        if RECORDING:  # a dry run notes the lane's argument types and computes nothing
            recorded = RECORDING.get(threading.get_ident())
            if recorded is not None:
                mine = [0 if i in at else a for i, a in enumerate(args)]
                recorded.append((lane, (counter, *caller_wait(), *mine)))
                return

        def one(_: int, worker: int) -> None:
            mine = list(args)
            for i in at:
                mine[i] = worker
            lane(counter, *(lane_wait() if worker else caller_wait()), *mine)

        pool_map(one, lanes, chunks, counter)

    return spread


def alone(lane: Callable[..., None], *args: Any) -> None:
    """``lane(counter, posted, wait, *args)`` on the calling thread alone, for a step that no
    pool splits; during a dry run recorded rather than run, as :func:`runner`'s are."""
    full = (cpu_blas.counter(), *cpu_threads.caller_wait(), *args)
    if RECORDING:
        recorded = RECORDING.get(threading.get_ident())
        if recorded is not None:
            recorded.append((lane, full))
            return
    lane(*full)


def blocked_conv(geo: Any, filters: np.ndarray, bias: np.ndarray, kernels: Any,
                 cols: np.ndarray, split: np.ndarray, wide: np.ndarray,
                 pool: Any) -> Conv | None:  # fmt: skip
    """:func:`eqsat.lowering.cpu_conv.make_conv`'s blocked conv (``geo`` a ``Geometry``) run in
    lanes on ``pool``, or None where lanes do not serve: no native BLAS, an integer dtype, or
    a conv that one thread computes. Compiling a lane costs about a second per epilogue (the
    kernels it calls are linked into it); Python chunks on one thread cost a few microseconds
    per block, and the models ran no faster on one thread in lanes."""
    chunks = len(geo.channel_spans) or len(geo.blocks)
    if not available(filters.dtype) or pool.threads <= 1 or chunks <= 1:
        return None
    threads = pool.threads
    w0 = filters[0]
    channel_spans = np.array(geo.channel_spans, np.int64).reshape(-1, 2)
    lane_channels = kernels.lane_channels
    if geo.pointwise:
        if len(channel_spans):
            run = runner(pool, len(channel_spans))

            def pointwise_channels(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
                run(
                    lane_channels,
                    channel_spans,
                    x,
                    w0,
                    out,
                    cpu_microkernel.MAX_DEPTH,
                    bias,
                    *operands,
                )

            return pointwise_channels
        blocks = np.array([(r0 * geo.ow, r1 * geo.ow) for r0, r1 in geo.blocks], np.int64)
        run = runner(pool, len(blocks))
        lane_pointwise = kernels.lane_pointwise

        def pointwise(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            run(lane_pointwise, blocks, x, filters, out, bias, *operands)

        return pointwise
    cols_size = geo.cols_size()
    per_thread = cols[: threads * cols_size].reshape(threads, cols_size)
    if geo.wide:
        return _wide_conv(geo, filters, bias, kernels, per_thread, wide, pool, channel_spans)
    params = geo.params()
    source_of = geo.source_reader(split)

    if len(channel_spans):  # one block: its patches once, then spans of channels
        k_all, p_ = geo.c * geo.kh * geo.kw, geo.p
        patches = per_thread[0, : k_all * p_].reshape(k_all, p_)
        run = runner(pool, len(channel_spans))

        def cols_channels(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            im2col_block(source_of(x), patches, 0, geo.oh, params)
            run(
                lane_channels,
                channel_spans,
                patches,
                w0,
                out,
                cpu_microkernel.PATCH_MAX_DEPTH,
                bias,
                *operands,
            )

        return cols_channels
    blocks = np.array([(r0, r1, r0 * geo.ow, r1 * geo.ow) for r0, r1 in geo.blocks], np.int64)
    run = runner(pool, len(blocks))
    lane_cols = kernels.lane_cols

    def cols_conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        source = source_of(x)
        run(lane_cols, blocks, source, per_thread, None, filters, out, bias, params, *operands)

    return cols_conv


def _wide_conv(geo: Any, filters: np.ndarray, bias: np.ndarray, kernels: Any,
               cols: np.ndarray, wide: np.ndarray, pool: Any,
               channel_spans: np.ndarray) -> Conv:  # fmt: skip
    """The conv on the phase planes' width (``geo.wide``), in lanes."""
    wide_size = geo.wide_size()
    gemm_out = wide[: pool.threads * wide_size].reshape(pool.threads, wide_size)
    phases, fill = geo.phase_planes(cols.dtype)
    kh, kw, dh, dw, ow, wp = geo.kh, geo.kw, geo.dh, geo.dw, geo.ow, geo.wp

    in_place = geo.patches_in_place(filters.dtype)
    offsets = geo.tap_offsets()
    planes = phases.reshape(geo.c, -1)
    if len(channel_spans):  # one block: its patches once (or in place), then spans of channels
        r0, r1 = geo.blocks[0]
        n = (r1 - r0) * wp
        run = runner(pool, len(channel_spans))
        lane_channels_wide, w0 = kernels.lane_channels_wide, filters[0]
        block_out = gemm_out[0, : geo.m * n].reshape(geo.m, n)
        taps = (r0, r1, ow, wp)
        if in_place[0]:
            w_taps, block_planes = geo.filters_by_taps(filters), planes[:, r0 * wp :]

            def wide_channels_in_place(
                x: np.ndarray, out: np.ndarray, *operands: np.ndarray
            ) -> None:
                fill(x)
                run(lane_channels_wide, channel_spans, block_planes, w_taps, block_out, out, bias,
                    taps, offsets, *operands)  # fmt: skip

            return wide_channels_in_place
        patches = cols[0, : geo.c * kh * kw * n].reshape(-1, n)
        no_taps = offsets[:0]

        def wide_channels(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            fill(x)
            im2col_wide(phases, patches, r0, r1, kh, kw, dh, dw)
            run(lane_channels_wide, channel_spans, patches, w0, block_out, out, bias, taps,
                no_taps, *operands)  # fmt: skip

        return wide_channels
    # Each block: (r0, r1, whether its patches are read in place, the input rows it fills
    # into the phase planes before its product, as cpu_conv's wide blocks do).
    blocks = np.array(
        [
            (r0, r1, here, *geo.input_rows(r0, r1))
            for (r0, r1), here in zip(geo.blocks, in_place, strict=True)
        ],
        np.int64,
    )
    w_taps = geo.filters_by_taps(filters) if any(in_place) else filters[0]
    run = runner(pool, len(blocks))
    lane_wide = kernels.lane_wide
    taps = (kh, kw, dh, dw, ow, wp)
    image, pads = (geo.c, geo.h, geo.w), (geo.ph, geo.pw)

    def wide_conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
        run(lane_wide, blocks, phases, cols, gemm_out, None, filters, out, bias, taps, w_taps,
            offsets, x.reshape(image), pads, *operands)  # fmt: skip

    return wide_conv


__all__ = ["alone", "available", "blocked_conv", "conv_lanes", "imports", "lane", "runner"]
