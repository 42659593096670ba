"""The operators added for unseen models: more elementwise ops, normalizations, GridSample, signal
processing and quantization.

Each op runs in a one-node ONNX model through the importer and the numpy target and is compared
with onnxruntime (and the model eqsat exports back); the elementwise ops' scalar templates are
checked against their references and compiled on the ``cpu`` target without lowering changes.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import eqsat
from eqsat import ops
from eqsat.errors import ShapeError
from eqsat.ops.elementwise import SCALAR_FUNCTIONS, scalar_expr
from tests.onnx_testing import F, check_one_node, init, model, ort_run, vi

RNG = np.random.default_rng(7)
X34 = RNG.standard_normal((3, 4)).astype(F)
UNIT = np.tanh(X34)  # inside (-1, 1) for asin/acos/atanh
one_node = check_one_node


# ------------------------------------------------------------------------------- elementwise
UNARY = [
    ("Selu", X34, {"alpha": 1.5, "gamma": 0.8}),
    ("Selu", X34, {}),
    ("Celu", X34, {"alpha": 0.7}),
    ("ThresholdedRelu", X34, {"alpha": 0.3}),
    ("Softsign", X34, {}),
    ("Mish", X34 * 8, {}),
    ("Shrink", X34, {"bias": 0.25, "lambd": 0.4}),
    ("Tan", X34, {}),
    ("Asin", UNIT, {}),
    ("Acos", UNIT, {}),
    ("Atan", X34, {}),
    ("Sinh", X34, {}),
    ("Cosh", X34, {}),
    ("Asinh", X34, {}),
    ("Acosh", 1 + np.abs(X34), {}),
    ("Atanh", UNIT, {}),
    ("BitwiseNot", RNG.integers(-100, 100, (3, 4)).astype(np.int32), {}),
    ("BitwiseNot", RNG.integers(0, 255, (3, 4)).astype(np.uint8), {}),
]


@pytest.mark.parametrize(
    ("op", "x", "attrs"), UNARY, ids=[f"{c[0]}-{i}" for i, c in enumerate(UNARY)]
)
def test_unary_matches_onnxruntime(op: str, x: np.ndarray, attrs: dict) -> None:
    one_node(op, {"x": x}, attrs)


def test_isinf_detect_flags() -> None:
    x = np.array([[np.inf, -np.inf, 0.0, np.nan, 1e38]], F)
    for pos, neg in ((1, 1), (1, 0), (0, 1), (0, 0)):
        one_node("IsInf", {"x": x}, {"detect_positive": pos, "detect_negative": neg})


def test_binary_and_variadic_match_onnxruntime() -> None:
    a, b = RNG.integers(-9, 9, (2, 3, 4)).astype(np.int32), RNG.integers(-9, 9, (4,))
    for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor"):
        one_node(op, {"a": a, "b": b.astype(np.int32)})
    p, q = RNG.random((2, 3)) > 0.5, RNG.random((3,)) > 0.5
    one_node("Xor", {"p": p, "q": q})
    x = RNG.standard_normal((2, 3, 4, 5)).astype(F)
    one_node("PRelu", {"x": x, "slope": RNG.standard_normal((3, 1, 1)).astype(F)})
    one_node("PRelu", {"x": x, "slope": RNG.standard_normal((5,)).astype(F)})
    one_node("Sum", {"a": X34, "b": X34[:1], "c": X34[:, :1]})
    one_node("Mean", {"a": X34, "b": X34[:1] * 3, "c": X34[:, :1]})
    one_node("Mean", {"a": X34})


def test_prelu_slope_must_broadcast_to_x() -> None:
    g = eqsat.Graph()
    x, slope = g.input("x", (3, 1)), g.input("s", (4,))
    with pytest.raises(ShapeError, match="does not broadcast to X"):
        g.op("PRelu", x, slope)


def test_castlike() -> None:
    target = np.zeros((1,), np.float16)
    graph = one_node("CastLike", {"x": X34 * 100, "t": target}, consts=("t",))
    assert graph.outputs[0].dtype == np.float16
    one_node("CastLike", {"x": X34 * 100, "t": np.zeros((), np.int32)}, consts=("t",))


def test_mean_scalar_form_divides_once() -> None:
    assert scalar_expr("Mean", ["a"], {}) == "a"
    assert scalar_expr("Mean", ["a", "b", "c"], {}) == "(((a + b) + c) / 3)"
    assert scalar_expr("Mean", ["a", "b"], {}) == ops.get("Mean").scalar.format("a", "b")


NEW_ELEMENTWISE = sorted({c[0] for c in UNARY} | {"IsInf", "PRelu", "Sum", "Mean", "Xor"})
NEW_ELEMENTWISE += ["BitwiseAnd", "BitwiseOr", "BitwiseXor"]


@pytest.mark.parametrize("op", NEW_ELEMENTWISE)
def test_scalar_template_matches_reference(op: str) -> None:
    opdef = ops.get(op)
    if op in ("Asin", "Acos", "Atanh"):
        args = [UNIT]
    elif op == "Acosh":
        args = [1 + np.abs(X34)]
    elif op.startswith("Bitwise"):
        args = [RNG.integers(-50, 50, (3, 4)).astype(np.int32) for _ in range(opdef.min_inputs)]
    elif op == "Xor":
        args = [RNG.random((3, 4)) > 0.5, RNG.random((3, 4)) > 0.5]
    elif op == "IsInf":
        args = [np.array([[np.inf, -np.inf, 0, np.nan]], F)]
    elif op in ("Sum", "Mean"):
        args = [X34, X34 * 2, X34 - 1]
    else:
        args = [X34, X34[0] * 0.5][: max(opdef.min_inputs, 1)]
    attrs = dict(opdef.attrs)
    g = eqsat.Graph()
    y = g.op(op, *(g.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(args)))
    g.output(y, "y")
    want = eqsat.compile(g).run({f"x{i}": a for i, a in enumerate(args)})["y"]
    expr = scalar_expr(op, [f"x{i}" for i in range(len(args))], attrs)
    env = {"__builtins__": {}, **SCALAR_FUNCTIONS, "inf": np.inf, "nan": np.nan}
    shape = np.broadcast_shapes(*(a.shape for a in args))
    flat = [np.broadcast_to(a, shape).reshape(-1) for a in args]
    with np.errstate(all="ignore"):
        got = [
            eval(expr, env, {f"x{i}": f[k] for i, f in enumerate(flat)}) for k in range(want.size)
        ]
    np.testing.assert_allclose(np.array(got).reshape(shape).astype(want.dtype), want, rtol=1e-6)


def test_elementwise_ops_compile_on_cpu_without_lowering_changes() -> None:
    g = eqsat.Graph()
    x, s = g.input("x", (2, 3, 4)), g.input("s", (4,))
    y = g.op("Mish", g.op("PRelu", g.op("Selu", x), s))
    z = g.op("Mean", y, g.op("Softsign", x), g.op("Atan", x))
    g.output(g.op("Where", g.op("IsInf", z), x, z), "out")
    feeds = {"x": RNG.standard_normal((2, 3, 4)).astype(F), "s": np.linspace(-1, 1, 4, dtype=F)}
    want = eqsat.compile(g, target="numpy").run(feeds)["out"]
    got = eqsat.compile(g, target="cpu").run(feeds)["out"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- normalizations
def test_group_normalization() -> None:
    x = RNG.standard_normal((2, 6, 3, 2)).astype(F)
    scale, bias = RNG.standard_normal(6).astype(F), RNG.standard_normal(6).astype(F)
    one_node(
        "GroupNormalization", {"x": x, "s": scale, "b": bias}, {"num_groups": 3, "epsilon": 1e-3}
    )
    one_node("GroupNormalization", {"x": x, "s": scale, "b": bias}, {"num_groups": 6})
    g = eqsat.Graph()
    with pytest.raises(ShapeError, match="does not divide"):
        g.op(
            "GroupNormalization",
            g.input("x", (1, 6, 2)),
            g.input("s", (6,)),
            g.input("b", (6,)),
            num_groups=4,
        )


def test_group_normalization_18_per_group_parameters() -> None:
    x = RNG.standard_normal((2, 6, 5)).astype(F)
    scale, bias = np.array([1.5, -0.5, 2.0], F), np.array([0.25, 2.0, -1.0], F)
    node = h.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3)
    proto = model(
        [node], [vi("x", [2, 6, 5])], [vi("y", None)], [init("s", scale), init("b", bias)], opset=18
    )
    graph = eqsat.load(proto)
    got = eqsat.compile(graph).run({"x": x})["y"]
    xs = x.reshape(2, 3, -1)
    norm = ((xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-5)).reshape(
        x.shape
    )
    want = norm * np.repeat(scale, 2)[:, None] + np.repeat(bias, 2)[:, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lp_mvn_lrn_hardmax() -> None:
    x = RNG.standard_normal((2, 5, 3, 3)).astype(F)
    x[0, :, 0, 0] = 0  # a zero vector stays zero
    for p, axis in ((1, 1), (2, -1), (2, 1)):
        one_node("LpNormalization", {"x": x}, {"p": p, "axis": axis})
    one_node("MeanVarianceNormalization", {"x": x})
    one_node("MeanVarianceNormalization", {"x": x}, {"axes": [1, 2, 3]})
    for size in (1, 3, 5):
        one_node("LRN", {"x": x}, {"size": size, "alpha": 0.01, "beta": 0.6, "bias": 1.5})
    ties = np.array([[1, 3, 3, 0], [2, 2, 2, 2]], F)
    for axis in (-1, 0):
        one_node("Hardmax", {"x": ties}, {"axis": axis})
    one_node("Hardmax", {"x": x}, {"axis": 1})


def test_trilu_and_eyelike() -> None:
    x = RNG.standard_normal((2, 4, 5)).astype(F)
    for upper in (0, 1):
        for k in (-2, 0, 3):
            one_node("Trilu", {"x": x, "k": np.array(k, np.int64)}, {"upper": upper})
        one_node("Trilu", {"x": x}, {"upper": upper})
    m = np.zeros((3, 5), np.int32)
    one_node("EyeLike", {"m": m}, {"k": 1})
    graph = one_node("EyeLike", {"m": m}, {"k": -1, "dtype": T.FLOAT})
    assert graph.outputs[0].const is not None  # depends only on the shape: folded


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_gridsample_2d(mode: str, padding: str, align: int) -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(F)
    grid = RNG.uniform(-1.6, 1.6, (2, 3, 6, 2)).astype(F)  # some points outside
    attrs = {"mode": mode, "padding_mode": padding, "align_corners": align}
    one_node("GridSample", {"x": x, "grid": grid}, attrs, opset=22, rtol=1e-4, atol=1e-5)


def test_gridsample_volumetric_and_opset16_names() -> None:
    x = RNG.standard_normal((1, 2, 3, 4, 5)).astype(F)
    grid = RNG.uniform(-1.2, 1.2, (1, 2, 3, 2, 3)).astype(F)
    for mode in ("linear", "nearest"):
        one_node("GridSample", {"x": x, "grid": grid}, {"mode": mode}, opset=22, atol=1e-5)
    # Opset 16 spelled the modes bilinear/bicubic. (Only the import is checked: the export
    # writes today's opset, where those names are gone, until the importer renames them.)
    x2, grid2 = x[:, :, 0], grid[:, 0, :, :, :2]
    node = h.make_node("GridSample", ["x", "g"], ["y"], mode="bicubic", padding_mode="border")
    inputs = [vi("x", list(x2.shape)), vi("g", list(grid2.shape))]
    proto = model([node], inputs, [vi("y", None)], opset=16)
    want = ort_run(proto, {"x": x2, "g": grid2})[0]
    got = eqsat.compile(eqsat.load(proto)).run({"x": x2, "g": grid2})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------- signal
def test_dft_forward_inverse_onesided() -> None:
    real = RNG.standard_normal((2, 8, 1)).astype(F)
    cplx = RNG.standard_normal((2, 8, 3, 2)).astype(F)
    one_node("DFT", {"x": real}, {}, opset=20, atol=1e-5)
    one_node("DFT", {"x": real}, {"onesided": 1}, opset=20, atol=1e-5)
    n = np.array(10, np.int64)
    one_node("DFT", {"x": real, "n": n}, {}, consts=("n",), opset=20, atol=1e-5)
    axis = np.array(2, np.int64)
    one_node(
        "DFT",
        {"x": cplx, "n": None, "axis": axis},
        {"inverse": 1},
        consts=("axis",),
        opset=20,
        atol=1e-5,
    )
    one_node(
        "DFT",
        {"x": cplx, "n": np.array(6, np.int64), "axis": np.array(-3, np.int64)},
        {},
        consts=("n", "axis"),
        opset=20,
        atol=1e-5,
    )


def test_dft_irfft_reference() -> None:
    spectrum = np.fft.rfft(RNG.standard_normal((3, 8)), axis=1)
    x = np.stack([spectrum.real, spectrum.imag], -1).astype(F)  # (3, 5, 2)
    g = eqsat.Graph()
    y = g.op(
        "DFT", g.input("x", x.shape), None, g.constant(np.array(1, np.int64)), inverse=1, onesided=1
    )
    g.output(y, "y")
    assert y.shape == (3, 8, 1)
    got = eqsat.compile(g).run({"x": x})["y"]
    np.testing.assert_allclose(got[..., 0], np.fft.irfft(spectrum, n=8, axis=1), atol=1e-5)


def test_stft_windows_and_mel() -> None:
    signal = RNG.standard_normal((2, 64, 1)).astype(F)
    step = np.array(8, np.int64)
    window = np.hanning(16).astype(F)
    one_node(
        "STFT", {"s": signal, "step": step, "w": window}, {}, consts=("step",), opset=17, atol=1e-4
    )
    length = np.array(16, np.int64)
    one_node(
        "STFT",
        {"s": signal, "step": step, "w": None, "n": length},
        {"onesided": 0},
        consts=("step", "n"),
        opset=17,
        atol=1e-4,
    )
    size = np.array(10, np.int64)
    for op in ("HannWindow", "HammingWindow", "BlackmanWindow"):
        for periodic in (0, 1):
            one_node(op, {"n": size}, {"periodic": periodic}, consts=("n",), opset=17)
    mel = {"bins": np.array(8, np.int64), "n": np.array(64, np.int64), "rate": np.array(16000, np.int64),
           "lo": np.array(20.0, F), "hi": np.array(7600.0, F)}  # fmt: skip
    one_node("MelWeightMatrix", mel, {}, consts=tuple(mel), opset=17)


# ---------------------------------------------------------------------------- quantization
def test_quantize_dequantize_per_tensor_and_axis() -> None:
    x = (RNG.standard_normal((2, 3, 4)) * 50).astype(F)
    x[0, 0, :3] = [0.5, 1.5, -2.5]  # halves round to even
    scale, zero = np.array(0.7, F), np.array(3, np.uint8)
    one_node("QuantizeLinear", {"x": x, "s": scale, "z": zero}, consts=("s", "z"))
    one_node("QuantizeLinear", {"x": x, "s": scale}, consts=("s",))
    axis_scale = np.array([0.5, 1.0, 2.0], F)
    axis_zero = np.array([-3, 0, 7], np.int8)
    one_node(
        "QuantizeLinear", {"x": x, "s": axis_scale, "z": axis_zero}, {"axis": 1}, consts=("s", "z")
    )
    q = RNG.integers(-128, 127, (2, 3, 4)).astype(np.int8)
    one_node(
        "DequantizeLinear",
        {"q": q, "s": axis_scale, "z": axis_zero},
        {"axis": 1},
        consts=("s", "z"),
    )
    u = RNG.integers(0, 255, (2, 3, 4)).astype(np.uint8)
    one_node("DequantizeLinear", {"q": u, "s": scale, "z": zero}, consts=("s", "z"))
    i32 = RNG.integers(-1000, 1000, (2, 3, 4)).astype(np.int32)
    one_node("DequantizeLinear", {"q": i32, "s": scale}, consts=("s",))


def test_quantize_blocked() -> None:
    x = (RNG.standard_normal((2, 5)) * 10).astype(F)
    scale = np.array([[0.5, 1.0], [2.0, 0.25]], F)
    zero = np.array([[1, -2], [0, 4]], np.int8)
    one_node(
        "QuantizeLinear",
        {"x": x, "s": scale, "z": zero},
        {"axis": 1, "block_size": 3},
        consts=("s", "z"),
    )
    q = RNG.integers(-100, 100, (2, 5)).astype(np.int8)
    one_node(
        "DequantizeLinear",
        {"q": q, "s": scale, "z": zero},
        {"axis": 1, "block_size": 3},
        consts=("s", "z"),
    )


def test_quantize_rejects_bad_parameters() -> None:
    g = eqsat.Graph()
    x = g.input("x", (2, 3))
    with pytest.raises(ShapeError, match="per-axis scale"):
        g.op("QuantizeLinear", x, g.constant(np.ones(2, F)), axis=1)
    with pytest.raises(ShapeError, match="not supported"):
        g.op("QuantizeLinear", x, g.constant(np.ones((), F)), output_dtype=T.INT32)


def test_costs_are_counted() -> None:
    g = eqsat.Graph()
    x = g.input("x", (1, 8, 64, 1))
    y = g.op("DFT", x, None, g.constant(np.array(2, np.int64)))
    cost = ops.get("DFT").cost(y.producer.inputs, [y], y.producer.attrs)
    assert cost.flops == pytest.approx(5 * 64 * 6 * 8)
    img, grid = g.input("img", (1, 2, 4, 4)), g.input("grid", (1, 3, 3, 2))
    s = g.op("GridSample", img, grid)
    assert ops.get("GridSample").cost([img, grid], [s], s.producer.attrs).flops > 2 * 4 * s.size


def test_lrn_even_size_window() -> None:
    # onnxruntime refuses even sizes; ONNX sums channels c - floor((size-1)/2) .. c + ceil(...).
    x = RNG.standard_normal((1, 5, 2)).astype(F)
    g = eqsat.Graph()
    g.output(g.op("LRN", g.input("x", x.shape), size=4, alpha=0.1, beta=0.5, bias=2.0), "y")
    got = eqsat.compile(g).run({"x": x})["y"]
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (1, 2), (0, 0)))
    total = sum(sq[:, k : k + 5] for k in range(4))
    np.testing.assert_allclose(got, x / (2.0 + 0.1 / 4 * total) ** 0.5, rtol=1e-5)
