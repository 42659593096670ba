"""Dense and normalization operators: MatMul, Gemm, Einsum, the per-channel normalizations
(BatchNormalization, InstanceNormalization), Softmax/LogSoftmax, the matrix builders Trilu and
EyeLike, and GridSample (sampling an image at the points of a flow field).

The windowed spatial ops (Conv, pools) live in :mod:`eqsat.ops.conv`, Resize in
:mod:`eqsat.ops.resize`, the normalizations over trailing axes (Layer-, RMSNormalization) and
the rest in :mod:`eqsat.ops.norm`. float16 inputs are computed in float32 and rounded once at the end, as
onnxruntime's kernels accumulate; every cost counts a multiply-add as two FLOPs.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from eqsat.errors import ShapeError, UnsupportedOperatorError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, broadcast_shapes, normalize_axis, register, same_dtype

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
MATMUL_DTYPES = (
    *FLOAT_DTYPES,
    *(np.dtype(t) for t in (np.int32, np.int64, np.uint32, np.uint64)),
)
EINSUM_DTYPES = (*MATMUL_DTYPES, *(np.dtype(t) for t in (np.int8, np.int16, np.uint8, np.uint16)))
# TensorProto element types that LayerNormalization's stash_type may name.
STASH_TYPES = {1: np.dtype(np.float32), 10: np.dtype(np.float16), 11: np.dtype(np.float64)}


def compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def check_dtype(dtype: np.dtype, allowed: tuple[np.dtype, ...], what: str = "inputs") -> None:
    if dtype not in allowed:
        raise ShapeError(f"{what} must be one of {[str(d) for d in allowed]}, got {dtype}")


def io_cost(flops: float, inputs: list[Value | None], outputs: list[Value | None]) -> Cost:
    read = sum(v.nbytes for v in inputs if v is not None)
    written = sum(v.nbytes for v in outputs if v is not None)
    return Cost(float(flops), float(read), float(written))


# ---------------------------------------------------------------------------------------- MatMul
def matmul_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """numpy.matmul's result shape, with its 1-D promotion rules."""
    if not a or not b:
        raise ShapeError(f"MatMul operands must have rank >= 1, got shapes {a} and {b}")
    a2 = a if len(a) > 1 else (1, *a)
    b2 = b if len(b) > 1 else (*b, 1)
    if a2[-1] != b2[-2]:
        raise ShapeError(f"inner dimensions differ: {a} @ {b} ({a2[-1]} != {b2[-2]})")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    return batch + a2[-2:-1] * (len(a) > 1) + b2[-1:] * (len(b) > 1)


def _matmul_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    dtype = same_dtype(inputs)
    check_dtype(dtype, MATMUL_DTYPES)
    return [(matmul_shape(inputs[0].shape, inputs[1].shape), dtype)]


def _matmul_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    a, b = arrays
    dt = compute_dtype(a.dtype)
    y = np.matmul(a.astype(dt, copy=False), b.astype(dt, copy=False))
    return [np.asarray(y).astype(outs[0].dtype, copy=False)]


def _matmul_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    k = inputs[0].shape[-1]
    return io_cost(2 * outputs[0].size * k, inputs, outputs)


register(
    OpDef("MatMul", _matmul_infer, _matmul_reference, _matmul_cost, min_inputs=2, max_inputs=2)
)


# ------------------------------------------------------------------------------------------ Gemm
def _gemm_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    dtype = same_dtype(inputs)
    check_dtype(dtype, MATMUL_DTYPES)
    if a.rank != 2 or b.rank != 2:
        raise ShapeError(f"A and B must be matrices, got shapes {a.shape} and {b.shape}")
    m, k = a.shape[::-1] if attrs["transA"] else a.shape
    kb, n = b.shape[::-1] if attrs["transB"] else b.shape
    if k != kb:
        raise ShapeError(
            f"inner dimensions differ: A {a.shape} (transA={attrs['transA']}) and B {b.shape} "
            f"(transB={attrs['transB']}) give K={k} and K={kb}"
        )
    if c is not None and (c.rank > 2 or broadcast_shapes(c.shape, (m, n)) != (m, n)):
        raise ShapeError(f"C {c.shape} does not broadcast to the ({m}, {n}) result")
    return [((m, n), dtype)]


