"""The cpu target's window kernels against the numpy reference: generated max pools (exact,
NaN included, every padding mode, ceil_mode, dilations, float64), the generic fallback for wide
windows, average pools, GlobalAveragePool and the generated depthwise convs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import codegen, cpu, cpu_depthwise

import eqsat
from tests.cpu_testing import record_pool_maps

F32 = np.float32


def _run(graph: eqsat.Graph, feeds: dict[str, np.ndarray]) -> tuple[Any, Any, eqsat.Executable]:
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    return want, exe.run(feeds), exe


MAX_POOLS = [
    ((1, 3, 16, 16), {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 3, 15, 17), {"kernel_shape": [2, 3], "auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    ((2, 4, 10, 10), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}),
    ((1, 2, 13, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (
        (1, 2, 9, 12),
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1},
    ),
    ((1, 2, 12, 12), {"kernel_shape": [3, 2], "strides": [3, 2], "dilations": [2, 3]}),
    # rows split into column phases: windows wider than the stride
    ((1, 2, 17, 19), {"kernel_shape": [5, 5], "strides": [2, 2], "pads": [2, 2, 2, 2]}),
    ((1, 2, 14, 16), {"kernel_shape": [3, 4], "strides": [3, 3], "pads": [0, 1, 0, 2]}),
    ((1, 1, 7, 9), {"kernel_shape": [7, 9], "auto_pad": "VALID"}),
    ((1, 2, 8, 8), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [0, 2, 1, 0]}),
    ((3, 1, 5, 6), {"kernel_shape": [1, 4], "strides": [1, 4], "ceil_mode": 1}),
    # 1-D pools (an audio net's Conv1d stack), run as planes one row high:
    ((1, 4, 4001), {"kernel_shape": [4], "strides": [4]}),
    ((2, 3, 50), {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1}),
    ((1, 2, 31), {"kernel_shape": [3], "dilations": [2], "auto_pad": "SAME_UPPER"}),
]


# float64 on two geometries only: each (geometry, dtype) is a kernel compiled on a cold cache.
@pytest.mark.parametrize(
    ("shape", "attrs", "dtype"),
    [(shape, attrs, np.float32) for shape, attrs in MAX_POOLS]
    + [(shape, attrs, np.float64) for shape, attrs in MAX_POOLS[2:4]],
)
def test_max_pool_exact(shape: tuple[int, ...], attrs: dict[str, Any], dtype: type) -> None:
    rng = np.random.default_rng(sum(shape))
    g = eqsat.Graph("maxpool")
    x = g.input("x", shape, np.dtype(dtype))
    g.output(g.op("MaxPool", x, **attrs), "y")
    data = rng.standard_normal(shape).astype(dtype)
    data.reshape(-1)[:: max(1, data.size // 5)] = np.nan  # NaN propagates through a window
    data.reshape(-1)[1::7] = -np.inf
    want, got, exe = _run(g, {"x": data})
    np.testing.assert_array_equal(got["y"], want["y"])
    assert exe.report["reference_ops"] == {}


@pytest.mark.parametrize(
    ("shape", "attrs", "kind"),
    [
        # Small output planes: the depthwise kernels' channel lanes in their max mode.
        ((1, 40, 9, 9), {"kernel_shape": [3, 3], "strides": [2, 2]}, "depthwise"),
        ((2, 20, 7, 7), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}, "depthwise"),
        ((1, 9, 11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, "depthwise"),
        # Bigger ones keep the pool's row passes.
        ((1, 3, 41, 41), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "kernel"),
    ],
    ids=["stride-2", "sppf-5x5", "ceil", "big-planes"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_max_pool_route(shape: tuple, attrs: dict, kind: str, threads: int) -> None:
    rng = np.random.default_rng(3)
    g = eqsat.Graph("maxpool")
    x = g.input("x", shape)
    g.output(g.op("MaxPool", x, **attrs), "y")
    data = rng.standard_normal(shape).astype(F32)
    data.reshape(-1)[::37] = np.nan
    want = eqsat.compile(g, target="numpy").run({"x": data})
    exe = cpu.compile(g, threads=threads)
    assert exe.report["steps"].get(kind) == 1
    np.testing.assert_array_equal(exe.run({"x": data})["y"], want["y"])


def test_max_pool_threads_match(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two threads the planes split into (image, channel block) chunks: same numbers."""
    monkeypatch.setattr(cpu, "PARALLEL_ELEMENTS", 1)
    monkeypatch.setattr(cpu, "GRAIN_ELEMENTS", 1)
    sizes = record_pool_maps(monkeypatch)
    g = eqsat.Graph("maxpool_threads")
    x = g.input("x", (2, 5, 9, 9))
    g.output(g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), "y")
    feeds = {"x": rng.standard_normal((2, 5, 9, 9)).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)
    got = cpu.compile(g, threads=2).run(feeds)
    np.testing.assert_array_equal(got["y"], want["y"])
    assert sizes and max(sizes) > 1


