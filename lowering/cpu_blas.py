"""BLAS GEMM callable from ``nogil`` Numba code, and the atomic counters that native chunk loops
share (see :mod:`eqsat.lowering.cpu_lanes`).

A step split over the pool used to run each chunk as a Python call around ``np.matmul`` and its
Numba kernels: two or three GIL round trips per chunk, and on a busy machine each one can make a
thread sleep on the GIL and pay a wake-up (~60 us on the 2-core VM). Calling BLAS from inside a
Numba loop lets a thread take chunk after chunk with no GIL at all.

The GEMM is numpy's own BLAS (the library numpy links, found through threadpoolctl), not SciPy's
``cython_blas``: SciPy wheels bundle an older OpenBLAS, 10-40% slower on the 2-core VM's Haswell
for the conv shapes measured. The function's address is registered with LLVM under a fixed
symbol name (as Numba registers its own C helpers), so the compiled kernels that call it refer
to the name, not to an address that changes from process to process, and Numba's on-disk cache
stays valid. The symbol is named after the library's integer width (``lp64``/``ilp64``) and
:data:`FLAVOR` salts the kernel cache, so a cached kernel never calls a library of another ABI.

Only OpenBLAS's CBLAS interface is used (the library numpy wheels ship, on Linux, Windows and
Intel macOS). Where numpy links another BLAS, :data:`AVAILABLE` is False and the steps keep their
Python chunks around ``np.matmul``.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic, register_jitable

# CBLAS's enum values (cblas.h).
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _numpy_openblas() -> tuple[str, dict[str, int]] | None:
    """(integer width "lp64"/"ilp64", {routine: address}) of numpy's OpenBLAS."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency; without it, no native GEMM
        return None
    libraries = ThreadpoolController().select(internal_api="openblas").lib_controllers
    # numpy's own copy first (a wheel's numpy.libs/.dylibs); any OpenBLAS computes the same.
    libraries.sort(key=lambda lib: "numpy" not in lib.filepath)
    for lib in libraries:
        find = getattr(lib, "_find_affixes", None)
        affixes = find() if find is not None else None
        dll = getattr(lib, "dynlib", None)
        if affixes is None or dll is None:
            continue
        prefix, suffix = affixes
        found = {r: getattr(dll, f"{prefix}cblas_{r}{suffix}", None) for r in _ROUTINES}
        config = getattr(dll, f"{prefix}openblas_get_config{suffix}", None)
        if config is None or any(f is None for f in found.values()):
            continue
        config.restype = ctypes.c_char_p
        width = "ilp64" if b"USE64BITINT" in (config() or b"") else "lp64"
        addresses = {r: ctypes.cast(f, ctypes.c_void_p).value for r, f in found.items()}
        if all(addresses.values()):
            return width, addresses  # type: ignore[return-value]
    return None


_ROUTINES = ("sgemm", "dgemm", "sgemv", "dgemv")
_FOUND = _numpy_openblas()
AVAILABLE = _FOUND is not None
FLAVOR = f"openblas {_FOUND[0]}" if _FOUND is not None else "none"
_INT_BITS = 64 if _FOUND is not None and _FOUND[0] == "ilp64" else 32
_PREFIX = {types.float32: "s", types.float64: "d"}
if _FOUND is not None:
    for _routine, _address in _FOUND[1].items():
        llvm.add_symbol(f"eqsat_cblas_{_routine}_{_FOUND[0]}", _address)


def _call(context, builder, routine, dtype, pointers, values):  # type: ignore[no-untyped-def]
    """cblas_<s|d><routine>(RowMajor, *values) where each of ``values`` is "enum" (an int32
    constant), "int" (an int64 value, narrowed for an LP64 library), "real" (a float constant)
    or "array" (an array value, passed as its data pointer)."""
    real = context.get_value_type(dtype)
    integer, enum = ir.IntType(_INT_BITS), ir.IntType(32)
    kinds = {"enum": enum, "int": integer, "real": real, "array": real.as_pointer()}
    fnty = ir.FunctionType(ir.VoidType(), [enum] + [kinds[k] for k, _ in values])
    name = f"eqsat_cblas_{_PREFIX[dtype]}{routine}_{FLAVOR.split()[-1]}"
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    args = [ir.Constant(enum, _ROW_MAJOR)]
    for kind, value in values:
        if kind == "enum":
            args.append(ir.Constant(enum, value))
        elif kind == "real":
            args.append(ir.Constant(real, value))
        elif kind == "int":
            args.append(builder.trunc(value, integer) if _INT_BITS < 64 else value)
        else:
            array_type, array = pointers[value]
            args.append(context.make_array(array_type)(context, builder, array).data)
    builder.call(fn, args)
    return context.get_dummy_value()


