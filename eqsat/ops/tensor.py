"""Data movement: reshapes, transposes, concatenation, splitting, slicing, padding, tiling.

Every op here only moves or copies elements. Inputs an output shape depends on (Reshape's shape,
Slice's starts/ends/axes/steps, Pad's pads, Tile's repeats, ...) must be compile-time constants; a
rule that meets an unknown one raises a ShapeError naming that input. Shape arithmetic and the
index-driven ops (Shape, Gather, Scatter, TopK, ...) live in :mod:`eqsat.ops.shape`.

Costs: pure view changes (Reshape, Flatten, Squeeze, Unsqueeze) move no bytes on a contiguous
tensor and cost nothing; copies read what they copy and write their output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import (
    REQUIRED,
    OpDef,
    broadcast_shapes,
    default_cost,
    normalize_axis,
    register,
    same_dtype,
)

# Importing the shape module also registers the shape-arithmetic and indexing half of this family.
from eqsat.ops.shape import array_ints, const_ints, copy_cost, view_cost

# Upper bound for variadic ops (Concat inputs, Split outputs).
VARIADIC = 1 << 30


def _op(name: str, infer: Any, reference: Any, cost: Any = None, **kwargs: Any) -> None:
    register(OpDef(name, infer, reference, cost or default_cost(), **kwargs))


# ------------------------------------------------------------------ Reshape and friends
def reshape_shape(shape: tuple[int, ...], target: list[int], allowzero: bool) -> tuple[int, ...]:
    out: list[int] = []
    infer_at = None
    for i, d in enumerate(target):
        if d == -1:
            if infer_at is not None:
                raise ShapeError(f"shape {target} has more than one -1")
            infer_at = i
            out.append(1)
        elif d == 0 and not allowzero:
            if i >= len(shape):
                raise ShapeError(
                    f"shape {target}: 0 at position {i} copies no input dim of {shape}"
                )
            out.append(shape[i])
        elif d < 0:
            raise ShapeError(f"shape {target} has a negative dimension {d}")
        else:
            out.append(d)
    size = math.prod(shape)
    if infer_at is not None:
        known = math.prod(out)
        if allowzero and 0 in target:
            raise ShapeError(f"shape {target}: -1 cannot be combined with 0 when allowzero=1")
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape {list(shape)} to {target}: -1 cannot be inferred")
        out[infer_at] = size // known
    if math.prod(out) != size:
        raise ShapeError(f"cannot reshape {list(shape)} ({size} elements) to {out}")
    return tuple(out)


def _reshape_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    target = const_ints(inputs[1], "input 'shape'")
    return [(reshape_shape(inputs[0].shape, target, bool(attrs["allowzero"])), inputs[0].dtype)]


_op(
    "Reshape",
    _reshape_infer,
    lambda a, attrs, outs: [a[0].reshape(outs[0].shape)],
    view_cost,
    min_inputs=2,
    max_inputs=2,
    attrs={"allowzero": 0},
)


def _flatten_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    axis = attrs["axis"]
    if not -x.rank <= axis <= x.rank:
        raise ShapeError(f"axis {axis} is out of range for rank {x.rank}")
    axis += x.rank if axis < 0 else 0
    return [((math.prod(x.shape[:axis]), math.prod(x.shape[axis:])), x.dtype)]


_op(
    "Flatten",
    _flatten_infer,
    lambda a, attrs, outs: [a[0].reshape(outs[0].shape)],
    view_cost,
    attrs={"axis": 1},
)


def _squeeze_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    axes_value = inputs[1] if len(inputs) > 1 else None
    raw = [] if axes_value is None else const_ints(axes_value, "input 'axes'")
    if not raw:  # missing or empty axes squeeze every unit axis (as onnxruntime does)
        return [(tuple(d for d in x.shape if d != 1), x.dtype)]
    axes = {normalize_axis(a, x.rank) for a in raw}
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"cannot squeeze axis {a} of extent {x.shape[a]} (shape {x.shape})")
    return [(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)]


_op(
    "Squeeze",
    _squeeze_infer,
    lambda a, attrs, outs: [a[0].reshape(outs[0].shape)],
    view_cost,
    min_inputs=1,
    max_inputs=2,
)


def _unsqueeze_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    raw = const_ints(inputs[1], "input 'axes'")
    rank = x.rank + len(raw)
    axes = [normalize_axis(a, rank) for a in raw]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"axes {raw} repeat an axis")
    dims = iter(x.shape)
    return [(tuple(1 if i in axes else next(dims) for i in range(rank)), x.dtype)]


_op(
    "Unsqueeze",
    _unsqueeze_infer,
    lambda a, attrs, outs: [a[0].reshape(outs[0].shape)],
    view_cost,
    min_inputs=2,
    max_inputs=2,
)


# ------------------------------------------------------------------ Transpose
def _perm(rank: int, perm: Any) -> list[int]:
    if perm is None:
        return list(range(rank))[::-1]
    perm = [int(p) for p in perm]
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"perm {perm} is not a permutation of the {rank} axes")
    return perm


def _transpose_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    perm = _perm(x.rank, attrs["perm"])
    return [(tuple(x.shape[p] for p in perm), x.dtype)]


_op(
    "Transpose",
    _transpose_infer,
    lambda a, attrs, outs: [np.transpose(a[0], _perm(a[0].ndim, attrs["perm"]))],
    attrs={"perm": None},
)


# ------------------------------------------------------------------ Concat / Split
def _concat_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    if any(v is None for v in inputs):
        raise ShapeError("Concat inputs cannot be omitted")
    dtype = same_dtype(inputs)
    first = inputs[0]
    if first.rank == 0:
        raise ShapeError("cannot concatenate scalars")
    axis = normalize_axis(attrs["axis"], first.rank)
    for v in inputs:
        if v.rank != first.rank or any(
            a != b for i, (a, b) in enumerate(zip(v.shape, first.shape, strict=True)) if i != axis
        ):
            raise ShapeError(
                f"shapes {[v.shape for v in inputs]} differ outside concatenation axis {axis}"
            )
    shape = list(first.shape)
    shape[axis] = sum(v.shape[axis] for v in inputs)
    return [(tuple(shape), dtype)]


_op(
    "Concat",
    _concat_infer,
    lambda a, attrs, outs: [np.concatenate(a, axis=attrs["axis"])],
    min_inputs=1,
    max_inputs=VARIADIC,
    attrs={"axis": REQUIRED},
)


def split_sizes(dim: int, split: list[int] | None, num_outputs: int | None, n: int) -> list[int]:
    """Chunk sizes of Split: explicit ``split``, else ``num_outputs`` chunks (last smaller)."""
    if split is not None:
        if len(split) != n or any(s < 0 for s in split) or sum(split) != dim:
            raise ShapeError(f"split {split} does not divide extent {dim} into {n} outputs")
        return split
    if num_outputs is not None and num_outputs != n:
        raise ShapeError(f"num_outputs={num_outputs} but the node has {n} outputs")
    if num_outputs is None:
        # Neither given: the pre-18 form, equal parts that must divide evenly.
        if dim % n:
            raise ShapeError(f"extent {dim} does not split evenly into {n} outputs")
        return [dim // n] * n
    chunk = -(-dim // n)
    last = dim - chunk * (n - 1)
    if last < 0:
        raise ShapeError(f"extent {dim} cannot be split into {n} chunks of {chunk}")
    return [chunk] * (n - 1) + [last]


def _split_infer(inputs: list[Any], attrs: dict[str, Any], n: int) -> list[Any]:
    x = inputs[0]
    if x.rank == 0:
        raise ShapeError("cannot split a scalar")
    axis = normalize_axis(attrs["axis"], x.rank)
    split_value = inputs[1] if len(inputs) > 1 else None
    split = None if split_value is None else const_ints(split_value, "input 'split'")
    sizes = split_sizes(x.shape[axis], split, attrs["num_outputs"], n)
    return [((*x.shape[:axis], s, *x.shape[axis + 1 :]), x.dtype) for s in sizes]


def _split_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    axis = attrs["axis"] % x.ndim
    split = array_ints(arrays[1] if len(arrays) > 1 else None)
    sizes = split_sizes(x.shape[axis], split, attrs["num_outputs"], len(outs))
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


_op(
    "Split",
    _split_infer,
    _split_reference,
    min_inputs=1,
    max_inputs=2,
    max_outputs=VARIADIC,
    attrs={"axis": 0, "num_outputs": None},
)


# ------------------------------------------------------------------ Slice
def slice_plan(
    shape: tuple[int, ...],
    starts: list[int],
    ends: list[int],
    axes: list[int] | None,
    steps: list[int] | None,
) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Python slices and the output shape of an ONNX Slice (clamping exactly as the spec says)."""
    if len(starts) != len(ends):
        raise ShapeError(f"starts {starts} and ends {ends} differ in length")
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if len(axes) != len(starts) or len(steps) != len(starts):
        raise ShapeError(f"starts, ends, axes {axes} and steps {steps} differ in length")
    norm_axes = [normalize_axis(a, rank) for a in axes]
    if len(set(norm_axes)) != len(norm_axes):
        raise ShapeError(f"axes {axes} repeat an axis")
    slices = [slice(None)] * rank
    out = list(shape)
    for axis, start, end, step in zip(norm_axes, starts, ends, steps, strict=True):
        dim = shape[axis]
        if step == 0:
            raise ShapeError("slice step cannot be 0")
        start += dim if start < 0 else 0
        end += dim if end < 0 else 0
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        # After clamping only a backward end of -1 ("before index 0") differs from Python's meaning.
        slices[axis] = slice(start, None if end < 0 else end, step)
        out[axis] = len(range(dim)[slices[axis]]) if dim else 0
    return tuple(slices), tuple(out)


