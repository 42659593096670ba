"""The CPU target's im2col + GEMM and small-output convolutions (:mod:`eqsat.lowering.cpu_conv`,
:mod:`eqsat.lowering.cpu_conv_kernels`).

Every case compiles a tiny graph for the cpu target and compares it with the numpy reference
target: 1-D and 2-D convs, strides (phase split and direct gather), pads, dilations, groups, 1x1
convs, stride-1 convs on the padded width, patches that tile the input, convs by several row
blocks, the BLAS-free path for few output positions, and fused epilogues with output-shaped,
per-channel and scalar operands (and one that needs its own pass).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_conv, cpu_conv_geometry, cpu_conv_kernels, cpu_conv_packed

import eqsat
from eqsat.ops.conv import window_geometry
from tests.cpu_testing import fused_conv_graph, matches_numpy, record_pool_maps

F32 = np.float32


@pytest.fixture(params=["im2col", "direct"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case twice: through im2col + GEMM (or the small-output kernel) and the direct conv."""
    direct = request.param == "direct"
    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 1 << 20 if direct else 0)
    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_WIDTH", 1)
    return str(request.param)


def _check(graph: eqsat.Graph, rng: np.random.Generator, rtol: float = 1e-4) -> Any:
    exe = matches_numpy(graph, rng, rtol=rtol, atol=1e-4, runs=2)
    assert exe.report["reference_ops"] == {}
    return exe


