"""Models of opsets 1-6 (``eqsat.onnx_legacy``): each legacy node form against onnxruntime on a
modern twin, the same computation written at opset 13 (onnxruntime runs nothing older than
opset 7); a Caffe2-style CNN of opset 3 through the cpu target; and the errors legacy forms can
raise, naming the node."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_testing import F, init, model, ort_run, randn, vi

import eqsat
from eqsat.errors import ModelLoadError, ShapeError, UnsupportedOperatorError


def old_model(nodes: list, inputs: list, outputs: list, inits: list, opset: int) -> onnx.ModelProto:
    """An opset-``opset`` model as files of that time were: IR version 3, with every initializer
    listed among the graph's inputs too."""
    listed = {i.name for i in inputs}
    inputs = inputs + [vi(t.name, list(t.dims), t.data_type) for t in inits if t.name not in listed]
    graph = h.make_graph(nodes, "legacy", inputs, outputs, initializer=inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=3)


def same_as_twin(
    old: onnx.ModelProto, twin: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str = "numpy"
) -> None:
    want = ort_run(twin, feeds)
    graph = eqsat.load(old)
    if target != "numpy":
        graph = eqsat.optimize(graph, target=target).graph
    got = eqsat.compile(graph, target=target).run(feeds)
    for name, w in zip([o.name for o in old.graph.output], want, strict=True):
        assert got[name].dtype == w.dtype, name
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("opset", [1, 6])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_broadcast_from_axis(rng: np.random.Generator, opset: int, op: str) -> None:
    b, c = np.abs(randn(rng, 3)) + 1, randn(rng, 4, 5)
    nodes = [
        h.make_node(op, ["x", "b"], ["p"], broadcast=1, axis=1),  # b[C] against x[N, C, H, W]
        h.make_node(op, ["x", "z"], ["q"], broadcast=1, axis=2),  # a run-time operand
        h.make_node(op, ["x", "c"], ["r"], broadcast=1),  # no axis: shapes match from the end
        h.make_node(op, ["x", "x"], ["s"]),  # no broadcast: equal shapes
    ]
    outs = [vi(n, None) for n in "pqrs"]
    old = old_model(nodes, [vi("x", [2, 3, 4, 5]), vi("z", [4])], outs,
                    [init("b", b), init("c", c)], opset)  # fmt: skip
    twin_nodes = [
        h.make_node(op, ["x", "b3"], ["p"]),
        h.make_node("Unsqueeze", ["z", "one"], ["z1"]),
        h.make_node(op, ["x", "z1"], ["q"]),
        h.make_node(op, ["x", "c"], ["r"]),
        h.make_node(op, ["x", "x"], ["s"]),
    ]
    twin_inits = [init("b3", b.reshape(3, 1, 1)), init("c", c), init("one", np.array([1]))]
    twin = model(twin_nodes, [vi("x", [2, 3, 4, 5]), vi("z", [4])], outs, twin_inits, opset=13)
    feeds = {"x": randn(rng, 2, 3, 4, 5), "z": np.abs(randn(rng, 4)) + 1}
    same_as_twin(old, twin, feeds)


def test_prelu_slope_per_channel(rng: np.random.Generator) -> None:
    slope = randn(rng, 3)
    old = old_model([h.make_node("PRelu", ["x", "s"], ["y"])], [vi("x", [2, 3, 4, 5])],
                    [vi("y", None)], [init("s", slope)], 6)  # fmt: skip
    twin = model([h.make_node("PRelu", ["x", "s"], ["y"])], [vi("x", [2, 3, 4, 5])],
                 [vi("y", None)], [init("s", slope.reshape(3, 1, 1))], opset=13)  # fmt: skip
    same_as_twin(old, twin, {"x": randn(rng, 2, 3, 4, 5)})


def test_attribute_forms(rng: np.random.Generator) -> None:
    """Reshape-1's shape, Concat-1's default axis, Cast-1's type name, Pad-1's paddings and
    Tile-1's count along an axis, all in one opset-1 model."""
    nodes = [
        h.make_node("Reshape", ["x"], ["r"], shape=[3, 8]),
        h.make_node("Concat", ["x", "x"], ["c"]),  # axis 1
        h.make_node("Cast", ["i"], ["f"], to="FLOAT"),
        h.make_node("Pad", ["x"], ["p"], paddings=[0, 1, 0, 2], value=1.5),
        h.make_node("Tile", ["x", "tiles", "axis"], ["t"]),
    ]
    outs = [vi(n, None) for n in "rcfpt"]
    inits = [init("tiles", np.array([3])), init("axis", np.array([1]))]
    ins = [vi("x", [2, 12]), vi("i", [4], T.INT32)]
    old = old_model(nodes, ins, outs, inits, 1)
    twin_nodes = [
        h.make_node("Reshape", ["x", "shape"], ["r"]),
        h.make_node("Concat", ["x", "x"], ["c"], axis=1),
        h.make_node("Cast", ["i"], ["f"], to=T.FLOAT),
        h.make_node("Pad", ["x", "pads", "value"], ["p"]),
        h.make_node("Tile", ["x", "repeats"], ["t"]),
    ]
    twin_inits = [
        init("shape", np.array([3, 8])), init("pads", np.array([0, 1, 0, 2])),
        init("value", np.array(1.5, F)), init("repeats", np.array([1, 3])),
    ]  # fmt: skip
    twin = model(twin_nodes, ins, outs, twin_inits, opset=13)
    feeds = {"x": randn(rng, 2, 12), "i": np.array([1, -2, 3, 70000], np.int32)}
    same_as_twin(old, twin, feeds)


