"""Softmax and LogSoftmax kernels for the CPU target.

Over the innermost axis each row takes three vectorized passes (the max and the sum through
:mod:`cpu_math`'s reordering row reductions, float32 exponentials through its ``exp_f32``): 8x the
fused scalar loop on ppocrv6_rec's 40 x 18710 logits. Over a middle axis (``softmax_middle``) the
passes run over whole inner rows at a time. A row holding NaN comes out all NaN, as in the numpy
reference. The step of an innermost Softmax is built in :mod:`cpu_misc`.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.cpu import Env, Lowering, Step
from eqsat.lowering.cpu_math import exp_f32, row_max, row_max_f32, row_sum
from eqsat.lowering.memory import Usage
from numba import njit

from eqsat.ir import Node

JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(**JIT)
def softmax_middle(x, out, top, total):  # type: ignore[no-untyped-def]
    """Softmax of x (outer, n, inner) over its middle axis; ``top``/``total``: scratch (inner,)."""
    outer, n, inner = x.shape
    for a in range(outer):
        top[:] = x[a, 0]
        for k in range(1, n):
            for i in range(inner):
                top[i] = max(top[i], x[a, k, i])
        total[:] = 0
        for k in range(n):
            for i in range(inner):
                e = np.exp(x[a, k, i] - top[i])
                out[a, k, i] = e
                total[i] += e
        for i in range(inner):
            total[i] = 1 / total[i]
        for k in range(n):
            for i in range(inner):
                out[a, k, i] *= total[i]


@njit(**JIT)
def softmax_middle_f32(x, out, top, total):  # type: ignore[no-untyped-def]
    """:func:`softmax_middle` for float32 with the vectorizable :func:`cpu_math.exp_f32`."""
    outer, n, inner = x.shape
    for a in range(outer):
        top[:] = x[a, 0]
        for k in range(1, n):
            for i in range(inner):
                top[i] = max(top[i], x[a, k, i])
        total[:] = 0
        for k in range(n):
            for i in range(inner):
                e = exp_f32(x[a, k, i] - top[i])
                out[a, k, i] = e
                total[i] += e
        for i in range(inner):
            total[i] = np.float32(1) / total[i]
        for k in range(n):
            for i in range(inner):
                out[a, k, i] *= total[i]


@njit(**JIT)
def softmax_rows_f32(x, out):  # type: ignore[no-untyped-def]
    """Softmax of each row of the float32 x (rows, n) into out, in three vectorized passes: a
    row holding NaN still comes out all NaN, through its exponential and so the sum. 8x the
    fused scalar loop on ppocrv6_rec's 40 x 18710 logits."""
    for r in range(x.shape[0]):
        src = x[r]
        dst = out[r]
        top = row_max_f32(src)
        for i in range(src.size):
            dst[i] = exp_f32(src[i] - top)
        inv = np.float32(1.0 / row_sum(dst))
        for i in range(dst.size):
            dst[i] *= inv


@njit(**JIT)
def log_softmax_rows_f32(x, out):  # type: ignore[no-untyped-def]
    """LogSoftmax of each row of the float32 x into out: x - max - log(sum(exp(x - max))),
    the sum (in float64) over exponentials written to out first; NaN rows stay NaN."""
    for r in range(x.shape[0]):
        src = x[r]
        dst = out[r]
        top = row_max_f32(src)
        for i in range(src.size):
            dst[i] = exp_f32(src[i] - top)
        shift = np.float32(top + np.log(row_sum(dst)))
        for i in range(src.size):
            dst[i] = src[i] - shift


@njit(**JIT)
def log_softmax_rows(x, out):  # type: ignore[no-untyped-def]
    """:func:`log_softmax_rows_f32` with numpy's exp (float64)."""
    for r in range(x.shape[0]):
        src = x[r]
        dst = out[r]
        top = row_max(src)
        for i in range(src.size):
            dst[i] = np.exp(src[i] - top)
        shift = top + np.log(row_sum(dst))
        for i in range(src.size):
            dst[i] = src[i] - shift


def log_softmax(lowering: Lowering, node: Node) -> Step | None:
    """LogSoftmax over the innermost axis (CTC heads); other axes stay on the reference."""
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or x.dtype not in FLOATS or x.rank == 0 or x.size == 0:
        return None
    axis = int(node.attrs["axis"]) % x.rank
    if any(d != 1 for d in x.shape[axis + 1 :]):
        return None
    shape = (x.size // x.shape[axis], x.shape[axis])
    kernel = log_softmax_rows_f32 if x.dtype == np.float32 else log_softmax_rows
    xs, o = lowering.slot(x), lowering.slot(out)

    def run(env: Env) -> None:
        kernel(np.ascontiguousarray(env[xs]).reshape(shape), env[o].reshape(shape))

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


def softmax_axis(lowering: Lowering, node: Node) -> Step | None:
    """Softmax over a non-innermost axis (the innermost one: :func:`softmax_rows_f32`)."""
    x, out = node.inputs[0], node.outputs[0]
    if x is None or out is None or x.dtype not in FLOATS or x.rank == 0 or x.size == 0:
        return None
    axis = int(node.attrs["axis"]) % x.rank
    n = x.shape[axis]
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = x.size // (outer * n)
    shape = (outer, n, inner)
    top, total = np.empty(inner, x.dtype), np.empty(inner, x.dtype)
    kernel = softmax_middle_f32 if x.dtype == np.float32 else softmax_middle
    xs, o = lowering.slot(x), lowering.slot(out)

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(shape)
        kernel(data, env[o].reshape(shape), top, total)

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


__all__ = [
    "log_softmax",
    "log_softmax_rows",
    "log_softmax_rows_f32",
    "softmax_axis",
    "softmax_rows_f32",
]
