"""onnxruntime's quantized contrib operators (domain ``com.microsoft``), expanded at load.

onnxruntime's quantizer, in its QOperator format, writes the standard QLinearConv and
QLinearMatMul and, for the other ops, operators of its own domain: QLinearAdd, QLinearMul,
QLinearSigmoid, QLinearLeakyRelu, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat and
QGemm (the int8 models of the ONNX Model Zoo are such files). Each is defined in onnxruntime's
operator documentation as its float operator between dequantized inputs and a quantized output,
and that is what it becomes here: DequantizeLinear of each input, the standard operator,
QuantizeLinear of the result. The pairs then fuse like a QDQ model's (``fusion-composite``).

onnxruntime's own kernels reach the same values by other float steps (QLinearAdd scales each
input by its ratio to the output's scale, then adds), so an output may differ from its by one
quantization step where a value falls near the middle of two. QGemm with a quantized output is
the exception: it is expanded into onnxruntime's own arithmetic (the exact integer sum of
MatMulInteger plus the int32 bias, times ``(a_scale * b_scale) / y_scale`` in float32, rounded
to even), which matches it to the bit; through a float Gemm the long sums of a classifier
rounded differently often enough to move one logit in eight.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from eqsat.errors import ModelLoadError

CONTRIB_DOMAIN = "com.microsoft"

Nodes = list[onnx.NodeProto]


class _Builder:
    """New standard nodes for one contrib node, their values named apart from the model's."""

    def __init__(self, node: onnx.NodeProto, index: int):
        self.node = node
        self.prefix = f"{node.name or node.op_type}__expanded{index}"
        self.nodes: Nodes = []
        self.count = 0

    def value(self) -> str:
        self.count += 1
        return f"{self.prefix}_{self.count}"

    def add(self, op: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        out = output or self.value()
        name = f"{self.prefix}_{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def dequantize(self, x: str, scale: str, zero: str, **attrs: object) -> str:
        return self.add("DequantizeLinear", [x, scale, zero] if zero else [x, scale], **attrs)

    def quantize(self, x: str, scale: str, zero: str) -> str:
        out = self.node.output[0]
        return self.add("QuantizeLinear", [x, scale, zero] if zero else [x, scale], out)

    def attrs(self) -> dict[str, object]:
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute}


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if i < len(node.input) else ""


def _binary(op: str) -> Callable[[_Builder], None]:
    def expand(b: _Builder) -> None:
        n = b.node
        a = b.dequantize(n.input[0], n.input[1], _input(n, 2))
        c = b.dequantize(n.input[3], n.input[4], _input(n, 5))
        b.quantize(b.add(op, [a, c]), n.input[6], _input(n, 7))

    return expand


def _unary(op: str, keep: tuple[str, ...] = ()) -> Callable[[_Builder], None]:
    def expand(b: _Builder) -> None:
        n = b.node
        attrs = {k: v for k, v in b.attrs().items() if k in keep}
        if b.attrs().get("channels_last", 0):
            raise ModelLoadError(f"node {n.name!r} ({n.op_type}): channels_last is not supported")
        x = b.dequantize(n.input[0], n.input[1], _input(n, 2))
        b.quantize(b.add(op, [x], **attrs), n.input[3], _input(n, 4))

    return expand


def _concat(b: _Builder) -> None:
    n = b.node
    triples = n.input[2:]
    if len(triples) % 3:
        raise ModelLoadError(f"node {n.name!r} (QLinearConcat): inputs must come in threes")
    parts = [
        b.dequantize(triples[i], triples[i + 1], triples[i + 2]) for i in range(0, len(triples), 3)
    ]
    b.quantize(b.add("Concat", parts, axis=b.attrs().get("axis", 0)), n.input[0], _input(n, 1))


def _qgemm_exact(b: _Builder, trans_b: int) -> None:
    """A quantized-output QGemm as onnxruntime computes it: the integer sum (MatMulInteger,
    which eqsat computes exactly) plus the int32 bias, times ``(a_scale * b_scale) / y_scale``
    in float32, rounded to even, plus the output's zero point. Through a float Gemm of the
    dequantized operands the sum rounded differently: 123 of ResNet-18's 1000 int8 logits
    (quantize_static, QOperator) a step off onnxruntime's."""
    n = b.node
    w = b.add("Transpose", [n.input[3]], perm=[1, 0]) if trans_b else n.input[3]
    acc = b.add("MatMulInteger", [n.input[0], w, _input(n, 2), _input(n, 5)])
    bias = _input(n, 6)
    if bias:
        acc = b.add("Add", [acc, bias])
    scale = b.add("Div", [b.add("Mul", [n.input[1], n.input[4]]), n.input[7]])
    scaled = b.add("Mul", [b.add("Cast", [acc], to=onnx.TensorProto.FLOAT), scale])
    one = b.add("Constant", [], value=helper.make_tensor("one", onnx.TensorProto.FLOAT, [], [1.0]))
    b.quantize(scaled, one, _input(n, 8))


def _qgemm(b: _Builder) -> None:
    n = b.node
    attrs = b.attrs()
    trans_b = int(attrs.get("transB", 0))
    exact = float(attrs.get("alpha", 1.0)) == 1.0 and not int(attrs.get("transA", 0))
    if exact and _input(n, 7):
        _qgemm_exact(b, trans_b)
        return
    a = b.dequantize(n.input[0], n.input[1], n.input[2])
    # A per-column weight scale runs along B's N axis: 0 when B is stored transposed.
    w = b.dequantize(n.input[3], n.input[4], n.input[5], axis=0 if trans_b else 1)
    inputs = [a, w]
    bias = _input(n, 6)
    if bias:  # int32, in units of a_scale * b_scale
        inputs.append(b.dequantize(bias, b.add("Mul", [n.input[1], n.input[4]]), "", axis=0))
    gemm = {"alpha": float(attrs.get("alpha", 1.0)), "transA": int(attrs.get("transA", 0))}
    y_scale = _input(n, 7)
    if not y_scale:  # a float output
        b.add("Gemm", inputs, n.output[0], transB=trans_b, **gemm)
        return
    b.quantize(b.add("Gemm", inputs, transB=trans_b, **gemm), y_scale, _input(n, 8))


_POOL = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
EXPANSIONS: dict[str, Callable[[_Builder], None]] = {
    "QLinearAdd": _binary("Add"),
    "QLinearMul": _binary("Mul"),
    "QLinearSigmoid": _unary("Sigmoid"),
    "QLinearLeakyRelu": _unary("LeakyRelu", ("alpha",)),
    "QLinearGlobalAveragePool": _unary("GlobalAveragePool"),
    "QLinearAveragePool": _unary("AveragePool", _POOL),
    "QLinearConcat": _concat,
    "QGemm": _qgemm,
}


def expand_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every node of :data:`EXPANSIONS` in its main graph replaced by standard
    nodes (the model itself when there is none)."""
    if not any(n.domain == CONTRIB_DOMAIN and n.op_type in EXPANSIONS for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the caller's model stays as it was
    model, graph = copy, copy.graph
    nodes: Nodes = []
    for index, node in enumerate(graph.node):
        if node.domain == CONTRIB_DOMAIN and node.op_type in EXPANSIONS:
            builder = _Builder(node, index)
            EXPANSIONS[node.op_type](builder)
            nodes += builder.nodes
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


__all__ = ["CONTRIB_DOMAIN", "EXPANSIONS", "expand_contrib_ops"]
