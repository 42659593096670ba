"""CPU steps for the recurrent layers LSTM, GRU and RNN: one generated Numba kernel per layer.

The numpy reference (:mod:`eqsat.ops.recurrent`) spends ~150 us on a single LSTM step of hidden
size 128, almost all of it in numpy call overhead. Here a whole layer is one call of a kernel
generated for its form (op, activations with their alpha/beta, GRU's linear_before_reset,
dtype) and cached on disk like the elementwise kernels:

* the input projection of every step and direction is one product ``X (steps*batch, I) @ W^T``;
* each step is one small product of the hidden state with ``R^T`` (GRU without
  linear_before_reset: two, since its candidate gate multiplies the reset gate in before the
  matmul) and one fused loop over the gates, whose activations are inlined from the scalar
  language of :mod:`eqsat.lowering.codegen` (float32 uses its fast vectorizable exp/tanh);
* products of a few rows (:data:`SMALL_ROWS`) run on a loop of the kernel, larger ones on BLAS
  (the input projection on numpy's, whose threads the executable pins);
* LSTM and RNN with a larger batch step in Python instead: per step and direction one product
  ``[h x_t 1] @ [R^T; W^T; bias]`` on numpy's BLAS (a third faster than Numba's ``np.dot``,
  which calls scipy's), then one kernel call for the gates of every direction, LSTM's as one
  vectorized loop per gate, which also copies the next step's inputs next to ``h``. Folding the
  input projection and the biases into the step's product saves the projection's
  (steps*batch, directions*gates) buffer, which did not fit the caches, and a pass over the
  gates (oskut_scads' 48 x 224 layer: 32 ms to 18, then to 17 with the fold);
* ``sequence_lens``, initial states, both layouts and all directions follow the reference: a
  batch row past its length keeps its state and gets zero ``Y`` rows, the reverse direction
  starts at its last valid step.

Weights are transposed, and the two biases added, once at compile time when they are constants
(per run otherwise). float16 layers compute in float32 and round once at the end, as the
reference does. Empty layers (a zero dimension) are left to the reference.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from eqsat.lowering import cpu_microkernel, kernel_cache
from eqsat.lowering.cpu import Env, Lowering, Step, StepFn
from eqsat.lowering.cpu_recurrent_source import SMALL_ROWS, activation_forms, kernel_source
from eqsat.lowering.memory import Usage

from eqsat.errors import InputError
from eqsat.ir import Node, Value
from eqsat.ops import recurrent

OPS = frozenset(recurrent.SPECS)


# ------------------------------------------------------------------ weights
def prepare_weights(
    op: str,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    p: np.ndarray | None,
    work: np.dtype,
    linear_before_reset: bool,
) -> tuple[np.ndarray, ...]:
    """(wt, bias, rt, rt2, rbh, p) as the kernel takes them, from ONNX's W, R, B and P."""
    num_dir, gates, size = w.shape
    hidden = r.shape[2]
    w = np.asarray(w, work)
    r = np.asarray(r, work)
    # Copies throughout: writable arrays, so that every layer's kernel has the same signature.
    wt = np.array(w.transpose(2, 0, 1).reshape(size, num_dir * gates), order="C")
    if b is None:
        wb = rb = np.zeros((num_dir, gates), work)
    else:
        b = np.asarray(b, work)
        wb, rb = b[:, :gates], b[:, gates:]
    bias = np.array(wb + rb, order="C")
    rbh = np.zeros((num_dir, hidden), work)
    if op == "GRU":
        rt = np.array(r[:, : 2 * hidden].transpose(0, 2, 1), order="C")
        rt2 = np.array(r[:, 2 * hidden :].transpose(0, 2, 1), order="C")
        if linear_before_reset:
            # The candidate's recurrent bias sits inside the reset product: kept apart.
            bias[:, 2 * hidden :] = wb[:, 2 * hidden :]
            rbh = np.array(rb[:, 2 * hidden :], order="C")
    else:
        rt = np.array(r.transpose(0, 2, 1), order="C")
        rt2 = np.zeros((1, 1, 1), work)
    peep = np.zeros((num_dir, 3 * hidden), work) if p is None else np.array(p, work, order="C")
    return wt, bias, rt, rt2, rbh, peep


