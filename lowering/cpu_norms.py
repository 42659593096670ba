"""InstanceNormalization on the CPU: one vectorized pass pair per (image, channel) plane.

GroupNorm exported from PyTorch is a reshape to (N, G, -1), an InstanceNormalization with unit
scale, and the affine after it; style-transfer and audio models use InstanceNormalization itself.
Statistics are in float64 (as the reference's), through :mod:`cpu_math`'s reordering row
reductions; the normalization and the per-channel affine are one more pass.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.cpu import Env, Lowering, Step
from eqsat.lowering.cpu_math import row_square_deviation, row_sum
from eqsat.lowering.memory import Usage
from numba import njit

from eqsat.ir import Node

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)
def instance_norm_rows(x, out, scale, bias, eps):  # type: ignore[no-untyped-def]
    """Row r of x (N*C, L) normalized over its L values, times scale[r % C] plus bias[r % C]."""
    c_ = scale.shape[0]
    n = x.shape[1]
    for r in range(x.shape[0]):
        row = x[r]
        mean = row_sum(row) / n
        inv = 1.0 / np.sqrt(row_square_deviation(row, mean) / n + eps)
        a = inv * scale[r % c_]
        b = bias[r % c_] - mean * a
        dst = out[r]
        for i in range(n):
            dst[i] = row[i] * a + b


def instance_norm(lowering: Lowering, node: Node) -> Step | None:
    """The step of an InstanceNormalization with constant scale and bias, or None."""
    x, scale, bias = node.inputs[:3]
    out = node.outputs[0]
    if x is None or out is None or x.rank < 3 or out.dtype not in FLOATS or x.size == 0:
        return None
    if scale is None or bias is None or scale.const is None or bias.const is None:
        return None
    c_ = x.shape[1]
    rows = x.shape[0] * c_
    shape = (rows, x.size // rows)
    s = np.ascontiguousarray(scale.const.reshape(c_), np.float64)
    b = np.ascontiguousarray(bias.const.reshape(c_), np.float64)
    eps = float(node.attrs["epsilon"])
    xs, o = lowering.slot(x), lowering.slot(out)
    lowering.kernels += 1

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(shape)
        instance_norm_rows(data, env[o].reshape(shape), s, b, eps)

    return Step(run, Usage([xs], [o], True), "kernel", node.name)


__all__ = ["instance_norm", "instance_norm_rows"]