def _float_arrays(*arrays) -> bool:  # type: ignore[no-untyped-def]
    first = arrays[0]
    return (
        all(isinstance(a, types.Array) for a in arrays)
        and first.dtype in _PREFIX
        and all(a.dtype == first.dtype for a in arrays)
    )


@intrinsic
def _cblas_gemm(typingctx, a, b, c, m, n, k, lda, ldb, ldc):  # type: ignore[no-untyped-def]
    """cblas_?gemm(RowMajor, NoTrans, NoTrans, m, n, k, 1, a, lda, b, ldb, 0, c, ldc) on the
    first elements of arrays a, b and c."""
    if not _float_arrays(a, b, c):
        return None
    signature = types.void(a, b, c, types.int64, types.int64, types.int64, types.int64,
                           types.int64, types.int64)  # fmt: skip

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        arrays = list(zip(sig.args[:3], args[:3], strict=True))
        m_, n_, k_, lda_, ldb_, ldc_ = (("int", v) for v in args[3:])
        values = [("enum", _NO_TRANS), ("enum", _NO_TRANS), m_, n_, k_, ("real", 1.0),
                  ("array", 0), lda_, ("array", 1), ldb_, ("real", 0.0), ("array", 2), ldc_]  # fmt: skip
        return _call(context, builder, "gemm", sig.args[0].dtype, arrays, values)

    return signature, codegen


@intrinsic
def _cblas_gemv(typingctx, a, x, y, trans, rows, cols, lda, incx, incy):  # type: ignore[no-untyped-def]
    """cblas_?gemv(RowMajor, trans ? Trans : NoTrans, rows, cols, 1, a, lda, x, incx, 0, y,
    incy) on the first elements of arrays a, x and y; ``trans`` a literal bool."""
    if not _float_arrays(a, x, y) or not isinstance(trans, types.BooleanLiteral):
        return None
    signature = types.void(a, x, y, trans, types.int64, types.int64, types.int64, types.int64,
                           types.int64)  # fmt: skip
    transposed = trans.literal_value

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        arrays = list(zip(sig.args[:3], args[:3], strict=True))
        rows_, cols_, lda_, incx_, incy_ = (("int", v) for v in args[4:])
        values = [("enum", _TRANS if transposed else _NO_TRANS), rows_, cols_, ("real", 1.0),
                  ("array", 0), lda_, ("array", 1), incx_, ("real", 0.0), ("array", 2), incy_]  # fmt: skip
        return _call(context, builder, "gemv", sig.args[0].dtype, arrays, values)

    return signature, codegen


@register_jitable
def gemm(a, b, c):  # type: ignore[no-untyped-def]
    """c = a @ b for 2-D float arrays (one dtype) whose rows are contiguous (any row stride):
    slices of larger matrices go to BLAS as they are, with their leading dimensions. A single
    output column or row is a matrix-vector product (BLAS's GEMM is 2x slower there, and
    numpy's matmul makes the same choice)."""
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("gemm: shapes do not match")
    if m == 0 or n == 0:
        return
    if k == 0:
        c[:] = 0
        return
    size = a.itemsize
    if a.strides[1] != size or b.strides[1] != size or c.strides[1] != size:
        raise ValueError("gemm: rows must be contiguous")
    # A leading dimension below the row's length (a single row's stride may be anything)
    # is one BLAS rejects with a message on stderr; so is a zero increment.
    lda = max(a.strides[0] // size, k)
    ldb = max(b.strides[0] // size, n)
    ldc = max(c.strides[0] // size, n)
    if n == 1:
        _cblas_gemv(a, b, c, False, m, k, lda, ldb, ldc)
    elif m == 1:
        _cblas_gemv(b, a, c, True, k, n, ldb, 1, 1)
    else:
        _cblas_gemm(a, b, c, m, n, k, lda, ldb, ldc)


@intrinsic
def increment(typingctx, counter, index):  # type: ignore[no-untyped-def]
    """Atomically ``counter[index] += 1`` (an int64 array), returning the value before: any
    number of threads share one counter. Sequentially consistent, so a thread that reads the
    new count also sees every store made before the increment (a finished chunk's output)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None
    signature = types.int64(counter, types.intp)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        view = context.make_array(sig.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, sig.args[0], view, [args[1]], wraparound=False
        )
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", pointer, one, "seq_cst")

    return signature, codegen


# A lane counter's slots, a cache line apart: the next chunk to claim, the chunks finished.
CLAIMED, FINISHED = 0, 8


def counter() -> np.ndarray:
    """A fresh lane counter (see :data:`CLAIMED` and :data:`FINISHED`)."""
    return np.zeros(16, np.int64)


__all__ = ["AVAILABLE", "CLAIMED", "FINISHED", "FLAVOR", "counter", "gemm", "increment"]