def stacked_weights(wt: np.ndarray, bias: np.ndarray, rt: np.ndarray) -> np.ndarray:
    """Per direction ``[R^T; W^T; bias]`` (hidden + input_size + 1, gates): the stepped path's
    product of ``[h x_t 1]`` with it is every gate's pre-activation but the peepholes."""
    num_dir, hidden, gates = rt.shape
    size = wt.shape[0]
    stacked = np.empty((num_dir, hidden + size + 1, gates), rt.dtype)
    stacked[:, :hidden] = rt
    stacked[:, hidden : hidden + size] = wt.reshape(size, num_dir, gates).transpose(1, 0, 2)
    stacked[:, -1] = bias
    return stacked


# ------------------------------------------------------------------ step
def build_step(lowering: Lowering, node: Node) -> Step | None:
    if node.op not in OPS:
        return None
    spec = recurrent.SPECS[node.op]
    attrs = node.attrs
    x = node.inputs[0]
    w, r = node.inputs[1], node.inputs[2]
    assert x is not None and w is not None and r is not None
    if x.const is not None or min(*x.shape, *w.shape, *r.shape) == 0:
        return None
    return _layer_step(lowering, node, spec, activation_forms(node.op, attrs))


def _layer_step(
    lowering: Lowering, node: Node, spec: Any, forms: list[list[tuple[str, float, float]]]
) -> Step:
    attrs = node.attrs
    op = node.op
    get = {name: spec.input(node.inputs, name) for name in spec.inputs}
    x: Value = get["X"]
    w: Value = get["W"]
    r: Value = get["R"]
    dtype = x.dtype
    work = np.dtype(np.float32) if dtype == np.float16 else dtype
    layout = int(attrs["layout"])
    num_dir, gates, size = w.shape
    hidden = r.shape[2]
    seq, batch = (x.shape[0], x.shape[1]) if layout == 0 else (x.shape[1], x.shape[0])
    rows = seq * batch
    lbr = bool(attrs.get("linear_before_reset", 0))
    lim = work.type(np.inf if attrs["clip"] is None else float(attrs["clip"]))
    tied = bool(attrs.get("input_forget", 0))
    # One kernel for all directions, or one per direction when their activations differ.
    groups = (
        [(forms[0], 0, num_dir)]
        if forms.count(forms[0]) == num_dir
        else [(acts, d, d + 1) for d, acts in enumerate(forms)]
    )
    kernels = []
    modules = []
    for acts, d0, d1 in groups:
        source = kernel_source(op, acts, work, lbr, blas=batch > SMALL_ROWS)
        module = kernel_cache.load(source)
        kernels.append((module.kernel, d0, d1))
        modules.append((module, d0, d1))
        lowering.kernels += 1
    # LSTM and RNN with a large batch step in Python around numpy's BLAS (see _STEPS).
    stepped = op != "GRU" and batch > SMALL_ROWS
    # The two directions of a layer are independent: with threads, each runs its whole sequence
    # as one chunk of the pool once the layer is big enough (its products' FLOPs; the stepped
    # path's fold in the input projection). oskut_scads' 48-row layer took ~13 ms of products
    # per direction; ddddocr's one-row 512-wide layer streams 4 MiB of R^T per direction and step.
    flops = 2.0 * seq * batch * (hidden + (size + 1 if stepped else 0)) * gates * num_dir
    pool = lowering.pool if num_dir == 2 and lowering.split(flops, grain=flops / 2) > 1 else None
    directions = [(module, d) for module, d0, d1 in modules for d in range(d0, d1)]
    direction_items = list(range(len(directions)))

    weight_names = ("W", "R", "B", "P")
    weights: list[Value | None] = [get.get(n) for n in weight_names]
    dynamic_weights = [v for v in weights if v is not None and v.const is None]

    def prepare(arrays: list[np.ndarray | None]) -> tuple[np.ndarray, ...]:
        wa, ra, ba, pa = arrays
        assert wa is not None and ra is not None
        return prepare_weights(op, wa, ra, ba, pa, work, lbr)

    fixed_weights = (
        None if dynamic_weights else prepare([None if v is None else v.const for v in weights])
    )
    weight_slots = [None if v is None or v.const is not None else lowering.slot(v) for v in weights]

    state = (num_dir, batch, hidden) if layout == 0 else (batch, num_dir, hidden)
    zeros_state = np.zeros(state, work)
    # Inputs fetched per run unless constant: (kernel argument, value, shape, dtype).
    inputs: list[tuple[int, Value | None, tuple[int, ...], np.dtype, np.ndarray]] = [
        (0, x, (rows, size), work, np.empty(0, work)),
        (7, get["initial_h"], state, work, zeros_state),
        (8, get.get("initial_c"), state, work, zeros_state),
        (9, get["sequence_lens"], (batch,), np.dtype(np.int64), np.full(batch, seq, np.int64)),
    ]
    outputs = list(node.outputs) + [None] * (3 - len(node.outputs))
    out_shapes = [
        (seq, num_dir, batch, hidden) if layout == 0 else (batch, seq, num_dir, hidden),
        state,
        state,
    ]
    gate_cols = 2 * hidden if op == "GRU" else gates
    scratch = [
        # gx: the input projection (the stepped path folds it into each step's product)
        np.empty((1, 1) if stepped else (rows, num_dir * gates), work),
        np.empty((batch, hidden), work),  # h
        np.empty((batch, hidden), work),  # c (GRU: the update gate)
        np.empty((batch, gate_cols), work),  # g1
        np.empty((batch, hidden), work),  # g2
        np.empty((batch, hidden), work),  # rh
    ]
    steps_scratch = [
        np.empty((num_dir, batch, hidden + size + 1), work),  # [h x_t 1]
        np.empty((num_dir, batch, hidden), work),  # c
        np.empty((num_dir, batch, gates), work),  # the gates' pre-activations
    ]
    project = rows <= SMALL_ROWS or stepped
    reverse = attrs["direction"] == "reverse"
    half = dtype != work
    x32 = np.empty((rows, size), work) if half else None
    out32 = [
        None if v is None or not half else np.empty(shape, work)
        for v, shape in zip(outputs, out_shapes, strict=True)
    ]
    dummies = [np.zeros((1,) * len(shape), work) for shape in out_shapes]
    flags = tuple(v is not None for v in outputs)
    calls = tuple(
        (kernel, (seq, batch, layout, reverse, project and k == 0, *flags, d0, d1, lim, tied))
        for k, (kernel, d0, d1) in enumerate(kernels)
    )
    # Unstepped on the pool: each direction's kernel on scratch of its own, after a call that
    # only projects the inputs when the kernel does that.
    own_scratch = (
        [scratch[1:], [np.empty_like(a) for a in scratch[1:]]]
        if pool is not None and not stepped
        else []
    )
    project_tail = (seq, batch, layout, reverse, True, *flags, 0, 0, lim, tied) if project else None

    in_slots = [(k, lowering.slot(v), shape, dt) for k, v, shape, dt, _ in inputs if _dyn(v)]
    out_slots = [None if v is None else lowering.slot(v) for v in outputs]
    reads = [s for _, s, _, _ in in_slots] + [s for s in weight_slots if s is not None]
    writes = [s for s in out_slots if s is not None]
    name = node.name

    def make_run(arrays: dict[int, np.ndarray]) -> StepFn:
        base: list[Any] = [None] * 19
        for k, v, shape, dt, default in inputs:
            if v is None:
                base[k] = default
            elif v.const is not None:
                base[k] = np.array(v.const, dt, order="C").reshape(shape)
        if fixed_weights is not None:
            base[1], base[2], base[3], base[4], base[5], base[6] = fixed_weights
            if stepped:
                base[1] = stacked_weights(base[1], base[2], base[3])
        base[13:19] = scratch
        fetch_in = []
        for k, slot, shape, dt in in_slots:
            if k == 0 and half:
                fetch_in.append((k, slot, shape, None))
                base[k] = x32
            elif slot in arrays and arrays[slot].dtype == dt:
                base[k] = arrays[slot].reshape(shape)  # a planned buffer: the same every run
            else:
                fetch_in.append((k, slot, shape, dt))
        fetch_out = []
        copy_back = []
        for i, slot in enumerate(out_slots):
            if slot is None:
                base[10 + i] = dummies[i]
            elif half:
                base[10 + i] = out32[i]
                copy_back.append((slot, out32[i]))
            elif slot in arrays:
                base[10 + i] = arrays[slot]
            else:
                fetch_out.append((10 + i, slot))
        base_t = tuple(base)
        # Compile now (or load from the cache) rather than on the first run: the arguments a run
        # fetches are C-contiguous, writable arrays of these shapes and dtypes.
        sample = list(base_t)
        for k, _, shape, dt in fetch_in:
            sample[k] = np.empty(shape, work if dt is None else dt)
        for k, _ in fetch_out:
            sample[k] = np.empty(out_shapes[k - 10], work)
        if fixed_weights is None:
            sample[1:7] = prepare([None if v is None else np.zeros(v.shape, work) for v in weights])
            if stepped:
                sample[1] = stacked_weights(sample[1], sample[2], sample[3])
        if stepped:
            _compile_steps(modules, sample, steps_scratch, seq, layout, lim, tied)
        else:
            for kernel, tail in calls:
                kernel.compile(tuple(numba.typeof(a) for a in (*sample, *tail)))
        gx = scratch[0]
        ascontiguous, copyto = np.ascontiguousarray, np.copyto
        hs, cs, gs = steps_scratch
        has_y, has_yh, has_yc = flags
        dot = step_product(work)

        def run(env: Env) -> None:
            args = list(base_t)
            for k, slot, shape, dt in fetch_in:
                if dt is None:
                    copyto(x32, env[slot].reshape(shape))
                else:
                    args[k] = ascontiguous(env[slot], dt).reshape(shape)
            for k, slot in fetch_out:
                args[k] = env[slot]
            if fixed_weights is None:
                arrays_now = [
                    None if v is None else (v.const if s is None else env[s])
                    for v, s in zip(weights, weight_slots, strict=True)
                ]
                args[1:7] = prepare(arrays_now)
                if stepped:
                    args[1] = stacked_weights(args[1], args[2], args[3])
            if not project:  # the AVX-512 tiles where the machine has them (see step_product)
                dot(args[0], args[1], gx)
            bad = -1
            if stepped:
                wr, lengths, x = args[1], args[9], args[0]
                if not x.flags.writeable:  # a read-only feed would need a kernel of its own
                    x = x.copy()
                step_args = (x, args[2], args[6], lengths, args[10], hs, cs, gs)
            if stepped and pool is not None:
                bad = _directions_on_pool(pool, directions, direction_items, args, step_args, dot,
                                          (seq, layout, reverse, has_y, has_yh, has_yc, lim, tied))  # fmt: skip
            elif stepped:
                for module, d0, d1 in modules:
                    begun = module.begin(
                        x, args[7], args[8], lengths, hs, cs, seq, layout, reverse, d0, d1
                    )
                    bad = max(bad, begun)
                if bad < 0:
                    for s in range(seq):
                        for d in range(num_dir):
                            dot(hs[d], wr[d], gs[d])
                        for module, d0, d1 in modules:
                            module.cell_step(
                                *step_args, s, seq, layout, reverse, has_y, d0, d1, lim, tied
                            )
                    for module, d0, d1 in modules:
                        module.end(args[11], args[12], hs, cs, layout, has_yh, has_yc, d0, d1)
            elif pool is not None:
                bad = _layer_directions_on_pool(pool, directions, direction_items, args,
                                                own_scratch, project_tail,
                                                (seq, batch, layout, reverse, flags, lim, tied))  # fmt: skip
            else:
                for kernel, tail in calls:
                    bad = max(bad, kernel(*args, *tail))
            if bad >= 0:
                lengths = args[9]
                raise InputError(
                    f"node {name!r} ({op}): sequence_lens {lengths.tolist()} must lie in [0, {seq}]"
                )
            for slot, result in copy_back:
                copyto(env[slot], result)

        return run

    unbound: list[StepFn] = []

    def run(env: Env) -> None:
        if not unbound:
            unbound.append(make_run({}))
        unbound[0](env)

    return Step(run, Usage(reads, writes, True), "kernel", node.name, make_run)