def test_max_pool_chain_sppf(rng: np.random.Generator) -> None:
    """YOLO's SPPF: three chained 5x5 stride-1 pools concatenated with their input."""
    g = eqsat.Graph("sppf")
    x = g.input("x", (1, 8, 10, 10))
    parts = [x]
    for _ in range(3):
        parts.append(g.op("MaxPool", parts[-1], kernel_shape=[5, 5], pads=[2, 2, 2, 2]))
    g.output(g.op("Concat", *parts, axis=1), "y")
    want, got, _ = _run(g, {"x": rng.standard_normal((1, 8, 10, 10)).astype(F32)})
    np.testing.assert_array_equal(got["y"], want["y"])


def test_max_pool_wide_window_falls_back(rng: np.random.Generator) -> None:
    wide = cpu_depthwise.MAX_POOL_TAPS + 1
    with pytest.raises(codegen.Unsupported):
        cpu_depthwise.max_pool_source(np.dtype(F32), (1, wide), (1, 1), (1, 1), (0, 0))
    g = eqsat.Graph("wide")
    x = g.input("x", (1, 2, 3, wide + 4))
    g.output(g.op("MaxPool", x, kernel_shape=[2, wide], pads=[1, 1, 0, 2]), "y")
    want, got, exe = _run(g, {"x": rng.standard_normal((1, 2, 3, wide + 4)).astype(F32)})
    np.testing.assert_array_equal(got["y"], want["y"])
    assert exe.report["reference_ops"] == {}


@pytest.mark.parametrize(
    ("shape", "attrs", "whole"),
    [
        ((16, 10, 49), {"kernel_shape": [49]}, True),  # a text CNN's max over time
        ((2, 3, 5, 7), {"kernel_shape": [5, 8], "pads": [0, 0, 0, 1]}, True),
        ((2, 3, 6, 7), {"kernel_shape": [6, 7], "strides": [4, 4], "ceil_mode": 1}, True),
        ((1, 2, 9), {"kernel_shape": [9], "pads": [1, 0]}, False),  # the window starts before
        ((1, 2, 9), {"kernel_shape": [5], "dilations": [2]}, False),
    ],
)
def test_max_pool_over_whole_planes_is_a_row_max(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, shape: tuple, attrs: dict,
    whole: bool,
) -> None:  # fmt: skip
    from eqsat.lowering import cpu_moves

    calls: list[str] = []
    real = cpu_moves.global_max_pool
    monkeypatch.setattr(
        cpu_moves,
        "global_max_pool",
        lambda lowering, node: calls.append(node.op) or real(lowering, node),
    )
    g = eqsat.Graph("whole")
    x = g.input("x", shape)
    g.output(g.op("MaxPool", x, **attrs), "y")
    data = rng.standard_normal(shape).astype(F32)
    data.reshape(-1)[::23] = np.nan
    want, got, exe = _run(g, {"x": data})
    np.testing.assert_array_equal(got["y"], want["y"])
    assert exe.report["reference_ops"] == {}
    assert bool(calls) == whole


