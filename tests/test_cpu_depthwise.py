"""The cpu target's generated depthwise convs against direct float64 references: every kernel
size up to 7x7 (several passes past :data:`~eqsat.lowering.cpu_depthwise.PASS_TAPS` taps),
strides 1-3 (phase planes), dilations, asymmetric pads, float64, batches, planes narrow enough
for the flattened-plane path and wide enough for the row-wise one, the kernel's own parallel
variant and the chunks on eqsat's pool."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu, cpu_depthwise, cpu_depthwise_lanes

import eqsat
from tests.cpu_testing import record_pool_maps

F32 = np.float32


def _reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, geometry: Any) -> np.ndarray:
    """Direct float64 depthwise conv: x (N, C, H, W), w (C, KH*KW), zero padding before by
    ``pads`` and after as far as the output extent (OH, OW) reaches."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw), (oh, ow) = geometry
    n_, c_, h_, w_ = x.shape
    pad = np.zeros((n_, c_, ph + h_ + oh * sh + kh * dh, pw + w_ + ow * sw + kw * dw))
    pad[:, :, ph : ph + h_, pw : pw + w_] = x
    out = np.zeros((n_, c_, oh, ow)) + b[None, :, None, None]
    for i in range(kh):
        for j in range(kw):
            part = pad[:, :, i * dh : i * dh + oh * sh : sh, j * dw : j * dw + ow * sw : sw]
            out += part * w[None, :, i * kw + j, None, None]
    return out


def _in_extent(out: int, stride: int, kernel: int, dilation: int, before: int, after: int) -> int:
    return (out - 1) * stride + (kernel - 1) * dilation + 1 - before - after


