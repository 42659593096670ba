"""Error bounds of the CPU kernels' float32 math (:mod:`eqsat.lowering.cpu_math`).

Each function runs over dense float32 sweeps in a Numba loop (the way generated kernels call it,
so the vectorized code is what is measured) and is compared with a float64 reference. The bounds
are the ones the module's docstring states.
"""

from __future__ import annotations

import numpy as np
import pytest
from eqsat.lowering import codegen, cpu_math
from numba import njit
from scipy import special

F32 = np.float32
F64 = np.float64


@njit(error_model="numpy", fastmath={"contract"}, cache=True)
def _apply(x, which):  # type: ignore[no-untyped-def]
    out = np.empty_like(x)
    one = F32(1.0)
    for i in range(x.size):
        v = x[i]
        if which == 0:
            out[i] = cpu_math.exp_f32(v)
        elif which == 1:
            out[i] = cpu_math.tanh_f32(v)
        elif which == 2:
            out[i] = cpu_math.erf_f32(v)
        elif which == 3:
            out[i] = one / (one + cpu_math.exp_f32(-v))
        else:
            out[i] = v / (one + cpu_math.exp_f32(-v))
    return out


def _sweep(lo: float, hi: float, n: int = 1_000_001) -> np.ndarray:
    """A dense grid, log-spaced magnitudes down to 1e-30, and every float32 near +-1 and +-0.5."""
    grid = np.linspace(lo, hi, n, dtype=F32)
    tiny = np.logspace(-30, 2, 200_001).astype(F32)
    steps = np.arange(-20_000, 20_000, dtype=np.int32)
    anchors = np.array([1.0, -1.0, 0.5, -0.5], F32).view(np.int32)
    near = (anchors[:, None] + steps[None, :]).ravel().view(F32)
    x = np.concatenate([grid, tiny, -tiny, near])
    return x[(x >= lo) & (x <= hi)]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))


def test_exp_error_bound() -> None:
    x = _sweep(-87.33, 88.72)
    assert _rel(_apply(x, 0), np.exp(x.astype(F64))) <= 1e-7


def test_exp_range_ends_and_special_values() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 100, -100, 0, 88.72283, -87.34, 88.7229], F32)
    got = _apply(x, 0)
    want = [np.nan, np.inf, 0, np.inf, 0, 1, np.exp(F64(F32(88.72283))), 0, np.inf]
    np.testing.assert_allclose(got, np.array(want, F32), rtol=2e-7)
    # Where the result leaves float32's normal range it may flush to 0: absolute error tiny.
    low = np.linspace(-87.5, -86.5, 100_001, dtype=F32)
    assert np.max(np.abs(_apply(low, 0) - np.exp(low.astype(F64)))) <= 1.2e-38
    # The largest results keep their relative accuracy (2**128 needs both exponent halves).
    high = np.linspace(88.0, 88.72283, 100_001, dtype=F32)
    assert _rel(_apply(high, 0), np.exp(high.astype(F64))) <= 1e-7


def test_tanh_error_bounds() -> None:
    x = _sweep(-12, 12)
    want = np.tanh(x.astype(F64))
    got = _apply(x, 1)
    assert np.max(np.abs(got - want)) <= 1e-7
    assert _rel(got, want) <= 2e-7
    ends = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0], F32)
    np.testing.assert_array_equal(_apply(ends, 1), [np.nan, 1, -1, 1, -1, 0])


def test_erf_error_bound() -> None:
    x = _sweep(-12, 12)
    assert np.max(np.abs(_apply(x, 2) - special.erf(x.astype(F64)))) <= 5e-7
    ends = np.array([np.nan, np.inf, -np.inf, 0], F32)
    # The approximation ends one ulp short of +-1 at |x| = 4 and beyond.
    np.testing.assert_allclose(_apply(ends, 2), [np.nan, 1, -1, 0], rtol=0, atol=1.2e-7)


@pytest.mark.parametrize(("which", "reference"), [(3, special.expit), (4, None)])
def test_sigmoid_and_silu_error_bounds(which: int, reference: object) -> None:
    x = _sweep(-80, 80)
    x64 = x.astype(F64)
    want = special.expit(x64) if reference is not None else x64 * special.expit(x64)
    assert _rel(_apply(x, which), want) <= 2.5e-7
    ends = np.array([np.nan, np.inf, -np.inf], F32)
    assert np.isnan(_apply(ends, which)[0])
    assert _apply(ends, which)[1] == (1 if which == 3 else np.inf)


def test_float32_kernels_use_fast_math() -> None:
    code, _ = codegen.translate("(tanh({0}) + erf({0}) * exp({0}))", np.dtype(F32))
    assert {"tanh_f32", "erf_f32", "exp_f32"} <= set(code.replace("(", " ").split())
    code64, _ = codegen.translate("exp({0})", np.dtype(F64))
    assert code64 == "np.exp(x0)"


def test_row_max_f32_orders_floats_by_their_bits() -> None:
    """The integer-keyed max of float32 rows: every sign and magnitude, zeros, infinities,
    denormals, rows of one value and of a few lanes; a NaN with its sign bit clear is the max,
    one with it set is below every number (the softmaxes built on it come out NaN either way)."""
    rng = np.random.default_rng(5)
    tiny = np.float32(1e-45)
    rows = [
        rng.standard_normal(1000).astype(F32) * 50,
        -np.abs(rng.standard_normal(37)).astype(F32) - 1,
        np.array([-0.0, -tiny, -3.0], F32),
        np.array([-np.inf, -np.inf], F32),
        np.array([-np.inf, np.inf, 0.0], F32),
        np.array([7.5], F32),
        np.array([-0.0, 0.0], F32),
    ]
    for row in rows:
        got = cpu_math.row_max_f32(row)
        assert got == row.max() and np.signbit(got) == np.signbit(row.max()), row
    positive_nan = np.array([1.0, np.nan, 3.0], F32)
    assert np.isnan(cpu_math.row_max_f32(positive_nan))
    negative_nan = np.array([1.0, -np.nan, 3.0], F32)
    assert np.signbit(negative_nan[1]) and cpu_math.row_max_f32(negative_nan) == 3.0
    assert cpu_math.row_max_f32(np.arange(10, dtype=F32)[::2]) == 8.0  # a strided row
