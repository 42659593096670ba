"""The CPU target: kernel generation, BLAS/conv steps, memory plan, cache.

Every compiled graph is checked against the numpy reference target on random inputs. Shapes are
tiny so that Numba compilation (cached on disk after the first run) dominates the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from eqsat.lowering import codegen, kernel_cache

import eqsat
from tests.cpu_testing import matches_numpy, take_winograd

F32 = np.float32


def _check(graph: eqsat.Graph, rng: np.random.Generator, rtol: float = 1e-5) -> eqsat.Executable:
    return matches_numpy(graph, rng, rtol=rtol, atol=1e-5)


# ------------------------------------------------------------------------- kernel generation
def test_broadcast_plan_collapses_levels() -> None:
    plan = codegen.plan_broadcast((2, 8, 5, 5), [(2, 8, 5, 5), (8, 1, 1)])
    assert plan.shape == (2, 8, 25)
    assert plan.spans == ((True, True, True), (False, True, False))
    flat = codegen.plan_broadcast((4, 6), [(4, 6), ()])
    assert flat.shape == (24,) and flat.spans == ((True,), (False,))
    assert codegen.plan_broadcast((), [()]).shape == (1,)


def test_translate_uses_float32_literals_and_fast_math() -> None:
    code, constants = codegen.translate("(1 / (1 + exp(-{0})))", np.dtype(F32))
    assert "exp_f32" in code and set(constants.values()) == {1.0}
    assert codegen.translate("pow({0}, 2)", np.dtype(F32))[0] == "x0 * x0"
    with pytest.raises(codegen.Unsupported):
        codegen.translate("mod({0}, {1})", np.dtype(F32))
    with pytest.raises(codegen.Unsupported):
        codegen.kernel_source("mod({0}, {1})", [np.dtype(F32)] * 2, np.dtype(F32), (), False)


def test_division_by_a_literal_multiplies_by_its_reciprocal(rng: np.random.Generator) -> None:
    """x / c becomes x * (1 / c) where 1 / c is a normal number (within an ulp of the quotient,
    the same at zero, infinities and NaN); a variable, zero or subnormal divisor stays a
    division."""
    f32 = np.dtype(F32)
    code, constants = codegen.translate("({0} * min(max({0} / 6 + 0.5, 0), 1))", f32)
    assert "/" not in code and F32(constants["C0"]) == F32(1) / F32(6)
    assert codegen.translate("{0} / -4", f32) == ("x0 * C0", {"C0": -0.25})
    for kept in ("{0} / {1}", "{0} / 0", "{0} / 1e-40", "{0} / 3e38"):
        assert "/" in codegen.translate(kept, f32)[0], kept
    g = eqsat.Graph("hard-swish")
    x = g.input("x", (4, 64))
    six = g.constant(np.array(6, F32))
    g.output(
        g.op(
            "Mul", x, g.op("Div", g.op("Relu", g.op("Add", x, g.constant(np.array(3, F32)))), six)
        ),
        "y",
    )
    g.output(g.op("Div", x, g.constant(np.array(0, F32))), "by_zero")
    feeds = {"x": rng.standard_normal((4, 64)).astype(F32) * 4}
    feeds["x"][0, :4] = [0, np.inf, -np.inf, np.nan]
    got = eqsat.compile(g, target="cpu").run(feeds)
    want = eqsat.compile(g, target="numpy").run(feeds)
    np.testing.assert_array_max_ulp(got["y"], want["y"], maxulp=2)
    np.testing.assert_array_equal(got["by_zero"], want["by_zero"])


def test_elementwise_chain_with_broadcasting(rng: np.random.Generator) -> None:
    g = eqsat.Graph("chain")
    x = g.input("x", (2, 3, 4, 5))
    b = g.input("b", (3, 1, 1))
    bias = g.constant(rng.standard_normal((1, 5)).astype(F32), "bias")
    y = g.op("Sigmoid", g.op("Add", x, b))
    z = g.op("Where", g.op("Greater", y, g.constant(np.array(0.5, F32))), g.op("Tanh", x), bias)
    g.output(g.op("Clip", g.op("Mul", z, y), None, g.constant(np.array(0.3, F32))), "out")
    g.output(g.op("Erf", g.op("Div", x, b)), "erf")
    exe = _check(g, rng)
    assert set(exe.report["steps"]) <= {"kernel", "view"}
    assert exe.report["reference_ops"] == {}


def test_fused_elementwise_body(rng: np.random.Generator) -> None:
    pytest.importorskip("eqsat.ops.fused")
    g = eqsat.Graph("silu")
    x = g.input("x", (3, 16))
    r = g.input("r", (16,))
    body = "(({0} / (1 + exp(-{0}))) + max({1}, 0))"
    g.output(g.op("FusedElementwise", x, r, body=body, dtype="float32"), "y")
    _check(g, rng)


def test_unsupported_elementwise_falls_back(rng: np.random.Generator) -> None:
    # Float Mod (numpy's sign rules for floats) has no kernel; integer Mod has one.
    g = eqsat.Graph("float-mod")
    x = g.input("x", (4,), F32)
    g.output(g.op("Mod", x, g.constant(np.array([3], F32))), "y")
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"]["Mod"] == 1
    feeds = {"x": np.array([-7, 5, 9, 2], F32)}
    np.testing.assert_array_equal(exe.run(feeds)["y"], np.mod(feeds["x"], F32(3)))


# ------------------------------------------------------------------------- GEMM and conv
def test_gemm_and_matmul(rng: np.random.Generator) -> None:
    g = eqsat.Graph("gemm")
    a = g.input("a", (5, 7))
    w = g.constant(rng.standard_normal((6, 7)).astype(F32), "w")
    c = g.constant(rng.standard_normal((6,)).astype(F32), "c")
    y = g.op("Gemm", a, w, c, transB=1, alpha=0.5, beta=2.0)
    h = g.input("h", (2, 3, 6))
    m = g.op("MatMul", h, g.constant(rng.standard_normal((6, 4)).astype(F32)))
    g.output(g.op("Relu", y), "y")
    g.output(m, "m")
    g.output(g.op("Gemm", y, g.input("b", (6, 2)), g.input("c2", (1, 2)), beta=0.5), "z")
    exe = _check(g, rng)
    assert exe.report["steps"]["gemm"] == 3


@pytest.mark.parametrize(
    ("kernel", "attrs", "group", "channels"),
    [
        ((3, 3), {"pads": [1, 1, 1, 1]}, 1, 4),
        ((3, 3), {"strides": [2, 2], "pads": [0, 1, 2, 0], "dilations": [1, 2]}, 1, 4),
        ((1, 1), {}, 1, 4),
        ((3, 3), {"pads": [1, 1, 1, 1]}, 2, 4),
        ((3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 6, 6),
        ((5, 5), {"auto_pad": "SAME_UPPER"}, 6, 6),
    ],
    ids=["3x3", "strided-dilated", "1x1", "grouped", "depthwise-s2", "depthwise-5x5"],
)
def test_conv(
    rng: np.random.Generator, kernel: tuple, attrs: dict, group: int, channels: int
) -> None:
    g = eqsat.Graph("conv")
    x = g.input("x", (2, channels, 9, 8))
    m = channels if group == channels else 6
    w = g.constant(rng.standard_normal((m, channels // group, *kernel)).astype(F32), "w")
    b = g.constant(rng.standard_normal((m,)).astype(F32), "b")
    y = g.op("Conv", x, w, b, group=group, **attrs)
    g.output(g.op("Relu", y), "y")
    exe = _check(g, rng, rtol=1e-4)
    assert exe.report["reference_ops"] == {}


def test_fused_conv_and_gemm_epilogues(rng: np.random.Generator) -> None:
    pytest.importorskip("eqsat.ops.fused")
    g = eqsat.Graph("fused")
    x = g.input("x", (1, 4, 6, 6))
    res = g.input("res", (1, 6, 6, 6))
    w = g.constant(rng.standard_normal((6, 4, 3, 3)).astype(F32), "w")
    b = g.constant(rng.standard_normal((6,)).astype(F32), "b")
    y = g.op(
        "FusedConv", x, w, b, res, pads=[1, 1, 1, 1], num_base_inputs=3,
        epilogue="max(({0} + {1}), 0)",
    )  # fmt: skip
    a = g.input("a", (3, 5))
    wm = g.constant(rng.standard_normal((5, 4)).astype(F32), "wm")
    z = g.op("FusedMatMul", a, wm, num_base_inputs=2, epilogue="({0} / (1 + exp(-{0})))")
    g.output(y, "y")
    g.output(z, "z")
    exe = _check(g, rng, rtol=1e-4)
    assert exe.report["reference_ops"] == {}


# ------------------------------------------------------------------------- runtime
def test_memory_plan_reuses_buffers_and_keeps_outputs(rng: np.random.Generator) -> None:
    g = eqsat.Graph("chain")
    x = g.input("x", (64, 64))
    y = x
    for _ in range(6):
        y = g.op("Tanh", g.op("Add", y, x))
    g.output(y, "y")
    exe = _check(g, rng)
    memory = exe.memory
    # Each kernel overwrites its dying input: one buffer for the whole chain, one fresh output.
    assert memory.pool_bytes == 64 * 64 * 4
    assert memory.fresh_bytes == 64 * 64 * 4
    assert memory.naive_bytes >= 12 * 64 * 64 * 4
    feeds = {"x": rng.standard_normal((64, 64)).astype(F32)}
    first = exe.run(feeds)["y"]
    kept = first.copy()
    exe.run({"x": feeds["x"] * 2})
    np.testing.assert_array_equal(first, kept)  # a later run never writes into a returned output


def test_outputs_never_alias_feeds_or_constants() -> None:
    g = eqsat.Graph("ids")
    x = g.input("x", (3,))
    g.output(g.op("Identity", x), "y")
    g.output(g.constant(np.ones(2, F32), "k"), "k")
    exe = eqsat.compile(g, target="cpu")
    feed = np.zeros(3, F32)
    out = exe.run({"x": feed})
    out["y"][0] = 5
    out["k"][0] = 5
    assert feed[0] == 0 and exe.run({"x": feed})["k"][0] == 1


def test_kernel_cache_is_keyed_by_source(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EQSAT_KERNEL_CACHE", str(tmp_path))
    source = "X = 1\n"
    module = kernel_cache.load(source)
    assert module.X == 1 and kernel_cache.load(source) is module
    files = list(tmp_path.glob("k_*.py"))
    assert [f.name for f in files] == [f"k_{kernel_cache.source_key(source)}.py"]
    assert kernel_cache.source_key("X = 2\n") != kernel_cache.source_key(source)


@pytest.mark.slow
def test_kernel_cache_survives_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # What the second process does is counted, not timed (bench/e2e.py reports the seconds).
    script = (
        "import json, eqsat\n"
        "from eqsat.lowering import kernel_cache\n"
        "g = eqsat.Graph('g'); x = g.input('x', (8,))\n"
        "g.output(g.op('Sigmoid', g.op('Mul', x, x)), 'y')\n"
        "eqsat.compile(g, target='cpu'); print(json.dumps(kernel_cache.compile_stats()))\n"
    )
    env = {**os.environ, "EQSAT_KERNEL_CACHE": str(tmp_path)}
    cold, warm = (
        json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                  text=True, check=True).stdout.strip().splitlines()[-1])
        for _ in range(2)
    )  # fmt: skip
    assert cold["compiled"] >= 1 and cold["modules"] >= 1
    assert warm["compiled"] == 0 and warm["cache_hits"] >= cold["compiled"]


@pytest.mark.parametrize(
    ("epilogue", "residual"),
    [("min(max({0}, {1}), {2})", False), ("max(({0} + {3}), 0)", True)],
    ids=["relu6-inlined", "residual"],
)
def test_fused_depthwise_epilogue(rng: np.random.Generator, epilogue: str, residual: bool) -> None:
    pytest.importorskip("eqsat.ops.fused")
    g = eqsat.Graph("dw")
    x = g.input("x", (1, 5, 7, 9))
    w = g.constant(rng.standard_normal((5, 1, 3, 3)).astype(F32), "w")
    b = g.constant(rng.standard_normal((5,)).astype(F32), "b")
    lo, hi = g.constant(np.array(0.0, F32)), g.constant(np.array([0.5], F32))
    extras = [lo, hi] + ([g.input("r", (1, 5, 4, 5))] if residual else [])
    y = g.op(
        "FusedConv", x, w, b, *extras, pads=[1, 1, 1, 1], strides=[2, 2], group=5,
        num_base_inputs=3, epilogue=epilogue,
    )  # fmt: skip
    g.output(y, "y")
    exe = _check(g, rng, rtol=1e-4)
    assert exe.report["steps"]["depthwise"] == 1 and exe.report["reference_ops"] == {}


def test_row_kernels_and_batch_norm(rng: np.random.Generator) -> None:
    g = eqsat.Graph("rows")
    x = g.input("x", (2, 3, 5, 4))
    g.output(g.op("GlobalAveragePool", x), "gap")
    g.output(g.op("Softmax", x, axis=-1), "softmax")
    g.output(g.op("Softmax", x, axis=1), "softmax1")  # not innermost: a kernel or the reference
    scale = g.constant(rng.standard_normal((5, 4)).astype(F32))
    g.output(g.op("LayerNormalization", x, scale, axis=2), "ln")
    scale1, bias1 = (g.constant(rng.standard_normal(4).astype(F32)) for _ in range(2))
    g.output(g.op("LayerNormalization", x, scale1, bias1), "ln1")
    params = [rng.standard_normal(3).astype(F32) for _ in range(3)]
    params.append(rng.uniform(0.5, 2, 3).astype(F32))
    g.output(g.op("BatchNormalization", x, *(g.constant(p) for p in params)), "bn")
    exe = _check(g, rng)
    assert exe.report["reference_ops"] in ({}, {"Softmax": 1})


def test_resize_nearest_and_conv_transpose(rng: np.random.Generator) -> None:
    g = eqsat.Graph("up")
    x = g.input("x", (1, 3, 5, 4))
    scales = g.constant(np.array([1, 1, 2, 3], F32))
    mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric"}
    g.output(g.op("Resize", x, None, scales, nearest_mode="floor", **mode), "floor")
    sizes = g.constant(np.array([1, 3, 7, 9], np.int64))
    g.output(g.op("Resize", x, None, None, sizes, **mode), "sizes")
    w = g.constant(rng.standard_normal((3, 2, 2, 2)).astype(F32))
    b = g.constant(rng.standard_normal(2).astype(F32))
    g.output(g.op("ConvTranspose", x, w, b, strides=[2, 2]), "up")
    wd = g.constant(rng.standard_normal((3, 1, 2, 3)).astype(F32))
    g.output(g.op("ConvTranspose", x, wd, group=3, strides=[2, 3]), "dw")
    exe = _check(g, rng)
    assert exe.report["reference_ops"] == {}


def test_fused_conv_transpose_runs_kernels(rng: np.random.Generator) -> None:
    pytest.importorskip("eqsat.ops.fused")
    g = eqsat.Graph("up")
    x = g.input("x", (1, 4, 5, 4))
    skip = g.input("skip", (1, 4, 10, 8))
    for name, shape, group in [("dense", (4, 4, 2, 2), 1), ("dw", (4, 1, 2, 2), 4)]:
        w = g.constant(rng.standard_normal(shape).astype(F32))
        b = g.constant(rng.standard_normal(4).astype(F32))
        y = g.op(
            "FusedConvTranspose", x, w, b, skip, strides=[2, 2], group=group,
            num_base_inputs=3, epilogue="(1 / (1 + exp(-({0} + {1}))))",
        )  # fmt: skip
        g.output(y, name)
    exe = _check(g, rng, rtol=1e-4)
    assert exe.report["reference_ops"] == {}
    assert exe.report["steps"]["conv"] == 2


def test_threads_leave_small_planes_of_few_channels_to_the_gemm(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several threads (and AVX-512 tiles), a Winograd-sized conv on a plane too small for
    two chunks of tile rows, with few channels, takes the GEMM path (spans of filters on the
    tiles, its patches read in place); the same numbers."""
    from eqsat.lowering import cpu, cpu_microkernel, cpu_ops, cpu_winograd

    wide = cpu_microkernel.WIDE_TILES

    def winograd(channels: int, hw: int, threads: int) -> bool:
        return cpu_winograd.applies((3, 3), (1, 1), (1, 1), 1, channels, 64, (hw, hw), threads)

    assert winograd(64, 20, 2) != wide
    assert winograd(64, 20, 1)
    assert winograd(128, 20, 2)
    assert winograd(64, 40, 2)
    calls: list[str] = []
    real = cpu_ops._winograd
    monkeypatch.setattr(
        cpu_ops,
        "_winograd",
        lambda lowering, node, *a: calls.append(node.name) or real(lowering, node, *a),
    )
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    g = eqsat.Graph("small_plane")
    x = g.input("x", (1, 64, 20, 20))
    w = g.constant((rng.standard_normal((64, 64, 3, 3)) / 24).astype(F32), "w")
    g.output(g.op("Relu", g.op("Conv", x, w, pads=[1, 1, 1, 1])), "y")
    feeds = {"x": rng.standard_normal((1, 64, 20, 20)).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    for threads in (1, 2):
        calls.clear()
        got = cpu.compile(g, threads=threads).run(feeds)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert bool(calls) == (threads == 1 or not wide)


@pytest.mark.parametrize(
    ("shape", "pads", "dtype"),
    [
        ((2, 32, 9, 13), [1, 1, 1, 1], F32),
        ((1, 32, 12, 8), [0, 2, 1, 0], F32),
        ((1, 32, 7, 6), [1, 1, 1, 1], np.float64),
    ],
    ids=["batch-odd-sizes", "asymmetric-pads", "float64"],
)
def test_winograd_conv(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, shape: tuple, pads: list,
    dtype: type,
) -> None:  # fmt: skip
    from eqsat.lowering import cpu_winograd

    take_winograd(monkeypatch)
    assert cpu_winograd.applies((3, 3), (1, 1), (1, 1), 1, shape[1], 12)
    g = eqsat.Graph("wino")
    x = g.input("x", shape, dtype)
    # Weights at the usual 1/sqrt(fan-in) scale: outputs of order 1, like a trained model's.
    scale = 1 / np.sqrt(9 * shape[1])
    w = g.constant((rng.standard_normal((12, shape[1], 3, 3)) * scale).astype(dtype), "w")
    b = g.constant(rng.standard_normal(12).astype(dtype), "b")
    y = g.op("Conv", x, w, b, pads=pads)
    g.output(g.op("Relu", y), "y")
    exe = _check(g, rng, rtol=1e-4)
    assert exe.report["reference_ops"] == {}


def test_winograd_chunks_and_fused_residual(rng: np.random.Generator) -> None:
    """Chunks of tile rows (tiny budget: one row each) give the same result as one chunk."""
    pytest.importorskip("eqsat.ops.fused")
    from eqsat.lowering import cpu_winograd

    weights = (rng.standard_normal((8, 24, 3, 3)) / np.sqrt(216)).astype(F32)
    bias = rng.standard_normal(8).astype(F32)
    x = rng.standard_normal((24, 10, 11)).astype(F32)
    outs = []
    for budget in (0, 1 << 30):
        plan = cpu_winograd.Winograd(
            weights, bias, (10, 11), (10, 11), (1, 1), np.dtype(F32), budget
        )
        conv = plan.bind(np.empty(plan.scratch_size(), F32))
        outs.append(np.empty((8, 10, 11), F32))
        conv(x, outs[-1])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    g = eqsat.Graph("fused")
    xin = g.input("x", (1, 24, 10, 11))
    res = g.input("res", (8, 10, 11))
    scale = g.constant(rng.standard_normal((8, 1, 1)).astype(F32))
    y = g.op(
        "FusedConv", xin, g.constant(weights), g.constant(bias), res, scale,
        g.constant(np.array(0.25, F32)), pads=[1, 1, 1, 1], num_base_inputs=3,
        epilogue="max((({0} * {2}) + {1}), {3})",
    )  # fmt: skip
    g.output(y, "y")
    _check(g, rng, rtol=1e-4)
    # The whole epilogue is applied by the output transform: operands renumbered, scalar inlined.
    from eqsat.lowering.cpu_ops import _winograd_epilogue

    node = next(n for n in g.nodes if n.op == "FusedConv")
    fused = _winograd_epilogue(node, [v for v in node.inputs[3:] if v is not None], F32)
    assert fused is not None
    expr, operands = fused
    assert expr == "max((({0} * {2}) + {1}), (0.25))"
    assert [kind for _, _, kind in operands] == ["full", "channel"]


def test_data_movement_attention_and_pools(rng: np.random.Generator) -> None:
    pytest.importorskip("eqsat.ops.fused")
    g = eqsat.Graph("moves")
    x = g.input("x", (2, 6, 4, 8))
    t = g.op("Transpose", x, perm=[0, 2, 1, 3])
    r = g.op("Reshape", t, g.constant(np.array([2, 4, 48], np.int64)))
    g.output(g.op("Concat", r, g.op("Relu", r), axis=1), "cat")
    q, k, v = (
        g.op("Transpose", g.op("Sigmoid", x) if i else x, perm=[0, 1, 3, 2]) for i in range(3)
    )
    mask = g.input("mask", (2, 1, 1, 8), np.int64)
    bias = g.op(
        "FusedElementwise", mask, body="(((1.0) - cast({0}, (1))) * (-10000.0))", dtype="float32"
    )
    g.output(g.op("Attention", q, k, v, bias, scale=0.3), "attn")
    g.output(g.op("Attention", q, k, v, scale=0.5), "attn_nomask")
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 1]}
    g.output(g.op("MaxPool", x, ceil_mode=1, **pool), "max")
    g.output(g.op("AveragePool", x, **pool), "avg")
    g.output(g.op("AveragePool", x, count_include_pad=1, **pool), "avg_pad")
    feeds = {"x": rng.standard_normal((2, 6, 4, 8)).astype(F32)}
    feeds["mask"] = (rng.uniform(size=(2, 1, 1, 8)) > 0.3).astype(np.int64)
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = eqsat.compile(g, target="cpu")
    got = exe.run(feeds)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
    assert exe.report["reference_ops"] == {}
    assert exe.report["steps"]["attention"] == 2 and exe.report["steps"]["view"] >= 1


