"""Object-detection operators: NonMaxSuppression and RoiAlign.

NonMaxSuppression's output has one row per selected box, so its shape depends on the data: the shape
rule raises :class:`~eqsat.errors.DataDependentShapeError` unless every input is a constant, and
then runs the reference to count the rows. Models reach it in their run-time tail (see
:mod:`eqsat.tail`), which is re-loaded with every input bound, so the node always folds there.
RoiAlign has a static shape (one ``output_height x output_width`` map per region and channel).

onnxruntime is the oracle both references follow, down to its float32 arithmetic and its ordering:
NMS compares scores and IoUs strictly, breaks equal scores by the lower box index, and takes the
min/max of each corner pair; RoiAlign samples with ORT's boundary rules and, in "max" mode, takes
the maximum of the *weighted* corner values, as ORT's kernel does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import DataDependentShapeError, ShapeError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, register

INT64 = np.dtype(np.int64)
F32 = np.dtype(np.float32)

# Elements of one gathered corner array in RoiAlign's reference; regions are processed in chunks
# that stay below it, so the temporaries stay in cache (1000 proposals x 256 channels x 7x7 bins:
# 0.3 s in chunks of 2**18 elements, 1.7 s in chunks of 2**20) and never take gigabytes.
ROI_CHUNK_ELEMENTS = 1 << 18


def _scalar_input(value: Value | None, what: str, dtype: np.dtype) -> None:
    """An optional one-element input of ``dtype`` (a scalar or shape [1], as exporters write)."""
    if value is None:
        return
    if value.dtype != dtype:
        raise ShapeError(f"input {what!r} must be {dtype}, got {value.dtype}")
    if value.size != 1 or value.rank > 1:
        raise ShapeError(
            f"input {what!r} must be a scalar or have shape [1], got {list(value.shape)}"
        )


# ------------------------------------------------------------------ NonMaxSuppression
NMS_INPUTS = ("boxes", "scores", "max_output_boxes_per_class", "iou_threshold", "score_threshold")


def _nms_check(inputs: list[Value | None], attrs: dict[str, Any]) -> None:
    boxes, scores = inputs[0], inputs[1]
    if boxes is None or scores is None:
        raise ShapeError("inputs 'boxes' and 'scores' are required")
    for value, what in ((boxes, "boxes"), (scores, "scores")):
        if value.rank != 3:
            raise ShapeError(f"input {what!r} must have rank 3, got shape {list(value.shape)}")
        if value.dtype != F32:
            raise ShapeError(f"input {what!r} must be float32, got {value.dtype}")
    if boxes.shape[2] != 4:
        raise ShapeError(
            f"input 'boxes' must have shape [batches, boxes, 4], got {list(boxes.shape)} (its last "
            "dimension must be 4)"
        )
    if boxes.shape[0] != scores.shape[0]:
        raise ShapeError(
            f"boxes {list(boxes.shape)} and scores {list(scores.shape)} disagree on the batch size"
        )
    if boxes.shape[1] != scores.shape[2]:
        raise ShapeError(
            f"boxes {list(boxes.shape)} and scores {list(scores.shape)} disagree on the number of "
            "boxes (boxes' dimension 1, scores' dimension 2)"
        )
    _scalar_input(inputs[2] if len(inputs) > 2 else None, NMS_INPUTS[2], INT64)
    for i in (3, 4):
        _scalar_input(inputs[i] if len(inputs) > i else None, NMS_INPUTS[i], F32)
    if attrs["center_point_box"] not in (0, 1):
        raise ShapeError(f"center_point_box must be 0 or 1, got {attrs['center_point_box']}")


def _nms_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    _nms_check(inputs, attrs)
    unknown = [
        f"{what} ({v.name!r})"
        for what, v in zip(NMS_INPUTS, inputs, strict=False)
        if v is not None and v.const is None
    ]
    if unknown:
        verb = "is a run-time value" if len(unknown) == 1 else "are run-time values"
        raise DataDependentShapeError(
            "NonMaxSuppression's output size (the number of selected boxes) depends on the data, "
            f"and {', '.join(unknown)} {verb}; eqsat compiles static shapes only (bind them with "
            "constants=, or load the model with eqsat.load, which runs this part at run time)"
        )
    selected = _nms_cached([v.const if v is not None else None for v in inputs], attrs)
    return [(selected.shape, INT64)]


# The shape rule runs the whole NMS to count the selected boxes, and folding then asks the
# reference for the same result: remember the last one, keyed by the identity of its (immutable,
# constant) input arrays, which the entry keeps alive so that no other array can take their ids.
_LAST_NMS: list[Any] = [None]


def _nms_cached(arrays: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    last = _LAST_NMS[0]
    center = int(attrs["center_point_box"])
    if (
        last is not None
        and last[1] == center
        and len(last[0]) == len(arrays)
        and all(a is b for a, b in zip(last[0], arrays, strict=True))
    ):
        return last[2]
    result = _nms(arrays, center)
    _LAST_NMS[0] = (list(arrays), center, result)
    return result


def _nms_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    return [_nms_cached(list(arrays), attrs)]


def _corners(boxes: np.ndarray, center_point_box: int) -> tuple[np.ndarray, ...]:
    """(x_min, y_min, x_max, y_max, area) per box, in float32 as onnxruntime computes them."""
    if center_point_box == 0:
        # [y1, x1, y2, x2] with the corners of a pair in either order.
        y0, y1 = np.minimum(boxes[..., 0], boxes[..., 2]), np.maximum(boxes[..., 0], boxes[..., 2])
        x0, x1 = np.minimum(boxes[..., 1], boxes[..., 3]), np.maximum(boxes[..., 1], boxes[..., 3])
    else:  # [x_center, y_center, width, height]
        half_w, half_h = boxes[..., 2] / F32.type(2), boxes[..., 3] / F32.type(2)
        x0, x1 = boxes[..., 0] - half_w, boxes[..., 0] + half_w
        y0, y1 = boxes[..., 1] - half_h, boxes[..., 1] + half_h
    return x0, y0, x1, y1, (x1 - x0) * (y1 - y0)


def _greedy_source() -> Any:
    """The compiled greedy selection (Numba, imported on first use: ``import eqsat`` stays light).

    NMS is a sequential loop, which numpy can only run as matrix passes over blocks of
    candidates: torchvision's batched NMS (one class of ~27K boxes offset per label) took 1.4 s
    that way, most of it comparing candidates that an early exit would have settled at once."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def greedy(order, x0, y0, x1, y1, area, max_out, iou_threshold):  # type: ignore[no-untyped-def]
        m = order.size
        kept = np.empty(min(m, max_out), np.int64)
        if m == 0 or max_out <= 0:
            return kept[:0]
        # Only a box whose x0 lies in (b.x0 - widest, b.x1) can overlap candidate b: the
        # candidates sorted by x0 give that window by bisection. torchvision's batched NMS offsets
        # each label's boxes apart, so the window holds one label's boxes, not all of them.
        cx0 = x0[order].astype(np.float64)
        by_x = np.argsort(cx0, kind="mergesort")
        sorted_x0 = cx0[by_x]
        widest = np.max(x1[order].astype(np.float64) - cx0)
        windowed = np.isfinite(widest) and np.all(np.isfinite(cx0))
        is_kept = np.zeros(m, np.bool_)
        n = 0
        for t in range(m):
            b = order[t]
            bx0, by0, bx1, by1, barea = x0[b], y0[b], x1[b], y1[b], area[b]
            alive = True
            if barea > 0:  # a box without area is never suppressed, and suppresses nothing
                lo, hi = 0, m
                if windowed:
                    reach = np.float64(bx0) - widest
                    lo = np.searchsorted(sorted_x0, reach - abs(reach) * 1e-6 - 1e-30)
                    hi = np.searchsorted(sorted_x0, np.float64(bx1), side="right")
                for q in range(lo, hi):
                    p = by_x[q]
                    if not is_kept[p]:
                        continue
                    a = order[p]
                    aarea = area[a]
                    if aarea <= 0:
                        continue
                    ix0, ix1 = max(bx0, x0[a]), min(bx1, x1[a])
                    iy0, iy1 = max(by0, y0[a]), min(by1, y1[a])
                    if ix1 <= ix0 or iy1 <= iy0:
                        continue
                    inter = (ix1 - ix0) * (iy1 - iy0)
                    union = barea + aarea - inter
                    if inter > 0 and union > 0 and inter / union > iou_threshold:
                        alive = False
                        break
            if alive:
                is_kept[t] = True
                kept[n] = b
                n += 1
                if n == max_out:
                    break
        return kept[:n]

    return greedy


