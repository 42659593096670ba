"""Channels-last ops against the NCHW references; layout rules checked on hand-built graphs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from eqsat.rules import layout

from eqsat import ops
from eqsat.errors import ShapeError
from eqsat.ir import Graph, Value
from eqsat.ops import OPS, Cost
from eqsat.ops import layout as L
from eqsat.optimize import compare, optimize
from eqsat.rulecheck import RuleCheck, _check_instance, check_rule

RNG = np.random.default_rng(0)
RULES = {r.name: r for f in layout.FAMILY_NAMES.values() for r in f.rules}


def _rand(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def _eval(op: str, arrays: list[Any], **attrs: Any) -> np.ndarray:
    g = Graph("t")
    ins = [None if a is None else g.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    out = g.op(op, *ins, **attrs)
    return OPS[op].evaluate(out.producer, arrays)[0]  # type: ignore[union-attr]


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(a, L.to_last(a.ndim)))


def _nchw(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, L.to_first(a.ndim))


# ------------------------------------------------------------------ the ops
@pytest.mark.parametrize(
    ("xs", "ws", "attrs"),
    [
        ((2, 6, 9, 8), (4, 6, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
        ((1, 6, 7, 7), (6, 1, 3, 3), {"group": 6, "dilations": [2, 1], "auto_pad": "SAME_UPPER"}),
        ((1, 4, 5, 5), (6, 2, 1, 1), {"group": 2}),
        ((2, 3, 10), (5, 3, 4), {"strides": [3]}),
        ((1, 2, 4, 5, 3), (3, 2, 2, 2, 1), {"pads": [1, 0, 0, 0, 1, 0]}),
    ],
)
def test_conv_nhwc_matches_conv(xs: tuple, ws: tuple, attrs: dict) -> None:
    x, w, b = _rand(*xs), _rand(*ws), _rand(ws[0])
    want = _eval("Conv", [x, w, b], **attrs)
    w_hwio = np.ascontiguousarray(np.transpose(w, L.w_to_hwio(w.ndim)))
    got = _eval("ConvNHWC", [_nhwc(x), w_hwio, b], **attrs)
    np.testing.assert_array_equal(_nchw(got), want)
    got = _eval("ConvNHWC", [_nhwc(x), w_hwio], **attrs)
    np.testing.assert_array_equal(_nchw(got), _eval("Conv", [x, w], **attrs))


def test_fused_conv_nhwc_epilogue_and_pools() -> None:
    x, w, b, r = _rand(1, 4, 6, 6), _rand(5, 4, 3, 3), _rand(5), _rand(1, 6, 6, 5)
    w_hwio = np.transpose(w, L.w_to_hwio(4))
    got = _eval(
        "FusedConvNHWC", [_nhwc(x), w_hwio, b, r], pads=[1, 1, 1, 1], epilogue="max({0} + {1}, 0)"
    )
    want = np.maximum(_nhwc(_eval("Conv", [x, w, b], pads=[1, 1, 1, 1])) + r, 0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1}
    y = _eval("MaxPoolNHWC", [_nhwc(x)], **attrs)
    np.testing.assert_array_equal(_nchw(y), _eval("MaxPool", [x], **attrs))
    y = _eval("AveragePoolNHWC", [_nhwc(x)], count_include_pad=1, **attrs)
    np.testing.assert_array_equal(_nchw(y), _eval("AveragePool", [x], count_include_pad=1, **attrs))


def test_nhwc_shape_errors_and_costs() -> None:
    g = Graph("t")
    with pytest.raises(ShapeError, match="rank 3-5"):
        g.op("ConvNHWC", g.input("x", (4, 4)), g.constant(_rand(1, 4, 4)))
    with pytest.raises(ShapeError, match="channel mismatch"):
        g.op("ConvNHWC", g.input("y", (1, 5, 5, 3)), g.constant(_rand(3, 3, 2, 4)))
    x, w = g.input("z", (1, 8, 8, 4)), g.constant(_rand(3, 3, 4, 6))
    y = g.op("ConvNHWC", x, w, pads=[1, 1, 1, 1])
    assert y.shape == (1, 8, 8, 6)
    xc, wc = Value("xc", (1, 4, 8, 8), x.dtype), Value("wc", (6, 4, 3, 3), x.dtype)
    yc = Value("yc", (1, 6, 8, 8), x.dtype)
    attrs = y.producer.attrs  # type: ignore[union-attr]
    assert OPS["ConvNHWC"].cost([x, w], [y], attrs) == OPS["Conv"].cost([xc, wc], [yc], attrs)


# ------------------------------------------------------------------ rules, one at a time
def _assert_sound(name: str, g: Graph) -> None:
    check = RuleCheck(name, "")
    assert _check_instance(RULES[name], g, check) == "", name
    assert check.fired == 1 and check.compared >= 1, (name, check)


def _graph(shape: tuple[int, ...], build: Callable[[Graph, Value], Value]) -> Graph:
    g = Graph("rule")
    g.output(build(g, g.input("x", shape)))
    return g


def _t(g: Graph, x: Value, perm: list[int]) -> Value:
    return g.op("Transpose", x, perm=perm)


def _axes(g: Graph, *axes: int) -> Value:
    return g.constant(np.array(axes, np.int64))


P4 = [0, 3, 1, 2]
HAND_BUILT = {
    "layout-transpose/cancel-4": lambda g, x: _t(g, _t(g, x, [0, 2, 3, 1]), P4),
    "layout-transpose/cancel-3": lambda g, x: _t(
        g, _t(g, g.op("Reshape", x, _axes(g, 6, 4, 5)), [2, 0, 1]), [1, 2, 0]
    ),
    "layout-transpose/sink-Add-left-4-broadcast": lambda g, x: g.op(
        "Add", _t(g, x, P4), g.constant(_rand(5, 1, 1))
    ),
    "layout-transpose/sink-Mul-right-4": lambda g, x: g.op(
        "Mul", g.input("r", (2, 5, 3, 4)), _t(g, x, P4)
    ),
    "layout-transpose/sink-Sub-right-scalar": lambda g, x: g.op(
        "Sub", g.constant(np.float32(2)), _t(g, x, P4)
    ),
    "layout-transpose/sink-Clip-min-max": lambda g, x: g.op(
        "Clip", _t(g, x, P4), g.constant(np.float32(0)), g.constant(np.float32(0.5))
    ),
    "layout-transpose/sink-ReduceMean-keepdims": lambda g, x: g.op(
        "ReduceMean", _t(g, x, P4), _axes(g, -1)
    ),
    "layout-transpose/sink-ReduceSum-4": lambda g, x: g.op(
        "ReduceSum", _t(g, x, P4), _axes(g, 1), keepdims=0
    ),
    "layout-transpose/sink-ReduceMax-3": lambda g, x: g.op(
        "ReduceMax",
        _t(g, g.op("Reshape", x, _axes(g, 2, 12, 5)), [2, 0, 1]),
        _axes(g, 1),
        keepdims=0,
    ),
    "layout-transpose/sink-Softmax": lambda g, x: g.op("Softmax", _t(g, x, P4), axis=1),
    "layout-transpose/sink-ArgMax": lambda g, x: g.op("ArgMax", _t(g, x, P4), axis=-2),
    "layout-transpose/sink-Concat-2": lambda g, x: g.op(
        "Concat", _t(g, x, P4), _t(g, g.input("r", (2, 3, 4, 5)), P4), axis=-3
    ),
    "layout-transpose/sink-Split-2": lambda g, x: g.op(
        "Split", _t(g, x, P4), _axes(g, 1, 2), axis=2, outputs=2
    )[1],
    "layout-transpose/sink-Pad-uniform": lambda g, x: g.op(
        "Pad", _t(g, x, P4), _axes(g, *[1] * 8), g.constant(np.float32(0.5))
    ),
    "layout-transpose/reshape-unit-transpose-4": lambda g, x: g.op(
        "Reshape", _t(g, g.op("ReduceMean", x, _axes(g, 1, 2)), [0, 3, 1, 2]), _axes(g, 2, 5)
    ),
    "layout-transpose/flatten-unit-transpose-4": lambda g, x: g.op(
        "Flatten", _t(g, g.op("ReduceMax", x, _axes(g, 1, 2)), [0, 3, 1, 2])
    ),
    "layout-nhwc/conv-nhwc-2d-bias": lambda g, x: g.op(
        "Conv", x, g.constant(_rand(6, 3, 3, 3)), g.constant(_rand(6)), strides=[2, 1]
    ),
    "layout-nhwc/maxpool-nhwc-2d": lambda g, x: g.op("MaxPool", x, kernel_shape=[2, 2]),
    "layout-nhwc/averagepool-nhwc-2d": lambda g, x: g.op(
        "AveragePool", x, kernel_shape=[3, 3], pads=[1, 1, 1, 1]
    ),
    "layout-nhwc/batchnorm-nhwc-2d": lambda g, x: g.op(
        "BatchNormalization",
        x,
        *(g.constant(_rand(3)) for _ in range(3)),
        g.constant(np.abs(_rand(3)) + 0.1),
        epsilon=1e-3,
    ),
    "layout-nhwc/conv-nhwc-epilogue": lambda g, x: g.op(
        "FusedElementwise",
        g.op("ConvNHWC", _t(g, x, [0, 2, 3, 1]), g.constant(_rand(1, 1, 3, 4))),
        g.constant(_rand(4)),
        body="max({0} + {1}, 0)",
        dtype="float32",
    ),
}


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_layout_rule_is_sound_on_a_hand_built_graph(name: str) -> None:
    # Rules whose left side check-rules cannot instantiate at random (attributes without
    # defaults, constants of matching shapes, axes inputs): the same check, on chosen graphs.
    _assert_sound(name, _graph((2, 3, 4, 5), HAND_BUILT[name]))


@pytest.mark.parametrize(
    "name",
    [
        "layout-nhwc/conv-nhwc-1d",
        "layout-nhwc/globalaveragepool-nhwc-2d",
        "layout-transpose/cancel-2",
        "layout-transpose/sink-Relu",
        "layout-transpose/sink-Cast",
        "layout-transpose/sink-Add-both",
        "layout-transpose/sink-Div-left-scalar",
    ],
)
def test_layout_rules_pass_check_rules(name: str) -> None:
    assert check_rule(RULES[name], samples=100).status == "ok"


# ------------------------------------------------------------------ whole graphs
@contextlib.contextmanager
def nhwc_cheaper(factor: float = 0.5) -> Iterator[None]:
    """Pretend the channels-last kernels are faster, so extraction takes them."""
    saved = {name: OPS[name] for name in L.LAYOUT_OPS}

    def cheaper(cost: Callable[..., Cost]) -> Callable[..., Cost]:
        def scaled(*args: Any) -> Cost:
            c = cost(*args)
            return Cost(c.flops * factor, c.bytes_read * factor, c.bytes_written * factor)

        return scaled

    try:
        for name, opdef in saved.items():
            ops.OPS[name] = dataclasses.replace(opdef, cost=cheaper(opdef.cost))
        yield
    finally:
        ops.OPS.update(saved)


def _conv_net() -> Graph:
    # Big enough that the convs dominate the cost (not the per-kernel launch).
    g = Graph("convnet")
    x = g.input("x", (1, 16, 24, 24))
    c = g.constant
    y = g.op("Conv", x, c(_rand(32, 16, 3, 3)), c(_rand(32)), pads=[1, 1, 1, 1])
    params = [_rand(32), _rand(32), _rand(32), np.abs(_rand(32)) + 0.5]
    y = g.op("BatchNormalization", y, *map(c, params))
    y = g.op("MaxPool", g.op("Relu", y), kernel_shape=[2, 2], strides=[2, 2])
    y = g.op("Conv", y, c(_rand(32, 32, 1, 1)))
    y = g.op("Add", y, c(_rand(32, 1, 1)))
    g.output(g.op("Flatten", g.op("GlobalAveragePool", y)), "y")
    return g


FAMILIES = [layout.nhwc, layout.transpose]
# These tests check what the rules reach, not the time limit. In one CI run on a heavily loaded
# machine three of them found a conv region left in NCHW; they pass alone and in the full suite
# otherwise, and the default 10 s per stage cutting exploration short is the likely cause.
NO_TIME_LIMIT = {"seconds": 600.0}


def test_layout_keeps_nchw_when_nhwc_costs_the_same() -> None:
    g = _conv_net()
    result = optimize(g, rules=FAMILIES, target="cpu", verify=True, limits=NO_TIME_LIMIT)
    assert result.report.verified
    assert result.report.matches.get("layout-nhwc/conv-nhwc-2d", 0) >= 1
    assert not set(result.graph.op_counts()) & L.LAYOUT_OPS


def test_nhwc_region_has_one_conversion_at_its_border() -> None:
    g = _conv_net()
    with nhwc_cheaper():
        result = optimize(g, rules=FAMILIES, target="cpu", verify=True, limits=NO_TIME_LIMIT)
    counts = result.graph.op_counts()
    assert result.report.verified and not result.report.kept_input
    assert counts.get("ConvNHWC") == 2 and counts.get("MaxPoolNHWC") == 1, counts
    assert counts.get("Transpose") == 1, counts  # the input; the output is [N, C] after Flatten
    assert "Conv" not in counts and "BatchNormalization" not in counts, counts


def test_nhwc_with_fusion_forms_fused_conv_nhwc() -> None:
    g = _conv_net()
    with nhwc_cheaper():
        result = optimize(
            g, rules=["algebraic", "fusion-elementwise", "fusion-epilogue", *FAMILIES],
            target="cpu", verify=True, limits=NO_TIME_LIMIT,
        )  # fmt: skip
    counts = result.graph.op_counts()
    assert result.report.verified and counts.get("FusedConvNHWC") == 2, counts
    assert result.report.kernels_after < result.report.kernels_before


def test_nhwc_graph_exports_in_the_eqsat_domain() -> None:
    import onnx

    from eqsat.onnx_io import load

    g = _conv_net()
    with nhwc_cheaper():
        result = optimize(
            g, rules=["algebraic", "fusion-elementwise", "fusion-epilogue", *FAMILIES],
            target="cpu", limits=NO_TIME_LIMIT,
        )  # fmt: skip
    assert result.report.fused.get("FusedConvNHWC") == 2, result.report.fused
    model = result.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    domains = {n.op_type: n.domain for n in model.graph.node}
    assert domains["FusedConvNHWC"] == "eqsat" and domains["MaxPoolNHWC"] == "eqsat", domains
    assert domains["Transpose"] == ""
    back = load(model)  # eqsat reads its own domain back
    assert back.op_counts() == result.graph.op_counts()
    assert compare(g, back)[0]


def test_transposes_cancel_and_sink_in_a_transpose_chain() -> None:
    # What exporters leave behind: NCHW -> NHWC -> (elementwise, reduction) -> NCHW.
    g = Graph("chain")
    x = g.input("x", (2, 3, 4, 5))
    t = _t(g, x, [0, 2, 3, 1])
    t = g.op("Sigmoid", g.op("Mul", t, g.constant(_rand(3))))
    t = g.op("ReduceMean", t, _axes(g, 2), keepdims=1)
    g.output(_t(g, t, P4), "y")
    result = optimize(g, rules=FAMILIES, target="cpu", verify=True, limits=NO_TIME_LIMIT)
    assert result.report.verified
    assert "Transpose" not in result.graph.op_counts(), result.graph.summary()


def test_zoo_resnet_block_in_nhwc_matches_reference() -> None:
    from bench import models as zoo
    from eqsat.onnx_io import load

    entry = zoo.get("resnet_block")
    g = load(entry.model(), input_shapes=entry.input_shapes)
    with nhwc_cheaper():
        result = optimize(g, rules=["fusion-bn", *FAMILIES], target="cpu", limits=NO_TIME_LIMIT)
    counts = result.graph.op_counts()
    assert counts.get("ConvNHWC") == 2 and "Conv" not in counts, counts
    assert counts.get("Transpose") == 2, counts  # in and out of the block
    assert compare(g, result.graph)[0]
