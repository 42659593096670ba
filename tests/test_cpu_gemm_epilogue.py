"""GEMM steps whose fused epilogue runs block by block in their lanes
(:mod:`eqsat.lowering.cpu_gemm_epilogue`): which epilogues take that path, and MatMul and Gemm
products on two threads, cut by rows and by columns, with bias, residual, activation and scalar
epilogues, against the numpy reference, in one pool map per step (no pass after it)."""

from __future__ import annotations

import numpy as np
import pytest
from eqsat.lowering import cpu, cpu_blas, cpu_gemm
from eqsat.lowering.cpu_gemm_epilogue import COLUMN, FULL, block_epilogue

import eqsat
from tests.cpu_testing import record_batched_gemms, record_pool_maps

F32 = np.float32
needs_blas = pytest.mark.skipif(
    not cpu_blas.AVAILABLE, reason="numpy's BLAS is not OpenBLAS: GEMMs keep Python chunks"
)


def _split_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """GEMMs and element-wise kernels split over the pool from one FLOP or element on; constant
    weights through BLAS's lanes like any other operand, not the packed tiles
    (tests/test_cpu_microkernel.py has those)."""
    for name, value in (("PARALLEL_FLOPS", 1.0), ("GRAIN_FLOPS", 1.0), ("PARALLEL_ELEMENTS", 1),
                        ("GRAIN_ELEMENTS", 1)):  # fmt: skip
        monkeypatch.setattr(cpu, name, value)
    monkeypatch.setattr(cpu_gemm, "PACKED_WEIGHTS", False)


def _input(shape: tuple[int, ...], const: np.ndarray | None = None, dtype: type = F32) -> tuple:
    return (shape, np.dtype(dtype), const)


def test_which_epilogues_run_in_blocks() -> None:
    out = (2, 6, 10)
    bias = np.arange(10, dtype=F32)
    block = block_epilogue(
        "max({0} + {1}, 0) * {2} + {3} + {4}",
        [_input((10,), bias), _input((), np.array(0.5, F32)), _input(out), _input((1, 1, 10))],
        [None, None, 7, 8],
        out,
        np.dtype(F32),
    )
    assert block is not None
    assert block.expr == "max({0} + {1}, 0) * (0.5) + {2} + {3}"
    assert [o.kind for o in block.operands] == [COLUMN, FULL, COLUMN]
    assert block.operands[0].const is not None and block.operands[0].const.shape == (10,)
    assert [o.slot for o in block.operands] == [None, 7, 8]
    # Non-finite scalars are written as the names the code generator reads.
    nan = block_epilogue(
        "{0} + {1} * {2}",
        [_input((1,), np.array([np.nan], F32)), _input((1, 1), np.array([[-np.inf]], F32))],
        [None, None],
        out,
        np.dtype(F32),
    )
    assert nan is not None and nan.expr == "{0} + nan * (-inf)"
    for inputs in (
        [_input((2, 6, 1))],  # one value per row
        [_input((6, 10))],  # output-shaped in its last two axes only
        [_input((10,), dtype=np.float64)],  # another dtype
        [_input((3, 2, 6, 10))],  # a higher rank
    ):
        assert block_epilogue("{0} + {1}", inputs, [3], out, np.dtype(F32)) is None
    assert block_epilogue("{0}", [], [], out, np.dtype(F32)) is None
    assert block_epilogue("{0} % 3", [], [], out, np.dtype(F32)) is None  # not generated


