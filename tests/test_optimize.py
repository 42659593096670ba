"""optimize(): rules fire, results match the input numerically, never worse, on the zoo too."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import eqsat
from eqsat.egraph import Limits
from eqsat.ir import Graph
from eqsat.optimize import compare, optimize


def _small() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("small")
    x = g.input("x", (4, 8))
    w = g.constant(rng.standard_normal((8, 5)).astype(np.float32), "w")
    b = g.constant(rng.standard_normal(5).astype(np.float32), "b")
    y = g.op("Add", g.op("MatMul", x, w), b)
    y = g.op("Mul", y, g.constant(np.float32(1.0), "one"))
    y = g.op("Identity", g.op("Add", y, g.constant(np.float32(0.0), "zero")))
    y = g.op("Transpose", g.op("Transpose", y, perm=[1, 0]), perm=[1, 0])
    y = g.op("Div", y, g.constant(np.float32(4.0), "four"))
    g.output(y, "y")
    return g


def test_rules_fire_and_result_matches() -> None:
    g = _small()
    result = optimize(g, target="numpy", verify=True)
    report = result.report
    assert report.verified is True and not report.kept_input
    for rule in ("mul-one", "add-zero", "identity", "transpose-transpose-2", "matmul-add-as-gemm"):
        assert report.matches.get(f"algebraic/{rule}", 0) > 0, rule
    # Fusion is a default family: the Gemm and the scaling are one kernel.
    assert result.graph.op_counts() == {"FusedGemm": 1}
    assert report.matches.get("fusion-epilogue/Gemm-epilogue", 0) > 0
    # x / 4 and x * 0.25 cost the same under the first cost model; either may be kept.
    plain = optimize(g, rules="algebraic", target="numpy", verify=True).graph.op_counts()
    assert plain in ({"Gemm": 1, "Mul": 1}, {"Gemm": 1, "Div": 1})
    assert report.cost_after < report.cost_before
    assert report.eclasses > 0 and report.enodes >= report.eclasses and report.iterations > 0
    assert {"encode", "saturate", "extract", "decode"} <= set(report.times)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    expected = eqsat.compile(g).run({"x": x})["y"]
    np.testing.assert_allclose(result.run({"x": x})["y"], expected, rtol=1e-5, atol=1e-6)
    assert "rule matches" in str(report)


@pytest.mark.parametrize("extractor", ["tree", "greedy-dag"])
def test_never_worse_and_extractors(extractor: str) -> None:
    g = _small()
    result = optimize(g, target="numpy", extractor=extractor, limits={"iterations": 3})
    assert result.report.cost_after <= result.report.cost_before
    assert compare(g, result.graph)[0]


def test_no_rules_keeps_the_graph() -> None:
    g = _small()
    result = optimize(g, rules=[], target="numpy")
    assert result.graph.op_counts() == g.op_counts()
    assert result.report.cost_after == result.report.cost_before


def test_an_input_missing_from_the_e_graph_keeps_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the input graph cannot be found in the saturated e-graph (an encoding fault, such
    as egglog conflating two let names did to ConvNeXt), optimize warns and returns the input
    graph, which still runs, with the reason in its report."""
    from eqsat import decode
    from eqsat.errors import EqsatError

    def lost(self: Any, graph: Graph) -> None:
        raise EqsatError("node 'n' (Mul) not found in the e-graph")

    monkeypatch.setattr(decode.View, "locate", lost)
    g = _small()
    with pytest.warns(UserWarning, match="not found in the e-graph"):
        result = optimize(g, target="numpy")
    assert result.graph is g
    assert "reading the saturated e-graph failed" in result.report.kept_input
    x = np.ones((4, 8), np.float32)
    np.testing.assert_array_equal(result.run({"x": x})["y"], eqsat.compile(g).run({"x": x})["y"])


def test_matmul_chain_picks_cheaper_order() -> None:
    g = Graph("chain")
    a = g.input("a", (64, 2))
    b = g.constant(np.ones((2, 64), np.float32), "b")
    c = g.input("c", (64, 2))
    g.output(g.op("MatMul", g.op("MatMul", a, b), c), "y")
    result = optimize(g, target="numpy", limits=Limits(iterations=4), verify=True)
    assert result.report.matches.get("algebraic/matmul-assoc-right", 0) > 0
    (first,) = [n for n in result.graph.nodes if n.inputs[0].name == "b"]  # b @ c is done first
    assert first.op == "MatMul" and result.report.cost_after < result.report.cost_before


def _onnx_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
        helper.make_node("MatMul", ["t", "w"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [2, 4], np.arange(8.0)),
            helper.make_tensor("bias", TensorProto.FLOAT, [4], [1, 2, 3, 4]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_model_in_and_out(tmp_path: Any) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _onnx_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for source in (model, str(path)):
        result = optimize(source, target="numpy", input_shapes={"x": (2, 3)}, verify=True)
        assert result.graph.op_counts() == {"Gemm": 1}
        x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(result.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
        exported = result.to_onnx()
        onnx.checker.check_model(exported)
        got = ort.InferenceSession(exported.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# PP-OCR takes 4-5 s each to optimize on 2 cores, and the other real models are optimized by
# tests/test_zoo.py too: they run with -m slow.
ZOO_DEFAULT = {
    "resnet_block", "resnet_block_proj", "mobilenetv2_block", "mlp", "transformer_encoder",
    "transformer_dynamic", "nudenet_yolov8n",
    "silero_vad", "silero_vad_op15", "silero_vad_half", "silero_vad_ifless", "silero_vad_sequence", "silero_vad_openvino",
}  # fmt: skip


def _zoo_params() -> list[Any]:
    from bench import models as zoo

    return [
        pytest.param(name, marks=[] if name in ZOO_DEFAULT else [pytest.mark.slow], id=name)
        for name in zoo.ZOO
    ]


@pytest.mark.parametrize("name", _zoo_params())
def test_zoo_model_matches_onnxruntime(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    from bench import models as zoo

    entry = zoo.ZOO[name]
    try:
        model = entry.model()
    except zoo.ZooDownloadError as exc:
        pytest.skip(f"download failed: {exc}")
    result = optimize(model, target="numpy", **entry.load_args())
    report = result.report
    assert not report.kept_input, report.kept_input
    assert report.cost_after <= report.cost_before
    assert sum(report.matches.values()) > 0
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    want = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, entry.feeds(0)), strict=True)
    )
    got = result.run(entry.input_feeds(0))  # without the inputs bound as constants
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-3, atol=1e-4, err_msg=key)
