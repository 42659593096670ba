"""Shape arithmetic and index-driven data movement.

Shape, Size, ConstantOfShape and Range are the ops of the shape subgraphs exported models carry
(``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``); Shape and Size depend only on their input's
static shape, so they fold even when its content is unknown, and the rest then fold as ordinary
constants at build time. NonZero has a data-dependent output shape, so it is supported only on a
constant input (where it folds away).

The indexing ops (Gather, GatherElements, GatherND, ScatterND, ScatterElements, OneHot, TopK,
CumSum) accept int32 and int64 indices, and negative indices count from the end of their axis.

The helpers for reading constant integer inputs and the copy/view cost terms are shared with
:mod:`eqsat.ops.tensor`, which imports this module (and so registers these ops).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import (
    Cost,
    OpDef,
    const_of,
    default_cost,
    normalize_axis,
    refuse_run_time,
    register,
)

INT64 = np.dtype(np.int64)


def const_ints(value: Value | None, what: str, *, rank: int | None = 1) -> list[int]:
    """An integer input's compile-time content as Python ints (a ShapeError when unknown)."""
    array = np.asarray(const_of(value, what))
    if array.dtype.kind not in "iu":
        raise ShapeError(f"{what} must be an integer tensor, got {array.dtype}")
    if rank is not None and array.ndim != rank and not (rank == 1 and array.ndim == 0):
        raise ShapeError(f"{what} must have rank {rank}, got shape {list(array.shape)}")
    return [int(v) for v in array.reshape(-1)]


def array_ints(array: np.ndarray | None) -> list[int] | None:
    return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def view_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    return Cost(0.0, 0.0, 0.0)


def copy_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    """A copy that reads at most as much of its data input as it writes (plus its small inputs)."""
    written = float(sum(v.nbytes for v in outputs if v is not None))
    data = inputs[0]
    rest = sum(v.nbytes for v in inputs[1:] if v is not None)
    return Cost(0.0, float(min(data.nbytes, written) + rest), written)


def _op(name: str, infer: Any, reference: Any, cost: Any = None, **kwargs: Any) -> None:
    register(OpDef(name, infer, reference, cost or default_cost(), **kwargs))


def _check_indices(v: Value, what: str = "indices") -> None:
    if v.dtype not in (np.int32, np.int64):
        raise ShapeError(f"{what} must be int32 or int64, got {v.dtype}")


def _wrap(indices: np.ndarray, dim: int, what: str = "index") -> np.ndarray:
    """Indices with negatives counted from the end, checked against ``dim``."""
    idx = np.asarray(indices, np.int64)
    if not idx.size:
        return idx
    low = idx.min()
    if low < -dim or idx.max() >= dim:
        bad = idx[(idx < -dim) | (idx >= dim)].reshape(-1)[0]
        raise IndexError(f"{what} {int(bad)} is out of range for an axis of extent {dim}")
    # Indices are rarely negative (NonZero's never are): then they are the result as they are.
    return idx if low >= 0 else np.where(idx < 0, idx + dim, idx)


def gather_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    """Reads only the gathered elements (at most the whole data) and the indices."""
    written = float(sum(v.nbytes for v in outputs if v is not None))
    return Cost(0.0, float(min(inputs[0].nbytes, written) + inputs[1].nbytes), written)


# ------------------------------------------------------------------ Shape / Size
def _input_shape(array: np.ndarray | None, outs: list[Value | None]) -> tuple[int, ...]:
    # Folding a shape-only op passes no array for an unknown input; its static shape is on the node.
    if array is not None:
        return tuple(array.shape)
    return outs[0].producer.inputs[0].shape


def _shape_range(rank: int, attrs: dict[str, Any]) -> slice:
    end = attrs["end"]
    # Python slicing clamps and wraps negative bounds exactly as the ONNX spec describes.
    return slice(attrs["start"], rank if end is None else end)


def _shape_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    return [((len(range(inputs[0].rank)[_shape_range(inputs[0].rank, attrs)]),), INT64)]


def _shape_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    shape = _input_shape(arrays[0], outs)
    return [np.array(shape[_shape_range(len(shape), attrs)], INT64)]