def _gemm_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    a, b = arrays[0], arrays[1]
    c = arrays[2] if len(arrays) > 2 else None
    dt = compute_dtype(a.dtype)
    a = a.astype(dt, copy=False)
    b = b.astype(dt, copy=False)
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = a @ b
    # Integer Gemm scales in float64 and truncates once at the end.
    scalar = dt if dt.kind == "f" else np.dtype(np.float64)
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    if alpha != 1.0:
        y = y * scalar.type(alpha)
    # With beta == 0 onnxruntime does not read C, so its inf/nan never reach the result.
    if c is not None and beta != 0.0:
        c = c.astype(dt, copy=False)
        y = y + (c if beta == 1.0 else c * scalar.type(beta))
    return [np.asarray(y).astype(outs[0].dtype, copy=False)]


def _gemm_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    a, y = inputs[0], outputs[0]
    k = a.shape[0] if attrs["transA"] else a.shape[1]
    epilogue = 2 * y.size if len(inputs) > 2 and inputs[2] is not None else 0
    return io_cost(2 * y.size * k + epilogue, inputs, outputs)


register(
    OpDef(
        "Gemm",
        _gemm_infer,
        _gemm_reference,
        _gemm_cost,
        min_inputs=2,
        max_inputs=3,
        attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    )
)


