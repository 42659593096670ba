"""Dynamic quantization on the cpu target (:mod:`eqsat.lowering.cpu_quant`): DynamicQuantizeLinear's
kernel gives the reference's bytes exactly, and MatMulInteger's float32 products, cut into chunks
of K that keep every partial sum exact, give the exact int32 result, on one thread and two."""

from __future__ import annotations

import numpy as np
import pytest
from eqsat.lowering import cpu, cpu_quant

import eqsat
from eqsat import ops


def _reference_quantize(x: np.ndarray) -> list[np.ndarray]:
    return ops.get("DynamicQuantizeLinear", "test").reference([x], {}, [None, None, None])


@pytest.mark.parametrize(
    "x",
    [
        np.random.default_rng(1).normal(0.3, 2.0, 5000),
        np.random.default_rng(2).normal(0.0, 1e-3, 777),
        np.random.default_rng(3).normal(0.0, 1e5, 300),
        np.abs(np.random.default_rng(4).normal(0.0, 5.0, 64)),  # all positive
        -np.abs(np.random.default_rng(5).normal(0.0, 0.01, 64)),  # all negative, tiny
        np.zeros(9),  # no range: scale 1
        np.arange(-300, 300) / 7,  # many values near halves of a step
        np.array([-2.5, -0.5, 0.5, 1.5, 2.5, 127.5, 254.5]),  # halves round to even
        # x / scale exactly a half where x * (1 / scale) is not: the division must be one
        np.array([0.0, 45.6814, 36.992977, 30.0]),
    ],
    ids=[
        "mixed",
        "small",
        "large",
        "positive",
        "negative",
        "zeros",
        "sevenths",
        "halves",
        "divided",
    ],
)
def test_quantize_kernel_gives_the_reference_bytes(x: np.ndarray) -> None:
    x = x.astype(np.float32)
    y, scale_zp = np.empty(x.size, np.uint8), np.zeros(2, np.float32)
    assert cpu_quant.quantize_dynamic(x, y, scale_zp)
    want_y, want_scale, want_zp = _reference_quantize(x)
    np.testing.assert_array_equal(y, want_y)
    assert scale_zp[0] == want_scale and int(scale_zp[1]) == int(want_zp)


def test_quantize_kernel_leaves_nan_to_the_reference() -> None:
    x = np.array([1.0, np.nan, -2.0, 0.5], np.float32)
    assert not cpu_quant.quantize_dynamic(x, np.empty(4, np.uint8), np.zeros(2, np.float32))
    g = eqsat.Graph("nan")
    for value, name in zip(g.op("DynamicQuantizeLinear", g.input("x", (4,)), outputs=3),
                           ("y", "scale", "zp"), strict=True):  # fmt: skip
        g.output(value, name)
    want = eqsat.compile(g, target="numpy").run({"x": x})
    got = cpu.compile(g, threads=1).run({"x": x})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
        assert got[name].dtype == want[name].dtype


def _cpu_matches_reference(g: eqsat.Graph, feeds: dict[str, np.ndarray], threads: int
                           ) -> dict[str, np.ndarray]:  # fmt: skip
    """Compiles ``g`` for the cpu target with no op left to the numpy reference, runs it twice
    (the second run on reused buffers) and checks every output's dtype and bytes against the
    reference's. Returns the last run's outputs."""
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = cpu.compile(g, threads=threads)
    assert exe.report["reference_ops"] == {}
    for _ in range(2):
        got = exe.run(feeds)
        assert set(got) == set(want)
        for name, value in want.items():
            assert got[name].dtype == value.dtype, name
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    return got


