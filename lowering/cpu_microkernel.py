"""Register-tiled GEMMs: c = a @ b for a conv's filters a (M, K) by its input planes (a 1x1 conv),
im2col's patches or Winograd's transformed tiles b (K, P) (:func:`tiled_gemm`, the conv epilogue
modules' generated ``gemm_epilogue``, :func:`batched_gemm`); for rows a by constant weights
packed once into panels (:func:`pack_panels`, :func:`packed_gemm`: a transformer's linear
layers); and for convs with few output positions, out.T = b.T @ w.T on the filters packed
(:func:`transposed_gemm`, used by :mod:`eqsat.lowering.cpu_conv_packed`).

BLAS packs both operands on every call: for a 1x1 conv that is a copy of the whole input per
product, and with K of 16-100 (MobileNets' pointwise convs) the copy and the short inner loops
cost more than the multiply-adds. Here nothing is packed per call. The register tile itself
(:mod:`eqsat.lowering.cpu_tile_ir`: ROWS rows of a by VECTORS SIMD vectors of b's columns, the
sums in registers, in LLVM IR) is reached through a C symbol; these drivers walk it over blocks
of rows and column tiles whose K x columns of b stay in L2 while every block of rows of a
reuses them.

Sums are accumulated in k order, one fused multiply-add per term: the result is within the
usual GEMM rounding of BLAS's (the tests compare both against float64 products). Where the CPU
lacks vector fused multiply-add, :data:`ENABLED` is False and every product stays with BLAS.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from eqsat.lowering import cpu_blas, cpu_tile_ir
from eqsat.lowering.cpu_conv_kernels import im2col_wide
from eqsat.lowering.cpu_tile_ir import (
    ROWS,
    VECTOR_BYTES,
    VECTORS,
    native_rows,
    native_rows_taps,
    native_rows_transposed,
)
from numba import njit

# cpu_tile_ir's calling convention that this file's cached kernels were compiled against.
_TILE_ABI = 1
if cpu_tile_ir.ABI != _TILE_ABI:
    raise ImportError(f"cpu_tile_ir's ABI {cpu_tile_ir.ABI} is not {_TILE_ABI}: update both")

# Bytes of b per column tile (K x columns), read from L2 by every block of rows of a.
COLUMN_TILE_BYTES = 96 << 10

_JIT = {"cache": True, "error_model": "numpy", "nogil": True}
# Generated modules that call these kernels carry this hash, so that they recompile (rather
# than load stale machine code from Numba's cache) when these kernels or the BLAS call change.
_SOURCE_HASH = hashlib.sha256(
    b"".join(Path(m.__file__).read_bytes() for m in (cpu_tile_ir, cpu_blas))
    + Path(__file__).read_bytes()
).hexdigest()[:16]


@njit(**_JIT)
def tiled_columns(a, b, c, q0, q1):  # type: ignore[no-untyped-def]
    """Columns q0 <= p < q1 of c = a @ b."""
    native_rows(a, b, c, 0, a.shape[0], q0, q1, 0)


def panel_width(dtype: np.dtype) -> int:
    """Columns of a panel of packed weights: one tile's (VECTORS SIMD vectors)."""
    return VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize


