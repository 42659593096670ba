"""CPU steps for data movement and attention, which profiles showed costing more than they compute.

Run on the numpy reference, a Reshape of a few kilobytes cost ~8 us (argument checks, attribute
parsing, a fresh array) and fused attention ~90 us; here:

* Reshape, Flatten, Squeeze, Unsqueeze, Identity and Transposes that only move extent-1 axes keep
  the element order, and their output shape is static: the step is ``x.reshape(shape)``, a view
  whenever the input is contiguous (the memory plan tracks that the result aliases its input's
  buffer);
* Transpose: a swap kernel of :mod:`eqsat.lowering.cpu_moves` when it swaps two blocks, else a
  copy into its planned buffer;
* Concat concatenates into its planned buffer (part by part into fixed slices of it once the
  memory plan is made);
* ``Attention(Q, K, V[, mask])`` is two batched GEMMs into preallocated scratch with one Numba pass
  in between that scales, adds the mask and takes the softmax of each row
  (:func:`eqsat.lowering.cpu_kernels.masked_softmax_rows`);
* MaxPool over 1-D and 2-D NCHW windows (1-D ones as planes one row high): a kernel generated
  per window geometry, separable row and
  column passes with the taps unrolled (:func:`eqsat.lowering.cpu_depthwise.max_pool_source`;
  windows wider than 16 taps: :func:`eqsat.lowering.cpu_kernels.max_pool2d`), (image, channel
  block) chunks on the thread pool; AveragePool the same with sums
  (:func:`eqsat.lowering.cpu_depthwise.average_pool_source`; wide windows:
  :func:`eqsat.lowering.cpu_kernels.average_pool2d`);
* ReduceMax/Min over trailing axes: numpy's row reduction (:mod:`eqsat.lowering.cpu_moves`;
  its scalar max chain ran 4 ns per element on basic_pitch's whole-tensor min and max);
* Slice, Split, Gather, Pad and ReduceSum/Mean/Max/Min: views or one kernel each
  (:mod:`eqsat.lowering.cpu_small`).

Anything else returns ``None`` and runs on the numpy reference.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from eqsat.lowering import (
    codegen,
    cpu,
    cpu_depthwise,
    cpu_depthwise_lanes,
    cpu_kernels,
    cpu_lanes,
    cpu_moves,
    cpu_small,
    cpu_threads,
)
from eqsat.lowering.cpu import Env, Lowering, Step, StepFn
from eqsat.lowering.memory import Usage

from eqsat.ir import Node, Value
from eqsat.ops.conv import window_geometry

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def build_step(lowering: Lowering, node: Node) -> Step | None:
    builder = _BUILDERS.get(node.op)
    if builder is None:
        return cpu_small.build_step(lowering, node)
    if not node.outputs or node.outputs[0] is None:
        return None
    x = node.inputs[0] if node.inputs else None
    # A constant input of a one-input op would have been folded; a Concat may start with one
    # (a ViT's class token before its patches).
    if x is None or (x.const is not None and node.op != "Concat"):
        return None
    return builder(lowering, node)


def _view(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    if any(v is not None for v in node.outputs[1:]) or x.size != out.size:
        return None
    xs, o = lowering.slot(x), lowering.slot(out)
    shape = out.shape

    def run(env: Env) -> None:
        env[o] = env[xs].reshape(shape)

    return Step(run, Usage([xs], [o], False), "view", node.name)


def _transpose(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    perm = node.attrs.get("perm")
    perm = tuple(range(x.rank)[::-1]) if perm is None else tuple(int(p) % x.rank for p in perm)
    if cpu_moves.keeps_order(x.shape, perm):
        return _view(lowering, node)  # only extent-1 axes move (ddddocr_rec's LSTM output)
    swap = cpu_moves.transpose(lowering, node)
    if swap is not None:
        return swap
    xs, o = lowering.slot(x), lowering.slot(out)
    copyto = np.copyto

    def run(env: Env) -> None:
        copyto(env[o], env[xs].transpose(perm))

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        fixed = arrays.get(o)
        source = arrays.get(xs)
        if fixed is None:
            return None
        if source is not None:
            view = source.transpose(perm)  # a planned buffer: the same view every run
            return lambda env: copyto(fixed, view)
        return lambda env: copyto(fixed, env[xs].transpose(perm))

    return Step(run, Usage([xs], [o], True), "copy", node.name, bind)


def _tile(lowering: Lowering, node: Node) -> Step | None:
    """Tile by constant repeats along one axis (tf2onnx's nearest UpSampling2D: each row of
    a (1, 256, 128, 1, 16) map twice) as a block copy, the input viewed (outer, inner) and
    the output (outer, repeats, inner) (:func:`~eqsat.lowering.cpu_kernels.repeat_blocks`):
    160 -> 100 us, U-Net's two 234 -> 134. Other repeats stay with the reference."""
    x, out = node.inputs[0], node.outputs[0]
    repeats = node.inputs[1]
    assert x is not None and out is not None
    if repeats is None or repeats.const is None or x.rank == 0 or x.size == 0:
        return None
    counts = [int(r) for r in np.asarray(repeats.const).reshape(-1)]
    if len(counts) != x.rank or out.shape != tuple(
        d * r for d, r in zip(x.shape, counts, strict=True)
    ):
        return None
    axes = [a for a, r in enumerate(counts) if r != 1]
    if len(axes) != 1:
        return _view(lowering, node) if not axes else None
    axis = axes[0]
    # Output index k * extent + j along the axis: repeat k of the input's whole sub-block.
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis:], dtype=np.int64))
    blocks = (outer, counts[axis], inner)
    xs, o = lowering.slot(x), lowering.slot(out)
    kernel = cpu_kernels.repeat_blocks

    def run(env: Env) -> None:
        source = np.ascontiguousarray(env[xs]).reshape(outer, inner)
        target = env[o]
        if target.flags.c_contiguous:
            kernel(source, target.reshape(blocks))
        else:  # a view into another buffer: reshaping it would copy
            whole = np.empty(blocks, target.dtype)
            kernel(source, whole)
            np.copyto(target, whole.reshape(target.shape))

    return Step(run, Usage([xs], [o], True), "copy", node.name)


