"""The register tile of :mod:`eqsat.lowering.cpu_microkernel`'s GEMMs, in LLVM IR, and the C
symbols through which every caller reaches it.

A tile of ``ROWS`` rows of a by ``VECTORS`` SIMD vectors of b's columns keeps its ``ROWS x
VECTORS`` sums in registers: for each k it loads the vectors of b's row k, broadcasts the
``ROWS`` values a[m, k], and issues one fused multiply-add per sum. It is an
:func:`numba.extending.intrinsic` because nothing in Numba's Python keeps twelve vector sums in
registers across a loop (the vectorizer vectorizes only the innermost loop). Partial tiles (the
last rows, the last columns) are the same IR with fewer rows or vectors and a masked last vector.

Two drivers run the tiles over a block of rows and columns:

- :func:`native_rows`: a, b and c with contiguous rows (c's columns are the vector lanes);
- :func:`native_rows_transposed`: c^T's layout, for products whose columns are few (a 1x1 conv
  on a 7x7 plane: 49 positions, two whole tiles of 24 and one of a single column): a is any
  strided view (the tile broadcasts its values one by one), b a panel of packed weights padded
  to whole tiles, and c a view with contiguous columns (c = out.T: each tile stores its ROWS sums
  per column as one short vector into out's rows).

Both are compiled once per machine into C-callable functions (Numba's cache keeps them) and
registered as LLVM symbols: callers declare and call them. Linked into each caller instead, the
24 tile variants were compiled again into every generated conv module (1-2 s each: the whole of
MobileNetV2's first run on one thread with an empty cache).
"""

from __future__ import annotations

from typing import Any

from llvmlite import binding as llvm
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array


