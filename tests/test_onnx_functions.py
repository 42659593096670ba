"""Standard operators eqsat does not implement are expanded into their ONNX function definition."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_testing import check, init, model, ort_run, randn, vi

import eqsat
from eqsat.errors import UnsupportedOperatorError
from eqsat.onnx_functions import expandable

RNG = np.random.default_rng(7)


def _optimized_matches(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> eqsat.Graph:
    """Optimized for the cpu target, compiled and run: the same outputs as onnxruntime."""
    want = ort_run(proto, feeds)
    graph = eqsat.optimize(proto, target="cpu").graph
    got = eqsat.compile(graph, "cpu").run(feeds)
    for (name, value), w in zip(got.items(), want, strict=True):
        np.testing.assert_allclose(value, w, rtol=1e-5, atol=1e-6, err_msg=name)
    return graph


def test_rms_normalization_opset_23():
    x, scale = randn(RNG, 2, 5, 16), randn(RNG, 16)
    proto = model(
        [h.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1, epsilon=1e-5)],
        [vi("x", [2, 5, 16])],
        [vi("y", None)],
        [init("s", scale)],
        opset=23,
    )
    graph = check(proto, {"x": x})
    assert graph.op_counts() == {"RMSNormalization": 1}  # an operator of eqsat's table now
    exe = eqsat.compile(_optimized_matches(proto, {"x": x}), "cpu")
    assert exe.report["reference_ops"] == {}


def test_swish_is_one_fused_kernel():
    """Swish's body casts its alpha like the input (CastLike of a constant, which folds) and
    multiplies by a sigmoid: one fused elementwise kernel once optimized."""
    x = randn(RNG, 3, 40)
    proto = model(
        [h.make_node("Swish", ["x"], ["y"], alpha=1.5)],
        [vi("x", [3, 40])],
        [vi("y", None)],
        opset=24,
    )
    check(proto, {"x": x})
    graph = _optimized_matches(proto, {"x": x})
    assert graph.op_counts() == {"FusedElementwise": 1}


def test_rotary_embedding_with_position_ids():
    batch, seq, heads, dim = 1, 4, 2, 8
    x = randn(RNG, batch, seq, heads * dim)
    cos, sin = randn(RNG, 16, dim // 2), randn(RNG, 16, dim // 2)
    positions = np.array([[3, 0, 7, 1]], np.int64)
    proto = model(
        [h.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], num_heads=heads)],
        [vi("x", [batch, seq, heads * dim]), vi("pos", [batch, seq], T.INT64)],
        [vi("y", None)],
        [init("cos", cos), init("sin", sin)],
        opset=23,
    )
    feeds = {"x": x, "pos": positions}
    check(proto, feeds)
    _optimized_matches(proto, feeds)


def test_center_crop_pad_crops_one_axis_and_pads_another():
    x = randn(RNG, 3, 10, 7)
    proto = model(
        [h.make_node("CenterCropPad", ["x", "shape"], ["y"], axes=[1, 2])],
        [vi("x", [3, 10, 7])],
        [vi("y", None)],
        [init("shape", np.array([6, 9], np.int64))],
        opset=18,
    )
    graph = check(proto, {"x": x})
    got = eqsat.compile(graph).run({"x": x})["y"]
    want = np.zeros((3, 6, 9), np.float32)
    want[:, :, 1:8] = x[:, 2:8, :]
    np.testing.assert_array_equal(got, want)


def test_affine_grid():
    theta = randn(RNG, 2, 2, 3)
    proto = model(
        [h.make_node("AffineGrid", ["t", "size"], ["grid"], align_corners=0)],
        [vi("t", [2, 2, 3])],
        [vi("grid", None)],
        [init("size", np.array([2, 3, 5, 6], np.int64))],
        opset=20,
    )
    check(proto, {"t": theta})
    _optimized_matches(proto, {"t": theta})


def test_expanded_inside_a_run_time_if_branch():
    """A branch of an If on a run-time condition runs in the tail, which loads (and expands) its
    nodes again."""
    x = randn(RNG, 2, 8)
    swish = h.make_graph(
        [h.make_node("Swish", ["x"], ["s"], alpha=0.5)], "then", [], [vi("s", None)]
    )
    neg = h.make_graph([h.make_node("Neg", ["x"], ["n"])], "else", [], [vi("n", None)])
    proto = model(
        [
            h.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            h.make_node("Greater", ["total", "zero"], ["cond"]),
            h.make_node("If", ["cond"], ["y"], then_branch=swish, else_branch=neg),
        ],
        [vi("x", [2, 8])],
        [vi("y", None)],
        [init("zero", np.float32(0))],
        opset=24,
    )
    exe = eqsat.compile(eqsat.optimize(proto, target="cpu").graph, "cpu")
    for sign in (1.0, -1.0):
        feeds = {"x": (np.abs(x) * sign).astype(np.float32)}
        np.testing.assert_allclose(exe.run(feeds)["y"], ort_run(proto, feeds)[0], rtol=1e-5)


def test_what_is_expanded():
    assert expandable("RotaryEmbedding", "", 23)
    assert not expandable("RotaryEmbedding", "", 22)  # not an operator yet at opset 22
    assert not expandable("RMSNormalization", "", 23)  # eqsat implements it
    assert not expandable("LayerNormalization", "", 23)  # eqsat implements it
    assert not expandable("Swish", "com.example", 24)
    assert not expandable("DeformConv", "", 22)  # no function definition


def test_operators_without_a_definition_are_still_refused():
    proto = model(
        [h.make_node("MaxRoiPool", ["x", "rois"], ["y"], pooled_shape=[2, 2], name="roipool")],
        [vi("x", [1, 1, 4, 4]), vi("rois", [1, 5])],
        [vi("y", None)],
        opset=22,
    )
    with pytest.raises(UnsupportedOperatorError, match=r"MaxRoiPool.*roipool"):
        eqsat.load(proto)


def test_definitions_eqsat_cannot_run_are_not_expanded():
    """Bernoulli is defined by a random draw: the error names Bernoulli, not what it is made of."""
    proto = model(
        [h.make_node("Bernoulli", ["p"], ["y"], name="coin")],
        [vi("p", [4])],
        [vi("y", None)],
        opset=22,
    )
    with pytest.raises(UnsupportedOperatorError, match=r"Bernoulli.*coin"):
        eqsat.load(proto)


def test_nested_definitions_expand_in_turn():
    """SoftmaxCrossEntropyLoss's definition uses NegativeLogLikelihoodLoss, defined in turn."""
    scores = randn(RNG, 3, 5)
    proto = model(
        [h.make_node("SoftmaxCrossEntropyLoss", ["x", "labels"], ["loss"], reduction="mean")],
        [vi("x", [3, 5]), vi("labels", [3], T.INT64)],
        [vi("loss", None)],
        opset=13,
    )
    feeds = {"x": scores, "labels": np.array([0, 4, 2], np.int64)}
    graph = check(proto, feeds)
    assert not {"SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"} & set(graph.op_counts())


