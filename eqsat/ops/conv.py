"""Windowed spatial operators: Conv, ConvTranspose, MaxPool, AveragePool and the global pools.

All of them take ``X`` in NC[D]HW layout with 1 to 3 spatial axes and share one window geometry
(:func:`window_geometry`): ``kernel_shape``, ``strides``, ``dilations``, ``pads`` given as
``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]`` and ``auto_pad`` (NOTSET, SAME_UPPER, SAME_LOWER,
VALID), plus ``ceil_mode`` for the pools. The references are vectorized: Conv gathers its patches with
``sliding_window_view`` (im2col) and multiplies them per group with one batched ``matmul``; the pools
and ConvTranspose's scatter loop over the kernel's taps (at most a few dozen), each tap one strided
numpy operation over the whole tensor. float16 is computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import REQUIRED, Cost, OpDef, register, same_dtype

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
# Above this many elements an im2col buffer is built in slices of output rows, bounding memory.
IM2COL_CHUNK_ELEMENTS = 1 << 24

WINDOW_ATTRS: dict[str, Any] = {"auto_pad": "NOTSET", "dilations": [], "pads": [], "strides": []}


@dataclass(frozen=True)
class Window:
    """Where a sliding window goes over the spatial axes. ``extra`` pads the end for ceil_mode."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    out: tuple[int, ...]
    extra: tuple[int, ...]

    @property
    def span(self) -> tuple[int, ...]:
        """Extent of one dilated window."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True))

    def taps(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(k) for k in self.kernel)))

    def tap_slices(self, tap: tuple[int, ...]) -> tuple[slice, ...]:
        """Index of the padded input that tap ``tap`` of every output position reads."""
        return tuple(
            slice(t * d, t * d + s * (o - 1) + 1, s)
            for t, d, s, o in zip(tap, self.dilations, self.strides, self.out, strict=True)
        )


def int_list(value: Any, n: int, default: int, what: str) -> tuple[int, ...]:
    """An ints attribute with one entry per spatial axis (empty means ``default`` everywhere)."""
    items = [int(v) for v in (value if value is not None else [])]
    if not items:
        return (default,) * n
    if len(items) != n:
        raise ShapeError(f"{what} has {len(items)} entries, expected {n} (one per spatial axis)")
    return tuple(items)


def window_geometry(
    in_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    attrs: dict[str, Any],
    *,
    ceil_mode: bool = False,
) -> Window:
    """Output extent and padding of a window of ``kernel`` over ``in_shape`` (spatial axes only)."""
    n = len(in_shape)
    strides = int_list(attrs["strides"], n, 1, "strides")
    dilations = int_list(attrs["dilations"], n, 1, "dilations")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ShapeError(f"strides {strides} and dilations {dilations} must be positive")
    if any(k < 1 for k in kernel):
        raise ShapeError(f"kernel_shape {kernel} must be positive")
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    auto_pad = attrs["auto_pad"]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // s) for i, s in zip(in_shape, strides, strict=True)]
        total = [
            max(0, (o - 1) * s + w - i)
            for o, s, w, i in zip(out, strides, span, in_shape, strict=True)
        ]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        begin = end = [0] * n
        out = [(i - w) // s + 1 for i, w, s in zip(in_shape, span, strides, strict=True)]
    elif auto_pad == "NOTSET":
        pads = [int(p) for p in attrs["pads"] or [0] * 2 * n]
        if len(pads) != 2 * n:
            raise ShapeError(f"pads has {len(pads)} entries, expected {2 * n}")
        if any(p < 0 for p in pads):
            raise ShapeError(f"pads {pads} must not be negative")
        begin, end = pads[:n], pads[n:]
        out = []
        for i, w, s, b, e in zip(in_shape, span, strides, begin, end, strict=True):
            room = i + b + e - w
            if not ceil_mode:
                out.append(room // s + 1)
                continue
            o = -(-room // s) + 1
            # The last window must start inside the input or its leading padding.
            out.append(o - 1 if (o - 1) * s >= i + b else o)
    else:
        raise ShapeError(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    if any(o < 1 for o in out):
        raise ShapeError(
            f"window of extent {tuple(span)} does not fit the padded input {tuple(in_shape)} "
            f"(pads {tuple(begin)} + {tuple(end)})"
        )
    extra = [
        max(0, (o - 1) * s + w - (i + b + e))
        for o, s, w, i, b, e in zip(out, strides, span, in_shape, begin, end, strict=True)
    ]
    return Window(
        tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out), tuple(extra)
    )


def pad_spatial(x: np.ndarray, begin: tuple[int, ...], end: tuple[int, ...], value: Any) -> Any:
    """``x`` with its trailing (spatial) axes padded by ``value``."""
    if not any(begin) and not any(end):
        return x
    lead = x.ndim - len(begin)
    shape = x.shape[:lead] + tuple(
        d + b + e for d, b, e in zip(x.shape[lead:], begin, end, strict=True)
    )
    out = np.full(shape, value, dtype=x.dtype)
    inner = tuple(slice(b, b + d) for b, d in zip(begin, x.shape[lead:], strict=True))
    out[(Ellipsis, *inner)] = x
    return out


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16 accumulates in float32, as onnxruntime's kernels do."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def check_image(x: Value, what: str = "X") -> int:
    """Number of spatial axes of an N x C x spatial input."""
    if not 3 <= x.rank <= 5:
        raise ShapeError(f"{what} must be N x C x D1[ x D2[ x D3]] (rank 3-5), got shape {x.shape}")
    return x.rank - 2


def check_float(dtype: np.dtype, what: str = "X") -> None:
    if dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{what} must be float16/float32/float64, got {dtype}")


def kernel_of(attrs: dict[str, Any], w: Value | None, n: int) -> tuple[int, ...]:
    if w is None:
        return int_list(attrs["kernel_shape"], n, 0, "kernel_shape")
    kernel = tuple(w.shape[2:])
    if attrs["kernel_shape"] and tuple(int(k) for k in attrs["kernel_shape"]) != kernel:
        raise ShapeError(
            f"kernel_shape {list(attrs['kernel_shape'])} != W's spatial shape {kernel}"
        )
    return kernel


def check_bias(b: Value | None, m: int) -> None:
    if b is not None and b.shape != (m,):
        raise ShapeError(f"bias B must have shape ({m},), got {b.shape}")


# ------------------------------------------------------------------------------------------- Conv
def conv_window(inputs: list[Value | None], attrs: dict[str, Any]) -> Window:
    x, w = inputs[0], inputs[1]
    n = check_image(x)
    if w.rank != x.rank:
        raise ShapeError(f"W must have rank {x.rank} like X {x.shape}, got shape {w.shape}")
    group = int(attrs["group"])
    if group < 1 or x.shape[1] % group or w.shape[0] % group:
        raise ShapeError(
            f"group {group} must divide X's {x.shape[1]} channels and W's {w.shape[0]} filters"
        )
    if w.shape[1] * group != x.shape[1]:
        raise ShapeError(
            f"channel mismatch: X {x.shape} has {x.shape[1]} channels, W {w.shape} with "
            f"group={group} expects {w.shape[1] * group}"
        )
    check_bias(inputs[2] if len(inputs) > 2 else None, w.shape[0])
    return window_geometry(x.shape[2:], kernel_of(attrs, w, n), attrs)


def _conv_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    dtype = same_dtype(inputs)
    check_float(dtype)
    window = conv_window(inputs, attrs)
    return [((inputs[0].shape[0], inputs[1].shape[0], *window.out), dtype)]


def conv2col_matmul(x: np.ndarray, w: np.ndarray, group: int, window: Window) -> np.ndarray:
    """Conv without bias: im2col patches times the per-group filter matrices."""
    n, c = x.shape[:2]
    m = w.shape[0]
    ns = x.ndim - 2
    xp = pad_spatial(x, window.begin, window.end, 0)
    spatial = tuple(range(2, 2 + ns))
    patches = sliding_window_view(xp, window.span, axis=spatial)
    outs = (
        slice(None, s * (o - 1) + 1, s) for s, o in zip(window.strides, window.out, strict=True)
    )
    dilated = (slice(None, None, d) for d in window.dilations)
    patches = patches[(slice(None), slice(None), *outs, *dilated)]  # N x C x O... x K..., a view
    cg, mg = c // group, m // group
    k = math.prod(window.kernel)
    filters = w.reshape(group, mg, cg * k)
    out = np.empty((n, m, *window.out), dtype=x.dtype)
    # (N, G, Cg, O..., K...) -> (N, G, Cg, K..., O...): the copy into matmul's operand is im2col.
    order = (0, 1, 2, *range(3 + ns, 3 + 2 * ns), *range(3, 3 + ns))
    rest = math.prod(window.out[1:])
    rows = max(1, IM2COL_CHUNK_ELEMENTS // max(1, n * c * k * rest))
    for start in range(0, window.out[0], rows):
        stop = min(window.out[0], start + rows)
        part = patches[:, :, start:stop].reshape(
            n, group, cg, stop - start, *window.out[1:], *window.kernel
        )
        cols = part.transpose(order).reshape(n, group, cg * k, (stop - start) * rest)
        res = np.matmul(filters, cols)  # N x G x Mg x rows*rest
        out[:, :, start:stop] = res.reshape(n, m, stop - start, *window.out[1:])
    return out


def depthwise_conv(x: np.ndarray, w: np.ndarray, window: Window) -> np.ndarray:
    """Conv with one input and one output channel per group: a weighted sum of the taps."""
    xp = pad_spatial(x, window.begin, window.end, 0)
    taps = w.reshape(w.shape[0], -1)
    bcast = (1, -1) + (1,) * (x.ndim - 2)
    out = np.zeros((*x.shape[:2], *window.out), dtype=x.dtype)
    term = np.empty_like(out)
    for i, tap in enumerate(window.taps()):
        view = xp[(slice(None), slice(None), *window.tap_slices(tap))]
        np.multiply(view, taps[:, i].reshape(bcast), out=term)
        out += term
    return out


def _conv_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, w = arrays[0], arrays[1]
    b = arrays[2] if len(arrays) > 2 else None
    dt = compute_dtype(x.dtype)
    x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
    kernel = tuple(w.shape[2:])
    window = window_geometry(x.shape[2:], kernel, attrs)
    group = int(attrs["group"])
    if group == x.shape[1] and w.shape[0] == group:
        y = depthwise_conv(x, w, window)
    else:
        y = conv2col_matmul(x, w, group, window)
    if b is not None:
        y += b.astype(dt).reshape((1, -1) + (1,) * (x.ndim - 2))
    return [y.astype(outs[0].dtype, copy=False)]


def conv_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x, w, y = inputs[0], inputs[1], outputs[0]
    macs = y.size * (x.shape[1] // int(attrs["group"])) * math.prod(w.shape[2:])
    bias = y.size if len(inputs) > 2 and inputs[2] is not None else 0
    read = sum(v.nbytes for v in inputs if v is not None)
    return Cost(float(2 * macs + bias), float(read), float(y.nbytes))


register(
    OpDef(
        "Conv",
        _conv_infer,
        _conv_reference,
        conv_cost,
        min_inputs=2,
        max_inputs=3,
        attrs={**WINDOW_ATTRS, "group": 1, "kernel_shape": []},
    )
)


# ---------------------------------------------------------------------------------- ConvTranspose
@dataclass(frozen=True)
class Transposed:
    """Geometry of a transposed conv: the full scatter extent is cropped by ``begin``/``end``."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    out: tuple[int, ...]