def _graph(op: str, x_shape: tuple, k: int, n: int, epilogue: str, dtype: type) -> eqsat.Graph:
    rng = np.random.default_rng(11)
    g = eqsat.Graph("gemm_epilogue")
    x = g.input("x", x_shape, dtype)
    w = g.constant(rng.standard_normal((k, n)).astype(dtype), "w")
    bias = g.constant(rng.standard_normal((n,)).astype(dtype), "bias")
    out_shape = (*x_shape[:-1], n)
    residual = g.input("r", out_shape, dtype)
    half = g.constant(np.array(0.5, dtype), "half")
    if op == "FusedGemm":  # C is Gemm's own bias: the epilogue sees it already added
        base = [x, w, bias]
        y = g.op(op, *base, residual, half, num_base_inputs=3, epilogue=epilogue, beta=0.75)
    else:
        y = g.op(op, x, w, bias, residual, half, num_base_inputs=2, epilogue=epilogue)
    g.output(y, "y")
    return g


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("op", "x_shape", "k", "n", "epilogue"),
    [
        ("FusedMatMul", (96, 40), 40, 24, "max({0} + {1}, 0) + {2} * {3}"),  # cut by rows
        ("FusedMatMul", (24, 40), 40, 300, "({0} + {1}) * (1 + erf(({0} + {1}) * {3}))"),
        ("FusedMatMul", (2, 48, 40), 40, 24, "{2} - ({0} + {1}) * {3}"),  # a stack of rows
        ("FusedGemm", (96, 40), 40, 24, "{0} * {2} + {1}"),  # C and beta before the epilogue
        ("FusedGemm", (24, 40), 40, 300, "tanh({0}) + {1} * {2}"),
    ],
    ids=["rows", "columns-gelu", "stacked", "gemm-rows", "gemm-columns"],
)
def test_epilogues_in_gemm_lanes(
    monkeypatch: pytest.MonkeyPatch, op: str, x_shape: tuple, k: int, n: int, epilogue: str,
    dtype: type,
) -> None:  # fmt: skip
    """Each GEMM step is one map of lanes (with element-wise kernels split from one element
    on, a separate epilogue pass would be a second map), and its output matches numpy's."""
    _split_every_step(monkeypatch)
    graph = _graph(op, x_shape, k, n, epilogue, dtype)
    rng = np.random.default_rng(5)
    feeds = {v.name: rng.standard_normal(v.shape).astype(dtype) for v in graph.inputs}
    want = eqsat.compile(graph, target="numpy").run(feeds)["y"]
    in_lanes: list[bool] = []
    sizes = record_pool_maps(monkeypatch, in_lanes)
    exe = cpu.compile(graph, threads=2)
    in_lanes.clear()
    sizes.clear()
    got = [exe.run(feeds)["y"] for _ in range(3)]
    assert in_lanes == [True] * 3 and min(sizes) > 1
    tolerance = 1e-4 if dtype == F32 else 1e-10
    for run in got:
        assert run.dtype == want.dtype
        np.testing.assert_allclose(run, want, rtol=tolerance, atol=tolerance)
        np.testing.assert_array_equal(run, got[0])