def test_max_pool_source_unrolls_taps() -> None:
    text = cpu_depthwise.max_pool_source(np.dtype(F32), (3, 3), (2, 2), (1, 1), (1, 1))
    # stride 2, 3 columns: the row in two column phases, tap 2 the even phase one column on
    assert "f0[ow + 1]" in text and "r2 = rows[oh * 2 + 2]" in text
    assert "for a in" not in text  # no runtime tap loop
    text = cpu_depthwise.max_pool_source(np.dtype(F32), (2, 2), (2, 2), (1, 1), (0, 0))
    assert "p[ow * 2 + 1]" in text and "phases[" not in text.split("def kernel")[0]


@pytest.mark.parametrize("include", [0, 1])
def test_average_pool(rng: np.random.Generator, include: int) -> None:
    g = eqsat.Graph("avg")
    x = g.input("x", (2, 3, 9, 11))
    attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]}
    g.output(g.op("AveragePool", x, count_include_pad=include, ceil_mode=1, **attrs), "y")
    want, got, _ = _run(g, {"x": rng.standard_normal((2, 3, 9, 11)).astype(F32)})
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)


AVERAGE_GEOMETRIES = [
    ((1, 8, 3, 80), {"kernel_shape": [3, 2], "strides": [3, 2]}),  # ppocrv6_rec's head pool
    ((1, 3, 12, 13), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ((2, 2, 11, 10), {"kernel_shape": [2, 3], "strides": [2, 1], "dilations": [2, 2]}),
    ((1, 2, 9, 20), {"kernel_shape": [2, 18], "strides": [1, 1]}),  # too wide: generic kernel
    ((2, 3, 41), {"kernel_shape": [3], "strides": [2], "pads": [1, 2]}),  # 1-D
    ((1, 2, 40), {"kernel_shape": [20], "strides": [1]}),  # 1-D, too wide: generic kernel
]


@pytest.mark.parametrize(("shape", "attrs"), AVERAGE_GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("include", [0, 1])
def test_average_pool_generated(
    shape: tuple[int, ...], attrs: dict[str, Any], dtype: type, include: int
) -> None:
    rng = np.random.default_rng(5)
    g = eqsat.Graph("avg")
    x = g.input("x", shape, dtype)
    g.output(g.op("AveragePool", x, count_include_pad=include, **attrs), "y")
    want, got, exe = _run(g, {"x": rng.standard_normal(shape).astype(dtype)})
    assert got["y"].dtype == want["y"].dtype
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
    assert exe.report["reference_ops"] == {}


@pytest.mark.parametrize(
    ("shape", "attrs", "include", "kind"),
    [
        # One divisor for every window: the depthwise kernels, unit taps times 1/9.
        ((1, 40, 8, 8), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 1, "depthwise"),
        ((2, 3, 20, 22), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 1, "depthwise"),
        ((1, 4, 12, 12), {"kernel_shape": [2, 2], "strides": [2, 2]}, 0, "depthwise"),
        ((1, 2, 5, 140), {"kernel_shape": [3, 3], "strides": [1, 2]}, 0, "depthwise"),
        # Padding not counted: the divisor shrinks at the borders; on small planes the channel
        # lanes, then a pass of the divisors per position (PoolFormer), else the pool's kernel.
        ((1, 4, 12, 12), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 0, "depthwise"),
        ((1, 3, 45, 45), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 0, "kernel"),
        # ceil_mode's last windows run past the padding: fewer terms there too.
        ((1, 2, 9, 9), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, 1, "depthwise"),
        (
            (1, 3, 101, 101),
            {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
            1,
            "kernel",
        ),
    ],
    ids=[
        "channel-lanes",
        "planes",
        "no-padding",
        "wide-rows",
        "uncounted-pads",
        "uncounted-pads-big",
        "ceil",
        "ceil-big",
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_average_pool_routes(
    rng: np.random.Generator, shape: tuple, attrs: dict, include: int, kind: str, threads: int
) -> None:
    g = eqsat.Graph("avg")
    x = g.input("x", shape)
    g.output(g.op("AveragePool", x, count_include_pad=include, **attrs), "y")
    feeds = {"x": rng.standard_normal(shape).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = cpu.compile(g, threads=threads)
    assert exe.report["steps"].get(kind) == 1 and exe.report["reference_ops"] == {}
    np.testing.assert_allclose(exe.run(feeds)["y"], want["y"], rtol=1e-5, atol=1e-6)


def test_average_pool_source_unrolls_taps() -> None:
    text = cpu_depthwise.average_pool_source(np.dtype(F32), (3, 2), (3, 2), (1, 1), (0, 0))
    assert "m = p[ow * 2 + 0] + p[ow * 2 + 1]" in text and "m * inv[ow]" in text
    assert "-np.inf" not in text  # padding reads as zero


@pytest.mark.parametrize("shape", [(1, 5, 10, 10), (2, 3, 7, 9), (1, 4, 80, 80), (1, 6, 33)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_average_pool(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(len(shape))
    g = eqsat.Graph("gap")
    x = g.input("x", shape, np.dtype(dtype))
    g.output(g.op("GlobalAveragePool", x), "y")
    data = (rng.standard_normal(shape) + 3.0).astype(dtype)
    want, got, exe = _run(g, {"x": data})
    assert got["y"].dtype == want["y"].dtype
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert exe.report["reference_ops"] == {}


def test_fold_channel_add() -> None:
    fold = cpu_depthwise.fold_channel_add
    bias = np.arange(3, dtype=F32)
    channel = np.full((1, 3, 1, 1), 2.0, F32)
    expr, folded = fold("max(({0} + {2}), (0.0))", [None, channel], bias)
    assert expr == "max({0}, (0.0))"
    np.testing.assert_array_equal(folded, bias + 2)
    assert fold("({1} + {0})", [channel.reshape(3, 1, 1)], bias)[0] == "{0}"
    for epilogue, operands in [
        ("({0} + {1})", [np.ones(3, F32)]),  # (3,) broadcasts along W, not channels
        ("({0} + {1})", [None]),  # not a constant
        ("({0} * {1})", [channel]),
        ("(({0} + {1}) * {0})", [channel]),  # {0} used twice
    ]:
        assert fold(epilogue, operands, bias) == (epilogue, bias)


@pytest.mark.parametrize("kernel", [3, 7])
def test_fused_depthwise_channel_add(rng: np.random.Generator, kernel: int) -> None:
    """ppocr's depthwise convs: no bias input, the bias added by the epilogue per channel."""
    g = eqsat.Graph("dw")
    x = g.input("x", (1, 6, 12, 10))
    w = g.constant(rng.standard_normal((6, 1, kernel, kernel)).astype(F32))
    add = g.constant(rng.standard_normal((1, 6, 1, 1)).astype(F32))
    pads = [kernel // 2] * 4
    y = g.op(
        "FusedConv", x, w, None, add, group=6, pads=pads, num_base_inputs=3,
        epilogue="({0} + {1})",
    )  # fmt: skip
    g.output(y, "y")
    feeds = {"x": rng.standard_normal((1, 6, 12, 10)).astype(F32)}
    want, got, exe = _run(g, feeds)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-5)
    assert exe.report["reference_ops"] == {}


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("threads", [1, 2])
def test_small_integer_max_pool_is_compiled(dtype: type, threads: int) -> None:
    """A quantized model's uint8/int8 MaxPool runs the float32 kernel on an exact copy (it ran
    on the numpy reference)."""
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    g = eqsat.Graph("qpool")
    x = g.input("x", (1, 5, 13, 12), np.dtype(dtype))
    g.output(g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), "y")
    data = rng.integers(info.min, info.max, (1, 5, 13, 12), endpoint=True).astype(dtype)
    want = eqsat.compile(g, target="numpy").run({"x": data})
    exe = cpu.compile(g, threads=threads)
    assert exe.report["reference_ops"] == {}
    got = exe.run({"x": data})["y"]
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, want["y"])