def _slice_args(values: list[Any], read: Any) -> tuple[list[int], ...]:
    names = ("starts", "ends", "axes", "steps")
    got = [values[i] if i < len(values) else None for i in range(1, 5)]
    return tuple(
        read(v, f"input {names[i]!r}") if v is not None else None for i, v in enumerate(got)
    )


def _slice_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    starts, ends, axes, steps = _slice_args(inputs, const_ints)
    if starts is None or ends is None:
        raise ShapeError("inputs 'starts' and 'ends' are required")
    return [(slice_plan(inputs[0].shape, starts, ends, axes, steps)[1], inputs[0].dtype)]


def _slice_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    starts, ends, axes, steps = _slice_args(arrays, lambda a, _: array_ints(a))
    return [arrays[0][slice_plan(arrays[0].shape, starts, ends, axes, steps)[0]]]


_op("Slice", _slice_infer, _slice_reference, copy_cost, min_inputs=3, max_inputs=5)


# ------------------------------------------------------------------ Expand / Tile
def _expand_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    shape = const_ints(inputs[1], "input 'shape'")
    if any(d < 0 for d in shape):
        raise ShapeError(f"shape {shape} has a negative dimension")
    return [(broadcast_shapes(inputs[0].shape, shape), inputs[0].dtype)]