def _metadata_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    return Cost(0.0, 0.0, float(sum(v.nbytes for v in outputs if v is not None)))


_op(
    "Shape",
    _shape_infer,
    _shape_reference,
    _metadata_cost,
    attrs={"start": 0, "end": None},
    shape_only=True,
)
_op(
    "Size",
    lambda inputs, attrs, n: [((), INT64)],
    lambda a, attrs, outs: [np.array(math.prod(_input_shape(a[0], outs)), INT64)],
    _metadata_cost,
    shape_only=True,
)


# ------------------------------------------------------------------ ConstantOfShape / Range
def _fill_value(attrs: dict[str, Any]) -> np.ndarray:
    value = attrs["value"]
    if value is None:
        return np.zeros(1, np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise ShapeError(f"value must hold one element, got shape {list(value.shape)}")
    return value.reshape(1)


def _constant_of_shape_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    shape = const_ints(inputs[0], "input 'shape'")
    if any(d < 0 for d in shape):
        raise ShapeError(f"shape {shape} has a negative dimension")
    return [(tuple(shape), _fill_value(attrs).dtype)]


_op(
    "ConstantOfShape",
    _constant_of_shape_infer,
    lambda a, attrs, outs: [np.full(outs[0].shape, _fill_value(attrs)[0], outs[0].dtype)],
    attrs={"value": None},
)

RANGE_TYPES = (np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)


def _range_count(start: Any, limit: Any, delta: Any) -> int:
    if delta == 0:
        raise ShapeError("Range delta cannot be 0")
    if isinstance(start, np.integer):
        # Exact integer ceil((limit - start) / delta), in Python ints so nothing overflows.
        count = -((int(start) - int(limit)) // int(delta))
    else:
        count = math.ceil(float(limit - start) / float(delta))
    return max(count, 0)


def _range_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    names = ("start", "limit", "delta")
    if len({v.dtype for v in inputs}) != 1 or inputs[0].dtype.type not in RANGE_TYPES:
        raise ShapeError(f"start, limit, delta must share one numeric type, got {inputs}")
    scalars = []
    for name, v in zip(names, inputs, strict=True):
        array = np.asarray(const_of(v, f"input {name!r}"))
        if array.size != 1:
            raise ShapeError(f"input {name!r} must be a scalar, got shape {list(array.shape)}")
        scalars.append(array.reshape(-1)[0])
    return [((_range_count(*scalars),), inputs[0].dtype)]


def _range_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    start, limit, delta = (np.asarray(a).reshape(-1)[0] for a in arrays)
    count = _range_count(start, limit, delta)
    dtype = outs[0].dtype
    # The spec defines output[i] = start + i * delta, computed in the inputs' type.
    return [(start + np.arange(count, dtype=dtype) * delta).astype(dtype)]


_op("Range", _range_infer, _range_reference, default_cost(1.0), min_inputs=3, max_inputs=3)


def _nonzero_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    # Detectors' post-processing (box filtering before NMS) reaches here: say what it is.
    refuse_run_time(inputs[0], "NonZero")
    x = np.asarray(const_of(inputs[0], "input 'X' (NonZero's output shape depends on it)"))
    return [((x.ndim, int(np.count_nonzero(x))), INT64)]


_op(
    "NonZero",
    _nonzero_infer,
    lambda a, attrs, outs: [np.array(np.nonzero(a[0]), INT64).reshape(outs[0].shape)],
)


# ------------------------------------------------------------------ Gather family
def _gather_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    data, indices = inputs
    _check_indices(indices)
    if data.rank == 0:
        raise ShapeError("cannot gather from a scalar")
    axis = normalize_axis(attrs["axis"], data.rank)
    return [(data.shape[:axis] + indices.shape + data.shape[axis + 1 :], data.dtype)]


def _gather(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    data, indices = arrays
    axis = attrs["axis"] % data.ndim
    return [np.take(data, _wrap(indices, data.shape[axis]), axis=axis)]


_op("Gather", _gather_infer, _gather, gather_cost, min_inputs=2, max_inputs=2, attrs={"axis": 0})


def _gather_elements_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    data, indices = inputs
    _check_indices(indices)
    if data.rank == 0 or indices.rank != data.rank:
        raise ShapeError(f"data {data.shape} and indices {indices.shape} need one rank >= 1")
    axis = normalize_axis(attrs["axis"], data.rank)
    for i, (d, k) in enumerate(zip(data.shape, indices.shape, strict=True)):
        if i != axis and k > d:
            raise ShapeError(f"indices {indices.shape} exceed data {data.shape} on axis {i}")
    return [(indices.shape, data.dtype)]


def _gather_elements(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    data, indices = arrays
    axis = attrs["axis"] % data.ndim
    # Only the leading part of data that indices' extents cover takes part on the other axes.
    window = tuple(slice(None) if i == axis else slice(0, k) for i, k in enumerate(indices.shape))
    return [np.take_along_axis(data[window], _wrap(indices, data.shape[axis]), axis=axis)]


_op(
    "GatherElements",
    _gather_elements_infer,
    _gather_elements,
    gather_cost,
    min_inputs=2,
    max_inputs=2,
    attrs={"axis": 0},
)


def _nd_shapes(data: Value, indices: Value, batch_dims: int) -> tuple[int, ...]:
    """GatherND's output shape (also ScatterND's updates shape when batch_dims is 0)."""
    _check_indices(indices)
    if indices.rank < 1 or data.rank < 1:
        raise ShapeError("data and indices need rank >= 1")
    k = indices.shape[-1]
    if not 0 <= batch_dims < min(data.rank, indices.rank):
        raise ShapeError(f"batch_dims {batch_dims} is out of range")
    if data.shape[:batch_dims] != indices.shape[:batch_dims]:
        raise ShapeError(f"batch dims of data {data.shape} and indices {indices.shape} differ")
    if k > data.rank - batch_dims:
        raise ShapeError(f"index tuples of length {k} exceed data rank {data.rank}")
    return indices.shape[:-1] + data.shape[batch_dims + k :]


def _nd_index(indices: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Index tuples (rows of ``indices``) as one numpy advanced index into ``shape``."""
    # One row per position of the tuples: contiguous, so that each is checked in fast passes.
    rows = np.ascontiguousarray(np.asarray(indices, np.int64).reshape(-1, indices.shape[-1]).T)
    return tuple(_wrap(rows[j], shape[j]) for j in range(rows.shape[0]))


def _gather_nd(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    data, indices = arrays
    b = attrs["batch_dims"]
    batches = math.prod(data.shape[:b])
    data_b = data.reshape((batches, *data.shape[b:]))
    idx_b = indices.reshape((batches, -1, indices.shape[-1]))
    parts = [data_b[i][_nd_index(idx_b[i], data_b.shape[1:])] for i in range(batches)]
    tail = data.shape[b + indices.shape[-1] :]
    stacked = np.stack(parts) if parts else np.empty((0, 0, *tail), data.dtype)
    return [stacked.reshape(outs[0].shape)]


_op(
    "GatherND",
    lambda inputs, attrs, n: [
        (_nd_shapes(inputs[0], inputs[1], attrs["batch_dims"]), inputs[0].dtype)
    ],
    _gather_nd,
    gather_cost,
    min_inputs=2,
    max_inputs=2,
    attrs={"batch_dims": 0},
)


# ------------------------------------------------------------------ Scatter family
SCATTER_UFUNCS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_mode(attrs: dict[str, Any]) -> str:
    mode = attrs["reduction"]
    if mode != "none" and mode not in SCATTER_UFUNCS:
        raise ShapeError(f"unknown reduction {mode!r}; expected none, add, mul, max or min")
    return mode


def _scatter_into(out: np.ndarray, index: tuple, updates: np.ndarray, mode: str) -> np.ndarray:
    if mode == "none":
        out[index] = updates
    else:
        SCATTER_UFUNCS[mode].at(out, index, updates)
    return out


def _scatter_nd_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    data, indices, updates = inputs
    _scatter_mode(attrs)
    expected = _nd_shapes(data, indices, 0)
    if updates.shape != expected or updates.dtype != data.dtype:
        raise ShapeError(f"updates must be {data.dtype}{list(expected)}, got {updates!r}")
    return [(data.shape, data.dtype)]


def _scatter_nd(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    data, indices, updates = arrays
    k = indices.shape[-1]
    flat = updates.reshape((-1, *data.shape[k:]))
    return [_scatter_into(data.copy(), _nd_index(indices, data.shape), flat, attrs["reduction"])]


_op(
    "ScatterND",
    _scatter_nd_infer,
    _scatter_nd,
    min_inputs=3,
    max_inputs=3,
    attrs={"reduction": "none"},
)


def _scatter_elements_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    data, indices, updates = inputs
    _scatter_mode(attrs)
    _check_indices(indices)
    if indices.shape != updates.shape or indices.rank != data.rank or data.rank == 0:
        raise ShapeError(f"indices {indices.shape} and updates {updates.shape} must match in shape")
    if updates.dtype != data.dtype:
        raise ShapeError(f"updates dtype {updates.dtype} differs from data dtype {data.dtype}")
    axis = normalize_axis(attrs["axis"], data.rank)
    if any(
        k > d for i, (k, d) in enumerate(zip(indices.shape, data.shape, strict=True)) if i != axis
    ):
        raise ShapeError(f"indices {indices.shape} exceed data {data.shape}")
    return [(data.shape, data.dtype)]


def _whole_rows(data: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray | None:
    """The 1-D index along ``axis`` when ``indices`` covers whole slices of ``data`` with one
    index per slice (the same value along every other axis), else None."""
    pairs = enumerate(zip(indices.shape, data.shape, strict=True))
    if any(i != d for k, (i, d) in pairs if k != axis):
        return None
    first = indices[tuple(slice(None) if k == axis else slice(0, 1) for k in range(data.ndim))]
    return (
        first.reshape(-1)
        if np.array_equal(indices, np.broadcast_to(first, indices.shape))
        else None
    )


def _scatter_elements(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    data, indices, updates = arrays
    axis = attrs["axis"] % data.ndim
    rows = _whole_rows(data, indices, axis)
    if rows is not None and attrs["reduction"] == "none":
        # Every index the same along the other axes (torchvision's Faster R-CNN reorders its
        # 150 x 256 x 7 x 7 box features so): whole slices move, 10x faster than per element.
        out = data.copy()
        np.moveaxis(out, axis, 0)[_wrap(rows, data.shape[axis])] = np.moveaxis(updates, axis, 0)
        return [out]
    # Each update's flat position in the output: one index array, not a tuple of broadcast
    # grids (3x faster on random indices).
    strides = [math.prod(data.shape[k + 1 :]) for k in range(data.ndim)]
    flat = _wrap(indices, data.shape[axis]) * strides[axis]
    for k, grid in enumerate(np.indices(indices.shape, sparse=True)):
        if k != axis:
            flat = flat + grid * strides[k]
    out = np.array(data, order="C")
    _scatter_into(out.reshape(-1), flat.reshape(-1), updates.reshape(-1), attrs["reduction"])
    return [out]


_op(
    "ScatterElements",
    _scatter_elements_infer,
    _scatter_elements,
    min_inputs=3,
    max_inputs=3,
    attrs={"axis": 0, "reduction": "none"},
)


# ------------------------------------------------------------------ OneHot
def _onehot_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    indices, depth_value, values = inputs
    depth = np.asarray(const_of(depth_value, "input 'depth'"))
    if depth.size != 1:
        raise ShapeError(f"input 'depth' must be a scalar, got shape {list(depth.shape)}")
    depth_int = int(depth.reshape(-1)[0])
    if depth_int < 1:
        raise ShapeError(f"depth must be positive, got {depth_int}")
    if values.size != 2:
        raise ShapeError(f"input 'values' must hold [off, on], got shape {list(values.shape)}")
    rank = indices.rank + 1
    axis = normalize_axis(attrs["axis"], rank)
    return [((*indices.shape[:axis], depth_int, *indices.shape[axis:]), values.dtype)]


def _onehot(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    indices, depth, values = arrays
    depth = int(np.asarray(depth).reshape(-1)[0])
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + depth, idx)  # still out of range afterwards: all "off"
    hot = idx[..., None] == np.arange(depth)
    hot = np.moveaxis(hot, -1, attrs["axis"] % (idx.ndim + 1))
    off, on = np.asarray(values).reshape(-1)
    return [np.where(hot, on, off).astype(values.dtype)]


_op("OneHot", _onehot_infer, _onehot, min_inputs=3, max_inputs=3, attrs={"axis": -1})


# ------------------------------------------------------------------ TopK / CumSum / CumProd
def _topk_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x, k_value = inputs
    k = const_ints(k_value, "input 'K'")
    if len(k) != 1 or k[0] < 0:
        raise ShapeError(f"K must be one non-negative count, got {k}")
    if x.rank == 0:
        raise ShapeError("TopK needs an input of rank >= 1")
    axis = normalize_axis(attrs["axis"], x.rank)
    if k[0] > x.shape[axis]:
        raise ShapeError(f"K={k[0]} exceeds extent {x.shape[axis]} of axis {axis}")
    shape = (*x.shape[:axis], k[0], *x.shape[axis + 1 :])
    return [(shape, x.dtype), (shape, INT64)]


def _topk(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, k = arrays
    k = int(np.asarray(k).reshape(-1)[0])
    axis = attrs["axis"] % x.ndim
    n = x.shape[axis]
    # Ties go to the lower index. A stable ascending sort orders them so; for the largest
    # values, sort the reversed axis and read the result backwards.
    if attrs["largest"]:
        order = n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    index = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, index, axis=axis), index.astype(INT64)]


def _topk_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x = inputs[0]
    n = x.shape[attrs["axis"] % x.rank] if x.rank else 1
    base = default_cost()(inputs, outputs, attrs)
    return Cost(float(x.size * max(math.log2(max(n, 2)), 1.0)), base.bytes_read, base.bytes_written)


_op(
    "TopK",
    _topk_infer,
    _topk,
    _topk_cost,
    min_inputs=2,
    max_inputs=2,
    min_outputs=2,
    max_outputs=2,
    attrs={"axis": -1, "largest": 1, "sorted": 1},
)


def _cumulative_infer(op: str) -> Any:
    def infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
        x, axis_value = inputs
        axis = const_ints(axis_value, "input 'axis'", rank=None)
        if len(axis) != 1:
            raise ShapeError(f"input 'axis' must be a scalar, got {axis}")
        normalize_axis(axis[0], x.rank)
        if x.dtype.kind not in "iuf":
            raise ShapeError(f"{op} does not accept dtype {x.dtype}")
        return [(x.shape, x.dtype)]

    return infer


def _cumulative(scan: Any, identity: int) -> Any:
    """The reference of a running sum or product (``scan``: np.cumsum, np.cumprod) along the
    given axis, with ONNX's ``exclusive`` and ``reverse``."""

    def reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
        x, axis = arrays
        axis = int(np.asarray(axis).reshape(-1)[0]) % max(x.ndim, 1)
        if attrs["reverse"]:
            x = np.flip(x, axis)
        out = scan(x, axis=axis, dtype=x.dtype)
        if attrs["exclusive"]:
            # Shift by one: the result of the elements strictly before each position.
            first = np.full_like(np.take(out, [0], axis), identity)
            out = np.concatenate([first, out], axis=axis)
            out = np.take(out, np.arange(x.shape[axis]), axis=axis)
        if attrs["reverse"]:
            out = np.flip(out, axis)
        return [out]

    return reference


for _name, _scan, _identity in (("CumSum", np.cumsum, 0), ("CumProd", np.cumprod, 1)):
    _op(
        _name,
        _cumulative_infer(_name),
        _cumulative(_scan, _identity),
        default_cost(1.0),
        min_inputs=2,
        max_inputs=2,
        attrs={"exclusive": 0, "reverse": 0},
    )