def _quantized_matmul(x_shape: tuple[int, ...], weights: np.ndarray, b_zp: np.ndarray | None
                      ) -> eqsat.Graph:  # fmt: skip
    """x -> DynamicQuantizeLinear -> MatMulInteger(weights, b_zp) -> Cast -> * scale: what
    onnxruntime's quantize_dynamic writes; outputs the int32 product and the rescaled floats."""
    g = eqsat.Graph("quantized")
    q, scale, zp = g.op("DynamicQuantizeLinear", g.input("x", x_shape), outputs=3)
    b_zero = None if b_zp is None else g.constant(b_zp, "b_zp")
    product = g.op("MatMulInteger", q, g.constant(weights, "w"), zp, b_zero)
    g.output(product, "product")
    g.output(g.op("Mul", g.op("Cast", product, to=1), scale), "y")
    return g


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "weights", "b_zp"),
    [
        ((16, 96), np.random.default_rng(6).integers(-128, 128, (96, 40)).astype(np.int8), None),
        # uint8 weights with a zero point: B - zp reaches 255, K = 1100 in chunks of 258
        ((2, 3, 1100), np.random.default_rng(7).integers(0, 256, (1100, 33)).astype(np.uint8),
         np.array(3, np.uint8)),
        # one zero point per column, as per-channel weights have
        ((7, 300), np.random.default_rng(8).integers(-128, 128, (300, 24)).astype(np.int8),
         np.random.default_rng(9).integers(-5, 5, 24).astype(np.int8)),
        ((300,), np.random.default_rng(10).integers(-128, 128, (300, 65)).astype(np.int8), None),
    ],
    ids=["int8", "uint8-chunks", "per-column", "vector"],
)  # fmt: skip
def test_matmul_integer_is_exact(
    monkeypatch: pytest.MonkeyPatch, threads: int, x_shape: tuple, weights: np.ndarray,
    b_zp: np.ndarray | None,
) -> None:  # fmt: skip
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)  # two threads split every product
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    g = _quantized_matmul(x_shape, weights, b_zp)
    feeds = {"x": np.random.default_rng(11).normal(0.2, 3.0, x_shape).astype(np.float32)}
    got = _cpu_matches_reference(g, feeds, threads)
    assert got["product"].dtype == np.int32


def test_matmul_integer_sums_past_float32_exactness() -> None:
    """Products whose sums pass 2**24 (uint8 255s against int8 -128s, K = 2000: -65 million):
    one float32 GEMM would round them; the chunks keep them exact."""
    k = 2000
    a = np.full((3, k), 255, np.uint8)
    a[1, ::2] = 254  # odd sums
    weights = np.full((k, 5), -128, np.int8)
    weights[::3, 1] = 127
    g = eqsat.Graph("extreme")
    g.output(g.op("MatMulInteger", g.input("a", a.shape, np.uint8), g.constant(weights)), "y")
    got = cpu.compile(g, threads=1).run({"a": a})["y"]
    want = a.astype(np.int64) @ weights.astype(np.int64)
    assert np.abs(want).max() > 1 << 24
    np.testing.assert_array_equal(got, want.astype(np.int32))