def test_blas_pin_restores_thread_count() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from eqsat.lowering.cpu import BlasPin

    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
              if lib["user_api"] == "blas"]  # fmt: skip
    pin = BlasPin(1)
    pin.enter()
    inside = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
              if lib["user_api"] == "blas"]  # fmt: skip
    pin.exit()
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
             if lib["user_api"] == "blas"]  # fmt: skip
    assert set(inside) <= {1} and after == before


def test_blas_pin_runs_a_step_on_one_thread() -> None:
    """BlasPin.run_on(step, 1) runs a step with one BLAS thread and restores the pinned count."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from eqsat.lowering import cpu

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas"}  # fmt: skip

    if not blas_threads():
        pytest.skip("no BLAS library visible to threadpoolctl")
    pin = cpu.BlasPin(2)
    seen: list[set[int]] = []
    pin.enter()
    try:
        pin.run_on(lambda env: seen.append(blas_threads()), 1)([])
        seen.append(blas_threads())
    finally:
        pin.exit()
    assert seen == [{1}, {2}]


def test_blas_is_primed_once_for_executables_that_call_it(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    """An executable whose steps may call BLAS primes it (prime_blas): a product on each of its
    pool's threads, once per process and thread count; one without BLAS steps does not."""
    from eqsat.lowering import cpu, cpu_runtime

    calls: list[int] = []
    real = np.matmul

    def spy(a: np.ndarray, b: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        calls.append(a.shape[0])
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(cpu_runtime, "_PRIMED", [0])
    monkeypatch.setattr(np, "matmul", spy)
    g = eqsat.Graph("relu")
    g.output(g.op("Relu", g.input("x", (4,))), "y")
    cpu.compile(g, threads=2)
    assert calls == []
    g = eqsat.Graph("mm")
    x = g.input("x", (3, 5))
    g.output(
        g.op("MatMul", x, g.constant(rng.standard_normal((5, 2)).astype(np.float32), "w")), "y"
    )
    cpu.compile(g, threads=1)
    assert calls == [64, 64]  # the priming product, twice on the calling thread
    cpu.compile(g, threads=2)
    assert calls == [64] * 6  # and on two threads at once
    cpu.compile(g, threads=2)
    cpu.compile(g, threads=1)
    assert len(calls) == 6
