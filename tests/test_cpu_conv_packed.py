"""Products on packed filters with the positions as the tiles' rows
(:func:`eqsat.lowering.cpu_microkernel.transposed_gemm`) and the convs with few output positions
that take them (:mod:`eqsat.lowering.cpu_conv_packed`): against float64 products and the numpy
reference, on one and two threads, with the path taken asserted."""

from __future__ import annotations

import numpy as np
import pytest
from eqsat.lowering import cpu_conv_packed, cpu_microkernel
from eqsat.lowering.cpu_microkernel import pack_panels, transposed_gemm

import eqsat
from tests.cpu_testing import fused_conv_graph

F32 = np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_gemm_matches_float64_products(rng: np.random.Generator, dtype: type) -> None:
    """Every count of rows left over (positions mod 4), whole and partial panels, a deep K in
    several chunks of positions, and b as a strided view (the transposed patches)."""
    width = cpu_microkernel.panel_width(np.dtype(dtype))
    for m in (1, width - 1, width, width + 1, 3 * width + 5):
        for n in (1, 2, 3, 4, 5, 49, 130):
            for k in (1, 7, 40):
                w = rng.standard_normal((m, k)).astype(dtype)
                b = rng.standard_normal((k, n)).astype(dtype)
                out = np.full((m, n), np.nan, dtype)
                transposed_gemm(pack_panels(np.ascontiguousarray(w.T)), b, out, 0)
                want = w.astype(np.float64) @ b.astype(np.float64)
                np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5, err_msg=f"{m}x{k}x{n}")
    k, n, m = 1000, 300, 30  # 1000 deep: positions in chunks of 48
    w, bt = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    out = np.empty((m, n), dtype)
    transposed_gemm(pack_panels(np.ascontiguousarray(w.T)), bt.T, out, 0)
    np.testing.assert_allclose(out, w.astype(np.float64) @ bt.T, rtol=1e-4, atol=1e-4)


def test_transposed_gemm_on_a_span_of_panels(rng: np.random.Generator) -> None:
    """Rows of out from panel ``first`` on, into a view of a larger array: nothing outside it
    is written."""
    width = cpu_microkernel.panel_width(np.dtype(F32))
    w = rng.standard_normal((4 * width, 33)).astype(F32)
    b = rng.standard_normal((33, 21)).astype(F32)
    panels = pack_panels(np.ascontiguousarray(w.T))
    big = np.zeros((2 * width + 6, 30), F32)
    out = big[3 : 3 + 2 * width - 5, 4:25]
    transposed_gemm(panels, b, out, 1)
    want = w[width : 3 * width - 5].astype(np.float64) @ b
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    outside = big.copy()
    outside[3 : 3 + 2 * width - 5, 4:25] = 0
    assert not outside.any()


def test_transposed_gemm_rejects_what_it_cannot_compute(rng: np.random.Generator) -> None:
    w = rng.standard_normal((30, 8)).astype(F32)
    panels = pack_panels(np.ascontiguousarray(w.T))
    b = rng.standard_normal((8, 5)).astype(F32)
    with pytest.raises(ValueError, match="shapes do not match"):
        transposed_gemm(panels, b, np.empty((30, 6), F32), 0)
    with pytest.raises(ValueError, match="shapes do not match"):
        transposed_gemm(panels, b, np.empty((30, 5), F32), 1)  # past the last panel
    with pytest.raises(ValueError, match="rows must be contiguous"):
        transposed_gemm(panels, b, np.empty((5, 30), F32).T, 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs"),
    [
        ((1, 40, 7, 7), 70, (1, 1), {}),
        ((1, 300, 6, 9), 50, (1, 1), {}),
        ((1, 12, 9, 8), 30, (3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 1]}),
    ],
    ids=["pointwise-7x7", "pointwise-deep-54", "window-strided"],
)
def test_convs_with_few_positions_take_the_packed_filters(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int,
    x_shape: tuple[int, ...], m: int, kernel: tuple[int, int], attrs: dict[str, object],
) -> None:  # fmt: skip
    """Match the numpy reference and the path without packing; the packed product runs (its
    calls counted) wherever this machine has the tiles."""
    from eqsat.lowering import cpu

    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    monkeypatch.setattr(cpu_conv_packed, "SPANS_LANES", False)
    calls: list[tuple[int, ...]] = []
    inner = cpu_microkernel.transposed_gemm

    def counted(panels: np.ndarray, b: np.ndarray, out: np.ndarray, first: int) -> None:
        calls.append(out.shape)
        inner(panels, b, out, first)

    monkeypatch.setattr(cpu_microkernel, "transposed_gemm", counted)
    g = fused_conv_graph(rng, x_shape, m, kernel, attrs)
    feeds = {v.name: rng.standard_normal(v.shape).astype(F32) for v in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    got = cpu.compile(g, threads=threads).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if cpu_microkernel.ENABLED:
        images = x_shape[0]
        assert len(calls) >= images
        assert sum(shape[0] for shape in calls) == m * images  # every channel, once per image
    monkeypatch.setattr(cpu_conv_packed, "ENABLED", False)
    calls.clear()
    unpacked = cpu.compile(g, threads=threads).run(feeds)["y"]
    assert not calls
    np.testing.assert_allclose(got, unpacked, rtol=1e-4, atol=1e-4)
