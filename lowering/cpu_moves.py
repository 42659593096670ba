"""CPU steps for data movement whose numpy form profiled far above the bytes it moves.

* Transpose whose permutation, once extent-1 axes are dropped and axes that stay neighbours are
  merged, swaps two blocks: ``(B, I, J, K) -> (B, J, I, K)`` (attention heads, NCHW <-> NHWC,
  time-major <-> batch-major). When a row of ``K`` is 4 bytes (float32, K = 1) 8x8 blocks are
  transposed in registers (:func:`swap_blocks32`), walked in the order :func:`_block_order`
  picks. Otherwise, when a row of ``K`` fits in 8 bytes it is one wider element and
  a kernel reads eight input rows at a time, storing eight contiguous outputs per visit (numpy:
  2.5x slower where row pitches are multiples of 512 bytes, magika's 1 KiB rows, and ~10x for
  ``K = 2``: basic_pitch's 370 us against 21 us); else one loop copies rows of ``K`` (numpy's
  strided copy pays ~15 ns per row: 3x slower for ``K = 3..16``, even for ``K = 64``).
* GlobalMaxPool, and ReduceMax/ReduceMin over trailing axes: numpy's row max (min) straight into
  the planned buffer. Its SIMD reduce runs at memory speed (~50 us for magika's 1 MiB, where a
  Numba max chain took 85 us and the reference step 125 us) and propagates NaN as the reference
  does, being the reference's own reduction. Rows shorter than :data:`SHORT_ROWS` take a Numba
  loop per row instead (numpy pays ~30 ns per row: a text CNN's max over 49 steps of 1600 rows
  took 50 us, 18 this way), on the values' bits as integers (NaN included).

* GatherElements and GatherND with constant indices, and ReverseSequence with constant lengths
  (Keras' backward LSTMs through tf2onnx, 30-35 us each on the reference): which input element lands where is found
  once, at compile time, by running the op's own reference on the element numbers
  ``arange(x.size)``; each run is then one ``np.take`` of those flat positions (DeBERTa's
  relative-position GatherElements: ~0.9 ms a call on the reference; the dynamo exporter's
  GatherND that lists every element of a mask in order is a plain copy).

Kernels copy raw bytes as unsigned integers of the item size, so one compiled loop serves every
dtype of that size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering.cpu import Env, Lowering, Step, StepFn
from eqsat.lowering.cpu_depthwise_lanes import transposed
from eqsat.lowering.cpu_math import ordered_bits
from eqsat.lowering.memory import Usage
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from eqsat import ops
from eqsat.ir import Node, Value

JIT = {"cache": True, "error_model": "numpy", "nogil": True}
_UINTS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _raw(array: np.ndarray) -> np.ndarray:
    return array.view(_UINTS[array.dtype.itemsize])


# ------------------------------------------------------------------ Transpose
@njit(**JIT)
def swap_rows(x, out):  # type: ignore[no-untyped-def]
    """out[b, j, i, :] = x[b, i, j, :]."""
    b_, i_, j_, k_ = x.shape
    for b in range(b_):
        for j in range(j_):
            for i in range(i_):
                dst = out[b, j, i]
                src = x[b, i, j]
                for k in range(k_):
                    dst[k] = src[k]


@njit(**JIT)
def swap_elements(x, out):  # type: ignore[no-untyped-def]
    """out[b, j, i] = x[b, i, j], eight input rows at a time: each output row gets eight
    contiguous elements per visit while the eight input rows are read in order."""
    b_, i_, j_ = x.shape
    full = i_ - i_ % 8
    for b in range(b_):
        for i0 in range(0, full, 8):
            for j in range(j_):
                dst = out[b, j]
                for a in range(8):
                    dst[i0 + a] = x[b, i0 + a, j]
        for i in range(full, i_):
            src = x[b, i]
            for j in range(j_):
                out[b, j, i] = src[j]


@intrinsic
def _block8(typingctx, x, out, i0, j0):  # type: ignore[no-untyped-def]
    """out[j0 + c, i0 + r] = x[i0 + r, j0 + c] for r, c < 8; x (I, J) and out (J, I) 2-D
    C-contiguous uint32: eight row loads, an in-register transpose, eight row stores."""
    arrays = (x, out)
    if not all(
        isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == types.uint32
        for a in arrays
    ):
        return None
    signature = types.void(x, out, types.int64, types.int64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        source = context.make_array(sig.args[0])(context, builder, args[0])
        target = context.make_array(sig.args[1])(context, builder, args[1])
        i_, j_ = cgutils.unpack_tuple(builder, source.shape, 2)
        vector = ir.VectorType(ir.IntType(32), 8).as_pointer()

        def at(data: Any, row: Any, stride: Any, column: Any) -> Any:
            offset = builder.add(builder.mul(row, stride), column)
            return builder.bitcast(builder.gep(data, [offset]), vector)

        def plus(value: Any, k: int) -> Any:
            return builder.add(value, ir.Constant(ir.IntType(64), k))

        first, second = args[2], args[3]
        rows = [
            builder.load(at(source.data, plus(first, r), j_, second), align=4) for r in range(8)
        ]
        for c, column in enumerate(transposed(builder, rows)):
            builder.store(column, at(target.data, plus(second, c), i_, first), align=4)
        return context.get_dummy_value()

    return signature, codegen


@njit(**JIT)
def swap_blocks32(x, out, by_columns):  # type: ignore[no-untyped-def]
    """out[b, j, i] = x[b, i, j] for 4-byte elements by 8x8 blocks transposed in registers;
    ``by_columns``: the blocks of a column block of x in turn (else of a row block), so that
    the rows swept between two visits of a cache line are those with the shorter footprint
    or a stride that does not map them all to one cache set (see :func:`_block_order`)."""
    b_, i_, j_ = x.shape
    i8, j8 = i_ - i_ % 8, j_ - j_ % 8
    for b in range(b_):
        xb, ob = x[b], out[b]
        if by_columns:
            for j0 in range(0, j8, 8):
                for i0 in range(0, i8, 8):
                    _block8(xb, ob, i0, j0)
        else:
            for i0 in range(0, i8, 8):
                for j0 in range(0, j8, 8):
                    _block8(xb, ob, i0, j0)
        for i in range(i8, i_):
            for j in range(j_):
                ob[j, i] = xb[i, j]
        for i in range(i8):
            for j in range(j8, j_):
                ob[j, i] = xb[i, j]


def _block_order(i_: int, j_: int) -> bool | None:
    """How :func:`swap_blocks32` walks an (I, J) -> (J, I) swap of 4-byte elements: True by
    column blocks, False by row blocks, None where :func:`swap_elements` is the better (8
    rows too few, or input rows a multiple of 4 KiB long, whose eight row streams all fall in
    one cache set: 128x4096, 106 us against 160). A walk by row blocks revisits each output
    line after a sweep over J output rows, one by column blocks each input line after I
    input rows: the sweep over rows a multiple of 4 KiB apart (one cache set) is avoided,
    else the shorter one taken. Against swap_elements on a Zen 5 core: 4096x128 470 -> 80
    us, 96x3136 62 -> 24, 3136x96 57 -> 25, 12x197x64 27.5 -> 11."""
    if i_ < 8 or j_ < 8 or (4 * j_) % 4096 == 0:
        return None
    if (4 * i_) % 4096 == 0:
        return True
    return i_ < j_


def swap_plan(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """``(B, I, J, K)`` when transposing ``shape`` by ``perm`` is ``(B, I, J, K) -> (B, J, I, K)``
    in row-major order (extent-1 axes dropped, neighbours kept together merged); else None."""
    # Input axes of extent > 1 renumbered in order, listed in output order.
    number = {a: r for r, a in enumerate(a for a in range(len(shape)) if shape[a] != 1)}
    extents = [shape[a] for a in sorted(number)]
    # Runs of the output's axes that are consecutive input axes move as one axis.
    groups: list[list[int]] = []
    for a in (number[a] for a in perm if shape[a] != 1):
        if groups and groups[-1][-1] + 1 == a:
            groups[-1].append(a)
        else:
            groups.append([a])
    n = len(groups)
    if n < 2:
        return None
    order = sorted(range(n), key=lambda g: groups[g][0])  # output groups in input order
    sizes = [int(np.prod([extents[a] for a in groups[g]], dtype=np.int64)) for g in order]
    rank = {g: r for r, g in enumerate(order)}
    source = [rank[g] for g in range(n)]  # the input position of each output group
    lead = next(g for g in range(n) if source[g] != g)
    # After ``lead`` groups in place the output takes input groups lead+1 and lead, then the
    # rest in place.
    if lead + 2 > n or source[lead] != lead + 1 or source[lead + 1] != lead:
        return None
    if any(source[g] != g for g in range(lead + 2, n)):
        return None
    b_ = int(np.prod(sizes[:lead], dtype=np.int64))
    k_ = int(np.prod(sizes[lead + 2 :], dtype=np.int64))
    return b_, sizes[lead], sizes[lead + 1], k_


def keeps_order(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """Whether the permutation only moves extent-1 axes: the transpose is a reshape."""
    kept = [a for a in perm if shape[a] != 1]
    return kept == sorted(kept)


def transpose(lowering: Lowering, node: Node) -> Step | None:
    """A Transpose step with a swap kernel; None when the permutation is no swap."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    perm = node.attrs.get("perm")
    perm = tuple(range(x.rank)[::-1]) if perm is None else tuple(int(p) % x.rank for p in perm)
    plan = swap_plan(x.shape, perm) if x.size else None
    if plan is None or x.dtype.itemsize not in _UINTS:
        return None
    b_, i_, j_, k_ = plan
    width = k_ * x.dtype.itemsize
    if width in _UINTS:  # a row of K is one wider element
        kernel, in_shape, out_shape = swap_elements, (b_, i_, j_), (b_, j_, i_)
        view = _UINTS[width]
        order = _block_order(i_, j_) if width == 4 else None
        if order is not None:

            def kernel(x: np.ndarray, out: np.ndarray, order: bool = order) -> None:
                swap_blocks32(x, out, order)

    else:
        kernel, in_shape, out_shape = swap_rows, plan, (b_, j_, i_, k_)
        view = _UINTS[x.dtype.itemsize]
    xs, o = lowering.slot(x), lowering.slot(out)

    def source(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array).reshape(-1).view(view).reshape(in_shape)

    def run(env: Env) -> None:
        kernel(source(env[xs]), env[o].reshape(-1).view(view).reshape(out_shape))

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        fixed = arrays.get(o)
        if fixed is None:
            return None
        target = fixed.reshape(-1).view(view).reshape(out_shape)
        if xs in arrays:
            data = source(arrays[xs])  # a planned buffer: the same view every run
            return lambda env: kernel(data, target)
        return lambda env: kernel(source(env[xs]), target)

    return Step(run, Usage([xs], [o], True), "copy", node.name, bind)


