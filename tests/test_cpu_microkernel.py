"""The register-tiled GEMM of thin convs (:mod:`eqsat.lowering.cpu_microkernel`): the tiles
against float64 products over shapes that hit every partial tile (rows left over, whole and
masked last vectors), row-strided views, the generated GEMM + epilogue by column tiles, and
convs that take them on one and two threads against the numpy reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from eqsat.lowering import cpu_conv, cpu_conv_geometry, cpu_lanes, cpu_microkernel, cpu_tile_ir
from eqsat.lowering.cpu_conv_epilogue import load_epilogue
from eqsat.lowering.cpu_conv_kernels import im2col_wide
from eqsat.lowering.cpu_microkernel import tiled_gemm

import eqsat
from tests.cpu_testing import fused_conv_graph, record_batched_gemms, take_winograd

F32 = np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_gemm_matches_float64_products(rng: np.random.Generator, dtype: type) -> None:
    """Every count of rows left over after the whole tiles of ROWS, every count of whole and
    masked vectors left over after the whole tiles of VECTORS (the host's tile: AVX2 or
    AVX-512)."""
    lanes = cpu_tile_ir.VECTOR_BYTES // np.dtype(dtype).itemsize
    tile = cpu_tile_ir.VECTORS * lanes
    widths = {1, lanes - 1, lanes, lanes + 1, tile, tile + 5, 2 * tile + lanes + 3, 300}
    widths |= {tile + v * lanes for v in range(1, cpu_tile_ir.VECTORS)}
    for m in sorted({*range(1, cpu_tile_ir.ROWS + 2), 2 * cpu_tile_ir.ROWS + 3}):
        for n in sorted(widths):
            for k in (1, 3, 17):
                a = rng.standard_normal((m, k)).astype(dtype)
                b = rng.standard_normal((k, n)).astype(dtype)
                c = np.full((m, n), np.nan, dtype)
                tiled_gemm(a, b, c)
                want = a.astype(np.float64) @ b.astype(np.float64)
                np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5, err_msg=f"{m}x{k}x{n}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_taps_gemm_matches_float64_products(rng: np.random.Generator, dtype: type) -> None:
    """taps_gemm reads each tap's patch rows in place, from its offset on the planes: every
    leftover row count and partial or masked vector of the host's tile, one tap and several,
    on planes that are a strided slice of a larger array (nothing else of c written)."""
    lanes = cpu_tile_ir.VECTOR_BYTES // np.dtype(dtype).itemsize
    tile = cpu_tile_ir.VECTORS * lanes
    for m in sorted({1, cpu_tile_ir.ROWS - 1, cpu_tile_ir.ROWS + 1, 2 * cpu_tile_ir.ROWS + 3}):
        for n in sorted({1, lanes + 1, tile, tile + lanes + 3, 2 * tile + 5}):
            for k, taps in ((1, 1), (3, 9), (17, 2)):
                offsets = rng.integers(0, 40, taps).astype(np.int64)
                big = rng.standard_normal((k + 2, n + 60)).astype(dtype)
                planes = big[1 : k + 1, 3:]
                a = rng.standard_normal((m, taps * k)).astype(dtype)
                big_c = np.full((m + 1, n + 2), np.nan, dtype)
                c = big_c[1:, 1 : n + 1]
                cpu_microkernel.taps_gemm(a, planes, c, offsets)
                want = sum(
                    a[:, t * k : (t + 1) * k].astype(np.float64) @ planes[:, o : o + n]
                    for t, o in enumerate(offsets)
                )
                np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5, err_msg=f"{m}x{k}x{n}")
                assert np.isnan(big_c[0]).all() and np.isnan(big_c[:, [0, n + 1]]).all()


def test_taps_gemm_refuses_taps_beyond_the_planes(rng: np.random.Generator) -> None:
    planes = rng.standard_normal((4, 50)).astype(F32)
    a = rng.standard_normal((8, 8)).astype(F32)
    c = np.empty((8, 40), F32)
    cpu_microkernel.taps_gemm(a, planes, c, np.array([0, 10], np.int64))
    for offsets in ([0, 11], [-1, 0], [0, 1, 2]):
        with pytest.raises(ValueError, match="taps_gemm"):
            cpu_microkernel.taps_gemm(a, planes, c, np.array(offsets, np.int64))


def test_tiled_gemm_on_row_strided_views(rng: np.random.Generator) -> None:
    """Slices of larger arrays keep their row strides; nothing outside c's view is written."""
    big_a = rng.standard_normal((12, 40)).astype(F32)
    big_b = rng.standard_normal((30, 500)).astype(F32)
    big_c = np.zeros((9, 520), F32)
    a, b, c = big_a[2:9, 5:26], big_b[3:24, 100:401], big_c[1:8, 7:308]
    tiled_gemm(a, b, c)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    outside = big_c.copy()
    outside[1:8, 7:308] = 0
    assert not outside.any()


