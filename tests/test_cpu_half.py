"""float16 models on the cpu target: computed in float32 between the model's own roundings
(:mod:`eqsat.lowering.cpu_half`), checked against onnxruntime and exact rounding rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from eqsat.lowering import cpu_half
from onnx import TensorProto, helper, numpy_helper

import eqsat

F16 = TensorProto.FLOAT16


def _model(nodes: list[Any], inputs: list[Any], outputs: dict[str, int], inits: list[Any]) -> Any:
    infos = [helper.make_tensor_value_info(name, kind, None) for name, kind in outputs.items()]
    graph = helper.make_graph(nodes, "half", inputs, infos, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _onnxruntime(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _encoder_block(rng: np.random.Generator) -> Any:
    def init(name: str, *shape: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float16), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Sigmoid", ["hb"], ["s"]),
        helper.make_node("Mul", ["hb", "s"], ["silu"]),
        helper.make_node("MatMul", ["silu", "w2"], ["o"]),
        helper.make_node("Add", ["o", "x"], ["r"]),
        helper.make_node("LayerNormalization", ["r", "g", "b"], ["n"], axis=-1),
        helper.make_node("Softmax", ["n"], ["y"], axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("x", F16, (2, 16, 32))]
    inits = [init("w1", 32, 64), init("b1", 64), init("w2", 64, 32), init("g", 32), init("b", 32)]
    return _model(nodes, inputs, {"y": F16, "n": F16}, inits)


@pytest.mark.parametrize("optimize", [False, True], ids=["loaded", "optimized"])
def test_half_model_runs_in_float32_kernels(rng: np.random.Generator, optimize: bool) -> None:
    model = _encoder_block(rng)
    feeds = {"x": rng.standard_normal((2, 16, 32)).astype(np.float16)}
    graph = eqsat.load(model)
    if optimize:
        graph = eqsat.optimize(graph, ["algebraic", "fusion"], target="cpu").graph
        assert any(n.op.startswith("Fused") for n in graph.nodes)
    exe = eqsat.compile(graph, target="cpu")
    got = exe.run(feeds)
    assert exe.report["reference_ops"] == {}  # the casts at the edges are copy steps too
    for name, want in zip(["y", "n"], _onnxruntime(model, feeds), strict=True):
        assert got[name].dtype == np.float16 and got[name].shape == want.shape
        # Within one float16 rounding of onnxruntime (which also computes these in float32).
        np.testing.assert_allclose(got[name], want, rtol=2e-3, atol=2e-3)


def test_the_models_roundings_are_kept(rng: np.random.Generator) -> None:
    """A Cast to float16, a CastLike of a float16 tensor and a float16 ConstantOfShape still
    round to float16 in the float32 graph."""
    like = numpy_helper.from_array(np.zeros(1, np.float16), "like")
    tenth = np.array([0.1], np.float16)
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=F16),
        helper.make_node("Cast", ["h"], ["a"], to=TensorProto.FLOAT),
        helper.make_node("CastLike", ["x", "like"], ["c"]),
        helper.make_node("Mul", ["c", "c"], ["sq"]),  # float16 arithmetic in the model
        helper.make_node("ConstantOfShape", ["shape"], ["k"], value=numpy_helper.from_array(tenth)),
        helper.make_node("Add", ["c", "k"], ["ck"]),
    ]
    shape = numpy_helper.from_array(np.array([64], np.int64), "shape")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, (64,))]
    outputs = {"a": TensorProto.FLOAT, "c": F16, "sq": F16, "ck": F16}
    model = _model(nodes, inputs, outputs, [like, shape])
    x = (rng.standard_normal(64) * 100).astype(np.float32)
    got = eqsat.compile(eqsat.load(model), target="cpu").run({"x": x})
    half = x.astype(np.float16)
    np.testing.assert_array_equal(got["a"], half.astype(np.float32))
    np.testing.assert_array_equal(got["c"], half)
    # One rounding of the float32 product (what onnxruntime computes for float16 Mul too).
    np.testing.assert_array_equal(got["sq"], (half.astype(np.float32) ** 2).astype(np.float16))
    want_ck = (half.astype(np.float32) + np.float32(np.float16(0.1))).astype(np.float16)
    np.testing.assert_array_equal(got["ck"], want_ck)
    # onnxruntime's float16 Mul/Add are not always correctly rounded (158.125 ** 2 gave 24992,
    # not 25008): within one float16 ulp of it.
    for name, want in zip(["a", "c", "sq", "ck"], _onnxruntime(model, {"x": x}), strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-3)


def test_graphs_without_float16_are_left_alone(rng: np.random.Generator) -> None:
    g = eqsat.ir.Graph("f32")
    x = g.input("x", (4,))
    g.output(g.op("Relu", x), "y")
    assert cpu_half.widen(g) is g
    model = _encoder_block(rng)
    widened = cpu_half.widen(eqsat.load(model))
    assert not any(v.dtype == np.float16 for n in widened.nodes if n.op != "Cast"
                   for v in n.outputs if v is not None)  # fmt: skip
    assert [v.dtype for v in widened.inputs] == [np.float16]
    assert [v.dtype for v in widened.outputs] == [np.float16, np.float16]