# ---------------------------------------------------------------------------------------- Einsum
def parse_einsum(equation: str, shapes: list[tuple[int, ...]]) -> tuple[str, tuple[int, ...], int]:
    """For operands of ``shapes``: the explicit form of ``equation``, the result's shape and the
    size of the iteration space (the product of every label's and broadcast '...' extent)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ShapeError(f"equation {equation!r} has {len(terms)} operand(s), got {len(shapes)}")
    token = re.compile(r"^(?:[a-zA-Z]|\.\.\.)*$")
    sizes: dict[str, int] = {}
    ellipsis: tuple[int, ...] = ()
    counts: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        if not token.match(term) or term.count("...") > 1:
            raise ShapeError(f"equation {equation!r}: bad operand term {term!r}")
        head, dots, tail = term.partition("...")
        if len(head) + len(tail) > len(shape) or (not dots and len(head) != len(shape)):
            raise ShapeError(f"equation {equation!r}: term {term!r} does not fit shape {shape}")
        n_ell = len(shape) - len(head) - len(tail)
        if dots:
            ellipsis = broadcast_shapes(ellipsis, shape[len(head) : len(head) + n_ell])
        labelled = shape[: len(head)] + shape[len(head) + n_ell :]
        for label, size in zip(head + tail, labelled, strict=True):
            counts[label] = counts.get(label, 0) + 1
            seen = sizes.get(label, size)
            if seen != size and 1 not in (seen, size):
                raise ShapeError(
                    f"equation {equation!r}: label {label!r} has sizes {seen} and {size}"
                )
            sizes[label] = max(seen, size)
    if arrow:
        if not token.match(rhs) or rhs.count("...") > 1:
            raise ShapeError(f"equation {equation!r}: bad output term {rhs!r}")
        labels = rhs.replace("...", "")
        if len(set(labels)) != len(labels) or not set(labels) <= set(sizes):
            raise ShapeError(f"equation {equation!r}: output labels must be unique input labels")
        if "..." not in rhs and math.prod(ellipsis) != 1:
            raise ShapeError(f"equation {equation!r}: output drops the '...' dimensions")
        out = rhs
    else:
        # Implicit output: '...' first, then the labels used once, in ASCII order (as numpy).
        out = "..." * ("..." in lhs) + "".join(sorted(k for k, c in counts.items() if c == 1))
    head, dots, tail = out.partition("...")
    shape = (
        tuple(sizes[c] for c in head) + (ellipsis if dots else ()) + tuple(sizes[c] for c in tail)
    )
    return f"{lhs}->{out}", shape, math.prod(sizes.values()) * math.prod(ellipsis)


def _einsum_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    dtype = same_dtype(inputs)
    check_dtype(dtype, EINSUM_DTYPES)
    _, shape, _ = parse_einsum(str(attrs["equation"]), [v.shape for v in inputs])
    return [(shape, dtype)]


def _einsum_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    dt = compute_dtype(arrays[0].dtype)
    operands = [a.astype(dt, copy=False) for a in arrays]
    equation, _, _ = parse_einsum(str(attrs["equation"]), [a.shape for a in operands])
    y = np.einsum(equation, *operands, optimize=len(operands) > 1)
    return [np.asarray(y).astype(outs[0].dtype, copy=False)]


def _einsum_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    if len(inputs) == 1:
        return io_cost(inputs[0].size, inputs, outputs)
    # One multiply-add per extra operand for every point of the iteration space.
    _, _, space = parse_einsum(str(attrs["equation"]), [v.shape for v in inputs])
    return io_cost(2 * space * (len(inputs) - 1), inputs, outputs)


register(
    OpDef(
        "Einsum",
        _einsum_infer,
        _einsum_reference,
        _einsum_cost,
        min_inputs=1,
        max_inputs=1 << 16,
        attrs={"equation": ""},
    )
)


# ------------------------------------------------------------------------------ normalizations
def _channel_params(x: Value, params: list[Value | None], names: str) -> None:
    if x.rank < 2:
        raise ShapeError(f"X must be N x C x ..., got shape {x.shape}")
    check_dtype(x.dtype, FLOAT_DTYPES, "X")
    for value, name in zip(params, names.split(), strict=True):
        if value.shape != (x.shape[1],):
            raise ShapeError(f"{name} must have shape ({x.shape[1]},), got {value.shape}")
        check_dtype(value.dtype, FLOAT_DTYPES, name)


def _channel_shape(arr: np.ndarray, rank: int, dt: np.dtype) -> np.ndarray:
    return arr.astype(dt, copy=False).reshape((1, -1) + (1,) * (rank - 2))


def _bn_infer(inputs: list[Value | None], attrs: dict[str, Any], n_out: int) -> list[Any]:
    if attrs["training_mode"]:
        raise UnsupportedOperatorError(
            [("BatchNormalization", "?", "training_mode=1 (statistics of the batch)")]
        )
    if n_out > 1:
        raise ShapeError("outputs running_mean and running_var exist only with training_mode=1")
    x = inputs[0]
    _channel_params(x, inputs[1:], "scale B input_mean input_var")
    return [(x.shape, x.dtype)]


def _bn_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, scale, bias, mean, var = arrays
    dt = compute_dtype(x.dtype)
    r = x.ndim
    inv = _channel_shape(scale, r, dt) / np.sqrt(
        _channel_shape(var, r, dt) + dt.type(attrs["epsilon"])
    )
    y = (x.astype(dt, copy=False) - _channel_shape(mean, r, dt)) * inv + _channel_shape(bias, r, dt)
    return [y.astype(outs[0].dtype, copy=False)]


def per_element_cost(flops_per_element: float) -> Any:
    """A cost of ``flops_per_element`` FLOPs per element of the first input, plus its I/O."""

    def cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
        return io_cost(flops_per_element * inputs[0].size, inputs, outputs)

    return cost


register(
    OpDef(
        "BatchNormalization",
        _bn_infer,
        _bn_reference,
        per_element_cost(2),
        min_inputs=5,
        max_inputs=5,
        max_outputs=3,
        attrs={"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0},
    )
)


def _in_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    if x.rank < 3:
        raise ShapeError(f"X must be N x C x D1 x ... (rank >= 3), got shape {x.shape}")
    _channel_params(x, inputs[1:], "scale B")
    return [(x.shape, x.dtype)]


def _in_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, scale, bias = arrays
    dt = compute_dtype(x.dtype)
    xs = x.astype(dt, copy=False)
    axes = tuple(range(2, x.ndim))
    mean = xs.mean(axis=axes, keepdims=True)
    centered = xs - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True)
    y = centered / np.sqrt(var + dt.type(attrs["epsilon"]))
    y = y * _channel_shape(scale, x.ndim, dt) + _channel_shape(bias, x.ndim, dt)
    return [y.astype(outs[0].dtype, copy=False)]


register(
    OpDef(
        "InstanceNormalization",
        _in_infer,
        _in_reference,
        per_element_cost(7),
        min_inputs=3,
        max_inputs=3,
        attrs={"epsilon": 1e-5},
    )
)


# ------------------------------------------------------------------------------------- softmax
def _softmax_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    check_dtype(x.dtype, FLOAT_DTYPES, "input")
    if x.rank < 1:
        raise ShapeError("input must have rank >= 1")
    normalize_axis(int(attrs["axis"]), x.rank)
    return [(x.shape, x.dtype)]


def _softmax_parts(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``x - max`` and the sum of its exponentials along ``axis``, in the compute dtype."""
    xs = x.astype(compute_dtype(x.dtype), copy=False)
    shifted = xs - xs.max(axis=axis, keepdims=True)
    return shifted, np.exp(shifted).sum(axis=axis, keepdims=True)


