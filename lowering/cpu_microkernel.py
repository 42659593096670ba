"""Register-tiled GEMMs: c = a @ b for a conv's filters a (M, K) by its input planes (a 1x1 conv),
im2col's patches or Winograd's transformed tiles b (K, P) (:func:`tiled_gemm`, the conv epilogue
modules' generated ``gemm_epilogue``, :func:`batched_gemm`), and for rows a by constant weights
packed once into panels (:func:`pack_panels`, :func:`packed_gemm`: a transformer's linear layers).

BLAS packs both operands on every call: for a 1x1 conv that is a copy of the whole input per
product, and with K of 16-100 (MobileNets' pointwise convs) the copy and the short inner loops
cost more than the multiply-adds. Here nothing is packed. A tile of ``ROWS`` rows of a by
``VECTORS`` SIMD vectors of b's columns keeps its ``ROWS x VECTORS`` sums in registers: for each
k it loads the vectors of b's row k (contiguous, since b is row-major), broadcasts the ``ROWS``
filter values a[m, k], and issues one fused multiply-add per sum. Columns come in tiles whose
K x columns of b stay in L2 while every block of rows of a reuses them.

The tile is written in LLVM IR (an :func:`numba.extending.intrinsic`) because nothing in Numba's
Python keeps twelve vector sums in registers across a loop: the vectorizer vectorizes only the
innermost loop. Partial tiles (the last rows, the last columns) are the same IR with fewer rows
or vectors, and a masked load/store for the last vector's lanes.

Sums are accumulated in k order, one fused multiply-add per term: the result is within the
usual GEMM rounding of BLAS's (the tests compare both against float64 products). Where the CPU
lacks vector fused multiply-add, :data:`ENABLED` is False and every product stays with BLAS.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from eqsat.lowering import cpu_blas
from llvmlite import binding as llvm
from llvmlite import ir
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

# Rows of a and SIMD vectors (32 bytes: 8 float32 or 4 float64) of b per tile: 12 sums, 3
# vectors of b and a broadcast filter value fill 16 AVX2 registers.
ROWS, VECTORS = 4, 3
VECTOR_BYTES = 32
# Bytes of b per column tile (K x columns), read from L2 by every block of rows of a.
COLUMN_TILE_BYTES = 96 << 10

_JIT = {"cache": True, "error_model": "numpy", "nogil": True}
# Generated modules that call these kernels carry this hash, so that they recompile (rather
# than load stale machine code from Numba's cache) when this module or the BLAS call changes.
_SOURCE_HASH = hashlib.sha256(
    Path(__file__).read_bytes() + Path(cpu_blas.__file__).read_bytes()
).hexdigest()[:16]


def _lanes(dtype: types.Type) -> int:
    return VECTOR_BYTES // (4 if dtype == types.float32 else 8)


def _tile(rows: int, vectors: int, masked: bool):  # type: ignore[no-untyped-def]
    """An intrinsic ``tile(a, b, c, m0, p0, k, last, shift)``: c[m0 : m0+rows, p0 : p0+width]
    = a[m0 : m0+rows, :k] @ b[:k, p0-shift : p0-shift+width], width = ``vectors`` SIMD
    vectors, the last of them only its first ``last`` lanes when ``masked``; all three with
    contiguous rows. (``shift``: b is a panel of packed weights starting at c's column shift.)"""

    @intrinsic
    def tile(typingctx, a, b, c, m0, p0, k, last, shift):  # type: ignore[no-untyped-def]
        arrays = (a, b, c)
        if not all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays):
            return None
        if a.dtype not in (types.float32, types.float64) or not a.dtype == b.dtype == c.dtype:
            return None
        signature = types.void(a, b, c, *([types.int64] * 5))

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            ir_ = _TileIR(context, builder, sig, args)
            m0_, p0_, k_, last_, shift_ = args[3:]
            mask = ir_.mask(last_) if masked else None
            sums = [
                [cgutils.alloca_once_value(builder, ir_.zero) for _ in range(vectors)]
                for _ in range(rows)
            ]
            a_rows = [ir_.element(0, ir_.plus(m0_, r), None) for r in range(rows)]
            b_column = builder.sub(p0_, shift_)
            with cgutils.for_range(builder, k_) as loop:
                kk = loop.index
                b_row = ir_.element(1, kk, b_column)
                b_vectors = [
                    ir_.load(ir_.vector_at(b_row, j), mask if j == vectors - 1 else None)
                    for j in range(vectors)
                ]
                for r in range(rows):
                    broadcast = ir_.broadcast(builder.load(builder.gep(a_rows[r], [kk])))
                    for j in range(vectors):
                        total = builder.call(
                            ir_.fma, [broadcast, b_vectors[j], builder.load(sums[r][j])]
                        )
                        builder.store(total, sums[r][j])
            for r in range(rows):
                for j in range(vectors):
                    c_row = ir_.element(2, ir_.plus(m0_, r), p0_)
                    total = builder.load(sums[r][j])
                    ir_.store(total, ir_.vector_at(c_row, j), mask if j == vectors - 1 else None)
            return context.get_dummy_value()

        return signature, codegen

    return tile


