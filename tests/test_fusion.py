"""Fused ops against their unfused numpy references; fusion rules on small graphs and the zoo."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest

import eqsat
from eqsat.errors import ShapeError
from eqsat.ir import Graph
from eqsat.ops import OPS
from eqsat.ops import fused as fused_ops
from eqsat.optimize import compare, optimize
from eqsat.rulecheck import check_rule

RNG = np.random.default_rng(0)


def _rand(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def _run(op: str, arrays: list[Any], **attrs: Any) -> np.ndarray:
    g = Graph("t")
    ins = [None if a is None else g.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    out = g.op(op, *ins, **attrs)
    return OPS[op].evaluate(out.producer, arrays)[0]  # type: ignore[union-attr]


# ------------------------------------------------------------------ the fused ops
def test_fused_elementwise_matches_unfused_numpy() -> None:
    x, b, r = _rand(2, 3, 4), _rand(3, 1), _rand(4)
    body = "max(({0} + {1}) * (1 / (1 + exp(-({0} + {1})))) + {2}, 0)"
    got = _run("FusedElementwise", [x, b, r], body=body, dtype="float32")
    t = x + b
    np.testing.assert_allclose(got, np.maximum(t / (1 + np.exp(-t)) + r, 0), rtol=1e-6)
    assert got.shape == (2, 3, 4) and got.dtype == np.float32


def test_fused_elementwise_comparisons_where_ints_and_float16() -> None:
    x, y = _rand(5), _rand(5)
    got = _run("FusedElementwise", [x, y], body="(({0} if {0} > {1} else {1}) < 0.5)", dtype="bool")
    np.testing.assert_array_equal(got, np.maximum(x, y) < 0.5)
    a, d = np.array([-7, 7, 9], np.int64), np.array([2, 2, -4], np.int64)
    np.testing.assert_array_equal(
        _run("FusedElementwise", [a, d], body="({0} / {1})", dtype="int64"), [-3, 3, -2]
    )
    h = _rand(6, dtype=np.float16)
    got = _run("FusedElementwise", [h], body="tanh({0} * 3)", dtype="float16")
    want = np.tanh(h.astype(np.float32) * 3).astype(np.float16)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("body", "shapes", "message"),
    [
        ("({0} + {3})", [(2,), (2,)], r"operand \{3\}"),
        ("({0} +", [(2,)], "not a scalar expression"),
        ("foo({0})", [(2,)], "unknown function"),
        ("({0} + {1})", [(2,), (3,)], "do not broadcast"),
    ],
)
def test_fused_elementwise_shape_errors(body: str, shapes: list, message: str) -> None:
    g = Graph("t")
    ins = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    with pytest.raises(ShapeError, match=message):
        g.op("FusedElementwise", *ins, body=body, dtype="float32")


def test_fused_elementwise_cost_reads_inputs_once_writes_once() -> None:
    g = Graph("t")
    x, b = g.input("x", (8, 16)), g.input("b", (16,))
    y = g.op("FusedElementwise", x, b, body="max(({0} + {1}), 0)", dtype="float32")
    c = OPS["FusedElementwise"].cost([x, b], [y], y.producer.attrs)  # type: ignore[union-attr]
    assert c.bytes_read == x.nbytes + b.nbytes and c.bytes_written == y.nbytes
    assert c.flops == 2 * y.size


def test_fused_conv_epilogue_and_omitted_bias() -> None:
    x, w, b, r = _rand(1, 3, 6, 6), _rand(4, 3, 3, 3), _rand(4), _rand(1, 4, 4, 4)
    conv = _run("Conv", [x, w, b])
    got = _run("FusedConv", [x, w, b, r], num_base_inputs=3, epilogue="max(({0} + {1}), 0)")
    np.testing.assert_allclose(got, np.maximum(conv + r, 0), rtol=1e-5, atol=1e-6)
    got = _run("FusedConv", [x, w, None], num_base_inputs=3, epilogue="max({0}, 0)")
    np.testing.assert_allclose(got, np.maximum(_run("Conv", [x, w]), 0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeError, match="broadcast"):
        g = Graph("t")
        ins = [g.input("x", x.shape), g.input("w", w.shape), None, g.input("r", (2, 4, 4, 4))]
        g.op("FusedConv", *ins, num_base_inputs=3, epilogue="({0} + {1})")


def test_bias_less_conv_with_activation_fuses() -> None:
    """A Conv without bias and an activation: the FusedConv decodes with its bias left out (as
    ONNX writes it) instead of failing and keeping the whole input graph (a real MobileNetV3
    export lost all of its fusions that way)."""
    g = Graph("t")
    x = g.input("x", (1, 3, 9, 9))
    w = g.constant(_rand(8, 3, 3, 3), "w")
    y = g.op("Conv", x, w, strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    g.output(g.op("HardSwish", y), "y")
    result = optimize(g, rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified and not result.report.kept_input
    assert result.graph.op_counts() == {"FusedConv": 1}
    (node,) = result.graph.nodes
    assert len(node.inputs) == 2 and node.attrs["num_base_inputs"] == 3
    onnx.checker.check_model(result.to_onnx())


def _twice_listed(base: str) -> Graph:
    """A kernel over two kernels of one Conv (or MatMul + bias) output: splicing their input
    lists lists the base op twice."""
    g = Graph("twice")
    if base == "Conv":
        x = g.input("x", (1, 3, 8, 8))
        y = g.op("Conv", x, g.constant(_rand(4, 3, 3, 3), "w"), g.constant(_rand(4), "b"))
        g.output(g.op("Mul", g.op("Relu", y), g.op("Sigmoid", y)), "z")
        return g
    x = g.input("x", (1, 5, 16))
    t = g.op("Add", g.op("MatMul", x, g.constant(_rand(16, 24), "w")), g.constant(_rand(24), "b"))
    k = g.constant(np.array(1.702, np.float32), "k")
    g.output(g.op("Mul", t, g.op("Sigmoid", g.op("Mul", t, k))), "z")  # CLIP's QuickGELU
    return g


@pytest.mark.parametrize("base", ["Conv", "MatMul"])
def test_epilogue_absorbs_a_kernel_listing_its_base_twice(base: str) -> None:
    result = optimize(_twice_listed(base), rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified and not result.report.kept_input
    assert result.graph.op_counts() == {f"Fused{base}": 1}


@pytest.mark.parametrize(
    ("name", "body", "twice"),
    [
        ("fusion-epilogue/Conv-epilogue-again-1", "(max({0}, 0) * {1})", lambda c, b: [c, c]),
        ("fusion-epilogue/MatMul-epilogue-again-1", "(({0} * {1}) + {2})", lambda c, b: [c, c, b]),
        (
            "fusion-epilogue/MatMul-epilogue-again-2",
            "(({0} + {1}) * tanh(({2} + {3})))",
            lambda c, b: [c, b, c, b],
        ),
    ],
)
def test_epilogue_again_rules_are_sound(name: str, body: str, twice: Any) -> None:
    from eqsat.rulecheck import RuleCheck, _check_instance

    g = Graph("again")
    if "Conv" in name:
        x = g.input("x", (1, 3, 6, 6))
        base, b = g.op("Conv", x, g.constant(_rand(4, 3, 3, 3), "w")), None
    else:
        x = g.input("x", (2, 3, 5))
        base, b = g.op("MatMul", x, g.constant(_rand(5, 4), "w")), g.input("b", (4,))
    g.output(g.op("FusedElementwise", *twice(base, b), body=body, dtype="float32"))
    check = RuleCheck(name, "")
    assert _check_instance(_fusion_rule(name), g, check) == ""
    assert check.fired == 1 and check.compared >= 1


def test_fused_matmul_gemm_convtranspose() -> None:
    a, b, c = _rand(2, 5, 3), _rand(3, 4), _rand(4)
    got = _run("FusedMatMul", [a, b, c], num_base_inputs=2, epilogue="tanh(({0} + {1}))")
    np.testing.assert_allclose(got, np.tanh(a @ b + c), rtol=1e-5, atol=1e-6)
    a2, w = _rand(5, 3), _rand(4, 3)
    got = _run("FusedGemm", [a2, w, c], num_base_inputs=3, epilogue="max({0}, 0)", transB=1)
    np.testing.assert_allclose(got, np.maximum(a2 @ w.T + c, 0), rtol=1e-5, atol=1e-6)
    x, wt = _rand(1, 2, 3, 3), _rand(2, 3, 2, 2)
    base = _run("ConvTranspose", [x, wt])
    got = _run("FusedConvTranspose", [x, wt, None], num_base_inputs=3, epilogue="({0} * 2)")
    np.testing.assert_allclose(got, base * 2, rtol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_matches_numpy(with_mask: bool) -> None:
    q, k, v = _rand(2, 3, 5, 4), _rand(2, 3, 6, 4), _rand(2, 3, 6, 7)
    mask = _rand(2, 1, 1, 6) if with_mask else None
    got = _run("Attention", [q, k, v, mask] if with_mask else [q, k, v], scale=0.5)
    s = q @ np.swapaxes(k, -1, -2) * 0.5 + (mask if with_mask else 0)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(got, (p / p.sum(-1, keepdims=True)) @ v, rtol=1e-5, atol=1e-6)
    g = Graph("t")
    with pytest.raises(ShapeError, match="do not fit"):
        g.op(
            "Attention",
            g.input("q", (2, 5, 4)),
            g.input("k", (2, 6, 3)),
            g.input("v", (2, 6, 3)),
            scale=1.0,
        )


# ------------------------------------------------------------------ rules on small graphs
def fusion_rules(*extra: str) -> list[Any]:
    from eqsat.rules import fusion

    return ["algebraic", *fusion.FAMILY_NAMES.values(), *extra]


def _conv_bn_relu() -> Graph:
    g = Graph("cbr")
    x = g.input("x", (1, 3, 8, 8))
    w = g.constant(_rand(4, 3, 3, 3), "w")
    y = g.op("Conv", x, w, pads=[1, 1, 1, 1])
    params = [np.abs(_rand(4)) + 0.5, _rand(4), _rand(4), np.abs(_rand(4)) + 0.5]
    y = g.op("BatchNormalization", y, *[g.constant(p) for p in params], epsilon=1e-3)
    y = g.op("Relu", g.op("Add", y, g.input("r", (1, 4, 8, 8))))
    g.output(y, "y")
    return g


def test_conv_bn_residual_relu_is_one_kernel() -> None:
    g = _conv_bn_relu()
    result = optimize(g, rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified and not result.report.kept_input
    assert result.graph.op_counts() == {"FusedConv": 1}
    assert result.report.kernels_before >= 4 and result.report.kernels_after == 1
    assert result.report.fused == {"FusedConv": 1}
    assert "fused ops formed: FusedConv 1" in str(result.report)
    exported = result.to_onnx()
    onnx.checker.check_model(exported)
    assert {o.domain for o in exported.opset_import} >= {"", "eqsat"}
    assert exported.graph.node[0].domain == "eqsat"


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_bn_after_concat_fuses_with_its_relu(rank: int) -> None:
    # DenseNet's pre-activation: Concat -> BN -> ReLU, where no conv can absorb the BN.
    g = Graph("dense")
    spatial = (5, 6)[: rank - 2]
    a, b = g.input("a", (2, 3, *spatial)), g.input("b", (2, 4, *spatial))
    params = [np.abs(_rand(7)) + 0.5, _rand(7), _rand(7), np.abs(_rand(7)) + 0.5]
    y = g.op("BatchNormalization", g.op("Concat", a, b, axis=1), *map(g.constant, params))
    g.output(g.op("Relu", y), "y")
    result = optimize(g, rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified
    counts = result.graph.op_counts()
    assert "BatchNormalization" not in counts and counts.get("FusedElementwise") == 1
    feeds = {"a": _rand(2, 3, *spatial), "b": _rand(2, 4, *spatial)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    got = eqsat.compile(result.graph, target="cpu").run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_elementwise_chain_with_broadcast_is_one_kernel() -> None:
    g = Graph("chain")
    x, b = g.input("x", (4, 8)), g.input("b", (8,))
    t = g.op("Add", x, b)
    t = g.op("Mul", t, g.op("Sigmoid", t))
    t = g.op("Sub", g.op("Tanh", t), g.constant(np.float32(0.25)))
    t = g.op("LeakyRelu", t, alpha=0.1)
    g.output(t, "y")
    result = optimize(g, rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified
    assert result.graph.op_counts() == {"FusedElementwise": 1}
    (node,) = result.graph.nodes
    # x and b: repeated reads are deduplicated and the scalar 0.25 is a literal of the body.
    assert len(node.inputs) == 2
    assert "0.25" in node.attrs["body"]


def test_families_switch_by_name() -> None:
    from eqsat.rules import fusion

    g = _conv_bn_relu()
    only_bn = optimize(g, rules=["algebraic", fusion.bn], target="cpu", verify=True)
    assert only_bn.graph.op_counts() == {"Add": 1, "Conv": 1, "Relu": 1}
    assert set(fusion.FAMILY_NAMES) == {
        "fusion-elementwise",
        "fusion-epilogue",
        "fusion-bn",
        "fusion-composite",
    }


def _decomposed_gelu_ln_softmax() -> Graph:
    g = Graph("composite")
    x = g.input("x", (2, 5, 8))
    c = g.constant
    t = g.op("Div", x, c(np.float32(math.sqrt(2.0))))
    t = g.op(
        "Mul", g.op("Mul", x, g.op("Add", g.op("Erf", t), c(np.float32(1.0)))), c(np.float32(0.5))
    )
    axes = c(np.array([-1], np.int64))
    mean = g.op("ReduceMean", t, axes, keepdims=1)
    d = g.op("Sub", t, mean)
    var = g.op("ReduceMean", g.op("Pow", d, c(np.float32(2.0))), axes, keepdims=1)
    n = g.op("Div", d, g.op("Sqrt", g.op("Add", var, c(np.float32(1e-5)))))
    ln = g.op("Add", g.op("Mul", n, c(_rand(8))), c(_rand(8)))
    e = g.op("Exp", g.op("Sub", ln, g.op("ReduceMax", ln, axes, keepdims=1)))
    g.output(g.op("Div", e, g.op("ReduceSum", e, axes, keepdims=1)), "y")
    return g


def test_composites_gelu_layernorm_softmax() -> None:
    g = _decomposed_gelu_ln_softmax()
    result = optimize(g, rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified
    counts = result.graph.op_counts()
    assert counts.get("LayerNormalization") == 1 and counts.get("Softmax") == 1, counts
    assert "ReduceMean" not in counts and "Erf" not in counts, counts
    assert result.report.kernels_after <= 3


@pytest.mark.parametrize("form", ["reciprocal", "divide"])
def test_rms_norm_composite(form: str) -> None:
    """RMSNorm as torch exports it (x * rsqrt(mean(x^2) + eps) * w, rsqrt written as
    Reciprocal(Sqrt) by the dynamo exporter, 1 / Sqrt by TorchScript) is one RMSNormalization,
    which the cpu target runs as one kernel."""
    from eqsat.lowering import cpu

    g = Graph("rms")
    x = g.input("x", (2, 7, 16))
    c = g.constant
    w = _rand(16)
    mean = g.op("ReduceMean", g.op("Pow", x, c(np.float32(2.0))), c(np.array([-1])), keepdims=1)
    root = g.op("Sqrt", g.op("Add", mean, c(np.float32(1e-6))))
    inv = g.op("Reciprocal", root) if form == "reciprocal" else g.op("Div", c(np.float32(1)), root)
    g.output(g.op("Mul", c(w), g.op("Mul", x, inv)), "y")
    result = optimize(g, rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified
    assert result.graph.op_counts() == {"RMSNormalization": 1}
    exe = cpu.compile(result.graph, threads=1)
    assert exe.report["reference_ops"] == {}
    xs = _rand(2, 7, 16) * 3
    got = exe.run({"x": xs})["y"]
    rms = np.sqrt(np.mean(xs.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, xs / rms * w, rtol=1e-5, atol=1e-6)


def test_silu_and_hardswish() -> None:
    g = Graph("act")
    x = g.input("x", (3, 4))
    s = g.op("Mul", x, g.op("Sigmoid", x))
    c = g.constant
    clip = g.op("Clip", g.op("Add", s, c(np.float32(3.0))), c(np.float32(0.0)), c(np.float32(6.0)))
    g.output(g.op("Div", g.op("Mul", s, clip), c(np.float32(6.0))), "y")
    result = optimize(g, rules=fusion_rules(), target="cpu", verify=True)
    assert result.report.verified and result.report.kernels_after == 1
    assert result.report.matches.get("fusion-composite/silu", 0) > 0
    assert result.report.matches.get("fusion-composite/hardswish-relu6", 0) > 0


@pytest.mark.parametrize(
    "name",
    [
        "fusion-elementwise/Add-tt",
        "fusion-elementwise/Relu-t",
        "fusion-elementwise/Clip-ttt",
        "fusion-elementwise/LeakyRelu-t",
        "fusion-composite/silu",
        "fusion-composite/silu-swapped",
    ],
)
def test_fusion_rules_pass_check_rules(name: str) -> None:
    result = check_rule(_fusion_rule(name), samples=80)
    assert result.status == "ok", result


def _fusion_rule(name: str) -> Any:
    from eqsat.rules import resolve

    return {r.name: r for r in resolve(fusion_rules())[0]}[name]


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("fusion-elementwise/Add-ft", lambda g, f, y: g.op("Add", f, y)),
        ("fusion-elementwise/Sub-tf", lambda g, f, y: g.op("Sub", y, f)),
        (
            "fusion-elementwise/Mul-ff",
            lambda g, f, y: g.op(
                "Mul", f, g.op("FusedElementwise", y, f, body="({0} - {1})", dtype="float32")
            ),
        ),
        ("fusion-elementwise/Relu-f", lambda g, f, y: g.op("Relu", f)),
        ("fusion-elementwise/LeakyRelu-f", lambda g, f, y: g.op("LeakyRelu", f, alpha=0.3)),
    ],
)
def test_merge_rules_are_sound(name: str, build: Any) -> None:
    # check-rules cannot instantiate a FusedElementwise with a variable body yet, so these
    # instances are built by hand and checked the same way (every alternative decoded and run).
    from eqsat.rulecheck import RuleCheck, _check_instance

    g = Graph("merge")
    x, b, y = g.input("x", (3, 4)), g.input("b", (4,)), g.input("y", (3, 1))
    f = g.op("FusedElementwise", x, b, body="({0} * (1 / (1 + exp(-{1}))))", dtype="float32")
    g.output(build(g, f, y))
    check = RuleCheck(name, "")
    assert _check_instance(_fusion_rule(name), g, check) == ""
    assert check.fired == 1 and check.compared >= 1


# ------------------------------------------------------------------ the zoo
# The default run covers one model of each kind; the rest (the PP-OCR and other large real models,
# which tests/test_zoo.py also optimizes) run with -m slow.
ZOO_DEFAULT = {
    "resnet_block", "resnet_block_proj", "mobilenetv2_block", "mlp", "nudenet_yolov8n",
    "silero_vad", "silero_vad_op15", "silero_vad_half", "silero_vad_ifless", "silero_vad_sequence", "silero_vad_openvino",
}  # fmt: skip


def _zoo_params() -> list[Any]:
    from bench import models as zoo

    return [
        pytest.param(n, marks=[] if n in ZOO_DEFAULT else [pytest.mark.slow], id=n) for n in zoo.ZOO
    ]


@pytest.mark.parametrize("name", _zoo_params())
def test_zoo_fuses_and_matches_onnxruntime(name: str) -> None:
    pytest.importorskip("onnxruntime")
    from bench import fusion_table
    from bench import models as zoo

    try:
        r = fusion_table.row(name)
    except zoo.ZooDownloadError as exc:
        pytest.skip(f"download failed: {exc}")
    assert not r["kept"], r["kept"]
    assert r["match"], name
    assert r["after"] < r["before"], r
    assert r["bn_left"] == 0
    if name.startswith("transformer"):
        assert {"Attention", "LayerNormalization"} <= set(r["fused"]), r["fused"]


def test_optimized_graph_matches_reference_on_random_feeds() -> None:
    g = _conv_bn_relu()
    result = optimize(g, rules=fusion_rules(), target="cpu")
    assert compare(g, result.graph)[0]
    assert fused_ops.DOMAIN == "eqsat"