_GREEDY: list[Any] = []


def _roi_average_source() -> Any:
    """RoiAlign's average over the samples of each bin, compiled (Numba, imported on first use).

    The samples' positions and weights come from :func:`_axis_samples` (numpy, per region group);
    this loop gathers each sample's four corners for all channels and sums them in the numpy
    form's order, in the same dtype and without contraction, so the results are the same bits.
    As whole-array numpy passes it built (R, oh, ow, gh, gw, C) temporaries: Faster R-CNN's 150
    regions of 256 channels took 65-120 ms, most of it moving them."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def average(x, images, ys, xs, out):  # type: ignore[no-untyped-def]
        ylo, yhi, wylo, wyhi, yin = ys
        xlo, xhi, wxlo, wxhi, xin = xs
        regions, oh, gh = ylo.shape
        ow, gw = xlo.shape[1], xlo.shape[2]
        channels = x.shape[3]
        zero = x.dtype.type(0)
        count = x.dtype.type(gh * gw)
        total = np.empty(channels, x.dtype)
        for r in range(regions):
            image = x[images[r]]
            for ph in range(oh):
                for pw in range(ow):
                    total[:] = zero
                    for iy in range(gh):
                        for ix in range(gw):
                            if yin[r, ph, iy] and xin[r, pw, ix]:
                                y0, y1 = ylo[r, ph, iy], yhi[r, ph, iy]
                                x0, x1 = xlo[r, pw, ix], xhi[r, pw, ix]
                                w00 = wylo[r, ph, iy] * wxlo[r, pw, ix]
                                w01 = wylo[r, ph, iy] * wxhi[r, pw, ix]
                                w10 = wyhi[r, ph, iy] * wxlo[r, pw, ix]
                                w11 = wyhi[r, ph, iy] * wxhi[r, pw, ix]
                            else:  # ORT reads element 0 with weight 0 (0 * X[0], not a skip)
                                y0 = y1 = x0 = x1 = 0
                                w00 = w01 = w10 = w11 = zero
                            a, b = image[y0, x0], image[y0, x1]
                            c, d = image[y1, x0], image[y1, x1]
                            for k in range(channels):
                                total[k] = total[k] + (
                                    ((w00 * a[k] + w01 * b[k]) + w10 * c[k]) + w11 * d[k]
                                )
                    for k in range(channels):
                        out[r, k, ph, pw] = total[k] / count

    return average


_ROI_AVERAGE: list[Any] = []


def _select(
    order: np.ndarray, corners: tuple[np.ndarray, ...], max_out: int, iou_threshold: np.float32
) -> list[int]:
    """Greedy selection over candidates in score order, as ORT's loop does it: a candidate is
    kept unless a kept box suppresses it (IoU > threshold, in float32 as ORT's SuppressByIOU
    computes it: empty intersections and boxes without area never suppress), until ``max_out``
    are kept."""
    if not _GREEDY:
        _GREEDY.append(_greedy_source())
    x0, y0, x1, y1, area = (np.ascontiguousarray(c, F32) for c in corners)
    chosen = _GREEDY[0](
        np.ascontiguousarray(order, np.int64),
        x0,
        y0,
        x1,
        y1,
        area,
        max_out,
        F32.type(iou_threshold),
    )
    return [int(i) for i in chosen]


def _nms(arrays: list[np.ndarray | None], center_point_box: int) -> np.ndarray:
    boxes, scores = np.asarray(arrays[0], F32), np.asarray(arrays[1], F32)
    given = [np.asarray(a).reshape(-1)[0] if a is not None else None for a in arrays[2:5]]
    given += [None] * (3 - len(given))
    # Omitted, zero or negative: no box is selected (onnxruntime clamps at 0).
    max_out = max(int(given[0]), 0) if given[0] is not None else 0
    iou_threshold = F32.type(given[1]) if given[1] is not None else F32.type(0)
    score_threshold = F32.type(given[2]) if given[2] is not None else None
    if not 0 <= iou_threshold <= 1:
        raise ShapeError(f"iou_threshold must be in [0, 1], got {float(iou_threshold)}")
    batches, classes, num_boxes = scores.shape
    rows: list[tuple[int, int, int]] = []
    if num_boxes == 0 or max_out == 0:
        return np.zeros((0, 3), INT64)
    for b in range(batches):
        corners = _corners(boxes[b], center_point_box)
        for c in range(classes):
            s = scores[b, c]
            if score_threshold is None:
                candidates = np.arange(num_boxes)
            else:
                candidates = np.flatnonzero(s > score_threshold)
            # Highest score first; equal scores in index order (ORT's heap breaks ties so).
            order = candidates[np.argsort(-s[candidates], kind="stable")]
            rows.extend((b, c, i) for i in _select(order, corners, max_out, iou_threshold))
    return np.array(rows, INT64).reshape(-1, 3)


def _nms_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    scores = inputs[1]
    num_boxes = max(scores.shape[2], 1)
    selected = outputs[0].shape[0] if outputs[0] is not None else num_boxes
    sort = scores.size * max(math.log2(max(num_boxes, 2)), 1.0)
    # Each selected box is tested against the remaining candidates of its class (~16 flops each).
    iou = 16.0 * selected * num_boxes
    read = sum(v.nbytes for v in inputs if v is not None)
    written = sum(v.nbytes for v in outputs if v is not None)
    return Cost(float(sort + iou), float(read), float(written))


register(
    OpDef(
        "NonMaxSuppression",
        _nms_infer,
        _nms_reference,
        _nms_cost,
        min_inputs=2,
        max_inputs=5,
        attrs={"center_point_box": 0},
        doc="Greedy per-class box selection by IoU; output rows [batch, class, box].",
    )
)


# ------------------------------------------------------------------ RoiAlign
ROI_MODES = ("avg", "max")
ROI_COORDINATES = ("half_pixel", "output_half_pixel")


def _roi_infer(inputs: list[Any], attrs: dict[str, Any], _: int) -> list[Any]:
    x, rois, batch = inputs
    if x.rank != 4:
        raise ShapeError(f"input 'X' must have shape [N, C, H, W], got {list(x.shape)}")
    if x.dtype.kind != "f":
        raise ShapeError(f"input 'X' must be a float tensor, got {x.dtype}")
    if rois.rank != 2 or rois.shape[1] != 4:
        raise ShapeError(f"input 'rois' must have shape [num_rois, 4], got {list(rois.shape)}")
    if rois.dtype != x.dtype:
        raise ShapeError(f"input 'rois' must have X's dtype {x.dtype}, got {rois.dtype}")
    if batch.dtype != INT64 or batch.rank != 1 or batch.shape[0] != rois.shape[0]:
        raise ShapeError(
            f"input 'batch_indices' must be int64 of shape [{rois.shape[0]}] (one per roi), got "
            f"{batch.dtype} {list(batch.shape)}"
        )
    if attrs["mode"] not in ROI_MODES:
        raise ShapeError(f"mode must be one of {list(ROI_MODES)}, got {attrs['mode']!r}")
    if attrs["coordinate_transformation_mode"] not in ROI_COORDINATES:
        raise ShapeError(
            f"coordinate_transformation_mode must be one of {list(ROI_COORDINATES)}, got "
            f"{attrs['coordinate_transformation_mode']!r}"
        )
    oh, ow = attrs["output_height"], attrs["output_width"]
    if oh < 1 or ow < 1:
        raise ShapeError(f"output_height and output_width must be >= 1, got {oh}, {ow}")
    if attrs["sampling_ratio"] < 0:
        raise ShapeError(f"sampling_ratio must be >= 0, got {attrs['sampling_ratio']}")
    if batch.const is not None:
        _check_batch_indices(np.asarray(batch.const), x.shape[0])
    return [((rois.shape[0], x.shape[1], oh, ow), x.dtype)]


def _check_batch_indices(batch: np.ndarray, images: int) -> None:
    bad = np.flatnonzero((batch < 0) | (batch >= images))
    if bad.size:
        i = int(bad[0])
        raise ShapeError(
            f"batch_indices[{i}] = {int(batch[i])} is out of range for an X of {images} image(s)"
        )


def _axis_samples(
    start: np.ndarray, bin_size: np.ndarray, pooled: int, grid: int, extent: int, t: np.dtype
) -> tuple[np.ndarray, ...]:
    """Sample positions along one axis for regions with ``grid`` samples per bin, as ORT computes
    them: (low index, high index, weight of low, weight of high, inside), each (R, pooled, grid).

    Samples beyond [-1, extent] are empty (zero weights, both indices 0); the rest clamp to the
    map, and samples on or past the last row/column read it with weight 1.
    """
    p = np.arange(pooled).astype(t)[None, :, None]
    offsets = (np.arange(grid) + 0.5).astype(t)[None, None, :]
    start, bin_size = start[:, None, None], bin_size[:, None, None]
    pos = (start + p * bin_size) + offsets * bin_size / t.type(grid)
    inside = ~((pos < -1) | (pos > t.type(extent)))
    pos = np.where(pos <= 0, t.type(0), pos)
    low = pos.astype(np.int64)
    at_edge = low >= extent - 1
    low = np.where(at_edge, extent - 1, low)
    high = np.where(at_edge, low, low + 1)
    pos = np.where(at_edge, low.astype(t), pos)
    frac = pos - low.astype(t)
    return low, high, t.type(1) - frac, frac, inside


def _roi_group(
    x: np.ndarray,
    images: np.ndarray,
    params: tuple[np.ndarray, ...],
    grid: tuple[int, int],
    attrs: dict[str, Any],
) -> np.ndarray:
    """RoiAlign for regions that share one sampling grid: (R, C, oh, ow) from channels-last
    features ``x`` (N, H, W, C), so that each sample gathers contiguous channel vectors."""
    t = x.dtype
    start_h, start_w, bin_h, bin_w = params
    oh, ow = attrs["output_height"], attrs["output_width"]
    gh, gw = grid
    height, width = x.shape[1:3]
    if gh <= 0 or gw <= 0:  # a region of negative extent (half_pixel): no samples, zeros
        return np.zeros((len(images), x.shape[3], oh, ow), t)
    ylo, yhi, wylo, wyhi, yin = _axis_samples(start_h, bin_h, oh, gh, height, t)
    xlo, xhi, wxlo, wxhi, xin = _axis_samples(start_w, bin_w, ow, gw, width, t)

    # Broadcast to (R, oh, ow, gh, gw): y terms vary along oh/gh, x terms along ow/gw.
    def ys(a: np.ndarray) -> np.ndarray:
        return a[:, :, None, :, None]

    def xs(a: np.ndarray) -> np.ndarray:
        return a[:, None, :, None, :]

    if attrs["mode"] == "avg":
        if not _ROI_AVERAGE:
            _ROI_AVERAGE.append(_roi_average_source())
        out = np.empty((len(images), x.shape[3], oh, ow), t)
        samples_y = (ylo, yhi, wylo, wyhi, yin)
        samples_x = (xlo, xhi, wxlo, wxhi, xin)
        _ROI_AVERAGE[0](x, images, samples_y, samples_x, out)
        return out
    inside = ys(yin) & xs(xin)
    zero = t.type(0)
    terms = []
    # ORT's corner order: (low, low), (low, high), (high, low), (high, high) as (y, x).
    for yi, wy, xi, wx in (
        (ylo, wylo, xlo, wxlo),
        (ylo, wylo, xhi, wxhi),
        (yhi, wyhi, xlo, wxlo),
        (yhi, wyhi, xhi, wxhi),
    ):
        # ORT's empty samples point at element 0 with weight 0 (so 0 * X[0], not a skip).
        weight = np.where(inside, ys(wy) * xs(wx), zero)
        yy = np.where(inside, ys(yi), 0)
        xx = np.where(inside, xs(xi), 0)
        values = x[images[:, None, None, None, None], yy, xx]  # (R, oh, ow, gh, gw, C)
        terms.append(weight[..., None] * values)
    sample = terms[0] + terms[1] + terms[2] + terms[3]
    if attrs["mode"] == "avg":
        total = np.zeros(sample.shape[:3] + sample.shape[5:], t)
        for iy in range(gh):  # accumulate in ORT's order: row by row, then along the row
            for ix in range(gw):
                total = total + sample[:, :, :, iy, ix]
        result = total / t.type(gh * gw)
    else:
        # ORT's kernel takes the max of the four *weighted* corner values of each sample, then
        # the max over the samples; the spec's text (and its reference) take the max of the
        # interpolated values. onnxruntime is the oracle here.
        best = np.maximum(np.maximum(np.maximum(terms[0], terms[1]), terms[2]), terms[3])
        result = best.max(axis=(3, 4))
    return np.moveaxis(result, 3, 1)


def _roi_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, rois, batch = arrays
    out_dtype = x.dtype
    t = np.dtype(np.float64) if x.dtype == np.float64 else F32  # float16 computes in float32
    x, rois, batch = x.astype(t, copy=False), rois.astype(t, copy=False), batch.astype(np.int64)
    _check_batch_indices(batch, x.shape[0])
    oh, ow = attrs["output_height"], attrs["output_width"]
    half_pixel = attrs["coordinate_transformation_mode"] == "half_pixel"
    # The attribute is a float32; ORT multiplies in T (float32, or float64 after promotion).
    scale = t.type(np.float32(attrs["spatial_scale"]))
    corners = rois * scale - t.type(0.5 if half_pixel else 0.0)
    start_w, start_h, end_w, end_h = (corners[:, i] for i in range(4))
    roi_w, roi_h = end_w - start_w, end_h - start_h
    if not half_pixel:  # output_half_pixel forces malformed regions to 1x1
        roi_w, roi_h = np.maximum(roi_w, t.type(1)), np.maximum(roi_h, t.type(1))
    bin_h, bin_w = roi_h / t.type(oh), roi_w / t.type(ow)
    ratio = attrs["sampling_ratio"]
    if ratio > 0:
        grid_h = grid_w = np.full(len(rois), ratio, np.int64)
    else:
        grid_h, grid_w = np.ceil(bin_h).astype(np.int64), np.ceil(bin_w).astype(np.int64)
    out = np.zeros((len(rois), x.shape[1], oh, ow), t)
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    per_roi = max(x.shape[1] * oh * ow, 1)
    for gh, gw in sorted(set(zip(grid_h.tolist(), grid_w.tolist(), strict=True))):
        members = np.flatnonzero((grid_h == gh) & (grid_w == gw))
        chunk = max(ROI_CHUNK_ELEMENTS // (per_roi * max(gh, 1) * max(gw, 1)), 1)
        for lo in range(0, len(members), chunk):
            idx = members[lo : lo + chunk]
            params = (start_h[idx], start_w[idx], bin_h[idx], bin_w[idx])
            out[idx] = _roi_group(channels_last, batch[idx], params, (gh, gw), attrs)
    return [out.astype(out_dtype, copy=False)]


def _roi_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    x, out = inputs[0], outputs[0]
    ratio = attrs["sampling_ratio"]
    # With sampling_ratio 0 the grid depends on each region's size; 2x2 is the common case.
    samples = (ratio if ratio > 0 else 2) ** 2
    flops = out.size * samples * 12.0  # 4 corner weights, 4 products, 4 sums per sample
    gathered = out.size * samples * 4 * x.dtype.itemsize
    read = min(x.nbytes, gathered) + inputs[1].nbytes + inputs[2].nbytes
    return Cost(float(flops), float(read), float(out.nbytes))


register(
    OpDef(
        "RoiAlign",
        _roi_infer,
        _roi_reference,
        _roi_cost,
        min_inputs=3,
        max_inputs=3,
        attrs={
            # Opset 10 has no coordinate_transformation_mode and behaves as
            # "output_half_pixel": onnx_upgrade must give opset-10 nodes that mode.
            "coordinate_transformation_mode": "half_pixel",
            "mode": "avg",
            "output_height": 1,
            "output_width": 1,
            "sampling_ratio": 0,
            "spatial_scale": 1.0,
        },
        doc="Bilinear region pooling (Mask R-CNN's RoIAlign), as onnxruntime computes it.",
    )
)