_op(
    "Expand",
    _expand_infer,
    lambda a, attrs, outs: [np.broadcast_to(a[0], outs[0].shape).copy()],
    copy_cost,
    min_inputs=2,
    max_inputs=2,
)


def _tile_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    repeats = const_ints(inputs[1], "input 'repeats'")
    if len(repeats) != x.rank or any(r < 0 for r in repeats):
        raise ShapeError(f"repeats {repeats} must be {x.rank} non-negative counts")
    return [(tuple(d * r for d, r in zip(x.shape, repeats, strict=True)), x.dtype)]


_op(
    "Tile",
    _tile_infer,
    lambda a, attrs, outs: [np.tile(a[0], array_ints(a[1]))],
    copy_cost,
    min_inputs=2,
    max_inputs=2,
)


# ------------------------------------------------------------------ Pad
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def pad_widths(shape: tuple[int, ...], pads: list[int], axes: list[int] | None) -> list[tuple]:
    """Per-axis (begin, end) pads; negative values crop."""
    rank = len(shape)
    axes = list(range(rank)) if axes is None else [normalize_axis(a, rank) for a in axes]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"pad axes {axes} repeat an axis")
    if len(pads) != 2 * len(axes):
        raise ShapeError(f"pads {pads} must hold 2 values per padded axis ({len(axes)} axes)")
    widths = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[len(axes) + i])
    return widths