def _exact_half(scale: np.float32) -> np.float32:
    """An x with x / scale exactly k + 0.5 in float32 but x * (1 / scale) not."""
    for k in range(1, 120):
        x = np.float32((np.float32(k) + np.float32(0.5)) * scale)
        if x / scale == k + 0.5 and np.rint(x / scale) != np.rint(x * (np.float32(1) / scale)):
            return x
    raise AssertionError(f"no exact half for scale {scale}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("dtype", "axis", "channels"),
    [(np.uint8, 1, 1), (np.int8, 1, 1), (np.uint8, 1, 6), (np.int8, -1, 5)],
    ids=["uint8", "int8", "per-channel", "last-axis"],
)
def test_quantize_dequantize_give_the_reference_values(
    threads: int, dtype: type, axis: int, channels: int
) -> None:
    """A QDQ model's activations: QuantizeLinear then DequantizeLinear with constant scales and
    zero points, per tensor or per axis, bit for bit the reference's (halves round to even,
    values past the range saturate)."""
    shape = (2, 6, 3, 5)
    rng = np.random.default_rng(12)
    scale = rng.uniform(0.01, 0.05, channels).astype(np.float32)
    scale[0] = np.float32(45.6814) / np.float32(255)  # has an exact half (_exact_half)
    info = np.iinfo(dtype)
    zero = rng.integers(info.min // 2, info.max // 2, channels).astype(dtype)
    if channels == 1:
        scale, zero = scale.reshape(()), zero.reshape(())
    g = eqsat.Graph("qdq")
    x = g.input("x", shape)
    q = g.op("QuantizeLinear", x, g.constant(scale, "s"), g.constant(zero, "z"), axis=axis)
    g.output(q, "q")
    g.output(
        g.op("DequantizeLinear", q, g.constant(scale, "s2"), g.constant(zero, "z2"), axis=axis), "y"
    )
    x_value = rng.normal(0.0, 3.0, shape).astype(np.float32)
    x_value.reshape(-1)[:4] = [100.0, -100.0, 0.0, 0.0]  # saturate both ways
    step = scale.reshape(-1)[0]
    x_value[0, 0, 0, 2:4] = [np.float32(2.5) * step, np.float32(-0.5) * step]  # near halves
    # An exact half of a step where multiplying by 1 / scale rounds the other way: the
    # division must be one (the value of test_quantize_kernel_gives_the_reference_bytes).
    x_value[0, 0, 0, 4] = _exact_half(step)
    got = _cpu_matches_reference(g, {"x": x_value}, threads)
    assert set(got) == {"q", "y"}


def test_per_tensor_parameters_of_two_shapes_load() -> None:
    """onnxruntime's quantizer writes a bias's DequantizeLinear with a (1,) scale and a ()
    zero point: both mean per tensor (the ONNX checker and onnxruntime accept it)."""
    from tests.onnx_testing import check_one_node

    x = np.array([-300, -1, 0, 7, 1000], np.int32)
    inputs = {"x": x, "s": np.array([0.5], np.float32), "z": np.array(3, np.int32)}
    check_one_node("DequantizeLinear", inputs, consts=("s", "z"), rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((1, 8, 11, 11), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
        ((2, 6, 9, 10), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]}),  # batch, groups
        ((1, 8, 12, 12), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),  # depthwise
        ((1, 4, 30), (5, 4, 5), {"pads": [2, 2]}),  # 1-D
        # K = 2304: sums may pass 2**24: float32 convs over 3 chunks of channels, added up
        ((2, 256, 5, 5), (8, 256, 3, 3), {"pads": [1, 1, 1, 1]}),
        # K = 15680: more chunks than MAX_CHUNKS, one float64 conv
        ((1, 320, 6, 6), (4, 320, 7, 7), {"pads": [3, 3, 3, 3]}),
    ],
    ids=["3x3", "batch-groups-s2", "depthwise", "1d", "chunks", "float64"],
)
def test_qlinear_conv_gives_the_reference_bytes(
    threads: int, x_shape: tuple, w_shape: tuple, attrs: dict
) -> None:
    """QLinearConv through a float64 conv (exact integer sums) and the requantizing kernel:
    per-channel weight scales and zero points, an int32 bias, uint8 in and out."""
    rng = np.random.default_rng(13)
    m = w_shape[0]
    g = eqsat.Graph("qlinearconv")
    x = g.input("x", x_shape, np.uint8)
    inputs = [
        x,
        g.constant(np.array(0.02, np.float32), "xs"),
        g.constant(np.array(118, np.uint8), "xz"),
        g.constant(rng.integers(-128, 128, w_shape).astype(np.int8), "w"),
        g.constant(rng.uniform(0.005, 0.02, m).astype(np.float32), "ws"),
        g.constant(np.zeros(m, np.int8), "wz"),
        g.constant(np.array(0.1, np.float32), "ys"),
        g.constant(np.array(128, np.uint8), "yz"),
        g.constant(rng.integers(-3000, 3000, m).astype(np.int32), "b"),
    ]
    g.output(g.op("QLinearConv", *inputs, **attrs), "y")
    feeds = {"x": rng.integers(0, 256, x_shape).astype(np.uint8)}
    assert _cpu_matches_reference(g, feeds, threads)["y"].dtype == np.uint8


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul_gives_the_reference_bytes(threads: int, per_column: bool) -> None:
    """QLinearMatMul by constant int8 weights: the exact int32 products of MatMulInteger's
    kernel, requantized in the reference's float32 steps (K = 700: two chunks)."""
    rng = np.random.default_rng(14)
    k, n = 700, 24
    g = eqsat.Graph("qlinearmatmul")
    a = g.input("a", (2, 5, k), np.uint8)
    b_scale = rng.uniform(0.002, 0.01, n if per_column else ()).astype(np.float32)
    b_zero = np.zeros(n if per_column else (), np.int8)
    inputs = [
        a,
        g.constant(np.array(0.03, np.float32), "as"),
        g.constant(np.array(121, np.uint8), "az"),
        g.constant(rng.integers(-128, 128, (k, n)).astype(np.int8), "b"),
        g.constant(b_scale, "bs"),
        g.constant(b_zero, "bz"),
        g.constant(np.array(0.4, np.float32), "ys"),
        g.constant(np.array(130, np.uint8), "yz"),
    ]
    g.output(g.op("QLinearMatMul", *inputs), "y")
    feeds = {"a": rng.integers(0, 256, (2, 5, k)).astype(np.uint8)}
    assert _cpu_matches_reference(g, feeds, threads)["y"].dtype == np.uint8