def _attention_model(q, k, v, mask=None, **attrs):
    names = ["q", "k", "v"] + (["mask"] if mask is not None else [])
    arrays = [q, k, v] + ([mask] if mask is not None else [])
    return model(
        [h.make_node("Attention", names, ["y"], **attrs)],
        [vi(n, list(a.shape)) for n, a in zip(names, arrays, strict=True)],
        [vi("y", None)],
        opset=23,
    ), dict(zip(names, arrays, strict=True))


@pytest.mark.parametrize(
    "case",
    ["causal-4d", "gqa-3d", "additive-mask-scale"],
)
def test_onnx_attention_is_not_eqsat_attention(case):
    """ONNX's Attention (opset 23, what torch's dynamo exporter writes there) shares its name with
    eqsat's fused op: it is expanded into its definition, never read as eqsat's, even when its
    attributes would fit eqsat's (a scale and an additive mask)."""
    if case == "causal-4d":
        q, k, v = randn(RNG, 1, 2, 5, 8), randn(RNG, 1, 2, 5, 8), randn(RNG, 1, 2, 5, 8)
        proto, feeds = _attention_model(q, k, v, is_causal=1)
    elif case == "gqa-3d":  # 4 query heads share 2 key/value heads, hidden sizes 4 x 8, 2 x 8
        q, k, v = randn(RNG, 2, 6, 32), randn(RNG, 2, 6, 16), randn(RNG, 2, 6, 16)
        proto, feeds = _attention_model(q, k, v, q_num_heads=4, kv_num_heads=2)
    else:
        q, k, v = randn(RNG, 1, 2, 4, 8), randn(RNG, 1, 2, 6, 8), randn(RNG, 1, 2, 6, 8)
        proto, feeds = _attention_model(q, k, v, randn(RNG, 1, 1, 4, 6), scale=0.2)
    graph = check(proto, feeds, rtol=1e-5, atol=1e-5)
    assert "Attention" not in graph.op_counts()
    _optimized_matches(proto, feeds)


def test_definitions_typed_without_copying_weights():
    """A definition built for its input types asks ONNX's shape inference for them, on a copy of
    the model without its large weights (here 2 MiB feeding the attention's queries)."""
    from eqsat import onnx_functions

    q_bias = randn(RNG, 1, 2, 512, 512)
    k, v = randn(RNG, 1, 2, 6, 512), randn(RNG, 1, 2, 6, 512)
    proto = model(
        [
            h.make_node("Add", ["x", "qb"], ["q"]),
            h.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=0),
        ],
        [vi("x", [1, 2, 512, 512]), vi("k", [1, 2, 6, 512]), vi("v", [1, 2, 6, 512])],
        [vi("y", None)],
        [init("qb", q_bias)],
        opset=23,
    )
    light = onnx_functions._without_weights(proto)
    assert light.ByteSize() < 1 << 20 and [t.dims for t in light.graph.initializer] == [
        [1, 2, 512, 512]
    ]
    weights = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    np.testing.assert_array_equal(weights, q_bias)  # the model itself keeps its weights
    feeds = {"x": randn(RNG, 1, 2, 512, 512), "k": k, "v": v}
    got = eqsat.compile(eqsat.load(proto)).run(feeds)["y"]
    np.testing.assert_allclose(got, ort_run(proto, feeds)[0], rtol=1e-4, atol=1e-5)


def test_eqsat_attention_exports_in_eqsat_domain():
    """A graph built in Python holds eqsat's Attention with no domain: it is exported in eqsat's
    domain (ONNX's Attention of opset 23 means something else) and loads back as itself."""
    g = eqsat.Graph("att")
    q, k, v = (g.input(n, (1, 2, 4, 8)) for n in "qkv")
    g.output(g.op("Attention", q, k, v, scale=0.3), "y")
    proto = eqsat.to_onnx(g)
    assert ("Attention", "eqsat") in [(n.op_type, n.domain) for n in proto.graph.node]
    assert ("Attention", "") not in [(n.op_type, n.domain) for n in proto.graph.node]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 21
    feeds = {n: randn(RNG, 1, 2, 4, 8) for n in "qkv"}
    want = eqsat.compile(g).run(feeds)["y"]
    np.testing.assert_allclose(eqsat.compile(eqsat.load(proto)).run(feeds)["y"], want, rtol=1e-6)
