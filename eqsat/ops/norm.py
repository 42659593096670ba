"""Normalizations over trailing axes and the rest: LayerNormalization, RMSNormalization,
GroupNormalization, LpNormalization, MeanVarianceNormalization, LRN, and Hardmax (Softmax's
arg-max sibling).

BatchNormalization, InstanceNormalization and Softmax live in :mod:`eqsat.ops.nn`. GroupNormalization speaks the opset-21 form (scale and bias per channel); the
importer (:mod:`eqsat.onnx_upgrade`) widens opset-18 per-group parameters. float16 inputs are
computed in float32 and rounded once at the end, as onnxruntime does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import REQUIRED, OpDef, normalize_axis, register
from eqsat.ops.nn import (
    FLOAT_DTYPES,
    STASH_TYPES,
    check_dtype,
    compute_dtype,
    io_cost,
    per_element_cost,
)


# ---------------------------------------------------------------------------- LayerNormalization
def check_last_axes_norm(
    inputs: list[Value | None], attrs: dict[str, Any], names: tuple[str, ...]
) -> tuple[int, np.dtype]:
    """Checks of a normalization over the axes from ``axis`` on (Layer-, RMSNormalization):
    (axis, stash dtype), parameters ``names`` of X's dtype, broadcasting to those axes."""
    x = inputs[0]
    check_dtype(x.dtype, FLOAT_DTYPES, "X")
    if x.rank < 1:
        raise ShapeError("X must have rank >= 1")
    axis = normalize_axis(int(attrs["axis"]), x.rank)
    for value, name in zip(inputs[1:], names, strict=False):
        if value is None:
            continue
        if value.dtype != x.dtype:
            raise ShapeError(f"{name} must have X's dtype {x.dtype}, got {value.dtype}")
        normalized = x.shape[axis:]
        fits = value.rank <= len(normalized) and all(
            d in (1, n) for d, n in zip(value.shape[::-1], normalized[::-1], strict=False)
        )
        if not fits:
            raise ShapeError(
                f"{name} {value.shape} does not broadcast to the normalized shape {x.shape[axis:]}"
            )
    stash = STASH_TYPES.get(int(attrs["stash_type"]))
    if stash is None:
        raise ShapeError(f"stash_type {attrs['stash_type']} is not float16, float32 or float64")
    return axis, stash


def _ln_infer(inputs: list[Value | None], attrs: dict[str, Any], n_out: int) -> list[Any]:
    x = inputs[0]
    axis, stash = check_last_axes_norm(inputs, attrs, ("Scale", "B"))
    stats = x.shape[:axis] + (1,) * (x.rank - axis)
    return [(x.shape, x.dtype), (stats, stash), (stats, stash)][:n_out]


def _ln_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, scale = arrays[0], arrays[1]
    bias = arrays[2] if len(arrays) > 2 else None
    axis = normalize_axis(int(attrs["axis"]), x.ndim)
    stash = STASH_TYPES[int(attrs["stash_type"])]
    # Statistics in the stash type, widened to float64 for float64 X as onnxruntime does.
    dt = np.promote_types(compute_dtype(stash), compute_dtype(x.dtype))
    axes = tuple(range(axis, x.ndim))
    xs = x.astype(dt, copy=False)
    mean = xs.mean(axis=axes, keepdims=True)
    centered = xs - mean
    inv_std = 1 / np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True) + attrs["epsilon"])
    inv_std = inv_std.astype(dt, copy=False)
    # As in the ONNX function body: normalize in the stash type, then scale and shift in X's type.
    normalized = (centered * inv_std).astype(x.dtype, copy=False)
    cd = compute_dtype(x.dtype)
    y = normalized.astype(cd, copy=False) * scale.astype(cd, copy=False)
    if bias is not None:
        y = y + bias.astype(cd, copy=False)
    return [y.astype(x.dtype, copy=False), mean.astype(stash), inv_std.astype(stash)][: len(outs)]


register(
    OpDef(
        "LayerNormalization",
        _ln_infer,
        _ln_reference,
        per_element_cost(8),
        min_inputs=2,
        max_inputs=3,
        max_outputs=3,
        attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
    )
)