def transposed_geometry(
    in_shape: tuple[int, ...], kernel: tuple[int, ...], attrs: dict[str, Any]
) -> Transposed:
    n = len(in_shape)
    strides = int_list(attrs["strides"], n, 1, "strides")
    dilations = int_list(attrs["dilations"], n, 1, "dilations")
    adjust = int_list(attrs["output_padding"], n, 0, "output_padding")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ShapeError(f"strides {strides} and dilations {dilations} must be positive")
    if any(a < 0 or a >= max(s, d) for a, s, d in zip(adjust, strides, dilations, strict=True)):
        raise ShapeError(f"output_padding {adjust} must be below the strides or dilations")
    full = [
        s * (i - 1) + a + (k - 1) * d + 1
        for s, i, a, k, d in zip(strides, in_shape, adjust, kernel, dilations, strict=True)
    ]
    auto_pad = attrs["auto_pad"]
    if auto_pad not in AUTO_PADS:
        raise ShapeError(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    target = [int(v) for v in attrs["output_shape"] or []]
    if len(target) == n + 2:  # some exporters give the full N x C x ... shape
        target = target[2:]
    if target and len(target) != n:
        raise ShapeError(f"output_shape {target} must have {n} entries")
    if not target and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(in_shape, strides, strict=True)]
    if target:
        # The ONNX spec's split of the total padding; it may be negative (the output grows).
        total = [f - t for f, t in zip(full, target, strict=True)]
        upper = auto_pad == "SAME_UPPER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin, strict=True)]
        out = target
    else:
        pads = [int(p) for p in attrs["pads"] or [0] * 2 * n]
        if auto_pad == "VALID":
            pads = [0] * 2 * n
        if len(pads) != 2 * n or any(p < 0 for p in pads):
            raise ShapeError(f"pads {pads} must have {2 * n} non-negative entries")
        begin, end = pads[:n], pads[n:]
        out = [f - b - e for f, b, e in zip(full, begin, end, strict=True)]
    if any(o < 1 for o in out):
        raise ShapeError(f"output extent {out} is empty (pads {begin} + {end})")
    return Transposed(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))


