"""NonMaxSuppression and RoiAlign against onnxruntime, on tiny onnx.helper models.

NMS's output size depends on the data, so its models are loaded with every input bound
(``constants=``): the node folds through its shape rule and numpy reference. RoiAlign has a static
shape and also runs on fed inputs. Selected indices must equal onnxruntime's exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import eqsat
from eqsat.errors import DataDependentShapeError, ShapeError
from eqsat.ir import Graph
from eqsat.onnx_upgrade import upgrade
from tests.onnx_testing import ELEM, F, check, model, ort_run, vi

NMS_NAMES = ("boxes", "scores", "max_output", "iou_threshold", "score_threshold")


# ------------------------------------------------------------------ NonMaxSuppression
def nms_model(
    arrays: dict[str, np.ndarray | None], opset: int = 11, **attrs: Any
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """An NMS model whose inputs are all graph inputs (bound as constants when loaded)."""
    names = [n if arrays.get(n) is not None else "" for n in NMS_NAMES]
    while names[-1] == "":
        names.pop()
    given = {n: np.asarray(arrays[n]) for n in names if n}
    proto = model(
        [h.make_node("NonMaxSuppression", names, ["selected"], **attrs)],
        [vi(n, list(a.shape), ELEM[a.dtype]) for n, a in given.items()],
        [vi("selected", None, T.INT64)],
        opset=opset,
    )
    return proto, given


def check_nms(arrays: dict[str, np.ndarray | None], opset: int = 11, **attrs: Any) -> np.ndarray:
    """Fold NMS with every input bound and compare with onnxruntime; returns the selection."""
    proto, given = nms_model(arrays, opset, **attrs)
    graph = check(proto, {}, constants=given)
    assert graph.op_counts() == {}  # folded away
    (selected,) = eqsat.compile(graph, target="numpy").run({}).values()
    assert selected.dtype == np.int64 and selected.shape[1:] == (3,)
    return selected


def random_boxes(
    rng: np.random.Generator, batches: int, n: int, *, clusters: int = 0, center: bool = False
) -> np.ndarray:
    """Boxes with corners in either order; ``clusters`` > 0 groups them into overlapping heaps."""
    if clusters:
        seeds = rng.random((batches, clusters, 4))
        boxes = seeds[:, rng.integers(0, clusters, n)] + 0.04 * rng.standard_normal((batches, n, 4))
    else:
        boxes = rng.random((batches, n, 4))
    if center:  # [x_center, y_center, width, height]
        boxes[..., 2:] = 0.05 + 0.5 * np.abs(boxes[..., 2:])
    return boxes.astype(F)


@pytest.mark.parametrize("opset", [10, 11])
@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("max_output", [None, 0, 3, 10_000])
@pytest.mark.parametrize("score_threshold", [None, 0.4])
def test_nms_random(opset: int, center: int, max_output: int | None, score_threshold: Any) -> None:
    rng = np.random.default_rng([opset, center, max_output or 0, score_threshold is None])
    for clusters in (0, 3):
        batches, classes, n = 2, 3, 24
        scores = rng.random((batches, classes, n)).astype(F)
        scores[:, 0] = np.round(scores[:, 0] * 4) / 4  # equal scores: the tie order matters
        arrays = {
            "boxes": random_boxes(rng, batches, n, clusters=clusters, center=bool(center)),
            "scores": scores,
            "max_output": None if max_output is None else np.array([max_output], np.int64),
            "iou_threshold": np.array([0.3], F),
            "score_threshold": None if score_threshold is None else np.array(score_threshold, F),
        }
        selected = check_nms(arrays, opset, center_point_box=center)
        if not max_output:  # omitted or 0: nothing is selected
            assert selected.shape == (0, 3)


def test_nms_scalar_inputs_thresholds_and_ties() -> None:
    # Five copies of one box with equal scores: the lowest index wins, the rest are suppressed.
    boxes = np.tile(np.array([[0.0, 0.0, 1.0, 1.0]], F), (5, 1))[None]
    scores = np.full((1, 1, 5), 0.5, F)
    arrays = {"boxes": boxes, "scores": scores, "max_output": np.array(5, np.int64)}
    arrays |= {"iou_threshold": np.array(0.5, F)}
    np.testing.assert_array_equal(check_nms(arrays), [[0, 0, 0]])
    # IoU exactly 0.5 is not above a threshold of 0.5; touching edges never overlap, even at 0.
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 2, 1], [1, 0, 2, 1], [0.5, 0, 1.5, 1]]], F)
    scores = np.array([[[0.9, 0.8, 0.7, 0.6]]], F)
    for iou, want in ((0.5, [0, 1, 2, 3]), (0.49, [0, 2, 3]), (0.0, [0, 2])):
        arrays = {"boxes": boxes, "scores": scores, "max_output": np.array([9], np.int64)}
        arrays["iou_threshold"] = np.array([iou], F)
        np.testing.assert_array_equal(check_nms(arrays)[:, 2], want)
    # The score threshold is strict too; an omitted iou_threshold is 0.
    arrays = {"boxes": boxes, "scores": scores, "max_output": np.array([9], np.int64)}
    arrays |= {"iou_threshold": np.array(1.0, F), "score_threshold": np.array([0.6], F)}
    np.testing.assert_array_equal(check_nms(arrays)[:, 2], [0, 1, 2])
    arrays |= {"iou_threshold": None, "score_threshold": None}
    np.testing.assert_array_equal(check_nms(arrays)[:, 2], [0, 2])


def test_nms_flipped_corners_and_empty_boxes() -> None:
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 1, 30, clusters=2)
    flipped = boxes[..., [2, 3, 0, 1]]  # same boxes, corners swapped
    scores = rng.random((1, 2, 30)).astype(F)
    base = {"max_output": np.array([30], np.int64), "iou_threshold": np.array([0.2], F)}
    plain = check_nms({"boxes": boxes, "scores": scores, **base})
    np.testing.assert_array_equal(check_nms({"boxes": flipped, "scores": scores, **base}), plain)
    # No boxes at all: an empty selection.
    empty = {"boxes": np.zeros((1, 0, 4), F), "scores": np.zeros((1, 2, 0), F), **base}
    assert check_nms(empty).shape == (0, 3)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_nms_on_fed_inputs_runs_in_the_runtime_tail(target: str) -> None:
    # Sigmoid then NMS, everything fed: eqsat.load puts NMS into the run-time tail.
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 2, 20, clusters=3)
    logits = rng.standard_normal((2, 3, 20)).astype(F)
    limits = {"max_output": np.array([4], np.int64), "iou_threshold": np.array([0.3], F)}
    nodes = [
        h.make_node("Sigmoid", ["logits"], ["scores"]),
        h.make_node(
            "NonMaxSuppression", ["boxes", "scores", "max_output", "iou_threshold"], ["selected"]
        ),
    ]
    feeds = {"boxes": boxes, "logits": logits, **limits}
    inputs = [vi(n, list(a.shape), ELEM[a.dtype]) for n, a in feeds.items()]
    proto = model(nodes, inputs, [vi("selected", None, T.INT64)], opset=11)
    (want,) = ort_run(proto, feeds)
    executable = eqsat.compile(eqsat.load(proto), target=target)
    for _ in range(2):  # a second run re-selects for its own data
        got = executable.run(feeds)["selected"]
        np.testing.assert_array_equal(got, want)
        feeds["logits"] = -feeds["logits"]
        (want,) = ort_run(proto, feeds)


def test_nms_on_a_runtime_input_is_data_dependent() -> None:
    g = eqsat.Graph("nms")
    boxes = g.input("boxes", (1, 8, 4), np.float32)
    scores = g.constant(np.zeros((1, 2, 8), F), "scores")
    limit = g.constant(np.array([3], np.int64), "limit")
    with pytest.raises(DataDependentShapeError, match=r"output size .* depends on the data"):
        g.op("NonMaxSuppression", boxes, scores, limit, name="nms")
    with pytest.raises(ShapeError, match=r"'nms'.*'boxes'.*is a run-time value"):
        g.op("NonMaxSuppression", boxes, scores, limit, name="nms")


@pytest.mark.parametrize(
    ("boxes", "scores", "message"),
    [
        ((1, 8, 3), (1, 2, 8), "last dimension must be 4"),
        ((1, 8, 4), (2, 2, 8), "disagree on the batch size"),
        ((1, 8, 4), (1, 2, 7), "disagree on the number of boxes"),
        ((8, 4), (1, 2, 8), "'boxes' must have rank 3"),
    ],
)
def test_nms_bad_shapes(boxes: tuple, scores: tuple, message: str) -> None:
    g = eqsat.Graph("nms")
    b = g.input("boxes", boxes, np.float32)
    s = g.input("scores", scores, np.float32)
    with pytest.raises(ShapeError, match=message) as info:
        g.op("NonMaxSuppression", b, s, name="bad_nms")
    assert not isinstance(info.value, DataDependentShapeError)
    assert "bad_nms" in str(info.value) and "NonMaxSuppression" in str(info.value)


def test_nms_bad_scalars() -> None:
    g = eqsat.Graph("nms")
    b = g.constant(np.zeros((1, 4, 4), F))
    s = g.constant(np.zeros((1, 1, 4), F))
    with pytest.raises(ShapeError, match="'max_output_boxes_per_class' must be int64"):
        g.op("NonMaxSuppression", b, s, g.constant(np.array([3], np.int32)))
    with pytest.raises(ShapeError, match="iou_threshold must be in \\[0, 1\\]"):
        g.op("NonMaxSuppression", b, s, g.constant(np.array(3)), g.constant(np.array(1.5, F)))


# ------------------------------------------------------------------ RoiAlign
def roi_inputs(
    rng: np.random.Generator, n: int = 2, c: int = 3, hw: tuple[int, int] = (9, 11), r: int = 6
) -> dict[str, np.ndarray]:
    """Features and regions in image coordinates (scale 2 of the map), some partly outside it,
    some degenerate (end before start)."""
    height, width = hw
    start = rng.uniform(-0.3, 1.1, (r, 2)) * [2 * width, 2 * height]
    size = rng.uniform(0.1, 1.0, (r, 2)) * [2 * width, 2 * height]
    size[0] *= -0.2  # a malformed region: forced to 1x1 (output_half_pixel) or empty (half_pixel)
    rois = np.concatenate([start, start + size], axis=1).astype(F)
    rois[1] = [-4.0, -3.0, 2 * width + 5.0, 2 * height + 3.0]  # covers and overhangs the map
    return {
        "X": rng.standard_normal((n, c, height, width)).astype(F),
        "rois": rois,
        "batch_indices": rng.integers(0, n, r).astype(np.int64),
    }


def roi_model(inputs: dict[str, np.ndarray], opset: int = 16, **attrs: Any) -> onnx.ModelProto:
    return model(
        [h.make_node("RoiAlign", list(inputs), ["Y"], **attrs)],
        [vi(n, list(a.shape), ELEM[a.dtype]) for n, a in inputs.items()],
        [vi("Y", None, ELEM[inputs["X"].dtype])],
        opset=opset,
    )


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("coordinates", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align(mode: str, coordinates: str, sampling_ratio: int) -> None:
    rng = np.random.default_rng([len(mode), len(coordinates), sampling_ratio])
    inputs = roi_inputs(rng)
    attrs = {"mode": mode, "output_height": 3, "output_width": 2, "spatial_scale": 0.5}
    attrs |= {"sampling_ratio": sampling_ratio, "coordinate_transformation_mode": coordinates}
    proto = roi_model(inputs, **attrs)
    graph = check(proto, inputs)  # fed at run time: the numpy target runs the reference
    assert graph.op_counts() == {"RoiAlign": 1}
    folded = check(proto, {}, constants=inputs)  # every input bound: the node folds
    assert folded.op_counts() == {}


def test_roi_align_defaults_float64_and_tiny_maps() -> None:
    rng = np.random.default_rng(3)
    inputs = roi_inputs(rng, n=1, c=2, hw=(1, 2), r=4)
    inputs["batch_indices"][:] = 0
    check(roi_model(inputs), inputs)  # opset-16 defaults: half_pixel, 1x1, avg, scale 1
    inputs = {k: (v.astype(np.float64) if v.dtype == F else v) for k, v in inputs.items()}
    attrs = {"mode": "max", "output_height": 2, "output_width": 2, "sampling_ratio": 1}
    check(roi_model(inputs, **attrs), inputs)


def _opset10_upgraded() -> bool:
    g = Graph("probe")
    args = [g.input("x", (1, 1, 2, 2), np.float32), g.input("r", (1, 4), np.float32)]
    args.append(g.input("b", (1,), np.int64))
    up = upgrade(g, "RoiAlign", 10, args, {}, "probe")
    return up.attrs.get("coordinate_transformation_mode") == "output_half_pixel"


@pytest.mark.xfail(
    not _opset10_upgraded(),
    reason="onnx_upgrade does not yet give opset-10 RoiAlign coordinate_transformation_mode "
    "'output_half_pixel' (its opset-10 meaning)",
    strict=True,
)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_opset10_is_output_half_pixel(mode: str) -> None:
    rng = np.random.default_rng(10)
    inputs = roi_inputs(rng)
    attrs = {"mode": mode, "output_height": 2, "output_width": 3, "spatial_scale": 0.5}
    check(roi_model(inputs, opset=10, **attrs), inputs)


def test_roi_align_bad_inputs() -> None:
    g = eqsat.Graph("roi")
    x = g.input("X", (2, 3, 8, 8), np.float32)
    with pytest.raises(ShapeError, match=r"'rois' must have shape \[num_rois, 4\]"):
        g.op("RoiAlign", x, g.input("r5", (4, 5), np.float32), g.input("b4", (4,), np.int64))
    rois = g.input("rois", (4, 4), np.float32)
    with pytest.raises(ShapeError, match="'batch_indices' must be int64 of shape \\[4\\]"):
        g.op("RoiAlign", x, rois, g.input("b3", (3,), np.int64))
    with pytest.raises(ShapeError, match=r"batch_indices\[2\] = 2 is out of range"):
        g.op("RoiAlign", x, rois, g.constant(np.array([0, 1, 2, 0])), name="roi_align")
    with pytest.raises(ShapeError, match="mode must be one of"):
        g.op("RoiAlign", x, rois, g.constant(np.zeros(4, np.int64)), mode="sum")