# ---------------------------------------------------------------------------- GroupNormalization
def _gn_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, scale, bias = inputs
    check_dtype(x.dtype, FLOAT_DTYPES, "X")
    if x.rank < 2:
        raise ShapeError(f"X must be N x C x ..., got shape {x.shape}")
    groups, channels = int(attrs["num_groups"]), x.shape[1]
    if groups <= 0 or channels % groups:
        raise ShapeError(f"num_groups {groups} does not divide the {channels} channels")
    for v, name in ((scale, "scale"), (bias, "bias")):
        if v.shape != (channels,):
            raise ShapeError(
                f"{name} must have shape ({channels},) (one per channel), got {v.shape}"
            )
        if v.dtype != x.dtype:
            raise ShapeError(f"{name} must have X's dtype {x.dtype}, got {v.dtype}")
    if int(attrs["stash_type"]) not in STASH_TYPES:
        raise ShapeError(f"stash_type {attrs['stash_type']} is not float16, float32 or float64")
    return [(x.shape, x.dtype)]


def _gn_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, scale, bias = arrays
    n, c = x.shape[:2]
    groups = int(attrs["num_groups"])
    stash = STASH_TYPES[int(attrs["stash_type"])]
    dt = np.promote_types(compute_dtype(stash), compute_dtype(x.dtype))
    xs = x.astype(dt, copy=False).reshape(n, groups, -1)
    mean = xs.mean(axis=-1, keepdims=True)
    centered = xs - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    # As the ONNX function body: normalize in the stash type, scale and shift in X's type.
    normalized = (centered / np.sqrt(var + dt.type(attrs["epsilon"]))).astype(x.dtype)
    cd = compute_dtype(x.dtype)
    per_channel = (1, c) + (1,) * (x.ndim - 2)
    y = normalized.reshape(x.shape).astype(cd) * scale.astype(cd).reshape(per_channel)
    y = y + bias.astype(cd).reshape(per_channel)
    return [y.astype(x.dtype, copy=False)]


register(
    OpDef(
        "GroupNormalization",
        _gn_infer,
        _gn_reference,
        per_element_cost(8),
        min_inputs=3,
        max_inputs=3,
        attrs={"num_groups": REQUIRED, "epsilon": 1e-5, "stash_type": 1},
    )
)


# ------------------------------------------------------------------------------- LpNormalization
def _same_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    check_dtype(x.dtype, FLOAT_DTYPES, "input")
    if "axis" in attrs:
        if x.rank < 1:
            raise ShapeError("input must have rank >= 1")
        normalize_axis(int(attrs["axis"]), x.rank)
    if "p" in attrs and int(attrs["p"]) not in (1, 2):
        raise ShapeError(f"LpNormalization: p must be 1 or 2, got {attrs['p']}")
    return [(x.shape, x.dtype)]


def _lp_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    xs = x.astype(compute_dtype(x.dtype), copy=False)
    axis = normalize_axis(int(attrs["axis"]), x.ndim)
    if int(attrs["p"]) == 1:
        norm = np.abs(xs).sum(axis=axis, keepdims=True)
    else:
        norm = np.sqrt((xs * xs).sum(axis=axis, keepdims=True))
    # A zero vector stays zero (0 / 0 would be NaN), as in ONNX's reference and onnxruntime.
    safe = np.where(norm == 0, 1, norm)
    return [np.where(norm == 0, 0, xs / safe).astype(x.dtype, copy=False)]


register(
    OpDef(
        "LpNormalization",
        _same_infer,
        _lp_reference,
        per_element_cost(3),
        attrs={"axis": -1, "p": 2},
    )
)


# ---------------------------------------------------------------------- MeanVarianceNormalization
def _mvn_axes(attrs: dict[str, Any], rank: int) -> tuple[int, ...]:
    axes = tuple(normalize_axis(int(a), rank, "axes entry") for a in attrs["axes"])
    if len(set(axes)) != len(axes):
        raise ShapeError(f"axes {list(attrs['axes'])} repeat an axis")
    return axes


def _mvn_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    check_dtype(x.dtype, FLOAT_DTYPES, "X")
    _mvn_axes(attrs, x.rank)
    return [(x.shape, x.dtype)]