def _convt_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x, w = inputs[0], inputs[1]
    dtype = same_dtype(inputs)
    check_float(dtype)
    n = check_image(x)
    if w.rank != x.rank:
        raise ShapeError(f"W must have rank {x.rank} like X {x.shape}, got shape {w.shape}")
    group = int(attrs["group"])
    if group < 1 or x.shape[1] % group:
        raise ShapeError(f"group {group} must divide X's {x.shape[1]} channels")
    if w.shape[0] != x.shape[1]:
        raise ShapeError(
            f"channel mismatch: X {x.shape} has {x.shape[1]} channels, W {w.shape} expects "
            f"{w.shape[0]}"
        )
    m = w.shape[1] * group
    check_bias(inputs[2] if len(inputs) > 2 else None, m)
    geo = transposed_geometry(x.shape[2:], kernel_of(attrs, w, n), attrs)
    return [((x.shape[0], m, *geo.out), dtype)]


def _convt_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, w = arrays[0], arrays[1]
    b = arrays[2] if len(arrays) > 2 else None
    dt = compute_dtype(x.dtype)
    x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
    n, c = x.shape[:2]
    ins = x.shape[2:]
    kernel = tuple(w.shape[2:])
    geo = transposed_geometry(ins, kernel, attrs)
    group = int(attrs["group"])
    cg, mg = c // group, w.shape[1]
    k = math.prod(kernel)
    # Every input pixel times every filter tap: (G, Mg*K, Cg) @ (N, G, Cg, I) -> (N, G, Mg*K, I).
    filters = w.reshape(group, cg, mg * k).transpose(0, 2, 1)
    cols = np.matmul(filters, x.reshape(n, group, cg, -1))
    cols = cols.reshape(n, group, mg, k, *ins)
    # Scatter-add each tap into a buffer that holds the full extent and any negative padding.
    lead = [max(0, -b_) for b_ in geo.begin]
    size = [
        lo + max(s * (i - 1) + (kk - 1) * d + 1, b_ + o)
        for lo, s, i, kk, d, b_, o in zip(
            lead, geo.strides, ins, kernel, geo.dilations, geo.begin, geo.out, strict=True
        )
    ]
    buf = np.zeros((n, group, mg, *size), dtype=dt)
    for t, tap in enumerate(itertools.product(*(range(kk) for kk in kernel))):
        where = tuple(
            slice(lo + tt * d, lo + tt * d + s * (i - 1) + 1, s)
            for lo, tt, d, s, i in zip(lead, tap, geo.dilations, geo.strides, ins, strict=True)
        )
        buf[(slice(None), slice(None), slice(None), *where)] += cols[:, :, :, t]
    crop = tuple(
        slice(lo + b_, lo + b_ + o) for lo, b_, o in zip(lead, geo.begin, geo.out, strict=True)
    )
    y = buf[(slice(None), slice(None), slice(None), *crop)].reshape(n, group * mg, *geo.out)
    if b is not None:
        y = y + b.astype(dt).reshape((1, -1) + (1,) * len(ins))
    return [np.ascontiguousarray(y).astype(outs[0].dtype, copy=False)]