# (kernel, strides, dilations, pads before, pads after, output (OH, OW))
GEOMETRIES = [
    ((1, 1), (1, 1), (1, 1), (0, 0), (0, 0), (5, 6)),
    ((2, 2), (2, 2), (1, 1), (0, 0), (1, 0), (4, 5)),
    ((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (7, 9)),
    ((3, 3), (2, 2), (1, 1), (1, 1), (0, 1), (5, 6)),
    ((3, 3), (3, 3), (2, 2), (2, 1), (1, 2), (4, 3)),
    ((4, 4), (2, 1), (1, 2), (2, 1), (1, 2), (5, 7)),
    ((5, 5), (1, 1), (1, 1), (2, 2), (2, 2), (7, 7)),  # three passes
    ((5, 5), (2, 2), (1, 1), (2, 2), (1, 1), (4, 4)),
    ((6, 6), (3, 2), (1, 1), (3, 2), (2, 3), (3, 4)),
    ((7, 7), (1, 1), (1, 1), (3, 3), (3, 3), (6, 5)),  # five passes
    ((7, 7), (2, 2), (2, 1), (5, 3), (6, 3), (4, 4)),
    ((3, 5), (1, 2), (2, 1), (2, 2), (0, 3), (7, 5)),
    ((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (3, 70)),  # rows wide enough to go row by row
    ((5, 5), (2, 2), (1, 1), (2, 2), (2, 2), (3, 66)),
    ((7, 7), (1, 3), (1, 1), (3, 0), (3, 5), (2, 64)),
]


def _case(geometry: Any, dtype: type, batch: int = 2, channels: int = 3) -> Any:
    kernel, strides, dilations, before, after, out_hw = geometry
    in_hw = tuple(map(_in_extent, out_hw, strides, kernel, dilations, before, after))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((batch, channels, *in_hw)).astype(dtype)
    w = rng.standard_normal((channels, kernel[0] * kernel[1])).astype(dtype)
    b = rng.standard_normal(channels).astype(dtype)
    geo = (kernel, strides, dilations, before)
    want = _reference(x, w, b, (*geo, out_hw))
    return x, w, b, geo, in_hw, out_hw, want


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_kernel_matches_direct_conv(geometry: Any) -> None:
    x, w, b, geo, in_hw, out_hw, want = _case(geometry, F32)
    run = cpu_depthwise.load(np.dtype(F32), *geo, "max({0}, (0.0))", False)
    scratch = np.zeros(cpu_depthwise.scratch_shape(in_hw, out_hw, *geo), F32)
    out = np.empty((*x.shape[:2], *out_hw), F32)
    for _ in range(2):  # the scratch's borders stay zero from call to call
        run(x, w, b, out, scratch)
        np.testing.assert_allclose(out, np.maximum(want, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geometry", [GEOMETRIES[i] for i in (3, 6, 13)])
def test_float64_and_parallel_variant(geometry: Any) -> None:
    x, w, b, geo, in_hw, out_hw, want = _case(geometry, np.float64, batch=3, channels=5)
    for parallel in (False, True):
        run = cpu_depthwise.load(np.dtype(np.float64), *geo, "{0}", parallel)
        scratch = np.zeros(cpu_depthwise.scratch_shape(in_hw, out_hw, *geo))
        out = np.empty((*x.shape[:2], *out_hw))
        run(x, w, b, out, scratch)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_passes_and_small_scratch() -> None:
    geo = ((7, 7), (1, 1), (1, 1), (3, 3))
    text = cpu_depthwise.source(np.dtype(F32), *geo, "{0}", False)
    passes = -(-49 // cpu_depthwise.PASS_TAPS)
    assert text.count("for p in range(count):") == passes
    run = cpu_depthwise.load(np.dtype(F32), *geo, "{0}", False)
    x = np.zeros((1, 2, 6, 6), F32)
    size = cpu_depthwise.scratch_shape((6, 6), (6, 6), *geo)[0]
    with pytest.raises(ValueError, match="scratch"):
        run(x, np.zeros((2, 49), F32), np.zeros(2, F32), np.empty_like(x),
            np.zeros(size - 1, F32))  # fmt: skip


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dtype", [F32, np.float64])
def test_lanes_kernel_matches_direct_conv(geometry: Any, dtype: type) -> None:
    """Channels as the vector lanes: blocks of one vector's lanes (16 float32 on AVX-512, 8 on
    AVX2; half as many float64), two whole blocks and a partial one, planes shorter and longer
    than a vector, two images."""
    channels = 2 * cpu_depthwise_lanes.lanes_of(np.dtype(dtype).itemsize) + 5
    x, w, b, geo, in_hw, out_hw, want = _case(geometry, dtype, channels=channels)
    run = cpu_depthwise_lanes.load(np.dtype(dtype), *geo, "max({0}, (0.0))")
    wv, bv = cpu_depthwise_lanes.pack_taps(w, b)
    buffers = cpu_depthwise_lanes.buffers(np.dtype(dtype), in_hw, out_hw, *geo)
    out = np.full((*x.shape[:2], *out_hw), np.nan, dtype)
    tol = 1e-5 if dtype == F32 else 1e-12
    for _ in range(2):  # the buffer's border stays zero from call to call
        run(x, wv, bv, out, *buffers)
        np.testing.assert_allclose(out, np.maximum(want, 0), rtol=tol, atol=tol)
    # One image's span of blocks of channels, as the pool's chunks run it: only its channels
    # are written.
    lanes = wv.shape[2]
    out[:] = np.nan
    run(x[:1, lanes:], wv[1:], bv[1:], out[:1, lanes:], *buffers)
    np.testing.assert_allclose(out[0, lanes:], np.maximum(want, 0)[0, lanes:], rtol=tol, atol=tol)
    assert np.isnan(out[0, :lanes]).all() and np.isnan(out[1]).all()


def _graph(shape: tuple[int, ...], kernel: int, attrs: dict, dtype: type) -> eqsat.Graph:
    rng = np.random.default_rng(7)
    c_ = shape[1]
    g = eqsat.Graph("dw")
    x = g.input("x", shape, np.dtype(dtype))
    w = g.constant(rng.standard_normal((c_, 1, kernel, kernel)).astype(dtype), "w")
    b = g.constant(rng.standard_normal(c_).astype(dtype), "b")
    y = g.op("Conv", x, w, b, group=c_, **attrs)
    g.output(g.op("HardSwish", y), "y")
    return g


@pytest.mark.parametrize(
    ("shape", "kernel", "attrs", "dtype"),
    [
        ((2, 6, 14, 14), 5, {"strides": [2, 2], "pads": [2, 1, 1, 2]}, F32),
        ((1, 4, 9, 11), 3, {"strides": [3, 2], "pads": [0, 1, 2, 1], "dilations": [2, 1]}, F32),
        ((2, 3, 7, 7), 7, {"pads": [3, 3, 3, 3]}, np.float64),
        ((1, 2, 5, 80), 3, {"pads": [1, 1, 1, 1]}, np.float64),
    ],
    ids=["5x5-s2-asymmetric", "s3x2-dilated", "7x7-f64", "wide-f64"],
)
@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "planes"])
def test_graph_on_one_and_two_threads(
    monkeypatch: pytest.MonkeyPatch, shape: tuple, kernel: int, attrs: dict, dtype: type,
    lanes: bool,
) -> None:  # fmt: skip
    """Both kernels (the channels as lanes where the planes are small, on CPUs with the
    tiles' fused multiply-add; each plane's positions otherwise) through the graph."""
    monkeypatch.setattr(cpu_depthwise_lanes, "ENABLED", lanes)
    loads: list[str] = []
    for module in (cpu_depthwise, cpu_depthwise_lanes):
        real = module.source
        monkeypatch.setattr(
            module, "source", lambda *a, r=real, m=module: loads.append(m.__name__) or r(*a)
        )
    graph = _graph(shape, kernel, attrs, dtype)
    feeds = {"x": np.random.default_rng(8).standard_normal(shape).astype(dtype)}
    want = eqsat.compile(graph, target="numpy").run(feeds)["y"]
    rtol = 1e-5 if dtype == F32 else 1e-12
    # Depthwise convs size their split as elementwise work.
    monkeypatch.setattr(cpu, "PARALLEL_ELEMENTS", 1)
    monkeypatch.setattr(cpu, "GRAIN_ELEMENTS", 1)
    in_lanes: list[bool] = []
    sizes = record_pool_maps(monkeypatch, in_lanes)
    for threads in (1, 2):
        exe = cpu.compile(graph, threads=threads)
        assert exe.report["steps"]["depthwise"] == 1 and exe.report["reference_ops"] == {}
        got = exe.run(feeds)["y"]
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    assert sizes and max(sizes) > 1  # two threads: chunks of channels on the pool, in lanes
    assert in_lanes and in_lanes[0]  # (then HardSwish, an elementwise map)
    from eqsat.lowering import cpu_microkernel

    # Rows as wide as ROW_WISE keep the plane kernel ("wide-f64").
    lanes_taken = lanes and cpu_microkernel.ENABLED and shape[-1] < cpu_depthwise.ROW_WISE
    assert set(loads) == {(cpu_depthwise_lanes if lanes_taken else cpu_depthwise).__name__}
