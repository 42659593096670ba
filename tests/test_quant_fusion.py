"""QDQ models: per-tensor QuantizeLinear/DequantizeLinear become eqsat's elementwise
QuantizePerTensor/DequantizePerTensor (``fusion-composite/(de)quantize-per-tensor-*``), which
fusion takes into kernels and conv epilogues, with the reference's values bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import eqsat
from eqsat import ops

F32 = np.float32
# q's scale: one with an exact half of a step (see _exact_half)
Q_SCALE = F32(45.6814) / F32(255)


def _qdq(
    g: eqsat.Graph, x: eqsat.Value, scale: float, zero: int, dtype: type, tag: str
) -> eqsat.Value:
    s, z = (
        g.constant(np.array(scale, F32), f"s_{tag}"),
        g.constant(np.array(zero, dtype), f"z_{tag}"),
    )
    q = g.op("QuantizeLinear", x, s, z)
    return g.op("DequantizeLinear", q, s, z)


def _qdq_conv_graph(rng: np.random.Generator) -> eqsat.Graph:
    """conv -> QDQ (uint8) -> Relu -> QDQ (int8), and a quantized uint8 output of its own."""
    g = eqsat.Graph("qdq")
    x = g.input("x", (1, 4, 9, 9))
    w = g.constant(rng.normal(0, 0.3, (6, 4, 3, 3)).astype(F32), "w")
    b = g.constant(rng.normal(0, 0.3, 6).astype(F32), "b")
    y = g.op("Conv", x, w, b, pads=[1, 1, 1, 1])
    y = g.op("Relu", _qdq(g, y, 0.0213, 131, np.uint8, "a"))
    g.output(_qdq(g, y, 0.0117, -3, np.int8, "b"), "y")
    q = g.op(
        "QuantizeLinear",
        x,
        g.constant(np.array(Q_SCALE, F32), "sq"),
        g.constant(np.array(7, np.uint8), "zq"),
    )
    g.output(q, "q")
    return g


def _exact_half(scale: np.float32) -> np.float32:
    """An x with x / scale exactly k + 0.5 in float32 but x * (1 / scale) rounding the other
    way: where a kernel multiplying by the reciprocal would be off by one."""
    for k in range(1, 400):
        x = F32((F32(k) + F32(0.5)) * scale)
        if x / scale == k + 0.5 and np.rint(x / scale) != np.rint(x * (F32(1) / scale)):
            return x
    raise AssertionError(f"no exact half for scale {scale}")


def _feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = rng.normal(0, 1.5, (1, 4, 9, 9)).astype(F32)
    # halves of q's step (the direct one is exact), and saturation both ways
    x.reshape(-1)[:5] = [_exact_half(Q_SCALE), F32(-0.5) * Q_SCALE, 100.0, -100.0, 0.0]
    return {"x": x}


@pytest.mark.parametrize("threads", [1, 2])
def test_qdq_pairs_fuse_into_the_conv_with_the_same_values(
    rng: np.random.Generator, threads: int
) -> None:
    g = _qdq_conv_graph(rng)
    feeds = _feeds(rng)
    want = eqsat.compile(g, target="numpy").run(feeds)
    result = eqsat.optimize(g, target="cpu")
    matches = result.report.matches
    for rule in ("quantize-per-tensor-uint8", "quantize-per-tensor-int8",
                 "dequantize-per-tensor-uint8", "dequantize-per-tensor-int8"):  # fmt: skip
        assert matches.get(f"fusion-composite/{rule}", 0) > 0, rule
    counts = result.graph.op_counts()
    assert "QuantizeLinear" not in counts and "DequantizeLinear" not in counts, counts
    assert counts.get("FusedConv") == 1, counts
    from eqsat.lowering import cpu

    for target in ("numpy", "cpu"):
        exe = (
            cpu.compile(result.graph, threads=threads)
            if target == "cpu"
            else eqsat.compile(result.graph, target="numpy")
        )
        got = exe.run(feeds)
        for name in ("y", "q"):
            assert got[name].dtype == want[name].dtype, (target, name)
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{target} {name}")


def test_per_tensor_ops_compute_what_quantize_linear_does(rng: np.random.Generator) -> None:
    x = rng.normal(0, 4, 4000).astype(F32)
    x[:3] = [F32(2.5) * F32(0.0371), F32(300.0), F32(-300.0)]
    for dtype, code, (low, high) in ((np.uint8, 2, (0, 255)), (np.int8, 3, (-128, 127))):
        zero = np.array(5 if dtype == np.uint8 else -5, dtype)
        scale = np.array(0.0371, F32)
        want = ops.get("QuantizeLinear", "q").reference(
            [x, scale, zero],
            {"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0, "precision": 0},
            [np.empty(0, dtype)],
        )[0]
        attrs = {
            "scale": float(scale),
            "zero": float(zero),
            "low": float(low),
            "high": float(high),
            "to": code,
        }
        got = ops.get("QuantizePerTensor", "q").reference([x], attrs, [np.empty(0, dtype)])[0]
        np.testing.assert_array_equal(got, want)
        back = ops.get("DequantizeLinear", "d").reference(
            [want, scale, zero], {"axis": 1, "block_size": 0, "output_dtype": 0}, [np.empty(0, F32)]
        )[0]
        again = ops.get("DequantizePerTensor", "d").reference(
            [want], {"scale": float(scale), "zero": float(zero)}, [np.empty(0, F32)]
        )[0]
        np.testing.assert_array_equal(again, back)


def test_per_axis_quantization_is_left_alone(rng: np.random.Generator) -> None:
    g = eqsat.Graph("per-axis")
    x = g.input("x", (2, 3, 4))
    s = g.constant(np.array([0.1, 0.2, 0.3], F32), "s")
    z = g.constant(np.array([1, 2, 3], np.uint8), "z")
    g.output(g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z), "y")
    result = eqsat.optimize(g, target="cpu")
    assert result.graph.op_counts().get("QuantizeLinear") == 1


def test_quantized_graphs_export_in_eqsat_domain(rng: np.random.Generator) -> None:
    g = eqsat.Graph("export")
    x = g.input("x", (3, 5))
    q = g.op(
        "QuantizeLinear",
        x,
        g.constant(np.array(0.1, F32), "s"),
        g.constant(np.array(3, np.uint8), "z"),
    )
    g.output(q, "q")
    result = eqsat.optimize(g, target="cpu")
    proto = eqsat.to_onnx(result.graph)
    own = [n for n in proto.graph.node if n.domain == "eqsat"]
    assert own, [n.op_type for n in proto.graph.node]
    again = eqsat.load(proto)
    feeds = {"x": rng.normal(0, 1, (3, 5)).astype(F32)}
    np.testing.assert_array_equal(
        eqsat.compile(again, target="numpy").run(feeds)["q"],
        eqsat.compile(g, target="numpy").run(feeds)["q"],
    )
    onnx.checker.check_model(proto)