# ------------------------------------------------------------------ Pad
# ------------------------------------------------------------------ row max / min
# Rows shorter than this reduce in _short_extremes (see the module's docstring; rows of 400:
# numpy 136 us, the loop 383).
SHORT_ROWS = 128
# Per float dtype: the integer view, the mask of the magnitude bits and the bits of +inf (a NaN's
# magnitude bits are above them).
_NAN_BITS = {
    np.dtype(np.float32): (np.int32, np.int32(0x7FFFFFFF), np.int32(0x7F800000)),
    np.dtype(np.float64): (np.int64, np.int64(0x7FFFFFFFFFFFFFFF), np.int64(0x7FF0000000000000)),
}


@njit(cache=True, error_model="numpy", nogil=True)
def _short_extremes(bits, out, largest, mask, infinity):  # type: ignore[no-untyped-def]
    """out[r] = the max (``largest``) or min of row r of the floats whose integer view is
    ``bits``, NaN where the row holds one. Integers throughout, no float compare: the max or
    min of :func:`~eqsat.lowering.cpu_math.ordered_bits`, and a NaN is any value whose
    magnitude bits (``mask``) are above those of +inf."""
    values = out.view(bits.dtype)
    for r in range(bits.shape[0]):
        row = bits[r]
        top = ordered_bits(row[0], mask)
        nan = (row[0] & mask) > infinity
        for j in range(1, row.shape[0]):
            b = row[j]
            key = ordered_bits(b, mask)
            top = max(top, key) if largest else min(top, key)
            nan |= (b & mask) > infinity
        values[r] = infinity | (infinity >> 1) if nan else ordered_bits(top, mask)


