"""Resize (opset 19 form): nearest, linear and cubic resampling of any subset of axes.

Inputs are ``X, roi?, scales?, sizes?``; exactly one of ``scales`` and ``sizes`` is given (an empty
tensor counts as absent) and it must be a compile-time constant, since the output shape depends on it.
Interpolation is separable, so the reference resamples one axis at a time: each output position along
the axis reads a few source indices (1, 2 or 4 taps, clamped to the edge) with weights, all computed
as small index/weight tables and applied with one ``np.take`` per tap.

Output lengths and source coordinates are computed in float32 exactly as onnxruntime does, so that
nearest-neighbour ties and ``floor(length * scale)`` round the same way. One deliberate exception
follows the ONNX reference implementation, which generated the official node tests:
``align_corners`` divides by the real-valued output length ``scale * input_length`` (as
``half_pixel_symmetric`` does everywhere), where onnxruntime uses the rounded one; the two differ only
for scales that do not give whole lengths.

``antialias=1`` widens the linear and cubic filters by ``1 / scale`` when an axis shrinks (PIL's
and torchvision's antialiased resize), as the ONNX reference does: each output position then
reads ``2 - 2 * floor(-r / scale + 1)`` source positions (r = 1 linear, 2 cubic) around its
coordinate, weighted by the stretched filter and normalized to sum 1; it changes nothing for
axes that grow, nor in nearest mode.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, const_of, normalize_axis, register

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
    "tf_half_pixel_for_nn",  # opsets 11-12 (tf2onnx's nearest resizes): (y + 0.5) / scale
)
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
ASPECT_POLICIES = ("stretch", "not_larger", "not_smaller")


def _present(value: Value | None) -> bool:
    return value is not None and value.size > 0


def _plan(
    x_shape: tuple[int, ...],
    attrs: dict[str, Any],
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
) -> tuple[list[int], list[float], list[int]]:
    """The resized axes, the scale of every axis and the output shape."""
    rank = len(x_shape)
    axes = [normalize_axis(int(a), rank, "Resize axis") for a in attrs["axes"] or range(rank)]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"axes {list(attrs['axes'])} repeat an axis")
    if (scales is None) == (sizes is None):
        raise ShapeError("exactly one of the inputs 'scales' and 'sizes' must be given")
    given = scales if scales is not None else sizes
    given = np.asarray(given).reshape(-1)
    if given.size != len(axes):
        what = "scales" if scales is not None else "sizes"
        raise ShapeError(f"{what} has {given.size} entries, expected {len(axes)}")
    scale = [1.0] * rank
    out = list(x_shape)
    if scales is not None:
        for a, s in zip(axes, given.tolist(), strict=True):
            if not s > 0:
                raise ShapeError(f"scales must be positive, got {given.tolist()}")
            scale[a] = float(s)
            out[a] = math.floor(np.float32(s) * np.float32(x_shape[a]))
    else:
        wanted = [int(v) for v in given.tolist()]
        if any(v < 0 for v in wanted):
            raise ShapeError(f"sizes must not be negative, got {wanted}")
        if any(x_shape[a] == 0 for a in axes):
            raise ShapeError(f"cannot resize an empty axis of {x_shape}")
        f32 = np.float32
        ratios = [float(f32(v) / f32(x_shape[a])) for a, v in zip(axes, wanted, strict=True)]
        policy = attrs["keep_aspect_ratio_policy"]
        if policy not in ASPECT_POLICIES:
            raise ShapeError(f"keep_aspect_ratio_policy must be one of {ASPECT_POLICIES}")
        if policy != "stretch":
            common = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [common] * len(axes)
            wanted = [math.floor(f32(common) * f32(x_shape[a]) + f32(0.5)) for a in axes]
        for a, r, v in zip(axes, ratios, wanted, strict=True):
            scale[a], out[a] = r, v
    return axes, scale, out


def _check_attrs(attrs: dict[str, Any]) -> None:
    if attrs["antialias"] not in (0, 1):
        raise ShapeError(f"antialias must be 0 or 1, got {attrs['antialias']!r}")
    for key, allowed in (
        ("mode", MODES),
        ("coordinate_transformation_mode", COORDINATE_MODES),
        ("nearest_mode", NEAREST_MODES),
    ):
        if attrs[key] not in allowed:
            raise ShapeError(f"{key} must be one of {allowed}, got {attrs[key]!r}")


def _resize_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    _check_attrs(attrs)
    x = inputs[0]
    if x.dtype.kind not in "biuf":
        raise ShapeError(f"X must be a numeric tensor, got {x.dtype}")
    if attrs["mode"] != "nearest" and x.dtype.kind == "b":
        raise ShapeError(f"mode {attrs['mode']!r} needs a numeric X, got bool")
    scales_v = inputs[2] if len(inputs) > 2 else None
    sizes_v = inputs[3] if len(inputs) > 3 else None
    if _present(scales_v) and scales_v.dtype.kind != "f":
        raise ShapeError(f"scales must be float, got {scales_v.dtype}")
    if _present(sizes_v) and sizes_v.dtype != np.int64:
        raise ShapeError(f"sizes must be int64, got {sizes_v.dtype}")
    scales = const_of(scales_v, "input 'scales'") if _present(scales_v) else None
    sizes = const_of(sizes_v, "input 'sizes'") if _present(sizes_v) else None
    axes, _, out = _plan(x.shape, attrs, scales, sizes)
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        roi = inputs[1] if len(inputs) > 1 else None
        if not _present(roi) or roi.size != 2 * len(axes):
            raise ShapeError(f"tf_crop_and_resize needs roi with {2 * len(axes)} entries")
    return [(tuple(out), x.dtype)]


def _source_coords(
    mode: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Where each output position samples the input, and (tf_crop_and_resize) which lie outside."""
    f32 = np.float32
    y = np.arange(out_len, dtype=f32)
    scale, size = f32(scale), f32(in_len)
    length = scale * size  # the real-valued output length
    half = f32(0.5)
    outside = None
    if mode == "align_corners":
        x = np.zeros_like(y) if length == 1 else y * (size - 1) / (length - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "pytorch_half_pixel":
        x = (y + half) / scale - half if out_len > 1 else np.zeros_like(y)
    elif mode == "half_pixel":
        x = (y + half) / scale - half
    elif mode == "tf_half_pixel_for_nn":
        x = (y + half) / scale
    elif mode == "half_pixel_symmetric":
        # onnxruntime computes this sum in double precision and rounds it to float once.
        offset = np.float64(size / 2 * (1 - f32(out_len) / length))
        wide = y.astype(np.float64)
        x = (offset + (wide + 0.5) / np.float64(scale) - 0.5).astype(f32)
    else:  # tf_crop_and_resize
        start, end = f32(roi[0]), f32(roi[1])
        if out_len > 1:
            x = start * (size - 1) + y * (end - start) * (size - 1) / f32(out_len - 1)
        else:
            x = np.full_like(y, half * (start + end) * (size - 1))
        outside = (x < 0) | (x > size - 1)
    return x.astype(np.float64), outside


def _cubic(dist: np.ndarray, a: float) -> np.ndarray:
    """The cubic convolution kernel (coefficient ``a``) at distances ``dist`` >= 0."""
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
    return np.where(dist <= 1, near, np.where(dist < 2, far, 0.0))


def _antialias_taps(
    x: np.ndarray, in_len: int, attrs: dict[str, Any], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_taps` of a shrinking axis with ``antialias=1``: the filter stretched by 1 / scale.

    Offsets count from the source position left of each coordinate (an integer coordinate's left
    neighbour is the one before it, as in the ONNX reference), so the taps are the positions
    nearest the coordinate, ties going to the lower one."""
    radius = 1 if attrs["mode"] == "linear" else 2
    start = math.floor(-radius / scale) + 1
    offsets = np.arange(start, 2 - start)
    left = np.ceil(x) - 1
    dist = np.abs((offsets[None, :] - (x - left)[:, None]) * scale)
    if radius == 1:
        weight = np.clip(1 - dist, 0.0, 1.0)
    else:
        weight = _cubic(dist, float(attrs["cubic_coeff_a"]))
    index = left.astype(np.int64)[:, None] + offsets
    if attrs["exclude_outside"]:
        weight = np.where((index < 0) | (index >= in_len), 0.0, weight)
    return np.clip(index, 0, in_len - 1), _sum_to_one(weight)


def _sum_to_one(weight: np.ndarray) -> np.ndarray:
    """Each row of ``weight`` scaled to sum 1 (a row of zeros stays zero)."""
    total = weight.sum(axis=1, keepdims=True)
    return weight / np.where(total == 0, 1.0, total)


def _taps(
    x: np.ndarray, in_len: int, attrs: dict[str, Any], scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out x taps, clamped) and their weights for coordinates ``x`` on an axis
    resized by ``scale``."""
    mode = attrs["mode"]
    if attrs["antialias"] and mode != "nearest" and scale < 1:
        return _antialias_taps(x, in_len, attrs, scale)
    base = np.floor(x)
    frac = x - base
    base = base.astype(np.int64)
    if mode == "nearest":
        rule = attrs["nearest_mode"]
        if rule == "round_prefer_floor":
            up = frac > 0.5
        elif rule == "round_prefer_ceil":
            up = frac >= 0.5
        elif rule == "floor":
            up = np.zeros_like(frac, dtype=bool)
        else:
            up = frac > 0
        index = (base + up)[:, None]
        weight = np.ones_like(index, dtype=np.float64)
    elif mode == "linear":
        index = base[:, None] + np.arange(2)
        weight = np.stack([1 - frac, frac], axis=1)
    else:
        a = float(attrs["cubic_coeff_a"])
        index = base[:, None] + np.arange(-1, 3)
        weight = _cubic(np.abs(index - x[:, None]), a)
        if attrs["exclude_outside"]:
            weight = _sum_to_one(np.where((index < 0) | (index >= in_len), 0.0, weight))
    return np.clip(index, 0, in_len - 1), weight


def _resize_axis(
    data: np.ndarray,
    axis: int,
    out_len: int,
    scale: float,
    roi: tuple[float, float] | None,
    attrs: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray | None]:
    in_len = data.shape[axis]
    coords = attrs["coordinate_transformation_mode"]
    x, outside = _source_coords(coords, out_len, in_len, scale, roi)
    index, weight = _taps(x, in_len, attrs, scale)
    if index.shape[1] == 1:
        return np.take(data, index[:, 0], axis=axis), outside
    bcast = [1] * data.ndim
    bcast[axis] = -1
    result = None
    for t in range(index.shape[1]):
        term = np.take(data, index[:, t], axis=axis) * weight[:, t].astype(data.dtype).reshape(
            bcast
        )
        result = term if result is None else np.add(result, term, out=result)
    return result, outside


def linear_taps(
    x_shape: tuple[int, ...], attrs: dict[str, Any], scales: Any, sizes: Any
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], list[int]]:
    """For a linear Resize (not tf_crop_and_resize): each resized axis in the order the reference
    resamples them, with its source indices and weights per output position (two; more where
    ``antialias`` widens the filter), leaving out the axes it maps onto themselves; and the
    output shape. Kernels that replay these tables compute
    what :func:`_resize_reference` does."""
    axes, scale, out = _plan(x_shape, attrs, scales, sizes)
    coords = attrs["coordinate_transformation_mode"]
    tables = []
    for axis in axes:
        if scale[axis] == 1.0 and out[axis] == x_shape[axis]:
            continue
        x, _ = _source_coords(coords, out[axis], x_shape[axis], scale[axis], None)
        index, weight = _taps(x, x_shape[axis], attrs, scale[axis])
        tables.append((axis, index, weight))
    return tables, out


def _resize_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    roi_a, scales, sizes = (list(arrays[1:]) + [None] * 3)[:3]
    present = [a if a is not None and np.asarray(a).size else None for a in (roi_a, scales, sizes)]
    roi_a, scales, sizes = present
    axes, scale, out = _plan(x.shape, attrs, scales, sizes)
    interpolate = attrs["mode"] != "nearest"
    if interpolate:
        data = x.astype(np.float32 if x.dtype in (np.float16, np.float32) else np.float64)
    else:
        data = x
    crop = attrs["coordinate_transformation_mode"] == "tf_crop_and_resize"
    roi = np.asarray(roi_a, dtype=np.float64).reshape(-1) if crop else None
    outside_mask = np.zeros(out, dtype=bool) if crop else None
    # Antialiased integer images follow onnxruntime (PIL's order): the innermost axis first, each
    # pass rounded and clamped to the type's range (cubic overshoots: rounding once at the end, as
    # the ONNX reference does, differed from onnxruntime by up to 32 on uint8).
    stepwise = interpolate and attrs["antialias"] and x.dtype.kind in "iu" and not crop
    order = list(enumerate(axes))[::-1] if stepwise else list(enumerate(axes))
    for i, axis in order:
        pair = (float(roi[i]), float(roi[i + len(axes)])) if crop else None
        if not crop and scale[axis] == 1.0 and out[axis] == x.shape[axis]:
            continue  # every coordinate mode maps this axis onto itself
        data, outside = _resize_axis(data, axis, out[axis], scale[axis], pair, attrs)
        if stepwise:
            info = np.iinfo(x.dtype)
            data = np.clip(np.floor(data + 0.5), info.min, info.max)
        if outside is not None:
            bcast = [1] * x.ndim
            bcast[axis] = -1
            outside_mask |= outside.reshape(bcast)
    if crop and outside_mask.any():
        data = np.where(outside_mask, np.asarray(attrs["extrapolation_value"], data.dtype), data)
    if interpolate and x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        data = np.clip(np.round(data), info.min, info.max)
    return [np.asarray(data).astype(outs[0].dtype, copy=False)]


def _resize_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    taps = {"nearest": 0, "linear": 2, "cubic": 4}[attrs["mode"]]
    y = outputs[0]
    axes = len(attrs["axes"]) or y.rank
    return Cost(float(2 * taps * axes * y.size), float(inputs[0].nbytes), float(y.nbytes))


register(
    OpDef(
        "Resize",
        _resize_infer,
        _resize_reference,
        _resize_cost,
        min_inputs=1,
        max_inputs=4,
        attrs={
            "antialias": 0,
            "axes": [],
            "coordinate_transformation_mode": "half_pixel",
            "cubic_coeff_a": -0.75,
            "exclude_outside": 0,
            "extrapolation_value": 0.0,
            "keep_aspect_ratio_policy": "stretch",
            "mode": "nearest",
            "nearest_mode": "round_prefer_floor",
        },
    )
)