def _mvn_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    xs = x.astype(compute_dtype(x.dtype), copy=False)
    axes = _mvn_axes(attrs, x.ndim)
    centered = xs - xs.mean(axis=axes, keepdims=True)
    # The ONNX function computes sqrt(E[x^2] - E[x]^2); the centered form is the same number
    # without the cancellation (which can turn a constant input's zero variance into NaN).
    std = np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True))
    return [(centered / (std + xs.dtype.type(1e-9))).astype(x.dtype, copy=False)]


register(
    OpDef(
        "MeanVarianceNormalization",
        _mvn_infer,
        _mvn_reference,
        per_element_cost(7),
        attrs={"axes": [0, 2, 3]},
    )
)


# ------------------------------------------------------------------------------------------- LRN
def _lrn_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    check_dtype(x.dtype, FLOAT_DTYPES, "X")
    if x.rank < 2:
        raise ShapeError(f"X must be N x C x ..., got shape {x.shape}")
    if int(attrs["size"]) < 1:
        raise ShapeError(f"size must be >= 1, got {attrs['size']}")
    return [(x.shape, x.dtype)]


def _lrn_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    xs = x.astype(compute_dtype(x.dtype), copy=False)
    size, channels = int(attrs["size"]), x.shape[1]
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = xs * xs
    total = np.zeros_like(xs)
    # Channel c sums the squares of channels c - floor((size-1)/2) .. c + ceil((size-1)/2).
    for shift in range(-before, after + 1):
        lo, hi = max(0, -shift), min(channels, channels - shift)
        if lo < hi:
            total[:, lo:hi] += squares[:, lo + shift : hi + shift]
    dt = xs.dtype.type
    scale = dt(attrs["bias"]) + dt(attrs["alpha"]) / dt(size) * total
    return [(xs / scale ** dt(attrs["beta"])).astype(x.dtype, copy=False)]


def _lrn_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Any:
    # A square-sum over the window, then bias + alpha * s and a power (about 20 FLOPs).
    return io_cost((2 * int(attrs["size"]) + 24) * inputs[0].size, inputs, outputs)


register(
    OpDef(
        "LRN",
        _lrn_infer,
        _lrn_reference,
        _lrn_cost,
        attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0},
    )
)


# ------------------------------------------------------------------------------ RMSNormalization
def _rms_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    check_last_axes_norm(inputs, attrs, ("scale",))
    return [(inputs[0].shape, inputs[0].dtype)]


def _rms_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    # ONNX's definition: X / sqrt(mean(X^2) + epsilon) in the stash type, cast back to X's type,
    # times the scale.
    x, scale = arrays[0], arrays[1]
    axes = tuple(range(normalize_axis(int(attrs["axis"]), x.ndim), x.ndim))
    dt = np.promote_types(compute_dtype(STASH_TYPES[int(attrs["stash_type"])]), x.dtype)
    xs = x.astype(dt, copy=False)
    mean_square = np.mean(xs * xs, axis=axes, keepdims=True)
    normalized = (xs * (1 / np.sqrt(mean_square + dt.type(attrs["epsilon"])))).astype(x.dtype)
    cd = compute_dtype(x.dtype)
    y = normalized.astype(cd, copy=False) * scale.astype(cd, copy=False)
    return [y.astype(x.dtype, copy=False)]


register(
    OpDef(
        "RMSNormalization",
        _rms_infer,
        _rms_reference,
        per_element_cost(4),
        min_inputs=2,
        max_inputs=2,
        attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
    )
)


# --------------------------------------------------------------------------------------- Hardmax
def _hardmax_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    axis = normalize_axis(int(attrs["axis"]), x.ndim)
    first = np.expand_dims(np.argmax(x, axis=axis), axis)  # the first of equal maxima wins
    hot = np.arange(x.shape[axis]).reshape((-1,) + (1,) * (x.ndim - 1 - axis)) == first
    return [hot.astype(x.dtype)]


register(OpDef("Hardmax", _same_infer, _hardmax_reference, per_element_cost(2), attrs={"axis": -1}))