class _TileIR:
    """LLVM IR pieces of a tile: the arrays' data and row strides (in elements), SIMD vectors
    of the dtype (32 bytes), loads and stores (masked to the first ``last`` lanes)."""

    def __init__(self, context, builder, sig, args):  # type: ignore[no-untyped-def]
        self.builder = builder
        real = context.get_value_type(sig.args[0].dtype)
        self.lanes = _lanes(sig.args[0].dtype)
        self.vec = vec = ir.VectorType(real, self.lanes)
        self.i64, self.i32 = ir.IntType(64), ir.IntType(32)
        item = ir.Constant(self.i64, context.get_abi_sizeof(real))
        views = [
            context.make_array(t)(context, builder, v)
            for t, v in zip(sig.args[:3], args[:3], strict=True)
        ]
        self.data = [v.data for v in views]
        self.row_stride = [
            builder.sdiv(cgutils.unpack_tuple(builder, v.strides, 2)[0], item) for v in views
        ]
        name = f"v{self.lanes}f{8 * context.get_abi_sizeof(real)}"
        module = builder.module
        bits = ir.VectorType(ir.IntType(1), self.lanes)
        self.fma = cgutils.get_or_insert_function(
            module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.{name}"
        )
        self.masked_load = cgutils.get_or_insert_function(
            module, ir.FunctionType(vec, [vec.as_pointer(), self.i32, bits, vec]),
            f"llvm.masked.load.{name}.p0{name}",
        )  # fmt: skip
        self.masked_store = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), self.i32, bits]),
            f"llvm.masked.store.{name}.p0{name}",
        )  # fmt: skip
        self.zero = ir.Constant(vec, [0.0] * self.lanes)

    def plus(self, value, constant: int):  # type: ignore[no-untyped-def]
        return self.builder.add(value, ir.Constant(self.i64, constant))

    def element(self, array: int, row, column):  # type: ignore[no-untyped-def]
        """Pointer to [row, column] of array 0 (a), 1 (b) or 2 (c); column None: 0."""
        offset = self.builder.mul(row, self.row_stride[array])
        if column is not None:
            offset = self.builder.add(offset, column)
        return self.builder.gep(self.data[array], [offset])

    def vector_at(self, start, j: int):  # type: ignore[no-untyped-def]
        ptr = self.builder.gep(start, [ir.Constant(self.i64, self.lanes * j)])
        return self.builder.bitcast(ptr, self.vec.as_pointer())

    def splat(self, value, vector_type):  # type: ignore[no-untyped-def]
        undefined = ir.Constant(vector_type, ir.Undefined)
        one = self.builder.insert_element(undefined, value, ir.Constant(self.i32, 0))
        zeros = ir.Constant(ir.VectorType(self.i32, self.lanes), [0] * self.lanes)
        return self.builder.shuffle_vector(one, undefined, zeros)

    def broadcast(self, value):  # type: ignore[no-untyped-def]
        return self.splat(value, self.vec)

    def mask(self, last):  # type: ignore[no-untyped-def]
        """Lanes below ``last``."""
        index = ir.Constant(ir.VectorType(self.i64, self.lanes), list(range(self.lanes)))
        limit = self.splat(last, ir.VectorType(self.i64, self.lanes))
        return self.builder.icmp_signed("<", index, limit)

    def load(self, ptr, mask):  # type: ignore[no-untyped-def]
        if mask is None:
            return self.builder.load(ptr, align=4)
        align = ir.Constant(self.i32, 4)
        return self.builder.call(self.masked_load, [ptr, align, mask, self.zero])

    def store(self, value, ptr, mask) -> None:  # type: ignore[no-untyped-def]
        if mask is None:
            self.builder.store(value, ptr, align=4)
        else:
            self.builder.call(self.masked_store, [value, ptr, ir.Constant(self.i32, 4), mask])