def _concat(lowering: Lowering, node: Node) -> Step | None:
    out = node.outputs[0]
    assert out is not None
    if any(v is None for v in node.inputs) or out.rank == 0:
        return None
    axis = int(node.attrs["axis"]) % out.rank
    inputs = [v for v in node.inputs if v is not None]
    items = [(v.const, None) if v.const is not None else (None, lowering.slot(v)) for v in inputs]
    o = lowering.slot(out)
    contiguous = all(d == 1 for d in out.shape[:axis])
    # Runs of parts that are all of one Split's outputs, in order: (first, count, split input).
    groups = _split_groups(inputs, axis, out) if contiguous else []
    group_slots = [(first, count, lowering.slot(x)) for first, count, x in groups]

    def run(env: Env) -> None:
        parts = [c if c is not None else env[s] for c, s in items]
        np.concatenate(parts, axis=axis, out=env[o])

    def bind(arrays: dict[int, np.ndarray]) -> StepFn | None:
        # A planned output: one copy per part into its fixed slice (np.concatenate costs ~3 us
        # even for two rows of 128 floats); parts in planned buffers are fixed too, and parts
        # the memory plan placed in their slice already (see ``Usage.concat``) need no copy,
        # nor do the pieces of a split input placed there.
        fixed = arrays.get(o)
        if fixed is None:
            return None
        bounds = np.cumsum([0] + [v.shape[axis] for v in inputs])
        lead = (slice(None),) * axis

        def dst(lo: int, hi: int) -> np.ndarray:
            return fixed[(*lead, slice(int(bounds[lo]), int(bounds[hi])))]

        placed = set()
        for first, count, x in group_slots:
            if x in arrays and _same_memory(dst(first, first + count), arrays[x]):
                placed.update(range(first, first + count))
        copyto = np.copyto
        static, dynamic = [], []
        for k, (const, slot) in enumerate(items):
            target = dst(k, k + 1)
            if const is not None:
                static.append((target, const))
            elif k in placed:
                continue
            elif slot in arrays:
                if not _same_memory(target, arrays[slot]):
                    static.append((target, arrays[slot]))
            else:
                dynamic.append((target, slot))
        static_t, dynamic_t = tuple(static), tuple(dynamic)
        if not static_t and not dynamic_t:
            return _nothing

        def run_bound(env: Env) -> None:
            for target, src in static_t:
                copyto(target, src)
            for target, slot in dynamic_t:
                copyto(target, env[slot])

        return run_bound

    reads = [s for _, s in items if s is not None]
    usage = Usage(reads, [o], True)
    if contiguous:
        # Each part is one contiguous run of the output: offer the plan to place it there, and
        # a split input where its pieces go (the split's outputs are its views or copies: once
        # it sits there, they are in place too). The extra read keeps nothing longer alive.
        starts = np.cumsum([0] + [v.size for v in inputs])
        usage.concat = [int(starts[k]) for k, (_, s) in enumerate(items) if s is not None]
        for first, _, x in group_slots:
            usage.reads.append(x)
            usage.concat.append(int(starts[first]))
    return Step(run, usage, "copy", node.name, bind)


