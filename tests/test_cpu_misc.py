"""The cpu target's Resize (nearest: row/repeat kernel or gather) and non-overlapping
ConvTranspose kernels against the numpy reference, on small graphs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_kernels

import eqsat

F32 = np.float32


def _check(graph: eqsat.Graph, rng: np.random.Generator, exact: bool) -> eqsat.Executable:
    feeds = {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    for _ in range(2):  # the second run reuses the bound buffers
        got = exe.run(feeds)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype
            if exact:
                np.testing.assert_array_equal(got[name], expected, err_msg=name)
            else:
                np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)
    return exe


NEAREST = [
    ((1, 3, 5, 4), [1, 1, 2, 2], {"coordinate_transformation_mode": "asymmetric"}),
    ((2, 3, 5, 4), [1, 1, 4, 4], {"coordinate_transformation_mode": "asymmetric"}),
    ((1, 2, 3, 3), [1, 1, 8, 3], {"coordinate_transformation_mode": "asymmetric"}),
    ((1, 2, 5, 7), [1, 1, 1.5, 2.5], {"nearest_mode": "round_prefer_ceil"}),
    ((1, 2, 8, 8), [1, 1, 0.5, 0.5], {"coordinate_transformation_mode": "half_pixel"}),
    ((1, 2, 5, 6), [1, 1, 2, 2], {"coordinate_transformation_mode": "align_corners"}),
    ((1, 2, 4, 6), [1, 1, 3, 2], {"nearest_mode": "ceil"}),
    ((2, 3, 4), [1, 1, 2], {}),
    ((2, 3, 4, 5), [1, 2, 2, 2], {}),  # channels resized too: the flat gather
    ((6, 4), [2, 2], {"coordinate_transformation_mode": "pytorch_half_pixel"}),
]


@pytest.mark.parametrize(("shape", "scales", "attrs"), NEAREST)
def test_resize_nearest_exact(
    rng: np.random.Generator, shape: tuple[int, ...], scales: list[float], attrs: dict[str, Any]
) -> None:
    g = eqsat.Graph("resize")
    x = g.input("x", shape)
    s = g.constant(np.array(scales, F32))
    g.output(g.op("Resize", x, None, s, mode="nearest", **attrs), "y")
    exe = _check(g, rng, exact=True)
    assert exe.report["reference_ops"] == {}


def test_resize_sizes_and_other_modes(rng: np.random.Generator) -> None:
    g = eqsat.Graph("modes")
    x = g.input("x", (1, 2, 5, 4))
    sizes = g.constant(np.array([1, 2, 7, 9], np.int64))
    g.output(g.op("Resize", x, None, None, sizes, mode="nearest"), "sizes")
    scales = g.constant(np.array([1, 1, 2, 2], F32))
    for mode in ("linear", "cubic"):
        g.output(g.op("Resize", x, None, scales, mode=mode), mode)
    _check(g, rng, exact=False)


def test_resize_crop_extrapolates_on_reference(rng: np.random.Generator) -> None:
    """tf_crop_and_resize fills positions outside the crop with extrapolation_value."""
    g = eqsat.Graph("crop")
    x = g.input("x", (1, 1, 4, 4))
    roi = g.constant(np.array([0, 0, -0.5, 0.2, 1, 1, 1.2, 1.4], F32))
    sizes = g.constant(np.array([1, 1, 5, 6], np.int64))
    attrs = {"coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 7.5}
    g.output(g.op("Resize", x, roi, None, sizes, mode="nearest", **attrs), "y")
    _check(g, rng, exact=True)


def test_resize_nearest_kernel_paths() -> None:
    x = np.arange(2 * 3 * 4, dtype=F32).reshape(2, 3, 4)
    rows = np.array([0, 0, 1, 2, 2, 2])
    for factor in (2, 3, 4):
        cols = np.arange(4 * factor) // factor
        out = np.empty((2, 6, 4 * factor), F32)
        cpu_kernels.resize_nearest(x, out, rows, cols, factor)
        np.testing.assert_array_equal(out, x[:, rows][:, :, cols])
        cpu_kernels.resize_nearest(x, out, rows, cols, 0)  # the gather path
        np.testing.assert_array_equal(out, x[:, rows][:, :, cols])


@pytest.mark.parametrize(
    ("ci", "co", "kernel", "epilogue"),
    [(6, 5, (2, 2), "max(({0} + {1}), 0)"), (4, 1, (2, 2), "(1 / (1 + exp(-({0} + {1}))))"),
     (3, 4, (3, 2), "({0} * {1})"), (5, 5, (1, 1), "{0}")],
)  # fmt: skip
def test_fused_conv_transpose_stride_equals_kernel(
    rng: np.random.Generator, ci: int, co: int, kernel: tuple[int, int], epilogue: str
) -> None:
    g = eqsat.Graph("convt")
    x = g.input("x", (2, ci, 5, 7))
    w = g.constant((rng.standard_normal((ci, co, *kernel)) * 0.3).astype(F32))
    b = g.constant(rng.standard_normal(co).astype(F32))
    channel = g.constant(rng.standard_normal((1, co, 1, 1)).astype(F32))
    extras = [channel] if "{1}" in epilogue else []
    y = g.op(
        "FusedConvTranspose", x, w, b, *extras, strides=list(kernel), num_base_inputs=3,
        epilogue=epilogue,
    )  # fmt: skip
    g.output(y, "y")
    exe = _check(g, rng, exact=False)
    assert exe.report["reference_ops"] == {}


def test_conv_transpose_depthwise_and_unbiased(rng: np.random.Generator) -> None:
    g = eqsat.Graph("convt2")
    x = g.input("x", (1, 3, 4, 6))
    w = g.constant(rng.standard_normal((3, 2, 2, 2)).astype(F32))
    g.output(g.op("ConvTranspose", x, w, strides=[2, 2]), "plain")
    wd = g.constant(rng.standard_normal((3, 1, 2, 3)).astype(F32))
    g.output(g.op("ConvTranspose", x, wd, group=3, strides=[2, 3]), "dw")
    exe = _check(g, rng, exact=False)
    assert exe.report["reference_ops"] == {}
