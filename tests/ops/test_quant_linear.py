"""QLinearConv and QLinearMatMul (the QOperator int8 format) against onnxruntime, bit for bit.

Each case is a one-node model loaded with ``eqsat.load`` and run on the numpy and cpu targets.
onnxruntime's AVX2 uint8 x int8 kernel saturates pairs of products in int16 (see
eqsat.ops.quant_linear), so its int8 weights here stay within 7 bits, where it is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper as h

import eqsat
from eqsat.errors import ShapeError
from tests.onnx_testing import ELEM, init, model, ort_run, vi

RNG = np.random.default_rng(5)
U8, I8 = np.dtype(np.uint8), np.dtype(np.int8)


def _ints(dtype: np.dtype, shape: Any, bits: int = 8) -> np.ndarray:
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max + 1) if bits == 8 else (-(1 << (bits - 1)), 1 << (bits - 1))
    return RNG.integers(lo, hi, shape).astype(dtype)


def _scale(shape: Any = (), lo: float = 0.001, hi: float = 0.05, dtype: Any = np.float32) -> Any:
    return RNG.uniform(lo, hi, shape).astype(dtype)


def run_both(
    op: str,
    inputs: dict[str, np.ndarray | None],
    attrs: dict[str, Any] | None = None,
    *,
    fed: tuple[str, ...] = ("x", "a"),
    opset: int = 21,
) -> np.ndarray:
    """One ``op`` node; the inputs in ``fed`` are graph inputs, the rest initializers. Its result on
    the numpy and cpu targets must equal onnxruntime's exactly."""
    names = [n if a is not None else "" for n, a in inputs.items()]
    present = {n: a for n, a in inputs.items() if a is not None}
    proto = model(
        [h.make_node(op, names, ["y"], **(attrs or {}))],
        [vi(n, list(a.shape), ELEM[a.dtype]) for n, a in present.items() if n in fed],
        [onnx.ValueInfoProto(name="y")],
        [init(n, a) for n, a in present.items() if n not in fed],
        opset=opset,
    )
    feeds = {n: a for n, a in present.items() if n in fed}
    (want,) = ort_run(proto, feeds)
    graph = eqsat.load(proto)
    for target in ("numpy", "cpu"):
        got = eqsat.compile(graph, target).run(feeds)["y"]
        assert got.dtype == want.dtype, target
        np.testing.assert_array_equal(got, want, err_msg=target)
    return want