def test_tiled_gemm_rejects_what_it_cannot_compute(rng: np.random.Generator) -> None:
    a, b = rng.standard_normal((4, 6)).astype(F32), rng.standard_normal((6, 30)).astype(F32)
    with pytest.raises(ValueError, match="shapes do not match"):
        tiled_gemm(a, b, np.empty((4, 31), F32))
    with pytest.raises(ValueError, match="rows must be contiguous"):
        tiled_gemm(a, np.asfortranarray(b), np.empty((4, 30), F32))
    c = np.full((4, 30), np.nan, F32)
    tiled_gemm(a[:, :0], b[:0], c)  # K = 0: zeros
    assert not c.any()


def test_gemm_epilogue_by_column_tiles(rng: np.random.Generator) -> None:
    """The epilogue module's GEMM + epilogue over columns c0..c1 of a wider output, in several
    column tiles (300 rows: 216 columns per tile), with a per-channel bias and an output-shaped
    residual; and the same through BLAS where the depth rules the tiles out."""
    kernels = load_epilogue(np.dtype(F32), "max(({0} + {1}), 0)", ["full"])
    m, k, p, c0, c1 = 300, 24, 1200, 150, 1100
    w = rng.standard_normal((m, k)).astype(F32)
    x = rng.standard_normal((k, p)).astype(F32)
    bias = rng.standard_normal(m).astype(F32)
    residual = rng.standard_normal((m, p)).astype(F32)
    want = np.maximum(w.astype(np.float64) @ x[:, c0:c1] + bias[:, None] + residual[:, c0:c1], 0)
    for depth in (cpu_microkernel.MAX_DEPTH, 0):
        out = np.full((m, p), np.nan, F32)
        kernels.gemm_epilogue(w, x[:, c0:c1], out, c0, c1, depth, bias, residual)
        np.testing.assert_allclose(out[:, c0:c1], want, rtol=1e-4, atol=1e-4)
        assert np.isnan(out[:, :c0]).all() and np.isnan(out[:, c1:]).all()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs"),
    [
        ((1, 16, 20, 21), 22, (1, 1), {}),
        ((1, 3, 41, 40), 13, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ((2, 8, 17, 18), 9, (1, 1), {}),
    ],
    ids=["pointwise", "stem-patches", "pointwise-batch"],
)
def test_convs_through_the_tiles(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int,
    x_shape: tuple[int, ...], m: int, kernel: tuple[int, int], attrs: dict[str, object],
) -> None:  # fmt: skip
    """Convs with enough output positions for the tiles (and K within their depth) take them,
    with the epilogue column tile by column tile, and match the numpy reference on one thread
    and on two (the lanes, with the pool splitting even these small convs)."""
    from eqsat.lowering import cpu

    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "MIN_POINTWISE_COLUMNS", 256)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    chosen: list[str] = []
    choose = cpu_conv._gemm_epilogue

    def recording(*args: object) -> object:
        fn = choose(*args)  # type: ignore[arg-type]
        chosen.append(fn.__name__)
        return fn

    monkeypatch.setattr(cpu_conv, "_gemm_epilogue", recording)
    g = fused_conv_graph(rng, x_shape, m, kernel, attrs)
    feeds = {v.name: rng.standard_normal(v.shape).astype(F32) for v in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    got = cpu.compile(g, threads=threads).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if threads == 1 and cpu_lanes.available(np.dtype(F32)) and cpu_microkernel.ENABLED:
        assert chosen == ["tiled_then_epilogue"]
    monkeypatch.setattr(cpu_microkernel, "ENABLED", False)
    blas = cpu.compile(g, threads=threads).run(feeds)["y"]
    np.testing.assert_allclose(got, blas, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_gemm_matches_float64_products(rng: np.random.Generator, dtype: type) -> None:
    """Weights packed into panels (the last one partial), rows in several chunks, and any split
    of the panels giving the same bits as one call."""
    width = cpu_microkernel.panel_width(np.dtype(dtype))
    for m, k, n in [(1, 1, 1), (5, 3, width - 1), (9, 17, width), (13, 33, 2 * width + 5),
                    (150, 1000, 3 * width + 1), (70, 2, 61)]:  # fmt: skip
        a = rng.standard_normal((m, k)).astype(dtype)
        weights = rng.standard_normal((k, n)).astype(dtype)
        panels = cpu_microkernel.pack_panels(weights)
        assert panels.shape == (-(-n // width), k, width)
        c = np.full((m, n), np.nan, dtype)
        cpu_microkernel.packed_gemm(a, panels, c, 0, panels.shape[0])
        want = a.astype(np.float64) @ weights.astype(np.float64)
        np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-4, err_msg=f"{m}x{k}x{n}")
        split = np.full((m, n), np.nan, dtype)
        half = panels.shape[0] // 2
        cpu_microkernel.packed_gemm(a, panels, split, half, panels.shape[0])
        cpu_microkernel.packed_gemm(a, panels, split, 0, half)
        np.testing.assert_array_equal(split, c)
    with pytest.raises(ValueError, match="shapes do not match"):
        cpu_microkernel.packed_gemm(a, panels, np.empty((m, n + width), dtype), 0, 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_products_by_constant_weights_take_the_packed_tiles(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """A transformer's linear layers (MatMul of a stack of rows by constant weights with a bias
    and ReLU epilogue; Gemm with transB, alpha and C) run on weights packed at compile time,
    match numpy on one thread and two, and the BLAS path within rounding."""
    from eqsat.lowering import cpu, cpu_gemm, cpu_ops

    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    packed: list[bool] = []
    choose = cpu_ops.packed_matmul

    def recording(*args: object, **kwargs: object) -> object:
        mm = choose(*args, **kwargs)  # type: ignore[arg-type]
        packed.append(mm is not None)
        return mm

    monkeypatch.setattr(cpu_ops, "packed_matmul", recording)
    g = eqsat.Graph("linear")
    x = g.input("x", (2, 37, 48))
    w1 = g.constant(rng.standard_normal((48, 100)).astype(F32), "w1")
    b1 = g.constant(rng.standard_normal(100).astype(F32), "b1")
    hidden = g.op("FusedMatMul", x, w1, b1, num_base_inputs=2, epilogue="max({0} + {1}, 0)")
    flat = g.op("Reshape", hidden, g.constant(np.array([74, 100], np.int64), "shape"))
    w2 = g.constant(rng.standard_normal((30, 100)).astype(F32), "w2")
    b2 = g.constant(rng.standard_normal(30).astype(F32), "b2")
    g.output(g.op("Gemm", flat, w2, b2, transB=1, alpha=0.5), "y")
    feeds = {"x": rng.standard_normal((2, 37, 48)).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    got = cpu.compile(g, threads=threads).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if cpu_lanes.available(np.dtype(F32)) and cpu_microkernel.ENABLED:
        assert packed and all(packed)  # both products (steps may be built more than once)
    monkeypatch.setattr(cpu_gemm, "PACKED_WEIGHTS", False)
    packed.clear()
    blas = cpu.compile(g, threads=threads).run(feeds)["y"]
    assert packed and not any(packed)
    np.testing.assert_allclose(got, blas, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("plane", [64, 20])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_products_on_the_tiles(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int, dtype: type,
    plane: int,
) -> None:  # fmt: skip
    """A Winograd conv with enough tiles (64x64: 256, in chunks of 64 on one thread; 20x20: 25,
    enough for AVX-512's tiles) runs its 36 products on the tiles and matches numpy's
    reference."""
    from eqsat.lowering import cpu

    calls = record_batched_gemms(monkeypatch)
    take_winograd(monkeypatch)
    g = eqsat.Graph("wino_tiles")
    x = g.input("x", (1, 32, plane, plane), dtype)
    w = g.constant((rng.standard_normal((24, 32, 3, 3)) / 17).astype(dtype), "w")
    b = g.constant(rng.standard_normal(24).astype(dtype), "b")
    g.output(g.op("Relu", g.op("Conv", x, w, b, pads=[1, 1, 1, 1])), "y")
    feeds = {"x": rng.standard_normal((1, 32, plane, plane)).astype(dtype)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    got = cpu.compile(g, threads=threads).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    least = cpu_microkernel.WINOGRAD_MIN_TILES
    assert all(shape[0] == 36 and shape[2] >= least for shape in calls)
    if cpu_microkernel.ENABLED and (cpu_microkernel.WIDE_TILES or (threads, plane) == (1, 64)):
        assert calls  # (AVX2: from 56 tiles, which two threads' chunks of 32 are not)


def test_the_tiles_need_vector_fused_multiply_add(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FMA (an x86 CPU before Haswell) LLVM would compute each tile's fused
    multiply-adds through libm one element at a time: the tiles are then off and BLAS stays."""
    import platform

    from llvmlite import binding
    from numba.core import config

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(config, "CPU_FEATURES", None)  # the host's features, not an override
    monkeypatch.setattr(binding, "get_host_cpu_features", lambda: {"fma": False, "avx": True})
    assert not cpu_microkernel._fused_multiply_add()
    monkeypatch.setattr(binding, "get_host_cpu_features", lambda: {"fma": True, "avx2": True})
    assert cpu_microkernel._fused_multiply_add()
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert cpu_microkernel._fused_multiply_add()


def test_tiles_that_fail_to_compile_leave_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Numba or LLVM failure compiling the tiles' C entries is reported, not raised: the
    module then turns the tiles off with a warning (every product on BLAS), and a process
    importing it afresh says why."""
    import subprocess
    import sys

    from eqsat.lowering import cpu_tile_ir

    assert cpu_tile_ir.FAILED is None  # this machine compiles them
    real = cpu_tile_ir._compile_symbol

    def broken(driver: str, dtype: object) -> int:
        raise RuntimeError("no such intrinsic")

    monkeypatch.setattr(cpu_tile_ir, "_compile_symbol", broken)
    assert cpu_tile_ir.register() == "RuntimeError: no such intrinsic"
    monkeypatch.setattr(cpu_tile_ir, "_compile_symbol", real)
    assert cpu_tile_ir.register() is None
    script = (
        "import warnings, eqsat.lowering.cpu_tile_ir as t\n"
        "t.register = lambda: 'RuntimeError: no such intrinsic'\n"
        "t.FAILED = t.register()\n"
        "import eqsat.lowering.cpu_microkernel as m\n"
        "print(m.ENABLED)\n"
    )
    run = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
    assert "register tiles did not compile (RuntimeError: no such intrinsic)" in run.stderr


@pytest.mark.parametrize("tiles", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("channels", "groups", "strides", "dilations", "rows"),
    [
        (64, 4, (1, 1), (1, 1), (0, 9)),
        (48, 3, (2, 2), (1, 1), (2, 5)),
        (24, 2, (1, 2), (2, 1), (1, 4)),
    ],
    ids=["s1", "s2-block", "dilated"],
)
def test_grouped_wide_gemm(
    rng: np.random.Generator, tiles: bool, dtype: type, channels: int, groups: int,
    strides: tuple, dilations: tuple, rows: tuple,
) -> None:  # fmt: skip
    """Each group's patches of a block of output rows, then its product: against im2col of all
    channels and a float64 product per group."""
    h = w = 11
    out = tuple((h + 2 - dilations[i] * 2 - 1) // strides[i] + 1 for i in range(2))
    window = SimpleNamespace(
        kernel=(3, 3), strides=strides, dilations=dilations, begin=(1, 1), out=out
    )
    cg = channels // groups
    geo = cpu_conv.Geometry((1, channels, h, w), (channels, cg, 3, 3), window, groups, 8)
    phases, fill = geo.phase_planes(np.dtype(dtype))
    fill(rng.standard_normal((channels, h * w)).astype(dtype))
    r0, r1 = rows
    n = (r1 - r0) * geo.wp
    filters = rng.standard_normal((groups, cg, cg * 9)).astype(dtype)
    cols = np.full(cg * 9 * n + 5, np.nan, dtype)  # longer than one group's patches
    dest = np.full((channels, n), np.nan, dtype)
    taps = (3, 3, *dilations)
    cpu_microkernel.grouped_wide_gemm(phases, cols, filters, dest, r0, r1, taps, tiles)
    patches = np.zeros((channels * 9, n), dtype)
    im2col_wide(phases, patches, r0, r1, *taps)
    want = np.concatenate([
        filters[i].astype(np.float64) @ patches[i * cg * 9 : (i + 1) * cg * 9].astype(np.float64)
        for i in range(groups)
    ])  # fmt: skip
    np.testing.assert_allclose(dest, want, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-4)
