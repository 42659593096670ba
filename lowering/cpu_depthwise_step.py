"""The step of a depthwise conv on the cpu target: a generated kernel, either the plane kernel of
:mod:`eqsat.lowering.cpu_depthwise` (each channel's output positions as the vector lanes) or,
for small planes, :mod:`eqsat.lowering.cpu_depthwise_lanes` (blocks of channels as the lanes),
with the epilogue's scalar-constant parts fused into it, chunks of channels on the pool.

On the pool the chunks run in a native lane (:mod:`eqsat.lowering.cpu_lanes`) generated into
the kernel's module, ``lane_parts``, which calls the kernel on C-contiguous views of each
chunk's channels: the types of its eager signature, so that the unrolled kernel is not compiled
again for the lane's arguments. Python chunks made the worker wait ~15 us for the GIL before
its first chunk (the calling thread holds it until it enters its own kernel), about what half
of MobileNetV3's depthwise convs take, so their maps ran on the calling thread alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from eqsat.lowering import (
    codegen,
    cpu,
    cpu_depthwise,
    cpu_depthwise_lanes,
    cpu_lanes,
    cpu_threads,
    kernel_cache,
)
from eqsat.lowering.cpu import Env, Lowering, Step
from eqsat.lowering.memory import Usage

from eqsat.ir import Node, Value

# Chunks per thread of a depthwise conv split over the pool.
DEPTHWISE_CHUNKS = 1


def lane_source(lanes: bool) -> str:
    """``lane_parts(counter, posted, wait, parts, x, <weights>, out, <scratch stacks>, worker,
    width[, wp])``, appended to a depthwise kernel's module: for each chunk (image i, units
    u0 <= u < u1 of ``width`` channels) the kernel on C-contiguous views of its channels of x
    and out, the weights' units and this thread's scratch (``lanes``: the channel-lanes
    kernel's, else the plane kernel's)."""
    weights, scratch, args = ("wv, bv", "pads, ress", "pads[worker], ress[worker], wp")
    if not lanes:
        weights, scratch, args = "w, b", "scratches", "scratches[worker]"
    first, second = weights.split(", ")
    params = f"parts, x, {weights}, out, {scratch}, worker, width" + (", wp" if lanes else "")
    lines = cpu_lanes.lane(
        "lane_parts", params, "parts.shape[0]",
        ["c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]", "oh_, ow_ = out.shape[2], out.shape[3]"],
        [
            "i, u0, u1 = parts[j, 0], parts[j, 1], parts[j, 2]",
            "c0, c1 = u0 * width, min(u1 * width, c_)",
            "xs = x[i].reshape(-1)[c0 * h_ * w_ : c1 * h_ * w_].reshape((1, c1 - c0, h_, w_))",
            "os = out[i].reshape(-1)[c0 * oh_ * ow_ : c1 * oh_ * ow_]"
            ".reshape((1, c1 - c0, oh_, ow_))",
            f"kernel(xs, {first}[u0:u1], {second}[u0:u1], os, {args})",
        ],
    )  # fmt: skip
    return "\n".join(["", *cpu_lanes.imports(), *lines]) + "\n"


def build(lowering: Lowering, node: Node, x: Value, extras: list[Value], bias: np.ndarray,
          window: Any, reduce: str = "sum") -> Step:  # fmt: skip
    """Depthwise conv as a generated kernel; scalar-constant epilogues are fused into it, others
    are a pass of their own (``cpu_ops.Epilogue``). ``reduce="max"``: a max pool over the same
    windows (the node's taps and the bias unread, padding -inf), on the channel lanes only:
    the caller routes only max pools those take (:func:`eqsat.lowering.cpu_data._pool`)."""
    from eqsat.lowering.cpu_ops import Epilogue

    out = node.outputs[0]
    n_, c_ = x.shape[0], x.shape[1]
    kh, kw = window.kernel
    w = node.inputs[1]
    assert w is not None and w.const is not None
    taps = np.ascontiguousarray(w.const.reshape(c_, kh * kw), out.dtype)
    epilogue = str(node.attrs.get("epilogue", "{0}"))
    # A per-channel constant the epilogue adds (a bias after the fact) goes into the bias.
    epilogue, folded = cpu_depthwise.fold_channel_add(epilogue, [v.const for v in extras], bias)
    scalars = cpu_depthwise.scalar_constants(extras)
    fused = cpu_depthwise.inline_scalars(epilogue, scalars)
    geometry = (window.kernel, window.strides, window.dilations, window.begin)
    lanes = cpu_depthwise_lanes.suits(out.dtype, window.out, kh * kw)
    if reduce != "sum" and not lanes:
        raise ValueError(f"node {node.name!r}: a depthwise {reduce} takes the channel lanes only")
    source: Callable[..., str] = (
        (lambda *form: cpu_depthwise_lanes.source(*form, reduce))
        if lanes
        else (lambda *form: cpu_depthwise.source(*form, False))
    )
    try:
        module = kernel_cache.load(source(out.dtype, *geometry, fused) + lane_source(lanes))
        epi: Epilogue | None = None
        bias = folded
    except codegen.Unsupported:  # tensor operands in the epilogue: a pass of its own
        module = kernel_cache.load(source(out.dtype, *geometry, "{0}") + lane_source(lanes))
        epi = Epilogue(lowering, node, "{0}", extras, [])
    kernel = module.kernel
    lowering.kernels += 1
    # The kernel's weights, cut by units of ``width`` channels, and each thread's scratch (the
    # borders of its padded planes keep their fill: the kernels write the interior only).
    if lanes:
        weights = cpu_depthwise_lanes.pack_taps(taps, bias)
        width = weights[0].shape[2]

        def scratch_of() -> tuple[Any, ...]:
            border = -np.inf if reduce == "max" else 0.0
            return cpu_depthwise_lanes.buffers(
                out.dtype, x.shape[2:], window.out, *geometry, border
            )

    else:
        weights, width = (taps, bias), 1
        plane = cpu_depthwise.scratch_shape(x.shape[2:], window.out, *geometry)

        def scratch_of() -> tuple[Any, ...]:
            return (np.zeros(plane, out.dtype),)

    units = weights[0].shape[0]
    # Sized like elementwise work, not as FLOPs: the kernel makes about one 3x3 output per ns
    # (16x112x112 outputs: 0.2 ms), some 20x fewer FLOPs per second than a GEMM, so the GEMMs'
    # threshold kept every depthwise conv of MobileNetV3 on one thread.
    # One chunk per thread: the chunks are Python calls, and with more of them the threads
    # hand the GIL back and forth between chunks (2 threads, 16x112x112 3x3: 145 us in 2
    # chunks, 167 in 8, 178 on one thread; 128x28x28: 105 against 132 and 154).
    work = out.size * max(1.0, kh * kw / 9)
    count = lowering.split(work, cpu.PARALLEL_ELEMENTS, cpu.GRAIN_ELEMENTS, DEPTHWISE_CHUNKS)
    spans = cpu_threads.chunks(units, -(-count // n_)) if count > 1 else []
    parts = [(i, u0, u1) for i in range(n_) for u0, u1 in spans]
    scratch = [scratch_of() for _ in range(lowering.workers if parts else 1)]
    pool = lowering.pool
    x_slot = None if x.const is not None else lowering.slot(x)
    o = lowering.slot(out)
    spread = None
    if parts and pool is not None:
        # Each thread's scratch stacked (worker, ...) for the lane; the channel-lanes kernel's
        # row width ``wp`` (the same for every thread) last.
        if lanes:
            stacked = [np.stack([s[0] for s in scratch]), np.stack([s[1] for s in scratch])]
            tail: tuple[int, ...] = (scratch[0][2],)
        else:
            stacked, tail = [np.stack([s[0] for s in scratch])], ()
        table = np.array(parts, np.int64).reshape(-1, 3)
        spread = cpu_lanes.runner(pool, len(parts))
        lane = module.lane_parts

    def run(env: Env) -> None:
        data = np.ascontiguousarray(x.const if x_slot is None else env[x_slot])
        result = env[o]
        if spread is not None:
            spread(lane, table, data, *weights, result, *stacked, None, width, *tail)
        else:
            kernel(data, *weights, result, *scratch[0])
        if epi is not None:
            epi(env, result)

    reads = ([x_slot] if x_slot is not None else []) + (epi.reads() if epi else [])
    return Step(run, Usage(reads, [o], True), "depthwise", node.name)