def _conv_graph(
    rng: np.random.Generator,
    x_shape: tuple[int, ...],
    m: int,
    kernel: tuple[int, ...],
    attrs: dict[str, Any],
    dtype: type = F32,
    bias: bool = True,
) -> tuple[eqsat.Graph, Any]:
    g = eqsat.Graph("conv")
    x = g.input("x", x_shape, dtype)
    group = int(attrs.get("group", 1))
    w = g.constant(rng.standard_normal((m, x_shape[1] // group, *kernel)).astype(dtype), "w")
    inputs = [x, w]
    if bias:
        inputs.append(g.constant(rng.standard_normal((m,)).astype(dtype), "b"))
    return g, g.op("Conv", *inputs, **attrs)


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs"),
    [
        ((2, 3, 11, 10), 5, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ((1, 4, 13, 12), 6, (3, 2), {"strides": [3, 2], "pads": [0, 1, 2, 0], "dilations": [1, 2]}),
        ((1, 4, 9, 9), 6, (3, 3), {"strides": [1, 5], "pads": [2, 2, 2, 2]}),
        ((1, 6, 8, 7), 4, (3, 3), {"group": 2, "pads": [1, 0, 1, 2], "dilations": [2, 1]}),
        ((1, 4, 7, 7), 6, (3, 3), {"group": 2, "strides": [2, 2]}),
        ((2, 5, 6, 7), 3, (1, 1), {}),
        ((1, 6, 6, 7), 4, (1, 1), {"group": 2}),
        ((1, 5, 9, 8), 3, (1, 1), {"strides": [2, 2]}),
        ((1, 3, 20, 20), 4, (5, 5), {"auto_pad": "SAME_UPPER"}),
        # Patches that tile the input (kernel = stride): gathered, no phase split.
        ((1, 3, 72, 80), 6, (8, 8), {"strides": [8, 8]}),
        ((2, 2, 35, 37), 7, (4, 4), {"strides": [4, 4]}),  # rows and columns left over
        ((1, 3, 38, 38), 5, (4, 4), {"strides": [4, 4], "pads": [0, 0, 2, 2]}),  # end padding
        ((1, 3, 27, 60), 5, (3, 6), {"strides": [3, 6]}),
    ],
    ids=[
        "s2-first-layer", "s3x2-dilated", "s1x5-gather", "grouped-dilated", "grouped-s2",
        "1x1-batch", "1x1-grouped", "1x1-strided", "5x5-same", "patches-8", "patches-4-batch",
        "patches-4-end-pads", "patches-3x6",
    ],
)  # fmt: skip
def test_conv_2d(
    rng: np.random.Generator, path: str, x_shape: tuple, m: int, kernel: tuple, attrs: dict
) -> None:
    g, y = _conv_graph(rng, x_shape, m, kernel, attrs)
    g.output(g.op("Relu", y), "y")
    exe = _check(g, rng)
    assert exe.report["steps"]["conv"] == 1


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs"),
    [
        ((1, 9, 4), 8, (3,), {"pads": [1, 1]}),  # few positions: no BLAS
        ((1, 8, 4), 6, (3,), {"strides": [2], "pads": [1, 1]}),
        ((1, 1, 640), 10, (256,), {"strides": [128]}),  # Silero's STFT conv, direct gather
        ((2, 6, 40), 6, (5,), {"strides": [3], "pads": [2, 1], "dilations": [2], "group": 3}),
        ((1, 4, 50), 6, (3,), {"pads": [1, 1]}),
        ((1, 6, 30), 6, (1,), {"group": 6}),
        ((1, 4, 400), 6, (5,), {"strides": [5]}),  # patches
    ],
    ids=["small", "small-s2", "stft", "grouped-dilated-s3", "blas", "depthwise-1x1", "patches"],
)
def test_conv_1d(
    rng: np.random.Generator, path: str, x_shape: tuple, m: int, kernel: tuple, attrs: dict
) -> None:
    g, y = _conv_graph(rng, x_shape, m, kernel, attrs)
    g.output(g.op("Sigmoid", y), "y")
    _check(g, rng)


def test_small_output_2d_float64_without_bias(rng: np.random.Generator) -> None:
    g, y = _conv_graph(rng, (2, 7, 4, 4), 9, (3, 3), {"pads": [1, 1, 1, 1]}, np.float64, False)
    g.output(y, "y")
    _check(g, rng, rtol=1e-9)


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs", "dtype"),
    [
        ((1, 5, 7), 7, (3,), {"pads": [1, 1]}, F32),  # odd channels, 7 positions
        ((1, 6, 9, 7), 5, (3, 3), {"pads": [1, 1, 1, 1]}, F32),  # 63 positions
        ((1, 4, 16, 16), 6, (3, 3), {"strides": [2, 2], "pads": [1, 0, 0, 1]}, F32),  # 64
        ((1, 3, 5, 6), 4, (2, 3), {"dilations": [2, 1]}, np.float64),
        # K = 512: channel tiles of 64 (SMALL_TILE_BYTES), the last one 3 channels (odd).
        ((1, 512, 5, 5), 131, (1, 1), {}, F32),
    ],
    ids=["odd-m", "63-positions", "64-positions-s2", "float64-dilated", "channel-tiles"],
)
def test_small_output_kernel(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, m: int,
    kernel: tuple, attrs: dict, dtype: type,
) -> None:  # fmt: skip
    """The BLAS-free kernel for one image of up to SMALL_POSITIONS outputs: blocks of 4 positions
    x 2 channels, tiles of channels and every remainder (where the tiles are off, or K is
    deeper than they take: these convs otherwise take cpu_conv_packed, tested on its own)."""
    monkeypatch.setattr(cpu_conv_packed, "ENABLED", False)
    calls: list[int] = []
    real = cpu_conv.small_conv
    monkeypatch.setattr(cpu_conv, "small_conv", lambda *a: calls.append(1) or real(*a))
    g, y = _conv_graph(rng, x_shape, m, kernel, attrs, dtype)
    g.output(y, "y")
    _check(g, rng, rtol=1e-9 if dtype is np.float64 else 1e-4)
    assert calls


@pytest.mark.parametrize(
    ("c", "h", "w", "kernel", "strides", "dilations", "pads"),
    [
        (1, 1, 1760, (1, 512), (1, 160), (1, 1), (0, 0)),  # an STFT frame: runs of 512
        (1, 5, 9, (3, 3), (1, 1), (1, 1), (1, 1)),  # one channel, border taps zeroed
        (6, 7, 8, (3, 3), (2, 2), (1, 1), (1, 1)),  # runs of KW*C inside, taps at the border
        (4, 6, 11, (2, 3), (1, 2), (2, 2), (1, 2)),  # dilated along W: tap by tap
    ],
    ids=["stft", "one-channel-padded", "strided-padded", "dilated"],
)
def test_small_patches_match_numpy_slices(
    rng: np.random.Generator, c: int, h: int, w: int, kernel: tuple, strides: tuple,
    dilations: tuple, pads: tuple,
) -> None:  # fmt: skip
    """small_patches' rows, ordered (kh, kw, c), are the windows numpy slices out of the
    zero-padded input, whether a window row is copied as one run or tap by tap."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, strides, dilations, pads
    x = rng.standard_normal((c, h, w)).astype(F32)
    oh = (h + 2 * ph - (kh - 1) * dh - 1) // sh + 1
    ow = (w + 2 * pw - (kw - 1) * dw - 1) // sw + 1
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    expected = np.stack(
        [
            padded[
                :,
                i * sh : i * sh + (kh - 1) * dh + 1 : dh,
                j * sw : j * sw + (kw - 1) * dw + 1 : dw,
            ]
            .transpose(1, 2, 0)
            .ravel()
            for i in range(oh)
            for j in range(ow)
        ]
    )
    ct = np.full((oh * ow, c * kh * kw), np.nan, F32)
    xt = np.empty((h, w, c), F32)
    cpu_conv_kernels.small_patches(x, ct, xt, (ow, kh, kw, sh, sw, dh, dw, ph, pw, w))
    np.testing.assert_array_equal(ct, expected)


@pytest.mark.parametrize(
    ("x_shape", "attrs", "wide"),
    [
        ((1, 3, 9, 55), {"strides": [2, 2], "dilations": [1, 8]}, False),
        ((1, 3, 9, 11), {"strides": [1, 5], "pads": [1, 1, 1, 1]}, False),
        ((1, 3, 9, 11), {"strides": [2, 1], "pads": [1, 1, 1, 1]}, True),
        ((1, 3, 15, 30), {"strides": [3, 2], "pads": [2, 0, 1, 2], "dilations": [1, 2]}, True),
        ((2, 4, 9, 16), {"pads": [1, 2, 1, 0], "dilations": [2, 1]}, True),
        ((1, 4, 9, 16), {"pads": [1, 1, 1, 1], "group": 2}, True),
    ],
    ids=["split", "gather", "wide-s2x1", "wide-s3x2-dilated", "wide-dilated", "wide-grouped"],
)
def test_row_blocks(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, attrs: dict,
    wide: bool,
) -> None:  # fmt: skip
    # A tiny block budget: each block is one row; the planes' width only where the extra
    # columns are few (as with AVX2 tiles), so that the split and the gather run too.
    monkeypatch.setattr(cpu_conv_geometry, "WIDE_ANY_WIDTH", False)
    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "SMALL_POSITIONS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "BLOCK_BYTES", 1)
    monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 1)
    g, y = _conv_graph(rng, x_shape, 4, (3, 3), attrs)
    g.output(y, "y")
    _check(g, rng)
    node = next(n for n in g.nodes if n.op == "Conv")
    window = window_geometry(x_shape[2:], (3, 3), node.attrs)
    geo = cpu_conv.Geometry(x_shape, (4, x_shape[1] // node.attrs["group"], 3, 3), window,
                            node.attrs["group"], 4)  # fmt: skip
    assert geo.wide == wide and len(geo.blocks) == geo.oh


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "im2col"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "attrs"),
    [
        ((1, 5, 30, 34), {"pads": [1, 1, 1, 1]}),
        ((1, 4, 41, 37), {"strides": [2, 2], "pads": [1, 0, 2, 1]}),
        ((1, 3, 33, 36), {"dilations": [2, 3], "pads": [2, 3, 2, 3]}),
        ((1, 6, 29, 40), {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 2, 1, 2]}),
        ((1, 8, 9, 12), {"pads": [1, 1, 1, 1]}),  # one block: spans of filters on two threads
    ],
    ids=["s1", "s2-uneven-pads", "dilated", "s2x1-dilated", "one-block"],
)
def test_wide_convs_read_their_patches_in_place(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, attrs: dict,
    threads: int, in_place: bool,
) -> None:  # fmt: skip
    """Convs on their phase planes' width read each tap's patch rows from the planes themselves
    (cpu_microkernel.taps_gemm at the tap's offset), by blocks of rows or, on two threads, by
    spans of filters of one block (in lanes); the same sums as im2col's copies, and numpy's.
    (taps_gemm itself is not spied on: the lanes' module, compiled by Numba, imports it.)"""
    from eqsat.lowering import cpu, cpu_microkernel

    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "SMALL_POSITIONS", 0)
    if threads == 2:
        monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
        monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
        monkeypatch.setattr(cpu_conv_geometry, "MIN_CHANNEL_SPAN", 8)
    else:  # blocks of about 5 output rows
        monkeypatch.setattr(cpu_conv_geometry, "BLOCK_BYTES", 5 * 4 * 9 * x_shape[1] * 40)
        monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 1)
    chosen: list[bool] = []  # each block's (or span's) choice
    real_suit = cpu_microkernel.taps_suit

    def suit(*args: Any) -> bool:
        chosen.append(in_place and real_suit(*args))
        return chosen[-1]

    monkeypatch.setattr(cpu_microkernel, "taps_suit", suit)
    g, y = _conv_graph(rng, x_shape, 24, (3, 3), attrs)
    g.output(g.op("Relu", y), "y")
    feeds = {"x": rng.standard_normal(x_shape).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    exe = cpu.compile(g, threads=threads)
    for _ in range(2):
        np.testing.assert_allclose(exe.run(feeds)["y"], want, rtol=1e-4, atol=1e-4)
    assert exe.report["reference_ops"] == {}
    assert chosen and (in_place or not any(chosen))
    if in_place and cpu_microkernel.WIDE_TILES:  # (AVX2 tiles: patch products of K <= 80)
        assert all(chosen)
        assert x_shape[2] < 10 or len(chosen) > 2  # several blocks (one: spans of filters)


@pytest.mark.parametrize(
    ("x_shape", "kernel", "attrs"),
    [
        ((1, 3, 38, 38), (4, 4), {"strides": [4, 4], "pads": [0, 0, 2, 2]}),
        ((1, 2, 12, 40), (2, 8), {"strides": [2, 8]}),
    ],
    ids=["end-pads", "2x8"],
)
def test_patches_in_row_blocks(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, kernel: tuple,
    attrs: dict,
) -> None:  # fmt: skip
    """Patches that tile the input are gathered block by block, without a phase split; with end
    padding the last row's taps fall outside, and its block takes the general copy."""
    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "SMALL_POSITIONS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "BLOCK_BYTES", 1)
    monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 1)
    g, y = _conv_graph(rng, x_shape, 5, kernel, attrs)
    g.output(y, "y")
    _check(g, rng)
    window = window_geometry(x_shape[2:], kernel, next(n for n in g.nodes if n.op == "Conv").attrs)
    geo = cpu_conv.Geometry(x_shape, (5, x_shape[1], *kernel), window, 1, 4)
    assert geo.patches and not geo.wide and not geo.split and len(geo.blocks) == geo.oh


def test_patch_gather_matches_numpy(rng: np.random.Generator) -> None:
    """im2col_block's gather of patches that lie inside the input, against numpy's reshape of
    the same patches (rows and columns past the last whole patch are not read)."""
    c, h, w, k = 3, 13, 30, 4
    oh, ow = h // k, w // k
    x = rng.standard_normal((c, h, 1, w)).astype(F32)
    cols = np.full((c * k * k, (oh - 1) * ow), np.nan, F32)
    cpu_conv_kernels.im2col_block(x, cols, 1, oh, (ow, k, k, k, k, 1, 1, 0, 0, w))
    tiles = x[:, : oh * k, 0, : ow * k].reshape(c, oh, k, ow, k).transpose(0, 2, 4, 1, 3)
    np.testing.assert_array_equal(
        cols, tiles.reshape(c * k * k, oh, ow)[:, 1:].reshape(-1, (oh - 1) * ow)
    )


def _fused(
    rng: np.random.Generator, x_shape: tuple, m: int, kernel: tuple, attrs: dict,
    epilogue: str, extras: list[tuple[str, tuple[int, ...]] | float],
) -> eqsat.Graph:  # fmt: skip
    g = eqsat.Graph("fused")
    x = g.input("x", x_shape)
    w = g.constant(rng.standard_normal((m, x_shape[1], *kernel)).astype(F32), "w")
    b = g.constant(rng.standard_normal((m,)).astype(F32), "b")
    operands = []
    for i, extra in enumerate(extras):
        if isinstance(extra, float):
            operands.append(g.constant(np.array(extra, F32), f"k{i}"))
        elif extra[0] == "input":
            operands.append(g.input(f"e{i}", extra[1]))
        else:
            operands.append(g.constant(rng.standard_normal(extra[1]).astype(F32), f"e{i}"))
    y = g.op("FusedConv", x, w, b, *operands, num_base_inputs=3, epilogue=epilogue, **attrs)
    g.output(y, "y")
    return g


@pytest.mark.parametrize(
    ("x_shape", "kernel", "attrs"),
    [
        ((2, 4, 9, 10), (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ((1, 4, 3, 3), (3, 3), {"pads": [1, 1, 1, 1]}),
        ((1, 4, 6, 6), (1, 1), {}),
        ((1, 4, 10, 10), (3, 3), {"pads": [1, 1, 1, 1]}),
    ],
    ids=["im2col", "small", "1x1", "wide"],
)
def test_fused_epilogues(
    rng: np.random.Generator, path: str, x_shape: tuple, kernel: tuple, attrs: dict
) -> None:
    m = 6
    n, _, *spatial = _fused(rng, x_shape, m, kernel, attrs, "{0}", []).outputs[0].shape
    cases = [
        ("({0} / (1 + exp(-{0})))", []),
        ("({1} + ({0} / (1 + exp(-{0}))))", [("input", (n, m, *spatial))]),
        ("({1} + max({0}, 0))", [("input", (1, m, *spatial))]),  # one residual for the batch
        ("min(max(({0} * {1}), {2}), {3})", [("const", (m, 1, 1)), 0.0, 6.0]),
        ("({0} + {1})", [("input", (1, 1, 1, spatial[1]))]),  # a pass of its own
    ]
    for epilogue, extras in cases:
        _check(_fused(rng, x_shape, m, kernel, attrs, epilogue, extras), rng)


def test_fused_1d_residual(rng: np.random.Generator, path: str) -> None:
    g = eqsat.Graph("fused1d")
    x = g.input("x", (1, 5, 24))
    w = g.constant(rng.standard_normal((7, 5, 3)).astype(F32), "w")
    res = g.input("res", (1, 7, 12))
    y = g.op(
        "FusedConv", x, w, None, res, strides=[2], pads=[1, 1], num_base_inputs=3,
        epilogue="max(({0} + {1}), 0)",
    )  # fmt: skip
    g.output(y, "y")
    _check(g, rng)


def test_phase_split_and_gather_match_numpy(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 11)).astype(F32)
    xs = np.zeros((2, 3, 3, 4), F32)
    cpu_conv_kernels.phase_split(x, xs)
    for p in range(3):
        np.testing.assert_array_equal(xs[:, :, p, : len(range(p, 11, 3))], x[:, :, p::3])


@pytest.mark.parametrize(
    ("h", "w", "sh", "sw", "ph", "pw"),
    [(5, 7, 2, 2, 1, 1), (6, 8, 2, 2, 0, 0), (5, 9, 2, 2, 2, 3), (7, 10, 3, 3, 1, 2),
     (4, 6, 1, 2, 0, 1), (4, 5, 2, 1, 1, 0), (6, 9, 1, 1, 1, 2),
     # rows of 16 column pairs or more: blocks of 16 pairs (the last overlapping where the
     # pairs are not a multiple of 16), then the edge columns; of 8 to 15 pairs: blocks of 8
     (3, 101, 2, 2, 1, 1), (4, 120, 2, 2, 0, 3), (3, 97, 2, 2, 3, 0), (3, 32, 2, 2, 0, 0),
     (5, 33, 2, 2, 1, 1), (3, 34, 3, 2, 1, 1), (2, 56, 2, 2, 1, 1), (2, 64, 2, 2, 0, 1),
     (3, 16, 2, 2, 0, 0), (3, 17, 2, 2, 1, 1), (4, 28, 2, 2, 1, 1), (3, 31, 2, 2, 0, 1),
     (5, 20, 3, 2, 2, 0)],
)  # fmt: skip
def test_fill_phases_matches_numpy(
    rng: np.random.Generator, h: int, w: int, sh: int, sw: int, ph: int, pw: int
) -> None:
    x = rng.standard_normal((2, h, w)).astype(F32)
    rq, wq = -(-(h + ph) // sh) + 1, -(-(w + pw) // sw) + 1
    padded = np.zeros((2, rq * sh, wq * sw), F32)
    padded[:, ph : ph + h, pw : pw + w] = x
    got = np.zeros((2, sh, sw, rq, wq), F32)
    cpu_conv_kernels.fill_phases(x, got, ph, pw)
    for a in range(sh):
        for b in range(sw):
            np.testing.assert_array_equal(got[:, a, b], padded[:, a::sh, b::sw])
    # By overlapping ranges of rows, as a wide conv's blocks fill them (and past the input).
    rows = np.zeros_like(got)
    for h0, h1 in ((-1, h // 2 + 1), (h // 2, h // 2), (h // 2 - 1, h + 2)):
        cpu_conv_kernels.fill_phase_rows(x, rows, ph, pw, h0, h1)
    np.testing.assert_array_equal(rows, got)


@pytest.mark.parametrize("w", [1, 5])
def test_fill_phase_rows_end_to_end(rng: np.random.Generator, w: int) -> None:
    """Stride 1, no padding across: the planes' rows meet end to end (Magika's 5x1 conv over
    (256, 512, 1)), and each channel's rows are one run, by ranges of rows as blocks fill them."""
    x = rng.standard_normal((3, 9, w)).astype(F32)
    got = np.zeros((3, 1, 1, 13, w), F32)
    for h0, h1 in ((0, 4), (3, 9)):
        cpu_conv_kernels.fill_phase_rows(x, got, 2, 0, h0, h1)
    want = np.zeros_like(got)
    want[:, 0, 0, 2:11] = x
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs"),
    [
        ((1, 4, 9, 40), 3, (3, 13), {"pads": [1, 6, 1, 6]}),  # basic-pitch's wide kernel
        ((1, 1, 1, 600), 1, (1, 64), {"strides": [1, 2]}),  # its single-channel 1x256 conv
        ((2, 3, 12, 30), 5, (5, 5), {"strides": [2, 3], "pads": [2, 1, 2, 1]}),
        ((1, 6, 11, 19), 4, (3, 6), {"group": 2, "dilations": [2, 2], "pads": [1, 3, 2, 0]}),
        ((1, 8, 7, 30), 8, (3, 19), {"group": 8, "pads": [0, 9, 1, 9]}),  # depthwise, many taps
    ],
    ids=["wide-kernel", "long-1x64-s2", "s2x3", "grouped-dilated", "depthwise-3x19"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_direct(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, m: int,
    kernel: tuple, attrs: dict, threads: int,
) -> None:  # fmt: skip
    """The direct conv, by spans of columns that cut rows anywhere (tiny spans), on one and two
    threads: both equal to the numpy reference and to each other."""
    from eqsat.lowering import cpu, cpu_threads

    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_BLOCK_BYTES", 1)
    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_WIDTH", 1)
    monkeypatch.setattr(cpu_conv_geometry, "SMALL_POSITIONS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 7)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    group = int(attrs.get("group", 1))
    g, y = _conv_graph(rng, x_shape, m, kernel, attrs)
    g.output(g.op("Relu", y), "y")
    node = next(n for n in g.nodes if n.op == "Conv")
    window = window_geometry(x_shape[2:], kernel, node.attrs)
    geo = cpu_conv.Geometry(x_shape, (m, x_shape[1] // group, *kernel), window, group, 4)
    assert geo.direct and len(geo.spans) > 1
    feeds = {"x": rng.standard_normal(x_shape).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    exe = cpu.compile(g, threads=threads)
    assert exe.report["steps"].get("conv") == 1
    got = exe.run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(exe.run(feeds)["y"], got)
    if threads > 1:
        np.testing.assert_array_equal(cpu.compile(g, threads=1).run(feeds)["y"], got)


def test_direct_float64_residual(rng: np.random.Generator) -> None:
    """The direct conv in float64, with a fused output-shaped operand."""
    g = eqsat.Graph("direct64")
    x = g.input("x", (1, 3, 6, 50), np.float64)
    w = g.constant(rng.standard_normal((2, 3, 3, 5)), "w")
    res = g.input("res", (1, 2, 6, 50), np.float64)
    y = g.op(
        "FusedConv", x, w, None, res, pads=[1, 2, 1, 2], num_base_inputs=3,
        epilogue="max(({0} + {1}), 0)",
    )  # fmt: skip
    g.output(y, "y")
    exe = _check(g, rng, rtol=1e-9)
    assert exe.report["steps"]["conv"] == 1


@pytest.mark.parametrize(
    ("x_shape", "kernel", "attrs", "kind"),
    [
        ((1, 12, 5, 6), (1, 1), {}, "pointwise"),
        ((1, 12, 4, 4), (3, 3), {"pads": [1, 1, 1, 1]}, "small"),
        ((1, 6, 9, 12), (3, 3), {"pads": [1, 1, 1, 1]}, "wide"),
        ((1, 6, 9, 31), (3, 3), {"strides": [1, 5], "pads": [1, 1, 1, 1]}, "cols"),
    ],
    ids=["pointwise", "small", "wide", "cols"],
)
def test_channel_spans_on_two_threads(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, kernel: tuple,
    attrs: dict, kind: str,
) -> None:  # fmt: skip
    """A conv whose positions make one block splits its output channels over the threads, each
    span with its own slice of the epilogue's per-channel and output-shaped operands."""
    from eqsat.lowering import cpu

    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "SMALL_POSITIONS", 64 if kind == "small" else 0)
    monkeypatch.setattr(cpu_conv_geometry, "MIN_CHANNEL_SPAN", 8)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    m = 40
    n, _, *spatial = _fused(rng, x_shape, m, kernel, attrs, "{0}", []).outputs[0].shape
    g = _fused(
        rng, x_shape, m, kernel, attrs, "({1} + max(({0} * {2}), 0))",
        [("input", (n, m, *spatial)), ("const", (m, 1, 1))],
    )  # fmt: skip
    node = next(nd for nd in g.nodes if nd.op == "FusedConv")
    window = window_geometry(x_shape[2:], kernel, node.attrs)
    geo = cpu_conv.Geometry(x_shape, (m, x_shape[1], *kernel), window, 1, 4, parts=8, threads=2)
    assert len(geo.channel_spans) == 2 and geo.channel_spans[0] == (0, 24)
    flags = {"pointwise": geo.pointwise, "small": geo.small, "wide": geo.wide}
    assert [k for k, on in flags.items() if on] == ([] if kind == "cols" else [kind])
    spans = record_pool_maps(monkeypatch)
    feeds = {v.name: rng.standard_normal(v.shape).astype(F32) for v in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    exe = cpu.compile(g, threads=2)
    got = exe.run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert spans == [2]
    np.testing.assert_allclose(cpu.compile(g, threads=1).run(feeds)["y"], got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row_blocks", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "attrs"),
    [
        ((1, 64, 14, 14), {"group": 4, "pads": [1, 1, 1, 1]}),
        ((1, 64, 15, 15), {"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ((2, 48, 12, 10), {"group": 3, "pads": [2, 1, 0, 2], "dilations": [2, 1]}),
    ],
    ids=["s1", "s2", "batch-dilated"],
)
def test_grouped_wide_conv(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int, row_blocks: bool,
    x_shape: tuple, attrs: dict,
) -> None:  # fmt: skip
    """RegNet-like convs of 16-channel groups on the planes' width: each group's patches
    gathered right before its product (``grouped_wide_gemm``). One thread takes the blocks in
    turn; two take blocks of output rows in lanes, or, where the positions make one block,
    spans of groups (``cpu_conv_groups``)."""
    from eqsat.lowering import cpu, cpu_microkernel

    calls: list[tuple[int, ...]] = []
    real = cpu_microkernel.grouped_wide_gemm

    def spy(*args: Any) -> None:
        calls.append(args[2].shape)
        real(*args)

    monkeypatch.setattr(cpu_microkernel, "grouped_wide_gemm", spy)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    if row_blocks:  # a block per output row
        monkeypatch.setattr(cpu_conv_geometry, "BLOCK_BYTES", 1)
        monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 1)
    maps = record_pool_maps(monkeypatch)
    g, y = _conv_graph(rng, x_shape, x_shape[1], (3, 3), attrs)
    g.output(g.op("Relu", y), "y")
    feeds = {v.name: rng.standard_normal(v.shape).astype(F32) for v in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    exe = cpu.compile(g, threads=threads)
    for _ in range(3):  # the pool's probes run a map on the workers, then on one thread
        np.testing.assert_allclose(exe.run(feeds)["y"], want, rtol=1e-4, atol=1e-4)
    node = next(nd for nd in exe.graph.nodes if nd.op in ("Conv", "FusedConv"))
    window = window_geometry(x_shape[2:], (3, 3), node.attrs)
    group, cg = attrs["group"], x_shape[1] // attrs["group"]
    parts = 8 if threads > 1 else 1
    geo = cpu_conv.Geometry(x_shape, (x_shape[1], cg, 3, 3), window, group, 4, parts, threads)
    assert geo.wide and (len(geo.blocks) > 1) == row_blocks
    if threads > 1 and row_blocks:  # lanes, from their generated module: no spy reaches it
        assert not calls and maps
        return
    shapes = {shape for shape in calls}
    if threads == 1:
        assert shapes == {(group, cg, 9 * cg)}
        return
    assert geo.group_spans == [(0, 2), (2, group)]
    assert shapes == {(2, cg, 9 * cg), (group - 2, cg, 9 * cg)}
    assert set(maps) == {2}


@pytest.mark.parametrize(
    ("x_shape", "m", "strides", "threads", "parts"),
    [((1, 64, 56, 56), 128, (2, 2), 2, 8), ((1, 16, 160, 160), 32, (2, 2), 2, 8),
     ((1, 32, 40, 40), 32, (1, 1), 2, 8), ((1, 64, 56, 56), 128, (2, 2), 3, 12)],
    ids=["resnet-s2", "yolo-s2", "yolo-s1", "three-threads"],
)  # fmt: skip
def test_row_blocks_even_over_threads(
    x_shape: tuple, m: int, strides: tuple, threads: int, parts: int
) -> None:
    """On the pool a conv's blocks of output rows come in a multiple of the threads and differ
    by a row at most (ResNet's 64 -> 128 stride-2 conv on 56x56 made blocks of 10, 10 and 8
    rows: one thread computed 20 of 28); they cover the output once, and each fills the input
    rows its taps read."""
    attrs = {
        "strides": list(strides),
        "pads": [1, 1, 1, 1],
        "dilations": [1, 1],
        "auto_pad": "NOTSET",
    }
    window = window_geometry(x_shape[2:], (3, 3), attrs)
    geo = cpu_conv.Geometry(x_shape, (m, x_shape[1], 3, 3), window, 1, 4, parts, threads)
    sizes = [b - a for a, b in geo.blocks]
    assert geo.blocks[0][0] == 0 and geo.blocks[-1][1] == geo.oh
    assert all(a[1] == b[0] for a, b in itertools.pairwise(geo.blocks))
    assert len(sizes) % threads == 0 and max(sizes) - min(sizes) <= 1 and geo.rows == max(sizes)
    for r0, r1 in geo.blocks:
        h0, h1 = geo.input_rows(r0, r1)
        assert h0 == r0 * geo.sh - geo.ph and h1 == (r1 - 1) * geo.sh + 2 - geo.ph + 1


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("x_shape", "kernel", "attrs"),
    [((1, 16, 40, 1), (5, 1), {}), ((1, 8, 30, 4), (3, 1), {"pads": [1, 0, 1, 0]})],
    ids=["magika-1d", "kx1-padded-rows"],
)
def test_wide_convs_without_extra_columns(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, kernel: tuple,
    attrs: dict, threads: int,
) -> None:  # fmt: skip
    """KHx1 convs on the phase planes' width with no extra columns (WP = OW, Magika's 5x1 conv
    over (256, 512, 1)): each block fills its rows and applies its epilogue (a residual and
    ReLU) as one run per channel; in blocks of a few rows on one thread or two, as numpy."""
    from eqsat.lowering import cpu

    monkeypatch.setattr(cpu_conv_geometry, "DIRECT_CHANNELS", 0)
    monkeypatch.setattr(cpu_conv_geometry, "SMALL_POSITIONS", 0)
    monkeypatch.setattr(
        cpu_conv_geometry, "BLOCK_BYTES", 6 * 4 * x_shape[1] * kernel[0] * x_shape[3]
    )
    monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 1)
    if threads == 2:
        monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
        monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    g = fused_conv_graph(rng, x_shape, 12, kernel, attrs)
    node = next(n for n in g.nodes if n.op == "FusedConv")
    full = {"strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "auto_pad": "NOTSET"}
    window = window_geometry(x_shape[2:], kernel, {**full, **attrs})
    geo = cpu_conv.Geometry(x_shape, node.inputs[1].shape, window, 1, 4)
    assert geo.wide and geo.wp == geo.ow and len(geo.blocks) > 2
    feeds = {v.name: rng.standard_normal(v.shape).astype(F32) for v in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    exe = cpu.compile(g, threads=threads)
    for _ in range(2):
        np.testing.assert_allclose(exe.run(feeds)["y"], want, rtol=1e-4, atol=1e-4)
