"""Elementwise kernels that stream their output (:mod:`eqsat.lowering.cpu_stream`): the same
values as the plain loop and numpy, whatever the output's alignment, length, dtype or aliasing,
and chosen only for arrays larger than the last-level cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import codegen, cpu, cpu_stream, kernel_cache

import eqsat
from tests.cpu_testing import matches_numpy

F32 = np.dtype(np.float32)
SILU_ADD = "(({0} / (1 + exp(-{0}))) + {1})"


def _kernel(expr: str, shapes: list[tuple[int, ...]], dtype: np.dtype, out_shape: tuple[int, ...],
            stream: bool, monkeypatch: pytest.MonkeyPatch) -> cpu.ElementwiseKernel:  # fmt: skip
    monkeypatch.setattr(cpu_stream, "CACHE_BYTES", 0 if stream else 1 << 62)
    inputs = [(shape, dtype, None) for shape in shapes]
    return cpu.ElementwiseKernel(cpu.Lowering(threads=1), expr, inputs, out_shape, dtype)


@pytest.mark.parametrize("n", [0, 5, 15, 16, 17, 256, 1000, 4099])
@pytest.mark.parametrize("offset", [0, 1, 3, 15])
def test_streamed_kernel_matches_the_plain_loop(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, n: int, offset: int
) -> None:
    """Outputs starting anywhere within a line (the scalar head), shorter than a line or a block
    and with a tail after the last whole block: every element written, none beyond."""
    x, y = rng.standard_normal((2, n)).astype(F32)
    plain = _kernel(SILU_ADD, [(n,), (n,)], F32, (n,), False, monkeypatch)
    want = np.empty(n, F32)
    plain(want, [x, y])
    streamed = _kernel(SILU_ADD, [(n,), (n,)], F32, (n,), True, monkeypatch)
    storage = np.full(n + offset + 16, 7.0, F32)
    out = storage[offset : offset + n]
    streamed(out, [x, y])
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(want, x / (1 + np.exp(-x)) + y, rtol=1e-6, atol=1e-6)
    assert (storage[:offset] == 7).all() and (storage[offset + n :] == 7).all()


def test_streamed_float64_with_a_broadcast_scalar(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    f64 = np.dtype(np.float64)
    n = 777
    x, s = rng.standard_normal(n), np.array([0.5])
    kernel = _kernel("(tanh({0}) * {1})", [(n,), (1,)], f64, (n,), True, monkeypatch)
    out = np.empty(n + 1)[1:]  # 8 bytes past a line boundary at most
    kernel(out, [x, s])
    np.testing.assert_allclose(out, np.tanh(x) * 0.5, rtol=1e-15)


def test_streamed_kernel_in_place(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update of its own input reads each block before streaming it back."""
    n = 3000
    monkeypatch.setattr(cpu_stream, "CACHE_BYTES", 0)
    source = codegen.kernel_source(
        "({0} * {1})", [F32, F32], F32, codegen.plan_broadcast((n,), [(n,), (n,)]).spans,
        False, 0, True,
    )  # fmt: skip
    assert "stream_vector(out" in source and "out_block = out[" in source
    kernel = kernel_cache.load(source).kernel
    x, y = rng.standard_normal((2, n)).astype(F32)
    out = x.copy()
    kernel(out, out, y)
    np.testing.assert_array_equal(out, x * y)


def test_bool_outputs_are_not_streamed() -> None:
    bool_ = np.dtype(bool)
    source = codegen.kernel_source(
        "({0} > {1})", [F32, F32], bool_, codegen.plan_broadcast((64,), [(64,), (64,)]).spans,
        False, None, True,
    )  # fmt: skip
    assert "stream_vector(out" not in source


def test_graphs_stream_outputs_larger_than_the_cache(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only kernels that touch more bytes than the last-level cache holds stream; a graph's
    streamed steps give numpy's values."""
    sources: list[str] = []
    real = codegen.kernel_source

    def spy(*args: Any, **kwargs: Any) -> str:
        sources.append(real(*args, **kwargs))
        return sources[-1]

    monkeypatch.setattr(codegen, "kernel_source", spy)
    monkeypatch.setattr(cpu_stream, "CACHE_BYTES", 20_000)
    g = eqsat.Graph("stream")
    big = g.input("big", (2, 2000), np.float32)
    small = g.input("small", (2, 1000), np.float32)
    g.output(g.op("Relu", g.op("Sigmoid", big)), "y")  # one kernel: 16 KB in, 16 KB out
    g.output(g.op("Tanh", small), "z")  # 8 KB in, 8 KB out
    matches_numpy(g, rng, rtol=1e-6, atol=1e-6, runs=2)
    streamed = {"stream_vector(out" in s for s in sources if "expr:" in s}
    assert streamed == {True, False}


def test_the_cache_size_is_read() -> None:
    assert cpu_stream.last_level_cache_bytes() >= 1 << 16
    assert cpu_stream.worth_streaming(cpu_stream.CACHE_BYTES + 1)
    assert not cpu_stream.worth_streaming(cpu_stream.CACHE_BYTES)