def _rows_reduce(lowering: Lowering, node: Node, reduce: np.ufunc, rows: int, length: int) -> Step:
    """``out = reduce(x as (rows, length), axis=1)`` into the output's buffer."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    in_shape = (rows, length)
    xs, o = lowering.slot(x), lowering.slot(out)
    fold = reduce.reduce
    nan_bits = _NAN_BITS.get(x.dtype)
    if nan_bits is not None and 0 < length < SHORT_ROWS and reduce in (np.maximum, np.minimum):
        view, mask, infinity = nan_bits
        largest = reduce is np.maximum

        def short(data: np.ndarray, axis: int, out: np.ndarray) -> None:
            _short_extremes(np.ascontiguousarray(data).view(view), out, largest, mask, infinity)

        fold = short

    def run(env: Env) -> None:
        fold(env[xs].reshape(in_shape), axis=1, out=env[o].reshape(rows))

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        fixed = arrays.get(o)
        if fixed is None:
            return None
        target = fixed.reshape(rows)
        if xs in arrays:
            data = arrays[xs].reshape(in_shape)
            return lambda env: fold(data, axis=1, out=target)
        return lambda env: fold(env[xs].reshape(in_shape), axis=1, out=target)

    return Step(run, Usage([xs], [o], True), "kernel", node.name, bind)


def global_max_pool(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    if x.rank < 3 or x.size == 0:
        return None
    return _rows_reduce(lowering, node, np.maximum, out.size, x.size // out.size)


def reduce_extreme(lowering: Lowering, node: Node) -> Step | None:
    """ReduceMax/ReduceMin over the trailing axes (after dropping extent-1 ones) of a float
    input: numpy's row reduction; None for other axes (:mod:`cpu_small`'s kernel)."""
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or x.size == 0 or x.dtype.kind != "f":
        return None
    if any(v is not None and v.const is None for v in node.inputs[1:]):
        return None
    axes_in = node.inputs[1] if len(node.inputs) > 1 else None
    axes = [] if axes_in is None else [int(a) for a in np.asarray(axes_in.const).reshape(-1)]
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(x.rank))
    reduced = {a % x.rank for a in axes}
    kept = [a for a in range(x.rank) if x.shape[a] != 1]
    # Every reduced axis of extent > 1 must come after every kept one.
    tail = [a for a in kept if a in reduced]
    if not tail or kept[-len(tail) :] != tail:
        return None
    length = int(np.prod([x.shape[a] for a in tail], dtype=np.int64))
    ufunc = np.maximum if node.op == "ReduceMax" else np.minimum
    return _rows_reduce(lowering, node, ufunc, x.size // length, length)


# ------------------------------------------------------------------ Gather with constant indices
# Larger inputs would need a large table of element numbers at compile time.
MAX_SELECT_ELEMENTS = 1 << 24


def constant_select(lowering: Lowering, node: Node) -> Step | None:
    """GatherElements/GatherND whose indices are constant, ReverseSequence whose lengths are
    (Keras' backward LSTMs through tf2onnx): ``out.flat = x.flat[positions]``, the positions
    computed by the op's reference on the element numbers of x."""
    x, index, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if x is None or index is None or out is None or index.const is None:
        return None
    if x.size == 0 or out.size == 0 or x.size > MAX_SELECT_ELEMENTS:
        return None
    numbers = np.arange(x.size, dtype=np.int64).reshape(x.shape)
    probe = [numbers, *(v.const for v in node.inputs[1:])]
    # Outputs typed int64 like the numbers (the reference casts its result to the outputs' type).
    typed = [None if v is None else Value(v.name, v.shape, numbers.dtype) for v in node.outputs]
    try:
        (chosen,) = ops.get(node.op).reference(probe, node.attrs, typed)[:1]
    except Exception:  # a bad index: the reference reports it, naming the node, when it runs
        return None
    positions = np.ascontiguousarray(np.asarray(chosen).reshape(-1), np.int64)
    if positions.size != out.size:
        return None
    xs, o = lowering.slot(x), lowering.slot(out)
    take = np.take

    def run(env: Env) -> None:
        take(env[xs].reshape(-1), positions, out=env[o].reshape(-1), mode="clip")

    return Step(run, Usage([xs], [o], True), "copy", node.name)


__all__ = [
    "constant_select",
    "global_max_pool",
    "keeps_order",
    "reduce_extreme",
    "swap_plan",
    "transpose",
]
