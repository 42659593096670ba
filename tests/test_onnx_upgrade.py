"""Older-opset nodes imported into their opset-21 form, each checked against onnxruntime.

Every model is built at the old opset with ``onnx.helper``; :func:`onnx_testing.check` compares
eqsat's numpy reference and its re-exported opset-21 model with onnxruntime on the original.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_testing import F, check, init, model, ort_run, randn, vi

import eqsat
from eqsat.errors import ModelLoadError, ShapeError, UnsupportedOperatorError


@pytest.mark.parametrize("opset", [11, 12])
def test_squeeze_unsqueeze_axes_attribute(rng: np.random.Generator, opset: int) -> None:
    nodes = [
        h.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
        h.make_node("Squeeze", ["u"], ["y"], axes=[0]),
        h.make_node("Squeeze", ["z"], ["w"]),  # no axes: every 1
    ]
    proto = model(
        nodes,
        [vi("x", [2, 3]), vi("z", [1, 4, 1])],
        [vi("y", [2, 3, 1]), vi("w", [4])],
        opset=opset,
    )
    check(proto, {"x": randn(rng, 2, 3), "z": randn(rng, 1, 4, 1)})


@pytest.mark.parametrize(
    ("op", "opset"),
    [("ReduceSum", 11), ("ReduceMean", 11), ("ReduceMean", 13), ("ReduceMax", 17)],
)
def test_reduce_axes_attribute(rng: np.random.Generator, op: str, opset: int) -> None:
    nodes = [
        h.make_node(op, ["x"], ["a"], axes=[1], keepdims=0),
        h.make_node(op, ["x"], ["b"], axes=[-1, 0]),
        h.make_node(op, ["x"], ["c"], keepdims=0),  # no axes: all of them
    ]
    proto = model(
        nodes, [vi("x", [2, 3, 4])], [vi("a", None), vi("b", None), vi("c", None)], opset=opset
    )
    check(proto, {"x": randn(rng, 2, 3, 4)})


def test_split_attribute_opset11(rng: np.random.Generator) -> None:
    nodes = [
        h.make_node("Split", ["x"], ["a", "b", "c"], axis=1, split=[1, 2, 3]),
        h.make_node("Split", ["x"], ["d", "e"], axis=0),  # equal parts
    ]
    outs = [vi(n, None) for n in "abcde"]
    check(model(nodes, [vi("x", [4, 6])], outs, opset=11), {"x": randn(rng, 4, 6)})


def test_split_opset13_without_num_outputs(rng: np.random.Generator) -> None:
    nodes = [
        h.make_node("Split", ["x"], ["a", "b", "c"], axis=-1),
        h.make_node("Split", ["x", "s"], ["d", "e"], axis=0),
    ]
    outs = [vi(n, None) for n in "abcde"]
    inits = [init("s", np.array([1, 3], np.int64))]
    graph = check(model(nodes, [vi("x", [4, 6])], outs, inits, opset=13), {"x": randn(rng, 4, 6)})
    split = next(n for n in graph.nodes if n.op == "Split" and len(n.outputs) == 3)
    assert split.attrs["num_outputs"] == 3


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 1, 0, -1, 2])
def test_softmax_coerces_to_2d_before_opset13(
    rng: np.random.Generator, op: str, axis: int | None
) -> None:
    if not eqsat.ops.is_supported(op):
        pytest.skip(f"{op} not registered")
    kwargs = {} if axis is None else {"axis": axis}
    proto = model(
        [h.make_node(op, ["x"], ["y"], **kwargs)], [vi("x", [2, 3, 4])], [vi("y", None)], opset=11
    )
    check(proto, {"x": randn(rng, 2, 3, 4)})


def test_softmax_opset13_is_per_axis(rng: np.random.Generator) -> None:
    proto = model(
        [h.make_node("Softmax", ["x"], ["y"], axis=1)],
        [vi("x", [2, 3, 4])],
        [vi("y", None)],
        opset=13,
    )
    check(proto, {"x": randn(rng, 2, 3, 4)})


def test_clip_opset11_with_missing_bounds(rng: np.random.Generator) -> None:
    nodes = [
        h.make_node("Clip", ["x", "lo"], ["a"]),  # no max
        h.make_node("Clip", ["x", "", "hi"], ["b"]),  # no min
        h.make_node("Clip", ["x"], ["c"]),  # neither
    ]
    inits = [init("lo", np.array(-0.5, F)), init("hi", np.array(0.25, F))]
    proto = model(nodes, [vi("x", [3, 4])], [vi(n, None) for n in "abc"], inits, opset=11)
    check(proto, {"x": randn(rng, 3, 4)})


def test_clip_attributes_opset10(rng: np.random.Generator) -> None:
    nodes = [
        h.make_node("Clip", ["x"], ["a"], min=-0.5),
        h.make_node("Clip", ["x"], ["b"], max=0.1),
    ]
    proto = model(nodes, [vi("x", [3, 4])], [vi("a", None), vi("b", None)], opset=10)
    check(proto, {"x": randn(rng, 3, 4)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_opset11(rng: np.random.Generator, mode: str) -> None:
    inputs = ["x", "pads", "value"] if mode == "constant" else ["x", "pads"]
    inits = [init("pads", np.array([0, 1, 2, 0, 2, 1], np.int64)), init("value", np.array(1.5, F))]
    proto = model(
        [h.make_node("Pad", inputs, ["y"], mode=mode)],
        [vi("x", [2, 3, 4])],
        [vi("y", None)],
        inits,
        opset=11,
    )
    check(proto, {"x": randn(rng, 2, 3, 4)})


def test_pad_attributes_opset10(rng: np.random.Generator) -> None:
    node = h.make_node("Pad", ["x"], ["y"], pads=[1, 0, 0, 2], value=-1.0)
    check(model([node], [vi("x", [2, 3])], [vi("y", None)], opset=10), {"x": randn(rng, 2, 3)})


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_sizes_with_empty_roi_and_scales(rng: np.random.Generator, opset: int) -> None:
    empty = np.zeros(0, F)
    inits = [
        init("roi", empty),
        init("scales", empty),
        init("sizes", np.array([1, 2, 6, 9], np.int64)),
    ]
    inputs = ["x", "roi", "scales", "sizes"] if opset == 11 else ["x", "", "", "sizes"]
    nodes = [
        h.make_node("Resize", inputs, ["y"], mode="nearest"),
        h.make_node(
            "Resize", inputs, ["z"], mode="linear", coordinate_transformation_mode="half_pixel"
        ),
    ]
    proto = model(
        nodes, [vi("x", [1, 2, 3, 4])], [vi("y", None), vi("z", None)], inits, opset=opset
    )
    check(proto, {"x": randn(rng, 1, 2, 3, 4)}, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_scales(rng: np.random.Generator, opset: int) -> None:
    inits = [init("roi", np.zeros(0, F)), init("scales", np.array([1, 1, 2, 2], F))]
    inputs = ["x", "roi", "scales"] if opset == 11 else ["x", "", "scales"]
    nodes = [
        h.make_node(
            "Resize", inputs, ["y"], mode="nearest", coordinate_transformation_mode="asymmetric"
        ),
        h.make_node("Resize", inputs, ["z"], mode="linear"),
    ]
    proto = model(
        nodes, [vi("x", [1, 2, 3, 4])], [vi("y", None), vi("z", None)], inits, opset=opset
    )
    check(proto, {"x": randn(rng, 1, 2, 3, 4)}, atol=1e-5)


@pytest.mark.parametrize(
    ("op", "opset", "scales"),
    [
        ("Resize", 10, [1, 1, 2, 3]),
        ("Resize", 10, [1, 1, 0.6, 0.4]),  # downsampling: onnxruntime rounds up
        ("Upsample", 9, [1, 1, 2, 3]),
        ("Upsample", 7, [1, 1, 1.5, 2]),  # scales as an attribute
    ],
)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_10_and_upsample(
    rng: np.random.Generator, op: str, opset: int, scales: list[float], mode: str
) -> None:
    values = np.array(scales, F)
    if opset < 9:
        node = h.make_node(op, ["x"], ["y"], mode=mode, scales=values.tolist())
        inits = []
    else:
        node = h.make_node(op, ["x", "scales"], ["y"], mode=mode)
        inits = [init("scales", values)]
    proto = model([node], [vi("x", [1, 2, 5, 6])], [vi("y", None)], inits, opset=opset)
    check(proto, {"x": randn(rng, 1, 2, 5, 6)}, atol=1e-5)


@pytest.mark.parametrize("runtime_scale", [False, True])
def test_group_normalization_18_scales_per_group(
    rng: np.random.Generator, runtime_scale: bool
) -> None:
    if not eqsat.ops.is_supported("GroupNormalization"):
        pytest.skip("GroupNormalization not registered")
    node = h.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-3)
    scale, bias = np.array([1.5, -0.5], F), np.array([0.25, 2.0], F)
    inputs, inits, feeds = [vi("x", [2, 6, 3])], [init("b", bias)], {"x": randn(rng, 2, 6, 3)}
    if runtime_scale:  # not foldable: the importer expands it per channel with graph nodes
        inputs.append(vi("s", [2]))
        feeds["s"] = scale
    else:
        inits.append(init("s", scale))
    check(model([node], inputs, [vi("y", None)], inits, opset=18), feeds, atol=1e-5)


def test_dropout_opset11_is_identity(rng: np.random.Generator) -> None:
    nodes = [h.make_node("Dropout", ["x"], ["y", "mask"], ratio=0.3)]
    proto = model(nodes, [vi("x", [2, 3])], [vi("y", None), vi("mask", None, T.BOOL)], opset=11)
    check(proto, {"x": randn(rng, 2, 3)})


def test_topk_slice_scatter_before_opset10(rng: np.random.Generator) -> None:
    nodes = [
        h.make_node("TopK", ["x"], ["v", "i"], k=2, axis=1),
        h.make_node("Slice", ["x"], ["s"], starts=[1, 0], ends=[3, -1], axes=[0, 1]),
        h.make_node("Scatter", ["x", "idx", "upd"], ["c"], axis=1),
    ]
    inits = [init("idx", np.array([[0, 2]] * 3, np.int64)), init("upd", np.ones((3, 2), F))]
    outs = [vi("v", None), vi("i", None, T.INT64), vi("s", None), vi("c", None)]
    check(model(nodes, [vi("x", [3, 5])], outs, inits, opset=9), {"x": randn(rng, 3, 5)})


@pytest.mark.parametrize("opset", [22, 23])
def test_recent_opsets_load(rng: np.random.Generator, opset: int) -> None:
    nodes = [
        h.make_node("Relu", ["x"], ["r"]),
        h.make_node("Reshape", ["r", "shape"], ["s"]),
        h.make_node("Transpose", ["s"], ["t"], perm=[1, 0]),
        h.make_node("Add", ["t", "b"], ["y"]),
    ]
    inits = [init("shape", np.array([6, -1], np.int64)), init("b", np.ones(6, F))]
    proto = model(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], inits, opset=opset)
    check(proto, {"x": randn(rng, 2, 3, 4)})


def test_old_batchnorm_and_unused_optional_outputs(rng: np.random.Generator) -> None:
    c = np.array([1.0, 2.0], F)
    inits = [init("s", c), init("b", c), init("m", c), init("v", c)]
    nodes = [
        h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3),
        h.make_node("TopK", ["y"], ["top", "unused_indices"], axis=-1, k=2),
    ]
    proto = model(nodes, [vi("x", [1, 2, 3])], [vi("y", None), vi("top", None)], inits, opset=9)
    check(proto, {"x": randn(rng, 1, 2, 3)}, atol=1e-5)
    # Before opset 14, mean/var outputs mean training mode (batch statistics): refused, not wrong.
    nodes = [h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "m2", "v2"])]
    proto = model(nodes, [vi("x", [1, 2, 3])], [vi("y", None)], inits[:4], opset=9)
    with pytest.raises(UnsupportedOperatorError, match="training mode"):
        eqsat.load(proto)


def test_missing_legacy_attributes_are_named() -> None:
    proto = model([h.make_node("Pad", ["x"], ["y"])], [vi("x", [2])], [vi("y", None)], opset=10)
    with pytest.raises(ModelLoadError, match=r"node 'Pad_0' \(Pad\): required attribute 'pads'"):
        eqsat.load(proto)
    proto = model(
        [h.make_node("TopK", ["x"], ["v", "i"])], [vi("x", [3])], [vi("v", None)], opset=9
    )
    with pytest.raises(ModelLoadError, match=r"node 'TopK_0' \(TopK\): required attribute 'k'"):
        eqsat.load(proto)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_ceil", "floor"])
def test_resize_tf_half_pixel_for_nn_opset11(rng: np.random.Generator, nearest_mode: str) -> None:
    """tf2onnx's nearest resizes (opsets 11-12 only): source = (dst + 0.5) / scale."""
    inits = [init("roi", np.zeros(0, F)), init("scales", np.array([1, 1, 2.5, 1.5], F))]
    node = h.make_node(
        "Resize",
        ["x", "roi", "scales"],
        ["y"],
        mode="nearest",
        coordinate_transformation_mode="tf_half_pixel_for_nn",
        nearest_mode=nearest_mode,
    )
    proto = model([node], [vi("x", [1, 2, 4, 7])], [vi("y", None)], inits, opset=11)
    x = randn(rng, 1, 2, 4, 7)
    want = ort_run(proto, {"x": x})[0]
    for target in ("numpy", "cpu"):
        got = eqsat.compile(eqsat.load(proto), target).run({"x": x})["y"]
        np.testing.assert_array_equal(got, want)