def _split_groups(inputs: list[Value], axis: int, out: Value) -> list[tuple[int, int, Value]]:
    """Runs ``inputs[first:first + count]`` that are all outputs of one Split along ``axis``, in
    order, with its input ``x`` (non-constant, of the output's dtype)."""
    groups = []
    k = 0
    while k < len(inputs):
        node = inputs[k].producer
        split = node is not None and node.op == "Split" and bool(node.inputs)
        outputs = node.outputs if split else []
        x = node.inputs[0] if split else None
        count = len(outputs)
        if (
            x is not None
            and count > 0
            and x.const is None
            and x.dtype == out.dtype
            and x.rank == out.rank
            and int(node.attrs.get("axis", 0)) % x.rank == axis
            and outputs[0] is inputs[k]
            and all(v is not None for v in outputs)
            and len(inputs) >= k + count
            and all(a is b for a, b in zip(outputs, inputs[k : k + count], strict=True))
            and sum(v.shape[axis] for v in outputs) == x.shape[axis]
        ):
            groups.append((k, count, x))
            k += count
        else:
            k += 1
    return groups


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``b`` is exactly the elements of ``a`` (a part the plan placed in its slice)."""
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.flags.c_contiguous
        and b.flags.c_contiguous
    )


def _nothing(env: Env) -> None:
    """A concat whose parts were all written in place by their producers."""


def _reduce_extreme(lowering: Lowering, node: Node) -> Step | None:
    return cpu_moves.reduce_extreme(lowering, node) or cpu_small.build_step(lowering, node)


def _attention(lowering: Lowering, node: Node) -> Step | None:
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    assert q is not None and k is not None and v is not None and out is not None
    if out.dtype not in FLOATS or not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        return None
    if mask is not None and mask.dtype != out.dtype:
        return None
    lead = q.shape[:-2]
    batch = int(np.prod(lead, dtype=np.int64))
    s_, d_ = q.shape[-2:]
    l_, dv = v.shape[-2:]
    scores = np.empty((batch, s_, l_), out.dtype)
    scale = float(node.attrs["scale"])
    nan_to_zero = bool(node.attrs.get("nan_to_zero", 0))
    rank = out.rank
    if mask is None:
        mask_rows = np.zeros((1, 1, 1), out.dtype)
        mask_index = np.zeros(batch, np.int64)
        mask_const = mask_rows
        m_slot = None
        mask_shape = (1, 1, 1)
    else:
        padded = (1,) * (rank - mask.rank) + mask.shape
        mask_lead = padded[:-2]
        groups = int(np.prod(mask_lead, dtype=np.int64))
        ids = np.arange(groups, dtype=np.int64).reshape(mask_lead)
        mask_index = np.ascontiguousarray(np.broadcast_to(ids, lead).reshape(-1))
        mask_shape = (groups, padded[-2], padded[-1])
        mask_const = None if mask.const is None else mask.const.reshape(mask_shape)
        m_slot = None if mask.const is not None else lowering.slot(mask)
    slots = [None if x.const is not None else lowering.slot(x) for x in (q, k, v)]
    consts = [x.const for x in (q, k, v)]
    o = lowering.slot(out)
    kernel = (
        cpu_kernels.masked_softmax_rows_f32
        if out.dtype == np.float32
        else cpu_kernels.masked_softmax_rows
    )
    # Both products on the tiles where they take them (cpu_gemm.tiles_matmul), Q K^T with K
    # transposed into scratch first (the tiles read rows of b): a transformer layer's 4 heads of
    # 128 x 64 on one thread, 191 -> 131 us.
    from eqsat.lowering import cpu_gemm

    matmul = cpu_gemm.tiles_matmul
    k_rows = np.empty((batch, d_, l_), out.dtype)

    count = lowering.split(2.0 * batch * s_ * l_ * (d_ + dv))
    ranges = cpu_threads.chunks(batch, count) if count > 1 and batch > 1 else []
    pool = lowering.pool
    # On the pool, the heads' ranges in a native lane where the tiles take both products (their
    # Python chunks took the GIL around four calls each and ran no faster than one thread).
    spread = None
    both = cpu_gemm.tiles_take(out.dtype, d_, l_) and cpu_gemm.tiles_take(out.dtype, l_, dv)
    if ranges and pool is not None and both:
        spread = cpu_lanes.runner(pool, len(ranges))
        lane = _attention_lane(out.dtype)
        spans = np.array(ranges, np.int64).reshape(-1, 2)

    def operand(env: Env, i: int, shape: tuple[int, ...]) -> np.ndarray:
        data = consts[i] if consts[i] is not None else env[slots[i]]  # type: ignore[index]
        return np.ascontiguousarray(data).reshape(shape)

    def run(env: Env) -> None:
        qs = operand(env, 0, (batch, s_, d_))
        ks = operand(env, 1, (batch, l_, d_))
        vs = operand(env, 2, (batch, l_, dv))
        m = mask_const if m_slot is None else np.ascontiguousarray(env[m_slot]).reshape(mask_shape)
        result = env[o].reshape(batch, s_, dv)
        if spread is not None:
            spread(
                lane, spans, qs, ks, vs, k_rows, scores, m, mask_index, scale, nan_to_zero, result
            )
            return
        if ranges and pool is not None:

            def part(r: tuple[int, int], worker: int) -> None:
                a, b = r
                sc, kt = scores[a:b], k_rows[a:b]
                np.copyto(kt, ks[a:b].transpose(0, 2, 1))
                matmul(qs[a:b], kt, sc)
                kernel(sc, m, mask_index[a:b], scale, nan_to_zero)
                matmul(sc, vs[a:b], result[a:b])

            pool.map(part, ranges, whole=lambda: part((0, batch), 0))
            return
        np.copyto(k_rows, ks.transpose(0, 2, 1))
        matmul(qs, k_rows, scores)
        kernel(scores, m, mask_index, scale, nan_to_zero)
        matmul(scores, vs, result)

    reads = [s for s in (*slots, m_slot) if s is not None]
    return Step(run, Usage(reads, [o], True), "attention", node.name)


@functools.cache
def _attention_lane(dtype: np.dtype) -> Any:
    """The lane of an Attention step's ranges of heads: K transposed, Q K^T and P V on the tiles,
    the masked softmax between them (the same calls as the step on one thread)."""
    from eqsat.lowering import kernel_cache

    softmax = "masked_softmax_rows_f32" if np.dtype(dtype) == np.float32 else "masked_softmax_rows"
    source = [
        "from numba import njit",
        *cpu_lanes.imports(),
        "from eqsat.lowering.cpu_microkernel import batched_gemm",
        f"from eqsat.lowering.cpu_kernels import {softmax} as softmax",
        *cpu_lanes.lane(
            "lane_attention",
            "spans, qs, ks, vs, k_rows, scores, m, mask_index, scale, nan_to_zero, result",
            "spans.shape[0]", [],
            [
                "a, b = spans[j, 0], spans[j, 1]",
                "for h in range(a, b):",  # (explicit loops: a slice assignment may copy first)
                "    src, dst = ks[h], k_rows[h]",
                "    for r in range(src.shape[0]):",
                "        for c in range(src.shape[1]):",
                "            dst[c, r] = src[r, c]",
                "batched_gemm(qs[a:b], k_rows[a:b], scores[a:b])",
                "softmax(scores[a:b], m, mask_index[a:b], scale, nan_to_zero)",
                "batched_gemm(scores[a:b], vs[a:b], result[a:b])",
            ],
        ),
    ]  # fmt: skip
    return kernel_cache.load("\n".join(source) + "\n").lane_attention


def _pool(lowering: Lowering, node: Node) -> Step | None:
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    # An 8-bit integer MaxPool (a quantized model's, between QLinearConvs) runs the float32
    # kernel on a float32 copy, exact for those integers: it ran on the reference.
    widen = node.op == "MaxPool" and out.dtype in (np.dtype(np.int8), np.dtype(np.uint8))
    if (
        x.rank not in (3, 4)
        or (out.dtype not in FLOATS and not widen)
        or any(v is not None for v in node.outputs[1:])
    ):
        return None
    attrs = node.attrs
    kernel_shape = tuple(int(k) for k in attrs["kernel_shape"])
    window = window_geometry(x.shape[2:], kernel_shape, attrs, ceil_mode=bool(attrs["ceil_mode"]))
    if tuple(window.out) != out.shape[2:]:
        return None
    spatial = x.shape[2:]
    if (
        node.op == "MaxPool"
        and all(o == 1 for o in window.out)
        and not any(window.begin)
        and all(d == 1 for d in window.dilations)
        and all(k >= e for k, e in zip(window.kernel, spatial, strict=True))
        and x.size > 0
    ):
        # One window over each whole plane (a text CNN's max over time, F.max_pool1d(x,
        # x.shape[2])): numpy's row max, like GlobalMaxPool. The unrolled kernels stop at
        # MAX_POOL_TAPS taps and the general one visits every tap of every plane (16x100 rows
        # of 49: 280 us).
        return cpu_moves.global_max_pool(lowering, node)
    # A 1-D pool (N, C, L) is the 2-D kernel's over planes one row high: (N, C, 1, L).
    lift: tuple[int, ...] = (1,) if x.rank == 3 else ()
    # (Indexing, not reshape: a view of the output even where its buffer is a slice of another.)
    rows: tuple[Any, ...] = (slice(None), slice(None), None) if lift else ()
    out_2d = out.shape[:2] + lift + out.shape[2:]
    kernel_2d, strides_2d = lift + tuple(window.kernel), lift + tuple(window.strides)
    dilations_2d, begin_2d = lift + tuple(window.dilations), (0,) * len(lift) + tuple(window.begin)
    geometry = (*kernel_2d, *strides_2d, *dilations_2d, *begin_2d)
    work = np.dtype(np.float32) if widen else out.dtype
    form = (work, kernel_2d, strides_2d, dilations_2d, begin_2d)
    xs, o = lowering.slot(x), lowering.slot(out)
    extra: tuple[np.ndarray, ...] = ()
    # Max pools whose outputs are small planes take the depthwise kernels' channel lanes
    # (MaxPool below); on bigger planes the pool's own row passes are as fast or faster than
    # the plane kernel's max mode (64x147x147, 3x3 stride 2: 255 against 312 us).
    taps = int(np.prod(window.kernel))
    if (
        node.op == "MaxPool"
        and not widen
        and x.rank == 4
        and cpu_depthwise_lanes.suits(out.dtype, tuple(window.out), taps)
    ):
        return _as_depthwise(lowering, node, window, "max")
    if node.op == "MaxPool":
        try:
            kernel = cpu_depthwise.load_max_pool(*form)
            lowering.kernels += 1
        except codegen.Unsupported:  # windows too wide to unroll

            def kernel(data: np.ndarray, result: np.ndarray) -> None:
                cpu_kernels.max_pool2d(data, result, *geometry)

    else:
        # The divisor per output position, as the reference counts it (separable per axis).
        include = bool(attrs["count_include_pad"])
        count = np.ones((), np.float64)
        for a, size in enumerate(x.shape[2:]):
            lo, hi = (-window.begin[a], size + window.end[a]) if include else (0, size)
            starts = np.arange(window.out[a]) * window.strides[a] - window.begin[a]
            pos = starts[:, None] + np.arange(window.kernel[a]) * window.dilations[a]
            count = np.multiply.outer(count, ((pos >= lo) & (pos < hi)).sum(axis=1))
        if x.rank == 4 and count.size and np.all(count == count.flat[0]):
            return _as_depthwise(lowering, node, window, "sum", float(count.flat[0]))
        # Windows of several divisors: the channel lanes, then the divisors in a pass of their
        # own (on large planes the pool's own kernel, 64x56x56 3x3: 70 us against 84).
        lanes = cpu_depthwise_lanes.suits(out.dtype, tuple(window.out), taps)
        if x.rank == 4 and count.size and lanes:
            return _as_depthwise(lowering, node, window, "sum", count)
        inverse = np.ascontiguousarray(1.0 / count, out.dtype).reshape(out_2d[2:])
        extra = (inverse,)
        try:
            kernel = cpu_depthwise.load_average_pool(*form)
            lowering.kernels += 1
        except codegen.Unsupported:

            def kernel(data: np.ndarray, result: np.ndarray, inv: np.ndarray) -> None:
                cpu_kernels.average_pool2d(data, result, inv, *geometry)

    # With threads, (image, channel block) chunks of the pool: planes are independent.
    n_, c_ = x.shape[:2]
    count_ = lowering.split(float(x.size + out.size), cpu.PARALLEL_ELEMENTS, cpu.GRAIN_ELEMENTS)
    blocks = cpu_threads.chunks(c_, -(-count_ // n_)) if count_ > 1 else []
    parts = [(i, c0, c1) for i in range(n_) for c0, c1 in blocks]
    pool = lowering.pool if len(parts) > 1 else None

    # The float32 copies of an integer pool's input and output, made once.
    wide = (
        (np.empty(x.shape[:2] + lift + x.shape[2:], work), np.empty(out_2d, work)) if widen else ()
    )

    def run(env: Env) -> None:
        if widen:
            np.copyto(wide[0], env[xs][rows])
            kernel(*wide, *extra)
            np.copyto(env[o][rows], wide[1], casting="unsafe")
            return
        data = np.ascontiguousarray(env[xs][rows])
        result = env[o][rows]
        if pool is not None:

            def part(p: tuple[int, int, int], worker: int) -> None:
                i, c0, c1 = p
                kernel(data[i : i + 1, c0:c1], result[i : i + 1, c0:c1], *extra)

            pool.map(part, parts, whole=lambda: kernel(data, result, *extra))
            return
        kernel(data, result, *extra)

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


def _as_depthwise(
    lowering: Lowering, node: Node, window: Any, reduce: str, divisor: Any = 1.0
) -> Step:
    """A pool as the depthwise kernels over the same windows: ``reduce="max"`` a MaxPool (their
    max mode, padding -inf); ``"sum"`` an AveragePool, unit taps times ``1 / divisor``: one
    number where every window has the same divisor (no padding, or padding counted), fused
    into the kernel, else the divisor per output position (OH, OW), a pass of its own (padding
    not counted: PoolFormer's 3x3 token mixer, its four pools on small planes 190 -> 130 us
    against the pool's own kernel). The depthwise kernels
    fill vectors across small planes (channels as the lanes) and run in lanes on the pool,
    where the pool's own kernel went plane by plane on one thread: one thread, 3x3, average
    over 768 planes of 17x17 149 -> 104 us (onnxruntime 68), max stride 2 on 768x17x17
    134 -> 64 us (onnxruntime 39)."""
    from eqsat.lowering import cpu_depthwise_step

    x, out = node.inputs[0], node.outputs[0]
    assert x is not None and out is not None
    c_ = x.shape[1]
    ones = np.ones((c_, 1, *window.kernel), out.dtype)
    taps = Value(f"{node.name}/taps", ones.shape, out.dtype, const=ones)
    attrs = {
        "auto_pad": "NOTSET", "dilations": list(window.dilations), "group": c_,
        "kernel_shape": list(window.kernel), "pads": [*window.begin, *window.end],
        "strides": list(window.strides),
    }  # fmt: skip
    extras = []
    if reduce == "sum":
        scale = np.asarray(1.0 / np.asarray(divisor, np.float64), out.dtype)
        scale = scale.reshape((1, 1) * (scale.ndim > 0) + scale.shape)
        extras.append(Value(f"{node.name}/inverse", scale.shape, out.dtype, const=scale))
        attrs["epilogue"] = "({0} * {1})"
    conv = Node("Conv", [x, taps], [out], attrs, node.name)
    bias = np.zeros(c_, out.dtype)
    return cpu_depthwise_step.build(lowering, conv, x, extras, bias, window, reduce)


_BUILDERS: dict[str, Any] = {
    "Reshape": _view,
    "Flatten": _view,
    "Squeeze": _view,
    "Unsqueeze": _view,
    "Identity": _view,
    "Transpose": _transpose,
    "Concat": _concat,
    "Tile": _tile,
    "ReduceMax": _reduce_extreme,
    "ReduceMin": _reduce_extreme,
    "Attention": _attention,
    "MaxPool": _pool,
    "AveragePool": _pool,
}

__all__ = ["build_step"]
