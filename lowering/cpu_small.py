"""CPU steps for small data-movement ops and reductions: views where exact, else one kernel each.

On the numpy reference each of these cost 20-80 us per call (argument parsing, constant inputs
re-read, ``np.pad``'s generic machinery), more than the whole onnxruntime model around them in
the Silero VAD exports. Here:

* Slice, constant-index Gather, Split and Expand (a broadcast) are numpy views: when the view of
  a C-contiguous input is C-contiguous the step hands out the view (the memory plan tracks the
  aliasing), otherwise it copies the view into the planned output buffer (the view of a planned
  buffer is made once, at bind time; views whose contiguous runs are short are copied by a Numba
  loop, numpy's copy costing ~15 ns per run);
* Gather with a constant vector of indices is ``np.take`` into the planned buffer, with indices
  fed at run time (int32 or int64; the table may be a constant: embeddings) a Numba kernel that
  wraps negative indices and reports an out-of-range one;
* Pad (constant, reflect, edge, wrap; negative pads crop) is one Numba pass over output rows with
  per-axis source maps computed at compile time by padding index arrays with ``np.pad``, so the
  border rules are numpy's own;
* ReduceSum/Mean/Max/Min over axes that form one block (after dropping extent-1 axes) are one
  Numba pass over an (outer, reduced, inner) view, accumulating float32 sums in float64;
* Softmax over an axis that is not innermost is one Numba pass over (outer, axis, inner); over
  the innermost axis in float32, :func:`softmax_rows_f32` (cpu_misc's step runs it).

Data movement kernels see the data as unsigned integers of its item size, so every dtype of that
size (float16 and bool included) shares one compiled kernel. Anything else returns ``None``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from eqsat.lowering import cpu_moves, cpu_norms, cpu_softmax
from eqsat.lowering.cpu import Env, Lowering, Step, StepFn
from eqsat.lowering.cpu_math import row_sum
from eqsat.lowering.memory import Usage
from numba import njit

from eqsat.errors import InputError
from eqsat.ir import Node, Value
from eqsat.ops.tensor import pad_widths, slice_plan, split_sizes

JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_UINTS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
View = Callable[[np.ndarray], np.ndarray]


def build_step(lowering: Lowering, node: Node) -> Step | None:
    builder = _BUILDERS.get(node.op)
    if builder is None:
        return None
    x = node.inputs[0] if node.inputs else None
    if x is None or x.dtype.kind not in "biuf":
        return None
    # A constant table is only worth a step when gathered by indices fed at run time
    # (embeddings); other constant inputs are folded before lowering.
    idx = node.inputs[1] if node.op == "Gather" and len(node.inputs) > 1 else None
    if x.const is not None and (idx is None or idx.const is not None):
        return None
    return builder(lowering, node)


def _ints(value: Value | None) -> list[int] | None:
    if value is None:
        return None
    return [int(v) for v in np.asarray(value.const).reshape(-1)]


def _consts(node: Node, first: int = 1) -> bool:
    return all(v is None or v.const is not None for v in node.inputs[first:])


def _raw(array: np.ndarray) -> np.ndarray:
    """The same bytes as unsigned integers of the item size (one kernel serves every dtype)."""
    return array.view(_UINTS[array.dtype.itemsize])


# ------------------------------------------------------------------ views or copies
def _views_step(
    lowering: Lowering, node: Node, x: Value, outs: list[Value | None], views: list[View]
) -> Step:
    """``out_k = views[k](x)``: the views themselves when each is C-contiguous for a C-contiguous
    ``x``, otherwise copies of them into planned buffers."""
    probe = np.empty(x.shape, x.dtype)
    pairs = [(lowering.slot(v), view) for v, view in zip(outs, views, strict=True) if v is not None]
    xs = lowering.slot(x)
    writes = [o for o, _ in pairs]
    if all(view(probe).flags.c_contiguous for _, view in pairs):

        def run_view(env: Env) -> None:
            data = env[xs]
            for o, view in pairs:
                env[o] = view(data)

        return Step(run_view, Usage([xs], writes, False), "view", node.name)
    copyto = np.copyto

    def run(env: Env) -> None:
        data = env[xs]
        for o, view in pairs:
            copyto(env[o], view(data))

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        if any(o not in arrays for o, _ in pairs):
            return None
        if xs in arrays:
            # Views of a planned buffer are the same every run: each copy is prepared once.
            copies = tuple(_copier(arrays[o], view(arrays[xs])) for o, view in pairs)
            if len(copies) == 1:
                only = copies[0]
                return lambda env: only()

            def run_fixed(env: Env) -> None:
                for copy in copies:
                    copy()

            return run_fixed
        targets = tuple((arrays[o], view) for o, view in pairs)

        def run_bound(env: Env) -> None:
            data = env[xs]
            for dst, view in targets:
                copyto(dst, view(data))

        return run_bound

    return Step(run, Usage([xs], writes, True), "copy", node.name, bind)


@njit(**JIT)
def copy3(src, dst):  # type: ignore[no-untyped-def]
    """dst[...] = src for 3-D arrays of any strides."""
    for a in range(dst.shape[0]):
        for b in range(dst.shape[1]):
            for c in range(dst.shape[2]):
                dst[a, b, c] = src[a, b, c]


# Strided copies whose contiguous runs are shorter than this many elements go through copy3:
# numpy's copy costs ~15 ns per run (8 us for a (8, 129, 5) -> (8, 129, 4) slice, copy3 2 us).
SHORT_RUN = 32


def _copier(dst: np.ndarray, src: np.ndarray) -> Callable[[], Any]:
    """A call copying the fixed view ``src`` into the C-contiguous ``dst``."""
    shape: list[int] = []
    strides: list[int] = []
    for d, s in zip(src.shape, src.strides, strict=True):
        if d == 1:
            continue
        if shape and strides[-1] == s * d:  # the outer axis steps over whole inner runs: merge
            shape[-1] *= d
            strides[-1] = s
        else:
            shape.append(d)
            strides.append(s)
    short = bool(shape) and (strides[-1] != src.itemsize or shape[-1] < SHORT_RUN)
    if len(shape) > 3 or not short:
        return lambda: np.copyto(dst, src)
    shape = [1] * (3 - len(shape)) + shape
    strides = [0] * (3 - len(strides)) + strides
    source = _raw(np.lib.stride_tricks.as_strided(src, shape, strides))
    target = _raw(dst).reshape(shape)
    return lambda: copy3(source, target)


def _slice(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or not _consts(node) or len(node.inputs) < 3:
        return None
    args = [_ints(node.inputs[i]) if i < len(node.inputs) else None for i in range(1, 5)]
    starts, ends, axes, steps = args
    assert starts is not None and ends is not None
    slices, _ = slice_plan(x.shape, starts, ends, axes, steps)
    return _views_step(lowering, node, x, [out], [lambda a: a[slices]])


def _split(lowering: Lowering, node: Node) -> Step | None:
    x = node.inputs[0]
    if x is None or x.rank == 0 or not _consts(node):
        return None
    axis = int(node.attrs["axis"]) % x.rank
    split = _ints(node.inputs[1]) if len(node.inputs) > 1 else None
    sizes = split_sizes(x.shape[axis], split, node.attrs["num_outputs"], len(node.outputs))
    bounds = np.cumsum([0, *sizes])
    lead = (slice(None),) * axis
    views: list[View] = [
        (lambda a, s=slice(int(lo), int(hi)): a[(*lead, s)])
        for lo, hi in itertools.pairwise(bounds)
    ]
    return _views_step(lowering, node, x, list(node.outputs), views)


def _expand(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or not _consts(node) or out.size == 0:
        return None
    shape = out.shape
    if shape == x.shape:  # an identity (magika's are): the input itself
        return _views_step(lowering, node, x, [out], [lambda a: a])
    return _views_step(lowering, node, x, [out], [lambda a: np.broadcast_to(a, shape)])


# ------------------------------------------------------------------ Gather
@njit(**JIT)
def gather_axis(x, index, out):  # type: ignore[no-untyped-def]
    """out[a, k, i] = x[a, index[k], i] with negative indices from the end; returns the position
    of an out-of-range index, or -1."""
    n = x.shape[1]
    for k in range(index.size):
        if index[k] < -n or index[k] >= n:
            return k
    # Rows copied element by element: a slice assignment pulls in Numba's broadcasting and its
    # error messages, which took 4.5 s to compile on a machine's first transformer model.
    inner = x.shape[2]
    for a in range(x.shape[0]):
        for k in range(index.size):
            j = index[k]
            if j < 0:
                j += n
            src = x[a, j]
            dst = out[a, k]
            for i in range(inner):
                dst[i] = src[i]
    return -1


def _gather(lowering: Lowering, node: Node) -> Step | None:
    x, idx = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    if x is None or idx is None or out is None or x.rank == 0:
        return None
    axis = int(node.attrs["axis"]) % x.rank
    n = x.shape[axis]
    lead = (slice(None),) * axis
    if idx.const is not None:
        index = np.asarray(idx.const, np.int64)
        if index.size and (index.min() < -n or index.max() >= n):
            return None  # the reference reports the bad index when the node runs
        index = np.where(index < 0, index + n, index)
        if index.ndim == 0:
            position = int(index)
            return _views_step(lowering, node, x, [out], [lambda a: a[(*lead, position)]])
        flat = index.reshape(-1)
        step = int(flat[1] - flat[0]) if flat.size > 1 else 1
        if index.ndim == 1 and flat.size and step > 0 and np.all(np.diff(flat) == step):
            span = slice(int(flat[0]), int(flat[-1]) + 1, step)
            return _views_step(lowering, node, x, [out], [lambda a: a[(*lead, span)]])
        return _take(lowering, node, x, out, axis, index)
    if idx.dtype.kind not in "iu" or out.size == 0:
        return None
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
    ids, o = lowering.slot(idx), lowering.slot(out)
    x_shape, out_shape = (outer, n, inner), (outer, idx.size, inner)
    name = node.name
    # A constant table (an embedding) is viewed once here rather than read from a slot.
    table = (
        None if x.const is None else _raw(np.ascontiguousarray(x.const, x.dtype)).reshape(x_shape)
    )
    xs = lowering.slot(x) if table is None else None

    def run(env: Env) -> None:
        index = np.ascontiguousarray(env[ids]).reshape(-1)
        data = table if table is not None else _raw(np.ascontiguousarray(env[xs])).reshape(x_shape)
        bad = gather_axis(data, index, _raw(env[o]).reshape(out_shape))
        if bad >= 0:
            raise InputError(
                f"node {name!r} (Gather): index {int(index[bad])} is out of range for an axis "
                f"of extent {n}"
            )

    reads = [ids] if xs is None else [xs, ids]
    return Step(run, Usage(reads, [o], True), "copy", node.name)


def _take(
    lowering: Lowering, node: Node, x: Value, out: Value, axis: int, index: np.ndarray
) -> Step:
    xs, o = lowering.slot(x), lowering.slot(out)
    take = np.take

    def run(env: Env) -> None:
        take(env[xs], index, axis=axis, out=env[o], mode="clip")

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        fixed = arrays.get(o)
        if fixed is None:
            return None
        source = arrays.get(xs)
        if source is not None:
            return lambda env: take(source, index, axis=axis, out=fixed, mode="clip")
        return lambda env: take(env[xs], index, axis=axis, out=fixed, mode="clip")

    return Step(run, Usage([xs], [o], True), "copy", node.name, bind)


# ------------------------------------------------------------------ Pad
@njit(**JIT)
def pad_rows(x, out, rowmap, colmap, lo, hi, offset, fill):  # type: ignore[no-untyped-def]
    """out[r, j] = x[rowmap[r], colmap[j]], or ``fill`` where either map is -1. Columns
    ``lo <= j < hi`` are the contiguous run ``x[., offset + j - lo]``."""
    # Explicit loops over slices from 0 (they vectorize): a slice assignment checks whether the
    # two arrays overlap and may copy the source first, and ZeroPad2d's 64x58 rows of 58 took
    # 153 us that way (onnxruntime 33).
    cols = out.shape[1]
    n = hi - lo
    for r in range(out.shape[0]):
        dst = out[r]
        s = rowmap[r]
        if s < 0:
            for j in range(cols):
                dst[j] = fill
            continue
        src = x[s]
        for j in range(lo):
            c = colmap[j]
            dst[j] = src[c] if c >= 0 else fill
        mid = dst[lo:hi]
        run = src[offset : offset + n]
        for j in range(n):
            mid[j] = run[j]
        for j in range(hi, cols):
            c = colmap[j]
            dst[j] = src[c] if c >= 0 else fill


def pad_maps(shape: tuple[int, ...], widths: list[tuple[int, int]], mode: str) -> list[np.ndarray]:
    """Per axis, the source index of each output position (-1: the constant), as the reference
    pads: negative widths crop first, then ``np.pad`` extends in ``mode``."""
    maps = []
    for d, (begin, end) in zip(shape, widths, strict=True):
        kept = np.arange(-min(begin, 0), d + min(end, 0), dtype=np.int64)
        grow = (max(begin, 0), max(end, 0))
        if mode == "constant":
            maps.append(np.pad(kept, grow, mode="constant", constant_values=-1))
        else:
            maps.append(np.pad(kept, grow, mode=mode))
    return maps


def _pad(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    mode = node.attrs["mode"]
    if x is None or out is None or x.rank == 0 or out.size == 0 or not _consts(node):
        return None
    if mode not in ("constant", "reflect", "edge", "wrap") or x.size == 0:
        return None
    pads = _ints(node.inputs[1])
    assert pads is not None
    axes = _ints(node.inputs[3]) if len(node.inputs) > 3 else None
    widths = pad_widths(x.shape, pads, axes)
    # Unpadded extent-1 axes are dropped: with basic-pitch's trailing channel of 1 kept, the
    # rows were one element long (~20 ns each).
    keep = [a for a in range(x.rank) if x.shape[a] != 1 or widths[a] != (0, 0)] or [x.rank - 1]
    shape = tuple(x.shape[a] for a in keep)
    maps = pad_maps(shape, [widths[a] for a in keep], mode)
    # Source row = sum of per-axis indices times the input's row strides; -1 if any is -1.
    rowmap = np.zeros((), np.int64)
    missing = np.zeros((), bool)
    stride = 1
    for axis in range(len(shape) - 2, -1, -1):
        m = maps[axis]
        rowmap = np.add.outer(m * stride, rowmap)
        missing = np.logical_or.outer(m < 0, missing)
        stride *= shape[axis]
    rowmap = np.where(missing, -1, rowmap).reshape(-1).astype(np.int64)
    colmap = np.ascontiguousarray(maps[-1])
    lo, hi, offset = _longest_run(colmap)
    value = node.inputs[2] if len(node.inputs) > 2 else None
    fill_value = 0 if value is None else np.asarray(value.const).reshape(-1)[0]
    fill = _raw(np.array([fill_value], x.dtype))[0]
    xs, o = lowering.slot(x), lowering.slot(out)
    in_shape = (x.size // shape[-1], shape[-1])
    out_shape = (out.size // colmap.size, colmap.size)
    tail = (rowmap, colmap, lo, hi, offset, fill)

    def run(env: Env) -> None:
        data = _raw(np.ascontiguousarray(env[xs])).reshape(in_shape)
        pad_rows(data, _raw(env[o]).reshape(out_shape), *tail)

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        fixed = arrays.get(o)
        if fixed is None:
            return None
        target = _raw(fixed).reshape(out_shape)
        source = arrays.get(xs)
        if source is not None:
            args = (_raw(source).reshape(in_shape), target, *tail)
            return lambda env: pad_rows(*args)
        return lambda env: pad_rows(
            _raw(np.ascontiguousarray(env[xs])).reshape(in_shape), target, *tail
        )

    return Step(run, Usage([xs], [o], True), "copy", node.name, bind)


def _longest_run(colmap: np.ndarray) -> tuple[int, int, int]:
    """(lo, hi, offset): the longest run with colmap[j] = offset + j - lo."""
    best = (0, 0, 0)
    j = 0
    n = colmap.size
    while j < n:
        if colmap[j] < 0:
            j += 1
            continue
        k = j + 1
        while k < n and colmap[k] == colmap[k - 1] + 1:
            k += 1
        if k - j > best[1] - best[0]:
            best = (j, k, int(colmap[j]))
        j = k
    return best


# ------------------------------------------------------------------ reductions
@njit(**JIT)
def reduce_block(x, out, acc, kind, scale):  # type: ignore[no-untyped-def]
    """Reduce x (outer, n, inner) over its middle axis into out (outer, inner). kind 0: sum
    (times ``scale``: 1, or 1/n for a mean), 1: max, 2: min; NaN propagates as in numpy.
    ``acc``: float64 scratch of ``inner`` elements."""
    outer, n, inner = x.shape
    if kind == 0 and inner == 1:
        # Over the innermost axes (SE blocks' means): the vectorized row sum, 8x the loop below.
        rows = x.reshape(outer, n)
        for a in range(outer):
            out[a, 0] = row_sum(rows[a]) * scale
        return
    for a in range(outer):
        if kind == 0:
            acc[:] = 0.0
            for k in range(n):
                for i in range(inner):
                    acc[i] += x[a, k, i]
            for i in range(inner):
                out[a, i] = acc[i] * scale
        else:
            acc[:] = -np.inf if kind == 1 else np.inf
            for k in range(n):
                for i in range(inner):
                    v = x[a, k, i]
                    m = acc[i]
                    better = v > m if kind == 1 else v < m
                    acc[i] = v if (better or v != v) and m == m else m
            for i in range(inner):
                out[a, i] = acc[i]


_REDUCE_KINDS = {"ReduceSum": 0, "ReduceMean": 0, "ReduceMax": 1, "ReduceMin": 2}


def _reduce(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or x.dtype not in FLOATS or not _consts(node):
        return None
    axes_in = _ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if not axes_in:
        if node.attrs["noop_with_empty_axes"]:
            return _views_step(lowering, node, x, [out], [lambda a: a])
        axes = set(range(x.rank))
    else:
        axes = {a % x.rank for a in axes_in}
    kept = [a for a in range(x.rank) if x.shape[a] != 1]
    reduced = [a for a in kept if a in axes]
    if reduced and reduced != kept[kept.index(reduced[0]) : kept.index(reduced[0]) + len(reduced)]:
        return None  # reduced axes interleaved with kept ones: left to numpy's reduction
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    first = reduced[0] if reduced else x.rank
    outer = int(np.prod([x.shape[a] for a in kept if a < first], dtype=np.int64))
    inner = x.size // max(outer * n, 1) if x.size else 0
    if x.size == 0:
        return None
    kind = _REDUCE_KINDS[node.op]
    scale = (1.0 / n if n else np.nan) if node.op == "ReduceMean" else 1.0
    acc = np.empty(inner, np.float64)
    xs, o = lowering.slot(x), lowering.slot(out)
    x_shape, out_shape = (outer, n, inner), (outer, inner)

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(x_shape)
        reduce_block(data, env[o].reshape(out_shape), acc, kind, scale)

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        fixed = arrays.get(o)
        if fixed is None:
            return None
        target = fixed.reshape(out_shape)
        source = arrays.get(xs)
        if source is not None:
            args = (source.reshape(x_shape), target, acc, kind, scale)
            return lambda env: reduce_block(*args)
        return lambda env: reduce_block(
            np.ascontiguousarray(env[xs]).reshape(x_shape), target, acc, kind, scale
        )

    return Step(run, Usage([xs], [o], True), "kernel", node.name, bind)


# ------------------------------------------------------------------ float16 casts
def _cast_half(lowering: Lowering, node: Node) -> Step | None:
    """A Cast to or from float16 (the generated kernels have no float16): numpy's conversion
    (round to nearest even, as the reference's astype) into the planned buffer. The float16
    graphs :mod:`eqsat.lowering.cpu_half` computes in float32 have one at each edge."""
    x, out = node.inputs[0], node.outputs[0]
    half = np.dtype(np.float16)
    if x is None or out is None or half not in (x.dtype, out.dtype) or out.dtype.kind != "f":
        return None
    xs, o = lowering.slot(x), lowering.slot(out)
    copyto = np.copyto

    def run(env: Env) -> None:
        copyto(env[o], env[xs], casting="unsafe")

    return Step(run, Usage([xs], [o], True), "copy", node.name)


_BUILDERS: dict[str, Any] = {
    "Cast": _cast_half,
    "Slice": _slice,
    "Split": _split,
    "Expand": _expand,
    "Gather": _gather,
    "GatherElements": cpu_moves.constant_select,
    "GatherND": cpu_moves.constant_select,
    "ReverseSequence": cpu_moves.constant_select,
    "Pad": _pad,
    "ReduceSum": _reduce,
    "ReduceMean": _reduce,
    "ReduceMax": _reduce,
    "ReduceMin": _reduce,
    "LogSoftmax": cpu_softmax.log_softmax,
    "InstanceNormalization": cpu_norms.instance_norm,
}

__all__ = ["build_step", "pad_maps"]
