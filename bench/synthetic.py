"""Synthetic zoo models, built in code with onnx.helper and seeded random weights.

Each builder returns an opset-17 ``onnx.ModelProto`` that mimics what a framework exporter emits
(torch.onnx for the transformer and MLP, a torchvision-style export for the conv blocks): BatchNorm
kept as its own node, ReLU6 as ``Clip`` with min/max inputs, LayerNorm and GELU spelled out op by
op, head reshapes driven by ``Shape``/``Gather``/``Concat`` when dimensions are symbolic. Weights are
scaled so activations stay of order one, so that relative tolerances in the tests mean something.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR version 8 is what exporters pair with opset 17; onnxruntime accepts it everywhere.
IR_VERSION = 8

Dim = int | str


class ModelBuilder:
    """Accumulates nodes and initializers with unique names, then makes a checked ModelProto."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}

    def _fresh(self, hint: str) -> str:
        n = self._counts.get(hint, 0)
        self._counts[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def input(self, name: str, shape: Sequence[Dim], elem_type: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(
        self, value: str, shape: Sequence[Dim] | None = None, elem_type: int = TensorProto.FLOAT
    ) -> None:
        # Without a shape, shape inference in model() fills it in, as exporters record it.
        self.outputs.append(helper.make_tensor_value_info(value, elem_type, shape))

    def init(self, hint: str, array: np.ndarray) -> str:
        name = self._fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, hint: str, array: Any, dtype: Any = np.float32) -> str:
        """A ``Constant`` node, the way torch.onnx emits scalars and shape pieces."""
        name = self._fresh(hint)
        tensor = numpy_helper.from_array(np.asarray(array, dtype=dtype), name)
        self.nodes.append(
            helper.make_node("Constant", [], [name], name=f"{name}_node", value=tensor)
        )
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str | None = None, **attrs: Any) -> str:
        out = self._fresh(hint or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{out}_node", **attrs))
        return out

    # ------------------------------------------------------------- weights
    def normal(self, shape: Sequence[int], std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(self, shape: Sequence[int], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="eqsat-bench-synthetic",
            ir_version=IR_VERSION,
        )
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


# ------------------------------------------------------------------ conv blocks
def _conv(
    b: ModelBuilder,
    x: str,
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    group: int = 1,
    bias: bool = False,
) -> str:
    fan_in = cin // group * k * k
    w = b.init("conv.weight", b.normal((cout, cin // group, k, k), math.sqrt(2.0 / fan_in)))
    inputs = [x, w]
    if bias:
        inputs.append(b.init("conv.bias", b.normal((cout,), 0.1)))
    pad = k // 2
    return b.node(
        "Conv",
        inputs,
        "conv",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
        dilations=[1, 1],
        group=group,
    )


def _batchnorm(b: ModelBuilder, x: str, c: int) -> str:
    scale = b.init("bn.weight", b.uniform((c,), 0.5, 1.5))
    bias = b.init("bn.bias", b.normal((c,), 0.1))
    mean = b.init("bn.running_mean", b.normal((c,), 0.1))
    var = b.init("bn.running_var", b.uniform((c,), 0.5, 1.5))
    return b.node(
        "BatchNormalization", [x, scale, bias, mean, var], "bn", epsilon=1e-5, momentum=0.9
    )


def resnet_block(projection: bool = False) -> onnx.ModelProto:
    """A ResNet basic block; with ``projection`` it halves the resolution and doubles channels."""
    name = "resnet_block_proj" if projection else "resnet_block"
    b = ModelBuilder(name, seed=11 if projection else 10)
    cin = 64
    cout, stride = (128, 2) if projection else (64, 1)
    x = b.input("input", [1, cin, 56, 56])
    y = b.node("Relu", [_batchnorm(b, _conv(b, x, cin, cout, 3, stride), cout)])
    y = _batchnorm(b, _conv(b, y, cout, cout, 3), cout)
    shortcut = _batchnorm(b, _conv(b, x, cin, cout, 1, stride), cout) if projection else x
    out = b.node("Relu", [b.node("Add", [y, shortcut])], "output")
    b.output(out)
    return b.model()


def _relu6(b: ModelBuilder, x: str) -> str:
    # torch.onnx exports nn.ReLU6 as Clip with the bounds as Constant inputs.
    return b.node("Clip", [x, b.const("min", 0.0), b.const("max", 6.0)], "clip")


def mobilenetv2_block() -> onnx.ModelProto:
    """An inverted residual block: expand 1x1, depthwise 3x3, linear project 1x1, residual."""
    b = ModelBuilder("mobilenetv2_block", seed=20)
    c, hidden = 32, 32 * 6
    x = b.input("input", [1, c, 56, 56])
    y = _relu6(b, _batchnorm(b, _conv(b, x, c, hidden, 1), hidden))
    y = _relu6(b, _batchnorm(b, _conv(b, y, hidden, hidden, 3, group=hidden), hidden))
    y = _batchnorm(b, _conv(b, y, hidden, c, 1), c)
    b.output(b.node("Add", [x, y], "output"))
    return b.model()


# ------------------------------------------------------------------ MLP
def mlp() -> onnx.ModelProto:
    """784-256-256-10 with nn.Linear exported as Gemm(transB=1)."""
    b = ModelBuilder("mlp", seed=30)
    y = b.input("input", [8, 784])
    sizes = [784, 256, 256, 10]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = b.init(f"fc{i}.weight", b.normal((fan_out, fan_in), math.sqrt(2.0 / fan_in)))
        bias = b.init(f"fc{i}.bias", b.normal((fan_out,), 0.1))
        y = b.node("Gemm", [y, w, bias], "gemm", alpha=1.0, beta=1.0, transB=1)
        if i < len(sizes) - 2:
            y = b.node("Relu", [y])
    b.output(b.node("Identity", [y], "logits"))
    return b.model()


# ------------------------------------------------------------------ transformer
def _linear(b: ModelBuilder, x: str, fan_in: int, fan_out: int, prefix: str) -> str:
    # torch exports a 3-D nn.Linear as MatMul by the transposed weight, then Add of the bias.
    w = b.init(f"{prefix}.weight_t", b.normal((fan_in, fan_out), 1.0 / math.sqrt(fan_in)))
    bias = b.init(f"{prefix}.bias", b.normal((fan_out,), 0.1))
    return b.node("Add", [b.node("MatMul", [x, w]), bias])


def _layernorm_decomposed(b: ModelBuilder, x: str, hidden: int, eps: float) -> str:
    """LayerNorm as older torch exporters emit it: two ReduceMeans around Sub/Pow."""
    mean = b.node("ReduceMean", [x], "ln_mean", axes=[-1], keepdims=1)
    diff = b.node("Sub", [x, mean], "ln_sub")
    sq = b.node("Pow", [diff, b.const("two", 2.0)], "ln_pow")
    var = b.node("ReduceMean", [sq], "ln_var", axes=[-1], keepdims=1)
    std = b.node("Sqrt", [b.node("Add", [var, b.const("eps", eps)], "ln_add_eps")], "ln_sqrt")
    normed = b.node("Div", [diff, std], "ln_div")
    gamma = b.init("ln.weight", b.uniform((hidden,), 0.5, 1.5))
    beta = b.init("ln.bias", b.normal((hidden,), 0.1))
    return b.node("Add", [b.node("Mul", [normed, gamma], "ln_mul"), beta], "ln_out")


def _layernorm_fused(b: ModelBuilder, x: str, hidden: int, eps: float) -> str:
    gamma = b.init("ln.weight", b.uniform((hidden,), 0.5, 1.5))
    beta = b.init("ln.bias", b.normal((hidden,), 0.1))
    return b.node("LayerNormalization", [x, gamma, beta], "ln_out", axis=-1, epsilon=eps)


def _gelu_erf(b: ModelBuilder, x: str) -> str:
    t = b.node("Div", [x, b.const("sqrt2", math.sqrt(2.0))], "gelu_div")
    t = b.node("Add", [b.node("Erf", [t], "gelu_erf"), b.const("one", 1.0)], "gelu_add")
    t = b.node("Mul", [x, t], "gelu_mul")
    return b.node("Mul", [t, b.const("half", 0.5)], "gelu_out")


class _Shapes:
    """How the head reshapes get their target shapes: literal constants, or computed at run time."""

    def __init__(self, b: ModelBuilder, x: str, batch: Dim, seq: Dim):
        self.b = b
        self.static = isinstance(batch, int) and isinstance(seq, int)
        if self.static:
            self.lead = [batch, seq]
            return
        # Symbolic dims: torch traces x.size(0), x.size(1) into Shape -> Gather -> Unsqueeze.
        shape = b.node("Shape", [x], "shape")
        self.pieces = []
        for axis in (0, 1):
            dim = b.node("Gather", [shape, b.const("idx", axis, np.int64)], "gather", axis=0)
            self.pieces.append(b.node("Unsqueeze", [dim, b.const("axes", [0], np.int64)], "unsq"))

    def of(self, *tail: int) -> str:
        if self.static:
            return self.b.const("shape", [*self.lead, *tail], np.int64)
        consts = [self.b.const("dim", [d], np.int64) for d in tail]
        return self.b.node("Concat", [*self.pieces, *consts], "concat", axis=0)


def transformer_encoder(
    batch: Dim = 1,
    seq: Dim = 128,
    hidden: int = 256,
    heads: int = 4,
    ffn: int = 1024,
    name: str = "transformer_encoder",
    seed: int = 40,
) -> onnx.ModelProto:
    """One BERT encoder layer as torch.onnx exports it (post-LN, erf GELU, additive mask)."""
    b = ModelBuilder(name, seed)
    head_dim = hidden // heads
    eps = 1e-12
    x = b.input("hidden_states", [batch, seq, hidden])
    mask = b.input("attention_mask", [batch, seq], TensorProto.INT64)

    # HF get_extended_attention_mask: mask[:, None, None, :], then (1 - mask) * -10000.
    m = b.node("Unsqueeze", [mask, b.const("axes", [1, 2], np.int64)], "mask_unsq")
    m = b.node("Cast", [m], "mask_cast", to=TensorProto.FLOAT)
    m = b.node("Sub", [b.const("one", 1.0), m], "mask_sub")
    m = b.node("Mul", [m, b.const("neg", -10000.0)], "mask_bias")

    shapes = _Shapes(b, x, batch, seq)

    def heads_of(t: str, perm: list[int]) -> str:
        t = b.node("Reshape", [t, shapes.of(heads, head_dim)], "split_heads")
        return b.node("Transpose", [t], "heads_t", perm=perm)

    q = heads_of(_linear(b, x, hidden, hidden, "query"), [0, 2, 1, 3])
    # K comes out already transposed for Q @ K^T, as torch traces k.transpose(-1, -2).
    k = heads_of(_linear(b, x, hidden, hidden, "key"), [0, 2, 3, 1])
    v = heads_of(_linear(b, x, hidden, hidden, "value"), [0, 2, 1, 3])
    scores = b.node("MatMul", [q, k], "scores")
    scores = b.node("Div", [scores, b.const("scale", math.sqrt(head_dim))], "scores_scaled")
    scores = b.node("Add", [scores, m], "scores_masked")
    probs = b.node("Softmax", [scores], "probs", axis=-1)
    ctx = b.node("MatMul", [probs, v], "context")
    ctx = b.node("Transpose", [ctx], "context_t", perm=[0, 2, 1, 3])
    ctx = b.node("Reshape", [ctx, shapes.of(hidden)], "merge_heads")
    attn = _linear(b, ctx, hidden, hidden, "attn_out")
    h = _layernorm_decomposed(b, b.node("Add", [attn, x], "residual1"), hidden, eps)

    f = _gelu_erf(b, _linear(b, h, hidden, ffn, "ffn_in"))
    f = _linear(b, f, ffn, hidden, "ffn_out")
    out = _layernorm_fused(b, b.node("Add", [f, h], "residual2"), hidden, eps)
    b.output(b.node("Identity", [out], "last_hidden_state"), [batch, seq, hidden])
    return b.model()


def transformer_dynamic() -> onnx.ModelProto:
    """A small encoder layer exported with symbolic batch and sequence axes."""
    return transformer_encoder(
        batch="batch",
        seq="sequence",
        hidden=64,
        heads=2,
        ffn=128,
        name="transformer_dynamic",
        seed=41,
    )


# ------------------------------------------------------------------ feeds
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def text_image_feeds(name: str, shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """A normalized NCHW "page": dark glyph-like strokes in lines on a noisy light background.

    Random noise makes the PP-OCR detector output ~0 everywhere, which would let any result pass
    an absolute tolerance; strokes arranged in text lines make it respond over ~13% of the page.
    A single-line crop (height <= 64, as the recognizer and classifier take) holds one line.
    """
    rng = np.random.default_rng(seed)
    n, c, height, width = shape
    batch = []
    for _ in range(n):
        img = np.full((height, width), 235.0) + rng.normal(0.0, 8.0, (height, width))
        if height <= 64:
            lines = [(height // 5, max(8, height * 3 // 5))]
        else:
            lines, y = [], 20
            while y < height - 30:
                h = int(rng.integers(14, 26))
                lines.append((y, h))
                y += h + int(rng.integers(12, 30))
        for top, h in lines:
            x, end = int(rng.integers(4, 40)), int(rng.integers(width // 2, width - 4))
            while x < end:
                glyph_w = int(rng.integers(h // 2, h))
                for _ in range(int(rng.integers(2, 5))):
                    if rng.random() < 0.5:  # horizontal stroke
                        row = top + int(rng.integers(0, h - 2))
                        img[row : row + 2, x : x + glyph_w] = 30.0
                    else:
                        col = x + int(rng.integers(0, glyph_w - 2))
                        img[top : top + h, col : col + 2] = 30.0
                x += glyph_w + int(rng.integers(2, 6))
        img = np.clip(img, 0.0, 255.0) / 255.0
        planes = [(img - _IMAGENET_MEAN[i % 3]) / _IMAGENET_STD[i % 3] for i in range(c)]
        batch.append(np.stack(planes))
    return {name: np.stack(batch).astype(np.float32)}


def image_feeds(name: str, shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32)}


def transformer_feeds(batch: int, seq: int, hidden: int, seed: int) -> dict[str, np.ndarray]:
    """Hidden states ~ N(0, 1) and a padding mask with a random valid length per row."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, seq), np.int64)
    for row in range(batch):
        mask[row, : rng.integers(seq // 2, seq + 1)] = 1
    return {
        "hidden_states": rng.standard_normal((batch, seq, hidden)).astype(np.float32),
        "attention_mask": mask,
    }