def target_has(feature: str) -> bool:
    """Whether Numba compiles for a CPU with ``feature`` (an LLVM feature name such as "fma"):
    its NUMBA_CPU_FEATURES where set, else the host's features (False where LLVM cannot tell)."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return f"+{feature}" in config.CPU_FEATURES.split(",")
    try:
        return bool(llvm.get_host_cpu_features().get(feature, False))
    except RuntimeError:
        return False


# Rows of a and SIMD vectors of b per tile. AVX2 (32 bytes: 8 float32 or 4 float64): 12 sums,
# 3 vectors of b and a broadcast value fill its 16 registers. AVX-512 (64 bytes) has 32: 24 sums.
# GEMMs of conv shapes on a Zen 5 core (M 16-256, K 24-2304, 100-25600 columns), geo-mean
# GFLOP/s by tile: 4x3 193, 8x3 255, 6x4 253, 14x2 241.
VECTOR_BYTES = 64 if target_has("avx512f") else 32
ROWS, VECTORS = (8, 3) if VECTOR_BYTES == 64 else (4, 3)
# The transposed tiles (a strided, each column's sums stored as one short vector) keep 4 rows:
# with 8 of 64-byte vectors they ran at 95-120 GFLOP/s on a Zen 5 core, with 4 at up to 180.
TRANSPOSED_ROWS = 4

_JIT = {"cache": True, "error_model": "numpy", "nogil": True}
# The symbols' calling convention, in their names. Callers compiled into Numba's cache keep the
# name they were compiled with while only this file changes (Numba's cache tracks a function's
# own file, not its callees'): the names stay, the code behind them is this file's. Changing
# the convention means a new number here and in cpu_microkernel (which checks it), so that its
# cached callers recompile rather than call a symbol no longer registered.
ABI = 1


def _float_matrices(a, b, c) -> bool:  # type: ignore[no-untyped-def]
    arrays = (a, b, c)
    return (
        all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays)
        and a.dtype in (types.float32, types.float64)
        and a.dtype == b.dtype == c.dtype
    )


def _sums(ir_, position, rows: int, vectors: int, mask, strided: bool, taps=None) -> list:  # type: ignore[no-untyped-def]
    """The tile's ``rows`` x ``vectors`` sums over k (loaded into values): for each k the
    vectors of b's row k (the last one masked by ``mask``, if any), ``rows`` broadcast values
    of a's column k (a's columns ``strided``: any column stride) and one fused multiply-add
    per sum. ``position`` is (m0, p0, k, shift).

    ``taps`` (a pointer to T offsets, and T): b's rows are read T times, each pass at its tap's
    offset, while a's columns go on (k = tap * K + row): a conv's patches of T taps read in
    place from its (padded) input planes, the planes being b's rows (see
    :func:`native_rows_taps`)."""
    builder = ir_.builder
    m0_, p0_, k_, shift_ = position
    sums = [
        [cgutils.alloca_once_value(builder, ir_.zero) for _ in range(vectors)] for _ in range(rows)
    ]
    a_rows = [ir_.element(0, ir_.plus(m0_, r), None) for r in range(rows)]
    b_column = builder.sub(p0_, shift_)

    def accumulate(kk, b_row) -> None:  # type: ignore[no-untyped-def]
        b_vectors = [
            ir_.load(ir_.vector_at(b_row, j), mask if j == vectors - 1 else None)
            for j in range(vectors)
        ]
        for r in range(rows):
            broadcast = ir_.broadcast(builder.load(builder.gep(a_rows[r], [kk])))
            for j in range(vectors):
                total = builder.call(ir_.fma, [broadcast, b_vectors[j], builder.load(sums[r][j])])
                builder.store(total, sums[r][j])

    if taps is None:
        with cgutils.for_range(builder, k_) as loop:
            kk = builder.mul(loop.index, ir_.column_stride[0]) if strided else loop.index
            accumulate(kk, ir_.element(1, loop.index, b_column))
    else:
        offsets, count = taps
        with cgutils.for_range(builder, count) as tap:
            column = builder.add(builder.load(builder.gep(offsets, [tap.index])), b_column)
            first = builder.mul(tap.index, k_)
            with cgutils.for_range(builder, k_) as loop:
                accumulate(builder.add(first, loop.index), ir_.element(1, loop.index, column))
    return [[builder.load(sums[r][j]) for j in range(vectors)] for r in range(rows)]


def _intrinsic(codegen_of):  # type: ignore[no-untyped-def]
    """An intrinsic ``tile(a, b, c, m0, p0, k, last, shift)`` on 2-D float arrays of one dtype
    whose IR ``codegen_of(ir_, args)`` emits (``ir_`` a :class:`_TileIR`)."""

    @intrinsic
    def tile(typingctx, a, b, c, m0, p0, k, last, shift):  # type: ignore[no-untyped-def]
        if not _float_matrices(a, b, c):
            return None
        signature = types.void(a, b, c, *([types.int64] * 5))

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            codegen_of(_TileIR(context, builder, sig, args), args)
            return context.get_dummy_value()

        return signature, codegen

    return tile


def _tile(rows: int, vectors: int, masked: bool):  # type: ignore[no-untyped-def]
    """An intrinsic ``tile(a, b, c, m0, p0, k, last, shift)``: c[m0 : m0+rows, p0 : p0+width]
    = a[m0 : m0+rows, :k] @ b[:k, p0-shift : p0-shift+width], width = ``vectors`` SIMD
    vectors, the last of them only its first ``last`` lanes when ``masked``; all three with
    contiguous rows. (``shift``: b is a panel of packed weights starting at c's column shift.)"""

    def codegen(ir_, args) -> None:  # type: ignore[no-untyped-def]
        m0_, p0_, k_, last_, shift_ = args[3:]
        mask = ir_.mask(last_) if masked else None
        totals = _sums(ir_, (m0_, p0_, k_, shift_), rows, vectors, mask, strided=False)
        _store_rows(ir_, totals, m0_, p0_, mask)

    return _intrinsic(codegen)


def _store_rows(ir_, totals, m0_, p0_, mask) -> None:  # type: ignore[no-untyped-def]
    """c[m0 + r, p0 + vector j] = totals[r][j], the last vector masked by ``mask`` (if any)."""
    for r, row in enumerate(totals):
        c_row = ir_.element(2, ir_.plus(m0_, r), p0_)
        for j, total in enumerate(row):
            ir_.store(total, ir_.vector_at(c_row, j), mask if j == len(row) - 1 else None)


def _tile_taps(rows: int, vectors: int, masked: bool):  # type: ignore[no-untyped-def]
    """An intrinsic ``tile(a, b, c, offsets, m0, p0, k, last, shift)``: :func:`_tile` of a by
    the patches of ``len(offsets)`` taps read in place from b (see :func:`_sums`): a (M, T*k),
    b's rows the k planes, offsets (T,) int64 in elements."""

    @intrinsic
    def tile(typingctx, a, b, c, offsets, m0, p0, k, last, shift):  # type: ignore[no-untyped-def]
        if not (_float_matrices(a, b, c) and _offsets(offsets)):
            return None
        signature = types.void(a, b, c, offsets, *([types.int64] * 5))

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            ir_ = _TileIR(context, builder, sig, args)
            m0_, p0_, k_, last_, shift_ = args[4:]
            table = context.make_array(sig.args[3])(context, builder, args[3])
            count = cgutils.unpack_tuple(builder, table.shape, 1)[0]
            mask = ir_.mask(last_) if masked else None
            position = (m0_, p0_, k_, shift_)
            totals = _sums(ir_, position, rows, vectors, mask, False, (table.data, count))
            _store_rows(ir_, totals, m0_, p0_, mask)
            return context.get_dummy_value()

        return signature, codegen

    return tile


def _offsets(offsets) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(offsets, types.Array) and offsets.ndim == 1 and offsets.dtype == types.int64


def _tile_transposed(rows: int):  # type: ignore[no-untyped-def]
    """An intrinsic ``tile(a, b, c, m0, p0, k, last, shift)``: :func:`_tile` of VECTORS vectors
    (b a packed panel, padded: every lane can be loaded) storing only c's first ``last`` columns
    of the tile; a with any strides, c with contiguous columns (c[m, p] and c[m + 1, p] adjacent:
    the ``rows`` sums of a column are stored as one vector)."""

    def codegen(ir_, args) -> None:  # type: ignore[no-untyped-def]
        builder = ir_.builder
        m0_, p0_, k_, last_, shift_ = args[3:]
        totals = _sums(ir_, (m0_, p0_, k_, shift_), rows, VECTORS, None, strided=True)
        column_type = ir.VectorType(ir_.real, rows) if rows > 1 else ir_.real
        top = ir_.element(2, m0_, None)
        for j in range(VECTORS):
            for lane in range(ir_.lanes):
                column = j * ir_.lanes + lane
                inside = builder.icmp_signed("<", ir.Constant(ir_.i64, column), last_)
                with builder.if_then(inside, likely=True):
                    index = ir.Constant(ir_.i32, lane)
                    values = [builder.extract_element(totals[r][j], index) for r in range(rows)]
                    value = values[0]
                    if rows > 1:
                        value = ir.Constant(column_type, ir.Undefined)
                        for r, v in enumerate(values):
                            value = builder.insert_element(value, v, ir.Constant(ir_.i32, r))
                    offset = builder.mul(ir_.plus(p0_, column), ir_.column_stride[2])
                    ptr = builder.bitcast(builder.gep(top, [offset]), column_type.as_pointer())
                    builder.store(value, ptr, align=4)

    return _intrinsic(codegen)


class Vectors:
    """SIMD vectors (``vector_bytes``, by default VECTOR_BYTES) of ``dtype`` in LLVM IR: fused multiply-add, broadcasts, and
    loads and stores masked to the first lanes (:meth:`mask`) where a mask is given. Also the
    base of :mod:`eqsat.lowering.cpu_depthwise_lanes`' IR."""

    def __init__(self, context, builder, dtype, vector_bytes: int = 0):  # type: ignore[no-untyped-def]
        self.builder = builder
        self.real = context.get_value_type(dtype)
        size = context.get_abi_sizeof(self.real)
        self.lanes = (vector_bytes or VECTOR_BYTES) // size
        self.vec = vec = ir.VectorType(self.real, self.lanes)
        self.i64, self.i32 = ir.IntType(64), ir.IntType(32)
        name = f"v{self.lanes}f{8 * size}"
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

    def const(self, value: int):  # type: ignore[no-untyped-def]
        return ir.Constant(self.i64, value)

    def plus(self, value, constant: int):  # type: ignore[no-untyped-def]
        return self.builder.add(value, self.const(constant))

    def at(self, base, offset):  # type: ignore[no-untyped-def]
        """The vector pointer at element ``offset`` of ``base`` (a pointer to reals)."""
        return self.builder.bitcast(self.builder.gep(base, [offset]), self.vec.as_pointer())

    def splat(self, value, vector_type):  # type: ignore[no-untyped-def]
        undefined = ir.Constant(vector_type, ir.Undefined)
        one = self.builder.insert_element(undefined, value, ir.Constant(self.i32, 0))
        zeros = ir.Constant(ir.VectorType(self.i32, self.lanes), [0] * self.lanes)
        return self.builder.shuffle_vector(one, undefined, zeros)

    def broadcast(self, value):  # type: ignore[no-untyped-def]
        return self.splat(value, self.vec)

    def mask(self, count):  # type: ignore[no-untyped-def]
        """Lanes below ``count``."""
        index = ir.Constant(ir.VectorType(self.i64, self.lanes), list(range(self.lanes)))
        limit = self.splat(count, ir.VectorType(self.i64, self.lanes))
        return self.builder.icmp_signed("<", index, limit)

    def load(self, ptr, mask=None):  # type: ignore[no-untyped-def]
        if mask is None:
            return self.builder.load(ptr, align=4)
        align = ir.Constant(self.i32, 4)
        return self.builder.call(self.masked_load, [ptr, align, mask, self.zero])

    def store(self, value, ptr, mask=None) -> None:  # type: ignore[no-untyped-def]
        if mask is None:
            self.builder.store(value, ptr, align=4)
        else:
            self.builder.call(self.masked_store, [value, ptr, ir.Constant(self.i32, 4), mask])


class _TileIR(Vectors):
    """:class:`Vectors` of a tile's dtype, and the tile's arrays a, b and c: their data and
    strides (in elements)."""

    def __init__(self, context, builder, sig, args):  # type: ignore[no-untyped-def]
        super().__init__(context, builder, sig.args[0].dtype)
        item = self.const(context.get_abi_sizeof(self.real))
        views = [
            context.make_array(t)(context, builder, v)
            for t, v in zip(sig.args[:3], args[:3], strict=True)
        ]
        self.data = [v.data for v in views]
        strides = [cgutils.unpack_tuple(builder, v.strides, 2) for v in views]
        self.row_stride = [builder.sdiv(s[0], item) for s in strides]
        self.column_stride = [builder.sdiv(s[1], item) for s in strides]

    def element(self, array: int, row, column):  # type: ignore[no-untyped-def]
        """Pointer to [row, column] of array 0 (a), 1 (b) or 2 (c) (its columns taken as
        contiguous: the column stride is the caller's); column None: 0."""
        offset = self.builder.mul(row, self.row_stride[array])
        if column is not None:
            offset = self.builder.add(offset, column)
        return self.builder.gep(self.data[array], [offset])

    def vector_at(self, start, j: int):  # type: ignore[no-untyped-def]
        return self.at(start, self.const(self.lanes * j))


def _compile(source: str, name: str, tiles: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The njit function ``name`` of ``source``, which calls ``tiles`` (compiled only into the
    cached C entries below, so not cached itself: generated source has no file to key on)."""
    namespace: dict[str, Any] = {"VECTOR_BYTES": VECTOR_BYTES, **tiles}
    exec(compile(source, f"<eqsat tile {name}>", "exec"), namespace)
    return njit(error_model="numpy", nogil=True)(namespace[name])


def _row_block(rows: int, taps: bool = False):  # type: ignore[no-untyped-def]
    """``block(a, b, c, m0, q0, q1, k, shift)``: rows m0 .. m0+rows of the product, columns
    q0 .. q1 (of b: from q0 - shift), by tiles of ``rows`` rows (:func:`_tile`): whole tiles of
    VECTORS vectors, then one partial tile of fewer whole vectors or a masked last one.
    ``taps``: ``block(a, b, c, offsets, ...)`` by :func:`_tile_taps`."""
    make, abc = (_tile_taps, "a, b, c, offsets") if taps else (_tile, "a, b, c")
    tiles = {"whole": make(rows, VECTORS, False)}
    tiles |= {f"plain{v}": make(rows, v, False) for v in range(1, VECTORS)}
    tiles |= {f"masked{v}": make(rows, v, True) for v in range(1, VECTORS + 1)}
    lines = [
        f"def block({abc}, m0, q0, q1, k, shift):",
        "    lanes = VECTOR_BYTES // b.itemsize",
        f"    width = {VECTORS} * lanes",
        "    p = q0",
        "    while p + width <= q1:",
        f"        whole({abc}, m0, p, k, 0, shift)",
        "        p += width",
        "    vectors, last = divmod(q1 - p, lanes)",
    ]
    for v in range(1, VECTORS):
        lines.append(f"    if last == 0 and vectors == {v}:")
        lines.append(f"        plain{v}({abc}, m0, p, k, 0, shift)")
    for v in range(VECTORS):
        lines.append(f"    if last != 0 and vectors == {v}:")
        lines.append(f"        masked{v + 1}({abc}, m0, p, k, last, shift)")
    return _compile("\n".join(lines) + "\n", "block", tiles)


def _rows_driver(blocks: list, taps: bool = False):  # type: ignore[no-untyped-def]
    """``rows(a, b, c, r0, r1, q0, q1, shift)``: rows r0 <= m < r1 and columns q0 <= p < q1 of
    c = a @ b (b's columns from q0 - shift), by ``blocks[-1]`` (as many rows of a as there are
    blocks) and, for the rows left over, ``blocks[left - 1]``. ``taps``: ``rows(a, b, c,
    offsets, ...)``, a's columns T taps of b's rows each."""
    tile_rows = len(blocks)
    tiles = {f"block{r + 1}": block for r, block in enumerate(blocks)}
    abc = "a, b, c, offsets" if taps else "a, b, c"
    lines = [
        f"def rows({abc}, r0, r1, q0, q1, shift):",
        "    k = a.shape[1] // offsets.shape[0]" if taps else "    k = a.shape[1]",
        "    m0 = r0",
        f"    while m0 + {tile_rows} <= r1:",
        f"        block{tile_rows}({abc}, m0, q0, q1, k, shift)",
        f"        m0 += {tile_rows}",
        "    left = r1 - m0",
    ]
    for r in range(1, tile_rows):
        lines.append(f"    if left == {r}:")
        lines.append(f"        block{r}({abc}, m0, q0, q1, k, shift)")
    return _compile("\n".join(lines) + "\n", "rows", tiles)


def _transposed_block(rows: int):  # type: ignore[no-untyped-def]
    tile = _tile_transposed(rows)

    @njit(**_JIT)
    def block(a, b, c, m0, q0, q1, k, shift):  # type: ignore[no-untyped-def]
        width = VECTORS * (VECTOR_BYTES // b.itemsize)
        for p in range(q0, q1, width):
            tile(a, b, c, m0, p, k, min(width, q1 - p), shift)

    return block


# The rows by the plain tiles (callers take native_rows), and by the transposed tiles (see
# _tile_transposed for the layouts; callers take native_rows_transposed). Compiled only into
# the C entries below.
_tile_rows = _rows_driver([_row_block(r) for r in range(1, ROWS + 1)])
_tile_rows_transposed = _rows_driver([_transposed_block(r) for r in range(1, TRANSPOSED_ROWS + 1)])
_tile_rows_taps = _rows_driver([_row_block(r, taps=True) for r in range(1, ROWS + 1)], taps=True)


@intrinsic
def _view(typingctx, pointer, rows, columns, row_stride, column_stride):  # type: ignore[no-untyped-def]
    """The 2-D array (rows, columns) at ``pointer`` with these strides in elements (any
    sign): numba.carray with strides."""
    if not isinstance(pointer, types.CPointer):
        return None
    array_type = types.Array(pointer.dtype, 2, "A")
    signature = array_type(pointer, *([types.int64] * 4))

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        pointer_, rows_, columns_, row_stride_, column_stride_ = args
        view = context.make_array(array_type)(context, builder)
        item = ir.Constant(ir.IntType(64), context.get_abi_sizeof(pointer_.type.pointee))
        strides = [builder.mul(row_stride_, item), builder.mul(column_stride_, item)]
        populate_array(view, data=pointer_, shape=[rows_, columns_], strides=strides,
                       itemsize=item, meminfo=None)  # fmt: skip
        return view._getvalue()

    return signature, codegen


def _rows_entry(a, b, c, k, lda, a_step, ldb, ldc, c_step, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
    _tile_rows(_view(a, r1, k, lda, a_step), _view(b, k, q1 - shift, ldb, 1),
               _view(c, r1, q1, ldc, c_step), r0, r1, q0, q1, shift)  # fmt: skip


def _transposed_entry(a, b, c, k, lda, a_step, ldb, ldc, c_step, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
    _tile_rows_transposed(_view(a, r1, k, lda, a_step), _view(b, k, q1 - shift, ldb, 1),
                          _view(c, r1, q1, ldc, c_step), r0, r1, q0, q1, shift)  # fmt: skip


def _taps_entry(a, b, c, offsets, taps, k, lda, a_step, ldb, ldc, c_step, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
    _tile_rows_taps(_view(a, r1, k * taps, lda, a_step), _view(b, k, q1 - shift, ldb, 1),
                    _view(c, r1, q1, ldc, c_step), carray(offsets, taps), r0, r1, q0, q1,
                    shift)  # fmt: skip


# The drivers' C-callable forms: module-level functions, not closures, so that Numba's cache
# finds them again (a closure's cache key pickles its cells: a new key in every process).
_ENTRIES = {"rows": _rows_entry, "transposed": _transposed_entry, "taps": _taps_entry}


def _symbol(driver: str, dtype: types.Type) -> str:
    return f"eqsat_tile_{driver}_{dtype}_abi{ABI}"


def _compile_symbol(driver: str, dtype: types.Type) -> int:
    """Address of the C-callable driver for ``dtype`` (compiled once per machine, then loaded
    from Numba's cache): the driver on pointers and strides."""
    pointer = types.CPointer(dtype)
    if driver == "taps":  # the offsets and their count before the others
        signature = types.void(
            pointer, pointer, pointer, types.CPointer(types.int64), *([types.int64] * 12)
        )
    else:
        signature = types.void(pointer, pointer, pointer, *([types.int64] * 11))
    return cfunc(signature, cache=True, error_model="numpy")(_ENTRIES[driver]).address


def register() -> str | None:
    """Compiles (or loads) every entry and registers its symbol; None, or why it failed (the
    tiles are then off: cpu_microkernel.ENABLED is False and every product takes BLAS)."""
    try:
        for driver in _ENTRIES:
            for dtype in (types.float32, types.float64):
                llvm.add_symbol(_symbol(driver, dtype), _compile_symbol(driver, dtype))
    except Exception as error:  # any Numba or LLVM failure: the products fall back to BLAS
        return f"{type(error).__name__}: {error}"
    return None


FAILED = register()


def _call_entry(driver, context, builder, sig, args, taps: bool) -> None:  # type: ignore[no-untyped-def]
    """Emit the call of ``driver``'s C entry for the arrays a, b, c (and the offsets, with
    ``taps``) and the int64 arguments that follow them in ``args``."""
    i64 = ir.IntType(64)
    real = context.get_value_type(sig.args[0].dtype)
    item = ir.Constant(i64, context.get_abi_sizeof(real))
    views = [
        context.make_array(t)(context, builder, v)
        for t, v in zip(sig.args[:3], args[:3], strict=True)
    ]
    strides = [
        [builder.sdiv(s, item) for s in cgutils.unpack_tuple(builder, v.strides, 2)] for v in views
    ]
    k = cgutils.unpack_tuple(builder, views[0].shape, 2)[1]
    (lda, a_step), (ldb, _), (ldc, c_step) = strides
    head: list = []
    rest = args[3:]
    if taps:
        table = context.make_array(sig.args[3])(context, builder, args[3])
        count = cgutils.unpack_tuple(builder, table.shape, 1)[0]
        head, rest, k = [table.data, count], args[4:], builder.sdiv(k, count)
    fnty = ir.FunctionType(
        ir.VoidType(), [real.as_pointer()] * 3 + [h.type for h in head] + [i64] * 11
    )
    fn = cgutils.get_or_insert_function(builder.module, fnty, _symbol(driver, sig.args[0].dtype))
    operands = [v.data for v in views] + head + [k, lda, a_step, ldb, ldc, c_step, *rest]
    builder.call(fn, operands)


def _native(driver: str):  # type: ignore[no-untyped-def]
    @intrinsic
    def call(typingctx, a, b, c, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
        if not _float_matrices(a, b, c):
            return None
        signature = types.void(a, b, c, *([types.int64] * 5))

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            _call_entry(driver, context, builder, sig, args, taps=False)
            return context.get_dummy_value()

        return signature, codegen

    return call


@intrinsic
def native_rows_taps(typingctx, a, b, c, offsets, r0, r1, q0, q1, shift):  # type: ignore[no-untyped-def]
    """``native_rows_taps(a, b, c, offsets, r0, r1, q0, q1, shift)``: rows r0 <= m < r1 and
    columns q0 <= p < q1 of c = a @ patches, a (M, T*K) with T = len(offsets), patches row
    (t, r) = b's row r from column offsets[t] on (b's columns from q0 - shift); a, b and c
    with contiguous rows, offsets int64 (unchecked: callers check, and every column read must
    lie in b's buffer).

    A stride-1 conv on its padded planes' width (see
    :func:`~eqsat.lowering.cpu_conv_kernels.im2col_wide`) is then a product with no patches
    copied: b's rows are the K input planes (phases) and tap (kh, kw) reads them
    kh*WQ + kw columns further on."""
    if not (_float_matrices(a, b, c) and _offsets(offsets)):
        return None
    signature = types.void(a, b, c, offsets, *([types.int64] * 5))

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        _call_entry("taps", context, builder, sig, args, taps=True)
        return context.get_dummy_value()

    return signature, codegen


native_rows = _native("rows")
native_rows.__doc__ = """``native_rows(a, b, c, r0, r1, q0, q1, shift)``: rows r0 <= m < r1 and
columns q0 <= p < q1 of c = a @ b (b's columns from q0 - shift), a, b and c with contiguous
rows (unchecked: callers check)."""
native_rows_transposed = _native("transposed")
native_rows_transposed.__doc__ = """``native_rows_transposed(a, b, c, r0, r1, q0, q1, shift)``:
:func:`native_rows` for a with any strides, b a packed panel padded to whole tiles and c with
contiguous columns (unchecked: callers check)."""