def step_product(dtype: np.dtype) -> Any:
    """``product(h, w, out)``: out = h @ w for a stepped layer's per-step product. The AVX-512
    register tiles where the machine has them (oskut_scads' 48 x (224 + 449) by 896 steps on a
    Zen 5 core: OpenBLAS runs its AVX2 kernels there), else numpy's BLAS."""
    if cpu_microkernel.WIDE_TILES and np.dtype(dtype) in (np.float32, np.float64):
        return cpu_microkernel.conv_matmul(np.dtype(dtype), patches=False)
    return np.dot


def _directions_on_pool(pool: Any, directions: list[tuple[Any, int]], items: list[int],
                        args: list[Any], step_args: tuple[Any, ...], dot: Any,
                        form: tuple[Any, ...]) -> int:  # fmt: skip
    """The stepped path with each direction's whole sequence a chunk of ``pool``: its
    ``begin``, every step's product (``dot``: :func:`step_product`'s) and cell, its ``end``.
    ``step_args`` are the cells' leading arguments (x, ..., h, c, gates). Returns the first bad
    batch row of ``sequence_lens`` (-1: none)."""
    seq, layout, reverse, has_y, has_yh, has_yc, lim, tied = form
    x, lengths, hs, cs, gs = step_args[0], step_args[3], *step_args[5:]
    wr = args[1]
    begun = [-1] * len(directions)

    def direction(i: int, worker: int) -> None:
        module, d = directions[i]
        begun[i] = module.begin(
            x, args[7], args[8], lengths, hs, cs, seq, layout, reverse, d, d + 1
        )
        if begun[i] >= 0:
            return
        h, w, g = hs[d], wr[d], gs[d]
        cell = module.cell_step
        for s in range(seq):
            dot(h, w, g)
            cell(*step_args, s, seq, layout, reverse, has_y, d, d + 1, lim, tied)
        module.end(args[11], args[12], hs, cs, layout, has_yh, has_yc, d, d + 1)

    pool.map(direction, items)
    return max(begun)