@pytest.mark.parametrize(("mode", "twin_mode"), [("NN", "nearest"), ("BILINEAR", "linear")])
def test_upsample_1(rng: np.random.Generator, mode: str, twin_mode: str) -> None:
    node = h.make_node("Upsample", ["x"], ["y"], height_scale=2.0, width_scale=3.0, mode=mode)
    old = old_model([node], [vi("x", [1, 2, 3, 4])], [vi("y", None)], [], 6)
    twin_node = h.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0], mode=twin_mode)
    twin = model([twin_node], [vi("x", [1, 2, 3, 4])], [vi("y", None)], opset=7)
    same_as_twin(old, twin, {"x": randn(rng, 1, 2, 3, 4)})


def _caffe2_cnn(rng: np.random.Generator, legacy: bool) -> onnx.ModelProto:
    """Conv, bias by a broadcast Add, Relu, BatchNormalization, MaxPool, Dropout, Gemm and
    Softmax: the Model Zoo's opset-3 CNNs in small, or (``legacy=False``) its opset-13 twin."""
    w = randn(rng, 8, 3, 3, 3) * 0.3
    bias, fc, fc_b = randn(rng, 8), randn(rng, 10, 8 * 4 * 4) * 0.1, randn(rng, 10)
    stats = [np.abs(randn(rng, 8)) + 0.5, randn(rng, 8), randn(rng, 8), np.abs(randn(rng, 8)) + 1]

    def only_legacy(**attrs: Any) -> dict[str, Any]:
        return attrs if legacy else {}

    bn_inputs = ["r", "scale", "shift", "mean", "var"]
    bn_attrs = only_legacy(is_test=1, consumed_inputs=[0, 0, 0, 1, 1])
    reshape = (
        h.make_node("Reshape", ["d"], ["f"], shape=[1, 128])
        if legacy
        else h.make_node("Reshape", ["d", "shape"], ["f"])
    )
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("Add", ["c", "bias"], ["cb"], **only_legacy(broadcast=1, axis=1)),
        h.make_node("Relu", ["cb"], ["r"], **only_legacy(consumed_inputs=[0])),
        h.make_node("BatchNormalization", bn_inputs, ["bn"], epsilon=1e-5, **bn_attrs),
        h.make_node("MaxPool", ["bn"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Dropout", ["p"], ["d"], **only_legacy(is_test=1, ratio=0.5)),
        reshape,
        h.make_node("Gemm", ["f", "fc", "fc_b"], ["g"], transB=1, **only_legacy(broadcast=1)),
        h.make_node("Softmax", ["g"], ["y"]),
    ]
    inits = [init("w", w), init("bias", bias.reshape(8) if legacy else bias.reshape(8, 1, 1))]
    inits += [init(n, a) for n, a in zip(["scale", "shift", "mean", "var"], stats, strict=True)]
    inits += [init("fc", fc), init("fc_b", fc_b)]
    if legacy:
        return old_model(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", None)], inits, 3)
    inits.append(init("shape", np.array([1, 128])))
    return model(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", None)], inits, opset=13)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_caffe2_style_cnn_of_opset_3(rng: np.random.Generator, target: str) -> None:
    old = _caffe2_cnn(np.random.default_rng(7), legacy=True)
    twin = _caffe2_cnn(np.random.default_rng(7), legacy=False)
    same_as_twin(old, twin, {"x": randn(rng, 1, 3, 8, 8)}, target)


def test_legacy_errors_name_the_node() -> None:
    add = h.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1, name="bias_add")
    proto = old_model(
        [add], [vi("x", [2, 3, 4])], [vi("y", None)], [init("b", np.ones((3, 5), F))], 6
    )
    with pytest.raises(ShapeError, match=r"bias_add.*\(3, 5\).*axis 1"):
        eqsat.load(proto)
    cast = h.make_node("Cast", ["x"], ["y"], to="QUATERNION", name="odd_cast")
    with pytest.raises(ModelLoadError, match=r"odd_cast.*QUATERNION"):
        eqsat.load(old_model([cast], [vi("x", [2])], [vi("y", None)], [], 5))
    tile = h.make_node("Tile", ["x", "n", "axis"], ["y"], name="tiled")
    ins = [vi("x", [2]), vi("n", [1], T.INT64)]
    with pytest.raises(UnsupportedOperatorError, match=r"tiled.*run time"):
        eqsat.load(old_model([tile], ins, [vi("y", None)], [init("axis", np.array([0]))], 5))
