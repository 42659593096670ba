"""Less common standard ops: Unique, Compress, ReverseSequence, BitShift, Det, LpPool,
GlobalLpPool, MaxUnpool and Col2Im.

Unique's output shape always depends on its input's values, and Compress's on its condition's: like
NonZero, their shape rules need those inputs' content. On a constant they fold; in a loaded model
fed at run time they raise :class:`DataDependentShapeError`, so :func:`eqsat.load` puts them in the
run-time tail (:mod:`eqsat.tail`), where every input is bound. The others have static shapes
(MaxUnpool's ``output_shape`` and Col2Im's ``image_shape``/``block_shape`` inputs must then be
constants). The pools share Conv's window geometry (:mod:`eqsat.ops.conv`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import (
    REQUIRED,
    Cost,
    OpDef,
    broadcast_shapes,
    const_of,
    default_cost,
    normalize_axis,
    refuse_run_time,
    register,
)
from eqsat.ops.conv import (
    WINDOW_ATTRS,
    Window,
    check_float,
    check_image,
    compute_dtype,
    int_list,
    pad_spatial,
    window_geometry,
)
from eqsat.ops.shape import const_ints, copy_cost

INT64 = np.dtype(np.int64)
BOOL = np.dtype(bool)


# ----------------------------------------------------------------------------------------- Unique
def _unique(x: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """(Y, indices, inverse_indices, counts) in onnxruntime's order.

    sorted=1 orders values (or, with an axis, slices compared lexicographically in C order, as
    onnxruntime's std::map of subtensors does); sorted=0 orders them by first occurrence.
    """
    axis = attrs["axis"]
    if axis is None:
        flat = x.reshape(-1)
        y, first, inverse, counts = np.unique(
            flat, return_index=True, return_inverse=True, return_counts=True
        )
    else:
        axis = normalize_axis(int(axis), x.ndim)
        moved = np.moveaxis(x, axis, 0)
        rows = moved.reshape(moved.shape[0], -1)
        _, first, inverse, counts = np.unique(
            rows, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        y = np.take(x, first, axis=axis)
    inverse = inverse.reshape(-1)
    if not int(attrs["sorted"]):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, counts, inverse = first[order], counts[order], rank[inverse]
        y = y[order] if axis is None else np.take(y, order, axis=axis)
    return y, first.astype(INT64), inverse.astype(INT64), counts.astype(INT64)


def _unique_infer(inputs: list[Value | None], attrs: dict[str, Any], n_out: int) -> list[Any]:
    x = inputs[0]
    if attrs["axis"] is not None:
        if x.rank == 0:
            raise ShapeError("axis is given but X is a scalar")
        normalize_axis(int(attrs["axis"]), x.rank)
    if int(attrs["sorted"]) not in (0, 1):
        raise ShapeError(f"sorted must be 0 or 1, got {attrs['sorted']}")
    refuse_run_time(x, "Unique", "the number of distinct values")
    y, first, inverse, counts = _unique(np.asarray(const_of(x, "X")), attrs)
    types = [
        (y.shape, x.dtype),
        (first.shape, INT64),
        (inverse.shape, INT64),
        (counts.shape, INT64),
    ]
    return types[:n_out]


register(
    OpDef(
        "Unique",
        _unique_infer,
        lambda arrays, attrs, outs: list(_unique(arrays[0], attrs))[: len(outs)],
        default_cost(4),
        max_outputs=4,
        attrs={"axis": None, "sorted": 1},
    )
)


# --------------------------------------------------------------------------------------- Compress
def _compress_axis(rank: int, attrs: dict[str, Any]) -> int | None:
    if attrs["axis"] is None:
        return None
    if rank == 0:
        raise ShapeError("axis is given but the input is a scalar")
    return normalize_axis(int(attrs["axis"]), rank)


def _compress_condition(cond: np.ndarray, extent: int) -> np.ndarray:
    """The condition over the compressed axis: a shorter one selects nothing past its end (as
    numpy.compress), a longer one may select nothing past the axis' end."""
    cond = np.asarray(cond, dtype=bool).reshape(-1)
    if cond.size > extent and cond[extent:].any():
        raise ShapeError(f"condition selects index {extent + int(np.argmax(cond[extent:]))} "
                         f"beyond the axis' extent {extent}")  # fmt: skip
    return cond[:extent]


def _compress_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, cond = inputs
    if cond.dtype != BOOL:
        raise ShapeError(f"condition must be bool, got {cond.dtype}")
    if cond.rank != 1:
        raise ShapeError(f"condition must be 1-D, got shape {cond.shape}")
    axis = _compress_axis(x.rank, attrs)
    refuse_run_time(cond, "Compress", "the condition's values")
    extent = x.size if axis is None else x.shape[axis]
    kept = int(np.count_nonzero(_compress_condition(const_of(cond, "condition"), extent)))
    if axis is None:
        return [((kept,), x.dtype)]
    return [((*x.shape[:axis], kept, *x.shape[axis + 1 :]), x.dtype)]


def _compress(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, cond = arrays
    axis = _compress_axis(x.ndim, attrs)
    extent = x.size if axis is None else x.shape[axis]
    return [np.compress(_compress_condition(cond, extent), x, axis=axis)]


register(
    OpDef(
        "Compress",
        _compress_infer,
        _compress,
        copy_cost,
        min_inputs=2,
        max_inputs=2,
        attrs={"axis": None},
    )
)


# -------------------------------------------------------------------------------- ReverseSequence
def _revseq_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, lens = inputs
    if x.rank < 2:
        raise ShapeError(f"input must have rank >= 2, got shape {x.shape}")
    if lens.dtype != INT64:
        raise ShapeError(f"sequence_lens must be int64, got {lens.dtype}")
    batch, time = int(attrs["batch_axis"]), int(attrs["time_axis"])
    if {batch, time} != {0, 1}:
        raise ShapeError(
            f"batch_axis and time_axis must be 0 and 1 (either way), got {batch}, {time}"
        )
    if lens.shape != (x.shape[batch],):
        raise ShapeError(
            f"sequence_lens must have shape ({x.shape[batch]},) (the batch size), got {lens.shape}"
        )
    return [(x.shape, x.dtype)]


def _revseq(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, lens = arrays
    time = int(attrs["time_axis"])
    steps = x.shape[time]
    bad = (lens < 0) | (lens > steps)
    if bad.any():
        raise ShapeError(
            f"sequence_lens[{int(np.argmax(bad))}] = {int(lens[bad][0])} is outside [0, {steps}]"
        )
    # Within its length a step t of batch b reads step len[b] - 1 - t; past it, itself.
    t = np.arange(steps)
    source = np.where(t < lens[:, None], lens[:, None] - 1 - t, t)  # batch x time
    if time == 0:
        source = source.T
    index = source.reshape(source.shape + (1,) * (x.ndim - 2))
    return [np.take_along_axis(x, np.broadcast_to(index, x.shape), axis=time)]


register(
    OpDef(
        "ReverseSequence",
        _revseq_infer,
        _revseq,
        copy_cost,
        min_inputs=2,
        max_inputs=2,
        attrs={"batch_axis": 1, "time_axis": 0},
    )
)


# --------------------------------------------------------------------------------------- BitShift
SHIFTABLE = tuple(
    np.dtype(t)
    for t in (np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64)
)


def _bitshift_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, y = inputs
    if x.dtype not in SHIFTABLE or y.dtype != x.dtype:
        raise ShapeError(f"X and Y must share one integer dtype, got {x.dtype} and {y.dtype}")
    if attrs["direction"] not in ("LEFT", "RIGHT"):
        raise ShapeError(f"direction must be 'LEFT' or 'RIGHT', got {attrs['direction']!r}")
    return [(broadcast_shapes(x.shape, y.shape), x.dtype)]


def _bitshift(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, y = np.broadcast_arrays(*arrays)
    bits = x.dtype.itemsize * 8
    # Shifts outside [0, bits) are defined (opset 28) as the sign fill alone; numpy (and C) leave
    # them undefined, so they are masked out of the shift and written separately.
    valid = (y >= 0) & (y < bits)
    amount = np.where(valid, y, 0).astype(x.dtype)
    if attrs["direction"] == "LEFT":
        z = np.left_shift(x, amount)
        fill = np.zeros((), x.dtype)
    else:
        z = np.right_shift(x, amount)  # arithmetic for signed types
        fill = np.where(x < 0, -1, 0).astype(x.dtype) if x.dtype.kind == "i" else 0
    return [np.where(valid, z, fill).astype(x.dtype)]


register(
    OpDef(
        "BitShift",
        _bitshift_infer,
        _bitshift,
        default_cost(1),
        min_inputs=2,
        max_inputs=2,
        attrs={"direction": REQUIRED},
    )
)


# -------------------------------------------------------------------------------------------- Det
def _det_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    check_float(x.dtype)
    if x.rank < 2 or x.shape[-1] != x.shape[-2]:
        raise ShapeError(f"X must be [*, M, M] (square matrices), got shape {x.shape}")
    return [(x.shape[:-2], x.dtype)]


def _det(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    return [np.linalg.det(x.astype(compute_dtype(x.dtype), copy=False)).astype(x.dtype)]


def _det_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x = inputs[0]
    m = x.shape[-1]
    return Cost(float(outputs[0].size * 2 * m**3 / 3), float(x.nbytes), float(outputs[0].nbytes))


register(OpDef("Det", _det_infer, _det, _det_cost))


# ------------------------------------------------------------------------------- LpPool (p-norms)
def _p_of(attrs: dict[str, Any]) -> int:
    p = attrs["p"]
    if (isinstance(p, float) and not p.is_integer()) or int(p) < 1:
        raise ShapeError(f"p must be a positive integer, got {p!r}")
    return int(p)


def _p_norm(total: np.ndarray, p: int) -> np.ndarray:
    if p == 1:
        return total
    if p == 2:
        return np.sqrt(total)
    return np.power(total, 1.0 / p)


def _lppool_window(shape: tuple[int, ...], attrs: dict[str, Any]) -> Window:
    kernel = int_list(attrs["kernel_shape"], len(shape) - 2, 0, "kernel_shape")
    return window_geometry(shape[2:], kernel, attrs, ceil_mode=bool(attrs["ceil_mode"]))


def _lppool_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    check_float(x.dtype)
    check_image(x)
    _p_of(attrs)
    window = _lppool_window(x.shape, attrs)
    return [((*x.shape[:2], *window.out), x.dtype)]


def _lppool(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    p = _p_of(attrs)
    window = _lppool_window(x.shape, attrs)
    powered = np.abs(x.astype(compute_dtype(x.dtype)))
    if p > 1:
        powered = powered**p
    # Padding (declared or added by ceil_mode) holds zeros, which add nothing to the sum.
    end = tuple(e + x_ for e, x_ in zip(window.end, window.extra, strict=True))
    xp = pad_spatial(powered, window.begin, end, 0)
    total = None
    for tap in window.taps():
        view = xp[(slice(None), slice(None), *window.tap_slices(tap))]
        total = view.copy() if total is None else np.add(total, view, out=total)
    return [_p_norm(total, p).astype(x.dtype)]


def _lppool_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    k = math.prod(int(v) for v in attrs["kernel_shape"])
    y = outputs[0]
    return Cost(float(y.size * (2 * k + 1)), float(inputs[0].nbytes), float(y.nbytes))


register(
    OpDef(
        "LpPool",
        _lppool_infer,
        _lppool,
        _lppool_cost,
        attrs={**WINDOW_ATTRS, "ceil_mode": 0, "kernel_shape": REQUIRED, "p": 2},
    )
)


def _global_lp_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    if x.rank < 3:
        raise ShapeError(f"X must be N x C x D1 x ... (rank >= 3), got shape {x.shape}")
    check_float(x.dtype)
    _p_of(attrs)
    return [((*x.shape[:2], *([1] * (x.rank - 2))), x.dtype)]


def _global_lp(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    p = _p_of(attrs)
    powered = np.abs(x.astype(compute_dtype(x.dtype)))
    if p > 1:
        powered = powered**p
    total = powered.sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    return [_p_norm(total, p).astype(x.dtype)]


register(OpDef("GlobalLpPool", _global_lp_infer, _global_lp, default_cost(3), attrs={"p": 2}))


# ------------------------------------------------------------------------------------- MaxUnpool
def _unpool_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, indices = inputs[0], inputs[1]
    shape_in = inputs[2] if len(inputs) > 2 else None
    check_float(x.dtype)
    n = check_image(x)
    if indices.dtype != INT64 or indices.shape != x.shape:
        raise ShapeError(
            f"I must be int64 of X's shape {x.shape}, got {indices.dtype} {indices.shape}"
        )
    kernel = int_list(attrs["kernel_shape"], n, 0, "kernel_shape")
    strides = int_list(attrs["strides"], n, 1, "strides")
    pads = [int(p) for p in attrs["pads"] or [0] * 2 * n]
    if len(pads) != 2 * n or any(p < 0 for p in pads) or any(s < 1 for s in strides):
        raise ShapeError(f"pads {pads} need {2 * n} entries >= 0 and strides {strides} be >= 1")
    if shape_in is not None:
        shape = tuple(const_ints(shape_in, "input 'output_shape'"))
        if len(shape) != x.rank or shape[:2] != x.shape[:2]:
            raise ShapeError(f"output_shape {list(shape)} must be {list(x.shape[:2])} + spatial")
        return [(shape, x.dtype)]
    spatial = [
        (i - 1) * s + k - pads[a] - pads[a + n]
        for a, (i, s, k) in enumerate(zip(x.shape[2:], strides, kernel, strict=True))
    ]
    return [((*x.shape[:2], *spatial), x.dtype)]


def _unpool(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, indices = arrays[0], arrays[1]
    y = np.zeros(outs[0].shape, x.dtype)
    flat = indices.reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= y.size):
        raise ShapeError(f"indices must be in [0, {y.size}) (the output's size)")
    # Indices count over the whole output (N and C included), as MaxPool's second output does.
    y.reshape(-1)[flat] = x.reshape(-1)
    return [y]


register(
    OpDef(
        "MaxUnpool",
        _unpool_infer,
        _unpool,
        copy_cost,
        min_inputs=2,
        max_inputs=3,
        attrs={"kernel_shape": REQUIRED, "pads": [], "strides": []},
    )
)


# ---------------------------------------------------------------------------------------- Col2Im
def _col2im_geometry(inputs: list[Any], attrs: dict[str, Any], consts: bool) -> Any:
    """(image shape, block shape, window over the padded image) from the constant inputs."""
    read = (lambda v, what: const_ints(v, what)) if consts else (lambda a, _: list(map(int, a)))
    image = tuple(read(inputs[1], "input 'image_shape'"))
    block = tuple(read(inputs[2], "input 'block_shape'"))
    if len(image) != len(block) or not image:
        raise ShapeError(f"image_shape {list(image)} and block_shape {list(block)} differ in size")
    window = window_geometry(image, block, {**attrs, "auto_pad": "NOTSET"})
    return image, block, window


def _col2im_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    image, block, window = _col2im_geometry(inputs, attrs, True)
    k = math.prod(block)
    blocks = math.prod(window.out)
    if x.rank != 3 or x.shape[1] % k or x.shape[2] != blocks:
        raise ShapeError(
            f"input must be N x (C*{k}) x {blocks} for blocks {list(block)} over image "
            f"{list(image)}, got shape {x.shape}"
        )
    return [((x.shape[0], x.shape[1] // k, *image), x.dtype)]


def _col2im(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    image, block, window = _col2im_geometry(arrays, attrs, False)
    n = x.shape[0]
    c = x.shape[1] // math.prod(block)
    dt = compute_dtype(x.dtype) if x.dtype.kind == "f" else x.dtype
    cols = x.astype(dt, copy=False).reshape(n, c, len(window.taps()), *window.out)
    padded = tuple(i + b + e for i, b, e in zip(image, window.begin, window.end, strict=True))
    buf = np.zeros((n, c, *padded), dt)
    # Each block tap adds its column to the strided positions it covers (ConvTranspose's scatter).
    for t, tap in enumerate(window.taps()):
        buf[(slice(None), slice(None), *window.tap_slices(tap))] += cols[:, :, t]
    crop = tuple(slice(b, b + i) for b, i in zip(window.begin, image, strict=True))
    return [buf[(slice(None), slice(None), *crop)].astype(outs[0].dtype)]


register(
    OpDef(
        "Col2Im",
        _col2im_infer,
        _col2im,
        default_cost(1),
        min_inputs=3,
        max_inputs=3,
        attrs={"dilations": [], "pads": [], "strides": []},
    )
)