def _convt_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x, w, y = inputs[0], inputs[1], outputs[0]
    macs = x.size * w.shape[1] * math.prod(w.shape[2:])
    bias = y.size if len(inputs) > 2 and inputs[2] is not None else 0
    read = sum(v.nbytes for v in inputs if v is not None)
    return Cost(float(2 * macs + bias), float(read), float(y.nbytes))


register(
    OpDef(
        "ConvTranspose",
        _convt_infer,
        _convt_reference,
        _convt_cost,
        min_inputs=2,
        max_inputs=3,
        attrs={
            **WINDOW_ATTRS,
            "group": 1,
            "kernel_shape": [],
            "output_padding": [],
            "output_shape": [],
        },
    )
)


# ------------------------------------------------------------------------------------------ pools
POOL_ATTRS: dict[str, Any] = {**WINDOW_ATTRS, "ceil_mode": 0, "kernel_shape": REQUIRED}
MAXPOOL_DTYPES = (*FLOAT_DTYPES, np.dtype(np.int8), np.dtype(np.uint8))


def _pool_window(x: Value, attrs: dict[str, Any]) -> Window:
    n = check_image(x)
    kernel = int_list(attrs["kernel_shape"], n, 0, "kernel_shape")
    return window_geometry(x.shape[2:], kernel, attrs, ceil_mode=bool(attrs["ceil_mode"]))


