"""Helpers for the cpu-target tests: compile a graph for ``cpu`` and check it against the numpy
reference target on random feeds; record the chunk counts of eqsat's thread pool; split every
conv into the pool's smallest chunks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_runtime, cpu_threads

import eqsat


def matches_numpy(
    graph: eqsat.Graph,
    rng: np.random.Generator,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    runs: int = 1,
) -> eqsat.Executable:
    """The cpu executable of ``graph``, after checking ``runs`` runs (later runs reuse the bound
    buffers and scratch) against the numpy target: same dtypes, values within rtol/atol."""
    feeds = {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    for _ in range(runs):
        got = exe.run(feeds)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype
            np.testing.assert_allclose(got[name], expected, rtol=rtol, atol=atol)
    return exe


def record_pool_maps(
    monkeypatch: pytest.MonkeyPatch, in_lanes: list[bool] | None = None
) -> list[int]:
    """The number of chunks of every ``Pool.map`` from now on (its ``chunks`` where given: the
    native lanes' maps have an item per thread). The pool never backs off to the calling
    thread, so that two threads really split the work. ``in_lanes`` gets, for every map, whether
    it ran native lanes (:mod:`eqsat.lowering.cpu_lanes`: a chunk counter was passed)."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    # BLAS's priming map (once per process and thread count) is not one of the steps' maps.
    cpu_runtime.prime_blas(cpu_threads.Pool(cpu_threads.MAX_THREADS))
    sizes: list[int] = []
    real = cpu_threads.Pool.map

    def spy(self: cpu_threads.Pool, fn: Any, items: Any, chunks: int = 0, counter: Any = None,
            whole: Any = None) -> None:  # fmt: skip
        sizes.append(chunks or len(items))
        if in_lanes is not None:
            in_lanes.append(counter is not None)
        real(self, fn, items, chunks, counter, whole)

    monkeypatch.setattr(cpu_threads.Pool, "map", spy)
    return sizes


def record_batched_gemms(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shape of the right-hand operand of every call of
    :func:`eqsat.lowering.cpu_microkernel.batched_gemm` from Python from now on (native lanes
    call it unseen)."""
    from eqsat.lowering import cpu_microkernel

    calls: list[tuple[int, ...]] = []
    real = cpu_microkernel.batched_gemm

    def spy(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        calls.append(b.shape)
        real(a, b, out)

    monkeypatch.setattr(cpu_microkernel, "batched_gemm", spy)
    return calls


def take_winograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 3x3 stride-1 conv of 24 channels and more takes Winograd, however small its plane:
    the thresholds depend on the CPU's vectors (see :mod:`eqsat.lowering.cpu_winograd`), the
    tests of the transforms must not."""
    from eqsat.lowering import cpu_winograd

    monkeypatch.setattr(cpu_winograd, "MIN_CHANNELS", 24)
    monkeypatch.setattr(cpu_winograd, "SMALL_PLANE_TILES", 0)  # on threads too


def split_every_conv(monkeypatch: pytest.MonkeyPatch, spans: bool = False) -> None:
    """Every conv on the pool in as many chunks as it has: blocks of one output row each (or,
    with ``spans``, spans of 8 output channels), whatever its size."""
    from eqsat.lowering import cpu, cpu_conv_geometry

    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "SMALL_POSITIONS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "MIN_CHANNEL_SPAN", 8)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    if not spans:  # one output row per block
        monkeypatch.setattr(cpu_conv_geometry, "BLOCK_BYTES", 1)
        monkeypatch.setattr(cpu_conv_geometry, "OUTPUT_BLOCK_BYTES", 1)
        monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 1)
        monkeypatch.setattr(cpu_conv_geometry, "MIN_POINTWISE_COLUMNS", 1)


def fused_conv_graph(
    rng: np.random.Generator, x_shape: tuple[int, ...], m: int, kernel: tuple[int, int],
    attrs: dict[str, Any],
) -> eqsat.Graph:  # fmt: skip
    """A float32 FusedConv of ``m`` filters with a bias, ReLU and a residual input in its
    epilogue: ``y = res + max(conv(x) + b, 0)``."""
    weights = rng.standard_normal((m, x_shape[1], *kernel)).astype(np.float32)
    probe = eqsat.Graph("shape")
    shape = probe.op("Conv", probe.input("x", x_shape), probe.constant(weights, "w"), **attrs).shape
    g = eqsat.Graph("fused_conv")
    x = g.input("x", x_shape)
    w = g.constant(weights, "w")
    b = g.constant(rng.standard_normal(m).astype(np.float32), "b")
    res = g.input("res", shape)
    y = g.op("FusedConv", x, w, b, res, num_base_inputs=3, epilogue="({1} + max({0}, 0))", **attrs)
    g.output(y, "y")
    return g