@needs_blas
def test_an_epilogue_the_blocks_cannot_take_is_a_pass_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A per-row operand (96, 1) is not a column nor output-shaped: the GEMM's lanes, then the
    epilogue's own map."""
    _split_every_step(monkeypatch)
    rng = np.random.default_rng(2)
    g = eqsat.Graph("row_scale")
    x = g.input("x", (96, 40))
    w = g.constant(rng.standard_normal((40, 24)).astype(F32), "w")
    s = g.input("s", (96, 1))
    g.output(g.op("FusedMatMul", x, w, s, num_base_inputs=2, epilogue="{0} * {1}"), "y")
    feeds = {"x": rng.standard_normal((96, 40)).astype(F32), "s": rng.random((96, 1), F32)}
    in_lanes: list[bool] = []
    record_pool_maps(monkeypatch, in_lanes)
    exe = cpu.compile(g, threads=2)
    in_lanes.clear()
    got = exe.run(feeds)["y"]
    assert in_lanes == [True, False]
    np.testing.assert_allclose(got, (feeds["x"] @ w.const) * feeds["s"], rtol=1e-4, atol=1e-4)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_epilogues_in_packed_lanes(monkeypatch: pytest.MonkeyPatch, dtype: type) -> None:
    """Products by constant weights packed at compile time (:class:`cpu_gemm.PackedMatMul`) run
    their epilogue panel by panel in the product's lane: on two threads one map of lanes per
    step, rows in several chunks (K = 1024: 64 rows each) by spans of panels; on one thread the
    same lane on the calling thread. Both match numpy, and each other to the bit."""
    from eqsat.lowering import cpu_microkernel

    if not cpu_microkernel.ENABLED:
        pytest.skip("no vector fused multiply-add: products stay with BLAS")
    for name, value in (("PARALLEL_FLOPS", 1.0), ("GRAIN_FLOPS", 1.0)):
        monkeypatch.setattr(cpu, name, value)
    kinds: list[str] = []
    real = cpu_gemm.PackedMatMul.__init__

    def noting(self: cpu_gemm.PackedMatMul, *args: object) -> None:
        real(self, *args)  # type: ignore[arg-type]
        kinds.append("lanes" if self.pool is not None else "alone")

    monkeypatch.setattr(cpu_gemm.PackedMatMul, "__init__", noting)
    gelu = "({0} + {1}) * (1 + erf(({0} + {1}) * {3})) + {2}"
    graph = _graph("FusedMatMul", (150, 1024), 1024, 100, gelu, dtype)
    rng = np.random.default_rng(8)
    feeds = {v.name: rng.standard_normal(v.shape).astype(dtype) for v in graph.inputs}
    want = eqsat.compile(graph, target="numpy").run(feeds)["y"]
    one = cpu.compile(graph, threads=1).run(feeds)["y"]
    assert kinds and set(kinds) == {"alone"}
    in_lanes: list[bool] = []
    record_pool_maps(monkeypatch, in_lanes)
    kinds.clear()
    exe = cpu.compile(graph, threads=2)
    assert kinds and set(kinds) == {"lanes"}
    in_lanes.clear()
    two = [exe.run(feeds)["y"] for _ in range(3)]
    assert in_lanes == [True] * 3
    tolerance = 1e-3 if dtype == F32 else 1e-9
    np.testing.assert_allclose(one, want, rtol=tolerance, atol=tolerance)
    for run in two:
        np.testing.assert_array_equal(run, one)


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((1, 6, 33, 20), (1, 6, 20, 33)), ((8, 17, 24), (8, 24, 40)), ((64, 20), (20, 50))],
    ids=["heads", "stack", "2-d"],
)
def test_products_of_computed_operands_on_the_tiles(
    monkeypatch: pytest.MonkeyPatch, a_shape: tuple, b_shape: tuple
) -> None:
    """Attention's Q K^T and P V where they are not fused (two computed operands) run on the
    tiles: on one thread through cpu_gemm.tiles_matmul, on two the stack's matrices by ranges
    in native lanes (2-D: BLAS's lanes); the same sums either way, and numpy's within
    rounding; with the tiles off, numpy's matmul."""
    from eqsat.lowering import cpu_microkernel

    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    rng = np.random.default_rng(4)
    g = eqsat.Graph("qk")
    a, b = g.input("a", a_shape), g.input("b", b_shape)
    g.output(g.op("Relu", g.op("MatMul", a, b)), "y")
    feeds = {
        "a": rng.standard_normal(a_shape).astype(F32),
        "b": rng.standard_normal(b_shape).astype(F32),
    }
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    tiles = record_batched_gemms(monkeypatch)
    one = cpu.compile(g, threads=1).run(feeds)["y"]
    in_lanes: list[bool] = []
    record_pool_maps(monkeypatch, in_lanes)
    two = cpu.compile(g, threads=2).run(feeds)["y"]
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(two, want, rtol=1e-4, atol=1e-4)
    assert in_lanes and in_lanes[0]
    if cpu_microkernel.ENABLED and cpu_microkernel.WIDE_TILES:
        assert tiles  # one thread: the tiles
        if len(a_shape) > 2:
            np.testing.assert_array_equal(two, one)  # the lanes' tiles, by matrices
    monkeypatch.setattr(cpu_gemm, "TILES_FOR_COMPUTED", False)
    tiles.clear()
    off = cpu.compile(g, threads=1).run(feeds)["y"]
    np.testing.assert_allclose(off, want, rtol=1e-4, atol=1e-4)
    assert not tiles