def test_image_scaler_opset7(rng: np.random.Generator) -> None:
    """ImageScaler (experimental, opsets 1-9; Tiny YOLOv2's first node) is x * scale + bias[c]."""
    node = h.make_node("ImageScaler", ["x"], ["y"], scale=0.5, bias=[1.0, -2.0, 3.0])
    proto = model([node], [vi("x", [1, 3, 4, 5])], [vi("y", None)], opset=7)
    x = randn(rng, 1, 3, 4, 5)
    graph = eqsat.load(proto)
    assert [n.op for n in graph.nodes] == ["Mul", "Add"]
    want = x * F(0.5) + np.array([1, -2, 3], F).reshape(1, 3, 1, 1)
    for target in ("numpy", "cpu"):
        got = eqsat.compile(eqsat.optimize(graph, target="cpu").graph, target).run({"x": x})
        np.testing.assert_allclose(got["y"], want, rtol=1e-6)
    bad = h.make_node("ImageScaler", ["x"], ["y"], scale=0.5, bias=[1.0, 2.0])
    with pytest.raises(eqsat.ShapeError, match="bias has 2 values for 3 channels"):
        eqsat.load(model([bad], [vi("x", [1, 3, 4, 5])], [vi("y", None)], opset=7))


@pytest.mark.parametrize("constant", [True, False])
def test_batch_norm_per_activation(rng: np.random.Generator, constant: bool) -> None:
    """spatial=0 (opsets 1-8): one statistic and parameter per activation, shape (C, H, W)."""
    names = ["scale", "B", "mean", "var"]
    arrays = [randn(rng, 3, 2, 2), randn(rng, 3, 2, 2), randn(rng, 3, 2, 2)]
    arrays.append(np.abs(randn(rng, 3, 2, 2)) + 0.5)
    node = h.make_node("BatchNormalization", ["x", *names], ["y"], spatial=0, epsilon=1e-3)
    inputs = [vi("x", [2, 3, 2, 2])]
    if constant:
        proto = model(
            [node],
            inputs,
            [vi("y", None)],
            [init(n, a) for n, a in zip(names, arrays, strict=True)],
            opset=7,
        )
        feeds = {"x": randn(rng, 2, 3, 2, 2)}
    else:
        inputs += [vi(n, [3, 2, 2]) for n in names]
        proto = model([node], inputs, [vi("y", None)], opset=7)
        feeds = {"x": randn(rng, 2, 3, 2, 2), **dict(zip(names, arrays, strict=True))}
    x, (scale, bias, mean, var) = feeds["x"], arrays
    want = (x - mean) / np.sqrt(var + 1e-3) * scale + bias
    got = eqsat.compile(eqsat.load(proto)).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, ort_run(proto, feeds)[0], rtol=1e-5, atol=1e-5)


def test_batch_norm_per_activation_shapes_are_checked() -> None:
    node = h.make_node(
        "BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0, name="bn0"
    )
    inits = [init(n, np.ones(3, F)) for n in "sbmv"]  # per channel, but spatial=0 wants (3, 2, 2)
    proto = model([node], [vi("x", [2, 3, 2, 2])], [vi("y", None)], inits, opset=7)
    with pytest.raises(ShapeError, match=r"bn0.*\(3, 2, 2\)"):
        eqsat.load(proto)
