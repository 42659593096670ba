"""DeformConv (opsets 19 and 22): a 2-D convolution whose taps sample the input at learned offsets.

Tap (i, j) of output position (oh, ow) reads channel c of X at row ``oh * sh - pad_top + i * dh +
dy`` and column ``ow * sw - pad_left + j * dw + dx``, where (dy, dx) are that tap's entries in
``offset`` (N x offset_group * kH * kW * 2 x oH x oW, the pairs in (row, column) order, one set per
group of C / offset_group channels). Fractional positions interpolate bilinearly between the four
neighbours, a neighbour outside the image counting as zero (GridSample with ``align_corners`` and
zero padding, as the ONNX reference computes it); ``mask`` (N x offset_group * kH * kW x oH x oW),
when given, scales each sample. The samples then form an im2col matrix (channels x taps by
positions) that is multiplied by the filters per group, plus the bias: torchvision's
``deform_conv2d`` (DCN v1, and v2 with a mask) as it exports to ONNX.

Only 2-D images are defined (the ONNX reference and onnxruntime implement no other rank).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError, UnsupportedOperatorError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, register, same_dtype
from eqsat.ops.conv import (
    check_bias,
    check_float,
    compute_dtype,
    conv_cost,
    kernel_of,
    window_geometry,
)

ATTRS = {
    "dilations": [],
    "group": 1,
    "kernel_shape": [],
    "offset_group": 1,
    "pads": [],
    "strides": [],
}


def deform_window(x_shape: tuple[int, ...], kernel: tuple[int, ...], attrs: dict[str, Any]) -> Any:
    """Conv's window geometry for a DeformConv node's attributes (it has no ``auto_pad``)."""
    return window_geometry(x_shape[2:], kernel, {**attrs, "auto_pad": "NOTSET"})


def _deform_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, w, offset = inputs[0], inputs[1], inputs[2]
    bias = inputs[3] if len(inputs) > 3 else None
    mask = inputs[4] if len(inputs) > 4 else None
    if x.rank != 4:
        raise UnsupportedOperatorError(
            [("DeformConv", "?", f"only 2-D images (N x C x H x W) are defined, got {x.shape}")]
        )
    dtype = same_dtype([v for v in inputs if v is not None])
    check_float(dtype)
    if w.rank != 4:
        raise ShapeError(f"W must be M x C/group x kH x kW, got shape {w.shape}")
    group, groups_off = int(attrs["group"]), int(attrs["offset_group"])
    c, m = x.shape[1], w.shape[0]
    if group < 1 or c % group or m % group or w.shape[1] * group != c:
        raise ShapeError(
            f"group {group}: X's {c} channels, W {w.shape} (M x C/group x kH x kW) do not agree"
        )
    if groups_off < 1 or c % groups_off:
        raise ShapeError(f"offset_group {groups_off} must divide X's {c} channels")
    check_bias(bias, m)
    kernel = kernel_of(attrs, w, 2)
    window = deform_window(x.shape, kernel, attrs)
    taps = math.prod(kernel)
    positions = (x.shape[0], *window.out)
    want = (x.shape[0], groups_off * taps * 2, *window.out)
    if offset.shape != want:
        raise ShapeError(
            f"offset must have shape {want} (N, offset_group*kH*kW*2, oH, oW), got {offset.shape}"
        )
    if mask is not None and mask.shape != (positions[0], groups_off * taps, *positions[1:]):
        raise ShapeError(
            f"mask must have shape {(positions[0], groups_off * taps, *positions[1:])}, "
            f"got {mask.shape}"
        )
    return [((x.shape[0], m, *window.out), dtype)]


def _samples(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``x`` (C, H, W) at ``rows``/``cols`` (any shape S), zero outside,
    times ``scale`` (shape S): (C, *S)."""
    h, w = x.shape[1:]
    flat = x.reshape(x.shape[0], h * w)
    top, left = np.floor(rows), np.floor(cols)
    fy, fx = rows - top, cols - left
    top, left = top.astype(np.int64), left.astype(np.int64)
    out = np.zeros((x.shape[0], *rows.shape), x.dtype)
    for dy, dx, weight in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        r, q = top + dy, left + dx
        inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        index = np.clip(r, 0, h - 1) * w + np.clip(q, 0, w - 1)
        coef = (np.where(inside, weight, 0.0) * scale).astype(x.dtype)
        out += flat[:, index] * coef
    return out


def _deform_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, w, offset = arrays[0], arrays[1], arrays[2]
    bias = arrays[3] if len(arrays) > 3 else None
    mask = arrays[4] if len(arrays) > 4 else None
    dt = compute_dtype(x.dtype)
    x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
    kh, kw = w.shape[2:]
    window = deform_window(x.shape, (kh, kw), attrs)
    oh, ow = window.out
    (sh, sw), (dh, dw), (top, left) = window.strides, window.dilations, window.begin
    n, c = x.shape[:2]
    group, groups_off = int(attrs["group"]), int(attrs["offset_group"])
    per_off = c // groups_off
    # Sampling positions in float64, as the reference's coordinates: (N, G_off, kH, kW, oH, oW).
    off = offset.astype(np.float64).reshape(n, groups_off, kh, kw, 2, oh, ow)
    base_rows = (np.arange(kh) * dh)[:, None, None, None] + (np.arange(oh) * sh - top)[:, None]
    base_cols = (np.arange(kw) * dw)[None, :, None, None] + (np.arange(ow) * sw - left)
    rows = base_rows + off[:, :, :, :, 0]
    cols = base_cols + off[:, :, :, :, 1]
    scale = (
        np.ones((n, groups_off, kh, kw, oh, ow))
        if mask is None
        else mask.astype(np.float64).reshape(n, groups_off, kh, kw, oh, ow)
    )
    patches = np.empty((n, c, kh, kw, oh, ow), dt)
    for i in range(n):
        for g in range(groups_off):
            chans = slice(g * per_off, (g + 1) * per_off)
            patches[i, chans] = _samples(x[i, chans], rows[i, g], cols[i, g], scale[i, g])
    m, cg = w.shape[0], c // group
    filters = w.reshape(group, m // group, cg * kh * kw)
    patches = patches.reshape(n, group, cg * kh * kw, oh * ow)
    y = np.matmul(filters, patches).reshape(n, m, oh, ow)
    if bias is not None:
        y += bias.astype(dt).reshape(1, -1, 1, 1)
    return [y.astype(outs[0].dtype, copy=False)]


def _deform_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x, w, y = inputs[0], inputs[1], outputs[0]
    bias = inputs[3] if len(inputs) > 3 else None
    conv = conv_cost([x, w, bias], outputs, attrs)  # the filters' multiply-adds and the bias
    # Each sample interpolates four neighbours: ~8 FLOPs per channel, tap and position.
    sampling = 8 * x.shape[1] * math.prod(w.shape[2:]) * y.size // max(1, y.shape[1])
    offsets = sum(v.nbytes for v in inputs[2:3] + inputs[4:5] if v is not None)
    return Cost(conv.flops + sampling, conv.bytes_read + offsets, conv.bytes_written)


register(
    OpDef(
        "DeformConv",
        _deform_infer,
        _deform_reference,
        _deform_cost,
        min_inputs=3,
        max_inputs=5,
        attrs=ATTRS,
    )
)