def _softmax_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    axis = normalize_axis(int(attrs["axis"]), x.ndim)
    shifted, total = _softmax_parts(x, axis)
    return [(np.exp(shifted) / total).astype(x.dtype, copy=False)]


def _log_softmax_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    axis = normalize_axis(int(attrs["axis"]), x.ndim)
    shifted, total = _softmax_parts(x, axis)
    return [(shifted - np.log(total)).astype(x.dtype, copy=False)]


register(
    OpDef("Softmax", _softmax_infer, _softmax_reference, per_element_cost(5), attrs={"axis": -1})
)
register(
    OpDef(
        "LogSoftmax",
        _softmax_infer,
        _log_softmax_reference,
        per_element_cost(5),
        attrs={"axis": -1},
    )
)


# ------------------------------------------------------------------------------ Trilu, EyeLike
def _trilu_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, k = inputs[0], inputs[1] if len(inputs) > 1 else None
    if x.rank < 2:
        raise ShapeError(f"input must have rank >= 2, got shape {x.shape}")
    if k is not None and (k.size != 1 or k.dtype != np.int64):
        raise ShapeError(f"k must be an int64 scalar, got {k.dtype} of shape {k.shape}")
    return [(x.shape, x.dtype)]


def _trilu_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    k = int(np.asarray(arrays[1]).reshape(())) if len(arrays) > 1 and arrays[1] is not None else 0
    return [np.triu(x, k) if attrs["upper"] else np.tril(x, k)]


def _copy_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    return io_cost(0, inputs, outputs)


register(
    OpDef(
        "Trilu",
        _trilu_infer,
        _trilu_reference,
        _copy_cost,
        min_inputs=1,
        max_inputs=2,
        attrs={"upper": 1},
    )
)


def _eyelike_dtype(x: Value, attrs: dict[str, Any]) -> np.dtype:
    from eqsat.ops.elementwise import onnx_dtype  # a family module; imported when first needed

    return x.dtype if attrs["dtype"] is None else onnx_dtype(attrs["dtype"])


def _eyelike_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    if x.rank != 2:
        raise ShapeError(f"input must be a matrix, got shape {x.shape}")
    return [(x.shape, _eyelike_dtype(x, attrs))]


def _eyelike_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    rows, cols = arrays[0].shape
    return [np.eye(rows, cols, int(attrs["k"]), dtype=outs[0].dtype)]


register(
    OpDef(
        "EyeLike",
        _eyelike_infer,
        _eyelike_reference,
        _copy_cost,
        attrs={"dtype": None, "k": 0},
        shape_only=True,  # depends only on the input's shape: folds to a constant
    )
)


# ------------------------------------------------------------------------------------ GridSample
GRID_MODES = {"linear": "linear", "bilinear": "linear", "nearest": "nearest"}
GRID_MODES |= {"cubic": "cubic", "bicubic": "cubic"}  # opset 16 spelled them bilinear/bicubic
TAPS = {"nearest": 1, "linear": 2, "cubic": 4}