def _row_block(rows: int):  # type: ignore[no-untyped-def]
    """``block(a, b, c, m0, q0, q1, k, shift)``: rows m0 .. m0+rows of the product, columns
    q0 .. q1 (of b: from q0 - shift), by tiles of ``rows`` rows (:func:`_tile`): whole tiles of
    VECTORS vectors, then one partial tile."""
    whole = _tile(rows, VECTORS, False)
    one, two = _tile(rows, 1, False), _tile(rows, 2, False)
    one_masked, two_masked, three_masked = (_tile(rows, v, True) for v in (1, 2, 3))

    @njit(**_JIT)
    def block(a, b, c, m0, q0, q1, k, shift):  # type: ignore[no-untyped-def]
        lanes = VECTOR_BYTES // b.itemsize
        width = VECTORS * lanes
        p = q0
        while p + width <= q1:
            whole(a, b, c, m0, p, k, 0, shift)
            p += width
        vectors, last = divmod(q1 - p, lanes)
        if last == 0:
            if vectors == 1:
                one(a, b, c, m0, p, k, 0, shift)
            elif vectors == 2:
                two(a, b, c, m0, p, k, 0, shift)
        elif vectors == 0:
            one_masked(a, b, c, m0, p, k, last, shift)
        elif vectors == 1:
            two_masked(a, b, c, m0, p, k, last, shift)
        else:
            three_masked(a, b, c, m0, p, k, last, shift)

    return block


_block1, _block2, _block3, _block4 = (_row_block(r) for r in (1, 2, 3, 4))