def _pool_geometry(x: np.ndarray, attrs: dict[str, Any]) -> Window:
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    return window_geometry(x.shape[2:], kernel, attrs, ceil_mode=bool(attrs["ceil_mode"]))


def _maxpool_infer(inputs: list[Value | None], attrs: dict[str, Any], n_out: int) -> list[Any]:
    x = inputs[0]
    if x.dtype not in MAXPOOL_DTYPES:
        raise ShapeError(f"X must be a float, int8 or uint8 tensor, got {x.dtype}")
    if attrs["storage_order"] not in (0, 1):
        raise ShapeError(f"storage_order must be 0 or 1, got {attrs['storage_order']}")
    window = _pool_window(x, attrs)
    shape = (*x.shape[:2], *window.out)
    return [(shape, x.dtype), (shape, np.dtype(np.int64))][:n_out]


def _maxpool_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    window = _pool_geometry(x, attrs)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    end = tuple(e + x_ for e, x_ in zip(window.end, window.extra, strict=True))
    xp = pad_spatial(x, window.begin, end, low)
    lead = (slice(None), slice(None))
    y = None
    for tap in window.taps():
        view = xp[(*lead, *window.tap_slices(tap))]
        y = view.copy() if y is None else np.maximum(y, view, out=y)
    indices = None
    if len(outs) > 1 and outs[1] is not None:
        indices = _argmax_indices(x, xp, window, bool(attrs["storage_order"]))
    return [y, indices]