def _pad_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    mode = attrs["mode"]
    if mode not in PAD_MODES:
        raise ShapeError(f"unknown pad mode {mode!r}; expected one of {PAD_MODES}")
    pads = const_ints(inputs[1], "input 'pads'")
    axes_value = inputs[3] if len(inputs) > 3 else None
    axes = None if axes_value is None else const_ints(axes_value, "input 'axes'")
    value = inputs[2] if len(inputs) > 2 else None
    if value is not None and (value.dtype != x.dtype or value.size != 1):
        raise ShapeError(f"constant_value must be one {x.dtype} element, got {value!r}")
    out = []
    for axis, (d, (begin, end)) in enumerate(
        zip(x.shape, pad_widths(x.shape, pads, axes), strict=True)
    ):
        cropped = d + min(begin, 0) + min(end, 0)
        if cropped < 0:
            raise ShapeError(f"pads {pads} crop more than axis {axis} holds ({d})")
        grow = max(begin, 0) + max(end, 0)
        if mode != "constant" and grow and cropped == 0:
            raise ShapeError(f"pad mode {mode!r} cannot extend the empty axis {axis}")
        if mode == "reflect" and max(begin, end) > cropped - 1:
            raise ShapeError(f"reflect pads {pads} exceed extent {cropped} - 1 of axis {axis}")
        out.append(cropped + grow)
    return [(tuple(out), x.dtype)]


def _pad_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    value = arrays[2] if len(arrays) > 2 else None
    axes = array_ints(arrays[3] if len(arrays) > 3 else None)
    widths = pad_widths(x.shape, array_ints(arrays[1]), axes)
    # Negative pads crop before the remaining pads extend, as onnxruntime does.
    crop = tuple(
        slice(-min(b, 0), d + min(e, 0)) for d, (b, e) in zip(x.shape, widths, strict=True)
    )
    grow = [(max(b, 0), max(e, 0)) for b, e in widths]
    x = x[crop]
    if attrs["mode"] == "constant":
        fill = np.asarray(value).reshape(-1)[0] if value is not None else 0
        return [np.pad(x, grow, mode="constant", constant_values=fill)]
    return [np.pad(x, grow, mode=attrs["mode"])]


_op(
    "Pad",
    _pad_infer,
    _pad_reference,
    copy_cost,
    min_inputs=2,
    max_inputs=4,
    attrs={"mode": "constant"},
)


# ------------------------------------------------------------------ DepthToSpace / SpaceToDepth
def _blocks(x: Value, attrs: dict[str, Any]) -> tuple[int, int, int, int, int]:
    if x.rank != 4:
        raise ShapeError(f"needs a rank-4 NCHW input, got shape {x.shape}")
    b = attrs["blocksize"]
    if b <= 0:
        raise ShapeError(f"blocksize must be positive, got {b}")
    return (*x.shape, b)


def _depth_to_space_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    n, c, h, w, b = _blocks(inputs[0], attrs)
    if attrs["mode"] not in ("DCR", "CRD"):
        raise ShapeError(f"mode must be 'DCR' or 'CRD', got {attrs['mode']!r}")
    if c % (b * b):
        raise ShapeError(f"channels {c} are not divisible by blocksize² = {b * b}")
    return [((n, c // (b * b), h * b, w * b), inputs[0].dtype)]


def _depth_to_space(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    n, c, h, w = x.shape
    b = attrs["blocksize"]
    if attrs["mode"] == "DCR":
        tmp = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        tmp = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [tmp.reshape(outs[0].shape)]


_op(
    "DepthToSpace",
    _depth_to_space_infer,
    _depth_to_space,
    attrs={"blocksize": REQUIRED, "mode": "DCR"},
)


def _space_to_depth_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    n, c, h, w, b = _blocks(inputs[0], attrs)
    if attrs["mode"] not in ("DCR", "CRD"):
        raise ShapeError(f"mode must be 'DCR' or 'CRD', got {attrs['mode']!r}")
    if h % b or w % b:
        raise ShapeError(f"spatial dims {h}x{w} are not divisible by blocksize {b}")
    return [((n, c * b * b, h // b, w // b), inputs[0].dtype)]


def _space_to_depth(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    n, c, h, w = x.shape
    b = attrs["blocksize"]
    tmp = x.reshape(n, c, h // b, b, w // b, b)
    # DCR puts the block offset before the channel in the output depth, CRD after it.
    tmp = tmp.transpose((0, 3, 5, 1, 2, 4) if attrs["mode"] == "DCR" else (0, 1, 3, 5, 2, 4))
    return [tmp.reshape(outs[0].shape)]


_op(
    "SpaceToDepth",
    _space_to_depth_infer,
    _space_to_depth,
    attrs={"blocksize": REQUIRED, "mode": "DCR"},
)
