"""Recent standard operators for exported language models: TensorScatter (opset 24), which writes
new keys or values into a fixed-size KV cache, and BitCast (opset 26), which reinterprets bits.

TensorScatter(past_cache, update, write_indices?) copies ``past_cache`` and writes ``update``
into it along ``axis`` (not the batch axis 0), batch row ``b`` from position
``write_indices[b]`` (0 when absent) on: ``mode="linear"`` refuses positions past the cache's
end (an :class:`~eqsat.errors.InputError` at run time, naming the node), ``"circular"`` wraps
them around it, as the ONNX reference and onnxruntime do. BitCast views the data as another type
of the same item size (float32 as int32, float16 as uint16, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eqsat.errors import InputError, ShapeError
from eqsat.ir import Value
from eqsat.ops import REQUIRED, Cost, OpDef, normalize_axis, register
from eqsat.ops.elementwise import onnx_dtype

MODES = ("linear", "circular")


def _scatter_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    cache, update = inputs[0], inputs[1]
    indices = inputs[2] if len(inputs) > 2 else None
    if attrs["mode"] not in MODES:
        raise ShapeError(f"mode must be one of {MODES}, got {attrs['mode']!r}")
    if cache.dtype != update.dtype:
        raise ShapeError(f"update's dtype {update.dtype} differs from past_cache's {cache.dtype}")
    if cache.rank < 2 or update.rank != cache.rank:
        raise ShapeError(
            f"past_cache {cache.shape} (rank >= 2) and update {update.shape} must have one rank"
        )
    axis = normalize_axis(int(attrs["axis"]), cache.rank)
    if axis == 0:
        raise ShapeError("axis must not be the batch axis 0")
    for a, (c, u) in enumerate(zip(cache.shape, update.shape, strict=True)):
        if (a != axis and c != u) or (a == axis and u > c):
            raise ShapeError(
                f"update {update.shape} does not fit past_cache {cache.shape} along axis {axis}"
            )
    if indices is not None and (indices.dtype != np.int64 or indices.shape != (cache.shape[0],)):
        raise ShapeError(
            f"write_indices must be int64 of shape ({cache.shape[0]},), got "
            f"{indices.dtype} {indices.shape}"
        )
    return [(cache.shape, cache.dtype)]


def _scatter_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    cache, update = np.asarray(arrays[0]), np.asarray(arrays[1])
    indices = arrays[2] if len(arrays) > 2 and arrays[2] is not None else None
    axis = int(attrs["axis"]) % cache.ndim
    batch, length, count = cache.shape[0], cache.shape[axis], update.shape[axis]
    start = np.zeros(batch, np.int64) if indices is None else np.asarray(indices, np.int64)
    positions = start.reshape(-1, 1) + np.arange(count)
    if attrs["mode"] == "circular":
        positions %= length
    elif positions.size and (positions.min() < 0 or positions.max() >= length):
        raise InputError(
            f"write_indices {start.tolist()} with {count} updates run past the cache's "
            f"{length} positions (mode 'linear')"
        )
    present = cache.copy()
    target = np.moveaxis(present, axis, 1)  # a view: (batch, length, ...)
    target[np.arange(batch)[:, None], positions] = np.moveaxis(update, axis, 1)
    return [present]


def _scatter_cost(inputs: list[Value | None], outputs: list[Value | None], _: dict) -> Cost:
    cache, update = inputs[0], inputs[1]
    return Cost(0.0, float(cache.nbytes + update.nbytes), float(outputs[0].nbytes))


register(
    OpDef(
        "TensorScatter",
        _scatter_infer,
        _scatter_reference,
        _scatter_cost,
        min_inputs=2,
        max_inputs=3,
        attrs={"axis": -2, "mode": "linear"},
    )
)


def _bitcast_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    to = onnx_dtype(attrs["to"])
    if to.itemsize != x.dtype.itemsize:
        raise ShapeError(
            f"BitCast needs types of one size: {x.dtype} has {x.dtype.itemsize * 8} bits, "
            f"{to} {to.itemsize * 8}"
        )
    return [(x.shape, to)]


def _bitcast_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = np.asarray(arrays[0], order="C")  # ascontiguousarray would make a scalar 1-D
    return [x.view(outs[0].dtype)]


def _bitcast_cost(inputs: list[Value | None], outputs: list[Value | None], _: dict) -> Cost:
    return Cost(0.0, float(inputs[0].nbytes), float(outputs[0].nbytes))


register(
    OpDef(
        "BitCast",
        _bitcast_infer,
        _bitcast_reference,
        _bitcast_cost,
        min_inputs=1,
        max_inputs=1,
        attrs={"to": REQUIRED},
    )
)