def _layer_directions_on_pool(pool: Any, directions: list[tuple[Any, int]], items: list[int],
                              args: list[Any], own_scratch: list[list[np.ndarray]],
                              project_tail: tuple[Any, ...] | None, form: tuple[Any, ...]) -> int:  # fmt: skip
    """The unstepped layer kernel once per direction, each a chunk of ``pool`` with its own h,
    c and gate scratch (arguments 14-18), after a call that only projects the inputs (its
    direction range empty) when the kernel does the projection. Returns the first bad batch row
    of ``sequence_lens`` (-1: none)."""
    seq, batch, layout, reverse, flags, lim, tied = form
    if project_tail is not None:
        bad = directions[0][0].kernel(*args, *project_tail)
        if bad >= 0:
            return int(bad)
    results = [-1] * len(directions)

    def direction(i: int, worker: int) -> None:
        module, d = directions[i]
        mine = list(args)
        mine[14:19] = own_scratch[i]
        tail = (seq, batch, layout, reverse, False, *flags, d, d + 1, lim, tied)
        results[i] = module.kernel(*mine, *tail)

    pool.map(direction, items)
    return max(results)


def _compile_steps(
    modules: list[tuple[Any, int, int]],
    sample: list[Any],
    scratch: list[np.ndarray],
    seq: int,
    layout: int,
    lim: Any,
    tied: bool,
) -> None:
    """Compile (or load) the stepped path's kernels for the arguments a run passes them."""
    hs, cs, gs = scratch
    typeof = numba.typeof
    for module, d0, d1 in modules:
        begin = (sample[0], sample[7], sample[8], sample[9], hs, cs, seq, layout, False, d0, d1)
        module.begin.compile(tuple(typeof(a) for a in begin))
        step = (sample[0], sample[2], sample[6], sample[9], sample[10], hs, cs, gs, 0, seq)
        step += (layout, False, True, d0, d1, lim, tied)
        module.cell_step.compile(tuple(typeof(a) for a in step))
        end = (sample[11], sample[12], hs, cs, layout, True, True, d0, d1)
        module.end.compile(tuple(typeof(a) for a in end))


def _dyn(value: Value | None) -> bool:
    return value is not None and value.const is None


__all__ = ["OPS", "activation_forms", "build_step", "kernel_source", "prepare_weights"]
