"""Linear Resize of the last two axes on the cpu target (:mod:`eqsat.lowering.cpu_resize`):
bit-identical to the numpy reference for every coordinate transformation but tf_crop_and_resize,
up and down, one axis or two, float32 and float64; close to onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import eqsat

F32 = np.float32
MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"]


def _graph(shape: tuple[int, ...], mode: str, scales: list[float] | None,
           sizes: list[int] | None, dtype: Any = F32) -> eqsat.Graph:  # fmt: skip
    g = eqsat.Graph("resize")
    x = g.input("x", shape, dtype)
    s = None if scales is None else g.constant(np.array(scales, F32))
    z = None if sizes is None else g.constant(np.array(sizes, np.int64))
    g.output(g.op("Resize", x, None, s, z, mode="linear", coordinate_transformation_mode=mode), "y")
    return g


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("shape", "scales", "sizes"),
    [
        ((1, 3, 5, 7), [1, 1, 2, 2], None),  # FPN upsampling
        ((2, 2, 9, 6), [1, 1, 0.5, 1.5], None),  # down and up
        ((1, 2, 4, 8), None, [1, 2, 4, 13]),  # columns only
        ((1, 1, 6, 3), None, [1, 1, 11, 3]),  # rows only
    ],
)
def test_matches_the_reference_exactly(
    mode: str, shape: tuple, scales: list | None, sizes: list | None
) -> None:
    g = _graph(shape, mode, scales, sizes)
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(F32)}
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    for _ in range(2):
        np.testing.assert_array_equal(exe.run(feeds)["y"], want)


def test_float64_and_fallbacks() -> None:
    g = _graph((1, 2, 5, 5), "half_pixel", [1, 1, 2, 3], None, np.float64)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 2, 5, 5))}
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    np.testing.assert_array_equal(exe.run(feeds)["y"], want)
    # The channel axis resized, or nothing resized: the reference.
    assert eqsat.compile(_graph((1, 2, 4, 4), "half_pixel", [1, 2, 1, 1], None), "cpu").report[
        "reference_ops"
    ] == {"Resize": 1}  # fmt: skip


def test_close_to_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    g = _graph((1, 4, 10, 12), "half_pixel", [1, 1, 2, 2], None)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 4, 10, 12)).astype(F32)}
    session = ort.InferenceSession(
        eqsat.to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = eqsat.compile(g, target="cpu").run(feeds)["y"]
    np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("scales", "sizes"), [(None, [1, 3, 5, 7]), ([1, 1, 1, 1], None)])
def test_a_resize_to_its_own_size_is_a_view(
    mode: str, scales: list | None, sizes: list | None
) -> None:
    """No axis resized (SegFormer's and SSDlite's upsampling to the size the map already has):
    the input itself, as the reference gives it; it ran on the reference."""
    g = _graph((1, 3, 5, 7), mode, scales, sizes)
    x = np.random.default_rng(2).standard_normal((1, 3, 5, 7)).astype(F32)
    x.reshape(-1)[::9] = np.inf  # a weighted sum would turn these into NaN
    want = eqsat.compile(g, target="numpy").run({"x": x})["y"]
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {} and "kernel" not in exe.report["steps"]
    np.testing.assert_array_equal(exe.run({"x": x})["y"], want)
    np.testing.assert_array_equal(want, x)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize(
    ("shape", "scales", "sizes"),
    [
        ((1, 5, 20, 24), [1, 1, 2, 2], None),  # a whole plane per band
        ((2, 3, 12, 9), None, [2, 3, 12, 40]),  # columns only: the input's rows transposed
        ((1, 2, 40, 64), [1, 1, 0.5, 0.5], None),  # downsampling
        ((1, 1, 37, 29), None, [1, 1, 250, 300]),  # bands of rows, the last one partial
        ((3, 17, 16), [1, 1.5, 3], None),  # rank 3
    ],
)
def test_wide_planes_transpose_the_column_pass_and_match_exactly(
    monkeypatch: pytest.MonkeyPatch, threads: int, mode: str, shape: tuple,
    scales: list | None, sizes: list | None,
) -> None:  # fmt: skip
    """Float32 planes with output rows of 16 or more run the column pass on transposed bands
    (:func:`eqsat.lowering.cpu_resize.resize_bands`): still the reference to the bit."""
    from eqsat.lowering import cpu, cpu_resize

    banded = []
    original = cpu_resize._banded_step
    monkeypatch.setattr(cpu_resize, "_banded_step", lambda *a: banded.append(a[-1]) or original(*a))
    g = _graph(shape, mode, scales, sizes)
    feeds = {"x": np.random.default_rng(3).standard_normal(shape).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    exe = cpu.compile(eqsat.optimize(g, target="cpu").graph, threads=threads)
    assert exe.report["reference_ops"] == {} and banded
    for _ in range(2):
        np.testing.assert_array_equal(exe.run(feeds)["y"], want)