def pack_panels(weights: np.ndarray) -> np.ndarray:
    """Constant weights (K, N) as panels (ceil(N / width), K, width) of :func:`panel_width`
    columns each, the last one padded with zeros: what :func:`packed_gemm` reads."""
    k, n = weights.shape
    width = panel_width(weights.dtype)
    count = -(-n // width)
    padded = np.zeros((k, count * width), weights.dtype)
    padded[:, :n] = weights
    return np.ascontiguousarray(padded.reshape(k, count, width).transpose(1, 0, 2))


@njit(**_JIT)
def packed_gemm(a, panels, c, q0, q1):  # type: ignore[no-untyped-def]
    """Columns of panels q0 <= q < q1 of c = a @ weights, the weights packed by
    :func:`pack_panels`; a and c with contiguous rows.

    A panel (K x one tile's columns, contiguous) stays in cache while every block of ROWS rows
    of a runs its tile over it: BLAS packs the weights on every call instead (MLAS, like this,
    packs constant weights once). Each output's sum is the same whatever the panels' split."""
    chunk = packed_check(a, panels, c)
    for r0 in range(0, a.shape[0], chunk):
        r1 = min(r0 + chunk, a.shape[0])
        for q in range(q0, q1):
            packed_panel(a, panels, c, r0, r1, q)


@njit(**_JIT)
def packed_check(a, panels, c):  # type: ignore[no-untyped-def]
    """Raise ValueError unless a, panels and c make a :func:`packed_gemm`; else its rows per
    chunk: whose part of a stays in L2 while it meets every panel (1500 rows x 384: 10% slower
    than BLAS unchunked, a read from L3 once per panel)."""
    m, k = a.shape
    width = panels.shape[2]
    if panels.shape[1] != k or c.shape[0] != m or -(-c.shape[1] // width) != panels.shape[0]:
        raise ValueError("packed_gemm: shapes do not match")
    size = a.itemsize
    if a.strides[1] != size or c.strides[1] != size or panels.itemsize != size:
        raise ValueError("packed_gemm: rows must be contiguous")
    return packed_rows(k, size)


@njit(**_JIT)
def packed_rows(k, size):  # type: ignore[no-untyped-def]
    """Rows of a per chunk of :func:`packed_gemm` (``k`` deep, ``size``-byte elements): whose
    part of a stays in L2 while it meets every panel."""
    return max(PACKED_MIN_CHUNK, PACKED_CHUNK_BYTES // max(1, k * size) // ROWS * ROWS)


@njit(**_JIT)
def packed_panel(a, panels, c, r0, r1, q):  # type: ignore[no-untyped-def]
    """Rows r0 <= m < r1 of panel q's columns of c = a @ weights (:func:`packed_gemm`)."""
    width = panels.shape[2]
    p0 = q * width
    native_rows(a, panels[q], c, r0, r1, p0, min(p0 + width, c.shape[1]), p0)


@njit(**_JIT)
def transposed_gemm(panels, b, out, first):  # type: ignore[no-untyped-def]
    """out = w[first * width : first * width + M] @ b for filters w (packed as
    ``pack_panels(w.T)``, panels of ``width`` filters each) and b (K, n) with any strides; out
    (M, n) with contiguous rows.

    Computed as out.T = b.T @ w.T: the filters are the tiles' vector lanes and the n columns
    (a 1x1 conv's positions) its rows, so few columns (49 on a 7x7 plane) waste no partial
    tiles: 36 GFLOP/s where tiles over the columns ran 24 and OpenBLAS 14-33 (one thread)."""
    m, n = out.shape
    k = b.shape[0]
    width = panels.shape[2]
    count = -(-m // width)
    if panels.shape[1] != k or b.shape[1] != n or first < 0 or first + count > panels.shape[0]:
        raise ValueError("transposed_gemm: shapes do not match")
    size = out.itemsize
    if out.strides[1] != size or b.itemsize != size or panels.itemsize != size:
        raise ValueError("transposed_gemm: out's rows must be contiguous")
    a, c = b.T, out.T
    chunk = packed_rows(k, size)
    for r0 in range(0, n, chunk):
        r1 = min(r0 + chunk, n)
        for q in range(count):
            p0 = q * width
            native_rows_transposed(a, panels[first + q], c, r0, r1, p0, min(p0 + width, m), p0)


@njit(**{**_JIT, "inline": "always"})
def column_tile(m, k, size, output_bytes):  # type: ignore[no-untyped-def]
    """Columns per tile: k x columns of b within COLUMN_TILE_BYTES and, where ``output_bytes``
    is not 0, m x columns of c within it too (an epilogue then reads them from cache); whole
    tiles of VECTORS vectors, at least one."""
    width = VECTORS * (VECTOR_BYTES // size)
    columns = COLUMN_TILE_BYTES // (k * size)
    if output_bytes > 0:
        columns = min(columns, output_bytes // (m * size))
    return max(width, columns // width * width)


@njit(**_JIT)
def tiled_gemm(a, b, c):  # type: ignore[no-untyped-def]
    """c = a @ b for 2-D arrays of one float dtype whose rows are contiguous (any row stride)."""
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("tiled_gemm: shapes do not match")
    size = a.itemsize
    if a.strides[1] != size or b.strides[1] != size or c.strides[1] != size:
        raise ValueError("tiled_gemm: rows must be contiguous")
    if m == 0 or n == 0:
        return
    if k == 0:
        c[:] = 0
        return
    columns = column_tile(m, k, size, 0)
    for q0 in range(0, n, columns):
        tiled_columns(a, b, c, q0, min(q0 + columns, n))


@njit(**_JIT)
def taps_gemm(a, planes, c, offsets):  # type: ignore[no-untyped-def]
    """c = a @ patches for a conv on its planes' width, the patches read in place: a (M, T*K)
    the filters ordered (tap, channel), planes (K, L) the K input planes (their rows
    contiguous), patch row (t, r) = planes[r, offsets[t] : offsets[t] + n] for c (M, n).

    im2col_wide copies each plane T times (9x the input for a 3x3 conv) for the GEMM to read
    once per block of rows; here the tiles read the planes themselves (YOLOv8's 3x3 convs on
    a Zen 5 core, conv + SiLU: 64 channels on 20x20 161 -> 147 us, 32 channels on 40x40
    181 -> 150)."""
    m = a.shape[0]
    n = c.shape[1]
    taps = offsets.shape[0]
    if taps == 0 or a.shape[1] % taps != 0 or c.shape[0] != m:
        raise ValueError("taps_gemm: shapes do not match")
    k = a.shape[1] // taps
    size = a.itemsize
    if planes.shape[0] != k or planes.itemsize != size or c.itemsize != size:
        raise ValueError("taps_gemm: shapes do not match")
    if a.strides[1] != size or planes.strides[1] != size or c.strides[1] != size:
        raise ValueError("taps_gemm: rows must be contiguous")
    if m == 0 or n == 0:
        return
    if offsets.min() < 0 or offsets.max() + n > planes.shape[1]:
        raise ValueError("taps_gemm: a tap reads beyond the planes")
    # Each column tile reads about K x (columns + the taps' reach) of the planes, from L2.
    columns = column_tile(m, k, size, 0)
    for q0 in range(0, n, columns):
        native_rows_taps(a, planes, c, offsets, 0, m, q0, min(q0 + columns, n), 0)


def taps_suit(dtype: np.dtype, depth: int, columns: int) -> bool:
    """Whether a wide conv's block of ``columns`` (``depth`` = C*KH*KW) reads its patches in
    place (:func:`taps_gemm`): where the tiles would take its product of copied patches."""
    return (
        ENABLED
        and np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))
        and bool(suits(depth, columns, PATCH_MAX_DEPTH))
    )


# Where the tiles beat BLAS (conv shapes, one thread, interleaved with OpenBLAS's sgemm). With
# AVX2 tiles (a Zen 1 core): K up to ~1000 and at least a few tiles of columns; deeper products
# spill a block's filter rows from L1, narrow ones are mostly partial tiles; and for im2col's
# patches only up to K = 80 (3-channel stems: K = 27, 75): deeper patch GEMMs measured even to
# 13% slower in the convs (ResNet's 7x7 stem, K = 147), the patches, just written by im2col,
# not all in L2 when the tiles read them again for every block of rows, where BLAS packs them
# once. With AVX-512 tiles (a Zen 5 core, against OpenBLAS 0.3.30, whose kernels there are its
# AVX2 ones): the tiles everywhere from 16 columns, at any depth (128x576x16: 205 against 104
# GFLOP/s; 256x256x196: 251 against 129; 512x4608x100: 159 against 119); below 16 the
# transposed tiles (conv_packed) or BLAS.
# Whether the tiles are AVX-512's (wider than BLAS's kernels, see above).
WIDE_TILES = VECTOR_BYTES == 64
if WIDE_TILES:
    MAX_DEPTH = PATCH_MAX_DEPTH = 1 << 20
    MIN_COLUMNS = 16
else:
    MAX_DEPTH, PATCH_MAX_DEPTH = 1024, 80
    MIN_COLUMNS = 256
# 1x1 convs with fewer positions than this (and deep enough: cpu_conv_packed) take the
# transposed tiles. AVX-512, K >= 256: 49 positions 182-211 GFLOP/s there against 152-182 on
# the tiles; 64 even.
TRANSPOSED_COLUMNS = 64 if WIDE_TILES else MIN_COLUMNS
# Bytes of a's rows per chunk of packed_gemm (rows in chunks of at least PACKED_MIN_CHUNK).
PACKED_CHUNK_BYTES = 192 << 10
PACKED_MIN_CHUNK = 64
# Bytes of output per column tile where an epilogue follows each tile (fused_source).
EPILOGUE_TILE_BYTES = 256 << 10


def _fused_multiply_add() -> bool:
    """Whether the CPU Numba compiles for has vector fused multiply-add (x86 FMA3, or any
    aarch64): without it LLVM computes ``llvm.fma`` one element at a time through libm, and
    BLAS is the faster."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    return cpu_tile_ir.target_has("fma")


# Read when a conv or GEMM step is compiled (False: BLAS for every product; for A/B runs, on
# CPUs without vector fused multiply-add, and where the tiles failed to compile).
ENABLED = _fused_multiply_add() and cpu_tile_ir.FAILED is None
if cpu_tile_ir.FAILED is not None:
    warnings.warn(
        f"eqsat: the register tiles did not compile ({cpu_tile_ir.FAILED}); "
        "every product takes BLAS",
        RuntimeWarning,
        stacklevel=2,
    )


@njit(**{**_JIT, "inline": "always"})
def suits(k, n, depth):  # type: ignore[no-untyped-def]
    """Whether c = a @ b with a (M, k) and b (k, n) takes the tiles rather than BLAS, for
    products up to ``depth`` deep (MAX_DEPTH, or PATCH_MAX_DEPTH for im2col's patches)."""
    return k <= depth and n >= MIN_COLUMNS


@njit(**_JIT)
def _gemm(a, b, c, depth):  # type: ignore[no-untyped-def]
    if suits(a.shape[1], b.shape[1], depth):
        tiled_gemm(a, b, c)
    else:
        cpu_blas.gemm(a, b, c)


@njit(**_JIT)
def conv_gemm(a, b, c):  # type: ignore[no-untyped-def]
    """c = a @ b (rows contiguous) for a 1x1 conv: the tiles where they are the faster, else
    BLAS's GEMM (:func:`eqsat.lowering.cpu_blas.gemm`; only where ``cpu_blas.AVAILABLE``)."""
    _gemm(a, b, c, MAX_DEPTH)


@njit(**_JIT)
def patch_gemm(a, b, c):  # type: ignore[no-untyped-def]
    """:func:`conv_gemm` for im2col's patches."""
    _gemm(a, b, c, PATCH_MAX_DEPTH)


@njit(**_JIT)
def grouped_wide_gemm(phases, cols, filters, dest, r0, r1, taps, tiles):  # type: ignore[no-untyped-def]
    """dest (G*MG, n) = each group's filters (G, MG, KG) @ that group's patches of output rows
    r0 <= oh < r1 on the phase planes' width (``taps`` = (KH, KW, DH, DW); see
    :func:`~eqsat.lowering.cpu_conv_kernels.im2col_wide`): a block of a grouped conv.

    Each group's patches are gathered into ``cols`` (at least KG*n elements) right before its
    product, which reads them from cache, where all groups' patches at once (a numpy matmul of
    stacked products) came back from memory: RegNet's 16-channel groups ran 10-40% faster. The
    products take the tiles (``tiles``: where :data:`ENABLED`) up to MAX_DEPTH deep whatever
    their width (16 filters on 7x7 planes: as fast as BLAS; on 14x14: 1.2-2.5x), else BLAS.
    Convs off the planes' width gained nothing this way (a 1-D conv of 8 groups, 19 taps, on 49
    positions: its products dominate), and keep numpy's stacked products."""
    g, mg, kg = filters.shape
    cg = phases.shape[0] // g
    n = (r1 - r0) * phases.shape[4]
    kh, kw, dh, dw = taps
    patches = cols[: kg * n].reshape(kg, n)
    for gi in range(g):
        im2col_wide(phases[gi * cg : (gi + 1) * cg], patches, r0, r1, kh, kw, dh, dw)
        out = dest[gi * mg : (gi + 1) * mg]
        if tiles and kg <= MAX_DEPTH:
            tiled_gemm(filters[gi], patches, out)
        else:
            cpu_blas.gemm(filters[gi], patches, out)


def conv_matmul(dtype: np.dtype, patches: bool) -> Any:
    """``gemm(a, b, c)``: c = a @ b for a conv's 2-D blocks (rows contiguous) of ``dtype``, for
    Python callers: :func:`conv_gemm` (:func:`patch_gemm` for ``patches``) where numpy's BLAS
    is callable from Numba, else the tiles or ``np.matmul``."""
    if not ENABLED or np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        return lambda a, b, c: np.matmul(a, b, out=c)
    if cpu_blas.AVAILABLE:
        return patch_gemm if patches else conv_gemm
    depth = PATCH_MAX_DEPTH if patches else MAX_DEPTH

    def numpy_conv_gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        if suits(a.shape[1], b.shape[1], depth):
            tiled_gemm(a, b, c)
        else:
            np.matmul(a, b, out=c)

    return numpy_conv_gemm


def lane_gemm_import() -> str:
    """The import that gives generated conv lanes their ``gemm(a, b, c)`` (patches and grouped
    convs; one group's GEMM and epilogue take the module's ``gemm_epilogue``)."""
    if ENABLED:
        return "from eqsat.lowering.cpu_microkernel import patch_gemm as gemm"
    return "from eqsat.lowering.cpu_blas import gemm"


def fused_source(args: str) -> list[str]:
    """Generated source of ``gemm_epilogue(w, b, out, c0, c1, depth, bias<args>)`` for an
    epilogue module whose ``epilogue(out, c0, c1, bias<args>)`` is defined: out[:, c0:c1] =
    the epilogue of w @ b, each column tile's epilogue right after its GEMM, while the tile is
    in cache (a 1x1 conv's output written by the GEMM and then read back by the epilogue from
    memory cost as much as the GEMM on MobileNet's 112x112 planes). Products the tiles do not
    suit (see :func:`suits` for ``depth``) take BLAS and then the epilogue."""
    return [
        "",
        "",
        f"# tiled GEMM {_SOURCE_HASH}",
        "from eqsat.lowering.cpu_blas import gemm as fused_blas_gemm",
        "from eqsat.lowering.cpu_microkernel import column_tile, suits, tiled_columns",
        "from eqsat.lowering.cpu_microkernel import EPILOGUE_TILE_BYTES",
        "",
        "",
        "@njit(cache=True, error_model='numpy', nogil=True)",
        f"def gemm_epilogue(w, b, out, c0, c1, depth, bias{args}):",
        "    m, k = w.shape",
        "    n = c1 - c0",
        "    dest = out[:, c0:c1]",
        "    contiguous = w.strides[1] == b.strides[1] == out.strides[1] == w.itemsize",
        "    if not (suits(k, n, depth) and contiguous):",
        "        fused_blas_gemm(w, b, dest)",
        f"        epilogue(out, c0, c1, bias{args})",
        "        return",
        "    columns = column_tile(m, k, b.itemsize, EPILOGUE_TILE_BYTES)",
        "    for q0 in range(0, n, columns):",
        "        q1 = min(q0 + columns, n)",
        "        tiled_columns(w, b, dest, q0, q1)",
        f"        epilogue(out, c0 + q0, c0 + q1, bias{args})",
    ]


@njit(**_JIT)
def batched_gemm(a, b, c):  # type: ignore[no-untyped-def]
    """c[i] = a[i] @ b[i] for every i (3-D arrays whose rows are contiguous), each product on
    the tiles: a Winograd conv's 36 products of transformed filters by transformed tiles."""
    for i in range(a.shape[0]):
        tiled_gemm(a[i], b[i], c[i])


# Winograd's 36 products (transformed filters (M, C) by transformed tiles (C, n)) take the tiles
# from this many tiles (columns) on, or with M or C from WINOGRAD_WIDE on. Against numpy's matmul
# over the planes (OpenBLAS), one thread: 64 channels on 56-64 tiles 1.1-1.9x faster, 128 on 64
# 1.1-1.3x; on 25-49 tiles of 32-192 channels 0.6-0.8x; but OpenBLAS ran products of 256 or more
# channels at 5-14 GFLOP/s, the tiles at 12-28 (ResNet's 256- and 512-channel convs on 14x14
# and 7x7: 16 tiles, 3.3x faster).
# With AVX-512 tiles, from MIN_COLUMNS tiles on: chains of six 3x3 convs (Zen 5, one thread),
# Winograd's products on OpenBLAS against the tiles, 128 channels on 20x20 (25 tiles) 3.3 ms
# against 1.85, 192 on 13x13 5.4 against 2.3, 128 on 28x28 5.4 against 3.5.
WINOGRAD_MIN_TILES = MIN_COLUMNS if WIDE_TILES else 56
WINOGRAD_WIDE = 256


def winograd_matmul(dtype: np.dtype, filters: int, channels: int) -> Any:
    """``matmul(u, v, out)`` for a Winograd conv's 36 products (u (36, M, C), v (36, C, n)):
    :func:`batched_gemm` where the tiles are the faster (see WINOGRAD_MIN_TILES), else
    ``np.matmul``."""
    floats = (np.dtype(np.float32), np.dtype(np.float64))
    if not ENABLED or np.dtype(dtype) not in floats or channels > MAX_DEPTH:
        return lambda u, v, out: np.matmul(u, v, out=out)
    least = 0 if max(filters, channels) >= WINOGRAD_WIDE else WINOGRAD_MIN_TILES

    def matmul(u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
        if v.shape[2] >= least:
            batched_gemm(u, v, out)
        else:
            np.matmul(u, v, out=out)

    return matmul