def test_qlinear_conv_takes_float32_only_where_every_sum_is_exact() -> None:
    from eqsat.lowering.cpu_qlinear_conv import exact_in_float32

    u8 = np.dtype(np.uint8)
    full = np.full((8, 72, 3, 3), -128.0)  # K = 648: 648 * 255 * 128 = 21 million > 2**24
    assert not exact_in_float32(u8, 0, full, None)
    assert exact_in_float32(u8, 0, full[:, :8], None)  # K = 72
    assert exact_in_float32(u8, 128, np.full((96, 500, 1, 1), 127.0), None)  # 1x1, 500 channels
    assert not exact_in_float32(u8, 128, np.full((96, 500, 1, 1), 127.0), np.array([1e7]))
    assert exact_in_float32(np.dtype(np.int8), 0, np.full((32, 1, 3, 3), -255.0), None)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "zero"),
    [
        ((1, 8, 11, 11), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}, "run-time"),
        ((2, 6, 9, 10), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]}, "constant"),
        ((1, 80, 40), (24, 80, 3), {"pads": [1, 1]}, "run-time"),  # Whisper's first conv, smaller
        ((1, 256, 5, 5), (8, 256, 3, 3), {"pads": [1, 1, 1, 1]}, "none"),  # chunks of channels
    ],
    ids=["run-time-zero", "constant-zero-groups", "1d", "no-zero-chunks"],
)
def test_conv_integer_gives_the_reference_sums(
    threads: int, x_shape: tuple, w_shape: tuple, attrs: dict, zero: str
) -> None:
    """ConvInteger (dynamic quantization's conv): the exact int32 sums of the float convs, with
    x's zero point constant, omitted, or a DynamicQuantizeLinear's output."""
    rng = np.random.default_rng(15)
    g = eqsat.Graph("convinteger")
    w = g.constant(rng.integers(-128, 128, w_shape).astype(np.int8), "w")
    wz = g.constant(np.array(0, np.int8), "wz")
    if zero == "run-time":
        x = g.input("x", x_shape)
        q, _, zp = g.op("DynamicQuantizeLinear", x, outputs=3)
        y = g.op("ConvInteger", q, w, zp, None, **attrs)
        feeds = {"x": rng.normal(0.3, 2.0, x_shape).astype(np.float32)}
    else:
        x = g.input("x", x_shape, np.uint8)
        xz = g.constant(np.array(131, np.uint8), "xz") if zero == "constant" else None
        y = g.op("ConvInteger", x, w, xz, wz if zero == "constant" else None, **attrs)
        feeds = {"x": rng.integers(0, 256, x_shape).astype(np.uint8)}
    g.output(y, "y")
    assert _cpu_matches_reference(g, feeds, threads)["y"].dtype == np.int32


def test_dequantizing_arithmetic_rounds_as_the_reference() -> None:
    """int32 sums times a scale plus a bias (what fuses after a ConvInteger): no FMA
    contraction, so each product and sum rounds as the reference's; one rounding instead of
    two left 16420 of these 65536 values an ulp off, and a DynamicQuantizeLinear after them
    then a quantization step off now and then (quantize_dynamic's ResNet-18: 0.3%)."""
    n = 1 << 16
    g = eqsat.Graph("dequant")
    acc = g.input("acc", (n,), np.int32)
    scale = g.constant(np.float32(0.0123457), "scale")
    bias = g.constant((np.random.default_rng(0).standard_normal(n) * 3).astype(np.float32), "b")
    g.output(g.op("Add", g.op("Mul", g.op("Cast", acc, to=1), scale), bias), "y")
    feeds = {"acc": np.random.default_rng(1).integers(-50000, 50000, n).astype(np.int32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    graph = eqsat.optimize(g, target="cpu").graph
    assert graph.op_counts() == {"FusedElementwise": 1}
    np.testing.assert_array_equal(eqsat.compile(graph, target="cpu").run(feeds)["y"], want)