def _gridsample_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, grid = inputs
    check_dtype(x.dtype, FLOAT_DTYPES, "X")
    check_dtype(grid.dtype, FLOAT_DTYPES, "grid")
    r = x.rank - 2
    if r < 1 or grid.rank != x.rank or grid.shape[0] != x.shape[0] or grid.shape[-1] != r:
        raise ShapeError(
            f"X (N, C, D1..Dr) {x.shape} needs grid (N, O1..Or, r) with r = {r}, got {grid.shape}"
        )
    if attrs["mode"] not in GRID_MODES:
        raise ShapeError(f"mode must be linear, nearest or cubic, got {attrs['mode']!r}")
    if attrs["padding_mode"] not in ("zeros", "border", "reflection"):
        raise ShapeError(f"padding_mode {attrs['padding_mode']!r} is not zeros/border/reflection")
    return [(x.shape[:2] + grid.shape[1:-1], x.dtype)]


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold ``x`` back into [lo, hi] by mirroring at the nearer border, repeatedly."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    dist = np.where(below, lo - x, x - hi)
    turns = np.trunc(dist / span)
    rest = dist - turns * span
    even = turns % 2 == 0
    from_below = np.where(even, lo + rest, hi - rest)
    from_above = np.where(even, hi - rest, lo + rest)
    return np.where(below, from_below, np.where(above, from_above, x))


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    a = -0.75  # Keys' cubic convolution, as PyTorch and ONNX

    def near(d: np.ndarray) -> np.ndarray:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _gridsample_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    import itertools

    x, grid = arrays
    dt = compute_dtype(x.dtype)
    mode, padding = GRID_MODES[attrs["mode"]], attrs["padding_mode"]
    align = bool(attrs["align_corners"])
    dims = x.shape[2:]
    taps_per_dim: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for i, size in enumerate(dims):
        # The grid's last axis lists coordinates innermost dimension first (x, y, ...).
        n = grid[..., len(dims) - 1 - i].astype(dt)
        c = (n + 1) / 2 * (size - 1) if align else ((n + 1) * size - 1) / 2
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if mode == "nearest":
            c = np.rint(c)  # half to even, as PyTorch
        # Padding applies to each tap's index, not to the coordinate, as in PyTorch and
        # onnxruntime. (The ONNX reference clamps the coordinate first; for nearest and linear
        # that is the same, for cubic with border padding it differs near the edges.)
        base = np.floor(c)
        t = c - base
        if mode == "nearest":
            points = [(c, np.ones_like(c))]
        elif mode == "linear":
            points = [(base, 1 - t), (base + 1, t)]
        else:
            points = list(zip([base - 1, base, base + 1, base + 2], _cubic_weights(t), strict=True))
        taps = []
        for index, weight in points:
            index = index.astype(np.int64)
            if padding == "zeros":
                weight = np.where((index >= 0) & (index < size), weight, 0)
            elif padding == "reflection":
                index = _reflect(index.astype(dt), lo, hi).astype(np.int64)
            taps.append((np.clip(index, 0, size - 1), weight))
        taps_per_dim.append(taps)
    xt = np.moveaxis(x.astype(dt, copy=False), 1, -1)  # (N, D1..Dr, C)
    batch = np.arange(x.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2))
    y = np.zeros((*grid.shape[:-1], x.shape[1]), dt)
    for combo in itertools.product(*taps_per_dim):
        weight = np.prod([w for _, w in combo], axis=0)
        y += xt[(batch, *(i for i, _ in combo))] * weight[..., None]
    return [np.moveaxis(y, -1, 1).astype(x.dtype, copy=False)]


def _gridsample_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    r = inputs[0].rank - 2
    taps = TAPS[GRID_MODES[attrs["mode"]]] ** r
    # A multiply-add per tap per output, plus the coordinate and weight arithmetic per point.
    points = outputs[0].size // max(outputs[0].shape[1], 1)
    return io_cost(2 * taps * outputs[0].size + 10 * r * taps * points, inputs, outputs)


register(
    OpDef(
        "GridSample",
        _gridsample_infer,
        _gridsample_reference,
        _gridsample_cost,
        min_inputs=2,
        max_inputs=2,
        attrs={"mode": "linear", "padding_mode": "zeros", "align_corners": 0},
    )
)