def _argmax_indices(x: np.ndarray, xp: np.ndarray, window: Window, column_major: bool) -> Any:
    """Flat input index of each window's first maximum (spatial axes in C or Fortran order)."""
    ins = x.shape[2:]
    ns = len(ins)
    axis_strides = [math.prod(ins[a + 1 :]) for a in range(ns)]
    if column_major:
        axis_strides = [math.prod(ins[:a]) for a in range(ns)]
    shape = (*x.shape[:2], *window.out)
    best = np.zeros(shape, dtype=x.dtype)
    index = np.full(shape, -1, dtype=np.int64)
    for tap in window.taps():
        valid = np.ones(window.out, dtype=bool)
        flat = np.zeros(window.out, dtype=np.int64)
        for a in range(ns):
            pos = np.arange(window.out[a]) * window.strides[a]
            pos += tap[a] * window.dilations[a] - window.begin[a]
            bcast = [1] * ns
            bcast[a] = -1
            valid = valid & ((pos >= 0) & (pos < ins[a])).reshape(bcast)
            flat = flat + (pos * axis_strides[a]).reshape(bcast)
        view = xp[(slice(None), slice(None), *window.tap_slices(tap))]
        take = valid & ((view > best) | (index < 0))
        best = np.where(take, view, best)
        index = np.where(take, flat, index)
    planes = np.arange(x.shape[0] * x.shape[1], dtype=np.int64) * math.prod(ins)
    return index + planes.reshape(x.shape[0], x.shape[1], *([1] * ns))


def _avgpool_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    check_float(x.dtype)
    window = _pool_window(x, attrs)
    return [((*x.shape[:2], *window.out), x.dtype)]


def _avgpool_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    window = _pool_geometry(x, attrs)
    dt = compute_dtype(x.dtype)
    end = tuple(e + x_ for e, x_ in zip(window.end, window.extra, strict=True))
    xp = pad_spatial(x.astype(dt, copy=False), window.begin, end, 0)
    lead = (slice(None), slice(None))
    total = None
    for tap in window.taps():
        view = xp[(*lead, *window.tap_slices(tap))]
        total = view.copy() if total is None else np.add(total, view, out=total)
    # The divisor is separable: per axis, how many taps land in the counted range. Padding that
    # ceil_mode adds beyond the declared pads is never counted.
    include = bool(attrs["count_include_pad"])
    count = np.ones((), dtype=dt)
    for a, size in enumerate(x.shape[2:]):
        lo, hi = (-window.begin[a], size + window.end[a]) if include else (0, size)
        starts = np.arange(window.out[a]) * window.strides[a] - window.begin[a]
        pos = starts[:, None] + np.arange(window.kernel[a]) * window.dilations[a]
        per_axis = ((pos >= lo) & (pos < hi)).sum(axis=1).astype(dt)
        count = np.multiply.outer(count, per_axis)
    return [(total / count).astype(outs[0].dtype, copy=False)]


def _pool_cost(extra_flops: int) -> Any:
    def cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
        y = outputs[0]
        k = math.prod(int(v) for v in attrs["kernel_shape"])
        written = sum(v.nbytes for v in outputs if v is not None)
        return Cost(float(y.size * (k + extra_flops)), float(inputs[0].nbytes), float(written))

    return cost


register(
    OpDef(
        "MaxPool",
        _maxpool_infer,
        _maxpool_reference,
        _pool_cost(0),
        max_outputs=2,
        attrs={**POOL_ATTRS, "storage_order": 0},
    )
)
register(
    OpDef(
        "AveragePool",
        _avgpool_infer,
        _avgpool_reference,
        _pool_cost(1),
        attrs={**POOL_ATTRS, "count_include_pad": 0},
    )
)


def _global_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    if x.rank < 3:
        raise ShapeError(f"X must be N x C x D1 x ... (rank >= 3), got shape {x.shape}")
    check_float(x.dtype)
    return [((*x.shape[:2], *([1] * (x.rank - 2))), x.dtype)]


def _global_average(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    axes = tuple(range(2, x.ndim))
    y = x.mean(axis=axes, keepdims=True, dtype=compute_dtype(x.dtype))
    return [y.astype(outs[0].dtype, copy=False)]


def _global_max(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


def _global_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    return Cost(float(inputs[0].size), float(inputs[0].nbytes), float(outputs[0].nbytes))


register(OpDef("GlobalAveragePool", _global_infer, _global_average, _global_cost))
register(OpDef("GlobalMaxPool", _global_infer, _global_max, _global_cost))
