"""onnxruntime's quantized contrib operators (``com.microsoft``, its QOperator format) load as
DequantizeLinear -> the float op -> QuantizeLinear (:mod:`eqsat.onnx_contrib`) and agree with
onnxruntime to within one quantization step, on the numpy and cpu targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import eqsat
from eqsat.onnx_contrib import EXPANSIONS, expand_contrib_ops
from tests.onnx_testing import init, model, ort_run, vi

RNG = np.random.default_rng(21)
U8 = np.uint8


def _params(prefix: str, scale: float, zero: int, dtype: type = U8) -> list[onnx.TensorProto]:
    return [
        init(f"{prefix}_s", np.array(scale, np.float32)),
        init(f"{prefix}_z", np.array(zero, dtype)),
    ]


def _contrib(op: str, inputs: list[str], **attrs: Any) -> onnx.NodeProto:
    return h.make_node(op, inputs, ["y"], domain="com.microsoft", name=f"{op}_0", **attrs)


def _check(nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray],
           inits: list[onnx.TensorProto]) -> None:  # fmt: skip
    elem = {np.dtype(U8): T.UINT8, np.dtype(np.int8): T.INT8, np.dtype(np.float32): T.FLOAT}
    proto = model(
        nodes,
        [vi(k, list(v.shape), elem[v.dtype]) for k, v in feeds.items()],
        [onnx.ValueInfoProto(name="y")],
        inits,
        opset=17,
    )
    proto.opset_import.append(h.make_opsetid("com.microsoft", 1))
    want = ort_run(proto, feeds)[0]
    graph = eqsat.load(proto)
    assert proto.graph.node[0].domain == "com.microsoft"  # the caller's model is not changed
    for target in ("numpy", "cpu"):
        got = eqsat.compile(graph, target=target).run(feeds)["y"]
        assert got.dtype == want.dtype, target
        if got.dtype == np.float32:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=target)
        else:  # at most one step apart, and mostly equal
            diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
            assert diff.max() <= 1 and diff.mean() < 0.05, (target, diff.max(), diff.mean())


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape).astype(U8)


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_binary(op: str) -> None:
    inits = _params("a", 0.02, 120) + _params("b", 0.03, 130) + _params("c", 0.05, 125)
    node = _contrib(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"])
    _check([node], {"a": _u8(2, 3, 4, 5), "b": _u8(1, 3, 1, 5)}, inits)  # broadcast


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("QLinearSigmoid", {}),
        ("QLinearLeakyRelu", {"alpha": 0.1}),
        ("QLinearGlobalAveragePool", {}),
        ("QLinearAveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ],
)
def test_unary(op: str, attrs: dict[str, Any]) -> None:
    inits = _params("x", 0.04, 128) + _params("y", 0.01, 3)
    node = _contrib(op, ["x", "x_s", "x_z", "y_s", "y_z"], **attrs)
    _check([node], {"x": _u8(1, 4, 7, 6)}, inits)


def test_concat() -> None:
    inits = _params("y", 0.05, 100) + _params("a", 0.02, 120) + _params("b", 0.07, 90)
    node = _contrib("QLinearConcat", ["y_s", "y_z", "a", "a_s", "a_z", "b", "b_s", "b_z"], axis=1)
    _check([node], {"a": _u8(1, 2, 3), "b": _u8(1, 4, 3)}, inits)


@pytest.mark.parametrize("quantized_output", [True, False])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_qgemm(quantized_output: bool, trans_b: int) -> None:
    k, n = 16, 6
    w = RNG.integers(-64, 64, (n, k) if trans_b else (k, n)).astype(np.int8)  # 7-bit: exact
    inits = [
        *_params("a", 0.03, 110),
        init("w", w),
        init("w_s", RNG.uniform(0.01, 0.03, n).astype(np.float32)),  # per column
        init("w_z", np.zeros(n, np.int8)),
        init("bias", RNG.integers(-500, 500, n).astype(np.int32)),
    ]
    inputs = ["a", "a_s", "a_z", "w", "w_s", "w_z", "bias"]
    if quantized_output:
        inits += _params("y", 0.2, 128)
        inputs += ["y_s", "y_z"]
    node = _contrib("QGemm", inputs, transB=trans_b, alpha=1.0)
    _check([node], {"a": _u8(3, k)}, inits)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_qgemm_with_a_quantized_output_is_onnxruntimes_to_the_bit(trans_b: int) -> None:
    """A classifier's QGemm (512 inputs, 1000 outputs, per-column weight scales): the exact
    integer sum plus the bias, times (a_scale * w_scale) / y_scale, rounded to even; a float
    Gemm of the dequantized operands left ResNet-18's logits a step off on 123 of 1000."""
    k, n = 512, 1000
    w = RNG.integers(-127, 128, (n, k) if trans_b else (k, n)).astype(np.int8)
    inits = [
        *_params("a", 0.037, 3),
        init("w", w),
        init("w_s", RNG.uniform(0.0005, 0.002, n).astype(np.float32)),
        init("w_z", np.zeros(n, np.int8)),
        init("bias", RNG.integers(-20000, 20000, n).astype(np.int32)),
        *_params("y", 0.045, 120),
    ]
    inputs = ["a", "a_s", "a_z", "w", "w_s", "w_z", "bias", "y_s", "y_z"]
    node = _contrib("QGemm", inputs, transB=trans_b, alpha=1.0)
    feeds = {"a": _u8(2, k)}
    proto = model(
        [node], [vi("a", [2, k], T.UINT8)], [onnx.ValueInfoProto(name="y")], inits, opset=17
    )
    proto.opset_import.append(h.make_opsetid("com.microsoft", 1))
    want = ort_run(proto, feeds)[0]
    graph = eqsat.load(proto)
    for target in ("numpy", "cpu"):
        np.testing.assert_array_equal(eqsat.compile(graph, target=target).run(feeds)["y"], want)


def test_models_without_contrib_ops_are_returned_as_they_are() -> None:
    proto = model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])])
    assert expand_contrib_ops(proto) is proto
    assert set(EXPANSIONS) >= {"QLinearAdd", "QLinearConcat", "QGemm"}


def test_channels_last_is_reported() -> None:
    inits = _params("x", 0.04, 128) + _params("y", 0.01, 3)
    node = _contrib("QLinearGlobalAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], channels_last=1)
    proto = model([node], [vi("x", [1, 4, 4, 3], T.UINT8)], [onnx.ValueInfoProto(name="y")], inits)
    proto.opset_import.append(h.make_opsetid("com.microsoft", 1))
    with pytest.raises(eqsat.ModelLoadError, match="channels_last"):
        eqsat.load(proto)