def _conv_inputs(
    xt: np.dtype, wt: np.dtype, yt: np.dtype, c: int, m: int, group: int, *, per_channel: bool,
    bias: bool, spatial: tuple[int, ...] = (7, 6),
) -> dict[str, np.ndarray | None]:  # fmt: skip
    wshape = (m, c // group, *(3,) * len(spatial))
    params = (m,) if per_channel else ()
    return {
        "x": _ints(xt, (2, c, *spatial)),
        "xs": _scale(),
        "xz": _ints(xt, ()),
        "w": _ints(wt, wshape, bits=7 if wt == I8 else 8),
        "ws": _scale(params),
        "wz": np.zeros(params, wt) if wt == I8 else _ints(wt, params),
        "ys": _scale((), 0.05, 1.5),
        "yz": _ints(yt, ()),
        "b": RNG.integers(-20000, 20000, (m,)).astype(np.int32) if bias else None,
    }


# onnxruntime's kernels: y has x's type.
CONV_TYPES = [(U8, U8, U8), (U8, I8, U8), (I8, I8, I8)]


@pytest.mark.parametrize("types", CONV_TYPES, ids=lambda t: "-".join(map(str, t)))
@pytest.mark.parametrize(
    ("group", "per_channel", "bias", "attrs"),
    [
        (1, False, False, {}),
        (1, True, True, {"pads": [1, 0, 1, 2], "strides": [2, 1]}),
        (2, True, False, {"dilations": [2, 1], "pads": [1, 1, 1, 1]}),
        (6, True, True, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),  # depthwise
        (6, False, False, {"pads": [1, 1, 1, 1]}),  # depthwise, per tensor
        (3, False, True, {"auto_pad": "VALID"}),
    ],
    ids=["plain", "per-channel-bias", "grouped-dilated", "depthwise-same", "depthwise", "valid"],
)
def test_qlinearconv_matches_onnxruntime(
    types: tuple, group: int, per_channel: bool, bias: bool, attrs: dict
) -> None:
    xt, wt, yt = types
    m = 6 if group == 6 else 4 * group // 2 if group > 1 else 5
    c = 6 if group in (6, 3) else 4
    run_both("QLinearConv", _conv_inputs(xt, wt, yt, c, m, group, per_channel=per_channel,
                                         bias=bias), {"group": group, **attrs})  # fmt: skip


def test_qlinearconv_1d_and_uint8_weight_zero_points() -> None:
    inputs = _conv_inputs(U8, U8, U8, 3, 4, 1, per_channel=True, bias=True, spatial=(11,))
    run_both("QLinearConv", inputs, {"pads": [2, 1], "strides": [2]})


def test_qlinearconv_saturates_and_rounds_half_to_even() -> None:
    # A large output scale range: many results saturate at both ends of uint8 and int8.
    for xt, wt, yt in ((U8, U8, U8), (I8, I8, I8)):
        inputs = _conv_inputs(xt, wt, yt, 4, 5, 1, per_channel=False, bias=True)
        inputs["ys"] = np.array(0.004, np.float32)
        y = run_both("QLinearConv", inputs, {"pads": [1, 1, 1, 1]})
        info = np.iinfo(yt)
        assert (y == info.min).any() and (y == info.max).any()
    # Accumulators of exactly k + 0.5 output steps: a scale of 0.5 puts every odd one on a tie.
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    one = np.array(1.0, np.float32)
    ties = {"x": x, "xs": one, "xz": np.array(0, U8), "w": np.ones((1, 1, 1, 1), U8),
            "ws": one, "wz": np.array(0, U8), "ys": np.array(2.0, np.float32),
            "yz": np.array(10, U8)}  # fmt: skip
    y = run_both("QLinearConv", ties)
    np.testing.assert_array_equal(y.reshape(-1), np.rint(np.arange(16) / 2) + 10)


@pytest.mark.parametrize(
    ("at", "bt", "yt"), [(U8, U8, U8), (U8, I8, U8), (I8, I8, I8)], ids=["u8u8", "u8s8", "s8s8"]
)
@pytest.mark.parametrize(
    ("ashape", "bshape", "bparam"),
    [((4, 5), (5, 3), ()), ((2, 3, 5), (5, 4), (4,)), ((2, 3, 5), (2, 5, 4), (2, 1, 4))],
    ids=["2d", "batched-per-column", "3d-per-column"],
)
def test_qlinearmatmul_matches_onnxruntime(
    at: np.dtype, bt: np.dtype, yt: np.dtype, ashape: tuple, bshape: tuple, bparam: tuple
) -> None:
    # onnxruntime takes per-column b parameters of shape [..., 1, N] (1-D (N,) it refuses).
    if len(bparam) == 1:
        bparam = (1, *bparam)
    inputs = {
        "a": _ints(at, ashape),
        "as": _scale(),
        "az": _ints(at, ()),
        "b": _ints(bt, bshape, bits=7 if bt == I8 else 8),
        "bs": _scale(bparam),
        "bz": _ints(bt, bparam) if bt == U8 else np.zeros(bparam, bt),
        "ys": _scale((), 0.05, 1.0),
        "yz": _ints(yt, ()),
    }
    run_both("QLinearMatMul", inputs)
    run_both("QLinearMatMul", inputs, fed=("a", "b"))
    if len(ashape) == 2:
        run_both("QLinearMatMul", inputs, opset=10)


def _tie_breaking_float16_case() -> tuple[dict[str, np.ndarray], int]:
    """float16 scales and a 1 x 1 product whose result differs between a float32 multiplier
    ``(a_scale * b_scale) / y_scale`` and one computed in float16; returns the float32 result."""
    acc = np.arange(-60000, 60001, dtype=np.int64)
    while True:
        sa, sb = _scale((), 0.001, 0.01, np.float16), _scale((), 0.001, 0.01, np.float16)
        sy = _scale((), 0.01, 0.1, np.float16)
        wide = (np.float32(sa) * np.float32(sb)) / np.float32(sy)
        r32 = np.rint(acc.astype(np.float32) * wide)
        r16 = np.rint(acc.astype(np.float32) * np.float32((sa * sb) / sy))
        for i in np.nonzero((r32 != r16) & (np.abs(r32) < 100) & (acc > 0))[0]:
            v = int(acc[i])
            p = next((p for p in range(1, 256) if v % p == 0 and v // p <= 255), None)
            if p is not None:
                inputs = {"a": np.array([[p]], U8), "as": sa, "az": np.array(0, U8),
                          "b": np.array([[v // p]], U8), "bs": sb, "bz": np.array(0, U8),
                          "ys": sy, "yz": np.array(128, U8)}  # fmt: skip
                return inputs, int(r32[i]) + 128


def test_qlinearmatmul_float16_scales_widen_to_float32() -> None:
    inputs, want = _tie_breaking_float16_case()
    assert run_both("QLinearMatMul", inputs).item() == want
    inputs.update(a=_ints(U8, (3, 40)), b=_ints(U8, (40, 2)), az=_ints(U8, ()), bz=_ints(U8, ()))
    run_both("QLinearMatMul", inputs)


def test_full_range_int8_weights_give_the_exact_result() -> None:
    """Where onnxruntime's AVX2 u8 x s8 kernel may saturate, eqsat keeps the defined result."""
    x, w = _ints(U8, (1, 16, 3, 3)), _ints(I8, (4, 16, 1, 1))
    w[:, :2] = -128  # 255 * -128 twice: far below int16's range in one pair
    x[:, :2] = 255
    one = np.array(1.0, np.float32)
    g = eqsat.Graph()
    args = [g.input("x", x.shape, U8), g.constant(one), g.constant(np.array(0, U8)),
            g.constant(w), g.constant(one), g.constant(np.array(0, I8)),
            g.constant(np.array(512.0, np.float32)), g.constant(np.array(0, I8))]  # fmt: skip
    g.output(g.op("QLinearConv", *args), "y")
    acc = np.einsum("mc,nchw->nmhw", w[:, :, 0, 0].astype(np.int64), x.astype(np.int64))
    want = np.clip(np.rint(acc / 512), -128, 127).astype(np.int8)
    for target in ("numpy", "cpu"):
        np.testing.assert_array_equal(eqsat.compile(g, target).run({"x": x})["y"], want)


def test_qlinear_ops_fold_on_constants() -> None:
    """All-constant inputs fold at load time to the same values."""
    inputs = _conv_inputs(U8, I8, U8, 4, 5, 1, per_channel=True, bias=True)
    want = run_both("QLinearConv", inputs, fed=())
    graph = eqsat.load(
        model(
            [h.make_node("QLinearConv", list(inputs), ["y"])],
            [],
            [onnx.ValueInfoProto(name="y")],
            [init(n, a) for n, a in inputs.items()],
        )
    )
    assert not graph.nodes
    np.testing.assert_array_equal(eqsat.compile(graph, "numpy").run({})["y"], want)


# ---------------------------------------------------------------------------------- bad inputs
def _graph(op: str, arrays: dict[str, np.ndarray], **attrs: Any) -> None:
    g = eqsat.Graph()
    values = [
        g.constant(a, n) if n != "x" else g.input(n, a.shape, a.dtype) for n, a in arrays.items()
    ]
    g.op(op, *values, **attrs)


def test_qlinearconv_refuses_bad_inputs() -> None:
    good = _conv_inputs(U8, I8, U8, 4, 5, 1, per_channel=True, bias=True)
    cases = [
        ({"xz": np.array(3, np.int8)}, "x_zero_point has dtype int8, but x is uint8"),
        ({"wz": np.zeros((4,), np.int8)}, r"w_zero_point must be per tensor or per output channel"),
        ({"ws": np.ones((2, 5), np.float32)}, "w_scale must be per tensor"),
        ({"xs": np.ones((2,), np.float32)}, r"x_scale must be per tensor"),
        ({"yz": np.zeros((5,), np.uint8)}, r"y_zero_point must be per tensor"),
        ({"ys": np.array(1.0)}, "y_scale must be one of"),
        ({"x": good["x"].astype(np.int32)}, "x must be one of"),
        ({"b": np.zeros((5,), np.float32)}, "B must be one of"),
        ({"b": np.zeros((4,), np.int32)}, r"bias B must have shape \(5,\)"),
        ({"w": good["w"][:, :3]}, "channel mismatch"),
    ]
    for change, message in cases:
        with pytest.raises(ShapeError, match=message) as info:
            _graph("QLinearConv", {**good, **change})
        assert "QLinearConv" in str(info.value)


def test_qlinearmatmul_refuses_bad_inputs() -> None:
    good = {"x": _ints(U8, (3, 4)), "as": _scale(), "az": _ints(U8, ()), "b": _ints(I8, (4, 2)),
            "bs": _scale(), "bz": np.zeros((), I8), "ys": _scale(), "yz": _ints(U8, ())}  # fmt: skip
    cases = [
        ({"bz": np.zeros((), U8)}, "b_zero_point has dtype uint8, but b is int8"),
        (
            {"az": np.zeros((4,), U8)},
            r"a_zero_point must be per tensor or per row",
        ),
        ({"bz": np.zeros((4, 2), I8)}, r"b_zero_point must be per tensor or per column"),
        ({"bs": _scale((), dtype=np.float16)}, "must share one dtype"),
        ({"ys": _scale((2,))}, r"y_scale must be per tensor"),
        ({"b": _ints(I8, (3, 2))}, "inner dimensions differ"),
    ]
    for change, message in cases:
        with pytest.raises(ShapeError, match=message) as info:
            _graph("QLinearMatMul", {**good, **change})
        assert "QLinearMatMul" in str(info.value)


def test_quantized_chain_optimizes_and_matches_onnxruntime() -> None:
    """QuantizeLinear -> QLinearConv -> depthwise QLinearConv -> QLinearMatMul -> DequantizeLinear,
    the shape of a zoo int8 model, through the optimizer and the cpu target."""
    params = {
        "xs": np.array(0.02, np.float32), "xz": np.array(128, U8),
        "w1": _ints(I8, (8, 3, 3, 3), bits=7), "w1s": _scale((8,)), "w1z": np.zeros(8, I8),
        "ys": np.array(0.05, np.float32), "yz": np.array(100, U8),
        "b1": RNG.integers(-1000, 1000, 8).astype(np.int32),
        "w2": _ints(I8, (8, 1, 3, 3), bits=7), "w2s": _scale((8,)), "w2z": np.zeros(8, I8),
        "ys2": np.array(0.04, np.float32), "yz2": np.array(90, U8),
        "m": _ints(I8, (6, 5), bits=7), "ms": np.array(0.01, np.float32), "mz": np.zeros((), I8),
        "ys3": np.array(0.1, np.float32), "yz3": np.array(120, U8),
    }  # fmt: skip
    nodes = [
        h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q"]),
        h.make_node("QLinearConv", ["q", "xs", "xz", "w1", "w1s", "w1z", "ys", "yz", "b1"], ["c1"],
                    pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("QLinearConv", ["c1", "ys", "yz", "w2", "w2s", "w2z", "ys2", "yz2"], ["c2"],
                    pads=[1, 1, 1, 1], group=8),
        h.make_node("QLinearMatMul", ["c2", "ys2", "yz2", "m", "ms", "mz", "ys3", "yz3"], ["c3"]),
        h.make_node("DequantizeLinear", ["c3", "ys3", "yz3"], ["y"]),
    ]  # fmt: skip
    proto = model(
        nodes,
        [vi("x", [1, 3, 12, 12])],
        [onnx.ValueInfoProto(name="y")],
        [init(n, a) for n, a in params.items()],
    )
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    (want,) = ort_run(proto, {"x": x})
    result = eqsat.optimize(proto, ["algebraic", "fusion"], target="cpu")
    got = eqsat.compile(result.graph, target="cpu").run({"x": x})["y"]
    np.testing.assert_array_equal(got, want)