@njit(**_JIT)
def _tile_rows(a, b, c, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
    """Rows r0 <= m < r1 and columns q0 <= p < q1 of c = a @ b (b's columns from q0 - shift),
    by blocks of ROWS rows of a (the last block smaller). Callers take :func:`_native_rows`."""
    k = a.shape[1]
    m0 = r0
    while m0 + ROWS <= r1:
        _block4(a, b, c, m0, q0, q1, k, shift)
        m0 += ROWS
    left = r1 - m0
    if left == 3:
        _block3(a, b, c, m0, q0, q1, k, shift)
    elif left == 2:
        _block2(a, b, c, m0, q0, q1, k, shift)
    elif left == 1:
        _block1(a, b, c, m0, q0, q1, k, shift)


@intrinsic
def _view(typingctx, pointer, rows, columns, row_stride):  # type: ignore[no-untyped-def]
    """The 2-D array (rows, columns) at ``pointer`` whose rows are ``row_stride`` elements
    apart (any sign) and contiguous: numba.carray with a row stride."""
    if not isinstance(pointer, types.CPointer):
        return None
    array_type = types.Array(pointer.dtype, 2, "A")
    signature = array_type(pointer, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        pointer_, rows_, columns_, stride_ = args
        view = context.make_array(array_type)(context, builder)
        item = ir.Constant(ir.IntType(64), context.get_abi_sizeof(pointer_.type.pointee))
        populate_array(view, data=pointer_, shape=[rows_, columns_],
                       strides=[builder.mul(stride_, item), item], itemsize=item, meminfo=None)  # fmt: skip
        return view._getvalue()

    return signature, codegen


def _native_name(dtype: types.Type) -> str:
    return f"eqsat_tile_rows_{dtype}_{_SOURCE_HASH}"


def _compile_native(dtype: types.Type) -> int:
    """Address of the C-callable ``tile_rows`` of ``dtype`` (compiled once per machine, then
    loaded from Numba's cache): :func:`_tile_rows` on pointers and row strides."""
    pointer = types.CPointer(dtype)
    signature = types.void(pointer, pointer, pointer, *([types.int64] * 9))

    def tile_rows(a, b, c, k, lda, ldb, ldc, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
        _tile_rows(_view(a, r1, k, lda), _view(b, k, q1 - shift, ldb), _view(c, r1, q1, ldc),
                   r0, r1, q0, q1, shift)  # fmt: skip

    tile_rows.__qualname__ = tile_rows.__name__ = f"tile_rows_{dtype}"
    return cfunc(signature, cache=True, error_model="numpy")(tile_rows).address


# Every caller reaches the tiles through these C symbols. Linked into each caller instead, the
# tiles' 24 variants were compiled again into every generated conv module (1-2 s each, the
# whole of MobileNetV2's first run on one thread with an empty cache). Registered even where
# ENABLED is off, so that the kernels below stay callable (and tested) everywhere.
for _dtype in (types.float32, types.float64):
    llvm.add_symbol(_native_name(_dtype), _compile_native(_dtype))


@intrinsic
def _native_rows(typingctx, a, b, c, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
    """:func:`_tile_rows` through its C symbol (a, b and c with contiguous rows)."""
    arrays = (a, b, c)
    if not all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays):
        return None
    if a.dtype not in (types.float32, types.float64) or not a.dtype == b.dtype == c.dtype:
        return None
    signature = types.void(a, b, c, *([types.int64] * 5))

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        i64 = ir.IntType(64)
        real = context.get_value_type(a.dtype)
        item = ir.Constant(i64, context.get_abi_sizeof(real))
        views = [
            context.make_array(t)(context, builder, v)
            for t, v in zip(sig.args[:3], args[:3], strict=True)
        ]
        strides = [
            builder.sdiv(cgutils.unpack_tuple(builder, v.strides, 2)[0], item) for v in views
        ]
        k = cgutils.unpack_tuple(builder, views[0].shape, 2)[1]
        fnty = ir.FunctionType(ir.VoidType(), [real.as_pointer()] * 3 + [i64] * 9)
        fn = cgutils.get_or_insert_function(builder.module, fnty, _native_name(a.dtype))
        builder.call(fn, [v.data for v in views] + [k, *strides, *args[3:]])
        return context.get_dummy_value()

    return signature, codegen


@njit(**_JIT)
def tiled_columns(a, b, c, q0, q1):  # type: ignore[no-untyped-def]
    """Columns q0 <= p < q1 of c = a @ b."""
    _native_rows(a, b, c, 0, a.shape[0], q0, q1, 0)


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
    return max(PACKED_MIN_CHUNK, PACKED_CHUNK_BYTES // (k * size) // ROWS * ROWS)


@njit(**_JIT)
def packed_panel(a, panels, c, r0, r1, q):  # type: ignore[no-untyped-def]
    """Rows r0 <= m < r1 of panel q's columns of c = a @ weights (:func:`packed_gemm`)."""
    width = panels.shape[2]
    p0 = q * width
    _native_rows(a, panels[q], c, r0, r1, p0, min(p0 + width, c.shape[1]), p0)


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


# Where the tiles beat BLAS (conv shapes, one thread, interleaved with OpenBLAS's sgemm): K up
# to ~1000 and at least a few tiles of columns. Deeper products spill a block's filter rows
# from L1; narrow ones are mostly partial tiles.
MAX_DEPTH = 1024
MIN_COLUMNS = 256
# ... and for im2col's patches only up to this K (3-channel stems: K = 27, 75). Deeper patch
# GEMMs measured even to 13% slower in the convs (ResNet's 7x7 stem, K = 147): the patches,
# just written by im2col, are not all in L2 when the tiles read them again for every block of
# rows, where BLAS packs them once.
PATCH_MAX_DEPTH = 80
# Bytes of a's rows per chunk of packed_gemm (rows in chunks of at least PACKED_MIN_CHUNK).
PACKED_CHUNK_BYTES = 192 << 10
PACKED_MIN_CHUNK = 64
# Bytes of output per column tile where an epilogue follows each tile (fused_source).
EPILOGUE_TILE_BYTES = 256 << 10


def _fused_multiply_add() -> bool:
    """Whether this CPU has vector fused multiply-add (x86 FMA3, or any aarch64): without it
    LLVM computes ``llvm.fma`` one element at a time through libm, and BLAS is the faster."""
    import platform

    from llvmlite import binding

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        return bool(binding.get_host_cpu_features().get("fma", False))
    except RuntimeError:  # features unknown: keep BLAS
        return False


# Read when a conv or GEMM step is compiled (False: BLAS for every product; for A/B runs, and
# on CPUs without vector fused multiply-add).
ENABLED = _fused_multiply_add()


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
WINOGRAD_MIN_TILES = 56
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
