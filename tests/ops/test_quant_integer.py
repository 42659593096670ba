"""Dynamic quantization ops (DynamicQuantizeLinear, MatMulInteger, ConvInteger) against
onnxruntime, one node at a time and in a model quantized by onnxruntime's ``quantize_dynamic``
(what a downloaded ``model_quantized.onnx`` usually is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import eqsat
from eqsat.errors import ShapeError
from tests.onnx_testing import F, check_one_node, ort

RNG = np.random.default_rng(11)


def one_node(op: str, inputs: dict[str, np.ndarray | None], attrs: dict[str, Any] | None = None,
             **kwargs: Any) -> eqsat.Graph:  # fmt: skip
    """``op`` on ``inputs`` (``None`` = omitted) must equal onnxruntime's result exactly."""
    return check_one_node(op, inputs, attrs, rtol=0, atol=0, **kwargs)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape).astype(np.uint8)


def _i8(*shape: int) -> np.ndarray:
    return RNG.integers(-128, 128, shape).astype(np.int8)


@pytest.mark.parametrize(
    "x",
    [
        RNG.normal(0.3, 2.0, (4, 7)),
        np.abs(RNG.normal(0.0, 5.0, (3, 5))),  # all positive: the range still starts at 0
        -np.abs(RNG.normal(0.0, 0.01, (2, 9))),  # all negative, tiny
        np.zeros((2, 3)),  # no range at all: scale 1
        np.array([[-2.5, -0.5, 0.5, 1.5, 2.5, 127.5]]),  # halves round to even
    ],
    ids=["mixed", "positive", "negative", "zeros", "halves"],
)
def test_dynamic_quantize_linear(x: np.ndarray) -> None:
    one_node("DynamicQuantizeLinear", {"x": x.astype(F)}, outputs=3)


def test_matmul_integer() -> None:
    a, b = _u8(2, 3, 4), _u8(4, 5)
    one_node("MatMulInteger", {"a": a, "b": b})
    zp_a, zp_b = np.array(128, np.uint8), np.array(7, np.uint8)
    one_node("MatMulInteger", {"a": a, "b": b, "za": zp_a, "zb": zp_b}, consts=("za", "zb"))
    # uint8 activations against int8 weights with one zero point per column, as quantize_dynamic
    # writes per-channel weights. onnxruntime's AVX2 kernel adds u8*s8 products in pairs in int16
    # and saturates (its documented reason for reduce_range): with 7-bit weights it is exact ...
    w, zp_w = (_i8(4, 5) // 2), np.array([0, 1, -2, 3, 0], np.int8)
    one_node("MatMulInteger", {"a": a, "b": w, "za": zp_a, "zb": zp_w}, consts=("b", "za", "zb"))
    one_node("MatMulInteger", {"a": _i8(6, 4), "b": _i8(4, 3)})
    # ... and with full-range weights eqsat keeps the exact integer result the operator defines.
    g = eqsat.Graph()
    full = _i8(4, 5)
    g.output(g.op("MatMulInteger", g.input("a", a.shape, np.uint8), g.constant(full)), "y")
    got = eqsat.compile(g, target="numpy").run({"a": a})["y"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, a.astype(np.int64) @ full.astype(np.int64))


def test_conv_integer() -> None:
    x, w = _u8(1, 4, 7, 6), _u8(6, 2, 3, 3)
    attrs = {"pads": [1, 0, 1, 2], "strides": [2, 1], "group": 2}
    one_node("ConvInteger", {"x": x, "w": w}, attrs, consts=("w",))
    zp_x, zp_w = np.array(100, np.uint8), np.array(3, np.uint8)
    # The padding stands for x's zero point: it contributes nothing.
    one_node(
        "ConvInteger",
        {"x": x, "w": w, "zx": zp_x, "zw": zp_w},
        attrs,
        consts=("w", "zx", "zw"),
    )
    depthwise = {"pads": [1, 1, 1, 1], "group": 4}
    one_node("ConvInteger", {"x": x, "w": _u8(4, 1, 3, 3), "zx": zp_x}, depthwise, consts=("zx",))


def test_integer_ops_reject_bad_operands() -> None:
    g = eqsat.Graph()
    a, f = g.input("a", (2, 4), np.uint8), g.input("f", (2, 4))
    b = g.constant(_u8(4, 3))
    with pytest.raises(ShapeError, match="A must be one of"):
        g.op("MatMulInteger", f, b)
    with pytest.raises(ShapeError, match="b_zero_point must be a scalar or of shape"):
        g.op("MatMulInteger", a, b, None, g.constant(np.zeros(4, np.uint8)))
    with pytest.raises(ShapeError, match="a_zero_point has dtype int8"):
        g.op("MatMulInteger", a, b, g.constant(np.zeros((), np.int8)))
    with pytest.raises(ShapeError, match="x must be one of"):
        g.op("DynamicQuantizeLinear", a, outputs=3)


def _quantized_mlp(tmp_path: Path) -> tuple[Path, Any, np.ndarray]:
    """The zoo MLP through onnxruntime's own quantizer, its entry and onnxruntime's output."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    from bench import models as zoo

    entry = zoo.get("mlp")
    quantized = tmp_path / "mlp_quantized.onnx"
    # uint8 weights: onnxruntime's u8*u8 kernel is exact (see test_matmul_integer).
    weights = quantization.QuantType.QUInt8
    quantization.quantize_dynamic(entry.path(), quantized, weight_type=weights)
    ops = {n.op_type for n in onnx.load(quantized).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
    return quantized, entry, session.run(None, entry.feeds(0))[0]


def test_quantize_dynamic_model_matches_onnxruntime(tmp_path: Path) -> None:
    # Every DynamicQuantizeLinear reads a value both runtimes compute exactly alike, so both
    # targets agree with onnxruntime to float rounding.
    quantized, entry, want = _quantized_mlp(tmp_path)
    graph = eqsat.load(quantized, **entry.load_args())
    for target in ("numpy", "cpu"):
        got = next(iter(eqsat.compile(graph, target=target).run(entry.feeds(0)).values()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=target)


@pytest.mark.slow
def test_optimized_quantized_model_matches_onnxruntime(tmp_path: Path) -> None:
    quantized, entry, want = _quantized_mlp(tmp_path)
    result = eqsat.optimize(quantized, ["algebraic", "fusion"], target="cpu", **entry.load_args())
    got = next(iter(eqsat.compile(result.graph, target="cpu").run(entry.feeds(0)).values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
